"""Pruning benchmark on digits-vit (``vitaccel bench pruning``): accuracy, executed MACs and
matrix-engine cycles.

One record per method: ``dense``, ``nm-2:4``, ``nm-1:4`` (magnitude N:M along K of every
block linear layer, then fine-tuned with the masks fixed), ``heads`` (one head of four removed
per block by calibration-loss importance, fine-tuned), ``tokens`` and ``tokens+package``
(EViT token pruning at keep 0.7 after blocks 1, 2, 3 of 4, optionally with SPViT's package
token, fine-tuned through the pruning). Every record has ``method``, ``parameter``,
``float_top1`` (digits test split, after fine-tuning where the method fine-tunes),
``float_top1_before_finetune``, ``macs`` (executed per image, :func:`vitaccel.sw.prune.count_macs`)
and ``macs_ratio`` (to dense).

Every record also has ``int8_top1``, from the compile pipeline's quantizer and integer
reference (:func:`vitaccel.sw.quantize.quantize_model`, :func:`vitaccel.sw.reference.run_reference`,
calibrated like ``vitaccel compile``), which accepts the model of every method: dense, N:M (a
dense model with zeros; the record also checks that the int8 weights compress to the N:M
format), heads (a smaller zoo-compatible model), ``tokens`` and ``tokens+package`` (the
fine-tuned :class:`~vitaccel.sw.prune.TokenPruningViT`, compiled like ``vitaccel compile
--prune-tokens [--package-token]``: calibration runs at the pruned token counts, and the
integer pipeline selects tokens on the top-k engine from the uint8 attention probabilities
summed over heads, and weights the package token by the same sums).

Cycles: every record's QGraph is compiled (the N:M records for the config with
``nm_sparsity`` set to their pattern, so their block linears run as ``nm=1`` GEMMs on
compressed weights). ``cycles`` is the **whole program's** RTL cycles for one image
(``cycles_source: "rtl"``): the program runs in Verilator on the emitted top with the
board-like DDR (:func:`vitaccel.sw.system_case.run_one_image`), checked against the golden
machine byte for byte (``rtl_bit_exact``); ``perf_cycles`` is the performance model's figure for
the same program. Where the top cannot run a program (the performance model stops where
the top would), ``cycles`` falls back to the sum over the program's GEMM instructions of the
matrix-engine cycles measured in Verilator per shape
(:func:`vitaccel.sim.bench.nm_cycles.gemm_cycles`; ``cycles_source: "engine"``, and
``rtl_unavailable`` says why); since ``nm=1`` GEMMs run in the top, no record here needs it.
Every record also has that sum as ``engine_cycles``. ``cycles_ratio`` is to dense, ``program_macs`` the program's executed
MACs. The N:M and token records also run :data:`GOLDEN_CHECK_IMAGES` test images of their
program on the golden machine against the integer reference (``golden_bit_exact_images``).
``sparse-attention`` and ``sparse-attention+tokens`` (the latter with token pruning as
``tokens``) compile every attention whose probabilities nothing else reads to Sanger sparse
attention with the mask predicted on chip (``--sparse-attention``, target density
:data:`SPARSE_ATTENTION_DENSITY`), fine-tuned first under the predicted masks
(:func:`~vitaccel.sw.prune.predicted_attention.predicted_masks`, margins calibrated on the
model before fine-tuning; the program's margins are calibrated again after it). Their
records, and dense's, add ``attention_compute_cycles`` (:func:`attention_compute_cycles`:
the attention instructions' compute cycles for the first test image) and the sparse ones
``attention_density`` (mean mask density over :data:`DENSITY_IMAGES` test images),
``attention_density_calibration``, ``attention_margins`` and ``attention_cycles_ratio``.
Outside quick mode, two ``digits-vit-197`` records (:func:`digits_197_records`: the shipped
197-token model, dense and sparse attention without fine-tuning, whole-program RTL cycles on
:data:`DIGITS_197_CONFIG`) and four more records (``model: "deit-s shapes"``) sum the engine cycles of
DeiT-S's GEMM shapes (:func:`deit_s_gemms`) on the :data:`DEIT_S_CONFIG` engine: dense, 2:4,
1:4 and token pruning at keep 0.7 after blocks 3, 6, 9. :func:`acceptance` checks issue 8's
bounds; :func:`plot` draws int8 top-1 against cycles.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["run", "plot", "acceptance", "deit_s_gemms", "deit_s_records", "program_gemms", "summed_cycles",
           "FINETUNE_EPOCHS", "FINETUNE_LR", "QUICK_EPOCHS", "TOKEN_KEEP", "HEADS_KEPT", "CALIB_IMAGES_FOR_HEADS",
           "GOLDEN_CHECK_IMAGES", "DEIT_S", "DEIT_S_TOKEN_POINTS", "DEIT_S_CONFIG", "DEIT_S_SETTINGS",
           "CYCLES_SOURCE", "DEIT_S_CYCLES_SOURCE", "whole_program_cycles", "digits_197_records", "DIGITS_197",
           "SPARSE_ATTENTION_DENSITY", "attention_compute_cycles",
           "DIGITS_197_CONFIG"]

#: Fine-tuning epochs per method (digits-vit: a few seconds per epoch on one busy core).
FINETUNE_EPOCHS = {"nm-2:4": 10, "nm-1:4": 20, "heads": 10, "tokens": 20, "tokens+package": 20,
                   "sparse-attention": 20, "sparse-attention+tokens": 20}
#: Peak fine-tuning learning rate per method (token pruning recovers faster with a larger one:
#: measured on digits-vit, 20 epochs at 1e-3 reach 97.6 % against 96.9 % at 5e-4).
FINETUNE_LR = {"nm-2:4": 5e-4, "nm-1:4": 5e-4, "heads": 5e-4, "tokens": 1e-3, "tokens+package": 1e-3,
               "sparse-attention": 1e-3, "sparse-attention+tokens": 1e-3}
#: Target attention density of the sparse-attention records (``--sparse-attention`` SPEC).
#: On digits-vit, measured without fine-tuning: int8 top-1 0.960 at 0.5 against 0.982 dense;
#: 20 epochs under the predicted masks at 1e-3 bring it to 0.980.
SPARSE_ATTENTION_DENSITY = 0.5
#: Test images whose attention masks the measured density is taken over.
DENSITY_IMAGES = 64
#: Epochs in quick mode (every method, a smoke run).
QUICK_EPOCHS = 1
#: Keep ratio of token pruning at each pruning point.
TOKEN_KEEP = 0.7
#: Heads kept per block (of digits-vit's four).
HEADS_KEPT = 3
#: Train images the loss-based head importance is measured on.
CALIB_IMAGES_FOR_HEADS = 400
#: Test images on which the compiled token-pruned program runs on the golden machine.
GOLDEN_CHECK_IMAGES = 16

#: The 197-token model (DeiT-T's width and token count on real data) and the config it runs on
#: in RTL: ``tiny``'s 32 MACs per cycle would need some 13 M cycles per image, the zcu102 top
#: about 2 M (under a minute of simulation).
DIGITS_197, DIGITS_197_CONFIG = "digits-vit-197", "zcu102"

#: DeiT-S's architecture (only shapes matter for cycles): blocks, patch tokens, width, heads,
#: MLP width, patch-embedding depth (3 x 16 x 16) and classes.
DEIT_S = {"depth": 12, "patches": 196, "dim": 384, "heads": 6, "mlp": 1536, "patch_k": 768, "classes": 1000}
#: Token pruning points of the DeiT-S cycle records (after blocks 3, 6, 9, keep :data:`TOKEN_KEEP`).
DEIT_S_TOKEN_POINTS = (3, 6, 9)
#: Config whose matrix engine the DeiT-S shapes run on (the board's; the tiny engine would
#: simulate some 30x more cycles per GEMM).
DEIT_S_CONFIG = "zcu102"
#: ``cycles_source`` of a record whose cycles are the whole program's in RTL, and of one that
#: falls back to the engine cycles summed over its GEMMs.
CYCLES_SOURCE, ENGINE_CYCLES_SOURCE = "rtl", "engine"
DEIT_S_CYCLES_SOURCE = (f"matrix-engine cycles measured in Verilator on the {DEIT_S_CONFIG} config per GEMM shape of "
                        "the DeiT-S architecture (one engine command per layer GEMM, per head for attention; "
                        "weights irrelevant) and summed; vector units and DMA excluded")


def deit_s_gemms(nm: tuple[int, int] | None = None, keep: float | None = None,
                 points: tuple[int, ...] = DEIT_S_TOKEN_POINTS) -> list[tuple[int, int, int, tuple[int, int] | None]]:
    """Every GEMM of one DeiT-S inference as ``(M, K, N, nm)``: patch embedding, per block qkv,
    proj, fc1, fc2 (N:M sparse with ``nm``) and per head scores and attention-times-V (dense),
    then the head. With ``keep``, EViT keeps ``ceil(keep * n)`` of the ``n`` non-CLS tokens after
    each block in ``points`` (1-based), as :class:`~vitaccel.sw.prune.TokenPruningViT` does."""
    from vitaccel.sw.prune.tokens import kept_tokens

    d = DEIT_S
    dim, head_dim = d["dim"], d["dim"] // d["heads"]
    shapes = [(d["patches"], d["patch_k"], dim, None)]
    tokens = d["patches"] + 1
    for block in range(1, d["depth"] + 1):
        shapes += [(tokens, dim, 3 * dim, nm), (tokens, dim, dim, nm), (tokens, dim, d["mlp"], nm),
                   (tokens, d["mlp"], dim, nm)]
        shapes += [(tokens, head_dim, tokens, None), (tokens, tokens, head_dim, None)] * d["heads"]
        if keep is not None and block in points:
            tokens = 1 + kept_tokens(tokens - 1, keep)
    return shapes + [(1, dim, d["classes"], None)]


#: The DeiT-S cycle records: (method, parameter, deit_s_gemms keyword arguments).
DEIT_S_SETTINGS = (
    ("dense", None, {}),
    ("nm-2:4", {"n": 2, "m": 4}, {"nm": (2, 4)}),
    ("nm-1:4", {"n": 1, "m": 4}, {"nm": (1, 4)}),
    ("tokens", {"keep": TOKEN_KEEP, "points": list(DEIT_S_TOKEN_POINTS), "package": False}, {"keep": TOKEN_KEEP}),
)


def _quantized(model, shape, config: AccelConfig, sparse_density: float | None = None):
    """``model``'s QGraph as ``vitaccel compile`` makes it (default calibration). With
    ``sparse_density``, every attention the compiler can make sparse is (as ``--sparse-attention
    D``); ``qgraph.meta["sparse_attention"]`` then holds the calibration record."""
    from vitaccel.sw.compile import default_calibration
    from vitaccel.sw.data import images_for
    from vitaccel.sw.prune.sparse_attention import SparseAttentionSpec, sparsify_attention
    from vitaccel.sw.quantize import quantize_model
    from vitaccel.sw.reference import quantize_images

    calib = default_calibration(shape)
    calib_images = images_for(shape, calib, split="train").images[:calib]
    qgraph = quantize_model(model, shape, calib_images, config=config)
    if sparse_density is not None:
        qgraph, record = sparsify_attention(qgraph, SparseAttentionSpec(density=sparse_density),
                                            quantize_images(qgraph, calib_images))
        qgraph.meta["sparse_attention"] = record
    return qgraph


def _int8_top1(model, shape, config: AccelConfig, sparse_density: float | None = None):
    """Top-1 of ``model`` through the compile pipeline's quantizer and integer reference, and
    its QGraph (:func:`_quantized`)."""
    from vitaccel.sw.data import images_for
    from vitaccel.sw.reference import quantize_images, run_reference

    qgraph = _quantized(model, shape, config, sparse_density)
    test = images_for(shape)
    [logits] = run_reference(qgraph, quantize_images(qgraph, test.images), keep_all=False).values()
    return float(np.mean(logits.reshape(len(test), -1).argmax(1) == test.labels)), qgraph


def attention_compute_cycles(program, qgraph, masks: dict[str, np.ndarray]) -> int:
    """Compute-unit busy cycles of one image's attention instructions, from the performance
    model's per-instruction formulas (calibrated against the RTL; DMA and the overlap of the
    queues left out): the score and context GEMMs and the SOFTMAXes of dense attentions, and
    the SPARSE_ATTNs, each with the waves of the image's mask. ``masks``: per sparse op, the
    image's masks ``[heads, T, T]`` (one image of :func:`~vitaccel.sw.prune.sparse_attention.image_masks`)."""
    from vitaccel.hw.spec import isa
    from vitaccel.sim.perf.gemm import gemm_cycles
    from vitaccel.sim.perf.units import compute_cycles, sparse_attention_waves
    from vitaccel.sw.prune.sparse_attention import find_attentions

    config = program.config
    dense = {name for site in find_attentions(qgraph)
             for name in (site.scores.output, site.softmax.output, site.context.output)}
    heads_seen = dict.fromkeys(masks, 0)
    total = 0
    for word, tag in zip(program.words, program.tags):
        instr = isa.decode(word)
        if instr.opcode is isa.Opcode.SPARSE_ATTN:
            waves = sparse_attention_waves(config, masks[tag][heads_seen[tag]])
            heads_seen[tag] += 1
            total += compute_cycles(config, instr, sparse_waves=waves)
        elif tag in dense and instr.opcode is isa.Opcode.GEMM:
            total += gemm_cycles(config, instr.fields).busy
        elif tag in dense and instr.opcode is isa.Opcode.SOFTMAX:
            total += compute_cycles(config, instr)
    return total


