"""Hardware decode rules of :mod:`vitaccel.hw.spec.isa`, derived from its layouts.

:class:`InstructionChecker` decides, combinationally, whether a 128-bit word is an
instruction :func:`isa.decode` accepts (known opcode, valid enum values, zero reserved
bits, only the dependency flags its queue has) and which queue executes it. Every offset,
width and enum value comes from ``isa.LAYOUTS``, so hardware and spec cannot drift.
"""

from __future__ import annotations

from amaranth import Module, Mux, Value
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.isa import Opcode, Queue
from vitaccel.hw.spec.regmap import ErrorCode

__all__ = ["field_slice", "first_failure", "InstructionChecker", "instruction_unit_members", "instruction_view"]

_LOAD_RESERVED_FLAGS = ("pop_prev", "push_prev")    # the load queue has no previous queue
_STORE_RESERVED_FLAGS = ("pop_next", "push_next")   # the store queue has no next queue


def field_slice(word: Value, opcode: Opcode, name: str) -> Value:
    """The raw bits of field ``name`` of ``opcode``'s layout in ``word``."""
    field = isa.LAYOUTS[opcode][name]
    return word[field.offset:field.offset + field.width]


def _is_member(bits: Value, enum_type: type) -> Value:
    """1 if ``bits`` encodes a member of ``enum_type``."""
    result = Value.cast(0)
    for member in enum_type:
        result = result | (bits == member.value)
    return result


class InstructionChecker(wiring.Component):
    """Combinational legality check and queue selection of one instruction word.

    Ports
    -----
    word : In(128)
        The instruction word.
    legal : Out(1)
        ``isa.decode(word)`` would succeed.
    queue : Out(Queue)
        The queue that executes the word (meaningful when ``legal``).
    opcode : Out(6)
        The raw opcode bits.
    """

    def __init__(self) -> None:
        super().__init__({
            "word": In(isa.INSTRUCTION_BITS),
            "legal": Out(1),
            "queue": Out(Queue),
            "opcode": Out(isa.LAYOUTS[Opcode.FINISH]["opcode"].width),
        })

    def elaborate(self, platform):
        m = Module()
        word = self.word
        m.d.comb += self.opcode.eq(field_slice(word, Opcode.FINISH, "opcode"))
        with m.Switch(self.opcode):
            for opcode in Opcode:
                layout = isa.LAYOUTS[opcode]
                ok = Value.cast(1)
                for name, field in layout:
                    bits = field_slice(word, opcode, name)
                    shape = field.shape
                    if name == "reserved":
                        ok = ok & (bits == 0)
                    elif name != "opcode" and isinstance(shape, type) and issubclass(shape, enum.Enum):
                        ok = ok & _is_member(bits, shape)
                fixed_queue = isa.QUEUE[opcode]
                queue = field_slice(word, opcode, "queue") if fixed_queue is None else fixed_queue.value
                flag = {name: field_slice(word, opcode, name) for name in
                        _LOAD_RESERVED_FLAGS + _STORE_RESERVED_FLAGS}
                ok = ok & ~((queue == Queue.LOAD.value) & (flag["pop_prev"] | flag["push_prev"]))
                ok = ok & ~((queue == Queue.STORE.value) & (flag["pop_next"] | flag["push_next"]))
                with m.Case(opcode.value):
                    m.d.comb += [self.legal.eq(ok), self.queue.eq(queue)]
            with m.Default():
                m.d.comb += [self.legal.eq(0), self.queue.eq(Queue.COMPUTE)]
        return m


def instruction_unit_members() -> dict[str, wiring.Member]:
    """The signature members every compute-queue controller shares with the core: the
    instruction ``word``, a one-cycle ``start``, and the one-cycle ``done`` / ``error`` pulses
    with ``error_code``. Controllers add their buffer ports to a copy of this."""
    return {"word": In(isa.INSTRUCTION_BITS), "start": In(1), "done": Out(1), "error": Out(1),
            "error_code": Out(ErrorCode)}


def first_failure(checks) -> tuple[Value, Value]:
    """The ordered "first failing check wins" chain of a controller state.

    ``checks`` is a sequence of ``(condition, ErrorCode)`` in the golden machine's check order.
    Returns ``(failed, code)``: ``failed`` is 1 when any condition holds and ``code`` is the
    code of the first one that holds (meaningful only with ``failed``)."""
    checks = list(checks)
    if not checks:
        raise ValueError("first_failure: no checks")
    failed = Value.cast(0)
    code = Value.cast(checks[-1][1])
    for condition, error in reversed(checks):
        failed = failed | condition
        code = Mux(condition, error, code)
    return failed, code


def instruction_view(word: Value) -> data.View:
    """``word`` seen through :data:`isa.INSTRUCTION`, every opcode's layout overlaid:
    ``instruction_view(word).gelu.rows`` is GELU's ``rows`` field."""
    return data.View(isa.INSTRUCTION, word)
