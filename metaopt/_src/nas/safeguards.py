"""Collapse safeguards for differentiable NAS, on by default and reported per epoch.

* Skip count: the number of parameter-free ``skip_connect`` ops in the derived normal cell;
  more than ``max_skip`` means the search has collapsed onto skips (Liang et al., "DARTS+:
  Improved Differentiable Architecture Search with Early Stopping", 2019).
* Dominant eigenvalue of the Hessian of the validation loss with respect to the
  architecture, by power iteration with Hessian-vector products (Zela et al.,
  "Understanding and Robustifying Differentiable Architecture Search", ICLR 2020). Their
  early-stop rule (DARTS-ES): stop when the mean eigenvalue of the last ``window`` epochs
  exceeds that of the ``window`` epochs before by more than ``1 / eig_ratio`` (0.75 in the
  paper), and return the architecture of ``window`` epochs earlier. The first ``eig_warmup``
  epochs are left out (the eigenvalue grows naturally while the weights first learn).

Both rules are pure functions of the per-epoch history. A run whose safeguard fires stops
early, reports ``collapsed=True`` with the reason, and derives its cell from the last epoch
before the collapse. The preventive options (auxiliary skip, skip penalty) live in the
search settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metaopt.hypergrad import power_iteration


@dataclasses.dataclass(frozen=True)
class SafeguardSettings:
  """Collapse rules; ``enabled=False`` only reports, never stops."""

  enabled: bool = True
  max_skip: int = 2
  eig_window: int = 2
  eig_ratio: float = 0.75
  eig_min: float = 0.0
  eig_iters: int = 10
  eig_warmup: int = 0

  def __post_init__(self):
    if not isinstance(self.max_skip, int) or self.max_skip < 0:
      raise ValueError(f"max_skip={self.max_skip!r}: must be an int >= 0")
    if not isinstance(self.eig_window, int) or self.eig_window < 1:
      raise ValueError(f"eig_window={self.eig_window!r}: must be an int >= 1")
    if not 0 < self.eig_ratio <= 1:
      raise ValueError(f"eig_ratio={self.eig_ratio!r}: must be in (0, 1]")
    if not isinstance(self.eig_warmup, int) or self.eig_warmup < 0:
      raise ValueError(f"eig_warmup={self.eig_warmup!r}: must be an int >= 0")
    if not isinstance(self.eig_iters, int) or self.eig_iters < 1:
      raise ValueError(f"eig_iters={self.eig_iters!r}: must be an int >= 1")


def dominant_eigenvalue(loss: Callable[[Any], jax.Array], alpha: Any, key: jax.Array,
                        iters: int = 10) -> jax.Array:
  """Largest-magnitude eigenvalue of ``d^2 loss / d alpha^2`` by power iteration (HVPs)."""
  flat, unravel = ravel_pytree(alpha)
  grad = jax.grad(lambda f: loss(unravel(f)))

  def hvp(v):
    return jax.jvp(grad, (flat,), (v,))[1]

  v0 = jax.random.normal(key, flat.shape, flat.dtype)
  return power_iteration(hvp, v0, iters)


def check(history: Sequence[dict[str, Any]], settings: SafeguardSettings) -> tuple[str | None,
                                                                                   int]:
  """``(reason, rollback_epochs)`` for the history so far; reason is None when healthy.

  ``history[i]`` holds epoch ``i``'s ``skip_count`` and ``eigenvalue``. ``rollback_epochs``
  is how many epochs back the last healthy architecture is.
  """
  if not history:
    return None, 0
  last = history[-1]
  if last["skip_count"] > settings.max_skip:
    return (f"skip collapse: {last['skip_count']} skip_connect ops in the normal cell "
            f"(max {settings.max_skip}) at epoch {len(history) - 1}"), 1
  k = settings.eig_window
  eig = [float(h["eigenvalue"]) for h in history]
  if len(eig) - settings.eig_warmup >= 2 * k:
    now, before = sum(eig[-k:]) / k, sum(eig[-2 * k:-k]) / k
    if now > settings.eig_min and before / max(now, 1e-12) < settings.eig_ratio:
      return (f"eigenvalue collapse: mean dominant Hessian eigenvalue grew {now / before:.2f}x "
              f"({before:.4g} -> {now:.4g}) over {k} epochs at epoch {len(eig) - 1}"), k
  return None, 0


def entropy(alpha: dict[str, Any]) -> jax.Array:
  """Mean entropy (nats) of the per-edge op distributions."""
  ent = [jnp.mean(-jnp.sum(jax.nn.softmax(a, -1) * jax.nn.log_softmax(a, -1), -1))
         for a in alpha.values()]
  return sum(ent) / len(ent)
