"""The vitaccel instruction set, defined once.

Every instruction is :data:`INSTRUCTION_BITS` (128) bits wide: one beat of the ZCU102's
128-bit AXI port. Bits ``[0, 10)`` are a header shared by all opcodes: the 6-bit
:class:`Opcode` and four VTA-style dependency flags. The rest is laid out per opcode by an
Amaranth :class:`~amaranth.lib.data.StructLayout` in :data:`LAYOUTS`; the hardware decoder
views the fetched word through the same layouts (``data.UnionLayout`` :data:`INSTRUCTION`),
and :func:`encode` / :func:`decode` use the bit offsets read from them, so the two cannot
drift apart. Unused bits are a ``reserved`` field that must be zero.

Three queues execute instructions concurrently (:class:`Queue`): LOAD instructions go to the
load queue, STORE to the store queue, SYNC to the queue it names, everything else to the
compute queue. Queues synchronise only through dependency tokens, as in VTA. Four token
FIFOs link neighbouring queues (load -> compute -> store)::

    load  --push_next-->  [L2C]  --pop_prev-->  compute
    load  <--pop_next--   [C2L]  <--push_prev-- compute
    compute --push_next-> [C2S]  --pop_prev-->  store
    compute <--pop_next-- [S2C]  <--push_prev-- store

An instruction waits until every FIFO it pops is non-empty, pops them, executes, then pushes.
The load queue has no "prev" and the store queue no "next": those flags are reserved there.

On-chip buffers (:class:`Buffer`) are addressed in units of :data:`ADDR_UNIT` (16) bytes;
DDR is byte-addressed. Matrices in buffers are row-major and densely packed from their base
address (tile rows need not be 16-byte aligned, only tile bases). The int32 ACC buffer also
holds per-channel parameters: a GEMM parameter block at ``param_addr`` is ``n`` int32 biases,
then ``n`` multipliers, then ``n`` shifts (:data:`GEMM_PARAM_BLOCK`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = [
    "INSTRUCTION_BITS", "HEADER_BITS", "ADDR_UNIT", "GEMM_PARAM_BLOCK", "Opcode", "Queue", "Buffer",
    "LutId", "Family", "LAYOUTS", "INSTRUCTION", "FAMILY", "QUEUE", "DESCRIPTIONS", "Instruction",
    "IllegalInstruction", "encode", "decode", "disassemble", "describe", "queue_of",
    "buffer_bytes", "check_config", "TOKEN_FIFO_DEPTH", "GELU_LUT_ENTRIES",
    "pack_gemm_params", "pack_softmax_params", "unpack_softmax_params", "pack_add_params",
    "unpack_add_params", "pack_layernorm_params", "unpack_layernorm_params", "layernorm_param_words",
    "SOFTMAX_PARAM_WORDS", "ADD_PARAM_WORDS", "LAYERNORM_HEADER_WORDS", "SPARSE_ATTN_PARAM_WORDS",
    "pack_sparse_attn_params", "unpack_sparse_attn_params", "NMWeightLayout", "nm_weight_layout",
]

#: Width of one instruction word.
INSTRUCTION_BITS = 128
#: Width of the header (opcode and dependency flags) shared by every opcode.
HEADER_BITS = 10
#: Bytes per on-chip address unit (one 128-bit beat): buffer addresses count these.
ADDR_UNIT = 16
#: Order of the int32 words of a GEMM/REQUANT parameter block in ACC (``n`` of each).
GEMM_PARAM_BLOCK = ("bias", "multiplier", "shift")

#: Tokens each of the four dependency FIFOs holds; a push into a full FIFO stalls the queue.
TOKEN_FIFO_DEPTH = 32
#: Entries of the writable GELU table (one per int8 input code).
GELU_LUT_ENTRIES = 256

_SRAM_ADDR_BITS = 15  # 2^15 units of 16 bytes = 512 KiB per buffer


class IllegalInstruction(ValueError):
    """An instruction word (or field value) that the machine cannot execute."""


class Opcode(enum.Enum, shape=unsigned(6)):
    """Operation codes. 0 is deliberately illegal: a zeroed word never executes."""

    LOAD = 1
    STORE = 2
    GEMM = 3
    ADD = 4
    REQUANT = 5
    SOFTMAX = 6
    GELU = 7
    LAYERNORM = 8
    LUT_LOAD = 9
    TOPK = 10
    SPARSE_ATTN = 11
    SYNC = 12
    FINISH = 13
    GATHER = 14
    PACKAGE = 15


class Queue(enum.Enum, shape=unsigned(2)):
    """The three concurrently running instruction queues."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2