def _sparse_fields(qgraph, program, test_images: np.ndarray, dense: dict[str, Any] | None) -> dict[str, Any]:
    """The attention figures of a record: the attention compute cycles of the first test image
    (and their ratio to ``dense``'s record, if given) and, for sparse attention, the density
    over the first :data:`DENSITY_IMAGES` float ``test_images``, the calibration density and the
    margins."""
    from vitaccel.sw.prune.sparse_attention import image_masks, measured_density
    from vitaccel.sw.reference import quantize_images

    masks = image_masks(qgraph, quantize_images(qgraph, test_images[:DENSITY_IMAGES]))
    cycles = attention_compute_cycles(program, qgraph, {name: mask[0] for name, mask in masks.items()})
    fields: dict[str, Any] = {"attention_compute_cycles": cycles}
    if dense is not None:
        fields["attention_cycles_ratio"] = round(cycles / dense["attention_compute_cycles"], 4)
    record = qgraph.meta.get("sparse_attention")
    if record is not None:
        density, _ = measured_density(masks)
        fields.update(attention_density=round(density, 4) if density is not None else None,
                      attention_density_calibration=record["mean_density"],
                      attention_margins=[layer.get("margin") for layer in record["layers"]],
                      attention_dense_layers=sum(1 for layer in record["layers"] if "dense" in layer))
    return fields


