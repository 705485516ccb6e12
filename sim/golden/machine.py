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
    "words_from_bytes", "words_to_bytes", "run_program",
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


@dataclass
class RunStats:
    """What one run did: instructions per opcode, multiply-accumulates, DMA bytes."""

    instructions: Counter = field(default_factory=Counter)
    macs: int = 0
    dma_read_bytes: int = 0
    dma_write_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"instructions": {op.name: n for op, n in self.instructions.items()},
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


class GoldenMachine:
    """Executes programs for one config. Buffers persist between runs (like the hardware's).

    Parameters
    ----------
    config : AccelConfig
        Sizes the buffers and says which units exist.
    """

    def __init__(self, config: AccelConfig) -> None:
        isa.check_config(config)
        self.config = config
        self.buffers = {buf: np.zeros(isa.buffer_bytes(config, buf), dtype=np.uint8) for buf in Buffer}
        self.luts = {lut: np.zeros(isa.GELU_LUT_ENTRIES, dtype=np.int8) for lut in isa.LutId}
        self._handlers: dict[Opcode, Callable[[Instruction, int], None]] = {
            Opcode.LOAD: self._load, Opcode.STORE: self._store, Opcode.GEMM: self._gemm,
            Opcode.ADD: self._add, Opcode.REQUANT: self._requant, Opcode.SOFTMAX: self._softmax,
            Opcode.GELU: self._gelu, Opcode.LAYERNORM: self._layernorm, Opcode.LUT_LOAD: self._lut_load,
            Opcode.TOPK: self._topk, Opcode.SPARSE_ATTN: self._sparse_attn, Opcode.GATHER: self._gather,
            Opcode.PACKAGE: self._package,
            Opcode.SYNC: lambda instr, pc: None, Opcode.FINISH: lambda instr, pc: None,
        }
        self.ddr = np.zeros(0, dtype=np.uint8)
        self.stats = RunStats()
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
        words = tuple(words_from_bytes(program) if isinstance(program, (bytes, bytearray)) else program)
        if checksum is not None and words:
            if self._checksummed is None or self._checksummed[0] != words:
                self._checksummed = (words, program_crc32(words_to_bytes(words)))
            actual = self._checksummed[1]
            if actual != checksum:
                raise ChecksumError(f"program checksum mismatch: CRC-32 {actual:#010x}, expected {checksum:#010x} "
                                    "(the program is corrupted)")
        # Per queue, in Queue order: (pc, instr, handler, pops, pushes, is_finish) with the
        # token FIFOs as indices into ``tokens`` (decoded and resolved once per program).
        queues = [deque(entries) for entries in self._dispatch(words)]
        self.ddr = ddr
        self.stats = RunStats()
        counts = self.stats.instructions
        tokens = [0] * len(_FIFOS)
        depth = isa.TOKEN_FIFO_DEPTH
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
                    handler(instr, pc)
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
                        return self.stats
            if not any(queues):
                raise MissingFinishError(f"program of {len(words)} instructions ends without FINISH")
            if not progress:
                by_queue = {q: deque((e[0], e[1]) for e in queues[i]) for i, q in enumerate(Queue)}
                raise DeadlockError(self._deadlock_message(by_queue, dict(zip(_FIFOS, tokens))),
                                    min(q[0][0] for q in queues if q))

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
        """A (rows, row_bytes) uint8 view of ``memory``; bounds-checked."""
        if rows == 0 or row_bytes == 0:
            return memory[0:0].reshape(0, 0)
        end = start + (rows - 1) * stride + row_bytes
        if start < 0 or end > memory.size:
            raise AddressError(f"{name} access [{start:#x}, {end:#x}) is outside its {memory.size} bytes", pc)
        if rows == 1 or stride == row_bytes:
            return memory[start:start + rows * row_bytes].reshape(rows, row_bytes)
        return np.lib.stride_tricks.as_strided(memory[start:end], shape=(rows, row_bytes),
                                               strides=(stride, 1))

    def _matrix(self, buffer: Buffer, addr: int, rows: int, cols: int, dtype: Any, pc: int) -> np.ndarray:
        """A dense row-major (rows, cols) matrix of ``dtype`` at unit address ``addr`` of ``buffer``."""
        itemsize = _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize
        start = addr * ADDR_UNIT
        nbytes = rows * cols * itemsize
        memory = self.buffers[buffer]
        if start + nbytes > memory.size:
            raise AddressError(f"{buffer.name} access [{start:#x}, {start + nbytes:#x}) is outside its "
                               f"{memory.size} bytes", pc)
        return memory[start:start + nbytes].view(dtype).reshape(rows, cols)

    def _words(self, addr: int, count: int, pc: int) -> np.ndarray:
        return self._matrix(Buffer.ACC, addr, 1, count, np.int32, pc)[0]

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
        sram = self._region(self.buffers[instr.buffer], instr.buffer.name, instr.sram_addr * ADDR_UNIT,
                            rows, row_bytes, instr.sram_stride, pc)
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
        if start + (rows - 1) * sram_stride + row_bytes > memory.size:
            return slow
        sram = self._region(memory, instr.buffer.name, start, rows, row_bytes, sram_stride, None)
        buffer, nbytes = instr.buffer, rows * row_bytes
        dram_start = instr.dram_addr
        dram_end = dram_start + (rows - 1) * stride + row_bytes
        contiguous = rows == 1 or stride == row_bytes  # on the DDR side

        def dma(instr: Instruction, pc: int) -> None:
            ddr = self.ddr
            if self.buffers[buffer] is not memory or dram_end > ddr.size:
                return slow(instr, pc)
            if contiguous:
                dram = ddr[dram_start:dram_end].reshape(rows, row_bytes)
            elif dram_start + rows * stride <= ddr.size:
                dram = ddr[dram_start:dram_start + rows * stride].reshape(rows, stride)[:, :row_bytes]
            else:
                return slow(instr, pc)
            if writing_ddr:
                dram[...] = sram
                self.stats.dma_write_bytes += nbytes
            else:
                sram[...] = dram
                self.stats.dma_read_bytes += nbytes

        return dma

    def _load(self, instr: Instruction, pc: int) -> None:
        dram, sram = self._dma_regions(instr, pc, writing_ddr=False)
        sram[...] = dram
        self.stats.dma_read_bytes += dram.size

    def _store(self, instr: Instruction, pc: int) -> None:
        dram, sram = self._dma_regions(instr, pc, writing_ddr=True)
        dram[...] = sram
        self.stats.dma_write_bytes += dram.size

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
        # With the shape checks, so that hardware can fold them into one INVALID_OPERAND test.
        if instr.nm and self.config.nm_sparsity is None:
            raise InvalidOperandError(f"GEMM: nm=1 but config {self.config.name!r} has no nm_sparsity", pc)
        self._require(not (instr.nm and instr.b_transposed), "GEMM: nm=1 with b_transposed=1 "
                      "(the compressed B is [ceil(k/M)*N, n], never transposed)", pc)
        a = self._matrix(Buffer.INPUT, instr.a_addr, m, k, np.uint8 if instr.unsigned_a else np.int8, pc)
        if instr.nm:
            keep, group = self.config.nm_sparsity
            layout = isa.nm_weight_layout(k, n, self.config.nm_sparsity)
            # One check over the whole compressed region (values, alignment gap, indices).
            self._matrix(Buffer.WEIGHT, instr.b_addr, 1, layout.nbytes, np.uint8, pc)
            values = self._matrix(Buffer.WEIGHT, instr.b_addr, layout.rows, n, np.int8, pc)
            indices = self._matrix(Buffer.WEIGHT, instr.b_addr + layout.indices_offset // ADDR_UNIT,
                                   layout.rows, n, np.uint8, pc)
        elif instr.b_transposed:
            b = self._matrix(Buffer.WEIGHT, instr.b_addr, n, k, np.int8, pc).T
        else:
            b = self._matrix(Buffer.WEIGHT, instr.b_addr, k, n, np.int8, pc)
        self.stats.macs += m * (layout.rows if instr.nm else k) * n  # executed: kept weights only
        addend = None  # what the engine adds to A @ B before requantization: ACC partials and bias
        if instr.accumulate:
            addend = self._matrix(Buffer.ACC, instr.acc_addr, m, n, np.int32, pc).astype(np.int64)
        if instr.bias or instr.requant:
            params = self._words(instr.param_addr, 3 * n, pc).astype(np.int64)
            bias, multiplier, shift = params[:n], params[n:2 * n], params[2 * n:]
            if instr.bias:
                addend = bias if addend is None else addend + bias
        if instr.nm:  # index values are checked with the parameter values, after every address
            b = self._nonlinear(instr.opcode, pc, lambda: NMWeights(values.copy(), indices.copy(), keep, group, k))
        if not instr.requant:
            acc = nm_kernels.nm_matmul(a, b) if instr.nm else gemm.matmul(a, b)
            if addend is not None:
                acc = acc + addend
            self._require(bool(np.all((acc >= -(1 << 31)) & (acc < (1 << 31)))),
                          "GEMM: accumulator overflows int32", pc)
            self._matrix(Buffer.ACC, instr.acc_addr, m, n, np.int32, pc)[...] = acc
            return
        out = self._matrix(Buffer.VECTOR, instr.out_addr, m, n, np.int8, pc)
        linear = nm_kernels.nm_linear if instr.nm else gemm.linear
        out[...] = self._nonlinear(instr.opcode, pc, lambda: linear(
            a, b, addend, multiplier, shift, residual=out if instr.residual else None))

    # -- vector unit ---------------------------------------------------------------------------

    def _requant(self, instr: Instruction, pc: int) -> None:
        from vitaccel.hw.spec.numerics import requantize

        rows, cols = instr.rows, instr.cols
        acc = self._matrix(Buffer.ACC, instr.src_addr, rows, cols, np.int32, pc).astype(np.int64)
        params = self._words(instr.param_addr, 3 * cols, pc).astype(np.int64)
        y = self._nonlinear(instr.opcode, pc, lambda: requantize(
            acc + params[:cols], params[cols:2 * cols], params[2 * cols:]))
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc)[...] = y

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
        params = isa.unpack_add_params(self._words(instr.param_addr, isa.ADD_PARAM_WORDS, pc))
        y = self._nonlinear(instr.opcode, pc, lambda: nonlinear.add(a, b, params))
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc)[...] = y

    def _softmax(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_softmax", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        scores = self._matrix(Buffer.ACC, instr.src_addr, rows, cols, np.int32, pc)
        params = isa.unpack_softmax_params(self._words(instr.param_addr, isa.SOFTMAX_PARAM_WORDS, pc))
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
        y = self._nonlinear(instr.opcode, pc, lambda: nonlinear.softmax(scores, params))
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.uint8, pc)[...] = y

    def _gelu(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_gelu", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        x = self._matrix(Buffer.VECTOR, instr.src_addr, rows, cols, np.int8, pc)
        y = self._nonlinear(instr.opcode, pc, lambda: nonlinear.gelu(x, self.luts[isa.LutId.GELU]))
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc)[...] = y

    def _layernorm(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import nonlinear

        self._require_unit("has_layernorm", instr.opcode, pc)
        rows, cols = instr.rows, instr.cols
        header = self._words(instr.param_addr, isa.LAYERNORM_HEADER_WORDS, pc)
        if int(header[0]) != cols:
            raise InvalidOperandError(f"LAYERNORM: parameter block is for {int(header[0])} "
                                      f"channels, instruction has cols={cols}", pc)
        block = self._words(instr.param_addr, isa.layernorm_param_words(cols), pc)
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
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.int8, pc)
        if not fits and rows * cols:
            raise InvalidOperandError(f"LAYERNORM: a gamma beyond {LAYERNORM_GAMMA_BITS} or a beta beyond "
                                      f"{LAYERNORM_BETA_BITS} signed bits", pc)
        out[...] = self._nonlinear(instr.opcode, pc, lambda: nonlinear.layernorm(x, params))

    def _lut_load(self, instr: Instruction, pc: int) -> None:
        table = self.luts[instr.lut]
        if instr.offset + instr.count > table.size:
            raise InvalidOperandError(f"LUT_LOAD: entries {instr.offset}..{instr.offset + instr.count - 1} "
                                      f"outside the {table.size}-entry {instr.lut.name} table", pc)
        src = self._matrix(Buffer.VECTOR, instr.src_addr, 1, instr.count, np.int8, pc)[0]
        table[instr.offset:instr.offset + instr.count] = src

    # -- top-k and sparse attention ------------------------------------------------------------

    def _summed_scores(self, opcode: Opcode, addr: int, rows: int, n: int, pc: int) -> np.ndarray:
        """The top-k engine's front end: ``rows`` uint8 rows of ``n`` at ``addr`` summed column-wise."""
        from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS

        limit = ((1 << TOPK_SCORE_BITS) - 1) // 0xFF  # rows * 255 must fit a score
        self._require(1 <= rows <= limit, f"{opcode.name}: summing needs 1 <= rows <= {limit} so that a column "
                      f"sum of uint8 values fits {TOPK_SCORE_BITS} bits, got rows={rows}", pc)
        return self._matrix(Buffer.VECTOR, addr, rows, n, np.uint8, pc).sum(axis=0, dtype=np.int64)

    def _kept_indices(self, opcode: Opcode, addr: int, count: int, n: int, pc: int) -> np.ndarray:
        """``count`` uint16 indices at ``addr``, each below ``n`` (INVALID_OPERAND otherwise)."""
        indices = self._matrix(Buffer.VECTOR, addr, 1, count, np.uint16, pc)[0].astype(np.int64)
        bad = np.flatnonzero(indices >= n)
        if bad.size:
            raise InvalidOperandError(f"{opcode.name}: index {int(indices[bad[0]])} (entry {int(bad[0])} at "
                                      f"index_addr {addr}) is outside the {n} source rows", pc)
        return indices

    def _topk(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import topk

        self._require_unit("has_topk", instr.opcode, pc)
        rows, n, k = instr.rows, instr.n, instr.k
        self._require(k <= n <= self.config.max_tokens,
                      f"TOPK: need k <= n <= max_tokens={self.config.max_tokens}, got k={k} n={n}", pc)
        if instr.sum_rows:
            scores = self._summed_scores(instr.opcode, instr.src_addr, rows, n, pc)[None]
        else:
            scores = self._matrix(Buffer.VECTOR, instr.src_addr, rows, n, np.uint16, pc)
        out = self._matrix(Buffer.VECTOR, instr.dst_addr, len(scores), k, np.uint16, pc)
        for row in range(len(scores)):
            out[row] = self._nonlinear(instr.opcode, pc, lambda: topk.topk(scores[row], k)[0])

    def _gather(self, instr: Instruction, pc: int) -> None:
        self._require_unit("has_topk", instr.opcode, pc)
        rows, cols, n = instr.rows, instr.cols, instr.n
        source = self._matrix(Buffer.VECTOR, instr.src_addr, n, cols, np.uint8, pc)
        indices = self._kept_indices(instr.opcode, instr.index_addr, rows, n, pc)
        gathered = source[indices]  # a copy: the destination may overlap the source
        self._matrix(Buffer.VECTOR, instr.dst_addr, rows, cols, np.uint8, pc)[...] = gathered

    def _package(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import topk

        self._require_unit("has_topk", instr.opcode, pc)
        n, cols, k = instr.n, instr.cols, instr.k
        self._require(k <= n <= self.config.max_tokens,
                      f"PACKAGE: need k <= n <= max_tokens={self.config.max_tokens}, got k={k} n={n}", pc)
        scores = self._summed_scores(instr.opcode, instr.prob_addr, instr.heads, n, pc)
        x = self._matrix(Buffer.VECTOR, instr.src_addr, n, cols, np.int8, pc)
        kept = self._kept_indices(instr.opcode, instr.index_addr, k, n, pc)
        pruned = np.setdiff1d(np.arange(n), kept)
        self.stats.macs += pruned.size * cols
        y = self._nonlinear(instr.opcode, pc, lambda: topk.package_token(x, scores, pruned))
        self._matrix(Buffer.VECTOR, instr.dst_addr, 1, cols, np.int8, pc)[...] = y

    def _sparse_attn(self, instr: Instruction, pc: int) -> None:
        from vitaccel.sim.golden import attention

        self._require_unit("has_sparse_attention", instr.opcode, pc)
        m, n, d = instr.m, instr.n, instr.d
        self._require(m == n and 0 < n <= self.config.max_tokens and d > 0,
                      f"SPARSE_ATTN: need 0 < m == n <= max_tokens and d > 0; got m={m} n={n} d={d}", pc)
        q = self._matrix(Buffer.VECTOR, instr.q_addr, m, d, np.int8, pc)
        k = self._matrix(Buffer.VECTOR, instr.k_addr, n, d, np.int8, pc)
        v = self._matrix(Buffer.VECTOR, instr.v_addr, n, d, np.int8, pc)
        mask = self._matrix(Buffer.VECTOR, instr.mask_addr, m, n, np.uint8, pc).astype(bool)
        params = self._words(instr.param_addr, isa.SPARSE_ATTN_PARAM_WORDS, pc)
        self.stats.macs += 2 * int(mask.sum()) * d
        y = self._nonlinear(instr.opcode, pc,
                            lambda: attention.masked_attention(q, k, v, mask, **isa.unpack_sparse_attn_params(params)))
        self._matrix(Buffer.VECTOR, instr.out_addr, m, d, np.int8, pc)[...] = y


def run_program(config: AccelConfig, program: list[int] | bytes, ddr: np.ndarray) -> RunStats:
    """Run ``program`` on ``ddr`` (modified in place) with a fresh :class:`GoldenMachine`."""
    return GoldenMachine(config).run(program, ddr)
