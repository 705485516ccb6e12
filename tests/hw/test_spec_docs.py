"""docs/isa.md is generated from hw/spec: fail when it is stale."""

from vitaccel.hw.spec import isa, regmap
from vitaccel.hw.spec.docs import ISA_MD_PATH, render_isa_md


def test_isa_md_is_up_to_date():
    assert ISA_MD_PATH.exists(), "docs/isa.md missing: run python -m vitaccel.hw.spec.docs --write"
    assert ISA_MD_PATH.read_text() == render_isa_md(), \
        "docs/isa.md is out of date: run python -m vitaccel.hw.spec.docs --write"


def test_isa_md_lists_every_opcode_field_and_register():
    text = render_isa_md()
    for op in isa.Opcode:
        assert f"### {op.name} (opcode {op.value}" in text
        for name, _ in isa.LAYOUTS[op]:
            assert f"| {name} |" in text
    for reg in regmap.REGISTERS:
        assert f"| {reg.name} |" in text
    for code in regmap.ErrorCode:
        assert f"| {code.name} |" in text