def _golden_bit_exact(qgraph, program, count: int) -> int:
    """Run ``count`` test images of the compiled ``program`` on the golden machine, check its
    logits against ``qgraph``'s integer reference; return ``count`` (RuntimeError on any difference)."""
    from vitaccel.sw.data import digits
    from vitaccel.sw.device import GoldenDevice
    from vitaccel.sw.reference import quantize_images, run_reference

    images = quantize_images(qgraph, digits("test").images[:count])
    got = GoldenDevice(program).infer_batch(images)
    want = run_reference(qgraph, images, keep_all=False)[qgraph.outputs[0]]
    if not np.array_equal(got, want):
        raise RuntimeError(f"{qgraph.name}: the golden machine's logits differ from the integer reference")
    return count


def program_gemms(program) -> list[tuple[int, int, int, tuple[int, int] | None]]:
    """``(m, k, n, nm)`` of every GEMM instruction of a compiled program (``nm``: the config's
    ``nm_sparsity`` for ``nm=1`` GEMMs, else None)."""
    from vitaccel.hw.spec import isa

    pattern = program.config.nm_sparsity
    return [(op.m, op.k, op.n, pattern if op.nm else None)
            for op in map(isa.decode, program.words) if op.opcode is isa.Opcode.GEMM]


def summed_cycles(config: AccelConfig, gemms, simulator: str = "verilator") -> int:
    """Sum of :func:`~vitaccel.sim.bench.nm_cycles.gemm_cycles` over ``(m, k, n, nm)`` GEMMs
    (each distinct shape measured once, and cached)."""
    from vitaccel.sim.bench.nm_cycles import gemm_cycles

    measured: dict[tuple, int] = {}
    for shape in gemms:
        if shape not in measured:
            measured[shape] = gemm_cycles(config, *shape[:3], shape[3], simulator=simulator)
    return sum(measured[shape] for shape in gemms)


