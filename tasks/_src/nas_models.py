"""Flax supernets for gradient-based NAS: candidate ops, mixed ops, cells and networks.

One module serves the relaxation and the derived network: ``Network(...)(x, weights)``
mixes every candidate op of every edge with ``weights[cell_type][edge, op]`` (a softmax for
DARTS, a hard straight-through Gumbel sample for GDAS, a one-hot genotype for a masked
population of discrete cells); ``Network(..., genotype=g)(x)`` instantiates only the ops the
genotype keeps (the network that is retrained from scratch). Weights (``params``) and
architecture parameters (the logits behind ``weights``) are separate pytrees: the
architecture never enters ``params``.

Normalisation is a parameter-free per-example layer norm over ``(H, W, C)`` (DARTS's
``affine=False`` batch norm without batch statistics), so every module is a pure function
of ``(params, x)``. ``use_norm=False`` drops it (SynFlow needs a network without it); the
parameter tree is the same.

Partial-channel connections (Xu et al., "PC-DARTS", ICLR 2020): with ``partial_k=k`` a mixed
op sees ``1/k`` of the channels, the rest bypass it, and channels are shuffled after.
``aux`` adds ``aux * x`` to every stride-1 mixed op (the auxiliary skip of Chu et al.,
"DARTS-: Robustly Stepping out of Performance Collapse Without Indicators", ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaopt.spaces import CellSpace, Genotype


def _norm(x: jax.Array, use_norm: bool) -> jax.Array:
  if not use_norm:
    return x
  mu = jnp.mean(x, axis=(-3, -2, -1), keepdims=True)
  var = jnp.var(x, axis=(-3, -2, -1), keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5)


class ReLUConvNorm(nn.Module):
  """ReLU, convolution, norm; with ``one_d`` the taps run along the first spatial axis only
  (1-D signals served as ``(n, length, 1, channels)``)."""

  features: int
  kernel: int
  stride: int = 1
  dilation: int = 1
  use_norm: bool = True
  one_d: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    other = 1 if self.one_d else None  # the second spatial axis's taps, stride, dilation
    x = nn.Conv(self.features, (self.kernel, other or self.kernel),
                (self.stride, other or self.stride),
                kernel_dilation=(self.dilation, other or self.dilation),
                use_bias=False)(nn.relu(x))
    return _norm(x, self.use_norm)


class ReLUConvNorm1D(ReLUConvNorm):
  """:class:`ReLUConvNorm` with taps along the first spatial axis only (its own class, so its
  parameters keep their own names)."""

  one_d: bool = True


class SepConv(nn.Module):
  """Two (ReLU, depthwise conv, pointwise conv, norm) blocks; the first may stride."""

  features: int
  kernel: int
  stride: int = 1
  dilation: int = 1
  repeats: int = 2
  use_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    for r in range(self.repeats):
      s = self.stride if r == 0 else 1
      x = nn.Conv(c, (self.kernel, self.kernel), (s, s), kernel_dilation=self.dilation,
                  feature_group_count=c, use_bias=False)(nn.relu(x))
      x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
      x = _norm(x, self.use_norm)
    return x


class FactorizedReduce(nn.Module):
  """Halves resolution with two offset stride-2 1x1 convolutions (the strided skip)."""

  features: int
  use_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(x)
    h = self.features // 2
    a = nn.Conv(h, (1, 1), (2, 2), use_bias=False)(x)
    b = nn.Conv(self.features - h, (1, 1), (2, 2), use_bias=False)(
        jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0))))
    return _norm(jnp.concatenate([a, b], -1), self.use_norm)


def _pool(kind: str, x: jax.Array, stride: int) -> jax.Array:
  if kind == "avg":
    return nn.avg_pool(x, (3, 3), (stride, stride), "SAME", count_include_pad=False)
  return nn.max_pool(x, (3, 3), (stride, stride), "SAME")


def _pool1d(kind: str, x: jax.Array, stride: int) -> jax.Array:
  if kind == "avg":
    return nn.avg_pool(x, (3, 1), (stride, 1), "SAME", count_include_pad=False)
  return nn.max_pool(x, (3, 1), (stride, 1), "SAME")


class Op(nn.Module):
  """One candidate op by name, ``C -> C`` channels at ``stride``."""

  name_: str
  features: int
  stride: int = 1
  use_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, c, s, un = self.name_, self.features, self.stride, self.use_norm
    if n == "none":
      return jnp.zeros_like(x[:, ::s, ::s, :c]) if c <= x.shape[-1] else jnp.zeros(
          (x.shape[0], x.shape[1] // s, x.shape[2] // s, c), x.dtype)
    if n == "skip_connect":
      return x if s == 1 else FactorizedReduce(c, un)(x)
    if n in ("conv_k3", "conv_k5", "dil_conv_k3"):  # 1-D: k taps along the first axis
      return ReLUConvNorm1D(c, int(n[-1]), s, 2 if n.startswith("dil") else 1, un)(x)
    if n in ("max_pool_k3", "avg_pool_k3"):
      return _pool1d(n[:3], x, s)
    if n in ("avg_pool_3x3", "max_pool_3x3"):
      return _pool(n[:3], x, s)
    if n.startswith("sep_conv_"):
      return SepConv(c, int(n[-1]), s, 1, 2, un)(x)
    if n.startswith("dil_conv_"):
      return SepConv(c, int(n[-1]), s, 2, 1, un)(x)
    if n == "nor_conv_1x1":
      return ReLUConvNorm(c, 1, s, use_norm=un)(x)
    if n == "nor_conv_3x3":
      return ReLUConvNorm(c, 3, s, use_norm=un)(x)
    raise ValueError(f"op {n!r} is unknown")


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


class MixedOp(nn.Module):
  """``sum_k w_k op_k(x)`` over the candidate ops (partial channels when ``partial_k > 1``)."""

  ops: tuple[str, ...]
  features: int
  stride: int = 1
  partial_k: int = 1
  use_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, aux: jax.Array | float = 0.0) -> jax.Array:
    k = self.partial_k
    xa, xb = (x, None) if k == 1 else (x[..., :x.shape[-1] // k], x[..., x.shape[-1] // k:])
    c = xa.shape[-1]
    out = sum(w[i] * Op(o, c, self.stride, self.use_norm, name=o)(xa)
              for i, o in enumerate(self.ops))
    if self.stride == 1:
      out = out + aux * xa
    if k > 1:
      xb = xb if self.stride == 1 else _pool("max", xb, 2)
      out = channel_shuffle(jnp.concatenate([out, xb], -1), k)
    return out


class DartsCell(nn.Module):
  """A DARTS cell: two preprocessed inputs, ``n_nodes`` nodes, output = concat of nodes."""

  space: CellSpace
  features: int
  reduction: bool
  reduction_prev: bool
  partial_k: int = 1
  edges: tuple[tuple[str, int, int], ...] | None = None  # a genotype's edges: discrete cell
  use_norm: bool = True

  @nn.compact
  def __call__(self, s0, s1, w=None, aux=0.0):
    c, un = self.features, self.use_norm
    s0 = FactorizedReduce(c, un)(s0) if self.reduction_prev else ReLUConvNorm(
        c, 1, use_norm=un)(s0)
    s1 = ReLUConvNorm(c, 1, use_norm=un)(s1)
    states = [s0, s1]
    for t in range(2, self.space.n_nodes + 2):
      parts = []
      for e, (s, d) in enumerate(self.space.edges):
        if d != t:
          continue
        stride = 2 if self.reduction and s < 2 else 1
        if self.edges is None:
          parts.append(MixedOp(self.space.ops, c, stride, self.partial_k, un,
                               name=f"edge{e}")(states[s], w[e], aux))
        else:
          for op, src, dst in self.edges:
            if (src, dst) == (s, d):
              parts.append(Op(op, c, stride, un, name=f"edge{e}_{op}")(states[s]))
      states.append(sum(parts))
    return jnp.concatenate(states[2:], -1)


class NB201Cell(nn.Module):
  """An NB201 cell: node ``i`` sums its edges from every earlier node; output = last node."""

  space: CellSpace
  features: int
  partial_k: int = 1
  edges: tuple[tuple[str, int, int], ...] | None = None
  use_norm: bool = True

  @nn.compact
  def __call__(self, x, w=None, aux=0.0):
    nodes = [x]
    for i in range(1, self.space.n_nodes):
      acc = jnp.zeros_like(x)
      for e, (s, d) in enumerate(self.space.edges):
        if d != i:
          continue
        if self.edges is None:
          acc = acc + MixedOp(self.space.ops, self.features, 1, self.partial_k, self.use_norm,
                              name=f"edge{e}")(nodes[s], w[e], aux)
        else:
          for op, src, dst in self.edges:
            if (src, dst) == (s, d):
              acc = acc + Op(op, self.features, 1, self.use_norm, name=f"edge{e}_{op}")(
                  nodes[s])
      nodes.append(acc)
    return nodes[-1]


class ResBlock(nn.Module):
  """NB201's reduction block: two 3x3 conv layers (the first strides) plus a pooled 1x1."""

  features: int
  use_norm: bool = True

  @nn.compact
  def __call__(self, x):
    y = ReLUConvNorm(self.features, 3, 2, use_norm=self.use_norm)(x)
    y = ReLUConvNorm(self.features, 3, 1, use_norm=self.use_norm)(y)
    sc = nn.Conv(self.features, (1, 1), use_bias=False)(nn.avg_pool(x, (2, 2), (2, 2)))
    return y + sc


