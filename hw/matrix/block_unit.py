"""One block unit: a ``b x b`` output block held stationary, ``b**3`` multiplies per cycle (with
an N:M non-zero selection stage in front of them when built for sparse weights), one or two
per DSP48E2 multiplier."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..spec.dsp_packing import LANE_SHIFT, MULT_A_BITS, engine_lanes
from ..spec.nm import check_nm, index_bits
from .layouts import block_control_layout
from .pipeline import adder_tree, register, tree_levels

__all__ = ["BlockUnit", "block_operand_layouts", "block_unit_latency"]


def block_operand_layouts(block_size: int, a_width: int, b_width: int,
                          a_span: int | None = None) -> tuple[data.ArrayLayout, data.ArrayLayout]:
    """Layouts of one A block (``[row][lane]``, ``b x a_span``, ``a_span = b`` by default) and
    B block (``[kk][col]``, ``b x b``)."""
    a = data.ArrayLayout(data.ArrayLayout(signed(a_width), a_span or block_size), block_size)
    b = data.ArrayLayout(data.ArrayLayout(signed(b_width), block_size), block_size)
    return a, b


class BlockUnit(wiring.Component):
    """Computes ``P += A_blk @ B_blk`` each valid cycle and forwards its operands.

    Tiles are delimited by ``last``: the accumulators are 0 after reset and after every
    ``last`` step, so each tile must end with one (the engine's always do; ``first`` marks
    the start for the forwarded control only).

    Inside the unit, row ``i`` of the A block and column ``j`` of the B block are broadcast to
    the ``b`` multipliers of output ``(i, j)`` (second broadcast level). The operands and the
    control leave through registers (``a_out`` east, ``b_out`` south): one systolic hop, so
    a grid of units has no long wires. On a ``last`` step the finished sums are copied into
    ``result`` (the accumulator buffer) while the next tile starts accumulating.

    The datapath is a pipeline of :attr:`latency` cycles (:func:`block_unit_latency`), one
    carry chain or one multiply per cycle so that it closes the ``zcu102`` clock
    (docs/timing.md): operand registers, products into registers, a registered adder tree,
    the accumulate. The control bits travel beside the data; ``tile_done`` is high in the
    cycle the accumulate stage takes a ``last`` step (``result`` holds the tile from the next
    cycle on). The systolic hop (``a_out``, ``b_out``, ``ctl_out``) stays one cycle.

    Built with ``nm = (N, M)``, the B block holds ``b`` compressed slots and ``meta_in``
    (forwarded south with B as ``meta_out``) their in-group indices; the A block spans
    ``b * M / N`` k's (``b / N`` groups of ``M``). The **selection stage** gives multiplier
    ``(i, j, kk)`` the activation ``a[i][g * M + meta[kk][j]]`` of its slot's group
    ``g = kk // N``: one M:1 multiplexer per multiplier, so every multiplier does useful
    work on every step. (Dense steps use the same path: the engine lays the dense A word out
    so that the index ``kk % N`` picks ``a[i][kk]``.)

    Parameters
    ----------
    block_size : int
        ``b``; ``b = 1`` is one output-stationary processing element.
    a_width, b_width : int
        Signed operand widths.
    acc_width : int
        Signed accumulator width.
    nm : tuple[int, int] or None
        ``(N, M)`` of the sparse weights, ``N`` dividing ``block_size``; None: dense only.
    packing : int
        Products per multiplier. With 2 (Xilinx WP486, docs/dsp_packing.md), rows ``2p``
        and ``2p + 1`` of an output column share each B operand: one 27x18 multiply of
        ``(a[2p+1] << 18) + a[2p]`` by ``b[kk][j]`` gives both products. The packed
        products of up to :attr:`PackedLanes.max_terms` k's are summed, then separated into
        the two rows' sums (the low-lane sum is the low 18 bits read as signed, the high
        lane the rest plus bit 17: the sign-borrow correction) and accumulated as usual. Needs 8-bit B,
        9-bit A holding int8 or uint8 values (the engine's operands), an even
        ``block_size``.
    """

    def __init__(self, *, block_size: int, a_width: int, b_width: int, acc_width: int,
                 nm: tuple[int, int] | None = None, packing: int = 1):
        for name, value in (("block_size", block_size), ("a_width", a_width), ("b_width", b_width),
                            ("acc_width", acc_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if acc_width < a_width + b_width:
            raise ValueError(f"acc_width={acc_width} cannot hold one {a_width}x{b_width}-bit product")
        a_span = block_size
        if nm is not None:
            check_nm(*nm)
            if block_size % nm[0]:
                raise ValueError(f"nm: N={nm[0]} must divide block_size={block_size}")
            a_span = block_size // nm[0] * nm[1]
        if packing not in (1, 2):
            raise ValueError(f"packing must be 1 or 2, got {packing!r}")
        if packing == 2 and (b_width != 8 or a_width != 9 or block_size % 2):
            raise ValueError(f"packing=2 needs a_width=9, b_width=8 and an even block_size, got "
                             f"{a_width}, {b_width}, {block_size}")
        if packing == 2:
            lanes = engine_lanes(b_width)
            half = 1 << (LANE_SHIFT - 1)
            # The separation reads the low field as signed: every low-lane sum must fit it.
            if not all(-half <= lanes.low_range(n)[0] and lanes.low_range(n)[1] < half
                       for n in range(1, lanes.max_terms + 1)):
                raise ValueError(f"low-lane sums of {lanes.max_terms} products do not fit {LANE_SHIFT} signed bits")
        self.block_size, self.nm, self.packing = block_size, nm, packing
        self.latency = block_unit_latency(block_size, packing)
        a_layout, b_layout = block_operand_layouts(block_size, a_width, b_width, a_span)
        result = data.ArrayLayout(data.ArrayLayout(signed(acc_width), block_size), block_size)
        ports = {
            "a_in": In(a_layout), "b_in": In(b_layout), "ctl_in": In(block_control_layout()),
            "a_out": Out(a_layout), "b_out": Out(b_layout), "ctl_out": Out(block_control_layout()),
            "result": Out(result), "tile_done": Out(1),
        }
        if nm is not None:
            meta = data.ArrayLayout(data.ArrayLayout(unsigned(index_bits(nm[1])), block_size), block_size)
            ports.update(meta_in=In(meta), meta_out=Out(meta))
        super().__init__(ports)

    def _nm_pick(self, m: Module, lane, j: int, kk: int, shape, name: str) -> Signal:
        """Selection stage: of the values ``lane(index)`` of slot ``kk``'s group, the one
        ``meta[kk][j]`` indexes."""
        n, group = self.nm
        first = kk // n * group
        selected = Signal(shape, name=name)
        candidates = Cat(*[lane(index) for index in range(first, first + group)])
        m.d.comb += selected.eq(candidates.word_select(self.meta_in[kk][j], Shape.cast(shape).width))
        return selected

    def _operand(self, m: Module, i: int, j: int, kk: int):
        """A operand of multiplier ``(i, j, kk)``: ``a[i][kk]``, or the selection stage's pick."""
        if self.nm is None:
            return self.a_in[i][kk]
        return self._nm_pick(m, lambda index: self.a_in[i][index], j, kk, self.a_in.shape().elem_shape.elem_shape,
                             f"sel_{i}_{j}_{kk}")

    def _packed_operand(self, m: Module, pair: int, j: int, kk: int):
        """Packed A operand of multiplier ``(pair, j, kk)``: ``(a_hi << 18) + a_lo`` of the A
        values :meth:`_operand` would give rows ``2 * pair + 1`` and ``2 * pair``.

        Each A lane is packed once per row pair and shared by all columns; with N:M the
        selection stage then picks among the packed lanes of the slot's group (both rows
        use the same index, so one multiplexer serves the pair)."""
        def lane(index: int):
            if (pair, index) not in self._packed:
                packed = Signal(signed(MULT_A_BITS), name=f"packed_{pair}_{index}")
                hi, lo = self.a_in[2 * pair + 1][index], self.a_in[2 * pair][index]
                m.d.comb += packed.eq((hi << LANE_SHIFT) + lo)
                self._packed[pair, index] = packed
            return self._packed[pair, index]

        if self.nm is None:
            return lane(kk)
        return self._nm_pick(m, lane, j, kk, signed(MULT_A_BITS), f"psel_{pair}_{j}_{kk}")

    def _products(self, m: Module, j: int, kk: int) -> list:
        """Registered products of multiplier column ``(j, kk)``, one per row (packing 1) or
        per row pair (packing 2): operand registers, then the multiply into a register."""
        b_operand = self._b_regs[kk][j]
        if self.packing == 1:
            rows = range(self.block_size)
            operand = lambda i: self._operand(m, i, j, kk)
        else:
            rows = range(self.block_size // 2)
            operand = lambda pair: self._packed_operand(m, pair, j, kk)
        products = []
        for row in rows:
            key = (row, kk) if self.nm is None else (row, j, kk)   # dense operands serve every column
            if key not in self._operand_regs:
                self._operand_regs[key] = register(m, operand(row), "op_" + "_".join(map(str, key)), keep=True)
            products.append(register(m, self._operand_regs[key] * b_operand, f"prod_{row}_{j}_{kk}", keep=True))
        return products

    def _dots(self, m: Module, j: int) -> list:
        """The ``b`` dot products ``sum_kk a[i][kk] * b[kk][j]`` of column ``j``, by row ``i``,
        :func:`block_unit_latency` ``- 1`` cycles after the operands."""
        b = self.block_size
        by_kk = [self._products(m, j, kk) for kk in range(b)]
        if self.packing == 1:
            return [adder_tree(m, [by_kk[kk][i] for kk in range(b)], f"dot_{i}_{j}") for i in range(b)]
        terms = engine_lanes(self.b_in.shape().elem_shape.elem_shape.width).max_terms
        group_levels = tree_levels(min(b, terms))
        group_count = -(-b // terms)
        dots = [None] * b
        for pair in range(b // 2):
            low_sums, high_sums = [], []
            # Packed sums of at most max_terms products, each separated exactly (see spec):
            # the low-lane sum fits 18 signed bits, so it is the field read as signed and the
            # high lane is the rest plus the field's sign (bit 17) -- docs/dsp_packing.md.
            for start in range(0, b, terms):
                packed_sum = adder_tree(m, [by_kk[kk][pair] for kk in range(start, min(b, start + terms))],
                                        f"psum_{pair}_{j}_{start}", levels=group_levels)
                low_sums.append(register(m, packed_sum[:LANE_SHIFT].as_signed(), f"low_{pair}_{j}_{start}"))
                high_sums.append(register(m, packed_sum[LANE_SHIFT:].as_signed() + packed_sum[LANE_SHIFT - 1],
                                          f"high_{pair}_{j}_{start}"))
            levels = tree_levels(group_count)
            dots[2 * pair] = adder_tree(m, low_sums, f"dot_{2 * pair}_{j}", levels=levels)
            dots[2 * pair + 1] = adder_tree(m, high_sums, f"dot_{2 * pair + 1}_{j}", levels=levels)
        return dots

    def elaborate(self, platform):
        m = Module()
        b = self.block_size
        self._packed, self._operand_regs = {}, {}
        m.d.sync += [self.a_out.eq(self.a_in), self.b_out.eq(self.b_in), self.ctl_out.eq(self.ctl_in)]
        if self.nm is not None:
            m.d.sync += self.meta_out.eq(self.meta_in)
        # B is registered beside the A operands (after packing / selection) it meets.
        self._b_regs = [[register(m, self.b_in[kk][j], f"b_{kk}_{j}", keep=True) for j in range(b)] for kk in range(b)]
        # The control bits travel beside the data to the accumulate stage (valid keeps its reset).
        ctl = self.ctl_in.as_value()
        for stage in range(self.latency - 1):
            previous = data.View(block_control_layout(), ctl)
            delayed = Signal(len(ctl), name=f"ctl_d{stage}")
            m.d.sync += delayed.eq(ctl)
            ctl = delayed
        ctl = data.View(block_control_layout(), ctl)
        m.d.comb += self.tile_done.eq(ctl.valid & ctl.last)
        # `clear` is `tile_done` from a register of its own (it drives the synchronous reset
        # of every accumulator bit), and 1 after a reset, which clears the accumulators too.
        clear = Signal(init=1)
        m.d.sync += clear.eq(previous.valid & previous.last)
        acc_shape = self.result.shape().elem_shape.elem_shape
        # A tile's last step clears the accumulators (a synchronous reset), so the next tile
        # starts from 0 without a `first` multiplexer in front of every accumulator's adder
        # (`first` would fan out to all of them inside the critical cycle).
        for j in range(b):
            for i, dot in enumerate(self._dots(m, j)):
                acc = Signal(acc_shape, name=f"acc_{i}_{j}", reset_less=True)
                total = Signal(acc_shape, name=f"sum_{i}_{j}")
                m.d.comb += total.eq(acc + dot)
                with m.If(self.tile_done):
                    m.d.sync += self.result[i][j].eq(total)
                with m.If(clear):
                    m.d.sync += acc.eq(0)
                with m.Elif(ctl.valid):
                    m.d.sync += acc.eq(total)
        return m


def block_unit_latency(block_size: int, packing: int = 1) -> int:
    """Cycles from a k-step's operands at a block unit's inputs to its sums in the
    accumulators (``result`` holds a finished tile one cycle later).

    Every carry chain and every multiply has a cycle of its own (docs/timing.md): the
    operand registers (after packing and the N:M selection), the multiply into a register,
    the adder tree over the block's ``b`` k's (``ceil(log2 b)`` levels), with packing 2 the
    separation of each packed group of at most ``max_terms`` k's and the tree over the
    groups, then the accumulate.
    """
    if packing == 1:
        return 2 + tree_levels(block_size) + 1
    terms = engine_lanes(8).max_terms
    return 2 + tree_levels(min(block_size, terms)) + 1 + tree_levels(-(-block_size // terms)) + 1
