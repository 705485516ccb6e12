"""Lowering of a :class:`~vitaccel.sw.qgraph.QGraph` to instructions.

Operations are tiled to the config's buffers and emitted through the double-buffered
:class:`~vitaccel.sw.backend.emitter.Pipeline` (loads of the next tile overlap compute of this
one and stores of the previous one). An activation stays on chip, in the arena half of the
VECTOR buffer (:mod:`~vitaccel.sw.backend.onchip`), when every reader can read it there (the
vector units' sources, a GEMM's A through ``a_vector``) and it fits: it is then neither stored
nor loaded, and no barrier follows its producer (producer and readers run in order on the
compute queue). Every other activation goes through DDR: its producer stores it, a pipeline
barrier follows, and its readers load it. Weights and parameters are always loaded.

Layout operations become strided views of DDR (no instructions) where the DMA's row strides
can read them, and LOAD/STORE copies through the vector buffer otherwise.

Token pruning runs on the top-k engine: ``token_scores`` emits nothing (TOPK and PACKAGE sum
the CLS rows of the attention probabilities over heads as they read them), ``topk`` is one
TOPK, ``gather_tokens`` and ``package_token`` are GATHER / PACKAGE tiled by columns.

Sparse attention (``sparse_attention`` ops, ``--sparse-attention``) is one SPARSE_ATTN per
head with ``predict=1``: the unit predicts and packs each image's mask on chip.

N:M sparse weights: on a config with ``nm_sparsity = (N, M)``, a linear layer whose int8
weight ``[K, N_out]`` is N:M sparse along K is stored compressed (``hw/spec/nm.py``: values,
then indices, each ``[ceil(K/M)*N, N_out]``) and runs as ``nm=1`` GEMMs, each tile's values and
indices loaded one after the other into WEIGHT (:func:`~vitaccel.hw.spec.isa.nm_weight_layout`);
its layer record counts the executed MACs and names the pattern (``nm``). Every other GEMM
(attention, dense layers) stays dense.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode, nm_weight_layout
from vitaccel.hw.spec.nm import NMWeights, compress, magnitude_keep_mask
from vitaccel.sw.backend.emitter import Pipeline, ProgramBuilder
from vitaccel.sw.backend.memory import DdrAllocator, TensorView, align
from vitaccel.sw.backend.onchip import Arena, Resident
from vitaccel.sw.backend.tiling import (MAX_COLS, MAX_GATHER_BYTES, MAX_M, MAX_N, MAX_PACKAGE_COLS, MAX_ROWS, SlotPlan,
                                        Tiler, blocks)
from vitaccel.sw.qgraph import QGraph, QOp

__all__ = ["BackendError", "Lowering", "LayerRecord"]

class BackendError(ValueError):
    """The back end cannot map an operation; the message names the op and its source."""


@dataclass
class LayerRecord:
    """One QGraph op in the manifest's per-layer table."""

    name: str
    kind: str
    shape: list[int]
    macs: int = 0
    first_instruction: int = 0
    instructions: int = 0
    source: str = ""
    #: For a linear layer run on N:M compressed weights: ``n``, ``m``, the dense ``k``, the
    #: compressed depth ``compressed_k`` (the rows each GEMM multiplies) and ``columns``.
    nm: dict[str, int] | None = None


def _load(buffer: Buffer, sram_addr: int, view: TensorView, rows: int, row_bytes: int,
          row_stride: int, sram_stride: int | None = None) -> Instruction:
    return Instruction(Opcode.LOAD, buffer=buffer, sram_addr=sram_addr, dram_addr=view.base, rows=rows,
                       row_bytes=row_bytes, dram_stride=row_stride,
                       sram_stride=row_bytes if sram_stride is None else sram_stride)


def _load_words(sram_addr: int, dram_addr: int, nbytes: int) -> Instruction:
    """LOAD of a parameter block of ``nbytes`` at ``dram_addr`` into ACC, as one row."""
    return Instruction(Opcode.LOAD, buffer=Buffer.ACC, sram_addr=sram_addr, dram_addr=dram_addr, rows=1,
                       row_bytes=nbytes, dram_stride=nbytes, sram_stride=nbytes)


def _store(buffer: Buffer, sram_addr: int, base: int, rows: int, row_bytes: int, row_stride: int) -> Instruction:
    return Instruction(Opcode.STORE, buffer=buffer, sram_addr=sram_addr, dram_addr=base, rows=rows,
                       row_bytes=row_bytes, dram_stride=row_stride, sram_stride=row_bytes)


def _unit(byte_addr: int) -> int:
    """The unit address of an on-chip byte address (which the lowering keeps aligned)."""
    if byte_addr % ADDR_UNIT:
        raise AssertionError(f"on-chip address {byte_addr} is not {ADDR_UNIT}-byte aligned")
    return byte_addr // ADDR_UNIT


def _block(view: TensorView, index: tuple[int, ...]) -> TensorView:
    """The 2-D block at ``index`` of the leading axes; 1-D views become one row."""
    if len(view.shape) == 1:
        return TensorView(view.base, (1, view.shape[0]), (0, view.strides[0]), view.dtype)
    for i in index:
        view = view.index(0, i)
    return view


def _a_rows(slot: SlotPlan, rows: TensorView, onchip: bool) -> tuple[int, list[Instruction]]:
    """A GEMM tile's A rows (``rows``: ``m x k``): their unit address in the VECTOR arena, read
    in place (``a_vector``), or a LOAD of them into the slot's INPUT region."""
    if onchip:
        return _unit(rows.base), []
    m, k = rows.shape
    addr = slot.take(Buffer.INPUT, m * k)
    return addr, [_load(Buffer.INPUT, addr, rows, m, k * rows.itemsize, rows.strides[0])]


