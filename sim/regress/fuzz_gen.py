"""Fuzz program generators: small valid programs with one mutation, corruptions, random words.

Every program is a pure function of ``(config, seed, index)`` (:func:`generate`), so a batch
is described by its seed and index range, regenerated identically on any worker, and a
failing program is reproduced from its record alone.

Kinds (with the checksum each carries, the way a real corruption behaves):

``mutation``
    A valid program (one of :data:`SEEDS`, built with the ISA helpers of
    :mod:`vitaccel.sim.cases.accel`) with exactly one structure-aware change: a field, a
    dependency flag, an address, the opcode, a reserved bit, or a truncation. The CRC-32 is
    *recomputed*: the change is what the program means, so both machines must execute it.
``corruption``
    A valid program with one bit flipped *after* its CRC-32 was taken (a stale checksum):
    both machines must stop with ``PROGRAM_CHECKSUM`` before executing anything.
``random``
    One to six random 128-bit words, or random fields of random opcodes (words that decode
    more often), with the CRC recomputed or the check off.

Programs stay below the hardware's instruction-queue depth (32), so a program never blocks
the in-order dispatcher, which the golden machine does not model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import Opcode
from vitaccel.hw.spec.regmap import program_crc32

__all__ = ["FuzzProgram", "generate", "SEEDS", "KINDS", "MUTATIONS", "DDR_BYTES", "crc_of", "set_field",
           "field_slices", "MAX_WORDS"]

#: DDR window of every fuzz program (the seeds' data, outputs and whatever a mutation reaches).
DDR_BYTES = 4096
#: Longest generated program: below the hardware's instruction-queue depth.
MAX_WORDS = 30
KINDS = ("mutation", "corruption", "random")
MUTATIONS = ("field", "token", "address", "opcode", "reserved", "truncate")
#: How often each mutation is drawn: mostly changes that still decode, so that units execute them.
_MUTATION_WEIGHTS = (4, 2, 3, 1, 0.5, 1)
_WORD_BYTES = isa.INSTRUCTION_BITS // 8
_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


@dataclass(frozen=True)
class FuzzProgram:
    """One fuzz program and how it was made.

    Attributes
    ----------
    seed, index : int
        It is ``generate(config, seed, index)``.
    kind : str
        ``mutation``, ``corruption`` or ``random`` (see the module docstring).
    origin : str
        The seed program (``gemm``, ``dma``, ...) or ``words``/``fields`` for random programs.
    change : str
        The one mutation or corruption, readable (empty for random programs).
    words : tuple of int
        The instruction words.
    ddr : ndarray
        The initial uint8 DDR window (:data:`DDR_BYTES`).
    checksum : int or None
        ``PROGRAM_CRC`` with ``PROGRAM_CHECK.crc`` set, or None (check off).
    """

    seed: int
    index: int
    kind: str
    origin: str
    change: str
    words: tuple[int, ...]
    ddr: np.ndarray
    checksum: int | None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.origin}#{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "index": self.index, "kind": self.kind, "origin": self.origin,
                "change": self.change, "words": [f"{w:032x}" for w in self.words],
                "ddr": self.ddr.tobytes().hex(), "checksum": self.checksum}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "FuzzProgram":
        return cls(seed=int(record["seed"]), index=int(record["index"]), kind=str(record["kind"]),
                   origin=str(record["origin"]), change=str(record["change"]),
                   words=tuple(int(w, 16) for w in record["words"]),
                   ddr=np.frombuffer(bytes.fromhex(record["ddr"]), np.uint8).copy(),
                   checksum=None if record["checksum"] is None else int(record["checksum"]))


def crc_of(words: tuple[int, ...] | list[int]) -> int:
    """The program's CRC-32 (:func:`~vitaccel.hw.spec.regmap.program_crc32` of its image)."""
    return program_crc32(b"".join(int(w).to_bytes(_WORD_BYTES, "little") for w in words))


def field_slices(opcode: Opcode) -> dict[str, tuple[int, int]]:
    """``{field: (offset, width)}`` of an opcode's layout (header, body and reserved bits)."""
    return {name: (field.offset, field.width) for name, field in isa.LAYOUTS[opcode]}


