"""``vitaccel compile``: PyTorch model -> quantized QGraph -> program directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from vitaccel.hw.spec.config import AccelConfig, load_config
from vitaccel.sw.commands import UserError
from vitaccel.sw.program import CompiledProgram, write_program

__all__ = ["compile_model", "token_pruning_model", "nm_pruning_pattern", "sparse_attention_spec", "default_calibration", "DEFAULT_CALIB",
           "DEFAULT_CALIB_LARGE", "reference_outputs", "reference_image_count", "TORCH_TIMED_IMAGES"]

#: Calibration images used when ``--calib`` is not given, for small inputs (digits-vit) ...
DEFAULT_CALIB = 32
#: ... and for 224x224 models, whose calibration forward passes dominate compile time.
DEFAULT_CALIB_LARGE = 4


def default_calibration(input_shape: tuple[int, ...]) -> int:
    """Default number of calibration images for a model input shape ``(C, H, W)``."""
    return DEFAULT_CALIB if input_shape[-1] * input_shape[-2] <= 64 * 64 else DEFAULT_CALIB_LARGE

Progress = Callable[[str, float], Any]

#: Generated evaluation images whose float outputs a program stores (``run --images`` at most),
#: for small inputs (<= 64x64) and for larger ones, whose float forward passes cost more.
REFERENCE_GENERATED_IMAGES = 64
REFERENCE_GENERATED_IMAGES_LARGE = 16
#: Images the float model is timed on (batch 1) for ``run``'s side-by-side speed figure.
TORCH_TIMED_IMAGES = 8


def reference_image_count(input_shape: tuple[int, ...]) -> int | None:
    """How many evaluation images a program stores float outputs for: every image of a data
    set (None), or a bounded number of generated ones."""
    from vitaccel.sw.data import has_dataset

    if has_dataset(input_shape):
        return None
    small = input_shape[-1] * input_shape[-2] <= 64 * 64
    return REFERENCE_GENERATED_IMAGES if small else REFERENCE_GENERATED_IMAGES_LARGE


def reference_outputs(net: Any, input_shape: tuple[int, int, int], *, batch: int = 64) -> tuple[Any, dict[str, Any]]:
    """The float model's logits on its evaluation images (float32 ``[images, classes]``) and
    what a program's manifest records about them: ``images``, ``data`` (where they come
    from) and ``torch_seconds_per_image`` (the float model at batch 1)."""
    import numpy as np
    import torch

    from vitaccel.sw.data import images_for
    from vitaccel.sw.torch_util import model_logits

    dataset = images_for(input_shape, reference_image_count(input_shape))
    with torch.no_grad():
        net(torch.from_numpy(dataset.images[:1]))  # warm-up: first-call allocation is not inference
        timed = min(len(dataset), TORCH_TIMED_IMAGES)
        start = time.perf_counter()
        for index in range(timed):
            net(torch.from_numpy(dataset.images[index:index + 1]))
        per_image = (time.perf_counter() - start) / timed
        logits = [model_logits(net(torch.from_numpy(dataset.images[i:i + batch]))).reshape(
                  len(dataset.images[i:i + batch]), -1).numpy() for i in range(0, len(dataset), batch)]
    meta = {"images": len(dataset), "data": dataset.description, "labelled": dataset.labels is not None,
            "torch_seconds_per_image": round(per_image, 6)}
    return np.concatenate(logits).astype(np.float32), meta


def _stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """A progress callback mapping a stage's 0..1 onto ``lo..hi`` of the whole job."""
    if progress is None:
        return None
    return lambda text, fraction: progress(text, lo + (hi - lo) * max(0.0, min(1.0, fraction)))


def token_pruning_model(net: Any, prune_tokens: str | float, points: Sequence[int] | None = None, *,
                        package_token: bool = False) -> Any:
    """``net`` wrapped in a :class:`~vitaccel.sw.prune.tokens.TokenPruningViT` for compilation.

    ``prune_tokens`` is the keep ratio, or ``"KEEP[@P1,P2,...]"`` (the CLI's ``--prune-tokens``);
    ``points`` the blocks after which to prune (default
    :func:`~vitaccel.sw.prune.tokens.default_pruning_points`); ``package_token`` fuses the
    pruned tokens into SPViT's package token. The wrapper shares ``net``'s parameters: weights
    fine-tuned through pruning are ``wrapper.model.state_dict()``.

    Raises
    ------
    UserError
        For a malformed or out-of-range option or a model that is not a zoo ViT.
    """
    from vitaccel.sw.prune.tokens import TokenPruningViT, parse_token_pruning

    if isinstance(net, TokenPruningViT):
        raise UserError("the model already prunes tokens (a TokenPruningViT); do not ask for --prune-tokens again")
    try:
        if isinstance(prune_tokens, str):
            keep, parsed = parse_token_pruning(prune_tokens)
            if parsed is not None and points is not None:
                raise ValueError(f"token pruning {prune_tokens!r}: points given twice (in the option and as points)")
            points = parsed if points is None else points
        else:
            keep = float(prune_tokens)
        return TokenPruningViT(net, keep=keep, points=points, package=package_token).eval()
    except ValueError as err:
        raise UserError(f"--prune-tokens: {err}") from None