def _copy_pieces(src: TensorView, dst: TensorView, cap: int, *,
                 contiguous_rows: bool = True) -> list[tuple[int, int, int, int, int, int, int]]:
    """The DMA pieces of copying ``src`` into ``dst`` (same shape), each at most ``cap`` bytes
    where rows allow: (src offset, src row stride, dst offset, dst row stride, rows, row bytes,
    element bytes). ``contiguous_rows``: prefer rows contiguous in the source, else in the
    destination (the DMA bursts across them); else rows along the longest axis."""
    if src.shape != dst.shape:
        raise AssertionError(f"copy of {src.shape} into {dst.shape}")
    isz = src.itemsize
    if len(src.shape) == 1:
        src = TensorView(src.base, (1,) + src.shape, (0,) + src.strides, src.dtype)
        dst = TensorView(dst.base, (1,) + dst.shape, (0,) + dst.strides, dst.dtype)
    # (src offset, src row stride, dst offset, dst row stride, rows, row bytes, element bytes)
    pieces: list[tuple[int, int, int, int, int, int, int]] = []
    if src.strides[-1] == isz and dst.strides[-1] == isz:
        # Rows along an axis whose rows are contiguous in the source, else in the destination
        # (the DMA then bursts across them), else the longest non-last axis; iterate the others.
        axes = list(range(len(src.shape) - 1))
        row_bytes = src.shape[-1] * isz
        row_axis = max(axes, key=lambda ax: (contiguous_rows and src.shape[ax] > 1 and src.strides[ax] == row_bytes,
                                             contiguous_rows and src.shape[ax] > 1 and dst.strides[ax] == row_bytes,
                                             src.shape[ax]))
        others = [ax for ax in axes if ax != row_axis]
        for index in itertools.product(*(range(src.shape[ax]) for ax in others)):
            s_off = src.base + sum(i * src.strides[ax] for i, ax in zip(index, others))
            d_off = dst.base + sum(i * dst.strides[ax] for i, ax in zip(index, others))
            rows, row_bytes = src.shape[row_axis], src.shape[-1] * isz
            step = max(1, min(rows, cap // max(row_bytes, 1), MAX_ROWS))
            for r0 in range(0, rows, step):
                r = min(step, rows - r0)
                pieces.append((s_off + r0 * src.strides[row_axis], src.strides[row_axis],
                               d_off + r0 * dst.strides[row_axis], dst.strides[row_axis], r, row_bytes, row_bytes))
    else:
        # Element-granular gather: one DMA per destination row (rows of one element each).
        axes = list(range(len(src.shape) - 1))
        for index in itertools.product(*(range(src.shape[ax]) for ax in axes)):
            s_off = src.base + sum(i * src.strides[ax] for i, ax in zip(index, axes))
            d_off = dst.base + sum(i * dst.strides[ax] for i, ax in zip(index, axes))
            pieces.append((s_off, src.strides[-1], d_off, dst.strides[-1], src.shape[-1], isz, isz))
    return pieces


class Lowering:
    """Lower one QGraph for one config into a :class:`ProgramBuilder` and a DDR image.

    After :meth:`run`: ``builder`` holds the program, ``ddr_image`` the initial DDR bytes
    (constants), ``ddr_size`` the bytes the program needs, ``views`` every tensor's DDR view,
    ``layers`` the per-op table. With ``reuse_ddr`` (the default) an activation's DDR block is
    reused once no later operation reads it, so after a run only constants, inputs and outputs
    still hold their values; ``reuse_ddr=False`` keeps every tensor (for debugging), in DDR.
    With ``onchip`` (the default, with ``reuse_ddr``) the upper half of VECTOR holds on-chip
    activations (``resident``; they have no DDR view); ``onchip=False`` sends every activation
    through DDR.
    """

    def __init__(self, qgraph: QGraph, config: AccelConfig, *, reuse_ddr: bool = True, onchip: bool = True) -> None:
        isa.check_config(config)
        self.reuse_ddr = reuse_ddr
        self.onchip = onchip and reuse_ddr
        self.graph = qgraph
        self.config = config
        self.builder = ProgramBuilder()
        self.pipeline = Pipeline(self.builder)
        vector = isa.buffer_bytes(config, Buffer.VECTOR)
        #: VECTOR bytes the tile slots share; the arena holds on-chip activations above them.
        self.slot_vector_bytes = vector // 2 if self.onchip else vector
        self.arena = Arena(self.slot_vector_bytes, vector)
        self.resident: dict[str, Resident] = {}
        self.tiler = Tiler(config, vector_bytes=self.slot_vector_bytes)
        self.alloc = DdrAllocator()
        self.views: dict[str, TensorView] = {}
        # Tensors never written to DDR: token scores, which the top-k engine sums from the
        # attention probabilities (TOPK sum_rows, PACKAGE) as it reads them; views of those rows.
        self.deferred: dict[str, TensorView] = {}
        #: Outputs of ops lowered together with the op before them (a softmax of scores).
        self.fused: set[str] = set()
        self.init: list[tuple[int, bytes]] = []
        self.layers: list[LayerRecord] = []
        self.op_constants: dict[tuple[str, str], int] = {}
        self.ddr_image = np.zeros(0, dtype=np.uint8)
        self.ddr_size = 0

    # -- DDR -----------------------------------------------------------------------------------

    def _constant(self, name: str, values: np.ndarray) -> int:
        data = np.ascontiguousarray(values).tobytes()
        addr = self.alloc.allocate(name, len(data), permanent=True)
        self.init.append((addr, data))
        return addr

    def _new_tensor(self, name: str, *, permanent: bool = False) -> TensorView:
        tensor = self.graph.tensors[name]
        nbytes = int(np.prod(tensor.shape)) * np.dtype(tensor.numpy_dtype).itemsize
        return TensorView.contiguous(self.alloc.allocate(name, nbytes, permanent=permanent), tensor.shape,
                                     tensor.dtype)

    def _release_dead(self, done: int) -> None:
        """Free activation blocks that no operation after op ``done`` reads (graph outputs stay)."""
        live: set[int] = set()
        for name, view in itertools.chain(self.views.items(), self.deferred.items()):
            if self.last_use.get(name, -1) > done or name in self.graph.outputs:
                owner = self.alloc.owner(view.base)
                if owner is not None:
                    live.add(owner)
        for start in self.alloc.activations():
            if start not in live:
                self.alloc.free(start)
        for name in [name for name in self.resident if self.last_use.get(name, -1) <= done]:
            self.arena.free(self.resident.pop(name).base)

    # -- driver --------------------------------------------------------------------------------

    def run(self, progress: Any = None) -> "Lowering":
        g = self.graph
        # Linear weights and biases are stored in the engine's own layout (transposed weights,
        # packed parameter blocks) by _op_linear; other constants are stored as they are.
        engine_only = {name for op in g.ops if op.kind == "linear" for name in op.inputs[1:3]}
        engine_only -= {name for op in g.ops if op.kind != "linear" for name in op.inputs}
        engine_only -= {name for op in g.ops if op.kind == "linear" for name in op.inputs[:1] + op.inputs[3:]}
        for name, value in g.constants.items():
            if name in engine_only:
                continue
            tensor = g.tensors[name]
            self.views[name] = TensorView.contiguous(self._constant(name, value.astype(tensor.numpy_dtype)),
                                                     tensor.shape, tensor.dtype)
        for name in g.inputs:
            self.views[name] = self._new_tensor(name, permanent=True)
        self.last_use = {name: index for index, op in enumerate(g.ops) for name in op.inputs}
        total = len(g.ops)
        for number, op in enumerate(g.ops):
            self.builder.tag = op.output
            first = len(self.builder.instructions)
            record = LayerRecord(op.output, op.kind, list(g.tensors[op.output].shape), source=op.source)
            handler = getattr(self, f"_op_{op.kind}", None)
            if handler is None:
                raise BackendError(f"{op!r}: the back end does not support {op.kind!r} ({op.source or 'no source'})")
            try:
                handler(op, record)
            except ValueError as err:
                if isinstance(err, BackendError):
                    raise
                raise BackendError(f"{op!r} ({op.source or 'no source'}): {err}") from None
            if self._stored_since(first):   # its output flows through DDR to later loads
                self.pipeline.barrier()
            if self.reuse_ddr:
                self._release_dead(number)
            record.first_instruction = first
            record.instructions = len(self.builder.instructions) - first
            self.layers.append(record)
            if progress is not None:
                progress(f"lowering {op.kind}", (number + 1) / total)
        self.builder.tag = "outputs"
        for name in g.outputs:
            if not self.views[name].is_contiguous():
                out = self._new_tensor(name)
                self._copy(self.views[name], out)
                self.pipeline.barrier()
                self.views[name] = out
        self.pipeline.finish()
        self.ddr_size = align(self.alloc.size)
        image_end = max((addr + len(data) for addr, data in self.init), default=0)
        self.ddr_image = np.zeros(align(image_end), dtype=np.uint8)
        for addr, data in self.init:
            self.ddr_image[addr:addr + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return self

    def _stored_since(self, first: int) -> bool:
        return any(instr.opcode is Opcode.STORE for instr in self.builder.instructions[first:])

    def _input(self, name: str) -> TensorView:
        """A view of tensor ``name`` whose rows are dense (copied if they are not)."""
        view = self.views[name]
        if view.rows_contiguous():
            return view
        dense = TensorView.contiguous(self.alloc.allocate(name + ".dense", view.nbytes), view.shape, view.dtype)
        self._copy(view, dense)
        self.pipeline.barrier()
        self.views[name] = dense
        return dense

    def _slot(self) -> SlotPlan:
        return SlotPlan(self.config, self.pipeline.slot, vector_bytes=self.slot_vector_bytes)

    # -- on-chip activations -------------------------------------------------------------------

    def _reads_on_chip(self, op: QOp, position: int) -> bool:
        """Whether ``op`` can read its input ``position`` from the arena (with the tiles it will use)."""
        tensor = self.graph.tensors[op.inputs[position]]
        shape, itemsize = tuple(tensor.shape), np.dtype(tensor.numpy_dtype).itemsize
        if op.kind in ("layernorm", "gelu", "add"):   # every row tile starts aligned
            return shape[-1] * itemsize % ADDR_UNIT == 0 and shape[-1] <= MAX_COLS
        if op.kind == "linear" and position == 0 and len(shape) == 2 and len(op.inputs) == 3:
            weight = self.graph.constants[op.inputs[1]]
            nmw = self._nm_weights(weight)
            nm = self.config.nm_sparsity if nmw is not None else None
            return self._single_m_tile(shape[0], shape[1], weight.shape[1], requant=True, has_params=True, nm=nm)
        if op.kind == "matmul" and position == 0 and len(shape) >= 2:
            out = self.graph.tensors[op.output]
            requant = bool(op.attrs.get("requant"))
            return self._single_m_tile(shape[-2], shape[-1], out.shape[-1], requant=requant, has_params=requant)
        return False

    def _single_m_tile(self, m: int, k: int, n: int, **plan: Any) -> bool:
        """A GEMM whose A is read in place takes all ``m`` rows in one tile (so ``a_addr`` is the
        block's, always aligned), whatever its output does."""
        m_tile, _ = self.tiler.gemm_tile(m, k, n, a_in_input=False, **plan)
        return k <= self.config.max_k and m_tile == m

    def _keep_on_chip(self, op: QOp) -> Resident | None:
        """An arena block for ``op``'s output if every reader reads it on chip and it fits, else None."""
        name = op.output
        if not self.onchip or name in self.graph.outputs:
            return None
        readers = [(reader, i) for reader in self.graph.consumers(name) for i, x in enumerate(reader.inputs)
                   if x == name]
        if not readers or not all(self._reads_on_chip(reader, i) for reader, i in readers):
            return None
        tensor = self.graph.tensors[name]
        shape = tuple(tensor.shape) if len(tensor.shape) >= 2 else (1,) + tuple(tensor.shape)
        layout = Resident(0, shape, tensor.dtype)
        reused = self._dying_input(op, layout)
        if reused is not None:   # element-wise in place, as the vector units allow
            resident = Resident(self.resident.pop(reused).base, shape, tensor.dtype)
            self.resident[name] = resident
            return resident
        # Tensors read more than one op later (the residual stream) from the top, the rest from
        # the bottom: the short-lived ones then free one contiguous region.
        long_lived = self.last_use.get(name, -1) > self.graph.ops.index(op) + 1
        base = self.arena.allocate(layout.nbytes, from_top=long_lived)
        if base is None:
            return None
        resident = Resident(base, shape, tensor.dtype)
        self.resident[name] = resident
        return resident

    def _operand(self, name: str) -> tuple[TensorView, bool]:
        """Tensor ``name`` as a view, and whether it is on chip (then ``base`` is a VECTOR byte
        address); a DDR tensor's rows are made dense (:meth:`_input`)."""
        resident = self.resident.get(name)
        if resident is not None:
            return resident.view(), True
        return self._input(name), False

    def _dying_input(self, op: QOp, layout: Resident) -> str | None:
        """The first input of a vector op if it is on chip, laid out as ``layout`` and read by no
        later op: the op may write its output over it (as the DDR path does in its slot)."""
        if op.kind not in ("add", "layernorm", "gelu"):
            return None
        name = op.inputs[0]
        held = self.resident.get(name)
        if (held is not None and self.last_use.get(name) == self.graph.ops.index(op)
                and name not in self.graph.outputs and held.shape == layout.shape
                and held.itemsize == layout.itemsize):
            return name
        return None

    def _drop_on_chip(self, name: str) -> None:
        """Give back an arena block the producer could not use after all."""
        self.arena.free(self.resident.pop(name).base)

    # -- GEMMs -----------------------------------------------------------------------------------

    def _gemm_plan(self, m: int, k: int, n: int, *, requant: bool, has_params: bool, nm: tuple[int, int] | None,
                   a_onchip: bool, out_onchip: bool) -> tuple[int, int]:
        return self.tiler.gemm_tile(m, k, n, requant=requant, has_params=has_params, nm=nm,
                                    a_in_input=not a_onchip, out_in_slot=not out_onchip)

    @staticmethod
    def _writes_in_place(plan: tuple[int, int], m: int, n: int) -> bool:
        """Whether GEMM tiles of ``plan`` can write an ``m x n`` int8 output in place: whole rows,
        each tile starting on a 16-byte boundary."""
        m_tile, n_tile = plan
        return n_tile == n and (m_tile >= m or m_tile * n % ADDR_UNIT == 0)

    def _gemm_tiles(self, op: QOp, record: LayerRecord, a: TensorView, b: TensorView, b_transposed: bool,
                    out: TensorView, params_addr: int | None, requant: bool, unsigned_a: bool,
                    nm_indices: TensorView | None = None, *, a_onchip: bool = False,
                    out_onchip: bool = False) -> None:
        """Tile ``out[M, N] = a[M, K] @ B`` (B stored [N, K] if ``b_transposed`` else [K, N]).

        With ``nm_indices``, B is N:M compressed under the config's ``nm_sparsity``: ``b`` holds
        its int8 values and ``nm_indices`` its uint8 indices, both ``[ceil(K/M)*N, N]``.
        ``a_onchip`` / ``out_onchip``: ``a`` / ``out`` are dense matrices in the VECTOR arena
        (their ``base`` a VECTOR byte address): A is read there (``a_vector``), the
        requantized output written there, neither loaded nor stored."""
        m_total, k = a.shape
        nm = self.config.nm_sparsity if nm_indices is not None else None
        n_total = out.shape[1]
        if k > self.config.max_k:
            raise BackendError(f"{op!r}: K={k} exceeds max_k={self.config.max_k} ({op.source})")
        out_bytes = 1 if requant else 4
        out_buf = Buffer.VECTOR if requant else Buffer.ACC
        m_tile, n_tile = self._gemm_plan(m_total, k, n_total, requant=requant, has_params=params_addr is not None,
                                         nm=nm, a_onchip=a_onchip, out_onchip=out_onchip)
        if out_onchip and not (requant and self._writes_in_place((m_tile, n_tile), m_total, n_total)):
            raise AssertionError(f"{op!r}: on-chip output with tiles {m_tile} x {n_tile}")
        if m_tile <= 0 or n_tile <= 0:
            raise BackendError(f"{op!r}: a tile of K={k} does not fit the {self.config.name} buffers ({op.source})")
        for n0 in range(0, n_total, n_tile):
            nt = min(n_tile, n_total - n0)
            for m0 in range(0, m_total, m_tile):
                mt = min(m_tile, m_total - m0)
                slot = self._slot()
                a_addr, loads = _a_rows(slot, a.slice(0, m0, m0 + mt), a_onchip)
                b_addr = slot.take(Buffer.WEIGHT, self.tiler.weight_bytes(k, nt, nm))
                depth = k  # rows of B the GEMM multiplies
                if nm is not None:
                    layout = nm_weight_layout(k, nt, nm)
                    depth = layout.rows
                    loads.append(_load(Buffer.WEIGHT, b_addr, b.slice(1, n0, n0 + nt), depth, nt, b.strides[0]))
                    loads.append(_load(Buffer.WEIGHT, b_addr + layout.indices_offset // ADDR_UNIT,
                                       nm_indices.slice(1, n0, n0 + nt), depth, nt, nm_indices.strides[0]))
                elif b_transposed:
                    loads.append(_load(Buffer.WEIGHT, b_addr, b.slice(0, n0, n0 + nt), nt, k, b.strides[0]))
                else:
                    loads.append(_load(Buffer.WEIGHT, b_addr, b.slice(1, n0, n0 + nt), k, nt, b.strides[0]))
                param_addr = 0
                if params_addr is not None:
                    param_addr = slot.take(Buffer.ACC, 12 * nt)
                    loads.append(Instruction(Opcode.LOAD, buffer=Buffer.ACC, sram_addr=param_addr,
                                             dram_addr=params_addr + 4 * n0, rows=3, row_bytes=4 * nt,
                                             dram_stride=4 * n_total, sram_stride=4 * nt))
                if out_onchip:
                    out_addr, stores = _unit(out.slice(0, m0, m0 + mt).base), []
                else:
                    out_addr = slot.take(out_buf, mt * nt * out_bytes)
                    stores = [_store(out_buf, out_addr, out.slice(0, m0, m0 + mt).base + n0 * out.strides[1],
                                     mt, nt * out_bytes, out.strides[0])]
                gemm = Instruction(Opcode.GEMM, requant=int(requant), bias=int(requant), unsigned_a=int(unsigned_a),
                                   b_transposed=int(b_transposed), nm=int(nm is not None), m=mt, k=k, n=nt,
                                   a_vector=int(a_onchip), a_addr=a_addr, b_addr=b_addr,
                                   acc_addr=0 if requant else out_addr, out_addr=out_addr if requant else 0,
                                   param_addr=param_addr)
                self.pipeline.tile(loads, [gemm], stores)
                record.macs += mt * depth * nt

    def _op_linear(self, op: QOp, record: LayerRecord) -> None:
        if len(op.inputs) == 4:
            raise BackendError(f"{op!r}: linear with a fused residual is not supported by the back end "
                               f"({op.source})")
        x, x_onchip = self._operand(op.inputs[0])
        weight = self.graph.constants[op.inputs[1]]  # [K, N]
        bias = self.graph.constants[op.inputs[2]]
        n, k = weight.shape[1], weight.shape[0]
        nmw = self._nm_weights(weight)
        indices = None
        if nmw is None:
            w_addr = self._constant(op.output + ".weight_t", np.ascontiguousarray(weight.T).astype(np.int8))
            w_view = TensorView.contiguous(w_addr, (n, k), "int8")
        else:
            w_view = TensorView.contiguous(self._constant(op.output + ".nm_values", nmw.values),
                                           nmw.values.shape, "int8")
            indices = TensorView.contiguous(self._constant(op.output + ".nm_indices", nmw.indices),
                                            nmw.indices.shape, "uint8")
            record.nm = {"n": nmw.n, "m": nmw.m, "k": k, "compressed_k": nmw.values.shape[0], "columns": n}
        p_addr = self._constant(op.output + ".params",
                                isa.pack_gemm_params(bias, op.attrs["multiplier"], op.attrs["shift"]))
        x2 = x if len(x.shape) == 2 else x.reshape((int(np.prod(x.shape[:-1])), x.shape[-1]))
        if x2 is None:
            raise BackendError(f"{op!r}: input layout not supported ({op.source})")
        nm = self.config.nm_sparsity if nmw is not None else None
        out_onchip = self._linear_output_on_chip(op, x2.shape[0], k, n, nm, x_onchip)
        if out_onchip:
            out2 = self.resident[op.output].view()
        else:
            out = self._new_tensor(op.output)
            self.views[op.output] = out
            out2 = out.reshape((x2.shape[0], n))
        self._gemm_tiles(op, record, x2, w_view, nmw is None, out2, p_addr, True, False,
                         nm_indices=indices, a_onchip=x_onchip, out_onchip=out_onchip)

    def _linear_output_on_chip(self, op: QOp, m: int, k: int, n: int, nm: tuple[int, int] | None,
                               a_onchip: bool) -> bool:
        """Keep a linear layer's (2-D) output on chip if its GEMM tiles can write it in place."""
        if len(self.graph.tensors[op.output].shape) != 2 or self._keep_on_chip(op) is None:
            return False
        plan = self._gemm_plan(m, k, n, requant=True, has_params=True, nm=nm, a_onchip=a_onchip, out_onchip=True)
        if not self._writes_in_place(plan, m, n):
            self._drop_on_chip(op.output)
            return False
        return True

    def _nm_weights(self, weight: np.ndarray) -> NMWeights | None:
        """``weight [K, N]`` compressed to the config's ``nm_sparsity`` if it is N:M sparse along
        K (checked on the int8 values), else None (the layer runs dense)."""
        if self.config.nm_sparsity is None:
            return None
        n, m = self.config.nm_sparsity
        # Sparse iff every non-zero is among its group's n largest magnitudes.
        if np.any(weight[~magnitude_keep_mask(weight, n, m)]):
            return None
        return compress(weight, n, m)

    def _op_matmul(self, op: QOp, record: LayerRecord) -> None:
        fused = self._scores_softmax(op)
        if fused is not None:
            self._matmul_softmax(op, *fused, record)
            return
        a, a_onchip = self._operand(op.inputs[0])
        b = self._input(op.inputs[1])
        transpose_b = bool(op.attrs.get("transpose_b"))
        requant = bool(op.attrs.get("requant"))
        out = self._heads_output(op)
        self.views[op.output] = out
        n = out.shape[-1]
        p_addr = None
        if requant:
            p_addr = self._constant(op.output + ".params", isa.pack_gemm_params(
                np.zeros(n, np.int64), np.full(n, int(op.attrs["multiplier"])), np.full(n, int(op.attrs["shift"]))))
        unsigned_a = self.graph.tensors[op.inputs[0]].dtype == "uint8"
        for index in blocks(out.shape):
            self._gemm_tiles(op, record, _block(a, index), _block(b, index), transpose_b, _block(out, index),
                             p_addr, requant, unsigned_a, a_onchip=a_onchip)

    def _heads_output(self, op: QOp) -> TensorView:
        """A new DDR tensor for ``op``'s output; a per-head output ``[heads, t, d]`` whose only
        reader is a merge_heads is laid out as the merged ``[t, heads * d]`` tensor (each head's
        rows ``heads * d`` apart), so that the GEMMs store it merged and the merge is a view."""
        g = self.graph
        readers = g.consumers(op.output)
        shape = tuple(g.tensors[op.output].shape)
        if (len(shape) != 3 or op.output in g.outputs or len(readers) != 1 or readers[0].kind != "merge_heads"
                or tuple(g.tensors[readers[0].output].shape) != (shape[1], shape[0] * shape[2])):
            return self._new_tensor(op.output)
        heads, t, d = shape
        merged = self._new_tensor(readers[0].output)
        return TensorView(merged.base, shape, (d * merged.itemsize, merged.strides[0], merged.itemsize), merged.dtype)

    # -- attention scores and their softmax, tile by tile ------------------------------------------

    def _scores_softmax(self, op: QOp) -> tuple[QOp, int] | None:
        """``(softmax, rows per tile)`` if ``op`` is a raw (int32) matmul whose only reader is
        the softmax right after it and a tile of whole score rows fits beside the softmax
        parameters in one ACC slot; else None. Tiles of more than one take a multiple of 16
        rows, so every tile's A rows and probabilities start on a 16-byte boundary."""
        g = self.graph
        number = g.ops.index(op)
        if not self.onchip or op.attrs.get("requant") or number + 1 >= len(g.ops):
            return None
        softmax = g.ops[number + 1]
        if (softmax.kind != "softmax" or softmax.inputs[0] != op.output or op.output in g.outputs
                or g.consumers(op.output) != [softmax]):
            return None
        a, out = g.tensors[op.inputs[0]], g.tensors[op.output]
        m, k, n = out.shape[-2], a.shape[-1], out.shape[-1]
        cap = self.tiler.capacity
        if n > min(self.config.max_tokens, MAX_COLS, MAX_N) or k > self.config.max_k \
                or self.tiler.weight_bytes(k, n) > cap[Buffer.WEIGHT]:
            return None
        params = align(4 * isa.SOFTMAX_PARAM_WORDS)
        # (probabilities stored from the VECTOR slot in the worst case; alignment slack)
        rows = min(m, MAX_M, MAX_ROWS, cap[Buffer.INPUT] // k, (cap[Buffer.ACC] - params - ADDR_UNIT) // (4 * n),
                   (cap[Buffer.VECTOR] - ADDR_UNIT) // n)
        if rows < m:
            rows -= rows % ADDR_UNIT
        return (softmax, rows) if rows >= 1 else None

    def _matmul_softmax(self, op: QOp, softmax: QOp, m_tile: int, record: LayerRecord) -> None:
        """``softmax(a @ b)`` per tile of ``m_tile`` rows: LOAD A (unless on chip), B and the
        softmax parameters; GEMM writes the int32 scores into the tile's ACC slot, SOFTMAX reads
        them there and writes the uint8 probabilities to the arena (when they stay on chip) or
        to the VECTOR slot, stored from there. The scores never leave the chip; the softmax's
        layer record keeps no instructions (they are this op's)."""
        a, a_onchip = self._operand(op.inputs[0])
        b = self._input(op.inputs[1])
        transpose_b = bool(op.attrs.get("transpose_b"))
        unsigned_a = self.graph.tensors[op.inputs[0]].dtype == "uint8"
        shape = tuple(self.graph.tensors[softmax.output].shape)
        m, n, k = shape[-2], shape[-1], a.shape[-1]
        words = isa.pack_softmax_params(softmax.attrs["params"])
        p_addr = self._constant(softmax.output + ".params", words)
        tiles = [(index, m0, min(m_tile, m - m0)) for index in blocks(shape) for m0 in range(0, m, m_tile)]
        resident = self._keep_on_chip(softmax)
        if resident is not None and not all(resident.row_aligned(m0) for _, m0, _ in tiles):
            self._drop_on_chip(softmax.output)
            resident = None
        if resident is not None:
            out = resident.view()
        else:
            out = self._new_tensor(softmax.output)
            self.views[softmax.output] = out
        self.fused.add(softmax.output)
        for index, m0, mt in tiles:
            a_block, b_block = _block(a, index), _block(b, index)
            out_rows = _block(out, index).slice(0, m0, m0 + mt)
            slot = self._slot()
            a_addr, loads = _a_rows(slot, a_block.slice(0, m0, m0 + mt), a_onchip)
            b_addr = slot.take(Buffer.WEIGHT, self.tiler.weight_bytes(k, n))
            if transpose_b:
                loads.append(_load(Buffer.WEIGHT, b_addr, b_block, n, k, b_block.strides[0]))
            else:
                loads.append(_load(Buffer.WEIGHT, b_addr, b_block, k, n, b_block.strides[0]))
            scores = slot.take(Buffer.ACC, mt * n * 4)
            params = slot.take(Buffer.ACC, 4 * words.size)
            loads.append(_load_words(params, p_addr, 4 * words.size))
            stores = []
            if resident is not None:
                dst = _unit(out_rows.base)
            else:
                dst = slot.take(Buffer.VECTOR, mt * n)
                stores.append(_store(Buffer.VECTOR, dst, out_rows.base, mt, n, out_rows.strides[0]))
            gemm = Instruction(Opcode.GEMM, unsigned_a=int(unsigned_a), b_transposed=int(transpose_b), m=mt, k=k,
                               n=n, a_vector=int(a_onchip), a_addr=a_addr, b_addr=b_addr, acc_addr=scores)
            probabilities = Instruction(Opcode.SOFTMAX, rows=mt, cols=n, src_addr=scores, dst_addr=dst,
                                        param_addr=params)
            self.pipeline.tile(loads, [gemm, probabilities], stores)
            record.macs += mt * k * n

    # -- vector unit -----------------------------------------------------------------------------

    def _rowwise(self, op: QOp, opcode: Opcode, names: list[str], src_buf: Buffer, src_bytes: int,
                 params_addr: int | None, param_words: int, out_dtype: str, record: LayerRecord,
                 prologue: tuple[list[Instruction], list[Instruction]] | None = None) -> None:
        """One vector instruction per row tile. Sources in DDR are loaded into the tile's slot
        (the output then overwrites the first one there when it is in VECTOR), on-chip sources
        are read in place; the output is written in the arena if it stays on chip, else stored."""
        operands = [self._operand(name) for name in names]
        shape = tuple(self.graph.tensors[op.output].shape)
        if prologue is not None:
            self.pipeline.tile(prologue[0], prologue[1], [])
        cols = shape[-1]
        if cols > MAX_COLS:
            raise ValueError(f"rows of {cols} elements exceed the vector unit's {MAX_COLS}")
        out_bytes = np.dtype(out_dtype).itemsize
        fixed = {Buffer.ACC: 4 * param_words}
        loaded = sum(1 for _, onchip in operands if not onchip)
        out, tiles = self._rowwise_output(op, shape, cols, out_bytes, src_buf, loaded * cols * src_bytes, fixed)
        in_place = src_buf is Buffer.VECTOR and bool(operands) and not operands[0][1]
        for index, r0, rows in tiles:
            slot = self._slot()
            loads, src_addrs = [], []
            for src, onchip in operands:
                block = _block(src, index).slice(0, r0, r0 + rows)
                if onchip:
                    src_addrs.append(_unit(block.base))
                    continue
                addr = slot.take(src_buf, rows * cols * src_bytes)
                loads.append(_load(src_buf, addr, block, rows, cols * src_bytes, block.strides[0]))
                src_addrs.append(addr)
            fields: dict[str, int] = {"rows": rows, "cols": cols, "src_addr": src_addrs[0]}
            if len(src_addrs) > 1:
                fields["src2_addr"] = src_addrs[1]
            if params_addr is not None:
                fields["param_addr"] = slot.take(Buffer.ACC, 4 * param_words)
                loads.append(_load_words(fields["param_addr"], params_addr, 4 * param_words))
            block = _block(out, index).slice(0, r0, r0 + rows)
            stores = []
            if op.output in self.resident:
                fields["dst_addr"] = _unit(block.base)
            else:
                dst = src_addrs[0] if in_place else slot.take(Buffer.VECTOR, rows * cols * out_bytes)
                fields["dst_addr"] = dst
                stores.append(_store(Buffer.VECTOR, dst, block.base, rows, cols * out_bytes, block.strides[0]))
            self.pipeline.tile(loads, [Instruction(opcode, **fields)], stores)

    def _rowwise_output(self, op: QOp, shape: tuple[int, ...], cols: int, out_bytes: int, src_buf: Buffer,
                        loaded_per_row: int, fixed: dict[Buffer, int]) -> tuple[TensorView, list]:
        """Where a row-wise op's output goes (an arena view if it stays on chip: every row tile
        then starts aligned; else a new DDR tensor) and its row tiles."""
        def tiles(out_in_slot: bool) -> list:
            per_row = {src_buf: loaded_per_row}
            per_row[Buffer.VECTOR] = per_row.get(Buffer.VECTOR, 0) + (cols * out_bytes if out_in_slot else 0)
            return list(self.tiler.row_tiles(shape, per_row, fixed))

        resident = self._keep_on_chip(op)
        if resident is not None:
            onchip_tiles = tiles(False)
            if all(resident.row_aligned(r0) for _, r0, _ in onchip_tiles):
                return resident.view().reshape(shape) if len(shape) < 2 else resident.view(), onchip_tiles
            self._drop_on_chip(op.output)
        out = self._new_tensor(op.output)
        self.views[op.output] = out
        return out, tiles(True)

    def _op_softmax(self, op: QOp, record: LayerRecord) -> None:
        if op.output in self.fused:   # lowered with the matmul before it (:meth:`_matmul_softmax`)
            return
        cols = self.graph.tensors[op.output].shape[-1]
        if cols > self.config.max_tokens:   # the unit holds one row of at most max_tokens scores
            raise ValueError(f"softmax rows of {cols} tokens exceed config {self.config.name!r}'s "
                             f"max_tokens={self.config.max_tokens} (the softmax unit refuses longer rows)")
        words = isa.pack_softmax_params(op.attrs["params"])
        p_addr = self._constant(op.output + ".params", words)
        self._rowwise(op, Opcode.SOFTMAX, [op.inputs[0]], Buffer.ACC, 4, p_addr, words.size,
                      "uint8", record)

    def _op_gelu(self, op: QOp, record: LayerRecord) -> None:
        table = np.asarray(op.attrs["table"]).astype(np.int8)
        t_addr = self._constant(op.output + ".gelu_table", table)
        slot = self._slot()
        v_addr = slot.take(Buffer.VECTOR, table.size)
        load = Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=v_addr, dram_addr=t_addr, rows=1,
                           row_bytes=table.size, dram_stride=table.size, sram_stride=table.size)
        lut = Instruction(Opcode.LUT_LOAD, lut=isa.LutId.GELU, offset=0, count=table.size, src_addr=v_addr)
        self._rowwise(op, Opcode.GELU, [op.inputs[0]], Buffer.VECTOR, 1, None, 0, "int8", record,
                      prologue=([load], [lut]))

    def _op_layernorm(self, op: QOp, record: LayerRecord) -> None:
        words = isa.pack_layernorm_params(op.attrs["params"])
        p_addr = self._constant(op.output + ".params", words)
        self._rowwise(op, Opcode.LAYERNORM, [op.inputs[0]], Buffer.VECTOR, 1, p_addr, words.size,
                      "int8", record)

    def _op_add(self, op: QOp, record: LayerRecord) -> None:
        words = isa.pack_add_params(op.attrs["params"])
        p_addr = self._constant(op.output + ".params", words)
        self._rowwise(op, Opcode.ADD, [op.inputs[0], op.inputs[1]], Buffer.VECTOR, 1,
                      p_addr, words.size, "int8", record)

    # -- layout ----------------------------------------------------------------------------------

    def _copy(self, src: TensorView, dst: TensorView) -> None:
        """Copy ``src`` into ``dst`` (same shape) with LOAD/STORE pairs through the vector buffer."""
        pieces = _copy_pieces(src, dst, self.tiler.capacity[Buffer.VECTOR])
        tile_loads: list[Instruction] = []
        tile_stores: list[Instruction] = []
        slot = self._slot()
        for s_off, s_stride, d_off, d_stride, rows, row_bytes, unit in pieces:
            nbytes = rows * row_bytes
            try:
                addr = slot.take(Buffer.VECTOR, nbytes)
            except ValueError:
                if not tile_loads:
                    raise
                self.pipeline.tile(tile_loads, [], tile_stores)
                tile_loads, tile_stores = [], []
                slot = self._slot()
                addr = slot.take(Buffer.VECTOR, nbytes)
            tile_loads.append(Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=addr, dram_addr=s_off,
                                          rows=rows, row_bytes=row_bytes, dram_stride=s_stride, sram_stride=row_bytes))
            tile_stores.append(Instruction(Opcode.STORE, buffer=Buffer.VECTOR, sram_addr=addr, dram_addr=d_off,
                                           rows=rows, row_bytes=row_bytes, dram_stride=d_stride, sram_stride=row_bytes))
        if tile_loads:
            self.pipeline.tile(tile_loads, [], tile_stores)

    def _op_im2col(self, op: QOp, record: LayerRecord) -> None:
        x = self.views[op.inputs[0]]
        c, h, w = x.shape
        p = op.attrs["patch"]
        sc, sh, sw = x.strides
        patches = TensorView(x.base, (h // p, w // p, c, p, p), (p * sh, p * sw, sc, sh, sw), x.dtype)
        if self._gather_on_chip(op, patches):
            return
        out = self._new_tensor(op.output)
        self._copy(patches, TensorView.contiguous(out.base, patches.shape, out.dtype))
        self.views[op.output] = out

    def _gather_on_chip(self, op: QOp, src: TensorView) -> bool:
        """LOAD ``src`` (a DDR view) straight into an arena block for ``op``'s output, if it stays
        on chip and every piece starts on a 16-byte boundary there. Only where the pipeline is
        drained (program start, after a barrier): the load queue runs ahead of compute, so an
        arena block freed by a compute still to come must not be loaded into."""
        if self.pipeline.tiles:
            return False
        resident = self._keep_on_chip(op)
        if resident is None:
            return False
        dst = TensorView.contiguous(resident.base, src.shape, src.dtype)
        # every piece must start on a 16-byte boundary in the arena: rows contiguous in DDR if
        # that allows it, else the longest axis' rows
        for contiguous in (True, False):
            pieces = _copy_pieces(src, dst, resident.nbytes, contiguous_rows=contiguous)
            if not any(d_off % ADDR_UNIT for _, _, d_off, *_ in pieces):
                break
        else:
            self._drop_on_chip(op.output)
            return False
        loads = [Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=d_off // ADDR_UNIT, dram_addr=s_off,
                             rows=rows, row_bytes=row_bytes, dram_stride=s_stride, sram_stride=d_stride)
                 for s_off, s_stride, d_off, d_stride, rows, row_bytes, _ in pieces]
        self.pipeline.tile(loads, [], [])
        return True

    def _view_or_copy(self, op: QOp, view: TensorView | None, fallback: TensorView, shape: tuple[int, ...]) -> None:
        if view is None:
            dense = TensorView.contiguous(self.alloc.allocate(op.output + ".dense", fallback.nbytes),
                                          fallback.shape, fallback.dtype)
            self._copy(fallback, dense)
            view = dense.reshape(shape)
        self.views[op.output] = view

    def _op_reshape(self, op: QOp, record: LayerRecord) -> None:
        x = self.views[op.inputs[0]]
        shape = tuple(op.attrs["shape"])
        self._view_or_copy(op, x.reshape(shape), x, shape)

    def _op_split_heads(self, op: QOp, record: LayerRecord) -> None:
        x = self.views[op.inputs[0]]
        t, width = x.shape
        heads, chunks = op.attrs["num_heads"], op.attrs.get("chunks", 1)
        d = width // (heads * chunks)
        split = x.reshape((t, chunks, heads, d))
        if split is None:
            x = self._input(op.inputs[0])
            split = TensorView(x.base, (t, chunks, heads, d),
                               (x.strides[0], heads * d * x.itemsize, d * x.itemsize, x.itemsize), x.dtype)
        self.views[op.output] = split.index(1, op.attrs.get("index", 0)).transpose((1, 0, 2))

    def _op_merge_heads(self, op: QOp, record: LayerRecord) -> None:
        x = self.views[op.inputs[0]]
        heads, t, d = x.shape
        moved = x.transpose((1, 0, 2))
        self._view_or_copy(op, moved.reshape((t, heads * d)), moved, (t, heads * d))

    def _op_transpose(self, op: QOp, record: LayerRecord) -> None:
        self.views[op.output] = self.views[op.inputs[0]].transpose(tuple(op.attrs["perm"]))

    def _op_concat(self, op: QOp, record: LayerRecord) -> None:
        out = self._new_tensor(op.output)
        axis, offset = op.attrs["axis"], 0
        for name in op.inputs:
            part = self.views[name]
            self._copy(part, out.slice(axis, offset, offset + part.shape[axis]))
            offset += part.shape[axis]
        self.views[op.output] = out

    def _op_slice(self, op: QOp, record: LayerRecord) -> None:
        self.views[op.output] = self.views[op.inputs[0]].slice(op.attrs["axis"], op.attrs["start"], op.attrs["stop"])

    def _op_select_token(self, op: QOp, record: LayerRecord) -> None:
        index = op.attrs["index"]
        self.views[op.output] = self.views[op.inputs[0]].slice(0, index, index + 1)

    # -- sparse attention ------------------------------------------------------------------------

    def _op_sparse_attention(self, op: QOp, record: LayerRecord) -> None:
        """One SPARSE_ATTN per head with ``predict=1`` (the mask is predicted on chip from the
        image's Q and K): the head's Q, K and V loaded into a VECTOR slot, the parameter block
        (softmax, output scale, margin) into ACC, the int8 output stored. The layer's ``macs``
        are the dense equivalent (``2 T^2 d`` per head): what runs depends on each image's mask."""
        cfg = self.config
        if not cfg.has_sparse_attention:
            raise BackendError(f"{op!r}: config {cfg.name!r} has no sparse attention unit (has_sparse_attention "
                               f"is false) ({op.source or 'no source'})")
        q, k, v = (self._input(name) for name in op.inputs)
        heads, tokens, d = q.shape
        if tokens > cfg.max_tokens or d > cfg.sparse_max_head_dim:
            raise ValueError(f"attention of {tokens} tokens x head dim {d} exceeds config {cfg.name!r}'s "
                             f"max_tokens={cfg.max_tokens} / sparse_max_head_dim={cfg.sparse_max_head_dim}")
        words = isa.pack_sparse_attn_params(op.attrs["params"], op.attrs["multiplier"], op.attrs["shift"],
                                            op.attrs["margin"])
        p_addr, p_bytes = self._constant(op.output + ".params", words), 4 * words.size
        out = self._new_tensor(op.output)
        self.views[op.output] = out
        for head in range(heads):
            slot = self._slot()
            loads, at = [], []
            for src in (q, k, v):
                block = src.index(0, head)
                at.append(slot.take(Buffer.VECTOR, tokens * d))
                loads.append(_load(Buffer.VECTOR, at[-1], block, tokens, d, block.strides[0]))
            param_addr = slot.take(Buffer.ACC, p_bytes)
            loads.append(_load_words(param_addr, p_addr, p_bytes))
            out_addr = slot.take(Buffer.VECTOR, tokens * d)
            attend = Instruction(Opcode.SPARSE_ATTN, m=tokens, n=tokens, d=d, q_addr=at[0], k_addr=at[1],
                                 v_addr=at[2], mask_addr=0, out_addr=out_addr, param_addr=param_addr, predict=1)
            dst = out.index(0, head)
            self.pipeline.tile(loads, [attend], [_store(Buffer.VECTOR, out_addr, dst.base, tokens, d, dst.strides[0])])
            record.macs += 2 * tokens * tokens * d

    # -- token pruning (top-k engine) -----------------------------------------------------------

    def _require_topk(self, op: QOp) -> None:
        if not self.config.has_topk:
            raise BackendError(f"{op!r}: config {self.config.name!r} has no top-k engine (has_topk is false), "
                               f"which token pruning needs ({op.source or 'no source'})")

    def _op_token_scores(self, op: QOp, record: LayerRecord) -> None:
        readers = self.graph.consumers(op.output)
        positions = {"topk": [0], "package_token": [1]}  # where the engine reads scores
        if op.output in self.graph.outputs or any(
                [i for i, name in enumerate(reader.inputs) if name == op.output] != positions.get(reader.kind)
                for reader in readers):
            raise BackendError(f"{op!r}: token scores are summed inside the top-k engine (TOPK sum_rows, PACKAGE) "
                               f"as it reads them, so only topk and package_token may read them "
                               f"({op.source or 'no source'})")
        probs = self._input(op.inputs[0])  # [H, T, T]
        self.deferred[op.output] = probs.index(1, 0).slice(1, 1, probs.shape[2])  # CLS rows, tokens 1..T-1

    def _op_topk(self, op: QOp, record: LayerRecord) -> None:
        """One TOPK: over CLS-row probabilities summed across heads (``sum_rows``) when the scores
        come from ``token_scores``, else over one row of uint16 scores."""
        self._require_topk(op)
        k = op.attrs["k"]
        summed = op.inputs[0] in self.deferred
        source = self.deferred[op.inputs[0]] if summed else _block(self._input(op.inputs[0]), ())
        rows, n = source.shape
        if n > self.config.max_tokens:
            raise ValueError(f"{n} candidate tokens exceed the top-k engine's max_tokens={self.config.max_tokens}")
        out = self._new_tensor(op.output)
        self.views[op.output] = out
        slot = self._slot()
        src_addr = slot.take(Buffer.VECTOR, rows * n * source.itemsize)
        dst_addr = slot.take(Buffer.VECTOR, 2 * k)
        load = _load(Buffer.VECTOR, src_addr, source, rows, n * source.itemsize, source.strides[0])
        select = Instruction(Opcode.TOPK, rows=rows, n=n, k=k, src_addr=src_addr, dst_addr=dst_addr,
                             sum_rows=int(summed))
        self.pipeline.tile([load], [select], [_store(Buffer.VECTOR, dst_addr, out.base, 1, 2 * k, 2 * k)])

    def _op_gather_tokens(self, op: QOp, record: LayerRecord) -> None:
        """GATHER tiled by columns: each tile holds the index list, every source row's columns
        ``c0 .. c0 + w`` and the gathered rows' (so any token width fits the vector buffer)."""
        self._require_topk(op)
        if self.graph.tensors[op.inputs[1]].dtype != "uint16":
            raise BackendError(f"{op!r}: the back end gathers by uint16 indices (a topk output), got "
                               f"{self.graph.tensors[op.inputs[1]].dtype} ({op.source or 'no source'})")
        x = self._input(op.inputs[0])
        indices = _block(self._input(op.inputs[1]), ())
        (n, width), k, itemsize = x.shape, indices.shape[1], x.itemsize
        if max(n, k) > MAX_ROWS:
            raise ValueError(f"a gather of {k} of {n} rows exceeds the {MAX_ROWS} rows a DMA moves")
        out = self._new_tensor(op.output)
        self.views[op.output] = out
        cols = self.tiler.column_tile(align(2 * k), (n + k) * itemsize, width, MAX_GATHER_BYTES // itemsize, 2)
        for c0 in range(0, width, cols):
            w = min(cols, width - c0)
            slot = self._slot()
            i_addr = slot.take(Buffer.VECTOR, 2 * k)
            s_addr = slot.take(Buffer.VECTOR, n * w * itemsize)
            d_addr = slot.take(Buffer.VECTOR, k * w * itemsize)
            loads = [_load(Buffer.VECTOR, i_addr, indices, 1, 2 * k, 2 * k),
                     _load(Buffer.VECTOR, s_addr, x.slice(1, c0, c0 + w), n, w * itemsize, x.strides[0])]
            gather = Instruction(Opcode.GATHER, rows=k, cols=w * itemsize, n=n, src_addr=s_addr, dst_addr=d_addr,
                                 index_addr=i_addr)
            self.pipeline.tile(loads, [gather], [_store(Buffer.VECTOR, d_addr, out.base + c0 * out.strides[1], k,
                                                        w * itemsize, out.strides[0])])

    def _op_package_token(self, op: QOp, record: LayerRecord) -> None:
        """PACKAGE tiled by columns; its scores are the probability rows ``token_scores`` names,
        summed by the engine's front end as for TOPK."""
        self._require_topk(op)
        rows = self.deferred.get(op.inputs[1])
        if rows is None:
            raise BackendError(f"{op!r}: the package weights must be token_scores (summed in the top-k engine) "
                               f"({op.source or 'no source'})")
        x = self._input(op.inputs[0])
        kept = _block(self._input(op.inputs[2]), ())
        (n, width), k, heads = x.shape, kept.shape[1], rows.shape[0]
        if n > min(MAX_ROWS, self.config.max_tokens):
            raise ValueError(f"{n} candidate tokens exceed the top-k engine's max_tokens={self.config.max_tokens}")
        out = self._new_tensor(op.output)
        self.views[op.output] = out
        fixed = align(heads * n) + align(2 * k)
        cols = self.tiler.column_tile(fixed, n + 1, width, MAX_PACKAGE_COLS, 2)
        for c0 in range(0, width, cols):
            w = min(cols, width - c0)
            slot = self._slot()
            p_addr = slot.take(Buffer.VECTOR, heads * n)
            i_addr = slot.take(Buffer.VECTOR, 2 * k)
            s_addr = slot.take(Buffer.VECTOR, n * w)
            d_addr = slot.take(Buffer.VECTOR, w)
            loads = [_load(Buffer.VECTOR, p_addr, rows, heads, n, rows.strides[0]),
                     _load(Buffer.VECTOR, i_addr, kept, 1, 2 * k, 2 * k),
                     _load(Buffer.VECTOR, s_addr, x.slice(1, c0, c0 + w), n, w, x.strides[0])]
            package = Instruction(Opcode.PACKAGE, n=n, cols=w, k=k, heads=heads, src_addr=s_addr, prob_addr=p_addr,
                                  index_addr=i_addr, dst_addr=d_addr)
            self.pipeline.tile(loads, [package], [_store(Buffer.VECTOR, d_addr, out.base + c0, 1, w, w)])
        record.macs += (n - k) * width  # one multiply-accumulate per pruned element