def whole_program_cycles(program, simulator: str = "verilator") -> dict[str, Any]:
    """One test image of the compiled ``program`` in RTL (board-like DDR) against the golden
    machine: ``cycles``, ``bit_exact``, ``perf_cycles``, ``rtl_seconds``; or, when the top
    cannot run the program (the performance model stops where the top would), only
    ``unavailable`` with the reason."""
    from vitaccel.sim.perf import BOARD_DDR_MODEL, PerfModelError, estimate
    from vitaccel.sw.system_case import run_one_image

    try:
        perf = estimate(program.config, list(program.words), program.ddr_size, ddr=BOARD_DDR_MODEL.name)
    except PerfModelError as err:
        return {"unavailable": f"the top stops this program with {err.code} at pc {err.pc}: {err}"}
    run = run_one_image(program, ddr_model=BOARD_DDR_MODEL.name, simulator=simulator)
    if "counters" not in run or run["problems"]:
        raise RuntimeError(f"{program.manifest['model'].get('name', 'program')}: the RTL run differs from the golden "
                           f"machine: {'; '.join(run['problems'][:3])}")
    return {"cycles": int(run["counters"]["total_cycles"]), "bit_exact": bool(run["bit_exact"]),
            "perf_cycles": int(perf.to_dict()["total_cycles"]), "rtl_seconds": round(run["seconds"], 1)}