def nm_pruning_pattern(nm: str | tuple[int, int], config: AccelConfig) -> tuple[int, int]:
    """The ``(N, M)`` of the ``--nm`` option ``nm`` (``"N:M"`` or a pair), checked against ``config``.

    Raises
    ------
    UserError
        For a malformed or unsupported pattern, a config without a sparse matrix engine
        (``nm_sparsity`` null), or a pattern other than the config's (the engine runs one).
    """
    from vitaccel.hw.spec.nm import check_nm
    from vitaccel.sw.prune.nm import parse_nm

    try:
        pattern = parse_nm(nm) if isinstance(nm, str) else tuple(nm)
        check_nm(*pattern)
    except (TypeError, ValueError) as err:
        raise UserError(f"--nm: {err}") from None
    text = f"{pattern[0]}:{pattern[1]}"
    if config.nm_sparsity is None:
        raise UserError(f"--nm {text}: config {config.name!r} has no sparse matrix engine (nm_sparsity is null); "
                        f"use a config with \"nm_sparsity\": [{pattern[0]}, {pattern[1]}]")
    if tuple(config.nm_sparsity) != pattern:
        have = f"{config.nm_sparsity[0]}:{config.nm_sparsity[1]}"
        raise UserError(f"--nm {text}: config {config.name!r} runs {have} sparse GEMMs (nm_sparsity); "
                        f"prune to {have} or use a config with \"nm_sparsity\": [{pattern[0]}, {pattern[1]}]")
    return pattern


def sparse_attention_spec(spec: str | float, config: AccelConfig) -> Any:
    """The :class:`~vitaccel.sw.prune.sparse_attention.SparseAttentionSpec` of the
    ``--sparse-attention`` option ``spec``, checked against ``config``.

    Raises
    ------
    UserError
        For a malformed SPEC or a config without the sparse attention unit.
    """
    from vitaccel.sw.prune.sparse_attention import SparseAttentionSpec

    try:
        parsed = SparseAttentionSpec.parse(spec)
    except ValueError as err:
        raise UserError(f"--sparse-attention: {err}") from None
    if not config.has_sparse_attention:
        raise UserError(f"--sparse-attention: config {config.name!r} has no sparse attention unit "
                        f"(has_sparse_attention is false)")
    return parsed


