"""Training-condition detectors over per-epoch telemetry (after DREAM, Cao et al. 2022).

Conditions, per trial and epoch, with the paper's default thresholds:

* ``slow_convergence``: the valid objective improved by less than ``min_delta`` (0.01) since
  the previous epoch (never at the first epoch).
* ``vanishing_gradients``: first/last layer gradient-norm ratio < 1e-3 and first-layer
  norm < 1e-4.
* ``exploding_gradients``: that ratio > 70, or non-finite gradients.
* ``dying_relu``: at least 70% of (live) gradient entries exactly zero.
* ``nonfinite_weights``: non-finite weights or loss.

The architecture family (DREAM's "A" condition) is a property of the trial, not of an
epoch: :func:`architecture_family` reads it from the task and the trial's structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

CONDITIONS: tuple[str, ...] = ("slow_convergence", "vanishing_gradients", "exploding_gradients",
                               "dying_relu", "nonfinite_weights")
THRESHOLDS: dict[str, float] = {"min_delta": 0.01, "vanish_ratio": 1e-3, "vanish_first": 1e-4,
                                "explode_ratio": 70.0, "dead_fraction": 0.7}


FAMILIES: tuple[str, ...] = ("mlp", "residual_mlp", "cnn", "linear", "supernet")


def architecture_family(task: Any, params: Mapping[str, Any] | None = None) -> str:
  """The architecture family of a trial: ``task.family`` ("mlp", "cnn", "linear", ...),
  ``"residual_mlp"`` for an MLP trained with residual connections."""
  family = getattr(task, "family", None) or "mlp"
  if family == "mlp" and params and bool(params.get("residual", False)):
    return "residual_mlp"
  return family


def detect_conditions(metrics: Mapping[str, jax.Array],
                      thresholds: Mapping[str, float] | None = None) -> dict[str, jax.Array]:
  """Boolean arrays ``[n]`` per condition from one epoch's population metrics."""
  t = dict(THRESHOLDS)
  if thresholds:
    unknown = sorted(set(thresholds) - set(t))
    if unknown:
      raise ValueError(f"thresholds: unknown key(s) {unknown}; allowed: {sorted(t)}")
    t.update(thresholds)
  first = jnp.asarray(metrics["grad_norm_first"], jnp.float32)
  last = jnp.asarray(metrics["grad_norm_last"], jnp.float32)
  ratio = first / jnp.maximum(last, 1e-30)
  gain = jnp.asarray(metrics["objective_delta"], jnp.float32)  # improvement since last epoch
  return {
      "slow_convergence": jnp.nan_to_num(gain, nan=jnp.inf) < t["min_delta"],
      "vanishing_gradients": (ratio < t["vanish_ratio"]) & (first < t["vanish_first"]),
      "exploding_gradients": (ratio > t["explode_ratio"])
      | jnp.asarray(metrics["nonfinite_grads"], bool),
      "dying_relu": jnp.asarray(metrics["zero_grad_frac"], jnp.float32) >= t["dead_fraction"],
      "nonfinite_weights": jnp.asarray(metrics["nonfinite_params"], bool)
      | jnp.asarray(metrics["nonfinite_loss"], bool),
  }
