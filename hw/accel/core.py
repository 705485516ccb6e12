"""The accelerator core: register file, DMA, instruction fetch, three queues, buffers.

Run of a program (``CONTROL.start``):

1. **Scan**: the whole program streams through the DMA read engine once and every word is
   checked with :class:`~vitaccel.hw.accel.decode.InstructionChecker` and folded into the
   program's CRC-32 (:mod:`vitaccel.hw.accel.crc`). With ``PROGRAM_CHECK.crc`` set, a CRC
   other than ``PROGRAM_CRC`` stops the run with ``PROGRAM_CHECKSUM``; otherwise the first
   illegal word stops it with ``ILLEGAL_INSTRUCTION``; both before anything executes, exactly
   as the golden machine (which checks and decodes the program up front) reports it.
2. **Run**: instructions are fetched again one by one (the read engine is shared with the
   load queue, one transfer at a time) and dispatched in program order into the
   instruction FIFO of their queue (:data:`QUEUE_DEPTH` entries). The load, compute and
   store queues run concurrently and synchronise only through four dependency-token
   counters of depth ``isa.TOKEN_FIFO_DEPTH`` (VTA-style; tokens carry no data).
3. **Stop**: FINISH (with every other queue drained) raises ``STATUS.done``; an error raises
   ``STATUS.error`` with ``ERROR_CODE`` / ``ERROR_PC`` after the transfers in flight end.

The on-chip buffers are :class:`amaranth.lib.memory.Memory` instances 16 bytes
(``isa.ADDR_UNIT``) wide with byte write enables, ``isa.buffer_bytes`` deep. The load and store
paths take any alignment and stride; each cycle they move the bytes that are left of the current
DMA word, of the current row and of the current 16-byte buffer word (one byte-enabled buffer
write or one buffer read, through a byte rotator): up to a DMA word per cycle. The compute queue executes SYNC,
FINISH, LUT_LOAD, GELU, ADD, SOFTMAX and LAYERNORM (through :mod:`vitaccel.hw.accel.vector`'s
controller and the non-linear units) and GEMM
(through the matrix engine, :mod:`vitaccel.hw.accel.gemm`, whose output rows go out as
16-byte writes with byte enables): requantizing to int8 in VECTOR, or raw int32 to ACC (with
``accumulate`` adding the ACC partials); only ``accumulate`` together with ``requant`` stops with
``INVALID_OPERAND``. REQUANT (ACC int32 -> VECTOR int8 per column) runs in
:mod:`vitaccel.hw.accel.requant`; with ``config.has_topk``, TOPK (with its ``sum_rows`` front
end), GATHER and PACKAGE run on the top-k engine through :mod:`vitaccel.hw.accel.tokens`
(without it they stop with ``INVALID_OPERAND``, as the golden machine's unit check); with
``config.has_sparse_attention``, SPARSE_ATTN runs through :mod:`vitaccel.hw.accel.sparse_attn`
(mask prediction and packing on chip, then the sparse attention unit).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal, Value
from amaranth.hdl import signed, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from vitaccel.hw.axi.dma import AxiDma
from vitaccel.hw.axi.lite import AxiLiteRegisters, accelerator_register_map
from vitaccel.hw.axi.signatures import AXI_RESP_OKAY, FlatPortsWrapper
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode, Queue
from vitaccel.hw.spec.regmap import ErrorCode

from .crc import CRC_BITS, CRC_FINAL_XOR, CRC_INIT, crc32_next
from .decode import InstructionChecker, field_slice
from .gemm import GemmController, engine_supported
from .requant import RequantController
from .sparse_attn import SparseAttentionController
from .tokens import TOKEN_OPCODES, TokenController
from .vector import VectorController

__all__ = ["AcceleratorCore", "accelerator_top", "ACCEL_TOP_NAME", "IMPLEMENTED_OPCODES", "UNSUPPORTED_OPCODES",
           "QUEUE_DEPTH"]

ACCEL_TOP_NAME = "vitaccel_top"
#: Instruction FIFO entries per queue. The fetcher dispatches in program order, so a program
#: may not run more than this many instructions ahead in one queue of a queue it waits for.
QUEUE_DEPTH = 32
#: Opcodes the controller decodes but cannot execute yet: they stop with INVALID_OPERAND.
#: GEMM runs on the matrix engine with any flags except ``accumulate`` together with
#: ``requant`` (INVALID_OPERAND; see :mod:`vitaccel.hw.accel.gemm`).
IMPLEMENTED_OPCODES = (Opcode.LOAD, Opcode.STORE, Opcode.SYNC, Opcode.FINISH, Opcode.LUT_LOAD, Opcode.GELU,
                       Opcode.GEMM, Opcode.ADD, Opcode.SOFTMAX, Opcode.LAYERNORM, *TOKEN_OPCODES, Opcode.REQUANT,
                       Opcode.SPARSE_ATTN)
UNSUPPORTED_OPCODES = tuple(op for op in Opcode if op not in IMPLEMENTED_OPCODES)
_ADDR_WIDTH = 40          # the ZCU102's DDR and PL apertures
_PC_WIDTH = 32
#: DMA descriptor length: a LOAD/STORE's rows of contiguous DDR bytes go as one row of
#: ``rows * row_bytes`` bytes (:meth:`AcceleratorCore._dram_transfer`).
_DMA_LENGTH_BITS = sum(field.width for name, field in isa.LAYOUTS[Opcode.LOAD] if name in ("rows", "row_bytes"))
_STATUS_BUSY, _STATUS_DONE, _STATUS_ERROR = 0, 1, 2
_IRQ_DONE, _IRQ_ERROR = 0, 1
_UNIT_BITS = ADDR_UNIT * 8
_LANE_BITS = (ADDR_UNIT - 1).bit_length()

# Token counters: (name, producer queue, producer flag, consumer queue, consumer flag).
_TOKENS = (("l2c", Queue.LOAD, "push_next", Queue.COMPUTE, "pop_prev"),
           ("c2l", Queue.COMPUTE, "push_prev", Queue.LOAD, "pop_next"),
           ("c2s", Queue.COMPUTE, "push_next", Queue.STORE, "pop_prev"),
           ("s2c", Queue.STORE, "push_prev", Queue.COMPUTE, "pop_next"))


def _check_config(config: AccelConfig) -> None:
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
    isa.check_config(config)
    if config.dma_data_width > isa.INSTRUCTION_BITS:
        raise ConfigError(f"dma_data_width {config.dma_data_width}: the controller fetches one "
                          f"{isa.INSTRUCTION_BITS}-bit instruction per beat at most; use <= 128")


class _QueuePort:
    """Signals between the shared issue logic and one queue's execution unit."""

    def __init__(self, queue: Queue):
        name = queue.name.lower()
        self.queue = queue
        self.head = Signal(isa.INSTRUCTION_BITS, name=f"{name}_head")
        self.head_pc = Signal(_PC_WIDTH, name=f"{name}_head_pc")
        self.head_valid = Signal(name=f"{name}_head_valid")
        self.issue = Signal(name=f"{name}_issue")          # head popped, tokens taken
        self.idle = Signal(name=f"{name}_idle")            # unit can take an instruction
        self.complete = Signal(name=f"{name}_complete")    # current instruction retired
        self.word = Signal(isa.INSTRUCTION_BITS, name=f"{name}_word")   # instruction executing
        self.pc = Signal(_PC_WIDTH, name=f"{name}_pc")
        self.blocked = Signal(name=f"{name}_blocked")      # head waits for tokens
        self.error = Signal(name=f"{name}_error")
        self.error_code = Signal(ErrorCode, name=f"{name}_error_code")

    def field(self, opcode: Opcode, name: str):
        return field_slice(self.word, opcode, name)


