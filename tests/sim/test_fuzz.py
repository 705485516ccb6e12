"""Fuzzing the golden machine against the RTL: generators, oracle, shrinking, the command."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import load_config
from vitaccel.hw.spec.isa import Buffer, Instruction, Opcode, encode
from vitaccel.sim.regress.fuzz import judge, replay, run_fuzz
from vitaccel.sim.regress.fuzz_check import Outcome, compare, golden_outcome, ordering
from vitaccel.sim.regress.fuzz_gen import (KINDS, MUTATIONS, SEEDS, FuzzProgram, crc_of, generate, mutate,
                                           _seed_program)
from vitaccel.sim.runner import simulator_available

TINY = load_config("tiny")


def test_generator_is_deterministic_per_seed():
    first = [generate(TINY, 11, i) for i in range(60)]
    again = [generate(TINY, 11, i) for i in range(60)]
    other = [generate(TINY, 12, i) for i in range(60)]
    for a, b in zip(first, again):
        assert (a.kind, a.origin, a.change, a.words, a.checksum) == (b.kind, b.origin, b.change, b.words, b.checksum)
        assert np.array_equal(a.ddr, b.ddr)
    assert [p.words for p in first] != [p.words for p in other]
    assert {p.kind for p in first} == set(KINDS)
    record = first[3].to_dict()
    back = FuzzProgram.from_dict(json.loads(json.dumps(record)))
    assert back.words == first[3].words and np.array_equal(back.ddr, first[3].ddr)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_mutation_changes_the_program(mutation):
    rng = random.Random(5)
    for _ in range(40):
        _, words, _ = _seed_program(rng, TINY)
        new, change = mutate(rng, words, TINY, mutation)
        assert new != words, change
        assert change


def test_checksums_follow_the_kind():
    programs = [generate(TINY, 3, i) for i in range(300)]
    for p in programs:
        if p.kind == "mutation":
            assert p.checksum == crc_of(p.words)          # recomputed: the change is meant
        elif p.kind == "corruption":
            assert p.checksum != crc_of(p.words)          # stale: a corruption
    verdicts = judge(TINY, [p for p in programs if p.kind == "corruption"], backend="golden")
    assert verdicts and all(v["golden"]["code"] == "PROGRAM_CHECKSUM" for v in verdicts)


def test_seed_programs_are_valid_and_race_free():
    from vitaccel.sim.golden.machine import GoldenMachine

    rng = random.Random(9)
    seen = set()
    for _ in range(120):
        name, words, ddr = _seed_program(rng, TINY)
        seen.add(name)
        assert not ordering(words).racy, name
        GoldenMachine(TINY).run(words, ddr.copy())
    assert seen == set(SEEDS)


def _dma(opcode, **fields):
    return Instruction(opcode, buffer=Buffer.VECTOR, rows=1, row_bytes=16, dram_stride=16, sram_stride=16, **fields)


def test_ordering_finds_races_and_token_order():
    ordered = [encode(_dma(Opcode.LOAD, push_next=1)),
               encode(Instruction(Opcode.SYNC, queue=isa.Queue.COMPUTE, pop_prev=1, push_next=1)),
               encode(_dma(Opcode.STORE, dram_addr=64, pop_prev=1, push_prev=1)),
               encode(Instruction(Opcode.FINISH, pop_next=1))]
    assert ordering(ordered).racy == ""
    # Without the tokens the STORE reads the VECTOR bytes the LOAD writes, in another queue.
    racy = [encode(_dma(Opcode.LOAD)), encode(_dma(Opcode.STORE, dram_addr=64)), encode(Instruction(Opcode.FINISH))]
    assert "race" in ordering(racy).racy or "FINISH" in ordering(racy).racy
    order = ordering(ordered)
    assert order.ordered(0, 2) and order.ordered(0, 3)


def test_compare_reports_a_ddr_difference_and_accepts_equal_runs():
    program = generate(TINY, 1, 0)
    words = [encode(_dma(Opcode.LOAD, push_next=1)), encode(Instruction(Opcode.SYNC, queue=isa.Queue.COMPUTE,
                                                                      pop_prev=1, push_next=1)),
             encode(_dma(Opcode.STORE, dram_addr=64, pop_prev=1, push_prev=1)), encode(Instruction(Opcode.FINISH, pop_next=1))]
    program = FuzzProgram(1, 0, "mutation", "dma", "", tuple(words), np.arange(4096, dtype=np.uint8), crc_of(words))
    from vitaccel.sim.golden.machine import GoldenMachine

    golden = golden_outcome(GoldenMachine(TINY), program)
    assert golden.code == "NONE"
    same = Outcome("NONE", None, golden.ddr.copy(), retired=4)
    assert compare(program, golden, same, TINY) == ("passed", [])
    wrong = golden.ddr.copy()
    wrong[70] ^= 1
    status, problems = compare(program, golden, Outcome("NONE", None, wrong, retired=4), TINY)
    assert status == "failed" and "0x46" in problems[0]
    status, problems = compare(program, golden, Outcome("ADDRESS_OUT_OF_RANGE", 2), TINY)
    assert status == "failed"
    assert compare(program, golden, Outcome("HANG"), TINY)[0] == "hang"


def test_golden_fuzz_run_passes(tmp_path):
    document = run_fuzz(TINY, config_source="tiny", count=20, seed=4, backend="golden", out_dir=tmp_path)
    assert document["programs"] == 20 and document["failed"] == 0 and document["hangs"] == 0
    assert document["passed"] == 20 and not list(tmp_path.iterdir())


def test_shrinking_finds_a_minimal_reproducer_of_an_injected_golden_bug(tmp_path, monkeypatch):
    from vitaccel.sim.golden import machine

    original = machine.GoldenMachine._add

    def broken_add(self, instr, pc):
        if instr.rows > 1:
            raise RuntimeError("injected golden bug")
        return original(self, instr, pc)

    monkeypatch.setattr(machine.GoldenMachine, "_add", broken_add)
    document = run_fuzz(TINY, config_source="tiny", count=120, seed=2, backend="golden", out_dir=tmp_path)
    assert document["failed"] > 0
    failure = document["failures"][0]
    assert "injected golden bug" in failure["problems"][0]
    assert failure["fails_alone"] and failure["shrunk_words"] == 1
    saved = json.loads((tmp_path / failure["reproducer"].split("/")[-1]).read_text())
    shrunk = FuzzProgram.from_dict(saved["shrunk"])
    instr = isa.decode(shrunk.words[0])
    assert instr.opcode is Opcode.ADD and instr.rows > 1
    assert all(value == 0 for name, value in instr.fields.items() if name != "rows")  # every other field zeroed
    assert not shrunk.ddr.any()
    assert "--replay" in failure["reproduce"]
    again = replay(tmp_path / failure["reproducer"].split("/")[-1])
    assert again["status"] == "failed"
    monkeypatch.setattr(machine.GoldenMachine, "_add", original)
    assert replay(tmp_path / failure["reproducer"].split("/")[-1])["status"] == "passed"


def test_cli_golden_fuzz_json(tmp_path, capsys):
    from vitaccel.sw.cli import main

    code = main(["regress", "--config", "tiny", "--fuzz", "20", "--backend", "golden", "--seed", "5", "--json",
                 "--jobs", "1", "--fuzz-out", str(tmp_path)])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"programs", "passed", "failed", "hangs", "backend", "seed", "duration_s"} <= set(document)
    assert (document["programs"], document["failed"], document["hangs"], document["seed"]) == (20, 0, 0, 5)


def test_cli_rejects_bad_fuzz_arguments(capsys):
    from vitaccel.sw.cli import main

    assert main(["regress", "--config", "tiny", "--fuzz", "0", "--backend", "golden"]) == 2
    assert "--fuzz" in capsys.readouterr().err
    assert main(["regress", "--config", "tiny", "--replay", "/nonexistent.json", "--backend", "golden"]) == 2
    assert "cannot read reproducer" in capsys.readouterr().err


@pytest.mark.cocotb
@pytest.mark.skipif(simulator_available("verilator") is not None, reason="Verilator is not installed")
def test_rtl_fuzz_batch_agrees_with_golden(tmp_path):
    document = run_fuzz(TINY, config_source="tiny", count=20, seed=1, backend="rtl", out_dir=tmp_path,
                        shrink=False)
    assert document["programs"] == 20
    assert document["failed"] == 0 and document["hangs"] == 0, document["failures"]
    assert document["batches"] == 1          # one simulator launch for the whole batch


from test_regress import dask_cluster  # noqa: E402,F401 - the module's Dask scheduler + workers fixture


def test_dask_cluster_runs_the_same_fuzz_batches(tmp_path, dask_cluster):
    local = run_fuzz(TINY, config_source="tiny", count=40, seed=8, backend="golden", batch=10, out_dir=tmp_path)
    remote = run_fuzz(TINY, config_source="tiny", count=40, seed=8, backend="golden", batch=10, out_dir=tmp_path,
                      scheduler=dask_cluster)
    assert remote["batches"] == 4 and remote["where"].startswith("Dask")
    keys = ("programs", "passed", "failed", "hangs", "exact")
    assert {k: remote[k] for k in keys} == {k: local[k] for k in keys}
    assert remote["programs"] == 40 and remote["failed"] == 0


def test_compare_accepts_only_what_the_hardware_may_do():
    # LOAD (load queue) and a GEMM (compute queue) with no token between them: either may
    # fault first. With a token from the LOAD to the GEMM, the LOAD's fault comes first.
    load = _dma(Opcode.LOAD, dram_addr=8000)                      # past the 4 KiB window
    gemm = Instruction(Opcode.GEMM, m=1, k=1, n=1, a_addr=1 << 14)  # past INPUT
    finish = Instruction(Opcode.FINISH)
    loose = [encode(load), encode(gemm), encode(finish)]
    tied = [encode(load.replace(push_next=1)), encode(gemm.replace(pop_prev=1)), encode(finish)]
    ddr = np.zeros(4096, np.uint8)
    golden = Outcome("ADDRESS_OUT_OF_RANGE", 0)
    for words, status in ((loose, "racy"), (tied, "failed")):
        program = FuzzProgram(0, 0, "mutation", "gemm", "", tuple(words), ddr, crc_of(words))
        assert compare(program, golden, Outcome("ADDRESS_OUT_OF_RANGE", 1), TINY)[0] == status
    # A GEMM with accumulate and requant is documented as unsupported in the RTL: INVALID_OPERAND
    # there is accepted when the golden run gets there, not when a token wait keeps it from running.
    attn = Instruction(Opcode.GEMM, m=1, k=1, n=1, accumulate=1, requant=1)
    words = [encode(attn), encode(finish)]
    program = FuzzProgram(0, 0, "random", "fields", "", tuple(words), ddr, None)
    assert compare(program, Outcome("NONE", None, ddr), Outcome("INVALID_OPERAND", 0), TINY)[0] == "unsupported"
    waiting = [encode(attn.replace(pop_next=1)), encode(finish)]
    program = FuzzProgram(0, 0, "random", "fields", "", tuple(waiting), ddr, None)
    assert compare(program, Outcome("DEPENDENCY_DEADLOCK", 0), Outcome("INVALID_OPERAND", 0), TINY)[0] == "failed"