class Buffer(enum.Enum, shape=unsigned(3)):
    """On-chip memory spaces a DMA can reach.

    INPUT and WEIGHT hold the GEMM's A and B operands (int8, double-buffered halves of
    ``input_spad_kib`` / ``weight_spad_kib``), ACC holds int32 accumulators and parameter
    blocks, VECTOR holds int8/uint8 activations for the vector, top-k and attention units.
    """

    INPUT = 0
    WEIGHT = 1
    ACC = 2
    VECTOR = 3


class LutId(enum.Enum, shape=unsigned(2)):
    """Writable lookup tables (LUT_LOAD targets)."""

    GELU = 0


class Family(str, enum.Enum):
    """Opcode families (grouping used by docs, ``vitaccel spec`` and the controller)."""

    LOAD = "load"
    STORE = "store"
    GEMM = "gemm"
    VECTOR = "vector"
    TOPK = "topk"
    SPARSE_ATTENTION = "sparse_attention"
    SYNC = "sync"
    FINISH = "finish"


def _u(bits: int) -> Any:
    return unsigned(bits)


_HEADER: dict[str, Any] = {
    "opcode": Opcode, "pop_prev": _u(1), "pop_next": _u(1), "push_prev": _u(1), "push_next": _u(1),
}
_DMA: dict[str, Any] = {
    "buffer": Buffer, "sram_addr": _u(_SRAM_ADDR_BITS), "dram_addr": _u(32), "rows": _u(12),
    "row_bytes": _u(16), "dram_stride": _u(22), "sram_stride": _u(16),
}
_VECTOR: dict[str, Any] = {
    "rows": _u(12), "cols": _u(13), "src_addr": _u(_SRAM_ADDR_BITS), "src2_addr": _u(_SRAM_ADDR_BITS),
    "dst_addr": _u(_SRAM_ADDR_BITS), "param_addr": _u(_SRAM_ADDR_BITS),
}
_BODIES: dict[Opcode, dict[str, Any]] = {
    Opcode.LOAD: _DMA,
    Opcode.STORE: _DMA,
    Opcode.GEMM: {
        "accumulate": _u(1), "bias": _u(1), "requant": _u(1), "residual": _u(1), "unsigned_a": _u(1),
        "b_transposed": _u(1), "m": _u(10), "k": _u(13), "n": _u(12), "a_addr": _u(_SRAM_ADDR_BITS),
        "b_addr": _u(_SRAM_ADDR_BITS), "acc_addr": _u(_SRAM_ADDR_BITS), "out_addr": _u(_SRAM_ADDR_BITS),
        "param_addr": _u(_SRAM_ADDR_BITS),
        # nm comes after the original fields (a bit that used to be reserved): dense words keep
        # their meaning.
        "nm": _u(1),
        # a_vector takes the last free bit: A is read from VECTOR, where the vector units leave
        # activations, instead of INPUT (0: every earlier word keeps its meaning).
        "a_vector": _u(1),
    },
    Opcode.ADD: _VECTOR,
    Opcode.REQUANT: _VECTOR,
    Opcode.SOFTMAX: _VECTOR,
    Opcode.GELU: _VECTOR,
    Opcode.LAYERNORM: _VECTOR,
    Opcode.LUT_LOAD: {"lut": LutId, "offset": _u(12), "count": _u(13), "src_addr": _u(_SRAM_ADDR_BITS)},
    # sum_rows comes after the original fields (bits that used to be reserved), so every word
    # that was legal before keeps its meaning.
    Opcode.TOPK: {"rows": _u(12), "n": _u(13), "k": _u(13), "src_addr": _u(_SRAM_ADDR_BITS),
                  "dst_addr": _u(_SRAM_ADDR_BITS), "sum_rows": _u(1)},
    Opcode.SPARSE_ATTN: {
        "m": _u(9), "n": _u(9), "d": _u(8), "q_addr": _u(_SRAM_ADDR_BITS), "k_addr": _u(_SRAM_ADDR_BITS),
        "v_addr": _u(_SRAM_ADDR_BITS), "mask_addr": _u(_SRAM_ADDR_BITS), "out_addr": _u(_SRAM_ADDR_BITS),
        "param_addr": _u(_SRAM_ADDR_BITS),
        # predict comes after the original fields (a bit that used to be reserved): words with
        # predict=0 keep their meaning (mask read from VECTOR).
        "predict": _u(1),
    },
    Opcode.SYNC: {"queue": Queue},
    Opcode.FINISH: {},
    Opcode.GATHER: {"rows": _u(12), "cols": _u(13), "n": _u(13), "src_addr": _u(_SRAM_ADDR_BITS),
                    "dst_addr": _u(_SRAM_ADDR_BITS), "index_addr": _u(_SRAM_ADDR_BITS)},
    Opcode.PACKAGE: {"n": _u(13), "cols": _u(13), "k": _u(13), "heads": _u(9), "src_addr": _u(_SRAM_ADDR_BITS),
                     "prob_addr": _u(_SRAM_ADDR_BITS), "index_addr": _u(_SRAM_ADDR_BITS),
                     "dst_addr": _u(_SRAM_ADDR_BITS)},
}


