"""The population engine: N trials trained as one ``jit(vmap(...))`` kernel, a chunk per call.

A chunk is one epoch: a ``lax.scan`` over minibatches, then an evaluation on the valid
split, all inside the kernel, returning per-trial epoch telemetry. Trials whose ``alive``
flag is off (failed, pruned) keep their state unchanged.

With ``shared_batches=True`` (the default) every trial of the population sees the same
minibatch order in an epoch (common random numbers: comparisons between hyperparameters are
less noisy), and the first layer of all trials becomes one large matrix product, because
the shared input batch is not vmapped. Each trial still has its own initialisation seed.

Compute accounting: :func:`trial_epoch_flops` is XLA's cost analysis of the compiled
population train step (times the steps of a chunk) plus the evaluation, divided per trial;
:func:`compile_seconds` counts time JAX spent tracing and compiling, so the driver can keep
compilation out of the device-seconds it charges to trials.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tasks import Dataset, TrialFns

PyTree = Any


class PopulationKernel(NamedTuple):
  """Compiled functions for one structural group."""

  init: Any     # (keys[n], h) -> states
  chunk: Any    # (states, h, alive, key, data) -> (states, metrics)
  steps_per_chunk: int
  multiple: int = 1  # population sizes must be multiples of this (the number of devices)


_compile = {"s": 0.0}
_compile_lock = threading.Lock()


def _on_duration(event: str, duration: float, **_: Any) -> None:
  if event.startswith("/jax/core/compile/"):
    with _compile_lock:
      _compile["s"] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling JAX computations."""
  return _compile["s"]


def _cost_flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def trial_epoch_flops(fns: TrialFns, states: PyTree, h: Mapping[str, Any],
                      data: Mapping[str, jax.Array], batch_size: int) -> float:
  """FLOPs one trial spends per chunk (epoch): XLA's cost analysis of the compiled
  population train step times the steps per chunk, plus the valid-split evaluation, divided
  by the population size. (The cost analysis of a whole ``lax.scan`` counts its body once,
  so the step is analysed on its own.)"""
  n = jax.tree_util.tree_leaves(h)[0].shape[0]
  steps = data["x_train"].shape[0] // batch_size
  abstract = lambda t: jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), t)
  batch = tuple(jax.ShapeDtypeStruct((batch_size, *data[k].shape[1:]), data[k].dtype)
                for k in ("x_train", "y_train"))
  st, hh = abstract(states), abstract(dict(h))
  step = _cost_flops(jax.jit(jax.vmap(fns.train_step, in_axes=(0, None, 0))), st, batch, hh)
  ev = _cost_flops(jax.jit(jax.vmap(fns.evaluate, in_axes=(0, None, None, 0))), st,
                   abstract(data["x_valid"]), abstract(data["y_valid"]), hh)
  return (steps * step + ev) / n


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """A 1-D mesh with axis ``"pop"`` over ``devices`` (default: all local devices), or None
  for a single device. Trials are independent, so the population axis shards with no
  communication; data and minibatch order are replicated."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices: must name at least one device")
  if len(devices) == 1:
    return None
  return Mesh(np.asarray(devices), ("pop",), axis_types=(AxisType.Auto,))


def epoch_metrics(tel: Mapping[str, jax.Array], evaluation: Mapping[str, jax.Array]) -> dict:
  """Reduces per-step telemetry of one trial's epoch and adds ``valid_*`` metrics."""
  out = {}
  for k, v in tel.items():
    if k.startswith("nonfinite"):
      out[k] = jnp.any(v)
    elif k == "loss":
      out["train_loss"] = jnp.mean(v)
      out["train_loss_last"] = v[-1]
    else:
      out[k] = jnp.mean(v, axis=0)
  for k, v in evaluation.items():
    out[f"valid_{k}"] = v
  return out


def data_arrays(data: Dataset) -> dict[str, jax.Array]:
  """Train and valid splits as device arrays (the test split never enters a search)."""
  return {"x_train": jnp.asarray(data.train.x), "y_train": jnp.asarray(data.train.y),
          "x_valid": jnp.asarray(data.valid.x), "y_valid": jnp.asarray(data.valid.y)}


def make_kernel(fns: TrialFns, n_train: int, batch_size: int,
                shared_batches: bool = True, mesh: Mesh | None = None) -> PopulationKernel:
  """Builds the jitted population ``init`` and ``chunk`` for one structural group.

  With a ``mesh`` (see :func:`population_mesh`) the population axis of states,
  hyperparameters and metrics is sharded over its devices; population sizes must then be
  multiples of the device count (``PopulationKernel.multiple``).
  """
  if batch_size < 1 or batch_size > n_train:
    raise ValueError(f"batch_size={batch_size}: must be in [1, {n_train}] (train split size)")
  steps = n_train // batch_size

  def trial_chunk(state, h, alive, perm, data):
    def step(s, i):
      idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
      batch = (data["x_train"][idx], data["y_train"][idx])
      return fns.train_step(s, batch, h)

    new, tel = jax.lax.scan(step, state, jnp.arange(steps))
    ev = fns.evaluate(new, data["x_valid"], data["y_valid"], h)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, state)
    return new, epoch_metrics(tel, ev)

  def chunk(states, h, alive, key, data):
    n = alive.shape[0]
    if shared_batches:
      perm = jax.random.permutation(key, n_train)
      return jax.vmap(trial_chunk, in_axes=(0, 0, 0, None, None))(states, h, alive, perm, data)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_train))(jax.random.split(key, n))
    return jax.vmap(trial_chunk, in_axes=(0, 0, 0, 0, None))(states, h, alive, perms, data)

  if mesh is None:
    init = jax.jit(jax.vmap(fns.init))
    return PopulationKernel(init, jax.jit(chunk, donate_argnums=(0,)), steps)
  pop, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
  init = jax.jit(jax.vmap(fns.init), in_shardings=(pop, pop), out_shardings=pop)
  chunk_j = jax.jit(chunk, in_shardings=(pop, pop, pop, rep, rep), out_shardings=(pop, pop),
                    donate_argnums=(0,))

  def chunk_sharded(states, h, alive, key, data):
    # states gathered on the host side (compaction, exploit) come back replicated
    return chunk_j(jax.device_put(states, pop), h, alive, key, data)

  return PopulationKernel(init, chunk_sharded, steps, mesh.size)
