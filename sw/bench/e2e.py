"""End-to-end benchmark (``vitaccel bench e2e``): whole compiled models at batch 1.

One record per (model, method) with :data:`RECORD_KEYS`: the program is compiled for the
config (random zoo weights for DeiT-T/S: weights do not change cycles; digits-vit ships its
own), run on the performance model (:mod:`vitaccel.sim.perf`) and/or in RTL on the board-like
DDR (``zcu102-ps-ddr4-hp``), one image. ``cycles`` are RTL ``TOTAL_CYCLES`` where RTL ran
(``source: "rtl"``, ``bit_exact`` against the golden machine, every DDR byte), else the
performance model's (``source: "perf"``). ``perf_error`` is ``|perf - rtl| / rtl`` where both
ran. A record whose RTL run was not attempted says why in ``rtl_skipped`` (the extrapolated
simulation time from :data:`RTL_CYCLES_PER_SECOND`).

Like :mod:`vitaccel.sw.bench.pruning`, this benchmark compiles models, so it lives beside
the compiler (imported inside functions: torch loads only when a model is built).

:func:`layer_breakdown` attributes every cycle of a perf-model run to a layer and to what the
matrix engine was doing (:data:`ACTIVITIES`); :func:`plot` draws it and a roofline.
:func:`block_latency_table` is the SPViT-style table (latency of one encoder block against the
token keep ratio).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sw.models import blocks

__all__ = ["run", "plot", "layer_breakdown", "block_latency_table", "make_record", "RECORD_KEYS", "METHODS",
           "MODELS", "DEFAULT_METHODS", "TOKEN_PRUNING", "RTL_CYCLES_PER_SECOND", "RTL_BUDGET_SECONDS",
           "ACTIVITIES", "KEEP_RATIOS",
           "BACKENDS", "main"]

#: Keys of every record (``rtl_skipped`` is added where RTL was not attempted, ``error`` where
#: neither backend could run the program).
RECORD_KEYS = ("model", "method", "config", "clock_mhz", "cycles", "latency_ms", "macs", "engine_busy_cycles",
               "engine_utilization", "ddr_bytes", "source", "bit_exact", "perf_error", "ddr_model", "wall_seconds")
METHODS = ("dense", "tokens", "nm-2:4")
#: Methods run unless ``--methods`` says otherwise (``nm-2:4`` GEMMs stop this top with
#: INVALID_OPERAND: its record only says so).
DEFAULT_METHODS = ("dense", "tokens")
BACKENDS = ("rtl", "perf", "both")
#: Models per config preset. ``deit-tiny-block-197`` is one DeiT-T encoder block (dim 192,
#: 3 heads, MLP 768) on 196 patches + CLS (:func:`vitaccel.sw.models.blocks.deit_tiny_block_196`); ``deit-tiny-block-17``
#: (by name only) the same on 16 patches + CLS: a short program to measure a top's RTL speed.
MODELS = {"tiny": ("digits-vit",), "zcu102": ("deit-tiny-block-197", "deit-tiny", "deit-small")}
_MODEL_SPECS = {"deit-tiny-block-197": blocks.spec("deit_tiny_block_196"),
                "deit-tiny-block-17": blocks.spec("deit_tiny_block_16")}
#: ``--prune-tokens`` of the ``tokens`` method per model (EViT at SPViT's points 3, 6, 9 for
#: the 12-block DeiTs; after blocks 1, 2, 3 of digits-vit's 4).
TOKEN_PRUNING = {"digits-vit": "0.7@1,2,3", "deit-tiny": "0.7@3,6,9", "deit-small": "0.7@3,6,9"}
#: Calibration images per compile (cycles do not depend on the calibration).
CALIB_IMAGES = 4
#: Simulated cycles per wall second of the whole top in Verilator with the board-like DDR in
#: Verilog (sim/cocotb/board_ddr.v), measured on the 2-core development machine while shared
#: (docs/results.md; the zcu102 top ran 63,700/s), rounded down: what ``rtl_skipped``
#: extrapolates from.
RTL_CYCLES_PER_SECOND = {"tiny": 20000.0, "zcu102": 40000.0}
#: RTL runs whose extrapolated simulation time exceeds this are skipped (``--backend both``).
RTL_BUDGET_SECONDS = 1800.0
#: What the matrix engine does in each cycle of a run (:func:`layer_breakdown`).
ACTIVITIES = ("computing", "gemm feed/drain", "waiting for vector work", "waiting for DMA")
#: Token keep ratios of the SPViT-style table.
KEEP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)

Progress = Callable[[str, float], None]


def make_record(*, model: str, method: str, config: AccelConfig, macs: int, ddr_model: str,
                perf: dict[str, Any] | None, rtl: dict[str, Any] | None, wall_seconds: float) -> dict[str, Any]:
    """The record of one (model, method) from the perf model's counters and/or one RTL run
    (:func:`vitaccel.sw.system_case.run_one_image`'s entry). RTL's counters win where both
    ran; ``perf_error`` compares the two TOTAL_CYCLES."""
    counters = rtl["counters"] if rtl is not None else perf
    if counters is None:
        raise ValueError("make_record needs a perf estimate or an RTL run")
    cycles = int(counters["total_cycles"])
    perf_error = None
    if rtl is not None and perf is not None:
        perf_error = abs(perf["total_cycles"] - cycles) / cycles
    return {
        "model": model, "method": method, "config": config.name, "clock_mhz": config.clock_mhz,
        "cycles": cycles, "latency_ms": cycles / (config.clock_mhz * 1e3), "macs": int(macs),
        "engine_busy_cycles": int(counters["engine_busy_cycles"]),
        "engine_utilization": macs / (cycles * config.macs_per_cycle),
        "ddr_bytes": int(counters["dma_read_bytes"]) + int(counters["dma_write_bytes"]),
        "source": "rtl" if rtl is not None else "perf",
        "bit_exact": bool(rtl["bit_exact"]) if rtl is not None else None,
        "perf_error": perf_error, "ddr_model": ddr_model, "wall_seconds": round(wall_seconds, 3),
    }


def _compile(model: str, config: AccelConfig, method: str, directory: Path):
    from vitaccel.sw.compile import compile_model

    spec = _MODEL_SPECS.get(model, model)
    if method == "dense":
        return compile_model(spec, config, directory, calib=CALIB_IMAGES)
    if method == "tokens":
        return compile_model(spec, config, directory, calib=CALIB_IMAGES, prune_tokens=TOKEN_PRUNING.get(model, 0.7))
    n, m = (int(x) for x in method.removeprefix("nm-").split(":"))
    return compile_model(spec, config.replace(nm_sparsity=(n, m)), directory, calib=CALIB_IMAGES, nm=f"{n}:{m}")


def _rtl_skip_reason(config: AccelConfig, perf_cycles: int, backend: str) -> str | None:
    """Why RTL is not attempted for a program of ``perf_cycles`` (None: run it)."""
    if backend == "perf":
        return "--backend perf"
    rate = RTL_CYCLES_PER_SECOND.get(config.name)
    if backend == "both" and rate is not None and perf_cycles / rate > RTL_BUDGET_SECONDS:
        return (f"extrapolated RTL time {perf_cycles / rate / 3600:.1f} h ({perf_cycles:,} cycles at the measured "
                f"{rate:,.0f} simulated cycles/s of the {config.name} top) exceeds the {RTL_BUDGET_SECONDS / 60:.0f} min "
                "budget; run with --backend rtl to force it")
    return None


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False, progress: Progress | None = None,
        models: Sequence[str] | None = None, methods: Sequence[str] | None = None, backend: str = "both",
        plot_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Records for ``models`` (default :data:`MODELS` of the config's preset) and ``methods``
    (default :data:`DEFAULT_METHODS`) with ``backend`` (``rtl``, ``perf`` or ``both``).
    ``plot_dir``: also :func:`plot` the last model's dense perf run there (else its first run). ``quick`` is
    accepted for the bench command's interface and changes nothing."""
    from vitaccel.sw.system_case import run_one_image
    from vitaccel.sim.perf import BOARD_DDR_MODEL, PerfModelError, estimate
    from vitaccel.sw.program import load_program

    del quick
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    models = list(models) if models else list(MODELS.get(config.name, ()))
    if not models:
        raise ValueError(f"no default models for config {config.name!r}: name them with --models")
    methods = list(methods) if methods else list(DEFAULT_METHODS)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
    ddr = BOARD_DDR_MODEL.name
    records: list[dict[str, Any]] = []
    plotted: tuple[str, Any, Any] | None = None
    # ``tokens`` needs pruning points: one-block models have none (the block's records are dense).
    pairs = [(mo, me) for mo in models for me in methods if me != "tokens" or mo not in _MODEL_SPECS]
    total = len(pairs)
    for index, (model, method) in enumerate(pairs):
        if progress:
            progress(f"{model} {method}", index / total)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="vitaccel-e2e-") as tmp:
            _compile(model, config, method, Path(tmp) / "program")
            program = load_program(Path(tmp) / "program")
        macs = int(program.manifest["macs"])
        try:
            perf_result = estimate(program.config, list(program.words), program.ddr_size, ddr=ddr)
        except PerfModelError as err:   # the top would stop: no cycles from either backend
            records.append({**dict.fromkeys(RECORD_KEYS), "model": model, "method": method, "config": config.name,
                            "clock_mhz": config.clock_mhz, "macs": macs, "ddr_model": ddr,
                            "wall_seconds": round(time.perf_counter() - started, 3),
                            "error": f"{err.code} at pc {err.pc}: {err}"})
            continue
        perf = perf_result.to_dict()
        skip = _rtl_skip_reason(config, perf["total_cycles"], backend)
        rtl = None
        if skip is None:
            rtl = run_one_image(program, ddr_model=ddr, simulator=simulator)
            if "counters" not in rtl:   # the simulation stopped before the run: no counters to report
                skip, rtl = f"the RTL run did not complete: {'; '.join(rtl['problems'])}", None
        record = make_record(model=model, method=method, config=config, macs=macs, ddr_model=ddr,
                             perf=None if backend == "rtl" else perf, rtl=rtl,
                             wall_seconds=time.perf_counter() - started)
        if rtl is not None:
            record["rtl_seconds"] = rtl["seconds"]
            record["perf_cycles"] = perf["total_cycles"] if backend != "rtl" else None
            if rtl["problems"]:
                record["rtl_problems"] = rtl["problems"][:3]
        else:
            record["rtl_skipped"] = skip
        records.append(record)
        if method == "dense" or plotted is None:
            plotted = (model, program, perf_result)
    if plot_dir is not None:
        if plotted is None:
            raise ValueError("nothing to plot: no program ran on the performance model")
        plot(*plotted, plot_dir)
    return records