def _layout(body: Mapping[str, Any]) -> data.StructLayout:
    fields = {**_HEADER, **body}
    used = sum(data.Layout.cast(shape).size if isinstance(shape, data.Layout) else
               (shape.as_shape().width if hasattr(shape, "as_shape") else shape.width)
               for shape in fields.values())
    if used > INSTRUCTION_BITS:
        raise AssertionError(f"layout needs {used} bits > {INSTRUCTION_BITS}")
    if used < INSTRUCTION_BITS:
        fields["reserved"] = _u(INSTRUCTION_BITS - used)
    return data.StructLayout(fields)


#: One 128-bit layout per opcode (header first, then the opcode's fields, then reserved).
LAYOUTS: dict[Opcode, data.StructLayout] = {op: _layout(body) for op, body in _BODIES.items()}
#: The hardware decoder's view of an instruction word: every opcode's layout overlaid.
INSTRUCTION = data.UnionLayout({op.name.lower(): layout for op, layout in LAYOUTS.items()})

FAMILY: dict[Opcode, Family] = {
    Opcode.LOAD: Family.LOAD, Opcode.STORE: Family.STORE, Opcode.GEMM: Family.GEMM,
    Opcode.ADD: Family.VECTOR, Opcode.REQUANT: Family.VECTOR, Opcode.SOFTMAX: Family.VECTOR,
    Opcode.GELU: Family.VECTOR, Opcode.LAYERNORM: Family.VECTOR, Opcode.LUT_LOAD: Family.VECTOR,
    Opcode.TOPK: Family.TOPK, Opcode.SPARSE_ATTN: Family.SPARSE_ATTENTION, Opcode.SYNC: Family.SYNC,
    Opcode.FINISH: Family.FINISH, Opcode.GATHER: Family.TOPK, Opcode.PACKAGE: Family.TOPK,
}
#: The queue that executes each opcode (SYNC: the queue named in its ``queue`` field).
QUEUE: dict[Opcode, Queue | None] = {
    op: (Queue.LOAD if op is Opcode.LOAD else Queue.STORE if op is Opcode.STORE
         else None if op is Opcode.SYNC else Queue.COMPUTE) for op in Opcode
}