def set_field(word: int, offset: int, width: int, value: int) -> int:
    """``word`` with bits ``[offset, offset + width)`` replaced by ``value`` (truncated)."""
    mask = ((1 << width) - 1) << offset
    return (word & ~mask) | ((value << offset) & mask)


# -- seed programs: small valid programs of every unit the config has --------------------------

def _random_ddr(rng: random.Random) -> np.ndarray:
    return np.frombuffer(rng.randbytes(DDR_BYTES), np.uint8).copy()


def _dma(rng, config):
    from vitaccel.sim.cases.accel import random_dma_program

    ddr = _random_ddr(rng)
    return random_dma_program(rng, config, DDR_BYTES, rounds=rng.randint(1, 2), transfers=rng.randint(1, 3),
                              max_row_bytes=48, max_rows=3), ddr


def _gelu(rng, config):
    from vitaccel.sim.cases.accel import gelu_program

    ddr = _random_ddr(rng)
    offset = rng.choice([0, 0, 16, 32])
    return gelu_program(rng, config, DDR_BYTES, rows=rng.randint(1, 3), cols=rng.randint(1, 20), lut_offset=offset,
                        lut_count=rng.randint(1, isa.GELU_LUT_ENTRIES - offset)), ddr


def _add(rng, config):
    from vitaccel.sim.cases.accel import add_program

    return add_program(rng, config, DDR_BYTES, rows=rng.randint(1, 3), cols=rng.randint(1, 12),
                       a_multiplier=rng.randrange(1 << 10, 1 << 16), b_multiplier=rng.randrange(1 << 10, 1 << 16),
                       shift=rng.randint(10, 20), in_place=rng.random() < 0.3, extreme=rng.random() < 0.3)


def _softmax(rng, config):
    from vitaccel.sim.cases.accel import softmax_program

    return softmax_program(rng, config, DDR_BYTES, rows=rng.randint(1, 3), cols=rng.randint(1, 9),
                           input_scale=rng.choice([0.01, 0.002]), spread=rng.choice([500, 3000]),
                           extreme=rng.random() < 0.3)


def _layernorm(rng, config):
    from vitaccel.sim.cases.accel import layernorm_program

    return layernorm_program(rng, config, DDR_BYTES, rows=rng.randint(1, 3), cols=rng.randint(2, 9),
                             out_scale=rng.choice([0.02, 0.002]), extreme=rng.random() < 0.3)


def _gemm(rng, config):
    from vitaccel.sim.cases.accel import gemm_program

    requant = rng.random() < 0.6
    flags = dict(bias=rng.random() < 0.7, unsigned_a=rng.random() < 0.3, b_transposed=rng.random() < 0.3,
                 extreme=rng.random() < 0.2)
    if requant:
        flags["residual"] = rng.random() < 0.3
    else:
        flags["accumulate"] = rng.random() < 0.4
    return gemm_program(rng, config, DDR_BYTES, m=rng.randint(1, 5), k=rng.randint(1, 16), n=rng.randint(1, 8),
                        requant=requant, **flags)


def _requant(rng, config):
    from vitaccel.sim.cases.accel import requant_program

    return requant_program(rng, config, DDR_BYTES, rows=rng.randint(1, 4), cols=rng.randint(1, 7),
                           extreme=rng.random() < 0.3)


def _topk(rng, config):
    from vitaccel.sim.cases.accel import topk_program

    sum_rows = rng.random() < 0.4
    n = rng.randint(1, 13)
    return topk_program(rng, config, DDR_BYTES, rows=rng.randint(1, 4), n=n, k=rng.randint(0, n), sum_rows=sum_rows,
                        mode=rng.choice(["random", "ties", "equal", "extreme", "zero"]))


def _gather(rng, config):
    from vitaccel.sim.cases.accel import gather_program

    n = rng.randint(1, 9)
    ascending = rng.random() < 0.5
    return gather_program(rng, config, DDR_BYTES, rows=rng.randint(0, n) if ascending else rng.randint(0, 6), n=n,
                          cols=rng.randint(1, 17), ascending=ascending)


