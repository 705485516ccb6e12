"""Token pruning in the accelerator: TOPK, GATHER and PACKAGE on the top-k engine.

:class:`TokenController` executes the three opcodes of the top-k family
(``isa.DESCRIPTIONS``), all of which work inside the VECTOR buffer:

* **TOPK** streams score rows into :class:`~vitaccel.hw.topk.TopKEngine` (``topk_lanes``
  scores per beat) and writes the kept indices as uint16. Without ``sum_rows`` each of the
  ``rows`` uint16 score rows is one selection; with ``sum_rows`` the front end sums the
  ``rows`` uint8 rows column-wise into one uint16 score row (one byte read per two cycles)
  and makes one selection. Checks in the golden machine's order (``GoldenMachine._topk``):
  ``k <= n <= max_tokens``, ``1 <= rows <= 257`` with ``sum_rows`` (INVALID_OPERAND); the
  scores, then the indices out of VECTOR (ADDRESS_OUT_OF_RANGE).
* **GATHER** copies the source rows an index list names (one byte per cycle, reads and writes
  pipelined, plus five cycles per row). Checks:
  source, index list (ADDRESS_OUT_OF_RANGE); every index below ``n`` (INVALID_OPERAND, a
  pass over the list before anything is written); destination (ADDRESS_OUT_OF_RANGE).
* **PACKAGE** (SPViT's package token): a pass over the kept indices marks them (and checks
  them, as GATHER), a pass over the probability rows stores each token's weight -- its
  ``heads`` probabilities summed, 0 for a kept token -- and the weights' total; then per
  column the exact weighted sum of the pruned tokens (skipping zero weights) and a 9-step
  division ``floor((2 num + total) / (2 total))`` (round half up; the quotient of a
  weighted mean of int8 values lies in -128..127). Checks: ``k <= n <= max_tokens``,
  ``1 <= heads <= 257`` (INVALID_OPERAND); probabilities, tokens, index list
  (ADDRESS_OUT_OF_RANGE); index values (INVALID_OPERAND); destination (ADDRESS_OUT_OF_RANGE).

Differences from the golden machine, for programs whose regions overlap (the compiler never
emits them): the golden machine reads a GATHER's source and index list whole before writing,
the controller copies row by row (an in-place GATHER with ascending indices, as TOPK writes
them, is still exact); TOPK's and PACKAGE's outputs are written after their inputs are read.

The VECTOR buffer is read through a synchronous port (``read`` / ``read_addr`` this cycle,
the 16-byte ``read_data`` the next) and written one byte at a time (``write``); the core
gives the controller priority over the load and store queues.

Pipelined for the zcu102's 300 MHz (docs/timing.md): the operand checks take three registers
from the instruction word (:attr:`TokenController.CHECK_STAGES`: products and the room past
each start address, one compare per region, the first failing check's class per opcode);
every element read is registered before use (a read costs three states: address, data,
use), and the read address is a pointer register picked by the state (the next address is
precomputed into a register while a read is in flight); multiplies (GATHER's row offset,
PACKAGE's weighted token) have a state of their own; the division is non-restoring (no
multiplexer after its carry chain) and negates by inverting bits; the states are one-hot
registers, the counters carry registered end flags and each counter's clear / step strobe
is an OR of states where possible; a TOPK result beat is copied into the controller and
the engine's ``result.ready`` is a register (it stalls the engine's whole pipeline).
``sim/perf/units.py`` counts the states.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS

from .decode import field_slice, first_failure, instruction_unit_members

__all__ = ["TokenController", "TOKEN_OPCODES", "SUM_ROWS_LIMIT"]

_ADDR_BITS = 24
_LANE_BITS = (ADDR_UNIT - 1).bit_length()
#: The opcodes the controller executes.
TOKEN_OPCODES = (Opcode.TOPK, Opcode.GATHER, Opcode.PACKAGE)
#: Most uint8 rows a column sum may add (``rows * 255`` must fit a score).
SUM_ROWS_LIMIT = ((1 << TOPK_SCORE_BITS) - 1) // 0xFF
#: Quotient bits of the package token's division (its result is an int8 mean, |q| <= 128).
_QUOTIENT_BITS = 9


class _Counter:
    """A counter stepped or cleared by comb strobes, with a registered flag ``at[key]``
    (value == bound) per bound: no compare between the counter and the state machine. The
    bounds must be stable (instruction fields); ``bound - 1`` and ``bound == 0`` are kept in
    registers, so a flag is one equality of two registers (a step) or a register (a clear).
    ``clear`` wins over ``step``. With ``spaced`` (the counter never changes in the cycle
    before a step) the equality is itself a register, a cycle behind the value."""

    def __init__(self, m: Module, name: str, bounds: dict, *, spaced: bool = False) -> None:
        self.value = Signal(13, name=name)
        self.clear, self.step = Signal(name=f"{name}_clear"), Signal(name=f"{name}_step")
        self.at = {key: Signal(name=f"{name}_at_{key}") for key in bounds}
        before, zero = {}, {}
        for key, bound in bounds.items():
            before[key] = Signal(signed(15), name=f"{name}_{key}_minus_1")
            zero[key] = Signal(name=f"{name}_{key}_zero")
            m.d.sync += [before[key].eq(bound - 1), zero[key].eq(bound == 0)]
        reaches = {key: self.value == before[key] for key in bounds}   # this step reaches the bound
        if spaced:
            for key in bounds:
                reaches[key], equal = Signal(name=f"{name}_{key}_reached"), reaches[key]
                m.d.sync += reaches[key].eq(equal)
        with m.If(self.clear):
            m.d.sync += [self.value.eq(0), *(self.at[key].eq(zero[key]) for key in bounds)]
        with m.Elif(self.step):
            m.d.sync += [self.value.eq(self.value + 1), *(self.at[key].eq(reaches[key]) for key in bounds)]


class TokenController(wiring.Component):
    """Executes TOPK, GATHER and PACKAGE (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Must have ``has_topk``; supplies ``topk_lanes``, ``max_tokens`` and the VECTOR size.

    Attributes
    ----------
    word : in
        The instruction (held from ``start`` to ``done`` / ``error``).
    start : in
        Pulse: execute ``word``.
    done, error : out
        One-cycle pulses: the instruction retired, or stopped with ``error_code``.
    read, read_addr, read_data : VECTOR read port (byte address; data one cycle later).
    write, write_addr, write_data : VECTOR byte write.

    Raises
    ------
    ConfigError
        If ``config.has_topk`` is false.
    """

    #: Registers between the instruction word and the operand checks (product, sum, compare).
    CHECK_STAGES = 3

    def __init__(self, *, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
        if not config.has_topk:
            raise ConfigError(f"TokenController: config {config.name!r} has no top-k engine (has_topk is false)")
        self.config = config
        super().__init__({
            **instruction_unit_members(),
            "read": Out(1), "read_addr": Out(_ADDR_BITS), "read_data": In(ADDR_UNIT * 8),
            "write": Out(1), "write_addr": Out(_ADDR_BITS), "write_data": Out(8),
        })

    def elaborate(self, platform):
        from vitaccel.hw.topk import TopKEngine

        m = Module()
        cfg = self.config
        vector_bytes = isa.buffer_bytes(cfg, Buffer.VECTOR)
        m.submodules.engine = engine = TopKEngine(config=cfg)
        lanes = engine.lanes
        opcode = field_slice(self.word, Opcode.FINISH, "opcode")

        def f(op, name):
            return field_slice(self.word, op, name)

        # ---- registered checks (golden order is kept by the FSM's tests) ----------------------
        t_rows, t_n, t_k = f(Opcode.TOPK, "rows"), f(Opcode.TOPK, "n"), f(Opcode.TOPK, "k")
        t_src, t_dst = f(Opcode.TOPK, "src_addr") * ADDR_UNIT, f(Opcode.TOPK, "dst_addr") * ADDR_UNIT
        sum_rows = f(Opcode.TOPK, "sum_rows")
        g_rows, g_cols, g_n = f(Opcode.GATHER, "rows"), f(Opcode.GATHER, "cols"), f(Opcode.GATHER, "n")
        g_src, g_dst = f(Opcode.GATHER, "src_addr") * ADDR_UNIT, f(Opcode.GATHER, "dst_addr") * ADDR_UNIT
        g_index = f(Opcode.GATHER, "index_addr") * ADDR_UNIT
        p_n, p_cols, p_k = f(Opcode.PACKAGE, "n"), f(Opcode.PACKAGE, "cols"), f(Opcode.PACKAGE, "k")
        p_heads = f(Opcode.PACKAGE, "heads")
        p_src, p_prob = f(Opcode.PACKAGE, "src_addr") * ADDR_UNIT, f(Opcode.PACKAGE, "prob_addr") * ADDR_UNIT
        p_index, p_dst = f(Opcode.PACKAGE, "index_addr") * ADDR_UNIT, f(Opcode.PACKAGE, "dst_addr") * ADDR_UNIT
        is_topk, is_gather = Signal(), Signal()   # registered (the word is held)
        m.d.sync += [is_topk.eq(opcode == Opcode.TOPK), is_gather.eq(opcode == Opcode.GATHER)]

        # Operand checks from the held instruction word, one register stage each
        # (:attr:`CHECK_STAGES`): the products and the room left past each start address
        # (``VECTOR bytes - start``); whether each region overruns (``bytes > room``, one carry
        # chain); per opcode the first failing check's class. CHECK reads the last stage.
        def reg(value, name):
            value = Value.cast(value)
            r = Signal(value.shape(), name=name)
            m.d.sync += r.eq(value)
            return r

        def room(start, name):
            return reg(vector_bytes - start, f"{name}_room")

        t_elements = reg(t_rows * t_n, "topk_elements")
        t_kept_all = reg(t_rows * t_k, "topk_kept_all")   # the selections' kept indices (no sum_rows)
        g_src_bytes, g_dst_bytes = reg(g_n * g_cols, "gather_src_bytes"), reg(g_rows * g_cols, "gather_dst_bytes")
        p_prob_bytes, p_src_bytes = reg(p_heads * p_n, "package_prob_bytes"), reg(p_n * p_cols, "package_src_bytes")
        t_src_out = reg(Mux(sum_rows, t_elements, 2 * t_elements) > room(t_src, "topk_src"), "topk_src_out")
        t_dst_room = room(t_dst, "topk_dst")
        t_dst_one_out = reg(2 * t_k > t_dst_room, "topk_dst_one_out")        # sum_rows: one selection
        t_dst_all_out = reg(2 * t_kept_all > t_dst_room, "topk_dst_all_out")
        g_src_out = reg(g_src_bytes > room(g_src, "gather_src"), "gather_src_out")
        g_index_out = reg(2 * g_rows > room(g_index, "gather_index"), "gather_index_out")
        g_dst_out = reg(g_dst_bytes > room(g_dst, "gather_dst"), "gather_dst_out")
        p_prob_out = reg(p_prob_bytes > room(p_prob, "package_prob"), "package_prob_out")
        p_src_out = reg(p_src_bytes > room(p_src, "package_src"), "package_src_out")
        p_index_out = reg(2 * p_k > room(p_index, "package_index"), "package_index_out")
        p_dst_out = reg(p_cols > room(p_dst, "package_dst"), "package_dst_out")
        t_bad_shape = reg(reg((t_k > t_n) | (t_n > cfg.max_tokens), "topk_bad_shape0"), "topk_bad_shape")
        t_bad_rows = reg(reg(sum_rows & ((t_rows == 0) | (t_rows > SUM_ROWS_LIMIT)), "topk_bad_rows0"), "topk_bad_rows")
        p_bad_shape = reg(reg((p_k > p_n) | (p_n > cfg.max_tokens), "package_bad_shape0"), "package_bad_shape")
        p_bad_heads = reg(reg((p_heads == 0) | (p_heads > SUM_ROWS_LIMIT), "package_bad_heads0"), "package_bad_heads")
        # CHECK's outcome (golden order: INVALID_OPERAND checks before ADDRESS_OUT_OF_RANGE).
        check_invalid = reg(Mux(is_topk, t_bad_shape | t_bad_rows, ~is_gather & (p_bad_shape | p_bad_heads)),
                            "check_invalid")
        check_out = reg(Mux(is_topk, t_src_out | Mux(sum_rows, t_dst_one_out, t_dst_all_out),
                            Mux(is_gather, g_src_out | g_index_out, p_prob_out | p_src_out | p_index_out)), "check_out")
        # Loop bounds, strides and start addresses as registers (``x - 1``, products and
        # compares kept off the loops' paths).
        summed_last = reg(Mux(sum_rows, t_rows, 1) - 1, "summed_last")
        t_n_last, p_heads_last = reg(t_n - 1, "topk_n_last"), reg(p_heads - 1, "package_heads_last")
        element_step = reg(Mux(sum_rows, t_n, 2 * t_n), "element_step")   # bytes between summed rows
        element_is_byte = reg((opcode != Opcode.TOPK) | sum_rows, "element_is_byte")   # else uint16
        column_stride = reg(Mux((opcode == Opcode.TOPK) & ~sum_rows, 2, 1), "column_stride")
        start_address = reg(Mux(opcode == Opcode.TOPK, t_src, p_prob), "start_address")   # the first read
        t_n_zero = reg(t_n == 0, "topk_n_zero")

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # ---- VECTOR reads: address this cycle, element the next, registered the one after ------
        # ``read_addr`` is a register picked by the state (one LUT); the lanes follow it every
        # cycle (they only matter the cycle after a read).
        read_lane = Signal(_LANE_BITS)
        element_lane = Signal(_LANE_BITS)   # the element's low byte: read_lane, 2-aligned for uint16
        m.d.sync += [read_lane.eq(self.read_addr[:_LANE_BITS]),
                     element_lane.eq(self.read_addr[:_LANE_BITS] & Cat(element_is_byte, Const((1 << (_LANE_BITS - 1)) - 1, _LANE_BITS - 1)))]
        byte = self.read_data.word_select(read_lane, 8)
        halves = [self.read_data[16 * i:16 * (i + 1)] for i in range(ADDR_UNIT // 2)]   # uint16 elements are 2-aligned
        half_r = reg(Array(halves)[read_lane[1:]], "half_r")   # a read's element 2 cycles on
        element_r = Signal(16)         # the byte (zero-extended) or the uint16 of the instruction
        m.d.sync += element_r.eq(Cat(self.read_data.word_select(element_lane, 8),
                                     Mux(element_is_byte, 0, Array(h[8:] for h in halves)[read_lane[1:]])))
        token_n = Signal(13)
        index_bad = Signal()   # the entry INDEX_TAKE took is >= n: INDEX_READ stops on it

        def write_at(address, value):
            return [self.write.eq(1), self.write_addr.eq(address), self.write_data.eq(value)]

        # ---- shared counters ------------------------------------------------------------------
        # Each is cleared in a state where its previous use is over (no flag in the strobe
        # where the state alone will do); stepping past a bound on the way out is harmless.
        # selection row (TOPK), output row (GATHER), column (PACKAGE)
        outer_c = _Counter(m, "outer", {"selections": Mux(sum_rows, 1, t_rows), "g_rows": g_rows, "p_cols": p_cols})
        # score column (TOPK), byte (GATHER), token (PACKAGE)
        col_c = _Counter(m, "col", {"t_n": t_n, "t_n_last": t_n_last, "g_cols": g_cols, "p_n": p_n})
        # summed row (TOPK sum_rows / PACKAGE heads), index list entry
        # (steps in TOPK_ADD, INDEX_TAKE, PACKAGE_WEIGHT_ADD: each after a WAIT state)
        inner_c = _Counter(m, "inner", {"summed_last": summed_last, "heads_last": p_heads_last,
                                        "count": Mux(is_gather, g_rows, p_k)}, spaced=True)
        col = col_c.value
        # Pointers (registers; each takes a precomputed sum or steps by an adder of its own).
        # TOPK reads a column's summed rows from ``address`` (step ``address_stride``), then the
        # next column from ``column_address`` (step ``column_stride``); a selection's last
        # column ends where the next selection's row starts. PACKAGE walks the weights the same
        # way (heads, then tokens), then each source column (tokens, then columns).
        address = Signal(_ADDR_BITS)          # TOPK score, PACKAGE probability / source element
        address_stride = Signal(_ADDR_BITS)   # summed row, head, source row
        column_address = Signal(_ADDR_BITS)
        column_next = reg(column_address + column_stride, "column_next")
        summing = Signal()                    # TOPK, PACKAGE's weights: a column ends after its last row
        column_ends = summing & Mux(is_topk, inner_c.at["summed_last"], inner_c.at["heads_last"])
        # The next read after this one; every loop reads ``address`` at least two cycles after
        # changing it, so this register is ready in time.
        address_next = reg(Mux(column_ends, column_next, address + address_stride), "address_next")
        row_address = Signal(_ADDR_BITS)      # GATHER: the byte to copy
        index_address = Signal(_ADDR_BITS)    # the index list entry to read
        out_address = Signal(_ADDR_BITS)      # the next byte written
        index_base = Signal(_ADDR_BITS)
        pending = Signal()          # a GATHER byte read last cycle waits to be written
        settle = Signal(range(self.CHECK_STAGES))

        # TOPK front end: a beat of lane scores, the column sum in progress.
        beat = Signal(data.ArrayLayout(unsigned(TOPK_SCORE_BITS), lanes))
        lane = Signal(lanes, init=1)   # one-hot: the beat lane the next column's score goes to
        total = Signal(TOPK_SCORE_BITS)
        m.d.comb += [engine.scores.payload.eq(beat), engine.n.eq(t_n), engine.k.eq(t_k)]
        result = engine.result.payload
        # TOPK results: a beat is copied into ``kept_indices`` (shifted down as they are written),
        # so that ``engine.result.ready`` is an AND of registers (it stalls the engine's pipeline).
        collecting = Signal()       # in TOPK_RESULT
        held = Signal()             # a beat with kept indices is being written
        final = Signal()            # this cycle writes the held beat's last byte
        held_last = Signal()        # the held beat is the selection's last
        kept_indices = Signal(data.ArrayLayout(unsigned(16), lanes))   # byte 0 is the next written
        bytes_left = Signal(range(2 * lanes + 1))
        ready = Signal()            # == collecting & (~held | final), kept as a register (see below)
        take = Signal()             # a result beat is copied this cycle
        m.d.comb += [engine.result.ready.eq(ready), take.eq(ready & engine.result.valid)]

        # PACKAGE: kept flags and pruned weights per token (weight 0 = kept), sums, division.
        # ``weightless``: the weight is 0 (kept or no probability), written beside it so that the
        # X pass tests a registered flag, not 16 bits read through the weights' memory.
        kept = Memory(shape=1, depth=cfg.max_tokens, init=[])
        weights = Memory(shape=unsigned(TOPK_SCORE_BITS), depth=cfg.max_tokens, init=[])
        weightless = Memory(shape=1, depth=cfg.max_tokens, init=[])
        m.submodules.kept = kept
        m.submodules.weights = weights
        m.submodules.weightless = weightless
        kept_w, kept_r = kept.write_port(), kept.read_port(domain="comb")
        weights_w, weights_r = weights.write_port(), weights.read_port(domain="comb")
        weightless_w, weightless_r = weightless.write_port(), weightless.read_port(domain="comb")
        kept_now = reg(kept_r.data, "kept_now")   # token col's (a LUT-RAM read into a register)
        weight_now, weight_zero = reg(weights_r.data, "weight_now"), reg(weightless_r.data, "weight_zero")
        # The multiplier's operand, a register after weight_now (which yosys maps into a block
        # RAM's read register: 1.3 ns clock-to-out); read two cycles before PACKAGE_X_MULTIPLY.
        weight_operand = reg(weight_now, "weight_operand")
        count_bits = (cfg.max_tokens * 0xFFFF).bit_length()
        weight_total = Signal(count_bits)
        numerator = Signal(signed(count_bits + 9))
        product = Signal(signed(count_bits + 9))
        dividend = Signal(signed(count_bits + 11))
        divisor = Signal(count_bits + 1)
        trial = Signal(count_bits + _QUOTIENT_BITS)
        remainder = Signal(signed(count_bits + 12))   # non-restoring: negative after a trial that did not fit
        quotient = Signal(_QUOTIENT_BITS)
        negative = Signal()
        step = Signal(range(_QUOTIENT_BITS))
        m.d.comb += [kept_r.addr.eq(col), weights_r.addr.eq(col), weightless_r.addr.eq(col)]
        # The memories' writes come from registers (set a cycle ahead): no state decode before a
        # LUT-RAM's address or write enable. Nothing reads a flag or weight the cycle after its write.
        kept_write = Signal(data.StructLayout({"en": 1, "addr": range(cfg.max_tokens), "data": 1}))
        weight_write = Signal(data.StructLayout({"en": 1, "addr": range(cfg.max_tokens),
                                                  "data": unsigned(TOPK_SCORE_BITS), "zero": 1}))
        m.d.sync += [kept_write.en.eq(0), weight_write.en.eq(0)]
        m.d.comb += [kept_w.en.eq(kept_write.en), kept_w.addr.eq(kept_write.addr), kept_w.data.eq(kept_write.data),
                     weights_w.en.eq(weight_write.en), weights_w.addr.eq(weight_write.addr),
                     weights_w.data.eq(weight_write.data), weightless_w.en.eq(weight_write.en),
                     weightless_w.addr.eq(weight_write.addr), weightless_w.data.eq(weight_write.zero)]
        # The weights' total adds each written weight (a register) as it is written.
        with m.If(weight_write.en):
            m.d.sync += weight_total.eq(weight_total + weight_write.data)

        # One-hot states (registers): every enable and output is a LUT or two from registers.
        state = {name: Signal(name=f"tokens_{name.lower()}", init=name == "IDLE") for name in (
            'IDLE', 'SETTLE', 'CHECK', 'TOPK_ROW', 'TOPK_READ', 'TOPK_WAIT', 'TOPK_ADD', 'TOPK_SEND', 'TOPK_START', 'TOPK_RESULT', 'TOPK_NEXT', 'INDEX_READ', 'INDEX_WAIT', 'INDEX_TAKE', 'INDEX_DONE', 'GATHER_ROW', 'GATHER_INDEX_WAIT', 'GATHER_INDEX', 'GATHER_ADDRESS', 'GATHER_COPY', 'PACKAGE_CLEAR', 'PACKAGE_WEIGHT_READ', 'PACKAGE_WEIGHT_WAIT', 'PACKAGE_WEIGHT_ADD', 'PACKAGE_WEIGHT_WRITE', 'PACKAGE_DST', 'PACKAGE_COLUMN', 'PACKAGE_X_LOOK', 'PACKAGE_X_READ', 'PACKAGE_X_WAIT', 'PACKAGE_X_MULTIPLY', 'PACKAGE_X_ADD', 'PACKAGE_DIVIDE_SETUP', 'PACKAGE_DIVIDE_SIGN', 'PACKAGE_DIVIDE', 'PACKAGE_WRITE')}

        def goto(current, following):
            m.d.sync += [state[current].eq(0), state[following].eq(1)]

        # The read address: the index pointer, GATHER's copy pointer, or ``address``.
        m.d.comb += self.read_addr.eq(Mux(state["INDEX_READ"] | state["GATHER_ROW"], index_address,
                                          Mux(state["GATHER_COPY"], row_address, address)))

        with m.If(state["IDLE"]):
            with m.If(self.start):
                m.d.sync += settle.eq(self.CHECK_STAGES - 2)
                goto("IDLE", "SETTLE")
        with m.If(state["SETTLE"]):   # the operand checks' registers
            m.d.sync += settle.eq(settle - 1)
            with m.If(settle == 0):
                goto("SETTLE", "CHECK")
        with m.If(state["CHECK"]):
            # Every opcode's start addresses and strides, from the held word and registers.
            m.d.sync += [lane.eq(1), weight_total.eq(0),
                         column_address.eq(start_address), summing.eq(is_topk),
                         address_stride.eq(Mux(is_topk, element_step, p_n)),
                         out_address.eq(Mux(is_topk, t_dst, Mux(is_gather, g_dst, p_dst))),
                         token_n.eq(Mux(is_gather, g_n, p_n)),
                         index_base.eq(Mux(is_gather, g_index, p_index)),
                         index_address.eq(Mux(is_gather, g_index, p_index))]
            failed, code = first_failure([(check_invalid, ErrorCode.INVALID_OPERAND),
                                          (check_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
            with m.If(failed):
                m.d.comb += fail(code)
                goto("CHECK", "IDLE")
            with m.Elif(is_topk):
                goto("CHECK", "TOPK_ROW")
            with m.Elif(is_gather):
                goto("CHECK", "INDEX_READ")
            with m.Else():
                goto("CHECK", "PACKAGE_CLEAR")

        # ---- TOPK: per selection, feed the scores, start, write the kept indices ------------
        with m.If(state["TOPK_ROW"]):
            with m.If(outer_c.at["selections"]):
                m.d.comb += self.done.eq(1)
                goto("TOPK_ROW", "IDLE")
            with m.Elif(t_n_zero):        # nothing to select (k == 0): no output
                pass   # the counters' strobes are below
            with m.Else():   # address, column_address: the row's first score
                goto("TOPK_ROW", "TOPK_READ")
        with m.If(state["TOPK_READ"]):
            goto("TOPK_READ", "TOPK_WAIT")
        with m.If(state["TOPK_WAIT"]):    # the element reaches ``element_r``
            goto("TOPK_WAIT", "TOPK_ADD")
        with m.If(state["TOPK_ADD"]):
            with m.If(inner_c.at["summed_last"]):   # the column's score is complete
                for i in range(lanes):
                    with m.If(lane[i]):
                        m.d.sync += beat[i].eq(total + element_r)
                m.d.sync += lane.eq(lane.rotate_left(1))
                with m.If(lane[lanes - 1] | col_c.at["t_n_last"]):
                    goto("TOPK_ADD", "TOPK_SEND")
                with m.Else():
                    goto("TOPK_ADD", "TOPK_READ")
            with m.Else():
                goto("TOPK_ADD", "TOPK_READ")
        with m.If(state["TOPK_SEND"]):   # lanes past n are masked by the engine
            m.d.comb += engine.scores.valid.eq(1)
            with m.If(engine.scores.ready):
                m.d.sync += [lane.eq(1), beat.eq(0)]
                with m.If(col_c.at["t_n"]):
                    goto("TOPK_SEND", "TOPK_START")
                with m.Else():
                    goto("TOPK_SEND", "TOPK_READ")
        with m.If(state["TOPK_START"]):
            m.d.comb += engine.start.eq(1)
            m.d.sync += [collecting.eq(1), held.eq(0), final.eq(0)]
            goto("TOPK_START", "TOPK_RESULT")
        with m.If(state["TOPK_RESULT"]):   # per result beat its kept indices, two bytes each
            selection_done = Signal()
            with m.If(held):
                m.d.sync += [bytes_left.eq(bytes_left - 1), final.eq(bytes_left == 2)]
                with m.If(final):
                    m.d.sync += held.eq(0)
                    m.d.comb += selection_done.eq(held_last)
            with m.If(take):   # the next beat
                m.d.sync += [held.eq(result.count != 0), held_last.eq(result.last), final.eq(0),
                             bytes_left.eq(2 * result.count)]
                with m.If(result.count == 0):
                    m.d.comb += selection_done.eq(result.last)
            with m.If(selection_done):
                m.d.sync += collecting.eq(0)
                goto("TOPK_RESULT", "TOPK_NEXT")
        # kept_indices: one expression of two strobes (load a beat, or shift out a written byte)
        with m.If(take):
            m.d.sync += [kept_indices[i].eq(result.indices[i]) for i in range(lanes)]
        with m.Elif(state["TOPK_RESULT"] & held):
            m.d.sync += kept_indices.eq(kept_indices.as_value() >> 8)
        # ready (collecting & (~held | final)) one cycle ahead, from the same registers' updates:
        # TOPK_START; a beat taken (ready again at once if it keeps nothing and is not the last);
        # a byte written (the last of a beat: ready unless that beat was the selection's last;
        # else ready with the beat's last byte); otherwise unchanged.
        with m.If(state["TOPK_START"]):
            m.d.sync += ready.eq(1)
        with m.Elif(take):
            m.d.sync += ready.eq((result.count == 0) & ~result.last)
        with m.Elif(held):
            m.d.sync += ready.eq(Mux(final, ~held_last, bytes_left == 2))
        with m.If(state["TOPK_NEXT"]):   # the next selection (a state: selection_done is late)
            goto("TOPK_NEXT", "TOPK_ROW")

        # ---- index list pass (GATHER, PACKAGE): every index below n; PACKAGE marks them -----
        m.d.sync += index_bad.eq(state["INDEX_TAKE"] & (half_r >= token_n))
        with m.If(state["INDEX_READ"]):
            with m.If(index_bad):   # the entry taken last (a cycle later than it arrived: a compare's time)
                m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                goto("INDEX_READ", "IDLE")
            with m.Elif(inner_c.at["count"]):
                goto("INDEX_READ", "INDEX_DONE")
            with m.Else():
                goto("INDEX_READ", "INDEX_WAIT")
        with m.If(state["INDEX_WAIT"]):
            goto("INDEX_WAIT", "INDEX_TAKE")
        with m.If(state["INDEX_TAKE"]):   # (a bad index's flag is harmless: PACKAGE_CLEAR clears the flags)
            m.d.sync += [kept_write.addr.eq(half_r), kept_write.data.eq(1), kept_write.en.eq(~is_gather)]
            goto("INDEX_TAKE", "INDEX_READ")
        with m.If(state["INDEX_DONE"]):
            m.d.sync += index_address.eq(index_base)   # GATHER reads the list again, row by row
            with m.If(is_gather):
                with m.If(g_dst_out):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    goto("INDEX_DONE", "IDLE")
                with m.Else():
                    goto("INDEX_DONE", "GATHER_ROW")
            with m.Else():
                m.d.sync += summing.eq(1)
                goto("INDEX_DONE", "PACKAGE_WEIGHT_READ")

        # ---- GATHER: per output row, its index, then the row's bytes ------------------------
        row_offset = Signal(_ADDR_BITS)
        with m.If(state["GATHER_ROW"]):
            with m.If(outer_c.at["g_rows"]):
                m.d.comb += self.done.eq(1)
                goto("GATHER_ROW", "IDLE")
            with m.Else():
                goto("GATHER_ROW", "GATHER_INDEX_WAIT")
        with m.If(state["GATHER_INDEX_WAIT"]):
            goto("GATHER_INDEX_WAIT", "GATHER_INDEX")
        with m.If(state["GATHER_INDEX"]):   # the row's offset (a DSP multiply), then its address
            m.d.sync += row_offset.eq(half_r * g_cols)
            goto("GATHER_INDEX", "GATHER_ADDRESS")
        with m.If(state["GATHER_ADDRESS"]):
            m.d.sync += [row_address.eq(g_src + row_offset), pending.eq(0)]
            goto("GATHER_ADDRESS", "GATHER_COPY")
        with m.If(state["GATHER_COPY"]):   # pipelined: read byte col, write the byte read last cycle
            with m.If(pending):
                m.d.comb += write_at(out_address, byte)
            m.d.sync += pending.eq(~col_c.at["g_cols"])
            with m.If(col_c.at["g_cols"]):
                goto("GATHER_COPY", "GATHER_ROW")

        # ---- PACKAGE ------------------------------------------------------------------------
        with m.If(state["PACKAGE_CLEAR"]):   # no token kept yet
            with m.If(col_c.at["p_n"]):
                goto("PACKAGE_CLEAR", "INDEX_READ")
            with m.Else():
                m.d.sync += [kept_write.addr.eq(col), kept_write.data.eq(0), kept_write.en.eq(1)]
        # Weights: token col's heads probabilities summed (address walks prob + h * n + col).
        with m.If(state["PACKAGE_WEIGHT_READ"]):
            with m.If(col_c.at["p_n"]):
                goto("PACKAGE_WEIGHT_READ", "PACKAGE_DST")
            with m.Else():
                goto("PACKAGE_WEIGHT_READ", "PACKAGE_WEIGHT_WAIT")
        with m.If(state["PACKAGE_WEIGHT_WAIT"]):
            goto("PACKAGE_WEIGHT_WAIT", "PACKAGE_WEIGHT_ADD")
        with m.If(state["PACKAGE_WEIGHT_ADD"]):
            with m.If(inner_c.at["heads_last"]):
                goto("PACKAGE_WEIGHT_ADD", "PACKAGE_WEIGHT_WRITE")
            with m.Else():
                goto("PACKAGE_WEIGHT_ADD", "PACKAGE_WEIGHT_READ")
        with m.If(state["PACKAGE_WEIGHT_WRITE"]):   # kept_now: token col's flag, read last cycle
            m.d.sync += [weight_write.en.eq(1), weight_write.addr.eq(col),
                         weight_write.data.eq(Mux(kept_now, 0, total)), weight_write.zero.eq(kept_now | (total == 0))]
            goto("PACKAGE_WEIGHT_WRITE", "PACKAGE_WEIGHT_READ")
        with m.If(state["PACKAGE_DST"]):
            m.d.sync += [column_address.eq(p_src), address_stride.eq(p_cols), summing.eq(0)]   # source columns
            with m.If(p_dst_out):
                m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                goto("PACKAGE_DST", "IDLE")
            with m.Else():
                goto("PACKAGE_DST", "PACKAGE_COLUMN")
        # Per column (outer): numerator over the pruned tokens (col), then the division.
        with m.If(state["PACKAGE_COLUMN"]):
            with m.If(outer_c.at["p_cols"]):
                m.d.comb += self.done.eq(1)
                goto("PACKAGE_COLUMN", "IDLE")
            with m.Else():
                m.d.sync += numerator.eq(0)
                goto("PACKAGE_COLUMN", "PACKAGE_X_LOOK")
        with m.If(state["PACKAGE_X_LOOK"]):   # token col's weight reaches weight_now
            goto("PACKAGE_X_LOOK", "PACKAGE_X_READ")
        with m.If(state["PACKAGE_X_READ"]):
            with m.If(col_c.at["p_n"]):
                goto("PACKAGE_X_READ", "PACKAGE_DIVIDE_SETUP")
            with m.Elif(weight_zero):   # kept (or weightless): adds nothing
                goto("PACKAGE_X_READ", "PACKAGE_X_LOOK")
            with m.Else():
                goto("PACKAGE_X_READ", "PACKAGE_X_WAIT")
        with m.If(state["PACKAGE_X_WAIT"]):
            goto("PACKAGE_X_WAIT", "PACKAGE_X_MULTIPLY")
        with m.If(state["PACKAGE_X_MULTIPLY"]):
            m.d.sync += product.eq(element_r[:8].as_signed() * weight_operand)
            goto("PACKAGE_X_MULTIPLY", "PACKAGE_X_ADD")
        with m.If(state["PACKAGE_X_ADD"]):
            m.d.sync += numerator.eq(numerator + product)
            goto("PACKAGE_X_ADD", "PACKAGE_X_LOOK")
        with m.If(state["PACKAGE_DIVIDE_SETUP"]):
            # floor(a / b), a = 2 num + total, b = 2 total. For a < 0, floor(a / b) ==
            # ~floor(~a / b) (~a = -a - 1 >= 0): divide a or ~a, invert the quotient's bits (no adders).
            m.d.sync += [dividend.eq(2 * numerator + weight_total), divisor.eq(2 * weight_total)]
            goto("PACKAGE_DIVIDE_SETUP", "PACKAGE_DIVIDE_SIGN")
        with m.If(state["PACKAGE_DIVIDE_SIGN"]):
            m.d.sync += [negative.eq(dividend < 0), quotient.eq(0), step.eq(_QUOTIENT_BITS - 1),
                         remainder.eq(Mux(dividend < 0, ~dividend, dividend)),
                         trial.eq(divisor << (_QUOTIENT_BITS - 1))]
            with m.If(divisor == 0):
                goto("PACKAGE_DIVIDE_SIGN", "PACKAGE_WRITE")
            with m.Else():
                goto("PACKAGE_DIVIDE_SIGN", "PACKAGE_DIVIDE")
        with m.If(state["PACKAGE_DIVIDE"]):
            # Non-restoring division, one quotient bit per cycle: the partial remainder is kept
            # even when the trial did not fit (negative), and the next step adds the (halved)
            # trial back instead of subtracting it; its sign is the restoring division's "fits",
            # so the choice after the two carry chains (remainder - trial, remainder + trial) is
            # made by a register, not by a carry chain's end. (An AND-OR, not a Mux: yosys's
            # opt_share would fold a Mux of two sums into one adder behind a negation and a mux.)
            difference = Signal(signed(len(remainder)))
            added = remainder[-1].replicate(len(remainder))
            m.d.comb += difference.eq(((remainder + trial)[:len(remainder)] & added)
                                      | ((remainder - trial)[:len(remainder)] & ~added))
            m.d.sync += [step.eq(step - 1), trial.eq(trial >> 1), remainder.eq(difference),
                         quotient.eq(Cat((difference >= 0) ^ negative, quotient[:-1]))]
            with m.If(step == 0):
                goto("PACKAGE_DIVIDE", "PACKAGE_WRITE")
        with m.If(state["PACKAGE_WRITE"]):
            m.d.comb += write_at(out_address, quotient[:8])   # its bits inverted if a < 0
            goto("PACKAGE_WRITE", "PACKAGE_COLUMN")

        # The strobes, one expression each (one-hot states, registered flags).
        summed_done = state["TOPK_ADD"] & inner_c.at["summed_last"]
        m.d.comb += [
            self.read.eq(state["TOPK_READ"] | (state["INDEX_READ"] & ~inner_c.at["count"] & ~index_bad)
                         | (state["GATHER_ROW"] & ~outer_c.at["g_rows"]) | (state["GATHER_COPY"] & ~col_c.at["g_cols"])
                         | (state["PACKAGE_WEIGHT_READ"] & ~col_c.at["p_n"])
                         | (state["PACKAGE_X_READ"] & ~col_c.at["p_n"] & ~weight_zero)),
            col_c.clear.eq(state["CHECK"] | state["TOPK_NEXT"] | state["INDEX_DONE"] | state["GATHER_ROW"]
                           | state["PACKAGE_COLUMN"]),
            col_c.step.eq(summed_done | state["GATHER_COPY"] | state["PACKAGE_CLEAR"] | state["PACKAGE_WEIGHT_WRITE"]
                          | (state["PACKAGE_X_READ"] & weight_zero) | state["PACKAGE_X_ADD"]),
            outer_c.clear.eq(state["CHECK"]),
            outer_c.step.eq((state["TOPK_ROW"] & t_n_zero) | state["TOPK_NEXT"] | state["GATHER_INDEX_WAIT"]
                            | state["PACKAGE_WRITE"]),
            inner_c.clear.eq(state["CHECK"] | state["TOPK_NEXT"] | summed_done | state["INDEX_DONE"]
                             | state["PACKAGE_WEIGHT_WRITE"]),
            inner_c.step.eq(state["TOPK_ADD"] | state["INDEX_TAKE"] | state["PACKAGE_WEIGHT_ADD"]),
        ]
        with m.If(state["CHECK"] | summed_done | state["PACKAGE_WEIGHT_WRITE"]):
            m.d.sync += total.eq(0)
        with m.Elif(state["TOPK_ADD"] | state["PACKAGE_WEIGHT_ADD"]):
            m.d.sync += total.eq(total + element_r)
        with m.If(state["GATHER_COPY"]):
            m.d.sync += row_address.eq(row_address + 1)
        with m.If(state["CHECK"]):   # address: the start, a source column, or the next read
            m.d.sync += address.eq(start_address)
        with m.Elif(state["PACKAGE_COLUMN"]):
            m.d.sync += address.eq(column_address)
        with m.Elif(state["TOPK_ADD"] | state["PACKAGE_WEIGHT_ADD"] | (state["PACKAGE_X_READ"] & weight_zero)
                    | state["PACKAGE_X_ADD"]):
            m.d.sync += address.eq(address_next)
        with m.If(summed_done | (state["PACKAGE_WEIGHT_ADD"] & inner_c.at["heads_last"]) | state["PACKAGE_WRITE"]):
            m.d.sync += column_address.eq(column_next)
        with m.If(state["INDEX_TAKE"] | state["GATHER_INDEX_WAIT"]):
            m.d.sync += index_address.eq(index_address + 2)
        with m.If((state["TOPK_RESULT"] & held) | (state["GATHER_COPY"] & pending) | state["PACKAGE_WRITE"]):
            m.d.sync += out_address.eq(out_address + 1)
        with m.If(state["TOPK_RESULT"] & held):
            m.d.comb += write_at(out_address, kept_indices[0][:8])
        return m