#: Meaning of each opcode as VTA-style pseudo-code. ``A[r, c]`` reads row-major matrices
#: from the named buffer at ``addr * ADDR_UNIT``; ``P`` is a parameter block in ACC.
DESCRIPTIONS: dict[Opcode, str] = {
    Opcode.LOAD: """DMA DDR -> on-chip buffer (load queue).
for r in range(rows):
    buffer[sram_addr*16 + r*sram_stride : +row_bytes] = DDR[dram_addr + r*dram_stride : +row_bytes]""",
    Opcode.STORE: """DMA on-chip buffer -> DDR (store queue).
for r in range(rows):
    DDR[dram_addr + r*dram_stride : +row_bytes] = buffer[sram_addr*16 + r*sram_stride : +row_bytes]""",
    Opcode.GEMM: """Tile matrix multiply A[m,k] (int8, or uint8 if unsigned_a) x B (WEIGHT, int8,
[k,n], or [n,k] if b_transposed); the engine's sequencer walks its block grid.
A is read from INPUT at a_addr, or with a_vector=1 from VECTOR at a_addr (an activation a
vector unit or a requantizing GEMM left there: no copy through DDR). The VECTOR read port
serves either A or the residual: a_vector=1 with residual=1 is INVALID_OPERAND (with the
shape checks).
    A_BUF = VECTOR if a_vector else INPUT
With nm=1, B is N:M sparse along k in the compressed format of hw/spec/nm.py, (N, M) =
config.nm_sparsity; k stays the dense K. INVALID_OPERAND (with the shape checks) if nm=1 and
the config has no nm_sparsity or b_transposed=1. In WEIGHT at b_addr, G = ceil(k/M) groups:
    values  = int8  [G*N, n] at b_addr*16                       # kept weights, slot order
    indices = uint8 [G*N, n] at b_addr*16 + align16(G*N*n)     # position in group, < M
(INVALID_OPERAND if an index is >= M or names a position twice within a group); then
    B[kk, j] = values[g*N + s, j] if kk == g*M + indices[g*N + s, j] for a slot s, else 0
and only the G*N kept rows are multiplied: m*G*N*n MACs (A is zero past k).
P = ACC int32 words at param_addr: bias[n], multiplier[n], shift[n]
for i in range(m): for j in range(n):
    s = sum(A_BUF[a_addr][i, kk] * B[kk, j] for kk in range(k))   # int32 accumulation
    if accumulate: s += ACC[acc_addr][i, j]
    if bias:       s += P.bias[j]
    if requant:
        y = sat8(round_shift(sat32(s) * P.multiplier[j], P.shift[j]))   # gemm.linear
        if residual: y = sat8(y + VECTOR[out_addr][i, j])
        VECTOR[out_addr][i, j] = y                           # int8
    else:
        ACC[acc_addr][i, j] = s""",
    Opcode.ADD: """Residual add of two int8 matrices with different scales (nonlinear.add).
P = ACC[param_addr]: the encoded add parameters
for i in range(rows): VECTOR[dst_addr][i, :cols] = add(VECTOR[src_addr][i], VECTOR[src2_addr][i], P)""",
    Opcode.REQUANT: """Requantize int32 accumulators to int8, per column.
P = ACC int32 words at param_addr: bias[cols], multiplier[cols], shift[cols]
for i in range(rows): for j in range(cols):
    VECTOR[dst_addr][i, j] = sat8(round_shift((ACC[src_addr][i, j] + P.bias[j]) * P.multiplier[j], P.shift[j]))""",
    Opcode.SOFTMAX: """Integer softmax of int32 score rows to uint8 probabilities (nonlinear.softmax).
P = ACC[param_addr]: the encoded softmax parameters
for i in range(rows): VECTOR[dst_addr][i, :cols] = softmax(ACC[src_addr][i, :cols], P)""",
    Opcode.GELU: """GELU through the writable GELU table (nonlinear.gelu).
for i in range(rows): for j in range(cols): VECTOR[dst_addr][i, j] = LUT_GELU[VECTOR[src_addr][i, j] + 128]""",
    Opcode.LAYERNORM: """LayerNorm over each int8 row (integer statistics, LUT inverse sqrt; nonlinear.layernorm).
P = ACC[param_addr]: the encoded layernorm parameters (scalars, then gamma/beta per column)
for i in range(rows): VECTOR[dst_addr][i, :cols] = layernorm(VECTOR[src_addr][i, :cols], P)""",
    Opcode.LUT_LOAD: """Write entries of a writable lookup table from the vector buffer.
for e in range(count): LUT[lut][offset + e] = VECTOR[src_addr*16 + e]      # int8""",
    Opcode.TOPK: """Top-k selection (ties broken by lowest index, kept indices ascending; topk.topk).
Indices are uint16 (k per selection) at dst_addr; requires k <= n <= max_tokens.
if not sum_rows:   # one selection per row of uint16 (TOPK_SCORE_BITS) scores, rows x n at src_addr
    for i in range(rows): VECTOR[dst_addr][i, :k] = sorted(indices of the k largest of VECTOR[src_addr][i, :n])
else:              # the front end first sums rows x n uint8 values column-wise (EViT's head mean,
                   # up to the factor 1/rows); requires 1 <= rows <= 257 so a sum fits 16 bits
    s[j] = sum(VECTOR[src_addr][i, j] for i in range(rows))       # uint8 in, uint16 sum
    VECTOR[dst_addr][0, :k] = sorted(indices of the k largest of s[:n])""",
    Opcode.SPARSE_ATTN: """Masked (sparse) attention, score-stationary (attention.masked_attention).
Q[m,d], K[n,d], V[n,d] int8 in VECTOR; requires m == n <= max_tokens and
1 <= d <= config.sparse_max_head_dim (else INVALID_OPERAND).
P = ACC[param_addr]: softmax parameters, out_multiplier, out_shift, margin (uint32)
if predict:   # Sanger's run-time prediction (attention.predict_mask); mask_addr is ignored
    if P.margin >= PREDICT_MARGIN_LIMIT: error INVALID_OPERAND
    q4 = sat4(round_shift(Q, 4)); k4 = sat4(round_shift(K, 4)); pred = q4 @ k4.T
    mask[i, j] = pred[i, j] >= max(pred[i, :]) - P.margin     # every row keeps its maximum
else:         # mask[m,n] (uint8 0/1) in VECTOR at mask_addr; P.margin is ignored
    mask = VECTOR[mask_addr] != 0
for i in range(m):
    s[j] = Q[i] . K[j]  for j where mask[i, j]                # SDDMM
    p = softmax(s over the set j)                             # uint8
    VECTOR[out_addr][i, :d] = requant(sum_j p[j] * V[j])      # SpMM""",
    Opcode.SYNC: """Dependency-token bookkeeping only, executed by the named queue.
wait for the FIFOs in pop_*; pop them; push the FIFOs in push_*""",
    Opcode.FINISH: """End of program (compute queue). Other queues must be empty.
raise done interrupt; stop fetching""",
    Opcode.GATHER: """Row gather by an index list (token pruning: the rows TOPK kept), in the vector buffer;
part of the top-k engine (needs has_topk). The source is n rows of cols bytes at src_addr,
the index list rows uint16 at index_addr.
for r in range(rows):
    i = VECTOR[index_addr][r]                                  # uint16
    if i >= n: error INVALID_OPERAND
    VECTOR[dst_addr][r, :cols] = VECTOR[src_addr][i, :cols]     # cols bytes""",
    Opcode.PACKAGE: """SPViT's package token (eq. 8) of the tokens TOPK pruned (topk.package_token); part of the
top-k engine (needs has_topk). X: n rows x cols int8 at src_addr; probs: heads rows x n uint8 at
prob_addr (summed like TOPK sum_rows); kept: k uint16 at index_addr; requires k <= n <= max_tokens,
1 <= heads <= 257 and every kept index < n (else INVALID_OPERAND).
m[j] = sum(probs[h, j] for h in range(heads))                  # uint16 keep scores
pruned = [j for j in range(n) if j not in kept[:k]]
total = sum(m[j] for j in pruned)
for c in range(cols):
    num = sum(X[j, c] * m[j] for j in pruned)                    # exact (48-bit) sum
    VECTOR[dst_addr][0, c] = 0 if total == 0 else floor((2*num + total) / (2*total))  # round half up""",
}


