"""The learned-optimizer protocol: ``init(key) -> theta`` and ``as_optax(theta)``.

As in learned_optimization's ``LearnedOptimizer`` (``init`` + ``opt_fn``), meta-parameters
``theta`` are a pytree in unconstrained space, and ``as_optax(theta)`` closes over them to
give an ordinary ``optax.GradientTransformation``: differentiable in ``theta`` when used
inside a meta-training unroll, and usable in any optax training loop (``optax.chain`` with
clipping, schedules, ...) once meta-trained. ``name`` and ``config`` (JSON-able keyword
arguments of the factory) let :func:`metaopt.lopt.load` rebuild the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import optax

PyTree = Any


class LearnedOptimizer(NamedTuple):
  """A learned optimizer: static settings plus two pure functions of meta-parameters."""

  init: Callable[[jax.Array], PyTree]
  as_optax: Callable[[PyTree], optax.GradientTransformation]
  name: str
  config: Mapping[str, Any]
