"""The golden machine: executes a program binary on a DDR image, instruction by instruction.

The machine models what the hardware has to agree on and nothing more: the on-chip buffers
of an :class:`~vitaccel.hw.spec.config.AccelConfig` (sizes from :func:`isa.buffer_bytes`),
the writable GELU table, the three instruction queues and the four dependency-token FIFOs
of :mod:`vitaccel.hw.spec.isa`. Every compute instruction dispatches to the golden kernels
(``sim.golden.gemm``, ``nonlinear``, ``topk``, ``attention``); the machine never computes
arithmetic of its own beyond moving bytes.

Scheduling: the queues run concurrently in hardware, so the result of a correct program may
not depend on their interleaving. The machine runs each queue as far ahead as its tokens
allow (load first, then compute, then store, repeated), the most eager order; a program
that forgets a dependency token therefore sees its buffers overwritten early and fails its
bit-exactness tests instead of passing by luck.

Malformed programs raise a :class:`MachineError` subclass whose ``code`` is the
:class:`~vitaccel.hw.spec.regmap.ErrorCode` the hardware reports in ``ERROR_CODE`` and whose
``pc`` is the index of the instruction at fault. Execution is bounded: each instruction runs
once and a round without progress is a deadlock.

Batches (:meth:`GoldenMachine.run_batch`): every buffer, table and the DDR carry a leading
image axis and each instruction runs once for the whole batch, so the Python cost of an
instruction is paid once per batch, not per image. Each image's outcome (statistics or error)
and DDR are bit for bit those of :meth:`GoldenMachine.run` on that image alone:

* the schedule is data-independent (tokens only), so decode, checksum, deadlock and
  missing-FINISH faults are the same for every image;
* an instruction whose operands or parameters differ between images where the batched kernel
  needs them equal (a parameter block, a LUT, N:M indices, top-k/sparse-attention units) runs
  image by image (``_PerImage``); differing GEMM weights run as a batched product;
* an instruction that faults in the batch is run again image by image: the images it faults
  on stop there (their DDR is kept as it was at the fault, their outcome is the error, as in
  a one-image run), the others go on.

Each image of a batch starts from the buffer and table state the machine had before the
batch (one-image runs in a row would see the previous image's leftovers instead): the same
for any program that reads only buffer bytes it wrote, as every compiled program does.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode, Queue
from vitaccel.hw.spec.nm import NMWeights
from vitaccel.hw.spec.nonlinear import (LAYERNORM_BETA_BITS, LAYERNORM_GAMMA_BITS, LAYERNORM_MAX_CHANNELS,
                                        SOFTMAX_MULT_BITS)
from vitaccel.hw.spec.numerics import MAX_SHIFT
from vitaccel.hw.spec.regmap import ErrorCode, program_crc32

__all__ = [
    "MachineError", "IllegalInstructionError", "AddressError", "DeadlockError",
    "MissingFinishError", "InvalidOperandError", "ChecksumError", "RunStats", "GoldenMachine",
    "words_from_bytes", "words_to_bytes", "run_program", "BatchOutcome", "stored_ranges",
]


class MachineError(RuntimeError):
    """A program the machine cannot execute. ``code`` is the hardware's error code."""

    code: ErrorCode = ErrorCode.NONE

    def __init__(self, message: str, pc: int | None = None) -> None:
        self.pc = pc
        where = f"instruction {pc}: " if pc is not None else ""
        super().__init__(f"{where}{message}")


class IllegalInstructionError(MachineError):
    code = ErrorCode.ILLEGAL_INSTRUCTION


class AddressError(MachineError):
    code = ErrorCode.ADDRESS_OUT_OF_RANGE


class DeadlockError(MachineError):
    code = ErrorCode.DEPENDENCY_DEADLOCK


class MissingFinishError(MachineError):
    code = ErrorCode.MISSING_FINISH


class InvalidOperandError(MachineError):
    code = ErrorCode.INVALID_OPERAND


class ChecksumError(MachineError):
    code = ErrorCode.PROGRAM_CHECKSUM


class _PerImage(Exception):
    """A batched handler met operands that must be equal across the batch and are not: the
    machine runs that instruction image by image instead."""


_WORD_BYTES = isa.INSTRUCTION_BITS // 8
#: Exceptions a golden kernel raises for parameters it cannot execute.
_KERNEL_ERRORS = (ValueError, IndexError, OverflowError, ZeroDivisionError, FloatingPointError)


def words_from_bytes(blob: bytes) -> list[int]:
    """Instruction words from a little-endian ``program.bin`` image."""
    if len(blob) % _WORD_BYTES:
        raise IllegalInstructionError(f"program is {len(blob)} bytes, not a multiple of {_WORD_BYTES}")
    return [int.from_bytes(blob[i:i + _WORD_BYTES], "little") for i in range(0, len(blob), _WORD_BYTES)]


def words_to_bytes(words: list[int]) -> bytes:
    """The little-endian image of instruction words (what ``program.bin`` holds)."""
    return b"".join(int(w).to_bytes(_WORD_BYTES, "little") for w in words)


#: ``op.name`` of every opcode (an enum member's ``name`` is a property: slow in a loop over images).
_OPCODE_NAMES = {op: op.name for op in Opcode}


@dataclass
class RunStats:
    """What one run did: instructions per opcode, multiply-accumulates, DMA bytes."""

    instructions: Counter = field(default_factory=Counter)
    macs: int = 0
    dma_read_bytes: int = 0
    dma_write_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"instructions": {_OPCODE_NAMES[op]: n for op, n in self.instructions.items()},
                "total_instructions": sum(self.instructions.values()), "macs": self.macs,
                "dma_read_bytes": self.dma_read_bytes, "dma_write_bytes": self.dma_write_bytes}


# Token FIFOs: (from queue, to queue). The flag an instruction sets names the direction.
_L2C, _C2L, _C2S, _S2C = "L2C", "C2L", "C2S", "S2C"
_POPS = {Queue.LOAD: {"pop_next": _C2L}, Queue.COMPUTE: {"pop_prev": _L2C, "pop_next": _S2C},
         Queue.STORE: {"pop_prev": _C2S}}
