"""``vitaccel train MODEL [--epochs N] [-o FILE]``: train a zoo model on its data set."""

from __future__ import annotations

import argparse

from vitaccel.sw.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitaccel.sw.train import RECIPES

    defaults = ", ".join(f"{name}: {recipe.epochs}" for name, recipe in RECIPES.items())
    parser = subparsers.add_parser(
        "train", help="train digits-vit or digits-vit-197 on scikit-learn's digits",
        description="Train a zoo model from its seeded initialisation on its data set and save the state "
                    "dict: digits-vit on scikit-learn's 8x8 digits, digits-vit-197 (197 tokens, DeiT-T "
                    "width) on the same digits upsampled to 28x28, both with the fixed train/test split "
                    "(1348/449 images). Deterministic: seeded, one torch thread. Without -o the "
                    "checkpoint shipped in the package is replaced.",
        epilog="examples:\n  vitaccel train digits-vit\n  vitaccel train digits-vit-197\n"
               "  vitaccel train digits-vit --epochs 20 -o /tmp/d.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help=f"model to train ({', '.join(RECIPES)})")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help=f"passes over the training split (default per model: {defaults})")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="stop after N optimiser steps and skip the test-set evaluation (quick "
                             "checks; the learning-rate schedule stays that of --epochs)")
    parser.add_argument("-o", "--output", metavar="FILE", help="where to save the state dict "
                                                               "(default: the packaged checkpoint)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitaccel.sw.train import RECIPES

    if args.model not in RECIPES:
        raise UserError(f"cannot train {args.model!r}: only {', '.join(RECIPES)} have a data set here")
    epochs = RECIPES[args.model].epochs if args.epochs is None else args.epochs
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.sw.models.zoo import CHECKPOINTS
    from vitaccel.sw.train import train_model

    output = args.output or CHECKPOINTS[args.model]
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, disable=args.quiet) as bar:
        task = bar.add_task("training", total=epochs)

        def progress(epoch: int, total: int, loss: float) -> None:
            bar.update(task, completed=epoch, description=f"epoch {epoch} loss {loss:.3f}")

        try:
            _, accuracy = train_model(args.model, epochs, output=output, progress=progress, max_steps=args.steps,
                                      evaluate=args.steps is None)
        except OSError as err:
            raise UserError(f"cannot write {output}: {err.strerror}") from None
    measured = "not evaluated (--steps)" if accuracy is None else f"{accuracy:.4f} (float)"
    console.print(f"{args.model}: test top-1 {measured}; saved {output} ({time.perf_counter() - started:.0f} s)")
    return 0
