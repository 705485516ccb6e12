"""The QGraph contract (verify) and the integer reference on hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest

from vitaccel.hw.spec.nonlinear import add_params, gelu_table
from vitaccel.hw.spec.numerics import quantize_multiplier, requantize
from vitaccel.sim.golden import gemm, nonlinear
from vitaccel.sw.qgraph import QGraph, QGraphError, QOp, QTensor
from vitaccel.sw.reference import run_reference


def small_graph(rng: np.random.Generator) -> QGraph:
    """image [1,4,4] -> im2col(2) -> linear -> gelu -> add(residual) -> select_token."""
    t = {
        "image": QTensor("image", (1, 4, 4), "int8", 0.05),
        "cols": QTensor("cols", (4, 4), "int8", 0.05),
        "w": QTensor("w", (4, 6), "int8", 0.01),
        "b": QTensor("b", (6,), "int32", 0.0005),
        "y": QTensor("y", (4, 6), "int8", 0.04),
        "g": QTensor("g", (4, 6), "int8", 0.03),
        "s": QTensor("s", (4, 6), "int8", 0.06),
        "cls": QTensor("cls", (1, 6), "int8", 0.06),
    }
    constants = {"w": rng.integers(-127, 128, (4, 6)).astype(np.int8),
                 "b": rng.integers(-2000, 2000, 6).astype(np.int32)}
    q = quantize_multiplier(0.05 * 0.01 / 0.04)
    ops = [
        QOp("im2col", ["image"], "cols", {"patch": 2}),
        QOp("linear", ["cols", "w", "b"], "y", {"multiplier": np.full(6, q.multiplier), "shift": np.full(6, q.shift)}),
        QOp("gelu", ["y"], "g", {"table": gelu_table(0.04, 0.03)}),
        QOp("add", ["y", "g"], "s", {"params": add_params(0.04, 0.03, 0.06)}),
        QOp("select_token", ["s"], "cls", {"index": 1}),
    ]
    return QGraph(t, ops, ["image"], ["cls"], constants, {})


def test_reference_matches_golden_kernels_step_by_step():
    rng = np.random.default_rng(0)
    graph = small_graph(rng)
    graph.verify()
    images = rng.integers(-128, 128, (3, 1, 4, 4)).astype(np.int8)
    values = run_reference(graph, images)
    # im2col by hand: patch (py, px) flattened in (c, dy, dx) order
    cols = np.stack([np.stack([images[:, 0, 2 * py:2 * py + 2, 2 * px:2 * px + 2].reshape(3, 4)
                               for py in range(2) for px in range(2)], axis=1)])[0]
    np.testing.assert_array_equal(values["cols"], cols)
    op = graph.ops[1]
    y = gemm.linear(cols, graph.constants["w"], graph.constants["b"], op.attrs["multiplier"], op.attrs["shift"])
    np.testing.assert_array_equal(values["y"], y)
    g = nonlinear.gelu(y, graph.ops[2].attrs["table"])
    s = nonlinear.add(y, g, graph.ops[3].attrs["params"])
    np.testing.assert_array_equal(values["cls"], s[:, 1:2])
    assert values["cls"].dtype == np.int8 and values["cls"].shape == (3, 1, 6)


def test_reference_matmul_transpose_and_heads():
    rng = np.random.default_rng(1)
    t = {"image": QTensor("image", (1, 4, 4), "int8", 0.1),
         "x": QTensor("x", (4, 4), "int8", 0.1),
         "q": QTensor("q", (2, 4, 2), "int8", 0.1),
         "k": QTensor("k", (2, 4, 2), "int8", 0.1),
         "scores": QTensor("scores", (2, 4, 4), "int32", 0.01),
         "mixed": QTensor("mixed", (2, 4, 2), "int32", 0.2),
         "merged": QTensor("merged", (4, 4), "int8", 0.2)}
    ops = [QOp("reshape", ["image"], "x", {"shape": (4, 4)}),
           QOp("split_heads", ["x"], "q", {"num_heads": 2, "chunks": 1, "index": 0}),
           QOp("split_heads", ["x"], "k", {"num_heads": 2, "chunks": 1, "index": 0}),
           QOp("matmul", ["q", "k"], "scores", {"transpose_b": True, "requant": False}),
           QOp("matmul", ["q", "k"], "mixed", {"transpose_b": False, "requant": False}),
           QOp("merge_heads", ["q"], "merged", {})]
    # "mixed" is wrong on purpose below; first check verify catches the shape error
    graph = QGraph(t, ops, ["image"], ["merged"], {}, {})
    with pytest.raises(QGraphError, match="cannot multiply"):
        graph.verify()
    ops[4] = QOp("matmul", ["scores", "k"], "mixed", {})
    with pytest.raises(QGraphError, match="input 0"):
        graph.verify()
    ops[4] = QOp("matmul", ["q", "q"], "mixed", {"transpose_b": True, "requant": True,
                                                 "multiplier": 1 << 30, "shift": 33})
    t["mixed"] = QTensor("mixed", (2, 4, 4), "int8", 0.2)
    graph.outputs = ["merged", "mixed"]
    t["merged"] = QTensor("merged", (4, 4), "int8", 0.1)
    graph.verify()
    images = rng.integers(-128, 128, (2, 1, 4, 4)).astype(np.int8)
    values = run_reference(graph, images)
    x = images.reshape(2, 4, 4)
    heads = x.reshape(2, 4, 2, 2).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(values["q"], heads)
    np.testing.assert_array_equal(values["scores"], heads @ heads.transpose(0, 1, 3, 2).astype(np.int64))
    np.testing.assert_array_equal(values["mixed"], requantize(heads.astype(np.int64) @ heads.transpose(0, 1, 3, 2), 1 << 30, 33))
    np.testing.assert_array_equal(values["merged"], x)


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.ops.reverse(), "used before it is defined"),
    (lambda g: setattr(g.ops[1], "kind", "conv"), "unknown op kind"),
    (lambda g: g.tensors.__setitem__("y", QTensor("y", (4, 7), "int8", 0.04)), "output shape should be"),
    (lambda g: g.tensors.__setitem__("g", QTensor("g", (4, 6), "uint8", 0.03)), "output must be int8"),
    (lambda g: g.constants.__setitem__("w", np.zeros((4, 6), np.int16)), "constant 'w'"),
    (lambda g: g.tensors.__setitem__("cls", QTensor("cls", (1, 6), "int8", 0.5)), "keep the scale"),
    (lambda g: g.ops[1].attrs.__setitem__("shift", np.ones(5)), "one entry per output channel"),
    (lambda g: g.outputs.append("nowhere"), "never computed"),
])
def test_verify_catches_broken_graphs(mutate, message):
    graph = small_graph(np.random.default_rng(2))
    mutate(graph)
    with pytest.raises(QGraphError, match=message):
        graph.verify()


def test_bad_tensors_and_images_are_rejected():
    with pytest.raises(QGraphError, match="dtype must be"):
        QTensor("x", (2,), "float32", 1.0)
    with pytest.raises(QGraphError, match="scale must be"):
        QTensor("x", (2,), "int8", 0.0)
    graph = small_graph(np.random.default_rng(3))
    with pytest.raises(QGraphError, match="images must have shape"):
        run_reference(graph, np.zeros((2, 4, 4), np.int8))
    with pytest.raises(QGraphError, match="int8 codes"):
        run_reference(graph, np.zeros((2, 1, 4, 4), np.float32))


def test_reference_layout_ops_for_token_pruning():
    t = {"image": QTensor("image", (1, 4, 6), "int8", 0.1),
         "x": QTensor("x", (4, 6), "int8", 0.1),
         "keep": QTensor("keep", (2,), "int32", 1.0),
         "picked": QTensor("picked", (2, 6), "int8", 0.1),
         "head": QTensor("head", (1, 6), "int8", 0.1),
         "joined": QTensor("joined", (3, 6), "int8", 0.1),
         "cut": QTensor("cut", (3, 2), "int8", 0.1),
         "flipped": QTensor("flipped", (2, 3), "int8", 0.1)}
    ops = [QOp("reshape", ["image"], "x", {"shape": (4, 6)}),
           QOp("gather_tokens", ["x", "keep"], "picked", {}),
           QOp("select_token", ["x"], "head", {"index": 0}),
           QOp("concat", ["head", "picked"], "joined", {"axis": 0}),
           QOp("slice", ["joined"], "cut", {"axis": 1, "start": 2, "stop": 4}),
           QOp("transpose", ["cut"], "flipped", {"perm": (1, 0)})]
    graph = QGraph(t, ops, ["image"], ["flipped"], {"keep": np.array([3, 1], np.int32)}, {})
    graph.verify()
    images = np.arange(2 * 24).reshape(2, 1, 4, 6).astype(np.int8)
    values = run_reference(graph, images)
    x = images.reshape(2, 4, 6)
    np.testing.assert_array_equal(values["picked"], x[:, [3, 1]])
    expected = np.concatenate([x[:, :1], x[:, [3, 1]]], axis=1)[:, :, 2:4].transpose(0, 2, 1)
    np.testing.assert_array_equal(values["flipped"], expected)
    graph.ops[4].attrs["stop"] = 9
    with pytest.raises(QGraphError, match="outside axis"):
        graph.verify()
