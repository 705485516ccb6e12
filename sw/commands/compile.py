"""``vitaccel compile MODEL --config NAME -o DIR``: quantize and compile a ViT."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile", help="compile a PyTorch ViT into an accelerator program",
        description="Capture MODEL, quantize it to int8 with calibration images, tile and schedule it for "
                    "the config, and write program.bin, ddr.bin, manifest.json and program.lst to DIR.",
        epilog="examples:\n  vitaccel compile digits-vit --config tiny -o out/digits\n"
               "  vitaccel compile deit-small --config zcu102 --weights deit_small.pth -o out/deit-s\n"
               "  vitaccel compile my_model.py:build --config tiny -o out/mine\n"
               "  vitaccel compile digits-vit --prune-tokens 0.7@1,2,3 -o out/digits-pruned\n"
               "  vitaccel compile digits-vit --config tiny_nm24.json --nm 2:4 -o out/digits-nm\n"
               "  vitaccel compile digits-vit --sparse-attention 0.5 -o out/digits-sparse",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="zoo name (digits-vit, digits-vit-197, deit-tiny, deit-small, "
                                                       "deit-base) or path/to/file.py:function")
    parser.add_argument("--config", default="tiny", metavar="NAME|FILE", help="preset or JSON file (default: tiny)")
    parser.add_argument("--weights", metavar="FILE", help="state dict with timm/DeiT parameter names")
    parser.add_argument("--calib", type=int, default=None, metavar="N", help="calibration images (default: 32, or 4 for 224x224 models)")
    parser.add_argument("--method", default="minmax", choices=("minmax", "percentile"),
                        help="activation range observer (default: minmax)")
    parser.add_argument("--prune-tokens", metavar="KEEP[@P1,P2,..]", default=None,
                        help="EViT token pruning on the top-k engine: keep ratio KEEP of the non-CLS tokens "
                             "after blocks P1, P2, .. (1-based; default: SPViT's points scaled to the depth, "
                             "1,2,3 for 4 blocks), e.g. 0.7 or 0.7@1,2,3")
    parser.add_argument("--package-token", action="store_true",
                        help="with --prune-tokens: fuse the pruned tokens into one package token (SPViT)")
    parser.add_argument("--nm", metavar="N:M", default=None,
                        help="prune every block linear layer to N:M along its input by magnitude (no fine-tuning) "
                             "and run it on the sparse matrix engine; needs a config whose nm_sparsity is [N, M]")
    parser.add_argument("--sparse-attention", metavar="SPEC", default=None,
                        help="Sanger sparse attention, the mask predicted on chip from each image's Q and K. SPEC: "
                             "D or density=D, a target mean density 0 < D <= 1 that calibration turns into a margin "
                             "per layer (e.g. 0.5); or margin=N, one margin for every layer (0 <= N < 65536; "
                             "entries within N of the row's predicted maximum are kept). Attentions whose "
                             "probabilities token pruning reads stay dense")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="output directory: new, empty, or holding a program (replaced atomically)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty directory that holds other files than a program")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitaccel.sw.commands import UserError
    from vitaccel.sw.program import ProgramError, check_output_dir

    try:   # before the imports and the compile: a bad -o fails in a moment
        check_output_dir(args.output, force=args.force)
    except ProgramError as err:
        raise UserError(f"-o {args.output}: {err}") from None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.sw.compile import compile_model

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, disable=args.quiet or not console.is_terminal,
                  transient=False) as bar:
        task = bar.add_task("compiling", total=1.0)
        program = compile_model(args.model, args.config, args.output, weights=args.weights, calib=args.calib,
                                method=args.method, prune_tokens=args.prune_tokens,
                                package_token=args.package_token, nm=args.nm,
                                sparse_attention=args.sparse_attention, force=args.force,
                                progress=lambda text, fraction: bar.update(task, description=text, completed=fraction))
    m = program.manifest
    console.print(f"wrote {args.output}: {m['instructions']} instructions, {m['macs'] / 1e6:.1f} MMAC per image, "
                  f"DDR {m['ddr_size'] / 2**20:.1f} MiB, compiled in {m['compile_seconds']:.1f} s", soft_wrap=True)
    return 0
