"""Hardware-aware NAS: per-op cost tables and the differentiable expected cost.

A cost table holds, per cell type, an array ``[num_edges, num_ops]``: what op ``k`` on edge
``e`` costs summed over every cell of that type in the network (the cells of a type share
their architecture parameters). Three metrics:

* ``params``: scalars in the op's weights, counted from the supernet's own parameter tree;
* ``flops``: multiply-adds x 2 of its convolutions (plus 9 per output value of a pooling),
  at the resolution of its cell;
* ``latency``: seconds, measured per op on the current device (jitted forward pass of that
  op alone at its cell's input shape, median of repeats); see :func:`latency_table`.

The expected cost under the architecture distribution ``p = softmax(alpha)`` is
``sum_c sum_{e,k} p_c[e, k] * table_c[e, k]``, differentiable in ``alpha`` (Cai et al.,
"ProxylessNAS", ICLR 2019; Wu et al., "FBNet", CVPR 2019). It enters the architecture loss
as a penalty ``lambda * cost / reference`` or, with a budget, as the hinge
``lambda * relu(cost - budget) / budget``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.spaces import CellSpace, Genotype
from metaopt.tasks import Network, Op, cell_layout

METRICS: tuple[str, ...] = ("params", "flops", "latency")
CostTable = dict[str, np.ndarray]


def _cells(model: Network, input_shape: tuple[int, ...]) -> list[tuple[str, int, int, int]]:
  """``(cell_type, index, channels, input resolution)`` of every searched cell."""
  res = math.ceil(input_shape[0] / model.stem_stride)
  c = model.features
  out = []
  for i, t in enumerate(cell_layout(model.space, model.n_cells, model.stages)):
    if model.space.kind == "darts":
      c = c * 2 if t == "reduce" else c
      out.append((t, i, c, res))
      res = math.ceil(res / 2) if t == "reduce" else res
    elif t == "reduce":
      c, res = c * 2, math.ceil(res / 2)
    else:
      out.append(("normal", i, c, res))
  return out


def _stride(space: CellSpace, cell_type: str, src: int) -> int:
  return 2 if space.kind == "darts" and cell_type == "reduce" and src < 2 else 1


def cost_tables(model: Network, params: Any, input_shape: tuple[int, ...]) -> dict[str, CostTable]:
  """``params`` and ``flops`` tables of a supernet from its (initialised) parameters."""
  sp = model.space
  p = params["params"] if "params" in params else params
  tabs = {m: {c: np.zeros((sp.num_edges, sp.num_ops)) for c in sp.cell_types}
          for m in ("params", "flops")}
  for t, i, c, res in _cells(model, input_shape):
    cell = p[f"cell{i}"]
    c_op = c // model.partial_k
    for e, (s, _) in enumerate(sp.edges):
      out_res = math.ceil(res / _stride(sp, t, s))
      for k, op in enumerate(sp.ops):
        sub = cell[f"edge{e}"].get(op, {})
        leaves = jax.tree_util.tree_leaves(sub)
        tabs["params"][t][e, k] += sum(x.size for x in leaves)
        macs = sum(x.size for x in leaves) * out_res ** 2
        if "pool" in op:
          macs += 9 * c_op * out_res ** 2 / 2
        tabs["flops"][t][e, k] += 2 * macs
  return tabs


def latency_table(model: Network, input_shape: tuple[int, ...], batch_size: int = 32,
                  repeats: int = 5) -> CostTable:
  """Seconds per forward pass of every op of every searched cell, measured on this device."""
  sp = model.space
  tab = {c: np.zeros((sp.num_edges, sp.num_ops)) for c in sp.cell_types}
  cache: dict[tuple, float] = {}
  for t, _, c, res in _cells(model, input_shape):
    c_op = c // model.partial_k
    for e, (s, _) in enumerate(sp.edges):
      stride = _stride(sp, t, s)
      for k, op in enumerate(sp.ops):
        key = (op, c_op, res, stride)
        if key not in cache:
          cache[key] = _time_op(op, c_op, res, stride, batch_size, repeats)
        tab[t][e, k] += cache[key]
  return tab


def _time_op(op: str, c: int, res: int, stride: int, batch_size: int, repeats: int) -> float:
  m = Op(op, c, stride)
  x = jax.random.normal(jax.random.key(0), (batch_size, res, res, c))
  p = m.init(jax.random.key(1), x)
  f = jax.jit(m.apply)
  jax.block_until_ready(f(p, x))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(p, x))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def expected_cost(probs: Mapping[str, jax.Array], table: Mapping[str, Any]) -> jax.Array:
  """``sum_c sum_{e,k} probs_c[e,k] table_c[e,k]``: differentiable in ``probs``."""
  return sum(jnp.sum(probs[c] * jnp.asarray(table[c], probs[c].dtype)) for c in table)


def genotype_cost(space: CellSpace, genotype: Genotype, table: Mapping[str, Any]) -> float:
  """The cost of a discrete cell (its one-hot weights in :func:`expected_cost`)."""
  return float(expected_cost(space.to_weights(genotype), table))


def uniform_cost(space: CellSpace, table: Mapping[str, Any]) -> float:
  """Expected cost of the uniform architecture distribution (the penalty's reference)."""
  return float(sum(np.sum(np.asarray(table[c])) / space.num_ops for c in table))
