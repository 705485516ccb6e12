"""Host-side AXI cases: the DMA and the AXI4-Lite register file under cocotb.

The pure helpers at the top (:func:`random_transfers`, :func:`gather`, :func:`pack_words`,
:func:`scatter`) are the reference model of a 2-D transfer; the Amaranth-simulator tests and
the cocotb testbench (``vitaccel.sim.cocotb.tb_axi``) both compare against them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Transfer", "random_transfers", "gather", "pack_words", "scatter", "dma_top",
           "lite_top", "run_dma_case", "run_dma_throughput", "run_lite_case", "run_standin_case",
           "DMA_TOP",
           "LITE_TOP"]

DMA_TOP = "axi_dma_top"
LITE_TOP = "axi_lite_top"


@dataclass(frozen=True)
class Transfer:
    """One 2-D transfer: ``rows`` rows of ``row_bytes`` bytes, ``stride`` apart from ``addr``."""

    addr: int
    rows: int
    row_bytes: int
    stride: int

    @property
    def total_bytes(self) -> int:
        return self.rows * self.row_bytes

    def row_addresses(self) -> list[int]:
        return [self.addr + r * self.stride for r in range(self.rows)]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def random_transfers(rng: random.Random, *, count: int, region: tuple[int, int],
                     max_row_bytes: int, max_rows: int) -> list[Transfer]:
    """Random transfers inside ``region = (base, size)``, always including the edge cases:
    a single byte, an unaligned row crossing a 4 KiB boundary, a long aligned row."""
    base, size = region
    fixed = [
        Transfer(base + 4093, 1, 1, 0),                               # one byte
        Transfer(base + 4096 - 5, 2, min(max_row_bytes, 37), 4096),   # crosses 4 KiB, unaligned
        Transfer(base, 1, max_row_bytes, max_row_bytes),             # long, aligned
    ]
    out = [t for t in fixed if t.addr + (t.rows - 1) * t.stride + t.row_bytes <= base + size]
    while len(out) < count:
        rows = rng.randint(1, max_rows)
        row_bytes = rng.randint(1, max_row_bytes)
        stride = row_bytes + rng.randint(0, 300)
        span = (rows - 1) * stride + row_bytes
        if span > size:
            continue
        out.append(Transfer(base + rng.randint(0, size - span), rows, row_bytes, stride))
    rng.shuffle(out)
    return out[:max(count, len(fixed))]


def gather(memory: bytes | bytearray, transfer: Transfer, *, offset: int = 0) -> bytes:
    """The bytes a read of ``transfer`` delivers, packed (``memory[0]`` is address ``offset``)."""
    return b"".join(bytes(memory[a - offset:a - offset + transfer.row_bytes])
                    for a in transfer.row_addresses())


def pack_words(payload: bytes, lane_bytes: int) -> list[int]:
    """Little-endian words of ``lane_bytes`` bytes; the last one zero-padded."""
    padded = payload + bytes(-len(payload) % lane_bytes)
    return [int.from_bytes(padded[i:i + lane_bytes], "little") for i in range(0, len(padded), lane_bytes)]


def scatter(memory: bytearray, transfer: Transfer, payload: bytes, *, offset: int = 0) -> None:
    """Apply a write of ``payload`` (packed) over ``transfer`` to ``memory``."""
    if len(payload) != transfer.total_bytes:
        raise ValueError(f"payload has {len(payload)} bytes, the transfer moves {transfer.total_bytes}")
    for r, a in enumerate(transfer.row_addresses()):
        memory[a - offset:a - offset + transfer.row_bytes] = payload[r * transfer.row_bytes:(r + 1) * transfer.row_bytes]


# -- designs under test ------------------------------------------------------------------------

def dma_top(config, **dma_kwargs):
    """The DMA of ``config`` with its AXI port flattened to ``m_axi_*``."""
    from vitaccel.hw.axi.dma import AxiDma
    from vitaccel.hw.axi.signatures import FlatPortsWrapper

    return FlatPortsWrapper(AxiDma.from_config(config, **dma_kwargs), prefixes={"bus": "m_axi"})


def lite_top(register_map=None):
    """The register file of ``register_map`` (default: the accelerator's) as ``s_axi_control_*``."""
    from vitaccel.hw.axi.lite import AxiLiteRegisters, accelerator_register_map
    from vitaccel.hw.axi.signatures import FlatPortsWrapper

    regs = AxiLiteRegisters(register_map or accelerator_register_map())
    return FlatPortsWrapper(regs, prefixes={"bus": "s_axi_control"})


def _descriptor_fields(top) -> dict[str, list[int]]:
    """``{field: [bit offset, width]}`` of the DMA's descriptor port (packed in the Verilog)."""
    layout = top.inner.rd_desc.payload.shape()
    return {name: [field.offset, field.width] for name, field in layout}


def _run(top, name: str, testcase: str, *, simulator: str, params: dict[str, Any], seed: int):
    from vitaccel.sim.runner import emit_verilog, run_testbench

    return run_testbench(verilog=emit_verilog(top, name), toplevel=name,
                         test_module="vitaccel.sim.cocotb.tb_axi", testcase=testcase,
                         simulator=simulator, params=params, seed=seed, check=False)


def _summarise(result) -> dict[str, Any]:
    out = dict(result.output)
    out["passed"] = bool(result.passed and out.get("passed", False))
    out.setdefault("cycles", 0)
    out.setdefault("mismatch", None)
    if not result.passed:
        out["mismatch"] = out.get("mismatch") or {"message": "; ".join(c.message for c in result.cases if not c.passed)}
    return out


def run_dma_case(config, *, seed: int = 0, simulator: str = "verilator", quick: bool = False,
                 transfers: int | None = None, backpressure: float = 0.3,
                 max_latency: int = 8, max_row_bytes: int | None = None,
                 max_burst_beats: int = 256) -> dict[str, Any]:
    """Random 2-D reads and writes through the DMA against cocotbext-axi's ``AxiRam``.

    Returns ``{"passed", "cycles", "mismatch", "transfers", "bytes"}``; ``mismatch`` names the
    first transfer and byte that differ.
    """
    count = transfers if transfers is not None else (6 if quick else 24)
    params = {"seed": seed, "transfers": count, "backpressure": backpressure,
              "max_latency": max_latency, "max_row_bytes": max_row_bytes or (300 if quick else 2000),
              "max_rows": 3 if quick else 6, "lane_bytes": config.dma_data_width // 8}
    top = dma_top(config, max_burst_beats=max_burst_beats)
    params["descriptor_fields"] = _descriptor_fields(top)
    return _summarise(_run(top, DMA_TOP, "dma_random_transfers", simulator=simulator, params=params, seed=seed))


def run_dma_throughput(config, *, simulator: str = "verilator", direction: str = "read",
                       total_bytes: int = 16384, backpressure: float = 0.0,
                       seed: int = 0) -> dict[str, Any]:
    """Cycles of one long aligned transfer (``direction`` ``"read"`` or ``"write"``)."""
    if direction not in ("read", "write"):
        raise ValueError(f"direction: must be 'read' or 'write', got {direction!r}")
    params = {"seed": seed, "direction": direction, "total_bytes": total_bytes,
              "backpressure": backpressure, "lane_bytes": config.dma_data_width // 8}
    top = dma_top(config)
    params["descriptor_fields"] = _descriptor_fields(top)
    return _summarise(_run(top, DMA_TOP, "dma_throughput", simulator=simulator, params=params, seed=seed))


def run_lite_case(config=None, *, seed: int = 0, simulator: str = "verilator",
                  quick: bool = False) -> dict[str, Any]:
    """Every register of the accelerator map written and read through ``AxiLiteMaster``, with its
    access semantics (RW keeps, RO ignores writes, W1C clears, W1S pulses) checked."""
    from vitaccel.hw.axi.lite import accelerator_register_map

    regmap = accelerator_register_map()
    params = {"seed": seed, "rounds": 2 if quick else 6, "registers": regmap.to_dict()}
    return _summarise(_run(lite_top(regmap), LITE_TOP, "lite_register_semantics",
                           simulator=simulator, params=params, seed=seed))


def run_standin_case(config, *, seed: int = 0, simulator: str = "verilator", quick: bool = False,
                     backpressure: float = 0.3) -> dict[str, Any]:
    """Copies programmed through the register map of the stand-in top (DMA + register file
    with the Vivado port names), checked byte for byte, plus two error stops."""
    from vitaccel.hw.platform.axi_standin import STANDIN_TOP_NAME, standin_top

    params = {"seed": seed, "copies": 2 if quick else 8, "max_bytes": 600 if quick else 4000,
              "backpressure": backpressure, "max_latency": 4}
    return _summarise(_run(standin_top(config), STANDIN_TOP_NAME, "standin_copy",
                           simulator=simulator, params=params, seed=seed))
