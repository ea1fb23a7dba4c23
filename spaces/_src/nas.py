"""NAS cell spaces: the continuous relaxation, genotypes, ``discretize`` and the unit cube.

Two cell spaces, both a DAG with one candidate-op set per edge:

* DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019):
  a normal and a reduction cell, each with two input nodes (the outputs of the two previous
  cells) and ``n_nodes=4`` intermediate nodes; intermediate node ``i`` has an edge from every
  earlier node (14 edges), 8 candidate ops. The derived cell keeps, per intermediate node,
  the two strongest incoming edges with their strongest non-``none`` op.
* NAS-Bench-201 style (Dong & Yang, "NAS-Bench-201", ICLR 2020): one cell of 4 nodes, an
  edge ``j -> i`` for every ``j < i`` (6 edges), 5 ops; every edge keeps its argmax op
  (``none`` included). :func:`nb201_space` takes a reduced op set (the 3-op, 729-cell
  space of our tabular benchmark), or the 1-D ops ``CONV1D_OPS`` (:func:`conv1d_space`).

Architecture parameters are a dict ``{cell_type: logits[num_edges, num_ops]}``
(``cell_types`` is ``("normal", "reduce")`` for DARTS, ``("normal",)`` for NB201). A
:class:`Genotype` is the discrete architecture; :meth:`CellSpace.cube` is the black-box
:class:`~spaces.Space` of genotypes, so random search, regularised evolution and BO search the
very cells that gradient-based NAS derives (``encode`` / ``decode`` round-trip).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.spaces._src.space import Choice, Space

DARTS_OPS: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                              "avg_pool_3x3")
NB201_MINI_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_3x3")
# 1-D ops (a kernel of k taps along the first spatial axis, one tap along the second): the
# cells of a sequence task such as MNIST-1D, served as ``(n, length, 1, channels)`` images
CONV1D_OPS: tuple[str, ...] = ("none", "skip_connect", "conv_k3", "conv_k5", "dil_conv_k3",
                               "max_pool_k3", "avg_pool_k3")
PARAM_FREE_OPS: tuple[str, ...] = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
                                    "max_pool_k3", "avg_pool_k3")
KINDS: tuple[str, ...] = ("darts", "nb201")

Edge = tuple[str, int, int]  # (op, src, dst)


class Genotype(NamedTuple):
  """A discrete cell architecture: ``(op, src, dst)`` edges per cell type.

  Nodes are numbered as in the space (DARTS: 0 and 1 are the cell inputs, 2.. the
  intermediate nodes; NB201: 0 is the input, 3 the output). Edges are sorted by
  ``(dst, src)``. NB201 genotypes leave ``reduce`` empty.
  """

  normal: tuple[Edge, ...]
  reduce: tuple[Edge, ...] = ()

  def to_json(self) -> dict[str, list[list[Any]]]:
    return {"normal": [list(e) for e in self.normal], "reduce": [list(e) for e in self.reduce]}

  @classmethod
  def from_json(cls, d: Mapping[str, Sequence[Sequence[Any]]]) -> Genotype:
    conv = lambda es: tuple((str(o), int(s), int(t)) for o, s, t in es)
    return cls(conv(d["normal"]), conv(d.get("reduce", ())))

  def __str__(self) -> str:
    cell = lambda es: "|".join(f"{o}~{s}>{t}" for o, s, t in es)
    return cell(self.normal) + (f" || {cell(self.reduce)}" if self.reduce else "")


@dataclasses.dataclass(frozen=True)
class CellSpace:
  """A cell search space.

  Attributes:
    kind: ``"darts"`` or ``"nb201"``.
    ops: candidate op names, one column of the logits each.
    n_nodes: DARTS: intermediate nodes (inputs are 2 more); NB201: all nodes of the cell.
  """

  kind: str
  ops: tuple[str, ...]
  n_nodes: int

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"cell space kind={self.kind!r}: allowed values are {', '.join(KINDS)}")
    known = DARTS_OPS if self.kind == "darts" else NB201_OPS + CONV1D_OPS[2:]
    bad = [o for o in self.ops if o not in known]
    if bad or len(set(self.ops)) != len(self.ops) or len(self.ops) < 2:
      raise ValueError(f"cell space ops={list(self.ops)}: need >= 2 distinct ops from "
                       f"{', '.join(known)}")
    if self.kind == "darts" and self.ops[0] != "none":
      raise ValueError("cell space ops: the DARTS space needs 'none' as its first op")
    if not isinstance(self.n_nodes, int) or self.n_nodes < (1 if self.kind == "darts" else 2):
      raise ValueError(f"cell space n_nodes={self.n_nodes!r}: must be an int >= "
                       f"{1 if self.kind == 'darts' else 2}")

  # ---------------------------------------------------------------- structure
  @property
  def cell_types(self) -> tuple[str, ...]:
    return ("normal", "reduce") if self.kind == "darts" else ("normal",)

  @property
  def edges(self) -> tuple[tuple[int, int], ...]:
    """``(src, dst)`` of every edge, in logits-row order."""
    if self.kind == "darts":
      return tuple((j, i + 2) for i in range(self.n_nodes) for j in range(i + 2))
    return tuple((j, i) for i in range(1, self.n_nodes) for j in range(i))

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  @property
  def num_ops(self) -> int:
    return len(self.ops)

  def op_index(self, op: str) -> int:
    if op not in self.ops:
      raise ValueError(f"op {op!r} is not in this space; ops: {', '.join(self.ops)}")
    return self.ops.index(op)

  def init_logits(self, key: jax.Array, scale: float = 1e-3) -> dict[str, jax.Array]:
    """Architecture logits ``scale * N(0, 1)`` (near-uniform mixing), one array per cell type."""
    keys = jax.random.split(key, len(self.cell_types))
    return {c: scale * jax.random.normal(k, (self.num_edges, self.num_ops))
            for c, k in zip(self.cell_types, keys, strict=True)}

  # ---------------------------------------------------------------- genotypes
  def to_weights(self, genotype: Genotype, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """One-hot mixing weights of a genotype (edges it drops get all-zero rows)."""
    self.validate(genotype)
    row = {e: i for i, e in enumerate(self.edges)}
    out = {}
    for c in self.cell_types:
      w = np.zeros((self.num_edges, self.num_ops), np.float32)
      for op, s, t in getattr(genotype, c):
        w[row[(s, t)], self.op_index(op)] = 1.0
      out[c] = jnp.asarray(w, dtype)
    return out

  def validate(self, genotype: Genotype) -> None:
    """Raises ``ValueError`` unless ``genotype`` is a cell of this space."""
    valid = set(self.edges)
    for c in self.cell_types:
      es = getattr(genotype, c)
      for op, s, t in es:
        if (s, t) not in valid or op not in self.ops:
          raise ValueError(f"genotype {c} edge {(op, s, t)}: not an edge/op of this space")
      if self.kind == "darts":
        for t in range(2, self.n_nodes + 2):
          ins = [e for e in es if e[2] == t]
          if len(ins) != 2 or len({e[1] for e in ins}) != 2 or any(e[0] == "none" for e in ins):
            raise ValueError(f"genotype {c} node {t}: needs 2 distinct inputs with non-'none' "
                             f"ops, got {ins}")
      elif sorted((s, t) for _, s, t in es) != sorted(valid):
        raise ValueError(f"genotype {c}: needs exactly one op on each of the {len(valid)} edges")

  def enumerate(self) -> list[Genotype]:
    """Every genotype of an NB201 space (``num_ops ** num_edges`` cells)."""
    if self.kind != "nb201":
      raise ValueError("enumerate: only NB201 spaces are small enough to enumerate")
    return [Genotype(tuple((self.ops[k], s, t) for k, (s, t) in zip(ks, self.edges,
                                                                      strict=True)))
            for ks in itertools.product(range(self.num_ops), repeat=self.num_edges)]

  def index(self, genotype: Genotype) -> int:
    """Position of an NB201 genotype in :meth:`enumerate` order (base-``num_ops`` digits)."""
    self.validate(genotype)
    ops = {(s, t): self.op_index(o) for o, s, t in genotype.normal}
    i = 0
    for e in self.edges:
      i = i * self.num_ops + ops[e]
    return i

  def random(self, rng: np.random.Generator) -> Genotype:
    """A uniformly random genotype (uniform over the unit cube of :meth:`cube`)."""
    return self.decode(rng.uniform(size=self.cube().dim))

  # ---------------------------------------------------------------- unit cube
  def _pairs(self, node: int) -> list[str]:
    return [f"{a},{b}" for a, b in itertools.combinations(range(node), 2)]

  @functools.cached_property
  def _cube(self) -> Space:
    return self._build_cube()

  def cube(self) -> Space:
    """The black-box space of genotypes (see ``_build_cube``)."""
    return self._cube

  def _build_cube(self) -> Space:
    """The black-box space of genotypes: one ``Choice`` per decision.

    NB201: ``e{src}_{dst}`` (the op of each edge). DARTS, per cell type and intermediate
    node ``t``: ``{cell}_n{t}_inputs`` (the pair of inputs ``"a,b"``, ``a < b``) and
    ``{cell}_n{t}_op0`` / ``_op1`` (the non-``none`` ops on the edges from ``a`` and ``b``).
    """
    if self.kind == "nb201":
      return Space({f"e{s}_{t}": Choice(list(self.ops)) for s, t in self.edges})
    params = {}
    real = [o for o in self.ops if o != "none"]
    for c in self.cell_types:
      for t in range(2, self.n_nodes + 2):
        params[f"{c}_n{t}_inputs"] = Choice(self._pairs(t))
        params[f"{c}_n{t}_op0"] = Choice(real)
        params[f"{c}_n{t}_op1"] = Choice(real)
    return Space(params)

  def levels(self) -> list[int]:
    """Choices per unit-cube coordinate (``regularized_evolution(levels=...)``)."""
    sp = self.cube()
    return [len(sp.params[n].choices) for n in sp.names]

  def to_values(self, genotype: Genotype) -> dict[str, Any]:
    """The genotype as a point of :meth:`cube` (Python values)."""
    self.validate(genotype)
    if self.kind == "nb201":
      return {f"e{s}_{t}": o for o, s, t in genotype.normal}
    out = {}
    for c in self.cell_types:
      for t in range(2, self.n_nodes + 2):
        ins = sorted((e for e in getattr(genotype, c) if e[2] == t), key=lambda e: e[1])
        out[f"{c}_n{t}_inputs"] = f"{ins[0][1]},{ins[1][1]}"
        out[f"{c}_n{t}_op0"], out[f"{c}_n{t}_op1"] = ins[0][0], ins[1][0]
    return out

  def from_values(self, values: Mapping[str, Any]) -> Genotype:
    """Inverse of :meth:`to_values`."""
    if self.kind == "nb201":
      return Genotype(tuple((values[f"e{s}_{t}"], s, t) for s, t in self.edges))
    cells = {}
    for c in self.cell_types:
      es = []
      for t in range(2, self.n_nodes + 2):
        a, b = (int(v) for v in values[f"{c}_n{t}_inputs"].split(","))
        es += [(values[f"{c}_n{t}_op0"], a, t), (values[f"{c}_n{t}_op1"], b, t)]
      cells[c] = tuple(es)
    return Genotype(**cells)

  def encode(self, genotype: Genotype) -> np.ndarray:
    """The genotype as a point of ``[0, 1]^d`` (the centre of its cell of the cube)."""
    return self.cube().encode(self.to_values(genotype))

  def decode(self, u: Any) -> Genotype:
    """A point of ``[0, 1]^d`` to its genotype."""
    sp = self.cube()
    u = np.asarray(u, np.float64)
    if u.shape != (sp.dim,):
      raise ValueError(f"decode: expected a point of shape ({sp.dim},), got {u.shape}")
    values = {}
    for i, n in enumerate(sp.names):  # Choice decoding, floor(u * k), without dispatch
      ch = sp.params[n].choices
      values[n] = ch[int(np.clip(np.floor(np.clip(u[i], 0, 1) * len(ch)), 0, len(ch) - 1))]
    return self.from_values(values)


def darts_space(n_nodes: int = 4, ops: Sequence[str] = DARTS_OPS) -> CellSpace:
  """The DARTS cell space (normal and reduction cells)."""
  return CellSpace("darts", tuple(ops), n_nodes)


def nb201_space(ops: Sequence[str] = NB201_OPS, n_nodes: int = 4) -> CellSpace:
  """The NAS-Bench-201-style cell space (``NB201_MINI_OPS`` gives the 729-cell space)."""
  return CellSpace("nb201", tuple(ops), n_nodes)


def conv1d_space(ops: Sequence[str] = CONV1D_OPS, n_nodes: int = 4) -> CellSpace:
  """An NB201-style cell space of 1-D ops (``CONV1D_OPS``: zero, skip, 3- and 5-tap
  convolutions, a 3-tap convolution of dilation 2, 3-tap max and average pooling)."""
  return CellSpace("nb201", tuple(ops), n_nodes)


def mixing_weights(logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Softmax over each edge's ops: the DARTS relaxation."""
  return {c: jax.nn.softmax(v, axis=-1) for c, v in logits.items()}