@dataclass(frozen=True)
class NMWeightLayout:
    """Where an ``nm=1`` GEMM's compressed B lies in WEIGHT, relative to ``b_addr * ADDR_UNIT``.

    Attributes
    ----------
    rows : int
        Compressed rows ``ceil(k / M) * N`` of both arrays (each ``rows x n`` bytes).
    indices_offset : int
        Byte offset of the uint8 indices: the values' bytes rounded up to :data:`ADDR_UNIT`.
    nbytes : int
        Bytes from ``b_addr * ADDR_UNIT`` to the end of the indices.
    """

    rows: int
    indices_offset: int
    nbytes: int


def nm_weight_layout(k: int, n: int, nm_sparsity: tuple[int, int]) -> NMWeightLayout:
    """The compressed B region of an ``nm=1`` GEMM of dense depth ``k`` and ``n`` columns under
    ``nm_sparsity = (N, M)`` (see the GEMM description)."""
    keep, group = nm_sparsity
    rows = -(-int(k) // group) * keep
    values = rows * int(n)
    offset = -(-values // ADDR_UNIT) * ADDR_UNIT
    return NMWeightLayout(rows=rows, indices_offset=offset, nbytes=offset + values)


def buffer_bytes(config: Any, buffer: Buffer) -> int:
    """Size in bytes of an on-chip buffer for a config (INPUT/WEIGHT include both halves)."""
    kib = {Buffer.INPUT: 2 * config.input_spad_kib, Buffer.WEIGHT: 2 * config.weight_spad_kib,
           Buffer.ACC: config.acc_kib, Buffer.VECTOR: config.vector_kib}[buffer]
    return kib * 1024


def check_config(config: Any) -> None:
    """Raise ``ConfigError`` if a config's buffers exceed what the address fields reach."""
    from vitaccel.hw.spec.config import ConfigError

    limit = (1 << _SRAM_ADDR_BITS) * ADDR_UNIT
    for buffer in Buffer:
        size = buffer_bytes(config, buffer)
        if size > limit:
            raise ConfigError(f"{buffer.name.lower()} buffer of {size // 1024} KiB exceeds the "
                              f"ISA's {limit // 1024} KiB address range")


# -- fast encode / decode from the layouts' offsets -----------------------------------------

@dataclass(frozen=True)
class _Field:
    name: str
    offset: int
    width: int
    enum: type | None


def _fields(layout: data.StructLayout) -> tuple[_Field, ...]:
    out = []
    for name, field in layout:
        shape = field.shape
        is_enum = isinstance(shape, type) and issubclass(shape, enum.Enum)
        out.append(_Field(name, field.offset, field.width, shape if is_enum else None))
    return tuple(out)


_FIELDS: dict[Opcode, tuple[_Field, ...]] = {op: _fields(layout) for op, layout in LAYOUTS.items()}
#: Fields a user sets (everything but the opcode and the reserved bits), per opcode.
_USER_FIELDS: dict[Opcode, tuple[_Field, ...]] = {
    op: tuple(f for f in fields if f.name not in ("opcode", "reserved")) for op, fields in _FIELDS.items()
}
_OPCODE_FIELD = _FIELDS[Opcode.FINISH][0]
_VALID_OPCODES = {op.value: op for op in Opcode}
_DEP_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


class Instruction:
    """One decoded instruction: an opcode and the values of all its fields.

    Build one with keyword arguments, e.g. ``Instruction(Opcode.GEMM, m=4, k=8, n=4)``;
    fields not given are 0 (enum fields: their value 0). Field values are range-checked
    (``IllegalInstruction``) and readable as attributes (``instr.m``).
    """

    __slots__ = ("opcode", "fields")

    def __init__(self, opcode: Opcode, **fields: Any) -> None:
        opcode = Opcode(opcode)
        known = {f.name: f for f in _USER_FIELDS[opcode]}
        unknown = set(fields) - set(known)
        if unknown:
            raise IllegalInstruction(f"{opcode.name} has no field(s) {', '.join(sorted(unknown))}; "
                                     f"fields are {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, spec in known.items():
            value = fields.get(name, 0)
            if spec.enum is not None:
                try:
                    value = spec.enum(value)
                except ValueError:
                    raise IllegalInstruction(f"{opcode.name}.{name}: {value!r} is not a valid "
                                             f"{spec.enum.__name__}") from None
            else:
                value = int(value)
                if not 0 <= value < (1 << spec.width):
                    raise IllegalInstruction(f"{opcode.name}.{name}={value} does not fit in "
                                             f"{spec.width} bits")
            values[name] = value
        _check_queue_flags(opcode, values)
        object.__setattr__(self, "opcode", opcode)
        object.__setattr__(self, "fields", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(f"{self.opcode.name} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Instruction is immutable; use replace()")

    def replace(self, **changes: Any) -> "Instruction":
        return Instruction(self.opcode, **{**self.fields, **changes})

    @property
    def queue(self) -> Queue:
        """The queue that executes this instruction."""
        return queue_of(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instruction) and self.opcode is other.opcode and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((self.opcode, tuple(self.fields.items())))

    def __repr__(self) -> str:
        return f"Instruction({_format(self)})"


def _check_queue_flags(opcode: Opcode, values: Mapping[str, Any]) -> None:
    queue = values["queue"] if opcode is Opcode.SYNC else QUEUE[opcode]
    if queue is Queue.LOAD and (values["pop_prev"] or values["push_prev"]):
        raise IllegalInstruction(f"{opcode.name}: the load queue has no previous queue "
                                 "(pop_prev/push_prev are reserved)")
    if queue is Queue.STORE and (values["pop_next"] or values["push_next"]):
        raise IllegalInstruction(f"{opcode.name}: the store queue has no next queue "
                                 "(pop_next/push_next are reserved)")


def queue_of(instr: Instruction) -> Queue:
    """The queue that executes ``instr``."""
    queue = QUEUE[instr.opcode]
    return instr.fields["queue"] if queue is None else queue


def encode(instr: Instruction) -> int:
    """The instruction word of ``instr`` (an int below ``2**INSTRUCTION_BITS``)."""
    word = instr.opcode.value << _OPCODE_FIELD.offset
    for spec in _USER_FIELDS[instr.opcode]:
        value = instr.fields[spec.name]
        word |= (value.value if spec.enum is not None else value) << spec.offset
    return word


def decode(word: int) -> Instruction:
    """The instruction in ``word``.

    Raises
    ------
    IllegalInstruction
        For an unknown opcode, an invalid enum value, non-zero reserved bits or a
        dependency flag the instruction's queue does not have.
    """
    word = int(word)
    if not 0 <= word < (1 << INSTRUCTION_BITS):
        raise IllegalInstruction(f"word {word:#x} is not a {INSTRUCTION_BITS}-bit value")
    code = (word >> _OPCODE_FIELD.offset) & ((1 << _OPCODE_FIELD.width) - 1)
    opcode = _VALID_OPCODES.get(code)
    if opcode is None:
        raise IllegalInstruction(f"illegal opcode {code} in word {word:#034x}")
    values: dict[str, Any] = {}
    for spec in _FIELDS[opcode][1:]:
        value = (word >> spec.offset) & ((1 << spec.width) - 1)
        if spec.name == "reserved":
            if value:
                raise IllegalInstruction(f"{opcode.name}: reserved bits set in word {word:#034x}")
            continue
        values[spec.name] = value
    return Instruction(opcode, **values)


def _format(instr: Instruction) -> str:
    parts = []
    for name, value in instr.fields.items():
        if name in _DEP_FLAGS:
            continue
        parts.append(f"{name}={value.name if isinstance(value, enum.Enum) else value}")
    deps = [name for name in _DEP_FLAGS if instr.fields[name]]
    text = f"{instr.opcode.name:<11s} " + " ".join(parts)
    return text + (f"  [{' '.join(deps)}]" if deps else "")


def disassemble(words: Iterable[int]) -> str:
    """One line per word: index, opcode, every field ``name=value``, dependency flags.

    A word that does not decode is listed as ``ILLEGAL`` with the reason.
    """
    lines = []
    for index, word in enumerate(words):
        try:
            text = _format(decode(int(word)))
        except IllegalInstruction as err:
            text = f"ILLEGAL     {err}"
        lines.append(f"{index:6d}  {text}")
    return "\n".join(lines)


def describe() -> dict:
    """JSON-able description: width, header, families, enums and every opcode's fields."""
    opcodes = []
    for op in Opcode:
        fields = []
        for spec in _FIELDS[op]:
            entry: dict[str, Any] = {"name": spec.name, "offset": spec.offset, "width": spec.width}
            if spec.enum is not None:
                entry["enum"] = spec.enum.__name__
            fields.append(entry)
        opcodes.append({"name": op.name, "value": op.value, "family": FAMILY[op].value,
                        "queue": QUEUE[op].name.lower() if QUEUE[op] is not None else "named by 'queue'",
                        "fields": fields, "semantics": DESCRIPTIONS[op]})
    families: dict[str, list[str]] = {}
    for op in Opcode:
        families.setdefault(FAMILY[op].value, []).append(op.name)
    return {
        "instruction_bits": INSTRUCTION_BITS,
        "header_bits": HEADER_BITS,
        "addr_unit_bytes": ADDR_UNIT,
        "gemm_param_block": list(GEMM_PARAM_BLOCK),
        "families": families,
        "enums": {cls.__name__: {m.name: m.value for m in cls} for cls in (Opcode, Queue, Buffer, LutId)},
        "opcodes": opcodes,
    }


# -- parameter blocks in ACC (int32 words) -------------------------------------------------
# The vector units read their per-layer parameters from ACC; these are the one encoding the
# compiler writes and the golden machine / hardware read. Values wider than 32 bits are two
# words, low word first.

def _words(values: Iterable[int]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.int64)
    if np.any(arr < -(1 << 31)) or np.any(arr >= (1 << 32)):
        raise ValueError("parameter does not fit in a 32-bit word")
    return (arr & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def _split64(values: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(list(values), dtype=np.int64)
    return (arr & 0xFFFFFFFF).astype(np.uint32).view(np.int32), (arr >> 32).astype(np.int32)


def _join64(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (np.asarray(hi, dtype=np.int64) << 32) | np.asarray(lo, dtype=np.int32).view(np.uint32).astype(np.int64)


def pack_gemm_params(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The GEMM/REQUANT parameter block: bias[n], multiplier[n], shift[n] as int32 words."""
    bias, multiplier, shift = (np.asarray(v, dtype=np.int64).ravel() for v in (bias, multiplier, shift))
    if not bias.size == multiplier.size == shift.size:
        raise ValueError(f"gemm params: bias/multiplier/shift lengths differ: "
                         f"{bias.size}, {multiplier.size}, {shift.size}")
    return np.concatenate([_words(bias), _words(multiplier), _words(shift)])


def pack_softmax_params(params: Any) -> np.ndarray:
    """SoftmaxParams as words: multiplier, shift, exp_lut_bits, recip_lut_bits."""
    return _words([params.multiplier, params.shift, params.exp_lut_bits, params.recip_lut_bits])


def unpack_softmax_params(words: np.ndarray) -> Any:
    from vitaccel.hw.spec.nonlinear import SoftmaxParams

    w = [int(v) for v in np.asarray(words[:4], dtype=np.int32).view(np.uint32)]
    return SoftmaxParams(*w)


SOFTMAX_PARAM_WORDS = 4
ADD_PARAM_WORDS = 3
LAYERNORM_HEADER_WORDS = 4


def pack_add_params(params: Any) -> np.ndarray:
    """AddParams as words: a_multiplier, b_multiplier, shift."""
    return _words([params.a_multiplier, params.b_multiplier, params.shift])


def unpack_add_params(words: np.ndarray) -> Any:
    from vitaccel.hw.spec.nonlinear import AddParams

    w = [int(v) for v in np.asarray(words[:3], dtype=np.int32).view(np.uint32)]
    return AddParams(*w)


def layernorm_param_words(channels: int) -> int:
    """Words of a LayerNorm block: header, gamma[n], beta low[n], beta high[n]."""
    return LAYERNORM_HEADER_WORDS + 3 * channels


def pack_layernorm_params(params: Any) -> np.ndarray:
    """LayerNormParams as words: channels, eps_term (unsigned), out_shift, rsqrt_lut_bits,
    gamma[n], then the 48-bit beta[n] as low words and high words."""
    lo, hi = _split64(params.beta)
    return np.concatenate([_words([params.channels, params.eps_term, params.out_shift, params.rsqrt_lut_bits]),
                           _words(params.gamma), lo, hi])


def unpack_layernorm_params(words: np.ndarray) -> Any:
    """Inverse of :func:`pack_layernorm_params` (reads the channel count from the header)."""
    from vitaccel.hw.spec.nonlinear import LayerNormParams

    words = np.asarray(words, dtype=np.int32)
    header = [int(v) for v in words[:LAYERNORM_HEADER_WORDS].view(np.uint32)]
    n = header[0]
    if words.size < layernorm_param_words(n):
        raise ValueError(f"layernorm params: block of {words.size} words is too short for {n} channels")
    body = words[LAYERNORM_HEADER_WORDS:layernorm_param_words(n)]
    gamma = tuple(int(g) for g in body[:n])
    beta = tuple(int(b) for b in _join64(body[n:2 * n], body[2 * n:3 * n]))
    return LayerNormParams(n, header[1], gamma, beta, header[2], header[3])


#: SPARSE_ATTN block: the softmax parameters, then the output multiplier and shift, then the
#: prediction margin (uint32, read only when ``predict=1``; see :mod:`vitaccel.hw.spec.sparse`).
SPARSE_ATTN_PARAM_WORDS = SOFTMAX_PARAM_WORDS + 3


def pack_sparse_attn_params(softmax_params: Any, out_multiplier: int, out_shift: int, margin: int = 0) -> np.ndarray:
    """SPARSE_ATTN parameter block (see :data:`SPARSE_ATTN_PARAM_WORDS`).

    ``margin`` is the mask-prediction margin a ``predict=1`` instruction uses (a uint32 word;
    the instruction requires it below :data:`~vitaccel.hw.spec.sparse.PREDICT_MARGIN_LIMIT`).
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or not 0 <= margin < 1 << 32:
        raise ValueError(f"margin: must be a uint32, got {margin!r}")
    return np.concatenate([pack_softmax_params(softmax_params), _words([out_multiplier, out_shift, int(margin)])])


def unpack_sparse_attn_params(words: np.ndarray) -> dict[str, Any]:
    """``softmax_params``, ``out_multiplier``, ``out_shift`` (the keyword arguments of masked
    attention) and ``margin`` (uint32, not range-checked) of a SPARSE_ATTN block."""
    tail = [int(v) for v in np.asarray(words[SOFTMAX_PARAM_WORDS:SPARSE_ATTN_PARAM_WORDS],
                                       dtype=np.int32).view(np.uint32)]
    return {"softmax_params": unpack_softmax_params(words), "out_multiplier": tail[0], "out_shift": tail[1],
            "margin": tail[2]}
