"""Calibration evidence: micro-programs in RTL on the board-like DDR against the model.

Each micro-program exercises one thing (SYNCs: scan and fetch; one LOAD shape; one compute
opcode between its LOADs and its STORE, built by the generators of
:mod:`vitaccel.sim.cases.accel`). Every one runs in its own launch of the system testbench
(about 10 s each on ``tiny``), one image, DDR ``zcu102-ps-ddr4-hp``; the table gives RTL and
model TOTAL_CYCLES and busy cycles per queue. ``docs/perf_model.md`` records the result.

    python -m vitaccel.sim.perf.calibrate --config tiny [--only gemm_17x17x16,sync_100] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.config import AccelConfig, load_config
from vitaccel.hw.spec.isa import Buffer, Instruction, Opcode, Queue, encode

from . import BOARD_DDR_MODEL, estimate

__all__ = ["micro_programs", "calibrate"]

#: DDR window of every micro-program.
DDR_BYTES = 16384


def _load(buffer: Buffer, dram: int, rows: int, row_bytes: int, *, push: bool) -> int:
    return encode(Instruction(Opcode.LOAD, buffer=buffer, sram_addr=0, dram_addr=dram, rows=rows,
                              row_bytes=row_bytes, dram_stride=row_bytes, sram_stride=row_bytes,
                              push_next=int(push)))


def micro_programs(config: AccelConfig) -> dict[str, Callable[[], tuple[list[int], np.ndarray]]]:
    """Name -> builder of (words, DDR image); seeded, so every call builds the same program."""
    from vitaccel.sim.cases import accel as cases

    empty = np.zeros(DDR_BYTES, np.uint8)
    finish = encode(Instruction(Opcode.FINISH))
    programs: dict[str, Callable[[], tuple[list[int], np.ndarray]]] = {}
    for count in (10, 100, 300):
        programs[f"sync_{count}"] = (lambda count=count: (
            [encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE))] * count + [finish], empty))
    for name, (buffer, dram, rows, row_bytes) in {
            "load_64x4": (Buffer.WEIGHT, 0, 64, 4), "load_1x4096": (Buffer.INPUT, 256, 1, 4096),
            "load_17x64": (Buffer.VECTOR, 8192, 17, 64), "load_3x256_unaligned": (Buffer.ACC, 3, 3, 256)}.items():
        programs[name] = (lambda args=(buffer, dram, rows, row_bytes): (
            [_load(*args, push=True), encode(Instruction(Opcode.FINISH, pop_prev=1))], empty))

    def seeded(generator, seed: int, **kwargs):
        def build():
            out = generator(random.Random(seed), config, DDR_BYTES, **kwargs)
            return (out, empty) if isinstance(out[0], int) else (out[0], np.asarray(out[1], np.uint8))
        return build

    programs.update({
        "gemm_17x64x64_t": seeded(cases.gemm_program, 2, m=17, k=64, n=64, b_transposed=True),
        "gemm_17x17x16": seeded(cases.gemm_program, 3, m=17, k=17, n=16),
        "gemm_17x16x17_raw": seeded(cases.gemm_program, 4, m=17, k=16, n=17, b_transposed=True, requant=False,
                                    bias=False),
        "gelu_17x32": seeded(cases.gelu_program, 5, rows=17, cols=32),
        "layernorm_17x64": seeded(cases.layernorm_program, 6, rows=17, cols=64, out_scale=0.05),
        "softmax_17x17": seeded(cases.softmax_program, 7, rows=17, cols=17, input_scale=0.05, spread=200),
        "softmax_8x65": seeded(cases.softmax_program, 8, rows=8, cols=65, input_scale=0.05, spread=200),
        "add_17x64": seeded(cases.add_program, 9, rows=17, cols=64, a_multiplier=1 << 20, b_multiplier=1 << 20,
                            shift=21),
        "topk_sum_17": seeded(cases.topk_program, 10, rows=17, n=17, k=12, sum_rows=True),
        "gather_12x64": seeded(cases.gather_program, 11, rows=12, n=17, cols=64),
        "requant_17x16": seeded(cases.requant_program, 12, rows=17, cols=16),
    })
    return programs


def calibrate(config: AccelConfig, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the micro-programs ``names`` (default: all) in RTL and in the model; one row each."""
    from vitaccel.sim.cases.system import simulate_runs

    programs = micro_programs(config)
    unknown = sorted(set(names or ()) - set(programs))
    if unknown:
        raise KeyError(f"unknown micro-programs {unknown}: use {', '.join(programs)}")
    rows = []
    for name in names or list(programs):
        words, ddr = programs[name]()
        record = simulate_runs(config, list(words), [ddr.copy()], ddr_model=BOARD_DDR_MODEL.name)["records"][0]
        model = estimate(config, list(words), DDR_BYTES).to_dict()
        row = {"program": name, "rtl": record["total_cycles"], "perf": model["cycles"],
               "error": (model["cycles"] - record["total_cycles"]) / record["total_cycles"]}
        for queue in ("load", "compute", "store"):
            row[f"busy_{queue}"] = [record[f"busy_cycles_{queue}"], model[f"busy_cycles_{queue}"]]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--only", default=None, help="comma-separated micro-program names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = calibrate(load_config(args.config), args.only.split(",") if args.only else None)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(f"{row['program']:22} rtl {row['rtl']:8} perf {row['perf']:8} {100 * row['error']:+6.2f} %  "
                  + "  ".join(f"busy {q} {row[f'busy_{q}'][0]}/{row[f'busy_{q}'][1]}"
                              for q in ("load", "compute", "store")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