_PUSHES = {Queue.LOAD: {"push_next": _L2C}, Queue.COMPUTE: {"push_prev": _C2L, "push_next": _C2S},
           Queue.STORE: {"push_prev": _S2C}}
_FIFOS = (_L2C, _C2L, _C2S, _S2C)
#: Item sizes of the dtypes the handlers pass to ``_matrix`` (np.dtype() per access is slow).
_ITEMSIZE = {t: np.dtype(t).itemsize for t in (np.int8, np.uint8, np.uint16, np.int32)}
#: What one image of a batch ends with: its statistics, or the error that stopped it.
BatchOutcome = RunStats | MachineError


def _shared(x: np.ndarray) -> np.ndarray:
    """``x[0]`` if every image of the batch (axis 0) holds the same values; else ``_PerImage``."""
    if x.shape[0] > 1 and not (x[1:] == x[0]).all():
        raise _PerImage
    return x[0]


def _same_bytes(memory: np.ndarray, start: int, nbytes: int) -> bool:
    """Whether every image (row) of ``memory`` holds the same bytes in ``[start, start + nbytes)``:
    a cheap reject on the last image first, then 8 bytes per comparison where aligned."""
    if memory.shape[0] == 1:
        return True
    region = memory[:, start:start + nbytes]
    if not np.array_equal(region[-1], region[0]):
        return False
    if start % 8 == 0 and nbytes % 8 == 0 and memory.strides[0] % 8 == 0:
        region = region.view(np.uint64)
    return bool((region[1:] == region[0]).all())


