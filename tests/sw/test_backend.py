"""The back end: compiled digits-vit is bit-exact with the layer-by-layer reference on the
golden machine, for every tensor; views, tiling limits and token scheduling checked."""


import numpy as np
import pytest
import torch

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode
from vitaccel.sim.golden.machine import GoldenMachine
from vitaccel.sw.backend import BackendError, compile_qgraph
from vitaccel.sw.backend.memory import TensorView
from vitaccel.sw.data import images_for
from vitaccel.sw.device import GoldenDevice, open_device
from vitaccel.sw.commands import UserError
from vitaccel.sw.models.zoo import ZOO
from vitaccel.sw.program import load_program, write_program
from vitaccel.sw.qgraph import QGraph, QOp, QTensor
from vitaccel.sw.quantize import quantize_model
from vitaccel.sw.reference import quantize_images, run_reference

CONFIG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def digits_qgraph():
    torch.manual_seed(0)
    model = ZOO["digits-vit"]().eval()  # random weights: bit-exactness does not need training
    shape = model.input_shape
    return quantize_model(model, shape, images_for(shape, 8, split="train").images, config=CONFIG,
                          name="digits-vit")


@pytest.fixture(scope="module")
def digits_program(digits_qgraph):
    return compile_qgraph(digits_qgraph, CONFIG)


@pytest.fixture(scope="module")
def digits_program_all_tensors(digits_qgraph):
    return compile_qgraph(digits_qgraph, CONFIG, reuse_ddr=False)


def test_digits_vit_bit_exact_on_every_tensor(digits_qgraph, digits_program_all_tensors):
    digits_program = digits_program_all_tensors
    images = quantize_images(digits_qgraph, images_for((1, 8, 8), 4).images)
    reference = run_reference(digits_qgraph, images)
    machine = GoldenMachine(CONFIG)
    spec = digits_program.manifest["inputs"][0]
    checked = [t["name"] for t in digits_program.manifest["tensors"] if t["name"] not in digits_qgraph.constants]
    assert len(checked) >= len(digits_qgraph.ops)
    for index, image in enumerate(images):
        ddr = digits_program.fresh_ddr()
        ddr[spec["addr"]:spec["addr"] + image.nbytes] = image.view(np.uint8).ravel()
        stats = machine.run(digits_program.words, ddr)
        for name in checked:
            np.testing.assert_array_equal(digits_program.tensor_values(ddr, name), reference[name][index],
                                          err_msg=f"tensor {name}, image {index}")
    assert stats.macs == digits_program.manifest["macs"] > 0
    assert stats.instructions[Opcode.GEMM] == digits_program.manifest["instruction_counts"]["GEMM"]


def test_ddr_reuse_shrinks_the_image_and_keeps_outputs_exact(digits_qgraph, digits_program,
                                                            digits_program_all_tensors):
    assert digits_program.ddr_size < digits_program_all_tensors.ddr_size
    assert digits_program.words != digits_program_all_tensors.words
    kept = {t["name"] for t in digits_program.manifest["tensors"] if t["kept"]}
    assert set(digits_qgraph.outputs) <= kept and len(kept) < len(digits_program.manifest["tensors"])
    images = quantize_images(digits_qgraph, images_for((1, 8, 8), 6).images)
    logits = GoldenDevice(digits_program).infer_batch(images)
    want = run_reference(digits_qgraph, images, keep_all=False)[digits_qgraph.outputs[0]]
    np.testing.assert_array_equal(logits, want)


def test_program_directory_round_trip_and_device(tmp_path, digits_qgraph, digits_program):
    write_program(tmp_path, digits_program)
    assert {p.name for p in tmp_path.iterdir()} == {"program.bin", "ddr.bin", "manifest.json", "program.lst"}
    loaded = load_program(tmp_path)
    assert loaded.words == digits_program.words and loaded.config == CONFIG
    listing = (tmp_path / "program.lst").read_text().splitlines()
    assert len(listing) == len(loaded.words) and "FINISH" in listing[-1]
    layers = loaded.manifest["layers"]
    assert [layer["kind"] for layer in layers] == [op.kind for op in digits_qgraph.ops]
    assert sum(layer["macs"] for layer in layers) == loaded.manifest["macs"]
    image = quantize_images(digits_qgraph, images_for((1, 8, 8), 1).images)
    logits = GoldenDevice(loaded).infer(image[0])[0]
    np.testing.assert_array_equal(logits, run_reference(digits_qgraph, image, keep_all=False)[digits_qgraph.outputs[0]][0])
    with pytest.raises(UserError, match="needs PYNQ"):  # no board here
        open_device("board", loaded)


def test_dependency_tokens_are_needed(digits_qgraph, digits_program):
    """Without its tokens the eager machine lets loads overwrite buffers still in use."""
    stripped = [isa.encode(isa.decode(w).replace(pop_prev=0, pop_next=0, push_prev=0, push_next=0))
                for w in digits_program.words[:-1]] + [isa.encode(isa.Instruction(Opcode.FINISH))]
    images = quantize_images(digits_qgraph, images_for((1, 8, 8), 1).images)
    spec, out = digits_program.manifest["inputs"][0], digits_program.manifest["outputs"][0]
    results = []
    for words in (digits_program.words, stripped):
        ddr = digits_program.fresh_ddr()
        ddr[spec["addr"]:spec["addr"] + images[0].nbytes] = images[0].view(np.uint8).ravel()
        try:
            GoldenMachine(CONFIG).run(words, ddr)
        except Exception as err:  # FINISH with queued work is also a detection
            results.append(type(err).__name__)
            continue
        results.append(ddr[out["addr"]:out["addr"] + 10].copy())
    assert not (isinstance(results[1], np.ndarray) and np.array_equal(results[0], results[1]))


