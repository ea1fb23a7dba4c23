"""Zero-cost proxies for a whole population of architectures in one kernel.

Each architecture is a one-hot mixing of the supernet (so every member has its own cell and
the population is one ``jit(vmap(...))``), scored at initialisation:

* ``synflow``: Tanaka et al., "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020 (``sum |theta| * dR/d|theta|`` with an all-ones
  input through the network without its normalisation);
* ``grad_norm``: norm of the loss gradient on one batch (Abdelfattah et al., "Zero-Cost
  Proxies for Lightweight NAS", ICLR 2021);
* ``jacob_cov``: Mellor et al., "Neural Architecture Search without Training" (NASWOT),
  ICML 2021, v1 score: ``-sum(log(l + k) + 1 / (l + k))`` over the eigenvalues ``l`` of the
  correlation matrix of per-example input Jacobians.

Use them to rank architectures, or to warm-start a search (the top-k as the initial
population of a black-box searcher). :func:`rank_correlation` reports Spearman and Kendall
rank correlations with trained accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.spaces import Genotype
from metaopt.tasks import Network

PROXIES: tuple[str, ...] = ("synflow", "grad_norm", "jacob_cov")


def proxy_scores(model: Network, genotypes: Sequence[Genotype], batch: tuple[Any, Any],
                 key: jax.Array) -> dict[str, np.ndarray]:
  """``{proxy: scores[n]}`` for ``n`` genotypes of ``model.space`` (higher = better)."""
  space = model.space
  ws = [space.to_weights(g) for g in genotypes]
  w = {c: jnp.stack([wi[c] for wi in ws]) for c in space.cell_types}
  x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
  plain = model.clone(use_norm=False)

  def one(k, wi):
    p = model.init(k, x[:2], wi)
    absp = jax.tree.map(jnp.abs, p)
    ones = jnp.ones((1,) + x.shape[1:], x.dtype)
    g = jax.grad(lambda q: jnp.sum(plain.apply(q, ones, wi)))(absp)
    synflow = sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(absp),
                                                 jax.tree_util.tree_leaves(g), strict=True))
    gl = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(q, x, wi), y).mean())(p)
    grad_norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree_util.tree_leaves(gl)))
    jac = jax.grad(lambda xx: jnp.sum(model.apply(p, xx, wi)))(x).reshape(x.shape[0], -1)
    jac = jac - jnp.mean(jac, 1, keepdims=True)
    norm = jnp.sqrt(jnp.sum(jac ** 2, 1, keepdims=True)) + 1e-12
    corr = (jac / norm) @ (jac / norm).T
    ev = jnp.linalg.eigvalsh(corr)
    jc = -jnp.sum(jnp.log(jnp.abs(ev) + 1e-5) + 1.0 / (jnp.abs(ev) + 1e-5))
    return {"synflow": jnp.log1p(synflow), "grad_norm": grad_norm,
            "jacob_cov": jnp.nan_to_num(jc, nan=-1e30)}

  keys = jax.random.split(key, len(genotypes))
  out = jax.jit(jax.vmap(one))(keys, w)
  return {k: np.asarray(v) for k, v in out.items()}


def rank_correlation(scores: Sequence[float], accuracy: Sequence[float]) -> dict[str, float]:
  """Spearman's rho and Kendall's tau between proxy scores and trained accuracies."""
  from scipy import stats
  s, a = np.asarray(scores, np.float64), np.asarray(accuracy, np.float64)
  return {"spearman": float(stats.spearmanr(s, a).statistic),
          "kendall": float(stats.kendalltau(s, a).statistic)}
