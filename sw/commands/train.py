"""``vitaccel train digits-vit [--epochs N] [-o FILE]``: train a zoo model on its data set."""

from __future__ import annotations

import argparse

from vitaccel.sw.commands import UserError

#: Models that have a data set to train on.
TRAINABLE = ("digits-vit",)


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitaccel.sw.train import DEFAULT_EPOCHS

    parser = subparsers.add_parser(
        "train", help="train digits-vit on scikit-learn's digits",
        description="Train a zoo model from its seeded initialisation on its data set (digits-vit: "
                    "scikit-learn's 8x8 digits, fixed train/test split) and save the state dict. "
                    "Without -o the checkpoint shipped in the package is replaced.",
        epilog="examples:\n  vitaccel train digits-vit\n  vitaccel train digits-vit --epochs 20 -o /tmp/d.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help=f"model to train ({', '.join(TRAINABLE)})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, metavar="N",
                        help=f"passes over the training split (default: {DEFAULT_EPOCHS})")
    parser.add_argument("-o", "--output", metavar="FILE", help="where to save the state dict "
                                                               "(default: the packaged checkpoint)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model not in TRAINABLE:
        raise UserError(f"cannot train {args.model!r}: only {', '.join(TRAINABLE)} has a data set here")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.sw.models.zoo import DIGITS_CHECKPOINT
    from vitaccel.sw.train import train_digits_vit

    output = args.output or DIGITS_CHECKPOINT
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, disable=args.quiet) as bar:
        task = bar.add_task("training", total=args.epochs)

        def progress(epoch: int, epochs: int, loss: float) -> None:
            bar.update(task, completed=epoch, description=f"epoch {epoch} loss {loss:.3f}")

        try:
            _, accuracy = train_digits_vit(args.epochs, output=output, progress=progress)
        except OSError as err:
            raise UserError(f"cannot write {output}: {err.strerror}") from None
    console.print(f"digits-vit: test top-1 {accuracy:.4f} (float); saved {output}")
    return 0