class _VectorPorts:
    """The compute unit's use of the buffers' ports: VECTOR read and byte write, 16-byte
    writes with byte enables to VECTOR and ACC (GEMM output rows), and the read ports of the
    other buffers (GEMM operands and parameters). The compute unit has priority; the load
    (write) and store (read) paths wait in the cycles it takes a port."""

    def __init__(self):
        self.read = Signal(name="compute_vector_read")
        self.read_addr = Signal(24, name="compute_vector_read_addr")      # byte address
        self.write = Signal(name="compute_vector_write")
        self.write_addr = Signal(24, name="compute_vector_write_addr")    # byte address
        self.write_data = Signal(8, name="compute_vector_write_data")
        # 16-byte word writes with byte enables (GEMM outputs): VECTOR, and ACC (raw int32).
        self.word_write = Signal(ADDR_UNIT, name="compute_vector_word_write")
        self.word_write_addr = Signal(24, name="compute_vector_word_write_addr")   # byte address
        self.word_write_data = Signal(_UNIT_BITS, name="compute_vector_word_write_data")
        self.acc_write = Signal(ADDR_UNIT, name="compute_acc_write")
        self.acc_write_addr = Signal(24, name="compute_acc_write_addr")   # byte address
        self.acc_write_data = Signal(_UNIT_BITS, name="compute_acc_write_data")
        #: (read enable, byte address) of every buffer's read port, VECTOR included.
        self.reads = {buffer: (Signal(name=f"compute_{buffer.name.lower()}_read"),
                               Signal(24, name=f"compute_{buffer.name.lower()}_read_addr"))
                      for buffer in Buffer if buffer is not Buffer.VECTOR}
        self.reads[Buffer.VECTOR] = (self.read, self.read_addr)

    def reading(self, buffer_bits) -> Value:
        """1 if the compute unit takes the read port of the buffer ``buffer_bits`` selects."""
        result = Value.cast(0)
        for buffer, (read, _) in self.reads.items():
            result = result | (read & (buffer_bits == buffer.value))
        return result

    def writing(self, buffer_bits) -> Value:
        """1 if the compute unit takes the write port of the buffer ``buffer_bits`` selects."""
        return (((self.write | self.word_write.any()) & (buffer_bits == Buffer.VECTOR.value))
                | (self.acc_write.any() & (buffer_bits == Buffer.ACC.value)))


