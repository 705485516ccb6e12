"""docs/numerics.md is generated: it must equal what the numerics report renders now."""

from vitaccel.sim.numerics_report import DOC_PATH, render


def test_numerics_doc_is_up_to_date():
    assert DOC_PATH.exists(), "docs/numerics.md is missing: run python -m vitaccel.sim.numerics_report --write"
    assert DOC_PATH.read_text() == render(), (
        "docs/numerics.md is out of date: run python -m vitaccel.sim.numerics_report --write")


def test_render_is_deterministic():
    assert render() == render()
