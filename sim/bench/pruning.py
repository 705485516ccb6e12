"""Pruning benchmark on digits-vit (``vitaccel bench pruning``): accuracy and executed MACs.

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
calibrated like ``vitaccel compile``), which accepts the model of every method: dense, N:M (a dense model with zeros; the record also checks that the int8
weights compress to the N:M format), heads (a smaller zoo-compatible model), ``tokens`` and
``tokens+package`` (the fine-tuned :class:`~vitaccel.sw.prune.TokenPruningViT`, compiled like
``vitaccel compile --prune-tokens [--package-token]``: calibration runs at the pruned token
counts, and the integer pipeline selects tokens on the top-k engine from the uint8 attention
probabilities summed over heads, and weights the package token by the same sums). The two
token records also compile their QGraph and check the golden machine's logits against the
integer reference on :data:`GOLDEN_CHECK_IMAGES` test images (``golden_bit_exact_images``).
No record has cycles: they need the sparse matrix engine and the compiler integration, and
this benchmark reports no cycle count that was not measured in RTL.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["run", "FINETUNE_EPOCHS", "FINETUNE_LR", "QUICK_EPOCHS", "TOKEN_KEEP", "HEADS_KEPT", "CALIB_IMAGES_FOR_HEADS",
           "GOLDEN_CHECK_IMAGES"]

#: Fine-tuning epochs per method (digits-vit: a few seconds per epoch on one busy core).
FINETUNE_EPOCHS = {"nm-2:4": 10, "nm-1:4": 20, "heads": 10, "tokens": 20, "tokens+package": 20}
#: Peak fine-tuning learning rate per method (token pruning recovers faster with a larger one:
#: measured on digits-vit, 20 epochs at 1e-3 reach 97.6 % against 96.9 % at 5e-4).
FINETUNE_LR = {"nm-2:4": 5e-4, "nm-1:4": 5e-4, "heads": 5e-4, "tokens": 1e-3, "tokens+package": 1e-3}
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


def _int8_top1(model, shape, config: AccelConfig):
    """Top-1 of ``model`` through the compile pipeline's quantizer and integer reference."""
    from vitaccel.sw.compile import default_calibration
    from vitaccel.sw.data import digits, images_for
    from vitaccel.sw.quantize import quantize_model
    from vitaccel.sw.reference import quantize_images, run_reference

    calib = default_calibration(shape)
    qgraph = quantize_model(model, shape, images_for(shape, calib, split="train").images[:calib], config=config)
    test = digits("test")
    [logits] = run_reference(qgraph, quantize_images(qgraph, test.images), keep_all=False).values()
    return float(np.mean(logits.reshape(len(test), -1).argmax(1) == test.labels)), qgraph


def _golden_bit_exact(qgraph, config: AccelConfig, count: int) -> int:
    """Compile ``qgraph``, run ``count`` test images on the golden machine, check its logits
    against the integer reference; return ``count`` (RuntimeError on any difference)."""
    from vitaccel.sw.backend import compile_qgraph
    from vitaccel.sw.data import digits
    from vitaccel.sw.device import GoldenDevice
    from vitaccel.sw.reference import quantize_images, run_reference

    images = quantize_images(qgraph, digits("test").images[:count])
    got = GoldenDevice(compile_qgraph(qgraph, config)).infer_batch(images)
    want = run_reference(qgraph, images, keep_all=False)[qgraph.outputs[0]]
    if not np.array_equal(got, want):
        raise RuntimeError("token-pruned program: the golden machine's logits differ from the integer reference")
    return count


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Prune digits-vit every way, fine-tune, and measure accuracy and MACs.

    ``simulator`` is unused (no RTL runs yet; kept for the common benchmark signature).
    ``quick`` fine-tunes one epoch per method.
    """
    from vitaccel.sw import data, train
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.prune import (TokenPruningViT, count_macs, finetune_digits, head_scores_loss,
                                   prune_heads, prune_nm)
    from vitaccel.sw.prune.nm import compress_qgraph_weights

    methods = ["dense", "nm-2:4", "nm-1:4", "heads", "tokens", "tokens+package"]
    records: list[dict[str, Any]] = []

    def report(text: str) -> None:
        if progress is not None:
            progress(text, len(records) / len(methods))

    def epochs(method: str) -> int:
        return QUICK_EPOCHS if quick else FINETUNE_EPOCHS[method]

    base, shape = get_model("digits-vit")
    test = data.digits("test")
    dense_macs = count_macs(base, shape)

    def record(method: str, parameter, model, macs_model, before: float | None, epochs_run: int,
               **extra) -> dict[str, Any]:
        macs = count_macs(macs_model, shape)
        entry = {"method": method, "parameter": parameter, "model": "digits-vit",
                 "float_top1": train.evaluate_float(macs_model, test),
                 "float_top1_before_finetune": before, "finetune_epochs": epochs_run,
                 "macs": macs, "macs_ratio": round(macs / dense_macs, 4), **extra}
        records.append(entry)
        return entry

    report("dense")
    dense_int8, _ = _int8_top1(base, shape, config)
    record("dense", None, base, base, None, 0, int8_top1=dense_int8)

    for method, (n, m) in (("nm-2:4", (2, 4)), ("nm-1:4", (1, 4))):
        report(method)
        model = copy.deepcopy(base)
        masks = prune_nm(model, n, m)
        before = train.evaluate_float(model, test)
        finetune_digits(model, epochs(method), masks=masks, lr=FINETUNE_LR[method])
        int8, qgraph = _int8_top1(model, shape, config)
        compressed = compress_qgraph_weights(qgraph, masks)  # raises if int8 broke the pattern
        record(method, {"n": n, "m": m}, model, model, before, epochs(method), int8_top1=int8,
               weight_density=round(masks.density(), 4), compressed_layers=len(compressed))

    report("heads")
    train_split = data.digits("train")
    scores = head_scores_loss(base, train_split.images[:CALIB_IMAGES_FOR_HEADS],
                              train_split.labels[:CALIB_IMAGES_FOR_HEADS])
    model = prune_heads(base, keep_per_layer=HEADS_KEPT, scores=scores)
    before = train.evaluate_float(model, test)
    finetune_digits(model, epochs("heads"), lr=FINETUNE_LR["heads"])
    int8, _ = _int8_top1(model, shape, config)
    record("heads", {"keep_per_layer": HEADS_KEPT, "of": base.blocks[0].attn.num_heads, "score": "loss"},
           model, model, before, epochs("heads"), int8_top1=int8,
           kept_heads=[list(block.attn.kept_heads) for block in model.blocks])

    for method, package in (("tokens", False), ("tokens+package", True)):
        report(method)
        wrapper = TokenPruningViT(copy.deepcopy(base), keep=TOKEN_KEEP, package=package)
        before = train.evaluate_float(wrapper, test)
        finetune_digits(wrapper, epochs(method), lr=FINETUNE_LR[method])
        int8, qgraph = _int8_top1(wrapper, shape, config)
        record(method, {"keep": TOKEN_KEEP, "points": list(wrapper.points), "package": package},
               wrapper, wrapper, before, epochs(method), int8_top1=int8,
               golden_bit_exact_images=_golden_bit_exact(qgraph, config, GOLDEN_CHECK_IMAGES),
               tokens_per_block=wrapper.token_counts(base.patch_embed.num_patches))
    if progress is not None:
        progress("done", 1.0)
    return records