def _package(rng, config):
    from vitaccel.sim.cases.accel import package_program

    n = rng.randint(1, 9)
    return package_program(rng, config, DDR_BYTES, n=n, cols=rng.randint(1, 6), k=rng.randint(0, n),
                           heads=rng.randint(1, 4), mode=rng.choice(["random", "ties", "equal", "extreme", "zero"]),
                           extreme=rng.random() < 0.3)


#: Seed programs: name -> (config flag the unit needs or None, builder ``(rng, config) -> (words, ddr)``).
SEEDS: dict[str, tuple[str | None, Callable[[random.Random, AccelConfig], tuple[list[int], np.ndarray]]]] = {
    "dma": (None, _dma), "gelu": ("has_gelu", _gelu), "add": (None, _add), "softmax": ("has_softmax", _softmax),
    "layernorm": ("has_layernorm", _layernorm), "gemm": (None, _gemm), "requant": (None, _requant),
    "topk": ("has_topk", _topk), "gather": ("has_topk", _gather), "package": ("has_topk", _package),
}


def _seed_program(rng: random.Random, config: AccelConfig) -> tuple[str, list[int], np.ndarray]:
    names = [name for name, (flag, _) in SEEDS.items() if flag is None or getattr(config, flag)]
    name = rng.choice(names)
    words, ddr = SEEDS[name][1](rng, config)
    return name, list(words), np.asarray(ddr, np.uint8)


# -- mutations -------------------------------------------------------------------------------