# -- where the cycles go ---------------------------------------------------------------------------

def layer_breakdown(program: Any, perf: Any) -> list[dict[str, Any]]:
    """Every cycle of the perf model's run (``perf``: a :class:`~vitaccel.sim.perf.PerfResult`)
    attributed to a layer of ``program``'s manifest and to one of :data:`ACTIVITIES`: the
    engine's k-steps (``computing``), the rest of a GEMM's busy cycles (``gemm feed/drain``),
    other compute opcodes (``waiting for vector work``), and the cycles the compute unit waits
    between instructions (for the fetcher or a load/store token: ``waiting for DMA``). The gap
    before an instruction counts to that instruction's layer; instructions outside every layer
    (input/output moves, FINISH) to ``(program)``. Per layer also ``macs``, ``ddr_bytes`` (its
    LOADs and STOREs plus 32 bytes of scan and fetch per instruction) and ``cycles``."""
    from vitaccel.hw.spec import isa
    from vitaccel.hw.spec.isa import Opcode

    layers = [layer for layer in program.manifest.get("layers", ()) if layer.get("instructions", 0) > 0]
    firsts = np.array([layer["first_instruction"] for layer in layers], dtype=np.int64)
    rows = [{"name": layer["name"], "kind": layer["kind"], "source": layer.get("source", ""),
             "macs": int(layer.get("macs", 0)), "ddr_bytes": 0, **{a: 0 for a in ACTIVITIES}} for layer in layers]
    other = {"name": "(program)", "kind": "program", "source": "", "macs": 0, "ddr_bytes": 0,
             **{a: 0 for a in ACTIVITIES}}

    def row_of(pc: int) -> dict[str, Any]:
        at = int(np.searchsorted(firsts, pc, side="right")) - 1
        if at >= 0 and pc < layers[at]["first_instruction"] + layers[at]["instructions"]:
            return rows[at]
        return other

    instrs = [isa.decode(word) for word in program.words]
    for pc, instr in enumerate(instrs):
        moved = instr.fields["rows"] * instr.fields["row_bytes"] if instr.opcode in (Opcode.LOAD, Opcode.STORE) else 0
        row_of(pc)["ddr_bytes"] += moved + 2 * isa.ADDR_UNIT
    previous_end = 0
    for pc, issue, complete, steps in perf.compute_timeline:
        row = row_of(pc)
        row["waiting for DMA"] += issue - previous_end
        busy = complete - issue
        if instrs[pc].opcode is Opcode.GEMM:
            row["computing"] += steps
            row["gemm feed/drain"] += busy - steps
        else:
            row["waiting for vector work"] += busy
        previous_end = complete
    other["waiting for DMA"] += perf.total_cycles - previous_end
    out = [row for row in rows if any(row[a] for a in ACTIVITIES)] + [other]
    for row in out:
        row["cycles"] = sum(row[a] for a in ACTIVITIES)
    return out


