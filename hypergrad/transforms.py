"""Bijectors between unconstrained meta-parameters ``theta`` and constrained ``hparams``.

Gradient-based hyperparameter optimization steps in an unconstrained space (Maclaurin et al.
2015 optimise log learning rates and logit momenta; Lorraine et al. 2020 likewise): a
positive hyperparameter is ``exp(theta)``, one in ``(0, 1)`` is ``sigmoid(theta)``, one in
``(lo, hi)`` is ``lo + (hi − lo) · sigmoid(theta)``.

A *spec* is a pytree prefix of ``hparams`` whose leaves are :class:`Bijector`\\ s or their
names (``"identity"``, ``"log"``, ``"logit"``); one bijector applies to a whole subtree
(e.g. ``{"learning_rate": "log"}`` for a dict of per-layer learning rates).
:func:`spec_from_space` derives a spec from a ``metaopt.spaces.Space``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metaopt.hypergrad.types import HParams, PyTree


@dataclasses.dataclass(frozen=True)
class Bijector:
  """``forward: theta -> hparam`` and its ``inverse``; a pytree *leaf* (not a node)."""

  name: str
  forward: Callable[[jax.Array], jax.Array]
  inverse: Callable[[jax.Array], jax.Array]


def _logit(p: jax.Array) -> jax.Array:
  return jnp.log(p) - jnp.log1p(-p)


IDENTITY = Bijector("identity", lambda t: t, lambda h: h)
LOG = Bijector("log", jnp.exp, jnp.log)
LOGIT = Bijector("logit", jax.nn.sigmoid, _logit)
BIJECTORS: dict[str, Bijector] = {"identity": IDENTITY, "log": LOG, "logit": LOGIT}


def interval(lo: float, hi: float) -> Bijector:
  """``(lo, hi)`` via a scaled sigmoid."""
  if not lo < hi:
    raise ValueError(f"interval: needs lo < hi, got lo={lo}, hi={hi}")
  return Bijector(f"interval({lo}, {hi})",
                  lambda t: lo + (hi - lo) * jax.nn.sigmoid(t),
                  lambda h: _logit((h - lo) / (hi - lo)))


def log_interval(lo: float, hi: float) -> Bijector:
  """``(lo, hi)`` with ``0 < lo``, via a sigmoid in log space."""
  if not 0 < lo < hi:
    raise ValueError(f"log_interval: needs 0 < lo < hi, got lo={lo}, hi={hi}")
  a, b = math.log(lo), math.log(hi)
  return Bijector(f"log_interval({lo}, {hi})",
                  lambda t: jnp.exp(a + (b - a) * jax.nn.sigmoid(t)),
                  lambda h: _logit((jnp.log(h) - a) / (b - a)))


def get_bijector(b: Bijector | str) -> Bijector:
  """A :class:`Bijector` from itself or its name."""
  if isinstance(b, Bijector):
    return b
  if isinstance(b, str) and b in BIJECTORS:
    return BIJECTORS[b]
  raise ValueError(f"bijector {b!r} is unknown; allowed: a Bijector or one of "
                   f"{', '.join(BIJECTORS)}")


def _is_leaf(x: Any) -> bool:
  return isinstance(x, (Bijector, str))


def _apply(spec: PyTree, tree: PyTree, which: str) -> PyTree:
  def f(b, sub):
    fn = getattr(get_bijector(b), which)
    return jax.tree.map(fn, sub)

  what = "theta" if which == "forward" else "hparams"
  if isinstance(spec, Mapping) and isinstance(tree, Mapping) and set(spec) != set(tree):
    missing, extra = sorted(set(tree) - set(spec)), sorted(set(spec) - set(tree))
    raise ValueError(f"spec: its keys must be those of {what}; {what} has {sorted(tree)}"
                     + (f", spec has no bijector for {missing}" if missing else "")
                     + (f", spec names {extra}, not in {what}" if extra else ""))
  try:
    return jax.tree.map(f, spec, tree, is_leaf=_is_leaf)
  except ValueError as e:
    if "bijector" in str(e):
      raise
    raise ValueError(f"spec: must be a pytree prefix of {what} (a bijector or its name per "
                     f"leaf or subtree); spec {jax.tree.structure(spec, is_leaf=_is_leaf)} "
                     f"does not match {what} {jax.tree.structure(tree)}") from e


def to_hparams(theta: PyTree, spec: PyTree) -> HParams:
  """Maps unconstrained ``theta`` to constrained ``hparams`` (``spec``: prefix of ``theta``).

  Examples:
    >>> import jax.numpy as jnp
    >>> h = to_hparams({"lr": jnp.log(0.1), "mom": 0.0}, {"lr": "log", "mom": "logit"})
    >>> round(float(h["lr"]), 6), float(h["mom"])
    (0.1, 0.5)
  """
  return _apply(spec, theta, "forward")


def to_theta(hparams: HParams, spec: PyTree) -> PyTree:
  """Maps constrained ``hparams`` to unconstrained ``theta``; inverse of :func:`to_hparams`."""
  return _apply(spec, hparams, "inverse")


def spec_from_space(space: Any, names: Sequence[str] | None = None,
                    bounded: bool = False) -> dict[str, Bijector]:
  """A bijector per differentiable (``Float``) parameter of a ``metaopt.spaces.Space``.

  Args:
    space: a ``metaopt.spaces.Space``.
    names: parameters to include (default: every ``Float``).
    bounded: keep values inside the space's bounds (``log_interval`` / ``interval``)
      rather than only positive (``log``) or unconstrained (``identity``).

  Returns:
    ``{name: Bijector}``.

  Raises:
    ValueError: a named parameter is not a ``Float`` (``Int``/``Choice`` are discrete, see
      ``metaopt.hypergrad.diagnostics.nondifferentiable``) or is unknown.
  """
  from metaopt.spaces import Float

  names = list(names) if names is not None else [
      n for n, p in space.params.items() if isinstance(p, Float)]
  spec = {}
  for n in names:
    if n not in space.params:
      raise ValueError(f"parameter {n!r}: not in the space; known: {sorted(space.params)}")
    p = space.params[n]
    if not isinstance(p, Float):
      raise ValueError(f"parameter {n!r}: {type(p).__name__} is discrete, it has no "
                       "hypergradient; search it with a black-box searcher")
    if bounded:
      spec[n] = log_interval(p.lo, p.hi) if p.log else interval(p.lo, p.hi)
    else:
      spec[n] = LOG if p.log else IDENTITY
  return spec