def _executed_macs(gemms) -> int:
    return sum(m * (k if nm is None else -(-k // nm[1]) * nm[0]) * n for m, k, n, nm in gemms)


def deit_s_records(simulator: str = "verilator") -> list[dict[str, Any]]:
    """DeiT-S-shaped cycle records (:data:`DEIT_S_SETTINGS`): ``model`` ``"deit-s shapes"``,
    ``method``, ``parameter``, ``config``, ``cycles``, ``cycles_ratio``, executed ``macs``,
    ``macs_ratio``, ``gemms`` and ``cycles_source``; no accuracy (weights are irrelevant)."""
    from vitaccel.hw.spec.config import load_config

    config = load_config(DEIT_S_CONFIG)
    records = []
    for method, parameter, kwargs in DEIT_S_SETTINGS:
        gemms = deit_s_gemms(**kwargs)
        records.append({"method": method, "parameter": parameter, "model": "deit-s shapes", "config": config.name,
                        "int8_top1": None, "macs": _executed_macs(gemms), "gemms": len(gemms),
                        "cycles": summed_cycles(config, gemms, simulator), "cycles_source": DEIT_S_CYCLES_SOURCE})
    for record in records:
        record["cycles_ratio"] = round(record["cycles"] / records[0]["cycles"], 4)
        record["macs_ratio"] = round(record["macs"] / records[0]["macs"], 4)
    return records


def _comparable_cycles(record: dict[str, Any], dense: dict[str, Any]) -> tuple[int, int]:
    """``(record, dense)`` cycles of one kind: whole-program RTL cycles when both have them,
    else the engine cycles summed over GEMMs."""
    if record.get("cycles_source") == dense.get("cycles_source") or "engine_cycles" not in record:
        return record["cycles"], dense["cycles"]
    return record["engine_cycles"], dense["engine_cycles"]


def digits_197_records(simulator: str = "verilator") -> list[dict[str, Any]]:
    """:data:`DIGITS_197` on :data:`DIGITS_197_CONFIG`, dense and with sparse attention at
    :data:`SPARSE_ATTENTION_DENSITY` (no fine-tuning: the shipped weights): float and int8
    top-1 on the 449 test images, executed MACs, whole-program RTL cycles for one image and
    the attention compute cycles."""
    from vitaccel.hw.spec.config import load_config
    from vitaccel.sw import train
    from vitaccel.sw.backend import compile_qgraph
    from vitaccel.sw.data import images_for
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.prune import count_macs

    config = load_config(DIGITS_197_CONFIG)
    model, shape = get_model(DIGITS_197)
    test = images_for(shape)
    float_top1, macs = train.evaluate_float(model, test), count_macs(model, shape)
    records = []
    for method, density in (("dense", None), ("sparse-attention", SPARSE_ATTENTION_DENSITY)):
        int8, qgraph = _int8_top1(model, shape, config, density)
        program = compile_qgraph(qgraph, config)
        whole = whole_program_cycles(program, simulator)
        if "unavailable" in whole:
            raise RuntimeError(f"{DIGITS_197}: {whole['unavailable']}")
        entry = {"method": method, "parameter": None if density is None else {"density": density},
                 "model": DIGITS_197, "config": config.name, "float_top1": float_top1, "int8_top1": int8,
                 "macs": macs, "program_macs": program.manifest["macs"], "cycles": whole["cycles"],
                 "cycles_source": CYCLES_SOURCE, "rtl_bit_exact": whole["bit_exact"],
                 "perf_cycles": whole["perf_cycles"], "rtl_seconds": whole["rtl_seconds"], "macs_ratio": 1.0,
                 "cycles_ratio": round(whole["cycles"] / records[0]["cycles"], 4) if records else 1.0,
                 **_sparse_fields(qgraph, program, test.images, records[0] if records else None)}
        records.append(entry)
    return records


def acceptance(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 8's bounds on the digits-vit records: ``nm-2:4`` within 0.01 of dense int8 top-1
    at <= 0.7 x dense engine cycles, ``tokens`` within 0.01 at <= 0.75 x dense MACs; and issue
    16's on ``sparse-attention`` for digits-vit and digits-vit-197: within 0.01 of dense int8
    top-1, fewer whole-program cycles than dense, mean test-image density <= 0.5. Per bound:
    the measured value, the limit and whether it holds."""
    digits = {r["method"]: r for r in records if r.get("model") == "digits-vit"}
    dense = digits.get("dense")
    out: dict[str, dict[str, Any]] = {}
    if dense is None:
        return out

    def bound(name: str, value, limit, holds: bool) -> None:
        out[name] = {"value": value, "limit": limit, "holds": bool(holds)}

    top1 = dense["int8_top1"]
    if "nm-2:4" in digits:
        r = digits["nm-2:4"]
        bound("nm-2:4 int8_top1 >= dense - 0.01", r["int8_top1"], round(top1 - 0.01, 4), r["int8_top1"] >= top1 - 0.01)
        # Issue 8's bound is on the matrix engine (the GEMMs' cycles); the whole program's ratio
        # (vector units and DMA included) is the record's cycles_ratio.
        cycles, dense_cycles = r["engine_cycles"], dense["engine_cycles"]
        bound("nm-2:4 engine cycles <= 0.7 x dense", cycles, 0.7 * dense_cycles, cycles <= 0.7 * dense_cycles)
    if "tokens" in digits:
        r = digits["tokens"]
        bound("tokens macs <= 0.75 x dense", r["macs"], 0.75 * dense["macs"], r["macs"] <= 0.75 * dense["macs"])
        bound("tokens int8_top1 >= dense - 0.01", r["int8_top1"], round(top1 - 0.01, 4), r["int8_top1"] >= top1 - 0.01)
    for model in ("digits-vit", DIGITS_197):
        by_method = {r["method"]: r for r in records if r.get("model") == model}
        r, base = by_method.get("sparse-attention"), by_method.get("dense")
        if r is None or base is None:
            continue
        bound(f"{model} sparse-attention int8_top1 >= dense - 0.01", r["int8_top1"], round(base["int8_top1"] - 0.01, 4),
              r["int8_top1"] >= base["int8_top1"] - 0.01)
        bound(f"{model} sparse-attention cycles < dense", r["cycles"], base["cycles"], r["cycles"] < base["cycles"])
        bound(f"{model} sparse-attention density <= 0.5", r.get("attention_density"), 0.5,
              r.get("attention_density") is not None and r["attention_density"] <= 0.5)
    return out


def plot(records: list[dict[str, Any]], path) -> None:
    """Write int8 top-1 against matrix-engine cycles, one labelled point per digits-vit method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in records if r.get("model") == "digits-vit" and r.get("cycles") is not None]
    if not points:
        raise ValueError("plot: no digits-vit record with cycles")
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for r in points:
        engine_only = r.get("cycles_source") == ENGINE_CYCLES_SOURCE
        ax.scatter(r["cycles"], 100 * r["int8_top1"], s=36, facecolors="none" if engine_only else None,
                   edgecolors="C0" if engine_only else None, color=None if engine_only else "C0")
        label = r["method"] + (" (engine only)" if engine_only else "")
        ax.annotate(label, (r["cycles"], 100 * r["int8_top1"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=9)
    config = points[0].get("config", "tiny")
    ax.set_xlabel(f"cycles per image, {config} config, Verilator (filled: whole program; hollow: GEMMs only)")
    ax.set_ylabel("int8 top-1 on digits test split (%)")
    ax.set_title("digits-vit: pruning methods, accuracy against cycles")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Prune digits-vit every way, fine-tune, and measure accuracy, MACs and engine cycles.

    ``quick`` fine-tunes one epoch per method and skips the DeiT-S shapes. Cycles are measured
    with ``simulator`` on ``config``'s matrix engine (with ``nm_sparsity`` set to the pattern for
    the N:M records); prints the :func:`acceptance` figures on stderr.
    """
    import sys

    from vitaccel.sw import data, train
    from vitaccel.sw.backend import compile_qgraph
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.prune import (TokenPruningViT, count_macs, finetune_digits, head_scores_loss,
                                   prune_heads, prune_nm)
    from vitaccel.sw.prune.nm import compress_qgraph_weights
    from vitaccel.sw.prune.predicted_attention import predicted_masks

    methods = (["dense", "nm-2:4", "nm-1:4", "heads", "tokens", "tokens+package", "sparse-attention",
                "sparse-attention+tokens"] + ([] if quick else [DIGITS_197, "deit-s"]))
    records: list[dict[str, Any]] = []
    base_config = config.replace(nm_sparsity=None) if config.nm_sparsity is not None else config

    def report(text: str) -> None:
        if progress is not None:
            progress(text, len(records) / len(methods))

    def epochs(method: str) -> int:
        return QUICK_EPOCHS if quick else FINETUNE_EPOCHS[method]

    base, shape = get_model("digits-vit")
    test = data.digits("test")
    dense_macs = count_macs(base, shape)

    def record(method: str, parameter, model, macs_model, before: float | None, epochs_run: int, qgraph,
               cfg: AccelConfig = base_config, *, golden_check: bool = False, attention: bool = False,
               **extra) -> dict[str, Any]:
        macs = count_macs(macs_model, shape)
        program = compile_qgraph(qgraph, cfg)
        if attention:
            extra.update(_sparse_fields(qgraph, program, test.images, records[0] if records else None))
        gemms = program_gemms(program)
        entry = {"method": method, "parameter": parameter, "model": "digits-vit", "config": base_config.name,
                 "float_top1": train.evaluate_float(macs_model, test),
                 "float_top1_before_finetune": before, "finetune_epochs": epochs_run,
                 "macs": macs, "macs_ratio": round(macs / dense_macs, 4), **extra,
                 "program_macs": program.manifest["macs"], "gemm_instructions": len(gemms),
                 "nm_gemm_instructions": sum(1 for g in gemms if g[3] is not None),
                 "engine_cycles": summed_cycles(base_config, gemms, simulator)}
        whole = whole_program_cycles(program, simulator)
        if "unavailable" in whole:
            entry.update(cycles=entry["engine_cycles"], cycles_source=ENGINE_CYCLES_SOURCE,
                         rtl_unavailable=whole["unavailable"])   # engine only: vector units and DMA excluded
        else:
            entry.update(cycles=whole["cycles"], cycles_source=CYCLES_SOURCE, rtl_bit_exact=whole["bit_exact"],
                         perf_cycles=whole["perf_cycles"], rtl_seconds=whole["rtl_seconds"])
        if golden_check:
            entry["golden_bit_exact_images"] = _golden_bit_exact(qgraph, program, GOLDEN_CHECK_IMAGES)
        cycles, dense_cycles = _comparable_cycles(entry, records[0]) if records else (1, 1)
        entry["cycles_ratio"] = round(cycles / dense_cycles, 4)
        records.append(entry)
        return entry

    report("dense")
    dense_int8, qgraph = _int8_top1(base, shape, base_config)
    record("dense", None, base, base, None, 0, qgraph, int8_top1=dense_int8, attention=True)

    for method, (n, m) in (("nm-2:4", (2, 4)), ("nm-1:4", (1, 4))):
        report(method)
        nm_config = base_config.replace(nm_sparsity=(n, m))
        model = copy.deepcopy(base)
        masks = prune_nm(model, n, m)
        before = train.evaluate_float(model, test)
        finetune_digits(model, epochs(method), masks=masks, lr=FINETUNE_LR[method])
        int8, qgraph = _int8_top1(model, shape, nm_config)
        compressed = compress_qgraph_weights(qgraph, masks)  # raises if int8 broke the pattern
        record(method, {"n": n, "m": m}, model, model, before, epochs(method), qgraph, nm_config, golden_check=True,
               int8_top1=int8, weight_density=round(masks.density(), 4), compressed_layers=len(compressed))

    report("heads")
    train_split = data.digits("train")
    scores = head_scores_loss(base, train_split.images[:CALIB_IMAGES_FOR_HEADS],
                              train_split.labels[:CALIB_IMAGES_FOR_HEADS])
    model = prune_heads(base, keep_per_layer=HEADS_KEPT, scores=scores)
    before = train.evaluate_float(model, test)
    finetune_digits(model, epochs("heads"), lr=FINETUNE_LR["heads"])
    int8, qgraph = _int8_top1(model, shape, base_config)
    record("heads", {"keep_per_layer": HEADS_KEPT, "of": base.blocks[0].attn.num_heads, "score": "loss"},
           model, model, before, epochs("heads"), qgraph, int8_top1=int8,
           kept_heads=[list(block.attn.kept_heads) for block in model.blocks])

    for method, package in (("tokens", False), ("tokens+package", True)):
        report(method)
        wrapper = TokenPruningViT(copy.deepcopy(base), keep=TOKEN_KEEP, package=package)
        before = train.evaluate_float(wrapper, test)
        finetune_digits(wrapper, epochs(method), lr=FINETUNE_LR[method])
        int8, qgraph = _int8_top1(wrapper, shape, base_config)
        record(method, {"keep": TOKEN_KEEP, "points": list(wrapper.points), "package": package},
               wrapper, wrapper, before, epochs(method), qgraph, golden_check=True, int8_top1=int8,
               tokens_per_block=wrapper.token_counts(base.patch_embed.num_patches))
    for method, with_tokens in (("sparse-attention", False), ("sparse-attention+tokens", True)):
        report(method)
        model = TokenPruningViT(copy.deepcopy(base), keep=TOKEN_KEEP) if with_tokens else copy.deepcopy(base)
        calibrated = _quantized(model, shape, base_config, SPARSE_ATTENTION_DENSITY)
        with predicted_masks(model, calibrated, calibrated.meta["sparse_attention"]):   # as Sanger trains
            before = train.evaluate_float(model, test)
            finetune_digits(model, epochs(method), lr=FINETUNE_LR[method])
        int8, qgraph = _int8_top1(model, shape, base_config, SPARSE_ATTENTION_DENSITY)
        parameter = {"density": SPARSE_ATTENTION_DENSITY, **({"keep": TOKEN_KEEP, "points": list(model.points)}
                                                             if with_tokens else {})}
        record(method, parameter, model, model, before, epochs(method), qgraph, golden_check=True, int8_top1=int8,
               attention=True)
    if not quick:
        report(DIGITS_197)
        records.extend(digits_197_records(simulator))
        report("deit-s shapes")
        records.extend(deit_s_records(simulator))
    for name, figure in acceptance(records).items():
        print(f"acceptance: {name}: {figure['value']} against {figure['limit']}: "
              f"{'holds' if figure['holds'] else 'FAILS'}", file=sys.stderr)
    if progress is not None:
        progress("done", 1.0)
    return records