def test_zcu102_tiles_are_larger_than_tiny(digits_qgraph, digits_program):
    big = compile_qgraph(digits_qgraph, PRESETS["zcu102"])
    assert big.manifest["macs"] == digits_program.manifest["macs"]
    assert big.manifest["instruction_counts"]["GEMM"] <= digits_program.manifest["instruction_counts"]["GEMM"]


def test_unsupported_op_names_op_and_source():
    tensors = {"x": QTensor("x", (4, 8), "int8", 0.1), "i": QTensor("i", (2,), "int32", 1.0),
               "y": QTensor("y", (2, 8), "int8", 0.1)}
    graph = QGraph(tensors, [QOp("gather_tokens", ["x", "i"], "y", source="model.py:12")], ["x"], ["y"],
                   {"i": np.array([0, 2], dtype=np.int32)})
    with pytest.raises(BackendError, match=r"gather_tokens.*model\.py:12"):
        compile_qgraph(graph, CONFIG)


def test_tile_too_large_for_buffers_is_a_clear_error():
    k = 4096  # one row of A does not fit a 2 KiB input slot
    config = CONFIG.replace(input_spad_kib=2)
    tensors = {"x": QTensor("x", (2, k), "int8", 0.1), "w": QTensor("w", (k, 4), "int8", 0.1),
               "b": QTensor("b", (4,), "int32", 0.01), "y": QTensor("y", (2, 4), "int8", 0.1)}
    op = QOp("linear", ["x", "w", "b"], "y", {"multiplier": np.full(4, 1 << 30), "shift": np.full(4, 40)},
             source="fc")
    graph = QGraph(tensors, [op], ["x"], ["y"], {"w": np.ones((k, 4), np.int8), "b": np.zeros(4, np.int32)})
    with pytest.raises(BackendError, match="does not fit"):
        compile_qgraph(graph, config)


def _check(view, array, ddr):
    np.testing.assert_array_equal(view.numpy(ddr), array)


def test_tensor_views_match_numpy():
    rng = np.random.default_rng(7)
    base = rng.integers(-128, 128, size=(6, 40), dtype=np.int8)
    ddr = base.view(np.uint8).ravel().copy()
    x = TensorView.contiguous(0, base.shape, "int8")
    # split_heads: [T, 2*4*5] -> [T, 2, 4, 5][:, 1] -> [4, T, 5]
    heads = x.reshape((6, 2, 4, 5)).index(1, 1).transpose((1, 0, 2))
    _check(heads, base.reshape(6, 2, 4, 5)[:, 1].transpose(1, 0, 2), ddr)
    # merging those heads back is a view (columns 20..39); merging contiguous heads is not
    _check(heads.transpose((1, 0, 2)).reshape((6, 20)), base[:, 20:40], ddr)
    stacked = TensorView.contiguous(0, (4, 6, 10), "int8")
    assert stacked.transpose((1, 0, 2)).reshape((6, 40)) is None
    # column slices keep dense rows; splitting their last axis is still a view
    cols = x.slice(1, 10, 30)
    assert cols.rows_contiguous() and not cols.is_contiguous()
    _check(cols.reshape((6, 4, 5)), base[:, 10:30].reshape(6, 4, 5), ddr)
    # a row of a contiguous matrix flattens; a transposed matrix has no dense rows
    _check(x.index(0, 3).reshape((2, 20)), base[3].reshape(2, 20), ddr)
    assert not x.transpose((1, 0)).rows_contiguous()
    _check(x.transpose((1, 0)), base.T, ddr)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["tiny", "zcu102"])
def test_deit_tiny_bit_exact_on_every_tensor(config_name):
    """Full DeiT-T shapes (197 tokens): heavy tiling on tiny, large tiles on zcu102."""
    from vitaccel.sw.models.zoo import get_model

    net, shape = get_model("deit-tiny")
    images = images_for(shape, 1).images
    qgraph = quantize_model(net, shape, images, config=PRESETS[config_name])
    codes = quantize_images(qgraph, images)
    reference = run_reference(qgraph, codes)
    program = compile_qgraph(qgraph, PRESETS[config_name], reuse_ddr=False)
    ddr = program.fresh_ddr()
    spec = program.manifest["inputs"][0]
    ddr[spec["addr"]:spec["addr"] + codes[0].nbytes] = codes[0].view(np.uint8).ravel()
    GoldenMachine(PRESETS[config_name]).run(program.words, ddr)
    for entry in program.manifest["tensors"]:
        if entry["name"] not in qgraph.constants:
            np.testing.assert_array_equal(program.tensor_values(ddr, entry["name"]), reference[entry["name"]][0],
                                          err_msg=entry["name"])


def test_ddr_allocator_reuses_freed_activations_but_not_for_constants():
    from vitaccel.sw.backend.memory import DdrAllocator

    alloc = DdrAllocator()
    const = alloc.allocate("w", 100, permanent=True)
    a, b = alloc.allocate("a", 64), alloc.allocate("b", 32)
    alloc.free(a)
    alloc.free(b)                                   # coalesces with a's block
    assert alloc.free_list == [(a, 96)]
    assert alloc.allocate("c", 80) == a             # first fit into the freed space
    later_const = alloc.allocate("w2", 16, permanent=True)
    assert later_const >= a + 96                    # constants never land in reused space
    assert alloc.owner(a + 10) == a and alloc.owner(const + 99) == const
    with pytest.raises(AssertionError):
        alloc.free(const)