class AcceleratorCore(wiring.Component):
    """The accelerator for ``config`` with structured bus members (``control``, ``memory``).

    Parameters
    ----------
    config : AccelConfig
        Buffer sizes (``isa.buffer_bytes``) and DMA width (``dma_data_width`` <= 128).

    Raises
    ------
    ConfigError
        If the buffers exceed the ISA's address range or the DMA is wider than 128 bits.
    """

    def __init__(self, config: AccelConfig):
        _check_config(config)
        self.config = config
        self.regfile = AxiLiteRegisters(accelerator_register_map())
        self.dma = AxiDma(data_width=config.dma_data_width, addr_width=_ADDR_WIDTH, length_width=_DMA_LENGTH_BITS,
                          rows_width=_PC_WIDTH, counter_width=64)
        super().__init__({
            "control": Out(self.regfile.signature.members["bus"].signature),
            "memory": Out(self.dma.signature.members["bus"].signature),
            "interrupt": Out(1),
        })

    # -- helpers ---------------------------------------------------------------------------------

    def _buffers(self, m: Module):
        """One byte-writable memory per buffer; returns (write ports, read ports) by Buffer."""
        writes, reads = {}, {}
        for buffer in Buffer:
            depth = isa.buffer_bytes(self.config, buffer) // ADDR_UNIT
            mem = Memory(shape=unsigned(_UNIT_BITS), depth=depth, init=[])
            m.submodules[f"buffer_{buffer.name.lower()}"] = mem
            writes[buffer] = mem.write_port(granularity=8)
            reads[buffer] = mem.read_port()
        return writes, reads

    def _dma_bounds(self, m: Module, port: _QueuePort, opcode: Opcode, ddr_size):
        """Registered checks of a LOAD/STORE (golden ``_dma_regions`` order): returns
        (stride_bad, empty, ddr_out, sram_out) valid one cycle after ``port.issue``."""
        f = {name: port.field(opcode, name) for name in
             ("rows", "row_bytes", "dram_addr", "dram_stride", "sram_addr", "sram_stride", "buffer")}
        name = opcode.name.lower()
        stride = f["dram_stride"] if opcode is Opcode.STORE else f["sram_stride"]
        stride_bad = Signal(name=f"{name}_stride_bad")
        empty = Signal(name=f"{name}_empty")
        dram_end = Signal(40, name=f"{name}_dram_end")
        sram_end = Signal(40, name=f"{name}_sram_end")
        rows_minus_one = f["rows"] - 1
        m.d.sync += [
            stride_bad.eq((f["rows"] > 1) & (stride < f["row_bytes"])),
            empty.eq((f["rows"] == 0) | (f["row_bytes"] == 0)),
            dram_end.eq(f["dram_addr"] + rows_minus_one * f["dram_stride"] + f["row_bytes"]),
            sram_end.eq(f["sram_addr"] * ADDR_UNIT + rows_minus_one * f["sram_stride"] + f["row_bytes"]),
        ]
        sram_size = Signal(range(max(isa.buffer_bytes(self.config, b) for b in Buffer) + 1),
                           name=f"{name}_sram_size")
        with m.Switch(f["buffer"]):
            for buffer in Buffer:
                with m.Case(buffer.value):
                    m.d.comb += sram_size.eq(isa.buffer_bytes(self.config, buffer))
        return stride_bad, empty, dram_end > ddr_size, sram_end > sram_size

    # -- elaboration ---------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        m.submodules.regfile = regfile = self.regfile
        m.submodules.dma = dma = self.dma
        wiring.connect(m, wiring.flipped(self.control), regfile.bus)
        wiring.connect(m, dma.bus, wiring.flipped(self.memory))
        regs = regfile.regs
        word_width = self.config.dma_data_width

        # ---- run state ---------------------------------------------------------------------
        busy, done, failed, halting, scanning = Signal(), Signal(), Signal(), Signal(), Signal()
        error_code = Signal(ErrorCode)
        error_pc = Signal(_PC_WIDTH)
        start = regs.control[0] & ~busy
        program_addr = Cat(regs.program_addr_lo, regs.program_addr_hi)[:_ADDR_WIDTH]
        ddr_base = Cat(regs.ddr_base_lo, regs.ddr_base_hi)[:_ADDR_WIDTH]
        length = regs.program_length

        # Errors: the first one wins (fixed priority among those of the same cycle).
        raise_error = Signal()
        new_code = Signal(ErrorCode)
        new_pc = Signal(_PC_WIDTH)
        with m.If(busy & raise_error & ~halting):
            m.d.sync += [halting.eq(1), error_code.eq(new_code), error_pc.eq(new_pc)]

        error_sources: list = []   # (condition, code, pc); earlier entries win

        # ---- buffers -------------------------------------------------------------------------
        writes, reads = self._buffers(m)

        # ---- DMA read engine arbitration: the fetcher and the load queue -----------------------
        owner_fetch, owner_load = Signal(), Signal()
        fetch_req, load_req = Signal(), Signal()
        fetch_desc = {k: Signal(w, name=f"fetch_desc_{k}") for k, w in
                      (("addr", _ADDR_WIDTH), ("rows", _PC_WIDTH), ("row_bytes", _DMA_LENGTH_BITS), ("stride", _ADDR_WIDTH))}
        load_desc = {k: Signal(w, name=f"load_desc_{k}") for k, w in
                     (("addr", _ADDR_WIDTH), ("rows", _PC_WIDTH), ("row_bytes", _DMA_LENGTH_BITS), ("stride", _ADDR_WIDTH))}
        read_free = ~owner_fetch & ~owner_load
        grant_load = read_free & load_req
        grant_fetch = read_free & fetch_req & ~load_req
        chosen = {k: Mux(grant_load, load_desc[k], fetch_desc[k]) for k in fetch_desc}
        m.d.comb += [dma.rd_desc.valid.eq(grant_load | grant_fetch),
                     dma.rd_desc.payload.addr.eq(chosen["addr"]),
                     dma.rd_desc.payload.rows.eq(chosen["rows"]),
                     dma.rd_desc.payload.row_bytes.eq(chosen["row_bytes"]),
                     dma.rd_desc.payload.stride.eq(chosen["stride"])]
        accepted = dma.rd_desc.valid & dma.rd_desc.ready
        fetch_ready, load_ready = Signal(), Signal()
        m.d.comb += dma.rd_data.ready.eq((owner_fetch & fetch_ready) | (owner_load & load_ready))
        beat = dma.rd_data.valid & dma.rd_data.ready
        last_beat = beat & dma.rd_data.payload.last
        with m.If(accepted):
            m.d.sync += [owner_load.eq(grant_load), owner_fetch.eq(grant_fetch)]
        with m.Elif(last_beat):
            m.d.sync += [owner_load.eq(0), owner_fetch.eq(0)]
        read_bad = dma.rd_done & (dma.rd_resp != AXI_RESP_OKAY)

        # ---- fetcher: scan pass, then one instruction per transfer ------------------------------
        m.submodules.checker = checker = InstructionChecker()
        words_per_instr = isa.INSTRUCTION_BITS // word_width
        assembly = Signal(isa.INSTRUCTION_BITS)
        word_count = Signal(range(max(words_per_instr, 2)))
        incoming = (Cat(assembly[word_width:], dma.rd_data.payload.data) if words_per_instr > 1
                    else dma.rd_data.payload.data)
        fetch_beat = beat & owner_fetch
        instr_complete = fetch_beat & (word_count == words_per_instr - 1)
        m.d.comb += checker.word.eq(incoming)
        with m.If(fetch_beat):
            m.d.sync += [assembly.eq(incoming),
                         word_count.eq(Mux(word_count == words_per_instr - 1, 0, word_count + 1))]

        scan_pc, fetch_pc = Signal(_PC_WIDTH), Signal(_PC_WIDTH)
        illegal_seen, illegal_pc = Signal(), Signal(_PC_WIDTH)
        fetched, fetched_pc, fetched_queue = Signal(isa.INSTRUCTION_BITS), Signal(_PC_WIDTH), Signal(Queue)
        fetched_valid, fetch_waiting = Signal(), Signal()   # word held / transfer requested or running
        fetch_done = Signal()
        ports = {q: _QueuePort(q) for q in Queue}
        queue_fifos = {}
        flush = Signal()
        for queue in Queue:
            queue_fifo = ResetInserter(flush)(fifo.SyncFIFOBuffered(width=isa.INSTRUCTION_BITS + _PC_WIDTH,
                                                                    depth=QUEUE_DEPTH))
            m.submodules[f"queue_{queue.name.lower()}"] = queue_fifo
            queue_fifos[queue] = queue_fifo
            port = ports[queue]
            m.d.comb += [queue_fifo.w_data.eq(Cat(fetched, fetched_pc)),
                         queue_fifo.w_en.eq(fetched_valid & (fetched_queue == queue)),
                         port.head.eq(queue_fifo.r_data[:isa.INSTRUCTION_BITS]),
                         port.head_pc.eq(queue_fifo.r_data[isa.INSTRUCTION_BITS:]),
                         port.head_valid.eq(queue_fifo.r_rdy & ~halting),
                         queue_fifo.r_en.eq(port.issue)]
        dispatched = Signal()
        m.d.comb += dispatched.eq(fetched_valid & Mux(fetched_queue == Queue.LOAD, queue_fifos[Queue.LOAD].w_rdy,
                                                      Mux(fetched_queue == Queue.STORE,
                                                          queue_fifos[Queue.STORE].w_rdy,
                                                          queue_fifos[Queue.COMPUTE].w_rdy)))
        scan_last = Signal()
        m.d.comb += [
            fetch_ready.eq(scanning | ~fetched_valid),
            fetch_req.eq(busy & ~halting & ~fetch_waiting & (scanning | (~fetched_valid & ~fetch_done))),
            fetch_desc["addr"].eq(Mux(scanning, program_addr, program_addr + fetch_pc * ADDR_UNIT)),
            fetch_desc["rows"].eq(Mux(scanning, length, 1)),
            fetch_desc["row_bytes"].eq(ADDR_UNIT),
            fetch_desc["stride"].eq(ADDR_UNIT),
        ]
        with m.If(grant_fetch & accepted):
            m.d.sync += fetch_waiting.eq(1)
        with m.If(fetch_beat & dma.rd_data.payload.last):
            m.d.sync += fetch_waiting.eq(0)
        # The program checksum (regmap PROGRAM_CRC): every scanned word folds into the CRC.
        crc = Signal(CRC_BITS, init=CRC_INIT)
        with m.If(instr_complete & scanning):
            m.d.sync += [scan_pc.eq(scan_pc + 1), crc.eq(crc32_next(crc, incoming))]
            with m.If(~checker.legal & ~illegal_seen):
                m.d.sync += [illegal_seen.eq(1), illegal_pc.eq(scan_pc)]
        m.d.comb += scan_last.eq(scanning & fetch_beat & dma.rd_data.payload.last)
        with m.If(scan_last):
            m.d.sync += scanning.eq(0)
        with m.If(instr_complete & ~scanning):
            m.d.sync += [fetched.eq(incoming), fetched_pc.eq(fetch_pc), fetched_queue.eq(checker.queue),
                         fetched_valid.eq(1), fetch_pc.eq(fetch_pc + 1)]
        with m.If(dispatched):
            m.d.sync += fetched_valid.eq(0)
        m.d.comb += fetch_done.eq(~scanning & (fetch_pc == length) & ~fetched_valid & ~fetch_waiting)
        # The scan ends with the last beat; its verdict is taken the cycle after.
        scan_verdict = Signal()
        m.d.sync += scan_verdict.eq(scan_last)
        # A corrupted program is reported as such, not as the illegal word the corruption made.
        crc_bad = regs.program_check[0] & ((crc ^ CRC_FINAL_XOR) != regs.program_crc)
        error_sources.append((scan_verdict & crc_bad, ErrorCode.PROGRAM_CHECKSUM, Const(0, _PC_WIDTH)))
        error_sources.append((scan_verdict & illegal_seen, ErrorCode.ILLEGAL_INSTRUCTION, illegal_pc))
        fetch_bad = Signal()
        m.d.comb += fetch_bad.eq(read_bad & owner_fetch)
        error_sources.append((fetch_bad, ErrorCode.ADDRESS_OUT_OF_RANGE, Mux(scanning, scan_pc, fetch_pc)))

        # ---- tokens and issue --------------------------------------------------------------------
        depth = isa.TOKEN_FIFO_DEPTH
        token_count = {name: Signal(range(depth + 1), name=f"tokens_{name}") for name, *_ in _TOKENS}
        head_flag = {q: (lambda q: (lambda flag: field_slice(ports[q].head, Opcode.SYNC, flag)))(q) for q in Queue}
        word_flag = {q: (lambda q: (lambda flag: field_slice(ports[q].word, Opcode.SYNC, flag)))(q) for q in Queue}
        can_issue = {q: Const(1) for q in Queue}
        for name, producer, push_flag, consumer, pop_flag in _TOKENS:
            count = token_count[name]
            can_issue[consumer] = can_issue[consumer] & ~(head_flag[consumer](pop_flag) & (count == 0))
            can_issue[producer] = can_issue[producer] & ~(head_flag[producer](push_flag) & (count == depth))
            inc = ports[producer].complete & word_flag[producer](push_flag)
            dec = ports[consumer].issue & head_flag[consumer](pop_flag)
            with m.If(inc & ~dec):
                m.d.sync += count.eq(count + 1)
            with m.Elif(dec & ~inc):
                m.d.sync += count.eq(count - 1)
        for q, port in ports.items():
            m.d.comb += [port.issue.eq(port.head_valid & port.idle & can_issue[q]),
                         port.blocked.eq(port.head_valid & port.idle & ~can_issue[q])]
            with m.If(port.issue):
                m.d.sync += [port.word.eq(port.head), port.pc.eq(port.head_pc)]

        # ---- execution units ---------------------------------------------------------------------
        ddr_size = regs.ddr_size
        opcode_of = {q: field_slice(ports[q].word, Opcode.FINISH, "opcode") for q in Queue}
        finished = Signal()
        load_active, store_active = Signal(), Signal()
        vector = _VectorPorts()
        self._load_unit(m, ports[Queue.LOAD], writes, load_desc, load_req, load_ready, owner_load, beat,
                        ddr_base, ddr_size, opcode_of[Queue.LOAD], read_bad, error_sources, load_active, vector)
        self._store_unit(m, ports[Queue.STORE], reads, ddr_base, ddr_size, opcode_of[Queue.STORE],
                         error_sources, store_active, vector)
        fifo_empty = {q: queue_fifos[q].level == 0 for q in Queue}
        # FINISH is the compute queue's last word and the other queues have drained.
        others_drained = (fetch_done & fifo_empty[Queue.LOAD] & fifo_empty[Queue.STORE]
                          & fifo_empty[Queue.COMPUTE] & ~load_active & ~store_active)
        compute = ports[Queue.COMPUTE]
        compute_busy = Signal()
        m.d.comb += compute_busy.eq(~compute.idle)
        engine_step = Signal()   # the matrix engine took a k-step (0 without an engine)
        self._compute_unit(m, compute, opcode_of[Queue.COMPUTE], others_drained, finished, reads, writes, vector,
                           engine_step)
        error_sources.append((compute.error, compute.error_code, compute.pc))

        # ---- deadlock, missing FINISH, watchdog --------------------------------------------------
        fetch_stuck = fetch_done | (fetched_valid & ~dispatched)
        all_waiting = fetch_stuck & ~scanning
        any_blocked = Const(0)
        for q, port in ports.items():
            all_waiting = all_waiting & port.idle & (fifo_empty[q] | port.blocked)
            any_blocked = any_blocked | port.blocked
        deadlock = busy & ~halting & all_waiting & any_blocked & ~load_active & ~store_active
        deadlock_pc = Signal(_PC_WIDTH)
        candidates = [(ports[q].blocked, ports[q].head_pc) for q in Queue]
        pc_min = Const((1 << _PC_WIDTH) - 1, _PC_WIDTH)
        for valid, pc in candidates:
            pc_min = Mux(valid & (pc < pc_min), pc, pc_min)
        m.d.comb += deadlock_pc.eq(pc_min)
        error_sources.append((deadlock, ErrorCode.DEPENDENCY_DEADLOCK, deadlock_pc))
        ran_dry = (busy & ~halting & ~scanning & ~scan_verdict & fetch_done & ~finished
                   & fifo_empty[Queue.LOAD] & fifo_empty[Queue.STORE]
                   & fifo_empty[Queue.COMPUTE] & ~load_active & ~store_active & ~compute_busy)
        error_sources.append((ran_dry, ErrorCode.MISSING_FINISH, length))
        since_retire = Signal(32)
        retired = Signal(range(4))
        m.d.comb += retired.eq(ports[Queue.LOAD].complete + ports[Queue.COMPUTE].complete
                               + ports[Queue.STORE].complete)
        with m.If(busy & (retired == 0)):
            m.d.sync += since_retire.eq(since_retire + 1)
        with m.Else():
            m.d.sync += since_retire.eq(0)
        watchdog = busy & (regs.watchdog_limit != 0) & (since_retire >= regs.watchdog_limit)
        oldest_pc = Mux(ports[Queue.LOAD].idle, Mux(compute_busy, compute.pc, ports[Queue.STORE].pc),
                        ports[Queue.LOAD].pc)
        error_sources.append((watchdog, ErrorCode.WATCHDOG, oldest_pc))

        # Priority: the order of error_sources (first listed wins within a cycle).
        for condition, code, pc in reversed(error_sources):
            with m.If(condition):
                m.d.comb += [raise_error.eq(1), new_code.eq(code), new_pc.eq(pc)]

        # ---- stop ------------------------------------------------------------------------------
        in_flight = owner_fetch | owner_load | fetch_waiting | load_active | store_active
        stop_error = busy & halting & ~in_flight
        stop_done = busy & finished & ~halting & ~raise_error
        m.d.comb += flush.eq(start | stop_error)
        with m.If(stop_error | stop_done):
            m.d.sync += [busy.eq(0), done.eq(stop_done), failed.eq(stop_error), halting.eq(0)]
        token_reset = start | stop_error
        with m.If(token_reset):
            m.d.sync += [count.eq(0) for count in token_count.values()]
            m.d.sync += fetched_valid.eq(0)
        with m.If(start):
            m.d.sync += [busy.eq(1), done.eq(0), failed.eq(0), halting.eq(0), scanning.eq(1),
                         error_code.eq(ErrorCode.NONE), error_pc.eq(0), scan_pc.eq(0), fetch_pc.eq(0),
                         illegal_seen.eq(0), word_count.eq(0), crc.eq(CRC_INIT)]
            with m.If(length == 0):   # nothing to scan: the program lacks FINISH
                m.d.sync += [scanning.eq(0), halting.eq(1), error_code.eq(ErrorCode.MISSING_FINISH)]

        # ---- counters and registers ------------------------------------------------------------
        counters = {name: Signal(64, name=f"count_{name}") for name in (
            "total_cycles", "busy_cycles_load", "busy_cycles_compute", "busy_cycles_store",
            "stall_cycles_load", "stall_cycles_compute", "stall_cycles_store", "instructions_retired",
            "engine_busy_cycles")}
        increments = {
            "total_cycles": busy,
            "busy_cycles_load": load_active, "busy_cycles_compute": compute_busy,
            "busy_cycles_store": store_active,
            "stall_cycles_load": ports[Queue.LOAD].blocked, "stall_cycles_compute": compute.blocked,
            "stall_cycles_store": ports[Queue.STORE].blocked, "instructions_retired": retired,
            "engine_busy_cycles": engine_step,
        }
        for name, counter in counters.items():
            with m.If(start):
                m.d.sync += counter.eq(0)
            with m.Elif(busy):
                m.d.sync += counter.eq(counter + increments[name])
        read_base, write_base = Signal(64), Signal(64)
        with m.If(start):
            m.d.sync += [read_base.eq(dma.rd_bytes), write_base.eq(dma.wr_bytes)]
        read_bytes, write_bytes = Signal(64), Signal(64)
        m.d.comb += [read_bytes.eq(dma.rd_bytes - read_base), write_bytes.eq(dma.wr_bytes - write_base)]
        for name, value in (*counters.items(), ("dma_read_bytes", read_bytes), ("dma_write_bytes", write_bytes)):
            m.d.comb += [getattr(regs, f"{name}_lo").eq(value[:32]), getattr(regs, f"{name}_hi").eq(value[32:])]

        pending = Signal(2)
        m.d.comb += [
            pending[_IRQ_DONE].eq(stop_done),
            pending[_IRQ_ERROR].eq(stop_error),
            regs.interrupt_status_set.eq(pending),
            regs.status.eq(Cat(busy, done, failed)),
            regs.error_code.eq(error_code),
            regs.error_pc.eq(error_pc),
            self.interrupt.eq((regs.interrupt_status & regs.interrupt_enable).any()),
        ]
        return m

    # -- compute queue ----------------------------------------------------------------------------

    def _compute_unit(self, m: Module, port: _QueuePort, opcode_bits, others_drained, finished,
                      reads, writes, vector: _VectorPorts, engine_step: Signal) -> None:
        """SYNC, FINISH, LUT_LOAD / GELU / ADD / SOFTMAX / LAYERNORM
        (:class:`~vitaccel.hw.accel.vector.VectorController`), GEMM (:class:`~vitaccel.hw.accel.gemm.GemmController`, which
        writes VECTOR bytes and ACC int32 elements through ``vector``), REQUANT
        (:class:`~vitaccel.hw.accel.requant.RequantController`) and TOPK / GATHER / PACKAGE
        (:class:`~vitaccel.hw.accel.tokens.TokenController`, with ``has_topk``) and SPARSE_ATTN
        (:class:`~vitaccel.hw.accel.sparse_attn.SparseAttentionController`, with
        ``has_sparse_attention``); any other opcode stops with INVALID_OPERAND. ``engine_step`` is driven high in the cycles the matrix
        engine takes a k-step."""
        config = self.config
        gemm = None
        if engine_supported(config) is None:
            m.submodules.gemm = gemm = GemmController(config=config)
            m.d.comb += [gemm.word.eq(port.word), engine_step.eq(gemm.engine_step)]
            for buffer, (compute_read, compute_addr) in vector.reads.items():
                gemm_read, gemm_addr, gemm_data = gemm.read_port(buffer)
                m.d.comb += gemm_data.eq(reads[buffer].data)
                with m.If(gemm_read):
                    m.d.comb += [compute_read.eq(1), compute_addr.eq(gemm_addr)]
            m.d.comb += [vector.word_write.eq(gemm.vector_write), vector.word_write_addr.eq(gemm.vector_write_addr),
                         vector.word_write_data.eq(gemm.vector_write_data)]
            m.d.comb += [vector.acc_write.eq(gemm.acc_write), vector.acc_write_addr.eq(gemm.acc_write_addr),
                         vector.acc_write_data.eq(gemm.acc_write_data)]
        m.submodules.requant = requant = RequantController(config=config)   # ACC -> VECTOR
        requant_read, requant_read_addr = vector.reads[Buffer.ACC]
        m.d.comb += [requant.word.eq(port.word), requant.acc_read_data.eq(reads[Buffer.ACC].data)]
        with m.If(requant.acc_read):
            m.d.comb += [requant_read.eq(1), requant_read_addr.eq(requant.acc_read_addr)]
        with m.If(requant.write):
            m.d.comb += [vector.write.eq(1), vector.write_addr.eq(requant.write_addr),
                         vector.write_data.eq(requant.write_data)]
        tokens = None   # TOPK, GATHER, PACKAGE (hw/accel/tokens.py): VECTOR only
        if config.has_topk:
            m.submodules.tokens = tokens = TokenController(config=config)
            token_read, token_read_addr = vector.reads[Buffer.VECTOR]
            m.d.comb += [tokens.word.eq(port.word), tokens.read_data.eq(reads[Buffer.VECTOR].data)]
            with m.If(tokens.read):
                m.d.comb += [token_read.eq(1), token_read_addr.eq(tokens.read_addr)]
            with m.If(tokens.write):
                m.d.comb += [vector.write.eq(1), vector.write_addr.eq(tokens.write_addr),
                             vector.write_data.eq(tokens.write_data)]
        sparse = None   # SPARSE_ATTN (hw/accel/sparse_attn.py): VECTOR operands, ACC parameters
        if config.has_sparse_attention:
            m.submodules.sparse_attn = sparse = SparseAttentionController(config=config)
            m.d.comb += [sparse.word.eq(port.word), sparse.read_data.eq(reads[Buffer.VECTOR].data),
                         sparse.acc_read_data.eq(reads[Buffer.ACC].data)]
            for buffer, enable, address in ((Buffer.VECTOR, sparse.read, sparse.read_addr),
                                            (Buffer.ACC, sparse.acc_read, sparse.acc_read_addr)):
                compute_read, compute_addr = vector.reads[buffer]
                with m.If(enable):
                    m.d.comb += [compute_read.eq(1), compute_addr.eq(address)]
            with m.If(sparse.write):
                m.d.comb += [vector.write.eq(1), vector.write_addr.eq(sparse.write_addr),
                             vector.write_data.eq(sparse.write_data)]
        # LUT_LOAD, GELU, ADD, SOFTMAX, LAYERNORM (hw/accel/vector.py)
        m.submodules.vector = vector_unit = VectorController(config=config)
        m.d.comb += [vector_unit.word.eq(port.word), vector_unit.vector_read_data.eq(reads[Buffer.VECTOR].data),
                     vector_unit.acc_read_data.eq(reads[Buffer.ACC].data)]
        for buffer, enable, address in ((Buffer.VECTOR, vector_unit.vector_read, vector_unit.vector_read_addr),
                                        (Buffer.ACC, vector_unit.acc_read, vector_unit.acc_read_addr)):
            compute_read, compute_addr = vector.reads[buffer]
            with m.If(enable):
                m.d.comb += [compute_read.eq(1), compute_addr.eq(address)]
        with m.If(vector_unit.vector_write.any()):
            m.d.comb += [vector.word_write.eq(vector_unit.vector_write),
                         vector.word_write_addr.eq(vector_unit.vector_write_addr),
                         vector.word_write_data.eq(vector_unit.vector_write_data)]

        def fail(code):
            return [port.error.eq(1), port.error_code.eq(code)]

        with m.FSM(name="compute_unit"):
            with m.State("IDLE"):
                m.d.comb += port.idle.eq(1)
                with m.If(port.issue):
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(opcode_bits == Opcode.SYNC):
                    m.d.comb += port.complete.eq(1)
                    m.next = "IDLE"
                with m.Elif(opcode_bits == Opcode.FINISH):
                    with m.If(others_drained):
                        m.d.comb += [port.complete.eq(1), finished.eq(1)]
                    with m.Else():
                        m.d.comb += fail(ErrorCode.MISSING_FINISH)
                    m.next = "IDLE"
                with m.Elif(vector_unit.executes(opcode_bits)):
                    m.d.comb += vector_unit.start.eq(1)
                    m.next = "VECTOR_RUN"
                if gemm is not None:   # without an engine: INVALID_OPERAND below, as golden
                    with m.Elif(opcode_bits == Opcode.GEMM):
                        m.d.comb += gemm.start.eq(1)
                        m.next = "GEMM_RUN"
                with m.Elif(opcode_bits == Opcode.REQUANT):
                    m.d.comb += requant.start.eq(1)
                    m.next = "REQUANT_RUN"
                if tokens is not None:   # without the unit: INVALID_OPERAND below, as golden
                    with m.Elif((opcode_bits == Opcode.TOPK) | (opcode_bits == Opcode.GATHER)
                                | (opcode_bits == Opcode.PACKAGE)):
                        m.d.comb += tokens.start.eq(1)
                        m.next = "TOKENS_RUN"
                if sparse is not None:   # without the unit: INVALID_OPERAND below, as golden
                    with m.Elif(opcode_bits == Opcode.SPARSE_ATTN):
                        m.d.comb += sparse.start.eq(1)
                        m.next = "SPARSE_RUN"
                with m.Else():
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
            # Controllers in their own files: wait for done / error.
            for state, unit in (("GEMM_RUN", gemm), ("TOKENS_RUN", tokens), ("REQUANT_RUN", requant),
                                ("VECTOR_RUN", vector_unit), ("SPARSE_RUN", sparse)):
                if unit is not None:
                    with m.State(state):
                        with m.If(unit.error):
                            m.d.comb += fail(unit.error_code)
                            m.next = "IDLE"
                        with m.Elif(unit.done):
                            m.d.comb += port.complete.eq(1)
                            m.next = "IDLE"
        write = writes[Buffer.VECTOR]
        with m.If(vector.write):
            m.d.comb += [write.addr.eq(vector.write_addr[_LANE_BITS:]),
                         write.data.eq(vector.write_data.replicate(ADDR_UNIT)),
                         write.en.eq(1 << vector.write_addr[:_LANE_BITS])]
        for buffer, (enables, address, word) in ((Buffer.VECTOR, (vector.word_write, vector.word_write_addr,
                                                                   vector.word_write_data)),
                                                 (Buffer.ACC, (vector.acc_write, vector.acc_write_addr,
                                                               vector.acc_write_data))):
            with m.If(enables.any()):
                m.d.comb += [writes[buffer].addr.eq(address[_LANE_BITS:]), writes[buffer].data.eq(word),
                             writes[buffer].en.eq(enables)]

    # -- load and store queues ------------------------------------------------------------------

    def _dram_transfer(self, m: Module, port: _QueuePort, opcode: Opcode) -> tuple[Signal, Signal]:
        """The DMA descriptor's (rows, row_bytes) of a LOAD/STORE, registered one cycle after
        ``port.issue``: rows whose DDR side is contiguous (``dram_stride == row_bytes``) go as one
        row of ``rows * row_bytes`` bytes, so the DMA's bursts run across them (the packed word
        stream is the same); others as they are."""
        f = {name: port.field(opcode, name) for name in ("rows", "row_bytes", "dram_stride")}
        name = opcode.name.lower()
        rows, row_bytes = Signal(_PC_WIDTH, name=f"{name}_dma_rows"), Signal(_DMA_LENGTH_BITS, name=f"{name}_dma_row_bytes")
        contiguous = f["dram_stride"] == f["row_bytes"]
        m.d.sync += [rows.eq(Mux(contiguous, 1, f["rows"])),
                     row_bytes.eq(Mux(contiguous, f["rows"] * f["row_bytes"], f["row_bytes"]))]
        return rows, row_bytes

    def _dma_checks(self, m: Module, port: _QueuePort, dma_opcode: Opcode, ddr_size, error_sources: list):
        """Bounds checks of a LOAD/STORE and the unit's error report: (checks, error, code)."""
        checks = self._dma_bounds(m, port, dma_opcode, ddr_size)
        error = Signal(name=f"{dma_opcode.name.lower()}_unit_error")
        code = Signal(ErrorCode, name=f"{dma_opcode.name.lower()}_unit_code")
        error_sources.append((error, code, port.pc))
        return checks, error, code

    def _dma_front(self, m: Module, port: _QueuePort, opcode_bits, checks, active, first_state: str,
                   on_start: list) -> None:
        """FSM states IDLE -> DECIDE (SYNC retires) -> CHECK shared by the load and store units;
        a transfer that passes its checks runs ``on_start`` and goes to ``first_state``."""
        (stride_bad, empty, ddr_out, sram_out), error, code = checks
        with m.State("IDLE"):
            m.d.comb += port.idle.eq(1)
            with m.If(port.issue):
                m.next = "DECIDE"
        with m.State("DECIDE"):
            m.d.comb += active.eq(1)
            with m.If(opcode_bits == Opcode.SYNC):
                m.d.comb += port.complete.eq(1)
                m.next = "IDLE"
            with m.Else():
                m.next = "CHECK"
        with m.State("CHECK"):
            m.d.comb += active.eq(1)
            with m.If(stride_bad):
                m.d.comb += [error.eq(1), code.eq(ErrorCode.INVALID_OPERAND)]
                m.next = "IDLE"
            with m.Elif(empty):
                m.d.comb += port.complete.eq(1)
                m.next = "IDLE"
            with m.Elif(ddr_out | sram_out):
                m.d.comb += [error.eq(1), code.eq(ErrorCode.ADDRESS_OUT_OF_RANGE)]
                m.next = "IDLE"
            with m.Else():
                m.d.sync += on_start
                m.next = first_state

    def _chunk(self, position, lanes: int, row_bytes, col, byte_addr):
        """Bytes one LOAD/STORE cycle moves: as many as are left of the current DMA word (from
        lane ``position``), of the current row, and of the current 16-byte buffer word.
        Returns (count, buffer lane, last column of the row)."""
        offset = byte_addr[:_LANE_BITS]
        in_word = lanes - position
        in_row = row_bytes - col
        in_unit = ADDR_UNIT - offset
        first = Mux(in_word < in_unit, in_word, in_unit)
        count = Mux(in_row < first, in_row, first)[:_LANE_BITS + 1]
        return count, offset, in_row == count

    @staticmethod
    def _byte_mask(start, count, lanes: int) -> Value:
        """``lanes`` enables, set for the lanes ``[start, start + count)``."""
        start = Value.cast(start)
        top = (1 << len(start)) - 1   # ``start <= top`` always holds: no constant comparison (lint)
        return Cat(((start <= lane) if lane < top else Const(1)) & (lane < start + count) for lane in range(lanes))

    @staticmethod
    def _rotate_bytes(value, amount) -> Value:
        """``value`` (16 bytes) rotated down by ``amount`` bytes (mod 16): byte ``j`` of the
        result is byte ``(j + amount) % 16`` of ``value``."""
        return Cat(value, value).bit_select(amount[:_LANE_BITS] * 8, _UNIT_BITS)

    def _load_unit(self, m: Module, port: _QueuePort, writes, desc, req, ready, owner, beat,
                   ddr_base, ddr_size, opcode_bits, read_bad, error_sources: list, active,
                   vector: _VectorPorts) -> None:
        lanes = self.config.dma_data_width // 8
        checks = self._dma_checks(m, port, Opcode.LOAD, ddr_size, error_sources)
        _, error, code = checks
        f = {name: port.field(Opcode.LOAD, name) for name in
             ("rows", "row_bytes", "dram_addr", "dram_stride", "sram_addr", "sram_stride", "buffer")}
        dma_rows, dma_row_bytes = self._dram_transfer(m, port, Opcode.LOAD)
        m.d.comb += [desc["addr"].eq(ddr_base + f["dram_addr"]), desc["rows"].eq(dma_rows),
                     desc["row_bytes"].eq(dma_row_bytes), desc["stride"].eq(f["dram_stride"])]
        word = Signal(self.config.dma_data_width)
        word_valid = Signal()
        lane = Signal(range(lanes))
        col = Signal(16)
        row = Signal(12)
        row_base = Signal(24)
        byte_addr = Signal(24)
        m.d.comb += byte_addr.eq(row_base + col)
        # Each cycle writes the bytes of the DMA word that fall in the current row and 16-byte
        # buffer word (one byte-enabled write): the word, repeated to 16 bytes, is rotated so
        # that its byte ``lane`` lands on the buffer lane ``offset``.
        count, offset, last_col = self._chunk(lane, lanes, f["row_bytes"], col, byte_addr)
        word_done = Signal()
        rotated = self._rotate_bytes(word.replicate(ADDR_UNIT // lanes), lane - offset)
        last_byte = last_col & (row == f["rows"] - 1)
        # A new DMA word is taken in the cycle the current one is used up (no bubble).
        m.d.comb += ready.eq(~word_valid | word_done)
        with m.FSM(name="load_unit"):
            self._dma_front(m, port, opcode_bits, checks, active, "REQUEST",
                            [col.eq(0), row.eq(0), row_base.eq(f["sram_addr"] * isa.ADDR_UNIT)])
            with m.State("REQUEST"):
                m.d.comb += [active.eq(1), req.eq(1)]
                with m.If(owner):
                    m.next = "MOVE"
            with m.State("MOVE"):
                m.d.comb += active.eq(1)
                with m.If(word_valid & ~vector.writing(f["buffer"])):
                    m.d.comb += word_done.eq((lane + count == lanes) | last_byte)
                    for buffer, write in writes.items():
                        m.d.comb += [write.addr.eq(byte_addr[_LANE_BITS:]),
                                     write.data.eq(rotated),
                                     write.en.eq(Mux(f["buffer"] == buffer.value,
                                                     self._byte_mask(offset, count, ADDR_UNIT), 0))]
                    m.d.sync += lane.eq(lane + count)
                    with m.If(word_done):
                        m.d.sync += word_valid.eq(0)
                    with m.If(last_col):
                        m.d.sync += [col.eq(0), row.eq(row + 1), row_base.eq(row_base + f["sram_stride"])]
                    with m.Else():
                        m.d.sync += col.eq(col + count)
                    with m.If(last_byte):
                        m.next = "DRAIN"
            with m.State("DRAIN"):  # the owner flag drops with the stream's last word
                m.d.comb += active.eq(1)
                with m.If(~owner):
                    m.d.comb += port.complete.eq(1)
                    m.next = "IDLE"
        # After the FSM: a word taken in the cycle the previous one is used up wins.
        with m.If(beat & owner):
            m.d.sync += [word.eq(self.dma.rd_data.payload.data), word_valid.eq(1), lane.eq(0)]
        # A DDR read answered with an error (DDR_BASE outside memory) stops the run.
        error_sources.append((read_bad & owner, ErrorCode.ADDRESS_OUT_OF_RANGE, port.pc))

    def _store_unit(self, m: Module, port: _QueuePort, reads, ddr_base, ddr_size, opcode_bits,
                    error_sources: list, active, vector: _VectorPorts) -> None:
        dma = self.dma
        lanes = self.config.dma_data_width // 8
        checks = self._dma_checks(m, port, Opcode.STORE, ddr_size, error_sources)
        _, error, code = checks
        f = {name: port.field(Opcode.STORE, name) for name in
             ("rows", "row_bytes", "dram_addr", "dram_stride", "sram_addr", "sram_stride", "buffer")}
        desc_valid = Signal()
        dma_rows, dma_row_bytes = self._dram_transfer(m, port, Opcode.STORE)
        m.d.comb += [dma.wr_desc.valid.eq(desc_valid),
                     dma.wr_desc.payload.addr.eq(ddr_base + f["dram_addr"]),
                     dma.wr_desc.payload.rows.eq(dma_rows), dma.wr_desc.payload.row_bytes.eq(dma_row_bytes),
                     dma.wr_desc.payload.stride.eq(f["dram_stride"])]
        with m.If(dma.wr_desc.valid & dma.wr_desc.ready):
            m.d.sync += desc_valid.eq(0)
        # Two stages: READ presents a buffer word's address each cycle and takes the bytes of
        # it that fit in the current row and DMA word; the cycle after, PACK rotates them into
        # place in ``out``. Full words go through a small FIFO to the DMA; READ only starts a
        # word-completing chunk while the FIFO has room for it (counting the one in PACK).
        words_depth = 4
        m.submodules.store_words = words = fifo.SyncFIFO(width=self.config.dma_data_width + 1,
                                                         depth=words_depth)
        out = Signal(self.config.dma_data_width)
        out_lane = Signal(range(lanes))
        col = Signal(16)
        row = Signal(12)
        row_base = Signal(24)
        byte_addr = Signal(24)
        m.d.comb += byte_addr.eq(row_base + col)
        for buffer, read in reads.items():
            compute_read, compute_addr = vector.reads[buffer]
            address = Mux(compute_read, compute_addr, byte_addr)
            m.d.comb += read.addr.eq(address[_LANE_BITS:])
        read_data = Signal(_UNIT_BITS)
        with m.Switch(f["buffer"]):
            for buffer, read in reads.items():
                with m.Case(buffer.value):
                    m.d.comb += read_data.eq(read.data)
        count, offset, last_col = self._chunk(out_lane, lanes, f["row_bytes"], col, byte_addr)
        last_byte = last_col & (row == f["rows"] - 1)
        word_full = (out_lane + count == lanes) | last_byte
        # The chunk in PACK: its buffer lane, byte count, DMA lane, and whether it ends a word.
        pack_valid, pack_full, pack_last = Signal(), Signal(), Signal()
        pack_offset = Signal(_LANE_BITS)
        pack_count = Signal(_LANE_BITS + 1)
        pack_lane = Signal(range(lanes))
        m.d.sync += pack_valid.eq(0)
        with m.If(pack_valid):
            rotated = self._rotate_bytes(read_data, pack_offset - pack_lane)[:self.config.dma_data_width]
            mask = self._byte_mask(pack_lane, pack_count, lanes)
            packed = Cat(Mux(mask[i], rotated.word_select(i, 8), out.word_select(i, 8)) for i in range(lanes))
            with m.If(pack_full):
                m.d.comb += [words.w_en.eq(1), words.w_data.eq(Cat(packed, pack_last))]
                m.d.sync += out.eq(0)
            with m.Else():
                m.d.sync += out.eq(packed)
        m.d.comb += [dma.wr_data.payload.data.eq(words.r_data[:-1]), dma.wr_data.payload.last.eq(words.r_data[-1]),
                     dma.wr_data.valid.eq(words.r_rdy), words.r_en.eq(dma.wr_data.ready)]
        room = words.level + (pack_valid & pack_full) < words_depth
        with m.FSM(name="store_unit"):
            self._dma_front(m, port, opcode_bits, checks, active, "READ",
                            [col.eq(0), row.eq(0), row_base.eq(f["sram_addr"] * isa.ADDR_UNIT),
                             desc_valid.eq(1), out.eq(0), out_lane.eq(0)])
            with m.State("READ"):      # buffer address is presented; the word arrives next cycle
                m.d.comb += active.eq(1)
                with m.If(~vector.reading(f["buffer"]) & (room | ~word_full)):
                    m.d.sync += [pack_valid.eq(1), pack_full.eq(word_full), pack_last.eq(last_byte),
                                 pack_offset.eq(offset), pack_count.eq(count), pack_lane.eq(out_lane),
                                 out_lane.eq(Mux(word_full, 0, out_lane + count))]
                    with m.If(last_col):
                        m.d.sync += [col.eq(0), row.eq(row + 1), row_base.eq(row_base + f["sram_stride"])]
                    with m.Else():
                        m.d.sync += col.eq(col + count)
                    with m.If(last_byte):
                        m.next = "WAIT_DONE"
            with m.State("WAIT_DONE"):
                m.d.comb += active.eq(1)
                with m.If(dma.wr_done):
                    with m.If(dma.wr_resp != AXI_RESP_OKAY):
                        m.d.comb += [error.eq(1), code.eq(ErrorCode.ADDRESS_OUT_OF_RANGE)]
                    with m.Else():
                        m.d.comb += port.complete.eq(1)
                    m.next = "IDLE"


def accelerator_top(config: AccelConfig) -> FlatPortsWrapper:
    """The accelerator for ``config`` with the Vivado port names ``s_axi_control_*``,
    ``m_axi_*`` and ``interrupt`` (plus ``clk`` / ``rst``)."""
    return FlatPortsWrapper(AcceleratorCore(config), prefixes={"control": "s_axi_control", "memory": "m_axi"})
