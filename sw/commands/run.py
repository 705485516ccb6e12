"""``vitaccel run DIR --backend golden|perf|rtl|board``: run a compiled program and report accuracy."""

from __future__ import annotations

import argparse
import json
import textwrap


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a compiled program on its test images",
        description=textwrap.dedent("""\
            Run the program in DIR (written by `vitaccel compile`) on the model's test images
            (digits-vit: the digits test split; DeiT: fixed generated images) and compare the int8
            logits with the float model.

            --backend rtl runs the emitted Verilog of the program's config under cocotb (Verilator,
            or Icarus with --simulator icarus): cocotbext-axi's AxiRam is the DDR (random
            back-pressure and read latency), the runtime's register driver the host. All images run
            in one simulator launch, each checked byte for byte against the golden machine; the
            result adds cycles (TOTAL_CYCLES), bit_exact_vs_golden and simulator. The first run of a
            config builds the Verilog (minutes, then cached in ~/.cache/vitaccel/rtl); digits-vit on
            tiny simulates about 0.7 M cycles per image: a few minutes for 2 images. A run that
            stops with an error code fails naming the code, the instruction and its layer.
            --backend perf runs the golden machine for the values and the performance model
            (vitaccel.sim.perf, docs/perf_model.md) for the cycles: cycles, and under perf the RTL
            counters' estimates (busy/stall per queue, engine_busy_cycles, DMA bytes), in seconds.
            --ddr-model names the DDR: for perf the board-like zcu102-ps-ddr4-hp by default; for rtl
            it replaces the random back-pressure by that deterministic model (latency records).
            --backend board runs the same driver on a ZCU102 through PYNQ.

            Speed: device_vs_torch is the device's seconds over the float PyTorch model's
            (rebuilt from the manifest) on the same images in the same batches (--batch), both
            on one thread; golden and perf runs are warmed up once and the fastest of up to 3
            interleaved runs counts. `timing` in the output says how each side was timed."""),
        epilog="examples:\n  vitaccel run out/digits --backend golden --json\n"
               "  vitaccel run out/digits --backend rtl --images 2 --json\n"
               "  vitaccel run out/digits --backend rtl --images 1 --waves\n"
               "  vitaccel run out/digits --backend perf --json\n"
               "  vitaccel run out/digits --backend rtl --images 1 --ddr-model zcu102-ps-ddr4-hp --json\n"
               "  vitaccel run out/deit-s --backend golden --images 2\n"
               "  vitaccel run out/deit-s --images 4 --batch 1 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--backend", default="golden", choices=("golden", "perf", "rtl", "board"),
                        help="golden machine, performance model, RTL simulation or board (default: golden)")
    parser.add_argument("--images", type=int, default=None, metavar="N",
                        help="number of images (default: the whole digits test split, or 8 generated; "
                             "rtl: 2); at most the images whose float outputs the program stores "
                             "(digits: 449; generated: 64, or 16 for inputs above 64x64)")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="images per batch (default: all in one batch): the golden machine runs each "
                             "instruction once per batch; the float model is timed on the same batches "
                             "for device_vs_torch")
    parser.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"),
                        help="rtl backend: the simulator (default: verilator)")
    parser.add_argument("--waves", action="store_true",
                        help="rtl backend: dump waveforms (VCD from Verilator, FST from Icarus; large) and "
                             "print their path")
    parser.add_argument("--seed", type=int, default=0,
                        help="rtl backend: seed of the random AXI back-pressure and read latency (default: 0)")
    parser.add_argument("--ddr-model", default=None, metavar="NAME",
                        help="perf and rtl backends: the DDR model (perf default: zcu102-ps-ddr4-hp; rtl "
                             "default: random back-pressure)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.sw.commands import UserError
    from vitaccel.sw.run import run_program_dir

    options = {}
    if args.backend == "rtl":
        options = {"simulator": args.simulator, "waves": args.waves, "seed": args.seed, "ddr_model": args.ddr_model}
    elif args.waves or args.simulator != "verilator":
        raise UserError("--waves and --simulator apply to --backend rtl only")
    if args.backend == "perf" and args.ddr_model is not None:
        options = {"ddr_model": args.ddr_model}
    elif args.ddr_model is not None and args.backend != "rtl":
        raise UserError("--ddr-model applies to --backend perf and rtl only")
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TimeElapsedColumn(), console=console,
                  disable=args.json or not console.is_terminal, transient=True) as bar:
        task = bar.add_task("running", total=1.0)
        result = run_program_dir(args.directory, backend=args.backend, images=args.images, batch=args.batch,
                                 device_options=options,
                                 progress=lambda text, fraction: bar.update(task, description=text,
                                                                           completed=fraction),
                                 notice=lambda text: console.print(f"vitaccel run: note: {text}", markup=False,
                                                                   highlight=False, soft_wrap=True))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    out = Console()
    for key, value in result.items():
        out.print(f"{key:>24}: {value}")
    return 0
