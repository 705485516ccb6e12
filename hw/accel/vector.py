"""The vector controller: LUT_LOAD, GELU, ADD, SOFTMAX and LAYERNORM in the accelerator.

:class:`VectorController` executes the vector opcodes of the compute queue through the
non-linear units of :mod:`vitaccel.hw.nonlinear.units` (``Gelu``, ``Softmax``, ``LayerNorm``)
and its own elementwise ADD. It talks to the core through explicit ports: the instruction
(``word``, ``start``), the retirement pulses (``done``, ``error`` with ``error_code``), the
VECTOR and ACC read ports (byte address, 16-byte word one cycle later) and a 16-byte VECTOR
write port with byte enables.

Every opcode checks its operands in the golden machine's order (``GoldenMachine._lut_load``,
``_gelu``, ``_add``, ``_softmax``, ``_layernorm``) through :func:`~.decode.first_failure`;
registered address checks are computed in the cycle the instruction is started and tested the
cycle after.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.hdl import signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.regmap import ErrorCode

from .decode import first_failure, instruction_unit_members, instruction_view

__all__ = ["VectorController", "VECTOR_OPCODES"]

#: The opcodes :class:`VectorController` executes (GELU, SOFTMAX and LAYERNORM only when the
#: config has the unit; see :meth:`VectorController.executes`).
VECTOR_OPCODES = (Opcode.LUT_LOAD, Opcode.GELU, Opcode.ADD, Opcode.SOFTMAX, Opcode.LAYERNORM)
_ADDR_BITS = 24
_UNIT_BITS = ADDR_UNIT * 8
_LANE_BITS = (ADDR_UNIT - 1).bit_length()


def _at_least(bound: int, value) -> Value:
    """``value <= bound``, without the comparison when it always holds (a lint warning)."""
    value = Value.cast(value)
    return Const(1) if bound >= (1 << len(value)) - 1 else value <= bound


class VectorController(wiring.Component):
    """Executes the vector opcodes (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Buffer sizes, ``vector_lanes`` and which non-linear units exist (``has_gelu``,
        ``has_softmax``, ``has_layernorm``).

    Attributes
    ----------
    word : in
        The instruction (held from ``start`` to ``done`` / ``error``).
    start : in
        Pulse: execute ``word`` (an opcode :meth:`executes` accepts).
    done, error : out
        One-cycle pulses: the instruction retired, or stopped with ``error_code``.
    vector_read, vector_read_addr, vector_read_data : VECTOR read port (byte address; the
        16-byte word holding it arrives the cycle after).
    acc_read, acc_read_addr, acc_read_data : ACC read port, the same way.
    vector_write, vector_write_addr, vector_write_data : VECTOR write of one 16-byte word
        (``vector_write`` is the byte enables; the address's low bits are ignored).
    """

    def __init__(self, *, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            **instruction_unit_members(),
            "vector_read": Out(1), "vector_read_addr": Out(_ADDR_BITS), "vector_read_data": In(_UNIT_BITS),
            "acc_read": Out(1), "acc_read_addr": Out(_ADDR_BITS), "acc_read_data": In(_UNIT_BITS),
            "vector_write": Out(ADDR_UNIT), "vector_write_addr": Out(_ADDR_BITS),
            "vector_write_data": Out(_UNIT_BITS),
        })

    def executes(self, opcode_bits) -> Value:
        """1 if the controller executes the opcode ``opcode_bits`` encodes with this config
        (GELU, SOFTMAX, LAYERNORM need their unit; LUT_LOAD and ADD always run)."""
        config = self.config
        built = {Opcode.LUT_LOAD: True, Opcode.ADD: True, Opcode.GELU: config.has_gelu,
                 Opcode.SOFTMAX: config.has_softmax, Opcode.LAYERNORM: config.has_layernorm}
        result = Value.cast(0)
        for opcode, present in built.items():
            if present:
                result = result | (opcode_bits == opcode.value)
        return result

    # -- ports -------------------------------------------------------------------------------

    def _fail(self, code) -> list:
        return [self.error.eq(1), self.error_code.eq(code)]

    def _checks(self, m: Module, checks) -> None:
        """Fail with the first of ``checks`` ((condition, ErrorCode), golden order) that holds
        and go to IDLE. This opens an ``m.If``: the caller continues with ``m.Elif`` / ``m.Else``."""
        failed, code = first_failure(checks)
        with m.If(failed):
            m.d.comb += self._fail(code)
            m.next = "IDLE"

    def _start_or_retire(self, m: Module, checks, *, elements, first_state: str, on_start=None) -> None:
        """An opcode's last check state: fail with the first of ``checks`` that holds, retire an
        instruction without ``elements``, or run ``on_start`` and go to ``first_state``."""
        self._checks(m, checks)
        with m.Elif(elements == 0):
            m.d.comb += self.done.eq(1)
            m.next = "IDLE"
        with m.Else():
            if on_start is not None:
                on_start()
            m.next = first_state

    def _write_byte(self, m: Module, address, value) -> None:
        m.d.comb += [self.vector_write.eq(1 << address[:_LANE_BITS]), self.vector_write_addr.eq(address),
                     self.vector_write_data.eq(Value.cast(value)[:8].replicate(ADDR_UNIT))]

    # -- elaboration ---------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        config = self.config
        vector_bytes = isa.buffer_bytes(config, Buffer.VECTOR)
        acc_bytes = isa.buffer_bytes(config, Buffer.ACC)
        instr = instruction_view(self.word)
        opcode = instr.finish.opcode
        vec, lut = instr.gelu, instr.lut_load   # every vector opcode has GELU's operand layout
        rows, cols = vec.rows, vec.cols
        src, dst, src2, param = vec.src_addr, vec.dst_addr, vec.src2_addr, vec.param_addr

        gelu = layernorm = softmax = None
        if config.has_gelu:
            from vitaccel.hw.nonlinear.units import Gelu

            m.submodules.gelu = gelu = Gelu(config=config)
        if config.has_layernorm:
            from vitaccel.hw.nonlinear.units import LayerNorm

            m.submodules.layernorm = layernorm = LayerNorm(config=config)
        if config.has_softmax:
            from vitaccel.hw.nonlinear.units import Softmax

            m.submodules.softmax = softmax = Softmax(config=config)

        # Registered operand checks (computed from the held word, tested a cycle later).
        elements = Signal(25)
        checks = {name: Signal(name=name) for name in (
            "src_out", "dst_out", "src2_out", "lut_range_bad", "lut_src_out", "add_param_out",
            "layernorm_header_out", "layernorm_block_out", "softmax_src_out", "softmax_param_out")}
        m.d.sync += [
            elements.eq(rows * cols),
            checks["src_out"].eq(src * ADDR_UNIT + rows * cols > vector_bytes),
            checks["dst_out"].eq(dst * ADDR_UNIT + rows * cols > vector_bytes),
            checks["src2_out"].eq(src2 * ADDR_UNIT + rows * cols > vector_bytes),
            checks["lut_range_bad"].eq(lut.offset + lut.count > isa.GELU_LUT_ENTRIES),
            checks["lut_src_out"].eq(lut.src_addr * ADDR_UNIT + lut.count > vector_bytes),
            checks["add_param_out"].eq(param * ADDR_UNIT + 4 * isa.ADD_PARAM_WORDS > acc_bytes),
            checks["layernorm_header_out"].eq(param * ADDR_UNIT + 4 * isa.LAYERNORM_HEADER_WORDS > acc_bytes),
            checks["layernorm_block_out"].eq(
                param * ADDR_UNIT + 4 * (isa.LAYERNORM_HEADER_WORDS + 3 * cols) > acc_bytes),
            checks["softmax_src_out"].eq(src * ADDR_UNIT + rows * cols * 4 > acc_bytes),
            checks["softmax_param_out"].eq(param * ADDR_UNIT + 4 * isa.SOFTMAX_PARAM_WORDS > acc_bytes),
        ]
        # A LAYERNORM destination that starts inside its source after the source's first byte:
        # a row's output may overwrite a later row's input (the row stream's ``serial``).
        dst_ahead = Signal()
        m.d.sync += dst_ahead.eq((dst > src) & (dst * ADDR_UNIT < src * ADDR_UNIT + rows * cols))
        index = Signal(25)
        read_lane = Signal(_LANE_BITS)
        byte = self.vector_read_data.word_select(read_lane, 8)
        src_byte = Signal(_ADDR_BITS)
        m.d.comb += src_byte.eq(lut.src_addr * ADDR_UNIT + index)
        entry = {Opcode.LUT_LOAD: "LUT_CHECK", Opcode.ADD: "ADD_CHECK"}
        for op, unit in ((Opcode.GELU, gelu), (Opcode.SOFTMAX, softmax), (Opcode.LAYERNORM, layernorm)):
            if unit is not None:   # without it the core never starts the opcode (``executes``)
                entry[op] = f"{op.name}_CHECK"

        with m.FSM(name="vector"):
            with m.State("IDLE"):
                with m.If(self.start):
                    with m.Switch(opcode):
                        for op, state in entry.items():
                            with m.Case(op):
                                m.next = state
            with m.State("LUT_CHECK"):
                m.d.sync += index.eq(0)
                # Without the unit there is no table to load: nothing to do.
                self._start_or_retire(m, [(checks["lut_range_bad"], ErrorCode.INVALID_OPERAND),
                                          (checks["lut_src_out"], ErrorCode.ADDRESS_OUT_OF_RANGE)],
                                      elements=lut.count if gelu is not None else Const(0), first_state="LUT_READ")
            with m.State("LUT_READ"):
                m.d.comb += [self.vector_read.eq(1), self.vector_read_addr.eq(src_byte)]
                m.d.sync += read_lane.eq(src_byte[:_LANE_BITS])
                m.next = "LUT_WRITE"
            with m.State("LUT_WRITE"):
                if gelu is not None:
                    m.d.comb += [gelu.lut_write.addr.eq(lut.offset + index), gelu.lut_write.data.eq(byte),
                                 gelu.lut_write.en.eq(1)]
                m.d.sync += index.eq(index + 1)
                with m.If(index == lut.count - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "LUT_READ"
            if gelu is not None:
                self._gelu_states(m, gelu, elements, src, dst,
                                  checks=[(checks["src_out"] | checks["dst_out"], ErrorCode.ADDRESS_OUT_OF_RANGE)])
            self._add_states(m, elements, src, src2, dst, param,
                             src_checks=[(checks["src_out"] | checks["src2_out"] | checks["add_param_out"],
                                          ErrorCode.ADDRESS_OUT_OF_RANGE)],
                             dst_out=checks["dst_out"])
            if layernorm is not None:
                self._layernorm_states(m, layernorm, elements, cols, src, dst, param,
                                       header_out=checks["layernorm_header_out"],
                                       block_out=checks["layernorm_block_out"],
                                       src_out=checks["src_out"], dst_out=checks["dst_out"], dst_ahead=dst_ahead)
            if softmax is not None:
                self._softmax_states(m, softmax, elements, cols, src, dst, param,
                                     src_out=checks["softmax_src_out"], param_out=checks["softmax_param_out"],
                                     dst_out=checks["dst_out"])
        return m

    # -- word streaming (GELU, ADD) ---------------------------------------------------------

    def _beats(self) -> tuple[int, int]:
        """(elements per beat, beats per 16-byte word): a beat is ``vector_lanes`` bytes, at most
        a word (the buffers' width bounds a cycle's bytes)."""
        beat = min(self.config.vector_lanes, ADDR_UNIT)
        return beat, ADDR_UNIT // beat

    def _word_walk(self, m: Module, elements):
        """Counters that walk ``elements`` int8 elements beat by beat: ``word`` (16-byte word
        index), ``part`` (beat within the word), ``remaining`` (elements from this beat on).
        Returns (reset statements, step statements, word, part, lane mask, last beat, last
        beat of its word, byte enables of the beat within its word)."""
        beat, parts = self._beats()
        word = Signal(21, name="walk_word")
        part = Signal(range(max(parts, 2)), name="walk_part")
        remaining = Signal(26, name="walk_remaining")
        mask = Cat(remaining > lane for lane in range(beat))
        last = remaining <= beat
        word_end = last | (part == parts - 1)
        enables = (mask << (part * beat))[:ADDR_UNIT] if parts > 1 else mask
        reset = [word.eq(0), part.eq(0), remaining.eq(elements)]
        step = [remaining.eq(remaining - beat)]
        if parts > 1:
            step.append(part.eq(Mux(part == parts - 1, 0, part + 1)))
        step.append(word.eq(Mux(part == parts - 1, word + 1, word)))
        return reset, step, word, part, mask, last, word_end, enables

    @staticmethod
    def _beat_of(word_bits, part, beat: int) -> Value:
        """Beat ``part`` (``beat`` bytes) of a 16-byte word."""
        return word_bits.word_select(part, beat * 8) if beat < ADDR_UNIT else word_bits

    # -- GELU ----------------------------------------------------------------------------------

    def _gelu_states(self, m: Module, gelu, elements, src, dst, *, checks) -> None:
        """GELU (``nonlinear.gelu``), a beat of ``min(vector_lanes, 16)`` bytes per cycle through
        ``Gelu``: word ``w`` of the source is read in the cycle the last beat of word ``w - 1``
        goes in (its first beat takes the word as it arrives, the others a copy), and each beat's
        outputs are written to VECTOR with byte enables the cycle ``Gelu`` answers (one table
        read). ``src`` and ``dst`` are 16-byte aligned (unit addresses); lanes past
        ``elements`` in the last beat are not written. A word is written after it was read, so
        ``dst`` may equal ``src`` (in place) or lie below it; a destination that overlaps the
        source at a higher address would read bytes already written (the golden machine reads
        the whole source first; the compiler never emits that)."""
        beat, parts = self._beats()
        reset, step, word, part, mask, last, word_end, enables = self._word_walk(m, elements)
        held = Signal(_UNIT_BITS)
        current = Mux(part == 0, self.vector_read_data, held) if parts > 1 else self.vector_read_data
        feeding = Signal()
        # The beat in ``Gelu`` (one stage, always drained): where its outputs go.
        out_addr = Signal(_ADDR_BITS)
        out_enables = Signal(ADDR_UNIT)
        out_last = Signal()
        m.d.comb += gelu.i.payload.eq(self._beat_of(current, part, beat))

        def read(word_index):
            m.d.comb += [self.vector_read.eq(1), self.vector_read_addr.eq((src + word_index) * ADDR_UNIT)]

        with m.State("GELU_CHECK"):
            m.d.sync += [*reset, feeding.eq(1)]
            self._start_or_retire(m, checks, elements=elements, first_state="GELU_STREAM", on_start=lambda: read(0))
        with m.State("GELU_STREAM"):
            m.d.comb += [gelu.i.valid.eq(feeding), gelu.o.ready.eq(1)]
            with m.If(feeding):   # ``Gelu`` is always ready: its output is always taken
                m.d.sync += [*step, out_addr.eq((dst + word) * ADDR_UNIT), out_enables.eq(enables),
                             out_last.eq(last)]
                if parts > 1:
                    with m.If(part == 0):
                        m.d.sync += held.eq(self.vector_read_data)
                with m.If(last):
                    m.d.sync += feeding.eq(0)
                with m.Elif(word_end):
                    read(word + 1)
            with m.If(gelu.o.valid):
                m.d.comb += [self.vector_write.eq(out_enables), self.vector_write_addr.eq(out_addr),
                             self.vector_write_data.eq(Value.cast(gelu.o.payload)[:beat * 8].replicate(parts))]
                with m.If(out_last):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

    # -- ADD -----------------------------------------------------------------------------------

    def _add_states(self, m: Module, elements, src, src2, dst, param, *, src_checks, dst_out) -> None:
        """ADD (``nonlinear.add``), a beat of ``min(vector_lanes, 16)`` elements per cycle.

        The checks run in the golden machine's order: sources, parameter block (ADDRESS_OUT_OF_RANGE),
        the shift the rounding rule accepts (INVALID_OPERAND), destination. Per 16-byte word:
        ADD_READ_B reads ``src2``'s word (``src``'s arrived: kept), then ADD_BEATS computes and
        writes a beat per cycle (byte enables); the first beat takes ``src2``'s word as it
        arrives. The next word of ``src`` is read in the cycle of the last beat, so a word
        costs ``1 + beats`` cycles (the single VECTOR read port takes two reads per word).
        A word is written after both its source words were read, so ``dst`` may equal ``src``
        or ``src2`` (in place) or lie below them; not overlap them at a higher address."""
        from vitaccel.hw.nonlinear.arith import SHIFT_BITS, round_shift, saturate
        from vitaccel.hw.spec.numerics import MAX_SHIFT

        beat, parts = self._beats()
        reset, step, word, part, mask, last, word_end, enables = self._word_walk(m, elements)
        # The block's three words (isa.pack_add_params order) share one 16-byte ACC row.
        a_multiplier, b_multiplier, shift = Signal(32), Signal(32), Signal(32)
        held_a, held_b = Signal(_UNIT_BITS), Signal(_UNIT_BITS)
        b_word = Mux(part == 0, self.vector_read_data, held_b) if parts > 1 else self.vector_read_data
        a_beat = self._beat_of(held_a, part, beat)
        b_beat = self._beat_of(b_word, part, beat)
        results = []
        for lane in range(beat):
            a = a_beat.word_select(lane, 8).as_signed()
            b = b_beat.word_select(lane, 8).as_signed()
            total = a * a_multiplier + b * b_multiplier
            results.append(saturate(round_shift(total, shift[:SHIFT_BITS]), 8)[:8])
        outputs = Cat(*results)

        def read(base, word_index):
            m.d.comb += [self.vector_read.eq(1), self.vector_read_addr.eq((base + word_index) * ADDR_UNIT)]

        with m.State("ADD_CHECK"):
            m.d.sync += reset
            self._checks(m, src_checks)
            with m.Else():
                m.next = "ADD_PARAMS"
        with m.State("ADD_PARAMS"):
            m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(param * ADDR_UNIT)]
            m.next = "ADD_PARAMS_TAKE"
        with m.State("ADD_PARAMS_TAKE"):   # the ACC row is only valid this cycle: keep it
            row = self.acc_read_data
            m.d.sync += [a_multiplier.eq(row[0:32]), b_multiplier.eq(row[32:64]), shift.eq(row[64:96])]
            m.next = "ADD_PARAMS_CHECK"
        with m.State("ADD_PARAMS_CHECK"):
            self._start_or_retire(m, [(shift > MAX_SHIFT, ErrorCode.INVALID_OPERAND),
                                      (dst_out, ErrorCode.ADDRESS_OUT_OF_RANGE)],
                                  elements=elements, first_state="ADD_READ_B", on_start=lambda: read(src, 0))
        with m.State("ADD_READ_B"):
            read(src2, word)
            m.d.sync += held_a.eq(self.vector_read_data)
            m.next = "ADD_BEATS"
        with m.State("ADD_BEATS"):
            m.d.comb += [self.vector_write.eq(enables), self.vector_write_addr.eq((dst + word) * ADDR_UNIT),
                         self.vector_write_data.eq(outputs.replicate(parts))]
            m.d.sync += step
            if parts > 1:
                with m.If(part == 0):
                    m.d.sync += held_b.eq(self.vector_read_data)
            with m.If(last):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
            with m.Elif(word_end):
                read(src, word + 1)
                m.next = "ADD_READ_B"

    # -- SOFTMAX -------------------------------------------------------------------------------

    def _softmax_states(self, m: Module, softmax, elements, cols, src, dst, param, *,
                        src_out, param_out, dst_out) -> None:
        """FSM states of SOFTMAX through the non-linear unit's ``Softmax``, one row at a time
        (:meth:`_row_stream_states`): gather the row's int32 scores from ACC (up to four per
        16-byte word read) into beats of ``vector_lanes``, then write the row's uint8
        probabilities to VECTOR (a word chunk per cycle).

        Checks in the golden machine's order: scores and parameter block out of ACC
        (ADDRESS_OUT_OF_RANGE); a shift above ``MAX_SHIFT`` (INVALID_OPERAND as in the golden
        kernel) and what the unit is not built for (INVALID_OPERAND, as the golden machine):
        table widths other than the config's, a multiplier of more than
        ``SOFTMAX_MULT_BITS`` bits, rows longer than ``max_tokens``; then the destination."""
        from vitaccel.hw.nonlinear.arith import SHIFT_BITS
        from vitaccel.hw.spec.nonlinear import SOFTMAX_MULT_BITS
        from vitaccel.hw.spec.numerics import MAX_SHIFT

        config, lanes = self.config, softmax.lanes
        multiplier, shift, exp_bits, recip_bits = (Signal(32, name=f"softmax_{n}") for n in
                                                    ("multiplier", "shift", "exp_bits", "recip_bits"))
        m.d.comb += [softmax.length.eq(cols), softmax.multiplier.eq(multiplier),
                     softmax.shift.eq(shift[:SHIFT_BITS])]
        m.d.comb += softmax.i.payload.mask.eq((1 << lanes) - 1)
        stream_reset = self._row_stream_states(m, "SOFTMAX", softmax, softmax.i.payload.scores, elements, cols,
                                               read=(self.acc_read, self.acc_read_addr),
                                               read_data=self.acc_read_data, element_bits=32, src=src, dst=dst,
                                               serial=Const(0))   # ACC into VECTOR: no overlap

        with m.State("SOFTMAX_CHECK"):
            m.d.sync += stream_reset
            self._checks(m, [(src_out | param_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
            with m.Else():
                m.next = "SOFTMAX_PARAMS"
        with m.State("SOFTMAX_PARAMS"):
            m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(param * ADDR_UNIT)]
            m.next = "SOFTMAX_PARAMS_TAKE"
        with m.State("SOFTMAX_PARAMS_TAKE"):   # isa.pack_softmax_params order, one ACC row
            row = self.acc_read_data
            m.d.sync += [multiplier.eq(row[0:32]), shift.eq(row[32:64]), exp_bits.eq(row[64:96]),
                         recip_bits.eq(row[96:128])]
            m.next = "SOFTMAX_PARAMS_CHECK"
        with m.State("SOFTMAX_PARAMS_CHECK"):
            unbuilt = ((exp_bits != config.exp_lut_bits) | (recip_bits != config.recip_lut_bits)
                       | (multiplier >= 1 << SOFTMAX_MULT_BITS) | (cols > config.max_tokens))
            self._start_or_retire(m, [((shift > MAX_SHIFT) | unbuilt, ErrorCode.INVALID_OPERAND),
                                      (dst_out, ErrorCode.ADDRESS_OUT_OF_RANGE)],
                                  elements=elements, first_state="SOFTMAX_STREAM")

    # -- LAYERNORM -----------------------------------------------------------------------------

    def _layernorm_states(self, m: Module, layernorm, elements, cols, src, dst, param, *,
                          header_out, block_out, src_out, dst_out, dst_ahead) -> None:
        """FSM states of LAYERNORM through the non-linear unit's ``LayerNorm``: read the header
        (``isa.pack_layernorm_params``), copy gamma / beta into the unit (three ACC words per
        channel), then stream the rows (:meth:`_row_stream_states`).

        Checks in the golden machine's order: header out of ACC (ADDRESS_OUT_OF_RANGE); header
        channels != ``cols`` (INVALID_OPERAND); whole block out of ACC, source out of VECTOR
        (ADDRESS_OUT_OF_RANGE); ``out_shift`` above ``MAX_SHIFT`` (INVALID_OPERAND, as the golden
        kernel) and what the unit is not built for (INVALID_OPERAND, as the golden machine:
        another ``rsqrt_lut_bits``, more than ``LAYERNORM_MAX_CHANNELS`` channels); the
        destination (ADDRESS_OUT_OF_RANGE); then, while copying, a gamma beyond
        ``LAYERNORM_GAMMA_BITS`` or a beta beyond ``LAYERNORM_BETA_BITS`` bits (INVALID_OPERAND,
        as the golden machine) before any output is written."""
        from vitaccel.hw.nonlinear.arith import SHIFT_BITS
        from vitaccel.hw.spec.nonlinear import LAYERNORM_BETA_BITS, LAYERNORM_GAMMA_BITS
        from vitaccel.hw.spec.numerics import MAX_SHIFT

        config, lanes = self.config, layernorm.lanes
        acc_data = self.acc_read_data
        channels, eps_term, out_shift, rsqrt_bits = (Signal(32, name=f"layernorm_{n}") for n in
                                                     ("channels", "eps_term", "out_shift", "rsqrt_bits"))
        m.d.comb += [layernorm.length.eq(cols), layernorm.eps_term.eq(eps_term),
                     layernorm.out_shift.eq(out_shift[:SHIFT_BITS])]
        stream_reset = self._row_stream_states(m, "LAYERNORM", layernorm, layernorm.i.payload, elements, cols,
                                               read=(self.vector_read, self.vector_read_addr),
                                               read_data=self.vector_read_data, element_bits=8, src=src, dst=dst,
                                               serial=dst_ahead)
        # Parameter copy: channel, word (0 gamma, 1 beta low, 2 beta high), lane, unit address.
        write = layernorm.param_write
        channel = Signal(13)
        part = Signal(range(3))
        lane = Signal(range(lanes))
        beta_low = Signal(32)
        out_of_range = Signal()
        word_lane = Signal(2)
        part_offset = Mux(part == 0, 0, Mux(part == 1, cols, 2 * cols))
        word_addr = Signal(_ADDR_BITS)
        m.d.comb += word_addr.eq(param * ADDR_UNIT + 4 * (isa.LAYERNORM_HEADER_WORDS + part_offset + channel))
        word = acc_data.word_select(word_lane, 32).as_signed()
        beta_high_limit = 1 << (LAYERNORM_BETA_BITS - 33)   # beta's high word is its top bits, signed

        with m.State("LAYERNORM_CHECK"):
            m.d.sync += [*stream_reset, channel.eq(0), part.eq(0), lane.eq(0), write.addr.eq(0),
                         out_of_range.eq(0)]
            self._checks(m, [(header_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
            with m.Else():
                m.next = "LAYERNORM_HEADER"
        with m.State("LAYERNORM_HEADER"):
            m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(param * ADDR_UNIT)]
            m.next = "LAYERNORM_HEADER_TAKE"
        with m.State("LAYERNORM_HEADER_TAKE"):
            m.d.sync += [channels.eq(acc_data[0:32]), eps_term.eq(acc_data[32:64]),
                         out_shift.eq(acc_data[64:96]), rsqrt_bits.eq(acc_data[96:128])]
            m.next = "LAYERNORM_HEADER_CHECK"
        with m.State("LAYERNORM_HEADER_CHECK"):
            unbuilt = (rsqrt_bits != config.rsqrt_lut_bits) | (cols > layernorm.max_channels)
            self._start_or_retire(m, [(channels != cols, ErrorCode.INVALID_OPERAND),
                                      (block_out | src_out, ErrorCode.ADDRESS_OUT_OF_RANGE),
                                      ((out_shift > MAX_SHIFT) | unbuilt, ErrorCode.INVALID_OPERAND),
                                      (dst_out, ErrorCode.ADDRESS_OUT_OF_RANGE)],
                                  elements=elements, first_state="LAYERNORM_PARAM_READ")
        with m.State("LAYERNORM_PARAM_READ"):
            m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(word_addr)]
            m.d.sync += word_lane.eq(word_addr[2:_LANE_BITS])
            m.next = "LAYERNORM_PARAM_TAKE"
        with m.State("LAYERNORM_PARAM_TAKE"):   # the ACC word is only valid this cycle
            m.next = "LAYERNORM_PARAM_READ"
            with m.Switch(part):
                with m.Case(0):
                    m.d.sync += [write.gamma[lane].eq(word), part.eq(1)]
                    with m.If((word >= 1 << (LAYERNORM_GAMMA_BITS - 1)) | (word < -(1 << (LAYERNORM_GAMMA_BITS - 1)))):
                        m.d.sync += out_of_range.eq(1)
                with m.Case(1):
                    m.d.sync += [beta_low.eq(word), part.eq(2)]
                with m.Case(2):
                    m.d.sync += [write.beta[lane].eq(Cat(beta_low, word)), part.eq(0), channel.eq(channel + 1),
                                 lane.eq(lane + 1)]
                    with m.If((word >= beta_high_limit) | (word < -beta_high_limit)):
                        m.d.sync += out_of_range.eq(1)
                    with m.If((lane == lanes - 1) | (channel == cols - 1)):
                        m.next = "LAYERNORM_PARAM_WRITE"
        with m.State("LAYERNORM_PARAM_WRITE"):
            m.d.comb += write.en.eq(1)
            m.d.sync += [write.addr.eq(write.addr + 1), lane.eq(0)]
            with m.If(channel != cols):
                m.next = "LAYERNORM_PARAM_READ"
            with m.Elif(out_of_range):
                m.d.comb += self._fail(ErrorCode.INVALID_OPERAND)
                m.next = "IDLE"
            with m.Else():
                m.next = "LAYERNORM_STREAM"

    # -- row stream (SOFTMAX, LAYERNORM) -------------------------------------------------------

    def _row_stream_states(self, m: Module, prefix: str, unit, payload, elements: Signal, cols, *, read,
                           read_data, element_bits: int, src, dst, serial) -> list:
        """FSM state ``<prefix>_STREAM`` (the entry): stream ``elements`` (rows of ``cols``)
        through a row unit (``i`` / ``o`` streams of ``unit.lanes`` lanes) with a *sender* and a
        *receiver* that work at once, so the unit holds several rows (its row slots) and a row's
        reads, the unit's pipelines and an earlier row's writes overlap.

        Sender: each cycle it may, it reads the 16-byte word (of the buffer ``read`` /
        ``read_data`` belong to) holding the next element, ``element_bits`` wide, dense from
        unit address ``src``, and takes the chunk of it that fits: what is left of the word, of
        the beat and of the row; the chunk lands in the beat the cycle
        after. A beat is offered to the unit (``payload``) the cycle after its last chunk was
        read, while the next beat's first word is read; the sender waits only while the unit
        does not take an offered beat. Receiver: it takes an output beat and writes the chunk of
        it that fits in the current 16-byte VECTOR word (byte enables) at ``dst`` each cycle,
        taking the next beat in the cycle of a beat's last write. Rows need no alignment.

        ``serial`` (registered): the destination starts inside the source after its start, so
        a row's output may land on a later row's input; the sender then reads a row only once
        the previous row is written, which keeps the ISA's row-by-row meaning. Returns the
        statements that reset the stream."""
        lanes = unit.lanes
        read_enable, read_addr = read
        element_bytes = element_bits // 8
        log_bytes = element_bytes.bit_length() - 1
        per_word = ADDR_UNIT // element_bytes
        name = prefix.lower()
        lane_bits = max(1, (lanes - 1).bit_length())
        chunk_bits = max(lanes, per_word, ADDR_UNIT).bit_length()
        # -- sender -------------------------------------------------------------------------
        row_addr = Signal(_ADDR_BITS, name=f"{name}_row_addr")      # byte address of the row's first element
        col = Signal(13, name=f"{name}_col")
        lane = Signal(range(lanes + 1), name=f"{name}_lane")
        in_index = Signal(25, name=f"{name}_in_index")               # elements read
        reads_done = Signal(name=f"{name}_reads_done")
        offered = Signal(name=f"{name}_offered")                     # a whole beat is offered to the unit
        row_wait = Signal(name=f"{name}_row_wait")                   # serial: the row read is not yet written
        address = Signal(_ADDR_BITS, name=f"{name}_element_addr")
        m.d.comb += address.eq(row_addr + (col << log_bytes))
        offset = address[log_bytes:_LANE_BITS] if per_word > 1 else Value.cast(0)
        in_word = per_word - offset
        in_beat = lanes - lane
        in_row = cols - col
        first = Mux(in_word < in_beat, in_word, in_beat)
        count = Signal(chunk_bits, name=f"{name}_chunk")
        m.d.comb += count.eq(Mux(in_row < first, in_row, first))
        row_read = col + count == cols
        beat_full = (lane + count == lanes) | row_read
        # The chunk in flight: its element offset in the word, first beat lane and count.
        pending = Signal(name=f"{name}_pending")
        pending_offset = Signal(max(1, _LANE_BITS - log_bytes), name=f"{name}_pending_offset")
        pending_lane = Signal(lane_bits, name=f"{name}_pending_lane")
        pending_count = Signal(chunk_bits, name=f"{name}_pending_count")
        element_shape = signed(element_bits)
        beat = Signal(data.ArrayLayout(element_shape, lanes), name=f"{name}_beat")
        merged = Signal(data.ArrayLayout(element_shape, lanes), name=f"{name}_merged")
        for j in range(lanes):
            source = (pending_offset + j - pending_lane)[:max(1, _LANE_BITS - log_bytes)] if per_word > 1 else 0
            take = pending & _at_least(j, pending_lane) & (j < pending_lane + pending_count)
            m.d.comb += merged[j].eq(Mux(take, read_data.word_select(source, element_bits) if per_word > 1
                                         else read_data[:element_bits], beat[j]))
        m.d.sync += beat.eq(merged)
        m.d.comb += payload.eq(merged)
        # -- receiver -----------------------------------------------------------------------
        outputs = Signal(unit.o.payload.shape(), name=f"{name}_outputs")
        holding = Signal(name=f"{name}_holding")                     # ``outputs`` has bytes to write
        out_row_addr = Signal(_ADDR_BITS, name=f"{name}_out_row_addr")
        out_col = Signal(13, name=f"{name}_out_col")
        out_lane = Signal(range(lanes + 1), name=f"{name}_out_lane")
        out_index = Signal(25, name=f"{name}_out_index")
        out_address = Signal(_ADDR_BITS, name=f"{name}_out_addr")
        m.d.comb += out_address.eq(out_row_addr + out_col)
        out_offset = out_address[:_LANE_BITS]
        out_first = Mux(ADDR_UNIT - out_offset < lanes - out_lane, ADDR_UNIT - out_offset, lanes - out_lane)
        out_count = Signal(chunk_bits, name=f"{name}_out_chunk")
        m.d.comb += out_count.eq(Mux(cols - out_col < out_first, cols - out_col, out_first))
        out_bytes = Value.cast(outputs)
        word_bytes = []
        enables = []
        for k in range(ADDR_UNIT):
            source = (k + out_lane - out_offset)[:lane_bits]
            word_bytes.append(out_bytes.word_select(source, 8) if lanes > 1 else out_bytes[:8])
            enables.append(_at_least(k, out_offset) & (k < out_offset + out_count))
        row_done = out_col + out_count == cols
        beat_done = row_done | (out_lane + out_count == lanes)
        with m.State(f"{prefix}_STREAM"):
            # send (lanes past the row's end are masked by the unit)
            can_read = ~reads_done & (~offered | unit.i.ready) & ~row_wait
            m.d.comb += unit.i.valid.eq(offered)
            m.d.sync += pending.eq(0)
            with m.If(unit.i.ready):
                m.d.sync += offered.eq(0)
            with m.If(can_read):
                m.d.comb += [read_enable.eq(1), read_addr.eq(address)]
                m.d.sync += [pending.eq(1), pending_offset.eq(offset), pending_lane.eq(lane),
                             pending_count.eq(count), in_index.eq(in_index + count),
                             lane.eq(Mux(beat_full, 0, lane + count)), offered.eq(beat_full),
                             reads_done.eq(in_index + count == elements)]
                with m.If(row_read):
                    m.d.sync += [col.eq(0), row_addr.eq(row_addr + (cols << log_bytes)), row_wait.eq(serial)]
                with m.Else():
                    m.d.sync += col.eq(col + count)
            # receive and write
            m.d.comb += unit.o.ready.eq(~holding | beat_done)
            with m.If(holding):
                m.d.comb += [self.vector_write.eq(Cat(*enables)), self.vector_write_addr.eq(out_address),
                             self.vector_write_data.eq(Cat(*word_bytes))]
                m.d.sync += [out_col.eq(out_col + out_count), out_lane.eq(out_lane + out_count),
                             out_index.eq(out_index + out_count)]
                with m.If(beat_done):
                    m.d.sync += holding.eq(0)
                with m.If(row_done):
                    m.d.sync += [out_col.eq(0), out_row_addr.eq(out_row_addr + cols), row_wait.eq(0)]
                    with m.If(out_index + out_count == elements):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
            with m.If(unit.o.valid & unit.o.ready):
                m.d.sync += [outputs.eq(unit.o.payload), out_lane.eq(0), holding.eq(1)]
        return [row_addr.eq(src * ADDR_UNIT), out_row_addr.eq(dst * ADDR_UNIT), in_index.eq(0), out_index.eq(0),
                col.eq(0), out_col.eq(0), lane.eq(0), pending.eq(0), reads_done.eq(0), offered.eq(0),
                row_wait.eq(0), holding.eq(0)]
