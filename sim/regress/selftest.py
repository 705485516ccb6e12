"""The self-test regression case: a multiply-accumulate unit sized by the config.

It checks the regression plumbing end to end (emit Verilog, build once per design, run a
cocotb testbench with a seed, compare bit for bit against a golden kernel on the host,
report the first mismatch) on a design small enough to build in seconds. Its operand and
accumulator widths come from the config, so every config gets its own build, exactly like
the real units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.numerics import int_range
from vitaccel.sim.runner import emit_verilog, run_testbench

__all__ = ["MacUnit", "mac_reference", "make_stimulus", "run_case", "first_mismatch"]

TOPLEVEL = "regress_selftest_mac"
TESTBENCH = "vitaccel.sim.regress.tb_mac"


class MacUnit(wiring.Component):
    """``acc <= clear ? 0 : acc + a * b`` every cycle.

    Parameters
    ----------
    operand_width : int
        Signed width of ``a`` and ``b``.
    acc_width : int
        Signed width of ``acc``.
    """

    def __init__(self, *, operand_width: int, acc_width: int) -> None:
        if operand_width < 2 or acc_width < 2 * operand_width:
            raise ValueError(f"MacUnit needs operand_width >= 2 and acc_width >= 2 * operand_width, "
                             f"got operand_width={operand_width}, acc_width={acc_width}")
        self.operand_width = operand_width
        self.acc_width = acc_width
        super().__init__({
            "a": In(signed(operand_width)),
            "b": In(signed(operand_width)),
            "clear": In(1),
            "acc": Out(signed(acc_width)),
        })

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Else():
            m.d.sync += self.acc.eq(self.acc + self.a * self.b)
        return m


def mac_reference(a: np.ndarray, b: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """Golden kernel: the accumulator value after each step (``clear`` resets it to 0)."""
    out = np.empty(len(a), dtype=np.int64)
    acc = 0
    for step, (x, y, c) in enumerate(zip(a.tolist(), b.tolist(), clear.tolist())):
        acc = 0 if c else acc + x * y
        out[step] = acc
    return out


def make_stimulus(config: AccelConfig, *, seed: int, steps: int) -> dict[str, np.ndarray]:
    """Random operands for ``steps`` cycles, a quarter of them corner values (min, max, 0, -1)."""
    rng = np.random.default_rng(seed)
    low, high = int_range(config.operand_width)
    corners = np.array([low, high, 0, -1], dtype=np.int64)
    stimulus = {}
    for port in ("a", "b"):
        values = rng.integers(low, high + 1, size=steps, dtype=np.int64)
        use_corner = rng.random(steps) < 0.25
        values[use_corner] = rng.choice(corners, size=int(use_corner.sum()))
        stimulus[port] = values
    stimulus["clear"] = (rng.random(steps) < 1 / 16).astype(np.int64)
    return stimulus


def first_mismatch(expected: np.ndarray, got: np.ndarray) -> dict[str, Any] | None:
    """``{"position", "expected", "got"}`` of the first differing element, or ``None``."""
    expected = np.asarray(expected)
    got = np.asarray(got)
    if expected.shape != got.shape:
        return {"position": "shape", "expected": list(expected.shape), "got": list(got.shape)}
    differ = np.argwhere(expected != got)
    if len(differ) == 0:
        return None
    index = tuple(int(i) for i in differ[0])
    return {"position": list(index), "expected": int(expected[index]), "got": int(got[index])}


def run_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", steps: int = 24,
             quick: bool = False) -> dict[str, Any]:
    """Run the MAC unit for ``steps`` random cycles and compare with :func:`mac_reference`.

    Returns
    -------
    dict
        ``passed``, ``cycles`` (clock cycles of the checked stream, counted in the
        testbench), ``mismatch`` (first difference or ``None``) and ``steps``.
    """
    if not 1 <= steps <= config.max_k:
        # Beyond max_k the accumulator may overflow acc_width, which the config rules out.
        raise ValueError(f"steps: must be in 1..max_k={config.max_k}, got {steps}")
    stimulus = make_stimulus(config, seed=seed, steps=steps)
    expected = mac_reference(stimulus["a"], stimulus["b"], stimulus["clear"])
    unit = MacUnit(operand_width=config.operand_width, acc_width=config.acc_width)
    result = run_testbench(
        verilog=emit_verilog(unit, TOPLEVEL), toplevel=TOPLEVEL, test_module=TESTBENCH,
        simulator=simulator, seed=seed,
        params={port: values.tolist() for port, values in stimulus.items()})
    got = np.asarray(result.output.get("acc", []), dtype=np.int64)
    mismatch = first_mismatch(expected, got)
    return {"passed": mismatch is None, "cycles": int(result.output.get("cycles", 0)),
            "mismatch": mismatch, "steps": steps}