def cell_layout(space: CellSpace, n_cells: int, stages: int = 3) -> list[str]:
  """Cell types in network order: DARTS reduces at ``n//3`` and ``2n//3`` (``n >= 3``),
  NB201 has ``n_cells`` normal cells in each of ``stages`` stages (the ``reduce`` entries
  between stages are ResBlocks)."""
  if space.kind == "darts":
    red = {n_cells // 3, 2 * n_cells // 3} if n_cells >= 3 else ({1} if n_cells == 2 else set())
    return ["reduce" if i in red else "normal" for i in range(n_cells)]
  return (["normal"] * n_cells + ["reduce"]) * (stages - 1) + ["normal"] * n_cells


class Network(nn.Module):
  """A supernet over ``space`` (or, with ``genotype``, the derived discrete network).

  Attributes:
    space: the cell space.
    features: channels of the first cell (doubled at every reduction).
    n_cells: DARTS: cells in all; NB201: cells per stage.
    num_classes: classifier outputs.
    partial_k: PC-DARTS channel fraction ``1/k`` (1 = off).
    genotype: a discrete architecture; ``None`` for the supernet.
    stem_stride: stride of the stem convolution (2 quarters the cost of small nets).
    use_norm: keep the parameter-free normalisation.
    stages: NB201: stages of cells, a stride-2 ResBlock between two (DARTS ignores it).
    head: ``"mean"`` (global average pooling before the classifier) or ``"flatten"`` (every
      position's features, as a CNN for MNIST-1D keeps where a stroke is).
  """

  space: CellSpace
  features: int = 8
  n_cells: int = 3
  num_classes: int = 10
  partial_k: int = 1
  genotype: Genotype | None = None
  stem_stride: int = 1
  use_norm: bool = True
  stages: int = 3
  head: str = "mean"

  @nn.compact
  def __call__(self, x: jax.Array, weights: Mapping[str, jax.Array] | None = None,
               aux: jax.Array | float = 0.0) -> jax.Array:
    if self.genotype is None and weights is None:
      raise ValueError("Network: the supernet needs mixing weights (or build it with a "
                       "genotype)")
    g = self.genotype
    w = weights or {}
    c, un = self.features, self.use_norm
    layout = cell_layout(self.space, self.n_cells, self.stages)
    if self.space.kind == "darts":
      s = _norm(nn.Conv(2 * c, (3, 3), (self.stem_stride,) * 2, use_bias=False)(x), un)
      s0 = s1 = s
      red_prev = False
      for i, t in enumerate(layout):
        red = t == "reduce"
        c = c * 2 if red else c
        cell = DartsCell(self.space, c, red, red_prev, self.partial_k,
                         None if g is None else getattr(g, t), un, name=f"cell{i}")
        s0, s1 = s1, cell(s0, s1, w.get(t), aux)
        red_prev = red
      h = s1
    else:
      h = _norm(nn.Conv(c, (3, 3), (self.stem_stride,) * 2, use_bias=False)(x), un)
      for i, t in enumerate(layout):
        if t == "reduce":
          c *= 2
          h = ResBlock(c, un, name=f"res{i}")(h)
        else:
          h = NB201Cell(self.space, c, self.partial_k, None if g is None else g.normal, un,
                        name=f"cell{i}")(h, w.get("normal"), aux)
      h = nn.relu(_norm(h, un))
    if self.head not in ("mean", "flatten"):
      raise ValueError(f"Network head={self.head!r}: allowed values are mean, flatten")
    h = jnp.mean(h, axis=(1, 2)) if self.head == "mean" else h.reshape(h.shape[0], -1)
    return nn.Dense(self.num_classes)(h)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