class GoldenMachine:
    """Executes programs for one config. Buffers persist between runs (like the hardware's).

    Every buffer (``buffers``), table (``luts``) and the DDR (``ddr``) has a leading image
    axis: one image for :meth:`run`, the batch for :meth:`run_batch`.

    Parameters
    ----------
    config : AccelConfig
        Sizes the buffers and says which units exist.
    """

    def __init__(self, config: AccelConfig) -> None:
        isa.check_config(config)
        self.config = config
        self.buffers = {buf: np.zeros((1, isa.buffer_bytes(config, buf)), dtype=np.uint8) for buf in Buffer}
        self.luts = {lut: np.zeros((1, isa.GELU_LUT_ENTRIES), dtype=np.int8) for lut in isa.LutId}
        self._handlers: dict[Opcode, Callable[[Instruction, int], None]] = {
            Opcode.LOAD: self._load, Opcode.STORE: self._store, Opcode.GEMM: self._gemm,
            Opcode.ADD: self._add, Opcode.REQUANT: self._requant, Opcode.SOFTMAX: self._softmax,
            Opcode.GELU: self._gelu, Opcode.LAYERNORM: self._layernorm, Opcode.LUT_LOAD: self._lut_load,
            Opcode.TOPK: self._topk, Opcode.SPARSE_ATTN: self._sparse_attn, Opcode.GATHER: self._gather,
            Opcode.PACKAGE: self._package,
            Opcode.SYNC: lambda instr, pc: None, Opcode.FINISH: lambda instr, pc: None,
        }
        self.ddr = np.zeros((1, 0), dtype=np.uint8)
        self.stats = RunStats()
        # Per image of the batch (views of one image while an instruction runs image by image).
        self._macs = np.zeros(1, dtype=np.int64)
        self._dma_read = np.zeros(1, dtype=np.int64)
        self._dma_write = np.zeros(1, dtype=np.int64)
        # DMA bytes of the batch's fast path, the same for every image (a Python int is cheaper
        # to add to than an array, and a DMA is the most frequent instruction).
        self._dma_read_all = self._dma_write_all = 0
        self._live: list[int] = [0]
        #: DDR ranges equal in every image (run_batch's ``shared``).
        self._shared_ddr: list[tuple[int, int]] = []
        #: Per buffer, byte ranges ``[start, end)`` equal in every image (loaded from shared DDR and
        #: not written since), and the ranges of those only image 0's row holds (``_lazy``: a LOAD
        #: of constants writes one row; every access of all rows copies it to the others first).
        self._uniform: dict[Buffer, list[tuple[int, int]]] = {buf: [] for buf in Buffer}
        self._lazy: dict[Buffer, list[tuple[int, int]]] = {buf: [] for buf in Buffer}
        self._decoded: tuple[tuple[int, ...], list[list[tuple]]] | None = None
        self._checksummed: tuple[tuple[int, ...], int] | None = None   # the last program and its CRC
        self._layernorm_params: dict[bytes, Any] = {}

    # -- running -----------------------------------------------------------------------------

    def run(self, program: list[int] | bytes, ddr: np.ndarray, *, checksum: int | None = None) -> RunStats:
        """Execute ``program`` (words or a ``program.bin`` image) on ``ddr`` (uint8, in place).

        With ``checksum`` (the hardware's ``PROGRAM_CRC`` with ``PROGRAM_CHECK.crc`` set) a
        non-empty program whose :func:`~vitaccel.hw.spec.regmap.program_crc32` differs stops
        with :class:`ChecksumError` before anything is decoded or executed.

        Raises
        ------
        MachineError
            Its subclass and ``code`` say what is wrong, ``pc`` where.
        """
        if not (isinstance(ddr, np.ndarray) and ddr.dtype == np.uint8 and ddr.ndim == 1):
            raise TypeError("ddr must be a one-dimensional uint8 NumPy array")
        outcome = self.run_batch(program, ddr[None], checksum=checksum)[0]
        if isinstance(outcome, MachineError):
            raise outcome
        return outcome

    def run_batch(self, program: list[int] | bytes, ddrs: np.ndarray, *, checksum: int | None = None,
                  shared: list[tuple[int, int]] | None = None) -> list[BatchOutcome]:
        """Execute ``program`` on every row of ``ddrs`` (uint8 ``(images, bytes)``, in place).

        Each instruction runs once for the whole batch. Returns one outcome per image: its
        :class:`RunStats`, or the :class:`MachineError` :meth:`run` would have raised for that
        image alone; each row of ``ddrs`` ends as :meth:`run` would have left it (for an image
        that faults: as it was at the fault). See the module docstring for how faults and
        per-image parameters are handled.

        ``shared`` names DDR byte ranges ``[start, end)`` the caller guarantees equal in every
        row (a device that built the rows from one image: its constants). A LOAD into WEIGHT
        from inside one copies one row to every image and the GEMMs reading those bytes skip
        comparing the images' weights. A wrong guarantee gives wrong results.
        """
        if not (isinstance(ddrs, np.ndarray) and ddrs.dtype == np.uint8 and ddrs.ndim == 2):
            raise TypeError("ddrs must be a two-dimensional (images, bytes) uint8 NumPy array")
        images = ddrs.shape[0]
        try:
            words = tuple(words_from_bytes(program) if isinstance(program, (bytes, bytearray)) else program)
            if checksum is not None and words:
                if self._checksummed is None or self._checksummed[0] != words:
                    self._checksummed = (words, program_crc32(words_to_bytes(words)))
                actual = self._checksummed[1]
                if actual != checksum:
                    raise ChecksumError(f"program checksum mismatch: CRC-32 {actual:#010x}, expected "
                                        f"{checksum:#010x} (the program is corrupted)")
            self._resize(images)
            # Per queue, in Queue order: (pc, instr, handler, pops, pushes, is_finish) with the
            # token FIFOs as indices into ``tokens`` (decoded and resolved once per program).
            queues = [deque(entries) for entries in self._dispatch(words)]
        except MachineError as err:
            return [err] * images
        self.ddr = ddrs
        self._macs = np.zeros(images, dtype=np.int64)
        self._dma_read = np.zeros(images, dtype=np.int64)
        self._dma_write = np.zeros(images, dtype=np.int64)
        self._dma_read_all = self._dma_write_all = 0
        self._live = list(range(images))
        self._shared_ddr = sorted(shared or ())
        self._uniform = {buf: [] for buf in Buffer}
        outcomes: list[BatchOutcome | None] = [None] * images
        faulted: dict[int, np.ndarray] = {}   # image -> its DDR at the fault
        counts: Counter = Counter()
        schedule_error: MachineError | None = None
        try:
            self._execute(words, queues, counts, outcomes, faulted)
        except MachineError as err:   # the schedule's faults: every image still running has them
            schedule_error = err
        finally:
            self._materialize_all()   # the buffers persist between runs: every image's row as it is
        for image in self._live:
            outcomes[image] = schedule_error or RunStats(
                Counter(counts), int(self._macs[image]), self._dma_read_all + int(self._dma_read[image]),
                self._dma_write_all + int(self._dma_write[image]))
        for image, ddr in faulted.items():
            ddrs[image] = ddr
        self.stats = outcomes[-1] if isinstance(outcomes[-1], RunStats) else RunStats()
        return outcomes

    def _resize(self, images: int) -> None:
        """Buffers and tables for ``images`` images, each a copy of the last image's state."""
        if self.buffers[Buffer.INPUT].shape[0] == images:
            return
        self.buffers = {buf: np.repeat(memory[-1:], images, axis=0) for buf, memory in self.buffers.items()}
        self.luts = {lut: np.repeat(table[-1:], images, axis=0) for lut, table in self.luts.items()}
        self._decoded = None   # its DMA handlers hold views of the old buffers

    def _execute(self, words: tuple[int, ...], queues: list[deque], counts: Counter,
                 outcomes: list[BatchOutcome | None], faulted: dict[int, np.ndarray]) -> None:
        """The schedule: each queue as far ahead as its tokens allow, until FINISH."""
        tokens = [0] * len(_FIFOS)
        depth = isa.TOKEN_FIFO_DEPTH
        single = self.ddr.shape[0] == 1
        while True:
            progress = False
            for pending in queues:
                while pending:
                    pc, instr, handler, pops, pushes, is_finish = pending[0]
                    blocked = False
                    for f in pops:
                        if tokens[f] == 0:
                            blocked = True
                    for f in pushes:
                        if tokens[f] >= depth:
                            blocked = True
                    if blocked:
                        break
                    for f in pops:
                        tokens[f] -= 1
                    pending.popleft()
                    try:
                        handler(instr, pc)
                    except _PerImage:
                        self._each_image(handler, instr, pc, outcomes, faulted)
                    except MachineError as err:
                        if single:
                            raise
                        self._each_image(handler, instr, pc, outcomes, faulted)
                    if not self._live:
                        return
                    counts[instr.opcode] += 1
                    for f in pushes:
                        tokens[f] += 1
                    progress = True
                    if is_finish:
                        left = {q.name.lower(): len(queues[i]) for i, q in enumerate(Queue) if queues[i]}
                        if left:
                            raise MissingFinishError(
                                f"FINISH executed with instructions still queued: {left} "
                                "(FINISH must come last and wait for the other queues)", pc)
                        return
            if not any(queues):
                raise MissingFinishError(f"program of {len(words)} instructions ends without FINISH")
            if not progress:
                by_queue = {q: deque((e[0], e[1]) for e in queues[i]) for i, q in enumerate(Queue)}
                raise DeadlockError(self._deadlock_message(by_queue, dict(zip(_FIFOS, tokens))),
                                    min(q[0][0] for q in queues if q))

    def _each_image(self, handler: Callable[[Instruction, int], None], instr: Instruction, pc: int,
                    outcomes: list[BatchOutcome | None], faulted: dict[int, np.ndarray]) -> None:
        """Run one instruction image by image (views of one image each); an image it faults on
        stops: its outcome is the error, its DDR is kept as it is now."""
        self._materialize_all()
        whole = (self.buffers, self.luts, self.ddr, self._macs, self._dma_read, self._dma_write)
        buffers, luts, ddr, macs, dma_read, dma_write = whole
        try:
            for image in list(self._live):
                one = slice(image, image + 1)
                self.buffers = {buf: memory[one] for buf, memory in buffers.items()}
                self.luts = {lut: table[one] for lut, table in luts.items()}
                self.ddr, self._macs, self._dma_read, self._dma_write = ddr[one], macs[one], dma_read[one], dma_write[one]
                try:
                    handler(instr, pc)
                except MachineError as err:
                    outcomes[image] = err
                    faulted[image] = ddr[image].copy()
                    self._live.remove(image)
        finally:
            self.buffers, self.luts, self.ddr, self._macs, self._dma_read, self._dma_write = whole

    def _dispatch(self, words: tuple[int, ...]) -> list[list[tuple]]:
        """Decode ``words`` into per-queue lists (in :class:`Queue` order) of
        ``(pc, instruction, handler, pop fifos, push fifos, is FINISH)``; the last program is
        cached because a device runs the same program once per image."""
        if self._decoded is not None and self._decoded[0] == words:
            return self._decoded[1]
        queues: dict[Queue, list[tuple]] = {q: [] for q in Queue}
        for pc, word in enumerate(words):
            try:
                instr = isa.decode(word)
            except isa.IllegalInstruction as err:
                raise IllegalInstructionError(str(err), pc) from None
            queue = instr.queue
            pops = tuple(_FIFOS.index(fifo) for flag, fifo in _POPS[queue].items() if instr.fields[flag])
            pushes = tuple(_FIFOS.index(fifo) for flag, fifo in _PUSHES[queue].items() if instr.fields[flag])
            handler = self._handlers[instr.opcode]
            if instr.opcode in (Opcode.LOAD, Opcode.STORE):
                handler = self._dma_handler(instr, writing_ddr=instr.opcode is Opcode.STORE)
            queues[queue].append((pc, instr, handler, pops, pushes, instr.opcode is Opcode.FINISH))
        decoded = [queues[q] for q in Queue]
        self._decoded = (words, decoded)
        return decoded

    @staticmethod
    def _deadlock_message(queues: dict, tokens: dict) -> str:
        waits = []
        for queue, pending in queues.items():
            if pending:
                pc, instr = pending[0]
                need = [f"{flag} ({fifo} has {tokens[fifo]})" for flag, fifo in _POPS[queue].items()
                        if instr.fields[flag]]
                full = [f"{flag} ({fifo} full)" for flag, fifo in _PUSHES[queue].items()
                        if instr.fields[flag] and tokens[fifo] >= isa.TOKEN_FIFO_DEPTH]
                waits.append(f"{queue.name.lower()} queue at instruction {pc} ({instr.opcode.name}) "
                             f"waits for {', '.join(need + full)}")
        return "dependency deadlock: " + "; ".join(waits)

    # -- memory access helpers -----------------------------------------------------------------

    def _region(self, memory: np.ndarray, name: str, start: int, rows: int, row_bytes: int,
                stride: int, pc: int) -> np.ndarray:
        """A (images, rows, row_bytes) uint8 view of ``memory`` (images, bytes); bounds-checked."""
        images, size = memory.shape
        if rows == 0 or row_bytes == 0:
            return memory[:, 0:0].reshape(images, 0, 0)
        end = start + (rows - 1) * stride + row_bytes
        if start < 0 or end > size:
            raise AddressError(f"{name} access [{start:#x}, {end:#x}) is outside its {size} bytes", pc)
        if rows == 1 or stride == row_bytes:
            return memory[:, start:start + rows * row_bytes].reshape(images, rows, row_bytes)
        return np.lib.stride_tricks.as_strided(memory[:, start:end], shape=(images, rows, row_bytes),
                                               strides=(memory.strides[0], stride, 1))

    def _matrix(self, buffer: Buffer, addr: int, rows: int, cols: int, dtype: Any, pc: int, *,
                write: bool = False, first: bool = False) -> np.ndarray:
        """Dense row-major (images, rows, cols) matrices of ``dtype`` at unit address ``addr`` of
        ``buffer``. ``write``: the caller writes it (it stops being uniform). ``first``: only
        image 0's matrix, ``(1, rows, cols)``, for a caller that knows every image holds the same."""
        itemsize = _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize
        start = addr * ADDR_UNIT
        nbytes = rows * cols * itemsize
        memory = self.buffers[buffer]
        images, size = memory.shape
        if start + nbytes > size:
            raise AddressError(f"{buffer.name} access [{start:#x}, {start + nbytes:#x}) is outside its "
                               f"{size} bytes", pc)
        if first:
            return memory[:1, start:start + nbytes].view(dtype).reshape(1, rows, cols)
        if self._lazy[buffer]:
            self._materialize(buffer, start, start + nbytes)
        if write and self._uniform[buffer]:
            self._written(buffer, start, start + nbytes)
        return memory[:, start:start + nbytes].view(dtype).reshape(images, rows, cols)

    def _words(self, addr: int, count: int, pc: int) -> np.ndarray:
        """(images, count) int32 words of ACC."""
        return self._matrix(Buffer.ACC, addr, 1, count, np.int32, pc)[:, 0]

    def _param_words(self, addr: int, count: int, pc: int) -> np.ndarray:
        """(count,) int32 words of ACC that every image holds (a parameter block): loaded from
        shared DDR, or compared; ``_PerImage`` where images differ."""
        start = addr * ADDR_UNIT
        if self._covered(Buffer.ACC, start, start + 4 * count):
            return self._matrix(Buffer.ACC, addr, 1, count, np.int32, pc, first=True)[0, 0]
        return _shared(self._words(addr, count, pc))

    # -- uniform and lazily copied buffer ranges -----------------------------------------------

    def _covered(self, buffer: Buffer, start: int, end: int) -> bool:
        """Whether every image holds the same bytes ``[start, end)`` of ``buffer`` (as recorded)."""
        return any(a <= start and end <= b for a, b in reversed(self._uniform[buffer]))   # the latest first

    def _written(self, buffer: Buffer, start: int, end: int, *, uniform: bool = False, lazy: bool = False,
                 unlazy: bool = False) -> None:
        """Bytes ``[start, end)`` of ``buffer`` were (or are about to be) written: the same in every
        image (``uniform``) or maybe not; ``lazy``: in image 0's row only (uniform, dense);
        ``unlazy``: in every row, densely (the lazy ranges it covers end). Lazy ranges any other
        write overlaps must have been materialized first."""
        ranges = self._uniform[buffer]
        if ranges or uniform:
            kept = [(a, b) for a, b in ranges if b <= start or a >= end]
            if uniform:
                kept.append((start, end))
            self._uniform[buffer] = kept
        ranges = self._lazy[buffer]
        if lazy or unlazy:
            kept = [(a, min(b, start)) for a, b in ranges if a < start]   # the parts outside stay lazy
            kept += [(max(a, end), b) for a, b in ranges if b > end]
            if lazy:
                kept.append((start, end))
            self._lazy[buffer] = kept

    def _materialize(self, buffer: Buffer, start: int, end: int) -> None:
        """Copy image 0's row of the lazy ranges overlapping ``[start, end)`` to every image."""
        memory = self.buffers[buffer]
        kept = []
        for a, b in self._lazy[buffer]:
            if b <= start or a >= end:
                kept.append((a, b))
            else:
                memory[1:, a:b] = memory[0, a:b]
        self._lazy[buffer] = kept

    def _materialize_all(self) -> None:
        for buffer, ranges in self._lazy.items():
            if ranges:
                self._materialize(buffer, 0, self.buffers[buffer].shape[1])

    def _require(self, condition: bool, message: str, pc: int) -> None:
        if not condition:
            raise InvalidOperandError(message, pc)

    def _require_unit(self, flag: str, opcode: Opcode, pc: int) -> None:
        if not getattr(self.config, flag):
            raise InvalidOperandError(f"{opcode.name}: config {self.config.name!r} has no such unit ({flag} is false)", pc)

    # -- DMA -----------------------------------------------------------------------------------

    def _dma_regions(self, instr: Instruction, pc: int, writing_ddr: bool) -> tuple[np.ndarray, np.ndarray]:
        rows, row_bytes = instr.rows, instr.row_bytes
        if writing_ddr and rows > 1 and instr.dram_stride < row_bytes:
            raise InvalidOperandError(f"STORE: dram_stride {instr.dram_stride} < row_bytes {row_bytes} "
                                      "would write rows over each other", pc)
        if not writing_ddr and rows > 1 and instr.sram_stride < row_bytes:
            raise InvalidOperandError(f"LOAD: sram_stride {instr.sram_stride} < row_bytes {row_bytes} "
                                      "would write rows over each other", pc)
        dram = self._region(self.ddr, "DDR", instr.dram_addr, rows, row_bytes, instr.dram_stride, pc)
        start = instr.sram_addr * ADDR_UNIT
        sram = self._region(self.buffers[instr.buffer], instr.buffer.name, start, rows, row_bytes, instr.sram_stride, pc)
        if rows and row_bytes:
            end = start + (rows - 1) * instr.sram_stride + row_bytes
            if self._lazy[instr.buffer]:
                self._materialize(instr.buffer, start, end)
            if not writing_ddr:
                self._written(instr.buffer, start, end)
        return dram, sram

    def _dma_handler(self, instr: Instruction, writing_ddr: bool) -> Callable[[Instruction, int], None]:
        """A LOAD/STORE handler with everything that does not depend on the DDR array resolved
        once: the SRAM view and its checks. Whatever the fast path cannot prove in range (or
        a changed buffer array) goes through :meth:`_load`/:meth:`_store`, whose checks and
        messages are the definition."""
        slow = self._store if writing_ddr else self._load
        rows, row_bytes, stride = instr.rows, instr.row_bytes, instr.dram_stride
        sram_stride = instr.sram_stride
        if rows == 0 or row_bytes == 0 or (rows > 1 and (stride < row_bytes or sram_stride < row_bytes)):
            return slow
        memory = self.buffers[instr.buffer]
        start = instr.sram_addr * ADDR_UNIT
        if start + (rows - 1) * sram_stride + row_bytes > memory.shape[1]:
            return slow
        # Each row one item (a void of row_bytes): NumPy copies whole rows instead of looping
        # over their bytes.
        row_item = np.dtype((np.void, row_bytes))
        sram = self._region(memory, instr.buffer.name, start, rows, row_bytes, sram_stride, None).view(row_item)
        buffer, nbytes = instr.buffer, rows * row_bytes
        dram_start = instr.dram_addr
        dram_end = dram_start + (rows - 1) * stride + row_bytes
        contiguous = rows == 1 or stride == row_bytes  # on the DDR side
        # A dense SRAM side can be written lazily (image 0's row only): no gaps of other data.
        dense = rows == 1 or sram_stride == row_bytes
        sram_end = start + (rows - 1) * sram_stride + row_bytes
        lazy = self._lazy

        def dma(instr: Instruction, pc: int) -> None:
            ddr = self.ddr
            images, size = ddr.shape
            if self.buffers[buffer] is not memory or dram_end > size:
                return slow(instr, pc)
            if contiguous:
                dram = ddr[:, dram_start:dram_end].reshape(images, rows, row_bytes)
            elif dram_start + rows * stride <= size:
                dram = ddr[:, dram_start:dram_start + rows * stride].reshape(images, rows, stride)[:, :, :row_bytes]
            else:
                return slow(instr, pc)
            dram = dram.view(row_item)
            if writing_ddr:
                if lazy[buffer]:
                    self._materialize(buffer, start, sram_end)
                dram[...] = sram
                self._dma_write_all += nbytes
                return
            self._dma_read_all += nbytes
            if images > 1 and dense and any(a <= dram_start and dram_end <= b for a, b in self._shared_ddr):
                sram[:1] = dram[:1]   # constants: one row; copied to the others when all are read
                self._written(buffer, start, sram_end, uniform=True, lazy=True)
                return
            if lazy[buffer]:   # what a dense write covers needs no copy: it stops being lazy
                self._materialize(buffer, start, sram_end) if not dense else self._written(
                    buffer, start, sram_end, lazy=False, unlazy=True)
            sram[...] = dram
            self._written(buffer, start, sram_end)

        return dma

    def _load(self, instr: Instruction, pc: int) -> None:
        dram, sram = self._dma_regions(instr, pc, writing_ddr=False)
        sram[...] = dram
        self._dma_read += dram[0].size

    def _store(self, instr: Instruction, pc: int) -> None:
        dram, sram = self._dma_regions(instr, pc, writing_ddr=True)
        dram[...] = sram
        self._dma_write += dram[0].size

    # -- GEMM ----------------------------------------------------------------------------------

    def _gemm(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import gemm, nm as nm_kernels

        m, k, n = instr.m, instr.k, instr.n
        # Plain ifs, not _require: the messages are formatted only when raised (a hot path).
        if not (m > 0 and k > 0 and n > 0):
            raise InvalidOperandError(f"GEMM: empty shape m={m} k={k} n={n}", pc)
        if not k <= self.config.max_k:
            raise InvalidOperandError(f"GEMM: k={k} exceeds max_k={self.config.max_k}", pc)
        self._require(not (instr.residual and not instr.requant), "GEMM: residual needs requant", pc)
        self._require(not (instr.a_vector and instr.residual), "GEMM: a_vector=1 with residual=1 (the VECTOR "
                      "read port serves either A or the residual)", pc)
        # With the shape checks, so that hardware can fold them into one INVALID_OPERAND test.
        if instr.nm and self.config.nm_sparsity is None:
            raise InvalidOperandError(f"GEMM: nm=1 but config {self.config.name!r} has no nm_sparsity", pc)
        self._require(not (instr.nm and instr.b_transposed), "GEMM: nm=1 with b_transposed=1 "
                      "(the compressed B is [ceil(k/M)*N, n], never transposed)", pc)
        a_buffer = Buffer.VECTOR if instr.a_vector else Buffer.INPUT
        a = self._matrix(a_buffer, instr.a_addr, m, k, np.uint8 if instr.unsigned_a else np.int8, pc)
        if instr.nm:
            keep, group = self.config.nm_sparsity
            layout = isa.nm_weight_layout(k, n, self.config.nm_sparsity)
            # One check over the whole compressed region (values, alignment gap, indices).
            self._matrix(Buffer.WEIGHT, instr.b_addr, 1, layout.nbytes, np.uint8, pc)
            values = self._matrix(Buffer.WEIGHT, instr.b_addr, layout.rows, n, np.int8, pc)
            indices = self._matrix(Buffer.WEIGHT, instr.b_addr + layout.indices_offset // ADDR_UNIT,
                                   layout.rows, n, np.uint8, pc)
        else:
            # Weights every image holds (constants): image 0's, one product for the whole batch.
            b_start = instr.b_addr * ADDR_UNIT
            uniform = self._covered(Buffer.WEIGHT, b_start, b_start + k * n)
            if instr.b_transposed:
                b = self._matrix(Buffer.WEIGHT, instr.b_addr, n, k, np.int8, pc, first=uniform).transpose(0, 2, 1)
            else:
                b = self._matrix(Buffer.WEIGHT, instr.b_addr, k, n, np.int8, pc, first=uniform)
            if not uniform and _same_bytes(self.buffers[Buffer.WEIGHT], b_start, k * n):
                b = b[:1]
        macs = m * (layout.rows if instr.nm else k) * n  # executed: kept weights only
        addend = None  # what the engine adds to A @ B before requantization: ACC partials and bias
        if instr.accumulate:
            addend = self._matrix(Buffer.ACC, instr.acc_addr, m, n, np.int32, pc).astype(np.int64)
        if instr.bias or instr.requant:
            params = self._param_words(instr.param_addr, 3 * n, pc).astype(np.int64)
            bias, multiplier, shift = params[:n], params[n:2 * n], params[2 * n:]
            if instr.bias:
                addend = bias if addend is None else addend + bias
        if instr.nm:  # index values are checked with the parameter values, after every address
            values, indices = _shared(values), _shared(indices)
            b = self._nonlinear(instr.opcode, pc, lambda: NMWeights(values.copy(), indices.copy(), keep, group, k))
        elif b.shape[0] == 1:
            b = b[0]   # shared (above): a stack of A against one B
        if not instr.requant:
            product = None if instr.nm else gemm.exact_product(a, b)
            if product is not None and (gemm.product_bound(a, b) + (0 if addend is None else int(np.abs(addend).max()))
                                        < 1 << 31):   # cannot overflow int32: stored as it is
                if addend is not None:
                    product = np.add(product, addend, dtype=np.float64)
                self._matrix(Buffer.ACC, instr.acc_addr, m, n, np.int32, pc, write=True)[...] = product
                self._macs += macs
                return
            acc = nm_kernels.nm_matmul(a, b) if instr.nm else gemm.matmul(a, b)
            if addend is not None:
                acc = acc + addend
            self._require(bool(np.all((acc >= -(1 << 31)) & (acc < (1 << 31)))),
                          "GEMM: accumulator overflows int32", pc)
            self._matrix(Buffer.ACC, instr.acc_addr, m, n, np.int32, pc, write=True)[...] = acc
        else:
            out = self._matrix(Buffer.VECTOR, instr.out_addr, m, n, np.int8, pc, write=True)
            # Blocked in cache, written in place; False (nothing written) where it does not apply.
            if not (instr.nm or instr.residual or instr.accumulate) and gemm.linear_into(
                    out, a, b, addend, multiplier, shift):
                self._macs += macs
                return
            residual = out if instr.residual else None
            if instr.nm:
                y = self._nonlinear(instr.opcode, pc, lambda: nm_kernels.nm_linear(
                    a, b, addend, multiplier, shift, residual=residual))
            else:
                y = self._nonlinear(instr.opcode, pc, lambda: gemm.linear(
                    a, b, addend, multiplier, shift, residual=residual, dtype=np.int8))
            out[...] = y
        self._macs += macs

    # -- vector unit ---------------------------------------------------------------------------

    def _requant(self, instr: Instruction, pc: int) -> None:
        from vitaccel.hw.spec.numerics import requantize

        rows, cols = instr.rows, instr.cols
        acc = self._matrix(Buffer.ACC, instr.src_addr, rows, cols, np.int32, pc).astype(np.int64)
        params = self._param_words(instr.param_addr, 3 * cols, pc).astype(np.int64)
        y = self._nonlinear(instr.opcode, pc, lambda: requantize(
            acc + params[:cols], params[cols:2 * cols], params[2 * cols:]))
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc, write=True)[...] = y

    def _nonlinear(self, opcode: Opcode, pc: int, call: Callable[[], np.ndarray]) -> np.ndarray:
        """Call a golden kernel; parameters it rejects are the program's fault."""
        try:
            return call()
        except _KERNEL_ERRORS as err:
            raise InvalidOperandError(f"{opcode.name}: {err}", pc) from None

    def _add(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        rows, cols = instr.rows, instr.cols
        a = self._matrix(Buffer.VECTOR, instr.src_addr, rows, cols, np.int8, pc)
        b = self._matrix(Buffer.VECTOR, instr.src2_addr, rows, cols, np.int8, pc)
        params = isa.unpack_add_params(self._param_words(instr.param_addr, isa.ADD_PARAM_WORDS, pc))
        try:
            out = self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc, write=True)
        except AddressError:   # parameters the kernel rejects are reported first
            self._nonlinear(instr.opcode, pc, lambda: nonlinear.add(a, b, params))
            raise
        if not nonlinear.add_into(out, a, b, params):
            out[...] = self._nonlinear(instr.opcode, pc, lambda: nonlinear.add(a, b, params))

    def _softmax(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_softmax", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        scores = self._matrix(Buffer.ACC, instr.src_addr, rows, cols, np.int32, pc)
        params = isa.unpack_softmax_params(self._param_words(instr.param_addr, isa.SOFTMAX_PARAM_WORDS, pc))
        # What the unit is not built for (the RTL checks it with the parameters): rows longer
        # than max_tokens, tables of other widths than the config's, wider multipliers.
        config = self.config
        if cols > config.max_tokens:
            raise InvalidOperandError(f"SOFTMAX: cols={cols} exceeds max_tokens={config.max_tokens}", pc)
        if (params.exp_lut_bits, params.recip_lut_bits) != (config.exp_lut_bits, config.recip_lut_bits):
            raise InvalidOperandError(f"SOFTMAX: parameters for exp/recip tables of {params.exp_lut_bits}/"
                                      f"{params.recip_lut_bits} bits, the unit has {config.exp_lut_bits}/"
                                      f"{config.recip_lut_bits}", pc)
        if params.multiplier >= 1 << SOFTMAX_MULT_BITS:
            raise InvalidOperandError(f"SOFTMAX: multiplier {params.multiplier} exceeds {SOFTMAX_MULT_BITS} bits", pc)
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.uint8, pc, write=True)
        if not nonlinear.softmax_into(out, scores, params):   # ACC into VECTOR: no overlap
            out[...] = self._nonlinear(instr.opcode, pc, lambda: nonlinear.softmax(scores, params))

    def _gelu(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_gelu", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        x = self._matrix(Buffer.VECTOR, instr.src_addr, rows, cols, np.int8, pc)
        table = _shared(self.luts[isa.LutId.GELU])
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc, write=True)
        if not nonlinear.gelu_into(out, x, table):
            out[...] = self._nonlinear(instr.opcode, pc, lambda: nonlinear.gelu(x, table))

    def _layernorm(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_layernorm", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        header = self._param_words(instr.param_addr, isa.LAYERNORM_HEADER_WORDS, pc)
        if int(header[0]) != cols:
            raise InvalidOperandError(f"LAYERNORM: parameter block is for {int(header[0])} "
                                      f"channels, instruction has cols={cols}", pc)
        block = self._param_words(instr.param_addr, isa.layernorm_param_words(cols), pc)
        # Unpacking (gamma, beta to Python ints) is slow and the blocks repeat every image:
        # memoised by content, the parameters being immutable tuples.
        key = block.tobytes()
        cached = self._layernorm_params.get(key)
        if cached is None:
            params = isa.unpack_layernorm_params(block)
            gamma_limit, beta_limit = 1 << (LAYERNORM_GAMMA_BITS - 1), 1 << (LAYERNORM_BETA_BITS - 1)
            fits = (all(-gamma_limit <= g < gamma_limit for g in params.gamma)
                    and all(-beta_limit <= b < beta_limit for b in params.beta))
            if len(self._layernorm_params) >= 64:
                self._layernorm_params.clear()
            cached = self._layernorm_params[key] = (params, fits)
        params, fits = cached
        x = self._matrix(Buffer.VECTOR, instr.src_addr, rows, cols, np.int8, pc)
        # In the RTL's order: the output shift and what the unit is not built for, the
        # destination, then gamma/beta wider than the unit's registers (found while copying).
        if params.out_shift > MAX_SHIFT:
            raise InvalidOperandError(f"LAYERNORM: out_shift {params.out_shift} exceeds {MAX_SHIFT}", pc)
        if cols > LAYERNORM_MAX_CHANNELS:
            raise InvalidOperandError(f"LAYERNORM: cols={cols} exceeds the unit's {LAYERNORM_MAX_CHANNELS} channels", pc)
        if params.rsqrt_lut_bits != self.config.rsqrt_lut_bits:
            raise InvalidOperandError(f"LAYERNORM: parameters for a {params.rsqrt_lut_bits}-bit rsqrt table, "
                                      f"the unit has {self.config.rsqrt_lut_bits}", pc)
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc, write=True)
        if not fits and rows * cols:
            raise InvalidOperandError(f"LAYERNORM: a gamma beyond {LAYERNORM_GAMMA_BITS} or a beta beyond "
                                      f"{LAYERNORM_BETA_BITS} signed bits", pc)
        if not nonlinear.layernorm_into(out, x, params):
            out[...] = self._nonlinear(instr.opcode, pc, lambda: nonlinear.layernorm(x, params))

    def _lut_load(self, instr: Instruction, pc: int) -> None:
        table = self.luts[instr.lut]
        if instr.offset + instr.count > table.shape[1]:
            raise InvalidOperandError(f"LUT_LOAD: entries {instr.offset}..{instr.offset + instr.count - 1} "
                                      f"outside the {table.shape[1]}-entry {instr.lut.name} table", pc)
        src = self._matrix(Buffer.VECTOR, instr.src_addr, 1, instr.count, np.int8, pc)[:, 0]
        table[:, instr.offset:instr.offset + instr.count] = src

    # -- top-k and sparse attention ------------------------------------------------------------

    def _summed_scores(self, opcode: Opcode, addr: int, rows: int, n: int, pc: int) -> np.ndarray:
        """The top-k engine's front end: ``rows`` uint8 rows of ``n`` at ``addr`` summed column-wise,
        (images, n)."""
        from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS

        limit = ((1 << TOPK_SCORE_BITS) - 1) // 0xFF  # rows * 255 must fit a score
        self._require(1 <= rows <= limit, f"{opcode.name}: summing needs 1 <= rows <= {limit} so that a column "
                      f"sum of uint8 values fits {TOPK_SCORE_BITS} bits, got rows={rows}", pc)
        return self._matrix(Buffer.VECTOR, addr, rows, n, np.uint8, pc).sum(axis=1, dtype=np.int64)

    def _kept_indices(self, opcode: Opcode, addr: int, count: int, n: int, pc: int) -> np.ndarray:
        """``count`` uint16 indices at ``addr`` (images, count), each below ``n`` (INVALID_OPERAND
        otherwise; the message names the entry of the first image, as a one-image run does)."""
        indices = self._matrix(Buffer.VECTOR, addr, 1, count, np.uint16, pc)[:, 0].astype(np.int64)
        bad = np.flatnonzero(indices[0] >= n)
        if bad.size:
            raise InvalidOperandError(f"{opcode.name}: index {int(indices[0, bad[0]])} (entry {int(bad[0])} at "
                                      f"index_addr {addr}) is outside the {n} source rows", pc)
        if indices.shape[0] > 1 and (indices >= n).any():
            raise _PerImage   # another image faults: each gets its own message
        return indices

    def _topk(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import topk

        self._require_unit("has_topk", instr.opcode, pc)
        rows, n, k = instr.rows, instr.n, instr.k
        self._require(k <= n <= self.config.max_tokens,
                      f"TOPK: need k <= n <= max_tokens={self.config.max_tokens}, got k={k} n={n}", pc)
        if instr.sum_rows:
            scores = self._summed_scores(instr.opcode, instr.src_addr, rows, n, pc)[:, None]
        else:
            scores = self._matrix(Buffer.VECTOR, instr.src_addr, rows, n, np.uint16, pc)
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, scores.shape[1], k, np.uint16, pc, write=True)
        out[...] = self._nonlinear(instr.opcode, pc, lambda: topk.topk_rows(scores, k))

    def _gather(self, instr: Instruction, pc: int) -> None:
        self._require_unit("has_topk", instr.opcode, pc)
        rows, cols, n = instr.rows, instr.cols, instr.n
        source = self._matrix(Buffer.VECTOR, instr.src_addr, n, cols, np.uint8, pc)
        indices = self._kept_indices(instr.opcode, instr.index_addr, rows, n, pc)
        # A copy: the destination may overlap the source.
        gathered = np.take_along_axis(source, indices[:, :, None], axis=1)
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.uint8, pc, write=True)[...] = gathered

    def _package(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import topk

        self._require_unit("has_topk", instr.opcode, pc)
        n, cols, k = instr.n, instr.cols, instr.k
        self._require(k <= n <= self.config.max_tokens,
                      f"PACKAGE: need k <= n <= max_tokens={self.config.max_tokens}, got k={k} n={n}", pc)
        scores = self._summed_scores(instr.opcode, instr.prob_addr, instr.heads, n, pc)
        x = self._matrix(Buffer.VECTOR, instr.src_addr, n, cols, np.int8, pc)
        kept = self._kept_indices(instr.opcode, instr.index_addr, k, n, pc)
        if x.shape[0] > 1:
            raise _PerImage   # the pruned set differs from image to image: one at a time
        pruned = np.setdiff1d(np.arange(n), kept[0])
        y = self._nonlinear(instr.opcode, pc, lambda: topk.package_token(x[0], scores[0], pruned))
        self._matrix(Buffer.VECTOR, instr.dst_addr, 1, cols, np.int8, pc, write=True)[0, 0] = y
        self._macs += pruned.size * cols

    def _sparse_attn(self, instr: Instruction, pc: int) -> None:
        from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT, MaskPredictParams
        from vitaccel.sim.golden import attention

        self._require_unit("has_sparse_attention", instr.opcode, pc)
        m, n, d = instr.m, instr.n, instr.d
        max_d = self.config.sparse_max_head_dim
        self._require(m == n and 0 < n <= self.config.max_tokens and 1 <= d <= max_d,
                      f"SPARSE_ATTN: need 0 < m == n <= max_tokens and 1 <= d <= sparse_max_head_dim ({max_d}); "
                      f"got m={m} n={n} d={d}", pc)
        q = self._matrix(Buffer.VECTOR, instr.q_addr, m, d, np.int8, pc)
        k = self._matrix(Buffer.VECTOR, instr.k_addr, n, d, np.int8, pc)
        v = self._matrix(Buffer.VECTOR, instr.v_addr, n, d, np.int8, pc)
        predict = bool(instr.predict)
        if not predict:
            mask = self._matrix(Buffer.VECTOR, instr.mask_addr, m, n, np.uint8, pc).astype(bool)
        params = self._words(instr.param_addr, isa.SPARSE_ATTN_PARAM_WORDS, pc)
        if q.shape[0] > 1:
            raise _PerImage   # the kernel takes one image's matrices
        kwargs = isa.unpack_sparse_attn_params(params[0])
        margin = kwargs.pop("margin")
        if predict:
            self._require(margin < PREDICT_MARGIN_LIMIT,
                          f"SPARSE_ATTN: margin must be below {PREDICT_MARGIN_LIMIT} with predict=1, got {margin}", pc)
            mask = attention.predict_mask(q[0], k[0], MaskPredictParams(margin))[None]
        y = self._nonlinear(instr.opcode, pc, lambda: attention.masked_attention(q[0], k[0], v[0], mask[0], **kwargs))
        self._matrix(Buffer.VECTOR, instr.out_addr, m, d, np.int8, pc, write=True)[0] = y
        self._macs += 2 * int(mask.sum()) * d


def stored_ranges(words: list[int]) -> list[tuple[int, int]]:
    """The DDR byte ranges ``[start, end)`` the STOREs of ``words`` can write, merged and sorted:
    every DDR byte a run of the program can change (a device reusing DDR arrays restores only
    these). Words that do not decode are skipped (such a program stops before any STORE runs)."""
    spans = []
    for word in words:
        try:
            instr = isa.decode(word)
        except isa.IllegalInstruction:
            continue
        if instr.opcode is Opcode.STORE and instr.rows and instr.row_bytes:
            spans.append((instr.dram_addr, instr.dram_addr + (instr.rows - 1) * instr.dram_stride + instr.row_bytes))
    return merge_ranges(spans)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ranges ``[start, end)`` sorted, with overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def run_program(config: AccelConfig, program: list[int] | bytes, ddr: np.ndarray) -> RunStats:
    """Run ``program`` on ``ddr`` (modified in place) with a fresh :class:`GoldenMachine`."""
    return GoldenMachine(config).run(program, ddr)