def compile_model(model: str, config: str | AccelConfig, output: str | Path, *, weights: str | None = None,
                  calib: int | None = None, method: str = "minmax", prune_tokens: str | float | None = None,
                  prune_points: Sequence[int] | None = None, package_token: bool = False,
                  nm: str | tuple[int, int] | None = None, sparse_attention: str | float | None = None,
                  force: bool = False, progress: Progress | None = None) -> CompiledProgram:
    """Compile ``model`` (zoo name or ``file.py:function``) for ``config`` into ``output``.

    With ``prune_tokens`` (a keep ratio, or ``"KEEP[@P1,P2,...]"``; ``prune_points`` and
    ``package_token`` as in :func:`token_pruning_model`) the model is wrapped by
    :func:`token_pruning_model` first: calibration and the program then run EViT token pruning
    on the top-k engine after the pruning points, and every later layer is tiled, allocated
    and counted at its reduced token count. ``weights`` are then the wrapped ViT's own
    (``TokenPruningViT.model.state_dict()`` of a fine-tuned wrapper).

    With ``nm`` (``"N:M"``, the config's ``nm_sparsity``) every block linear layer is pruned to
    N:M along its input dimension by magnitude (:func:`vitaccel.sw.prune.nm.prune_nm`, no
    fine-tuning) before quantization. Independently of ``nm``, on a config with
    ``nm_sparsity`` every linear layer whose int8 weights are N:M sparse (e.g. weights pruned
    and fine-tuned with :func:`~vitaccel.sw.prune.nm.prune_nm` beforehand) is stored
    compressed and runs as ``nm=1`` GEMMs.

    With ``sparse_attention`` (a SPEC of :class:`~vitaccel.sw.prune.sparse_attention.SparseAttentionSpec`:
    a target density such as ``0.5`` or ``"density=0.5"``, or ``"margin=N"``) every attention
    whose probabilities nothing else reads becomes Sanger sparse attention with the mask
    predicted on chip (:func:`~vitaccel.sw.prune.sparse_attention.sparsify_attention`,
    calibrated on the calibration images); the manifest's ``sparse_attention`` records each
    layer's margin and calibration density. Attentions that token pruning ranks tokens by stay
    dense (named in the record).

    ``output`` is checked before any work (:func:`~vitaccel.sw.program.check_output_dir`: not
    a file, not a non-empty directory other than a program unless ``force``) and written
    atomically; the program stores the float model's outputs on its evaluation images
    (:func:`reference_outputs`), which ``run`` compares with.

    Raises
    ------
    UserError
        For an unknown model/config, an unsupported operator (named, with its source), a
        layer the back end cannot map, a bad token-pruning or ``nm`` option, or an output
        path a program cannot be written to.
    """
    from vitaccel.sw.backend import BackendError, compile_qgraph
    from vitaccel.sw.data import images_for
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.quantize import quantize_model
    from vitaccel.sw.qgraph import QGraphError

    from vitaccel.sw.program import ProgramError, check_output_dir

    if calib is not None and calib < 1:
        raise UserError(f"--calib must be at least 1, got {calib}")
    cfg = config if isinstance(config, AccelConfig) else load_config(config)
    try:
        check_output_dir(output, force=force)
    except ProgramError as err:
        raise UserError(f"-o {output}: {err}") from None
    started = time.perf_counter()
    if progress:
        progress("loading model", 0.0)
    if package_token and prune_tokens is None:
        raise UserError("package_token needs token pruning (prune_tokens)")
    if prune_points is not None and prune_tokens is None:
        raise UserError("prune_points needs token pruning (prune_tokens)")
    pattern = nm_pruning_pattern(nm, cfg) if nm is not None else None
    attention_spec = sparse_attention_spec(sparse_attention, cfg) if sparse_attention is not None else None
    net, shape = get_model(model, weights)
    nm_meta: dict[str, Any] | None = None
    if pattern is not None:
        from vitaccel.sw.prune.nm import prune_nm

        try:
            masks = prune_nm(net, *pattern)
        except ValueError as err:
            raise UserError(f"--nm: {err}") from None
        nm_meta = {"n": pattern[0], "m": pattern[1], "layers": len(masks.masks), "finetuned": False}
    pruning: dict[str, Any] | None = None
    if prune_tokens is not None:
        net = token_pruning_model(net, prune_tokens, prune_points, package_token=package_token)
        pruning = {"keep": [net.keep[p] for p in net.points], "points": list(net.points), "package": net.package,
                   "tokens_per_block": net.token_counts(net.model.patch_embed.num_patches)}
    requested = default_calibration(shape) if calib is None else calib
    calib_images = images_for(shape, requested, split="train").images[:requested]
    calib = len(calib_images)   # a data set may hold fewer: the manifest records what was used
    try:
        qgraph = quantize_model(net, shape, calib_images, method, config=cfg, name=Path(model).name,
                                progress=_stage(progress, 0.05, 0.6 if attention_spec else 0.7))
        sparse_meta = None
        if attention_spec is not None:
            from vitaccel.sw.prune.sparse_attention import sparsify_attention
            from vitaccel.sw.reference import quantize_images

            qgraph, sparse_meta = sparsify_attention(qgraph, attention_spec, quantize_images(qgraph, calib_images),
                                                     progress=_stage(progress, 0.6, 0.7))
        meta = {"spec": model, "weights": str(Path(weights).resolve()) if weights else None,
                "input_shape": list(shape), "calib_images": int(calib),
                **({"token_pruning": pruning} if pruning is not None else {}),
                **({"nm_pruning": nm_meta} if nm_meta is not None else {}),
                **({"sparse_attention": sparse_meta} if sparse_meta is not None else {})}
        if calib < requested:
            meta["calib_requested"] = int(requested)
        program = compile_qgraph(qgraph, cfg, progress=_stage(progress, 0.7, 0.9), meta=meta)
    except (BackendError, QGraphError) as err:
        raise UserError(str(err)) from None
    if progress:
        progress("float reference outputs", 0.9)
    program.reference, program.manifest["reference"] = reference_outputs(net, shape)
    if progress:
        progress("writing program", 0.97)
    program.manifest["compile_seconds"] = round(time.perf_counter() - started, 3)
    try:
        write_program(output, program, force=force)
    except ProgramError as err:
        raise UserError(str(err)) from None
    if progress:
        progress("done", 1.0)
    return program