def _new_value(rng: random.Random, old: int, width: int) -> int:
    """A different value for a field: a neighbour, zero, the maximum, a power of two or random."""
    top = (1 << width) - 1
    choices = [old + 1, old - 1, 0, top, 1 << rng.randrange(width), rng.randrange(top + 1), old * 2, old // 2]
    for _ in range(8):
        value = rng.choice(choices) & top
        if value != old:
            return value
    return old ^ 1


def _address_value(rng: random.Random, name: str, old: int, width: int, config: AccelConfig) -> int:
    """A new address: near the end of its memory, just beyond it, a small step or random."""
    if name == "dram_addr":
        end = DDR_BYTES
    else:
        end = max(isa.buffer_bytes(config, b) for b in isa.Buffer) // isa.ADDR_UNIT
    choices = [end - 1, end, end + 1, end - rng.randint(1, 16), old + rng.randint(1, 8),
               max(0, old - rng.randint(1, 8)), rng.randrange(1 << width)]
    value = rng.choice(choices) & ((1 << width) - 1)
    return value if value != old else _new_value(rng, old, width)


def _decodable(words: list[int]) -> list[tuple[int, isa.Instruction]]:
    out = []
    for pc, word in enumerate(words):
        try:
            out.append((pc, isa.decode(word)))
        except isa.IllegalInstruction:
            pass
    return out


def mutate(rng: random.Random, words: list[int], config: AccelConfig, mutation: str) -> tuple[list[int], str]:
    """``words`` with one ``mutation`` (one of :data:`MUTATIONS`); returns the new words and what changed."""
    words = list(words)
    if mutation == "truncate":
        how = rng.choice(["tail", "drop"])
        if how == "tail" or len(words) < 2:
            keep = rng.randrange(len(words))
            return words[:keep], f"truncated to {keep} of {len(words)} instructions"
        pc = rng.randrange(len(words))
        return words[:pc] + words[pc + 1:], f"dropped instruction {pc} ({_opname(words[pc])})"
    decoded = _decodable(words)
    pc, instr = rng.choice(decoded)
    slices = field_slices(instr.opcode)
    word = words[pc]
    if mutation == "opcode":
        offset, width = slices["opcode"]
        new = _new_value(rng, instr.opcode.value, width) if rng.random() < 0.3 else \
            rng.choice([op.value for op in Opcode if op is not instr.opcode])
        words[pc] = set_field(word, offset, width, new)
        return words, f"instruction {pc}: opcode {instr.opcode.name} -> {_code_name(new)}"
    if mutation == "token":
        flag = rng.choice(_FLAGS)
        offset, _ = slices[flag]
        words[pc] = word ^ (1 << offset)
        return words, f"instruction {pc} ({instr.opcode.name}): {flag} {instr.fields[flag]} -> {1 - instr.fields[flag]}"
    if mutation == "reserved":
        if "reserved" not in slices:
            return mutate(rng, words, config, "field")
        offset, width = slices["reserved"]
        bit = rng.randrange(width)
        words[pc] = word | (1 << (offset + bit))
        return words, f"instruction {pc} ({instr.opcode.name}): reserved bit {offset + bit} set"
    body = [name for name in slices if name not in ("opcode", "reserved", *_FLAGS)]
    addresses = [name for name in body if name.endswith("addr")]
    if mutation == "address" and addresses:
        name = rng.choice(addresses)
        offset, width = slices[name]
        old = (word >> offset) & ((1 << width) - 1)
        new = _address_value(rng, name, old, width, config)
    else:
        if not body:   # FINISH, or a SYNC picked for a field mutation: change its flags instead
            return mutate(rng, words, config, "token")
        name = rng.choice(body)
        offset, width = slices[name]
        old = (word >> offset) & ((1 << width) - 1)
        new = _new_value(rng, old, width)
    words[pc] = set_field(word, offset, width, new)
    return words, f"instruction {pc} ({instr.opcode.name}): {name} {old} -> {new}"


def _code_name(code: int) -> str:
    try:
        return Opcode(code).name
    except ValueError:
        return f"illegal {code}"


def _opname(word: int) -> str:
    return _code_name(word & 0x3F)


def _random_fields_word(rng: random.Random) -> int:
    """A word with a random valid opcode and random field values, small ones more likely."""
    opcode = rng.choice(list(Opcode))
    word = opcode.value
    for name, (offset, width) in field_slices(opcode).items():
        if name in ("opcode", "reserved"):
            continue
        if name in _FLAGS:
            value = int(rng.random() < 0.2)
        elif rng.random() < 0.7:
            value = rng.randrange(min(1 << width, 64))
        else:
            value = rng.getrandbits(width)
        word = set_field(word, offset, width, value)
    return word


def generate(config: AccelConfig, seed: int, index: int) -> FuzzProgram:
    """Fuzz program ``index`` of the stream of ``seed`` (deterministic, see the module docstring)."""
    rng = random.Random(seed * 1_000_003 + index)
    draw = rng.random()
    if draw < 0.6:
        origin, words, ddr = _seed_program(rng, config)
        mutation = rng.choices(MUTATIONS, weights=_MUTATION_WEIGHTS)[0]
        new, change = mutate(rng, words, config, mutation)
        new = new[:MAX_WORDS]
        return FuzzProgram(seed, index, "mutation", origin, f"{mutation}: {change}", tuple(new), ddr, crc_of(new))
    if draw < 0.75:
        origin, words, ddr = _seed_program(rng, config)
        words = words[:MAX_WORDS]
        stale = crc_of(words)
        pc, bit = rng.randrange(len(words)), rng.randrange(isa.INSTRUCTION_BITS)
        words[pc] ^= 1 << bit
        return FuzzProgram(seed, index, "corruption", origin, f"instruction {pc}: bit {bit} flipped after the CRC",
                           tuple(words), ddr, stale)
    fields = rng.random() < 0.6
    words = [(_random_fields_word if fields else (lambda r: r.getrandbits(isa.INSTRUCTION_BITS)))(rng)
             for _ in range(rng.randint(1, 6))]
    if fields and rng.random() < 0.5:
        words.append(isa.encode(isa.Instruction(Opcode.FINISH)))
    ddr = _random_ddr(rng) if rng.random() < 0.5 else np.zeros(DDR_BYTES, np.uint8)
    checksum = crc_of(words) if rng.random() < 0.5 else None
    return FuzzProgram(seed, index, "random", "fields" if fields else "words", "", tuple(words), ddr, checksum)
