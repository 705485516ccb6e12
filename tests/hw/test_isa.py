"""The ISA: every opcode round-trips through encode/decode; bad words are rejected."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from vitaccel.hw.spec import isa, regmap
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import IllegalInstruction, Instruction, Opcode, Queue

DEP_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


def user_fields(op):
    return [(name, field) for name, field in isa.LAYOUTS[op] if name not in ("opcode", "reserved")]


@st.composite
def instructions(draw, op=None):
    op = draw(st.sampled_from(list(Opcode))) if op is None else op
    values = {}
    for name, field in user_fields(op):
        shape = field.shape
        if isinstance(shape, type) and issubclass(shape, isa.enum.Enum):
            values[name] = draw(st.sampled_from(list(shape)))
        else:
            values[name] = draw(st.integers(0, (1 << field.width) - 1))
    queue = values["queue"] if op is Opcode.SYNC else isa.QUEUE[op]
    if queue is Queue.LOAD:
        values["pop_prev"] = values["push_prev"] = 0
    if queue is Queue.STORE:
        values["pop_next"] = values["push_next"] = 0
    return Instruction(op, **values)


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_every_opcode(op, data):
    instr = data.draw(instructions(op))
    word = isa.encode(instr)
    assert 0 <= word < 1 << isa.INSTRUCTION_BITS
    assert isa.decode(word) == instr
    # The fast encoder agrees with Amaranth's own layout encoding (what the hardware uses).
    const = isa.LAYOUTS[op].const({"opcode": op, **instr.fields})
    assert const.as_value().value == word


def test_every_layout_is_exactly_128_bits_with_shared_header():
    for op, layout in isa.LAYOUTS.items():
        assert layout.size == isa.INSTRUCTION_BITS
        header = [(name, f.offset, f.width) for name, f in layout][:5]
        assert header == [("opcode", 0, 6), ("pop_prev", 6, 1), ("pop_next", 7, 1),
                          ("push_prev", 8, 1), ("push_next", 9, 1)]
    assert isa.INSTRUCTION.size == isa.INSTRUCTION_BITS


@pytest.mark.parametrize("code", [0, 16, 63])
def test_illegal_opcode_raises(code):
    with pytest.raises(IllegalInstruction, match=f"illegal opcode {code}"):
        isa.decode(code | (1 << 100))


def test_reserved_bits_and_bad_enums_raise():
    word = isa.encode(Instruction(Opcode.FINISH))
    with pytest.raises(IllegalInstruction, match="reserved"):
        isa.decode(word | (1 << 127))
    load = isa.encode(Instruction(Opcode.LOAD, rows=1))
    buffer_offset = dict((n, f.offset) for n, f in isa.LAYOUTS[Opcode.LOAD])["buffer"]
    with pytest.raises(IllegalInstruction, match="Buffer"):
        isa.decode(load | (7 << buffer_offset))
    with pytest.raises(IllegalInstruction, match="does not fit"):
        Instruction(Opcode.GEMM, m=1 << 10)
    with pytest.raises(IllegalInstruction, match="no field"):
        Instruction(Opcode.GEMM, rows=1)


def test_queue_flags_reserved_per_queue():
    with pytest.raises(IllegalInstruction, match="load queue has no previous"):
        Instruction(Opcode.LOAD, pop_prev=1)
    with pytest.raises(IllegalInstruction, match="store queue has no next"):
        Instruction(Opcode.STORE, push_next=1)
    with pytest.raises(IllegalInstruction, match="load queue"):
        Instruction(Opcode.SYNC, queue=Queue.LOAD, push_prev=1)
    assert Instruction(Opcode.SYNC, queue=Queue.STORE, push_prev=1).queue is Queue.STORE
    assert Instruction(Opcode.GEMM).queue is Queue.COMPUTE


@settings(max_examples=30, deadline=None)
@given(instr=instructions())
def test_disassembly_mentions_every_field(instr):
    text = isa.disassemble([isa.encode(instr)])
    assert instr.opcode.name in text
    for name, value in instr.fields.items():
        if name in DEP_FLAGS:
            assert (name in text) == bool(value)
        else:
            shown = value.name if isinstance(value, isa.enum.Enum) else value
            assert f"{name}={shown}" in text


def test_disassembly_marks_illegal_words():
    lines = isa.disassemble([isa.encode(Instruction(Opcode.FINISH)), 0]).splitlines()
    assert "FINISH" in lines[0] and "ILLEGAL" in lines[1]


def test_describe_is_json_and_lists_families():
    desc = json.loads(json.dumps(isa.describe()))
    assert desc["instruction_bits"] == 128
    families = set(desc["families"])
    assert {"load", "store", "gemm", "vector", "topk", "sparse_attention", "sync", "finish"} <= families
    assert {"SOFTMAX", "GELU", "LAYERNORM", "LUT_LOAD", "ADD", "REQUANT"} <= set(desc["families"]["vector"])
    for op in desc["opcodes"]:
        assert op["semantics"] and "for" in op["semantics"] or op["name"] in ("SYNC", "FINISH")
        offsets = sorted((f["offset"], f["width"]) for f in op["fields"])
        position = 0
        for offset, width in offsets:  # fields tile the word without gaps or overlaps
            assert offset == position
            position += width
        assert position == 128


def test_presets_fit_the_address_fields():
    for config in PRESETS.values():
        isa.check_config(config)
    with pytest.raises(isa_config_error()):
        isa.check_config(PRESETS["tiny"].replace(vector_kib=1024))


def isa_config_error():
    from vitaccel.hw.spec.config import ConfigError
    return ConfigError


def test_regmap_describe_has_required_registers():
    desc = json.loads(json.dumps(regmap.describe()))
    names = {r["name"] for r in desc["registers"]}
    for needed in ("CONTROL", "STATUS", "INTERRUPT_ENABLE", "INTERRUPT_STATUS", "PROGRAM_ADDR_LO",
                   "PROGRAM_LENGTH", "ERROR_CODE", "TOTAL_CYCLES_LO", "BUSY_CYCLES_COMPUTE_LO",
                   "DMA_READ_BYTES_LO", "STALL_CYCLES_LOAD_LO"):
        assert needed in names
    offsets = [r["offset"] for r in desc["registers"]]
    assert len(offsets) == len(set(offsets)) and all(o % 4 == 0 for o in offsets)
    assert {"ILLEGAL_INSTRUCTION", "ADDRESS_OUT_OF_RANGE", "WATCHDOG", "DEPENDENCY_DEADLOCK"} \
        <= set(desc["error_codes"])


def test_sparse_attn_predict_bit_takes_a_reserved_bit():
    fields = {name: (f.offset, f.width) for name, f in isa.LAYOUTS[Opcode.SPARSE_ATTN]}
    assert fields["predict"] == (fields["param_addr"][0] + fields["param_addr"][1], 1)
    # A word written before the field existed (predict bit zero) decodes as predict=0.
    old = isa.encode(Instruction(Opcode.SPARSE_ATTN, m=3, n=3, d=2, mask_addr=7))
    assert isa.decode(old).predict == 0
    word = isa.encode(Instruction(Opcode.SPARSE_ATTN, m=3, n=3, d=2, predict=1))
    assert word >> fields["predict"][0] & 1 == 1


def test_sparse_attn_params_round_trip_with_margin():
    from vitaccel.hw.spec.nonlinear import SoftmaxParams

    sm = SoftmaxParams(123, 9, 6, 8)
    words = isa.pack_sparse_attn_params(sm, 1 << 30, 37, margin=65535)
    assert words.size == isa.SPARSE_ATTN_PARAM_WORDS == isa.SOFTMAX_PARAM_WORDS + 3
    assert isa.unpack_sparse_attn_params(words) == {"softmax_params": sm, "out_multiplier": 1 << 30,
                                                     "out_shift": 37, "margin": 65535}
    assert isa.unpack_sparse_attn_params(isa.pack_sparse_attn_params(sm, 1, 2))["margin"] == 0
    assert isa.unpack_sparse_attn_params(isa.pack_sparse_attn_params(sm, 1, 2, (1 << 32) - 1))["margin"] == (1 << 32) - 1
    for bad in (-1, 1 << 32, True, 1.5):
        with pytest.raises(ValueError, match="margin"):
            isa.pack_sparse_attn_params(sm, 1, 2, bad)