def discretize(space: CellSpace, arch_logits: Mapping[str, Any]) -> Genotype:
  """The genotype the logits select.

  NB201: every edge keeps its argmax op (``none`` included). DARTS: each intermediate node
  keeps the two incoming edges whose strongest non-``none`` op has the largest softmax
  weight, with that op. Ties go to the lower index. Host-side (returns Python values).
  """
  cells = {}
  for c in space.cell_types:
    if c not in arch_logits:
      raise ValueError(f"discretize: arch_logits lacks cell type {c!r}; needs "
                       f"{list(space.cell_types)}")
    lg = np.asarray(arch_logits[c], np.float64)
    if lg.shape != (space.num_edges, space.num_ops):
      raise ValueError(f"discretize: arch_logits[{c!r}] has shape {lg.shape}, expected "
                       f"{(space.num_edges, space.num_ops)}")
    w = np.exp(lg - lg.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    if space.kind == "nb201":
      cells[c] = tuple((space.ops[int(np.argmax(w[r]))], s, t)
                       for r, (s, t) in enumerate(space.edges))
      continue
    es = []
    none = space.op_index("none")
    for t in range(2, space.n_nodes + 2):
      rows = [r for r, (_, d) in enumerate(space.edges) if d == t]
      best = []
      for r in rows:
        wr = w[r].copy()
        wr[none] = -np.inf
        k = int(np.argmax(wr))
        best.append((-wr[k], r, k))
      best.sort()
      chosen = sorted(best[:2], key=lambda b: space.edges[b[1]][0])
      es += [(space.ops[k], space.edges[r][0], t) for _, r, k in chosen]
    cells[c] = tuple(es)
  return Genotype(**cells)


def count_ops(genotype: Genotype, ops: Sequence[str] = ("skip_connect",),
              cell: str = "normal") -> int:
  """Number of edges of ``cell`` whose op is in ``ops`` (the collapse statistic)."""
  return sum(1 for o, _, _ in getattr(genotype, cell) if o in ops)
