"""REQUANT in the accelerator: int32 accumulators in ACC to int8 in VECTOR, per column.

:class:`RequantController` executes ``isa.DESCRIPTIONS[Opcode.REQUANT]``:
``VECTOR[dst][i, j] = sat8(round_shift((ACC[src][i, j] + bias[j]) * multiplier[j], shift[j]))``
with the parameter block (``bias[cols]``, ``multiplier[cols]``, ``shift[cols]``, int32) at
``param_addr`` in ACC.

Checks in the golden machine's order (``GoldenMachine._requant`` and
:func:`vitaccel.hw.spec.numerics.requantize`): the accumulators, then the parameter block out
of ACC (ADDRESS_OUT_OF_RANGE); a multiplier outside ``0 .. 2^31 - 1``, a shift outside
``1 .. MAX_SHIFT``, or an ``|accumulator + bias|`` above ``2^31`` (INVALID_OPERAND: a scan over
the parameters and every element before anything is written); the destination out of
VECTOR (ADDRESS_OUT_OF_RANGE).

Pipelined for the zcu102's 300 MHz (docs/timing.md): ACC is read one int32 word per cycle
(addresses from counters and one add, no multiplies), each word is registered before use, the
checks take a register each, and the operand checks take three registers from the
instruction word (product, sum, compare: :attr:`CHECK_STAGES`). The scans issue two reads
per column (multiplier, shift) and two per element (accumulator, bias) back to back and
report a failure after the last one. The compute phase issues four reads per element
(accumulator, bias, multiplier, shift) back to back into a pipeline: the sum, four 17-bit
partial products (one DSP48E2 each), two adds, the three-register rounding shift, the
saturation in two registers, then the byte write (:attr:`COMPUTE_LATENCY` cycles after the
shift's read). Elements go in order, so ``dst`` may alias nothing in ACC; VECTOR and ACC are
separate buffers.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.matrix.pipeline import register as pipeline_register
from vitaccel.hw.nonlinear.arith import DSP_B_UNSIGNED_BITS, SHIFT_BITS, pipelined_round_shift, register
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.numerics import MAX_SHIFT, MULTIPLIER_BITS
from vitaccel.hw.spec.regmap import ErrorCode

from .decode import field_slice, first_failure, instruction_unit_members

__all__ = ["RequantController"]

_ADDR_BITS = 24
_LANE_BITS = (ADDR_UNIT - 1).bit_length()


class RequantController(wiring.Component):
    """Executes REQUANT (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Supplies the ACC and VECTOR sizes.

    Attributes
    ----------
    word : in
        The instruction (held from ``start`` to ``done`` / ``error``).
    start : in
        Pulse: execute ``word``.
    done, error : out
        One-cycle pulses: the instruction retired, or stopped with ``error_code``.
    acc_read, acc_read_addr, acc_read_data : ACC read port (byte address; data one cycle later).
    write, write_addr, write_data : VECTOR byte write.
    """

    #: Registers between the instruction word and the operand checks (product, sum, compare).
    CHECK_STAGES = 3
    #: Cycles from a read to its check's effect on ``failed``: the data, the word register,
    #: the sum, the compare.
    SCAN_LATENCY = 4
    #: Cycles from a shift's read to its element's byte write: the data, the word register,
    #: the partial products, two adds, three rounding registers, three saturation registers.
    COMPUTE_LATENCY = 12

    def __init__(self, *, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            **instruction_unit_members(),
            "acc_read": Out(1), "acc_read_addr": Out(_ADDR_BITS), "acc_read_data": In(ADDR_UNIT * 8),
            "write": Out(1), "write_addr": Out(_ADDR_BITS), "write_data": Out(8),
        })

    @classmethod
    def cycles(cls, rows: int, cols: int) -> int:
        """Cycles from ``start`` to ``done`` of a REQUANT that retires (the core's DECIDE
        cycle, where ``start`` is raised, included)."""
        elements = rows * cols
        scan = 2 * cols + 2 * elements
        compute = 4 * elements + cls.COMPUTE_LATENCY + 1 if elements else 0   # + FINISH
        # DECIDE, the check registers (the last one read in CHECK), the scans, their drain, DST
        return 1 + cls.CHECK_STAGES + scan + cls.SCAN_LATENCY + 1 + compute

    def elaborate(self, platform):
        m = Module()
        acc_bytes = isa.buffer_bytes(self.config, Buffer.ACC)
        vector_bytes = isa.buffer_bytes(self.config, Buffer.VECTOR)

        def f(name):
            return field_slice(self.word, Opcode.REQUANT, name)

        rows, cols = f("rows"), f("cols")
        src, dst, param = f("src_addr") * ADDR_UNIT, f("dst_addr") * ADDR_UNIT, f("param_addr") * ADDR_UNIT

        # ---- operand checks: product, sums, compares, one register each ----------------------
        elements = register(m, rows * cols, "elements")
        param_bytes = register(m, 12 * cols, "param_bytes")
        mult_base = register(m, param + 4 * cols, "mult_base")
        shift_base = register(m, param + 8 * cols, "shift_base")
        rows_last, cols_last = register(m, rows - 1, "rows_last"), register(m, cols - 1, "cols_last")
        # "the next one is the last" as an equality of registers (no incrementer before it)
        rows_before_last = register(m, rows - 2, "rows_before_last", signed(14))
        cols_before_last = register(m, cols - 2, "cols_before_last", signed(15))
        empty = register(m, (rows == 0) | (cols == 0), "empty")
        no_cols = register(m, cols == 0, "no_cols")
        src_end = register(m, src + 4 * elements, "src_end")
        param_end = register(m, param + param_bytes, "param_end")
        dst_end = register(m, dst + elements, "dst_end")
        src_out, param_out = register(m, src_end > acc_bytes, "src_out"), register(m, param_end > acc_bytes, "param_out")
        dst_out = register(m, dst_end > vector_bytes, "dst_out")

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # ---- ACC reads: one word per cycle from pointer registers -----------------------------
        row, col = Signal(12), Signal(13)
        acc_ptr = Signal(_ADDR_BITS)
        # the column's bias, multiplier and shift words: pointers stepped with ``col`` (no add
        # between a register and the read address)
        bias_ptr, mult_ptr, shift_ptr = (Signal(_ADDR_BITS, name=f"{n}_ptr") for n in ("bias", "mult", "shift"))
        dst_ptr = Signal(_ADDR_BITS)
        kind = Signal(2)          # the next read: 0 acc, 1 bias, 2 multiplier, 3 shift
        ACC, BIAS, MULT, SHIFT = range(4)
        reading, computing = Signal(), Signal()
        address = Mux(kind[1], Mux(kind[0], shift_ptr, mult_ptr), Mux(kind[0], bias_ptr, acc_ptr))
        m.d.comb += [self.acc_read.eq(reading), self.acc_read_addr.eq(address)]

        # the read's tags, one cycle (the data) then one more (the word register)
        read_lane = Signal(_LANE_BITS - 2)
        tag = Signal(4)           # valid, compute, kind
        m.d.sync += [read_lane.eq(address[2:_LANE_BITS]), tag.eq(Cat(reading, computing, kind))]
        word = register(m, self.acc_read_data.word_select(read_lane, 32).as_signed(), "word")
        word_tag = register(m, tag, "word_tag")
        word_valid, word_compute, word_kind = word_tag[0], word_tag[1], word_tag[2:]

        def at(k, compute):
            return word_valid & (word_compute == compute) & (word_kind == k)

        acc, total, multiplier = Signal(signed(32)), Signal(signed(33)), Signal(unsigned(MULTIPLIER_BITS))
        with m.If(at(ACC, 0) | at(ACC, 1)):
            m.d.sync += acc.eq(word)
        with m.If(at(BIAS, 0) | at(BIAS, 1)):
            m.d.sync += total.eq(acc + word)    # 33 bits: |total| <= 2^31 is checked
        with m.If(at(MULT, 1)):
            m.d.sync += multiplier.eq(word[:MULTIPLIER_BITS])

        # ---- the scans' checks: each a register, ``failed`` sticky -----------------------------
        failed = Signal()
        bad_multiplier = register(m, at(MULT, 0) & (word < 0), "bad_multiplier")
        # the shift's range compares in registers of their own, then the check (as late as
        # ``bad_total``, so SCAN_LATENCY holds)
        shift_below = register(m, word < 1, "shift_below")
        shift_above = register(m, word > MAX_SHIFT, "shift_above")
        shift_check = register(m, at(SHIFT, 0), "shift_check")
        bad_shift = register(m, shift_check & (shift_below | shift_above), "bad_shift")
        total_check = register(m, at(BIAS, 0), "total_check")
        bad_total = register(m, total_check & ((total > (1 << 31)) | (total < -(1 << 31))), "bad_total")
        with m.If(bad_multiplier | bad_shift | bad_total):
            m.d.sync += failed.eq(1)

        # ---- compute: partial products, adds, rounding shift, saturation -----------------------
        launch = at(SHIFT, 1)
        low_bits = DSP_B_UNSIGNED_BITS
        total_low, total_high = total[:low_bits], total[low_bits:].as_signed()
        mult_low, mult_high = multiplier[:low_bits], multiplier[low_bits:]
        # the products are flip-flops: a run of copies behind a DSP48E2 became an SRL16E
        ll = pipeline_register(m, total_low * mult_low, "product_ll", keep=True)
        lh = register(m, total_low * mult_high, "product_lh")
        hl = register(m, total_high * mult_low, "product_hl")
        hh = pipeline_register(m, total_high * mult_high, "product_hh", keep=True)
        middle = register(m, lh + hl, "product_middle")
        ll2, hh2 = register(m, ll, "product_ll2"), register(m, hh, "product_hh2")
        low = register(m, ll2 + (middle << low_bits), "product_low")
        hh3 = register(m, hh2, "product_hh3")
        product = register(m, low + (hh3 << (2 * low_bits)), "product", signed(34 + MULTIPLIER_BITS))
        shift = _delay(m, word[:SHIFT_BITS], 4, "shift")
        rounded = pipelined_round_shift(m, product, shift, register, "rounded")
        # the range test in two registers: all-ones / all-zeros per group of 6 bits, then over the groups
        upper = rounded[7:]
        groups = [upper[i:i + 6] for i in range(0, len(upper), 6)]
        ones = register(m, Cat(*(g.all() for g in groups)), "upper_ones")
        zeros = register(m, Cat(*(~g.any() for g in groups)), "upper_zeros")
        in_range = register(m, ones.all() | zeros.all(), "in_range")
        negative = register(m, register(m, rounded[-1], "negative_d"), "negative")
        low_byte = register(m, register(m, rounded[:8], "low_byte_d"), "low_byte")
        result = register(m, Mux(in_range, low_byte, Mux(negative, 0x80, 0x7F)), "result")
        write_valid = _delay(m, launch, 10, "write_valid")
        write_addr = _delay(m, dst_ptr, 10, "write_addr")
        with m.If(launch):
            m.d.sync += dst_ptr.eq(dst_ptr + 1)
        m.d.comb += [self.write.eq(write_valid), self.write_addr.eq(write_addr), self.write_data.eq(result)]

        # ---- sequencing -----------------------------------------------------------------------
        last_col = Signal()    # col == cols - 1 (registered, updated with col)
        last_row = Signal()
        # Waits as strobes through delay lines (registers only): the start (the check registers),
        # the scans' last read (its check), the compute's last read (its byte write).
        settle_go, scan_go, compute_go = Signal(), Signal(), Signal()
        settled = _delay(m, settle_go, self.CHECK_STAGES - 1, "settled", reset=True)
        scanned = _delay(m, scan_go, self.SCAN_LATENCY, "scanned", reset=True)
        computed = _delay(m, compute_go, self.COMPUTE_LATENCY, "computed", reset=True)

        # Counters and pointers: each updated in one place from strobes (the states are one-hot,
        # so the strobes are ORs of a state and a flag or two; no chain of per-state priorities).
        col_reset, col_step, row_reset = Signal(), Signal(), Signal()
        params_done, params_step, element_wrap, element_step = Signal(), Signal(), Signal(), Signal()
        acc_reset, acc_step, kind_to_mult, kind_to_acc = Signal(), Signal(), Signal(), Signal()
        # col / row are never stepped the cycle after they change: their compares are registers
        col_before_last = register(m, col == cols_before_last, "col_before_last", 1)
        row_before_last = register(m, row == rows_before_last, "row_before_last", 1)
        single_col = register(m, cols_last == 0, "single_col", 1)
        single_row = register(m, rows_last == 0, "single_row", 1)
        with m.If(col_reset):   # includes the last column's step
            m.d.sync += [col.eq(0), last_col.eq(single_col),
                         bias_ptr.eq(param), mult_ptr.eq(mult_base), shift_ptr.eq(shift_base)]
        with m.Elif(col_step):
            m.d.sync += [col.eq(col + 1), last_col.eq(col_before_last),
                         bias_ptr.eq(bias_ptr + 4), mult_ptr.eq(mult_ptr + 4), shift_ptr.eq(shift_ptr + 4)]
        with m.If(row_reset):
            m.d.sync += [row.eq(0), last_row.eq(single_row)]
        with m.Elif(element_wrap):
            m.d.sync += [row.eq(row + 1), last_row.eq(row_before_last)]
        with m.If(acc_reset):
            m.d.sync += acc_ptr.eq(src)
        with m.Elif(acc_step):
            m.d.sync += acc_ptr.eq(acc_ptr + 4)

        # One-hot states (registers): every enable and output is a LUT or two from registers.
        state = {name: Signal(name=f"requant_{name.lower()}", init=name == "IDLE") for name in (
            'IDLE', 'SETTLE', 'CHECK', 'PARAM_SCAN', 'VALUE_SCAN', 'SCAN_DRAIN', 'DST', 'COMPUTE', 'COMPUTE_DRAIN', 'FINISH')}

        def goto(current, following):
            m.d.sync += [state[current].eq(0), state[following].eq(1)]

        # the strobes, each one expression of one-hot states and flags
        is_shift, is_bias = Signal(), Signal()   # kind == SHIFT, kind == BIAS (registers)
        # The scans' and the compute's column steps, registered a cycle ahead: a shift read
        # always follows a multiplier read in PARAM_SCAN and COMPUTE (and a bias read an
        # accumulator read in VALUE_SCAN), in the same state and column.
        # ``col`` does not step in the cycle between, so ``last_col`` is known a cycle ahead too.
        element_next = (state["VALUE_SCAN"] & (kind == ACC)) | (state["COMPUTE"] & (kind == MULT))
        m.d.sync += [params_done.eq(state["PARAM_SCAN"] & ~is_shift & last_col),
                     params_step.eq(state["PARAM_SCAN"] & ~is_shift & ~last_col),
                     element_wrap.eq(element_next & last_col), element_step.eq(element_next & ~last_col)]
        element_done = element_wrap | element_step
        # col_reset too is a register: CHECK and DST are entered from SETTLE / SCAN_DRAIN on
        # ``settled`` / ``scanned``, and the two wraps are the registers' inputs above.
        m.d.sync += col_reset.eq((state["SETTLE"] & settled) | (state["SCAN_DRAIN"] & scanned)
                                 | (state["PARAM_SCAN"] & ~is_shift & last_col) | (element_next & last_col))
        m.d.comb += [
                     col_step.eq(params_step | element_step),
                     row_reset.eq(state["CHECK"] | state["DST"]), acc_reset.eq(state["CHECK"] | state["DST"]),
                     acc_step.eq(element_done), kind_to_mult.eq(state["CHECK"]),
                     kind_to_acc.eq(state["DST"] | params_done)]

        with m.If(state["IDLE"]):
            with m.If(self.start):
                m.d.comb += settle_go.eq(1)
                goto("IDLE", "SETTLE")
        with m.If(state["SETTLE"]):   # the operand checks' registers
            with m.If(settled):
                goto("SETTLE", "CHECK")
        with m.If(state["CHECK"]):
            m.d.sync += [failed.eq(0), dst_ptr.eq(dst)]
            with m.If(src_out | param_out):
                m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                goto("CHECK", "IDLE")
            with m.Elif(no_cols):
                m.d.comb += scan_go.eq(1)
                goto("CHECK", "SCAN_DRAIN")
            with m.Else():
                m.d.sync += reading.eq(1)
                goto("CHECK", "PARAM_SCAN")
        # ---- parameter scan: multiplier and shift of every column ------------------------
        with m.If(params_done):   # in PARAM_SCAN, the last column's shift
            with m.If(empty):
                m.d.sync += reading.eq(0)
                m.d.comb += scan_go.eq(1)
                goto("PARAM_SCAN", "SCAN_DRAIN")
            with m.Else():
                goto("PARAM_SCAN", "VALUE_SCAN")
        # ---- value scan: |acc + bias| <= 2^31 for every element ---------------------------
        with m.If(state["VALUE_SCAN"]):
            with m.If(element_wrap & last_row):   # the last element's bias
                m.d.sync += reading.eq(0)
                m.d.comb += scan_go.eq(1)
                goto("VALUE_SCAN", "SCAN_DRAIN")
        with m.If(state["SCAN_DRAIN"]):   # the last read's check reaches ``failed``
            with m.If(scanned):
                goto("SCAN_DRAIN", "DST")
        with m.If(state["DST"]):
            # golden order: the scans' INVALID_OPERAND before the destination's range
            rejected, code = first_failure([(failed, ErrorCode.INVALID_OPERAND),
                                            (dst_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
            with m.If(rejected):
                m.d.comb += fail(code)
                goto("DST", "IDLE")
            with m.Elif(empty):
                m.d.comb += self.done.eq(1)
                goto("DST", "IDLE")
            with m.Else():
                m.d.sync += [reading.eq(1), computing.eq(1)]
                goto("DST", "COMPUTE")
        # ---- compute: four reads per element, back to back; the pipeline writes ----------
        with m.If(state["COMPUTE"]):
            with m.If(element_wrap & last_row):   # the last element's shift
                m.d.sync += [reading.eq(0), computing.eq(0)]
                m.d.comb += compute_go.eq(1)
                goto("COMPUTE", "COMPUTE_DRAIN")
        with m.If(state["COMPUTE_DRAIN"]):   # the last element's byte is written
            with m.If(computed):
                goto("COMPUTE_DRAIN", "FINISH")
        with m.If(state["FINISH"]):
            m.d.comb += self.done.eq(1)
            goto("FINISH", "IDLE")
        # the next read's kind: the scans alternate (multiplier / shift, accumulator / bias),
        # the compute phase counts through all four
        kind_next = Signal(2)
        m.d.comb += kind_next.eq(kind)
        with m.If(kind_to_mult):
            m.d.comb += kind_next.eq(MULT)
        with m.Elif(kind_to_acc):
            m.d.comb += kind_next.eq(ACC)
        with m.Elif(state["COMPUTE"]):
            m.d.comb += kind_next.eq(kind + 1)
        with m.Elif(state["PARAM_SCAN"] | state["VALUE_SCAN"]):
            m.d.comb += kind_next.eq(Cat(~kind[0], kind[1]))
        # kind and its decoded flags, registered together (the strobes use the flags)
        m.d.sync += [kind.eq(kind_next), is_shift.eq(kind_next == SHIFT), is_bias.eq(kind_next == BIAS)]
        return m


def _delay(m: Module, value, cycles: int, name: str, *, reset: bool = False) -> Value:
    """``value`` ``cycles`` cycles later (``reset``: registers with a reset, for strobes)."""
    for i in range(cycles):
        if reset:
            delayed = Signal(name=f"{name}_d{i}")
            m.d.sync += delayed.eq(value)
            value = delayed
        else:
            value = register(m, value, f"{name}_d{i}")
    return value