def plot(model: str, program: Any, perf: Any, directory: str | Path) -> list[Path]:
    """Two PNGs in ``directory``: ``e2e-<config>-<model>-layers.png`` (per-layer cycles
    stacked by :data:`ACTIVITIES`) and ``e2e-<config>-<model>-roofline.png`` (MAC per cycle
    against MAC per DDR byte, one point per layer with MACs, under the config's compute
    ceiling and the board DDR's 48 B/cycle). Written atomically; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitaccel.sim.perf import BOARD_DDR_MODEL

    config = program.config
    rows = layer_breakdown(program, perf)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"e2e-{config.name}-{model}"
    paths = []

    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.09 * len(rows) + 4)), 5))
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    colors = {"computing": "tab:green", "gemm feed/drain": "tab:olive", "waiting for vector work": "tab:orange",
              "waiting for DMA": "tab:blue"}
    for activity in ACTIVITIES:
        values = np.array([row[activity] for row in rows], dtype=float)
        ax.bar(x, values, bottom=bottom, width=0.85, color=colors[activity],
               label=f"{activity} ({values.sum() / perf.total_cycles:.0%})")
        bottom += values
    step = max(1, len(rows) // 40)
    ax.set_xticks(x[::step], [rows[i]["name"] for i in range(0, len(rows), step)], rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    ax.set_title(f"{model} on {config.name}: {perf.total_cycles:,} cycles "
                 f"({perf.total_cycles / (config.clock_mhz * 1e3):.2f} ms at {config.clock_mhz:g} MHz), "
                 "perf model, board DDR", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}-layers.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    points = [row for row in rows if row["macs"] > 0 and row["cycles"] > 0]
    intensity = np.array([row["macs"] / max(1, row["ddr_bytes"]) for row in points])
    rate = np.array([row["macs"] / row["cycles"] for row in points])
    peak, bandwidth = config.macs_per_cycle, BOARD_DDR_MODEL.total_bytes_per_cycle
    span = np.logspace(math.log10(min(intensity.min(), 0.1)), math.log10(max(intensity.max(), 10 * peak / bandwidth)),
                       200)
    ax.loglog(span, np.minimum(peak, bandwidth * span), "k-",
              label=f"ceiling: {peak} MAC/cycle, board DDR {bandwidth} B/cycle (four HP ports)")
    port = config.dma_data_width // 8   # the accelerator has one AXI master: one HP port
    ax.loglog(span, np.minimum(peak, port * span), "k--", label=f"one {port * 8}-bit port: {port} B/cycle")
    kinds = sorted({row["kind"] for row in points})
    for kind in kinds:
        mask = np.array([row["kind"] == kind for row in points])
        ax.scatter(intensity[mask], rate[mask], s=14, label=kind)
    ax.set_xlabel("MAC per DDR byte")
    ax.set_ylabel("MAC per cycle")
    ax.set_title(f"{model} on {config.name}: roofline per layer (perf model)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}-roofline.png"))
    plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


# -- SPViT-style table ------------------------------------------------------------------------------

def block_latency_table(config: AccelConfig, *, keeps: Sequence[float] = KEEP_RATIOS,
                        models: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Latency of one encoder block against the token keep ratio, from the perf model: each
    model's two-block version (:func:`vitaccel.sw.models.blocks.deit_tiny_two_blocks`) compiled with ``--prune-tokens
    KEEP@1`` (dense at 1.0), and the cycles of the second block's layers (``blocks.1.``; the
    pruning itself runs between the blocks and is not counted, as in SPViT's table). One row per
    (model, keep): ``tokens`` (CLS included), ``cycles``, ``latency_ms``."""
    from vitaccel.sim.perf import BOARD_DDR_MODEL, estimate
    from vitaccel.sw.compile import compile_model
    from vitaccel.sw.program import load_program
    from vitaccel.sw.prune.tokens import kept_tokens

    models = models or {"deit-tiny": blocks.spec("deit_tiny_two_blocks"),
                        "deit-small": blocks.spec("deit_small_two_blocks")}
    table = []
    for name, spec in models.items():
        for keep in keeps:
            with tempfile.TemporaryDirectory(prefix="vitaccel-spvit-") as tmp:
                compile_model(spec, config, Path(tmp) / "p", calib=CALIB_IMAGES,
                              prune_tokens=None if keep >= 1.0 else f"{keep}@1")
                program = load_program(Path(tmp) / "p")
            perf = estimate(program.config, list(program.words), program.ddr_size, ddr=BOARD_DDR_MODEL)
            rows = [row for row in layer_breakdown(program, perf) if _in_block(row, 1)]
            if not rows:
                raise ValueError(f"{name}: no layer of block 1 in the manifest")
            cycles = sum(row["cycles"] for row in rows)
            table.append({"model": name, "keep": keep, "tokens": 1 + kept_tokens(196, keep) if keep < 1 else 197,
                          "cycles": cycles, "latency_ms": cycles / (config.clock_mhz * 1e3), "config": config.name,
                          "source": "perf"})
    return table


def _in_block(row: dict[str, Any], block: int) -> bool:
    text = f"{row['name']} {row['source']}"
    return f"blocks.{block}." in text or f"blocks_{block}_" in text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vitaccel.sw.bench.e2e [--config NAME]``: the SPViT-style table
    (:func:`block_latency_table`) as JSON."""
    import argparse
    import json

    from vitaccel.hw.spec.config import load_config

    parser = argparse.ArgumentParser(prog="python -m vitaccel.sw.bench.e2e", description=main.__doc__)
    parser.add_argument("--config", default="zcu102")
    args = parser.parse_args(argv)
    print(json.dumps(block_latency_table(load_config(args.config)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
