"""Data-parallel populations: a 2-D device mesh, trials over ``pop``, the minibatch over ``data``.

:func:`population_data_mesh` makes a ``(pop, data)`` mesh; :func:`make_kernel` builds a
population kernel (the interface of :class:`~metaopt._src.population.PopulationKernel`) whose
states and hyperparameters are sharded over ``pop`` and whose every minibatch is sharded over
``data``. The train step is unchanged: the loss is a mean over the (sharded) batch, so the
compiler's SPMD partitioner computes the per-shard gradients and averages them with its own
collectives (all-reduce over ``data``). A population can so use more devices than it has
trials, and a single trial can span devices. The minibatch order is the in-memory engine's
(one permutation per chunk key, shared by the population, or one per trial).

``compute_dtype=jnp.bfloat16`` runs the forward and backward pass in bfloat16 (inputs and a
bfloat16 copy of the parameters); parameters, optimizer state and updates stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metaopt._src import population as pop
from metaopt._src.jit_options import OptionsJit
from metaopt.tasks import TrialFns

PyTree = Any


def population_data_mesh(pop_size: int, data_size: int,
                         devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(pop, data)`` mesh of ``pop_size * data_size`` devices (default: the local ones)."""
  for name, v in (("pop_size", pop_size), ("data_size", data_size)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name}={v!r}: must be an integer >= 1")
  devices = list(jax.local_devices() if devices is None else devices)
  if len(devices) < pop_size * data_size:
    raise ValueError(f"pop_size * data_size = {pop_size * data_size}: more than the "
                     f"{len(devices)} devices available")
  grid = np.asarray(devices[:pop_size * data_size]).reshape(pop_size, data_size)
  return Mesh(grid, ("pop", "data"), axis_types=(AxisType.Auto, AxisType.Auto))


def search_mesh(mesh: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ``(pop, data)`` mesh a search asked for (``mesh=(pop, data)`` over ``devices``,
  default all local devices), checked: one ``ValueError`` naming ``mesh`` otherwise."""
  ok = isinstance(mesh, (tuple, list)) and len(mesh) == 2 and all(
      not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1 for v in mesh)
  if not ok:
    raise ValueError(f"mesh={mesh!r}: must be a (pop, data) pair of integers >= 1 "
                     "(trials over pop devices, each minibatch over data devices)")
  p, d = int(mesh[0]), int(mesh[1])
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices or len(devices) % (p * d):
    raise ValueError(f"mesh={(p, d)}: pop * data = {p * d} must divide the number of devices "
                     f"({len(devices)}: {devices[0].platform if devices else 'none'})")
  return population_data_mesh(p, d, devices)


def check_batch_sizes(mesh: Mesh, batch_size: int, space: Any, n_train: int) -> None:
  """Every minibatch size a search can use (``batch_size`` and a structural ``batch_size``
  of the space) splits evenly over the mesh's ``data`` axis; else one ``ValueError``."""
  n_data = mesh.shape["data"]
  sizes = {("batch_size", min(batch_size, n_train))}
  p = getattr(space, "params", {}).get("batch_size") if space is not None else None
  if p is not None and getattr(p, "structural", False):
    vals = list(p.choices) if hasattr(p, "choices") else list(range(p.lo, p.hi + 1))
    sizes = {("space batch_size", min(int(v), n_train)) for v in vals}
  bad = sorted(v for _, v in sizes if v % n_data)
  if bad:
    field = "space batch_size" if any(f == "space batch_size" for f, _ in sizes) else \
        "batch_size"
    raise ValueError(f"{field}={bad[0]}: must be a multiple of the mesh's data axis "
                     f"({n_data}), so each minibatch splits evenly over its devices")


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype: Any) -> Any:
  """``None`` for float32 compute, ``jnp.bfloat16`` for bfloat16; else one ``ValueError``."""
  if compute_dtype is None:
    return None
  try:
    dt = jnp.dtype(compute_dtype)
  except TypeError:
    dt = None
  if dt == jnp.float32:
    return None
  if dt != jnp.bfloat16:
    raise ValueError(f"compute_dtype={compute_dtype!r}: must be one of "
                     f"{', '.join(COMPUTE_DTYPES)} (parameters stay float32)")
  return jnp.bfloat16


def bfloat16_compute(fns: TrialFns) -> TrialFns:
  """``fns`` whose forward and backward pass run in bfloat16: the train step differentiates
  the loss at a bfloat16 copy of the float32 parameters (inputs cast too) and applies the
  float32 gradient to the float32 parameters."""

  def cast(tree, dt):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

  def train_step(state, batch, h):
    x, y = batch
    lo = {**state, "params": cast(state["params"], jnp.bfloat16)}
    new, tel = fns.train_step(lo, (x.astype(jnp.bfloat16), y), h)
    # the step's update, taken in bfloat16, applied to the float32 master copy
    delta = jax.tree_util.tree_map(lambda n, o: n.astype(jnp.float32) - o.astype(jnp.float32),
                                   new["params"], lo["params"])
    params = jax.tree_util.tree_map(lambda p, d: p + d, state["params"], delta)
    opt = jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new["opt_state"],
                                 state["opt_state"])
    return {**new, "params": params, "opt_state": opt}, cast(tel, jnp.float32)

  def evaluate(state, x, y, h):
    out = fns.evaluate({**state, "params": cast(state["params"], jnp.bfloat16)},
                       x.astype(jnp.bfloat16), y, h)
    return cast(out, jnp.float32)

  return TrialFns(fns.init, train_step, evaluate)


def make_kernel(fns: TrialFns, n_train: int, batch_size: int, mesh: Mesh,
                shared_batches: bool = True, compute_dtype: Any = None) -> pop.PopulationKernel:
  """A population kernel on a ``(pop, data)`` mesh (see the module docstring).

  Population sizes must be multiples of the ``pop`` axis and ``batch_size`` of the ``data``
  axis.
  """
  if tuple(mesh.axis_names) != ("pop", "data"):
    raise ValueError(f"mesh: axes must be ('pop', 'data'); got {tuple(mesh.axis_names)}")
  n_data = mesh.shape["data"]
  if batch_size < 1 or batch_size > n_train or batch_size % n_data:
    raise ValueError(f"batch_size={batch_size}: must be in [1, {n_train}] and a multiple of "
                     f"the data axis ({n_data})")
  if check_compute_dtype(compute_dtype) is not None:
    fns = bfloat16_compute(fns)
  steps = n_train // batch_size
  batch_sh = NamedSharding(mesh, P("data"))

  def trial_chunk(state, h, alive, perm, data):
    def step(s, i):
      idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
      x = jax.lax.with_sharding_constraint(data["x_train"][idx], batch_sh)
      y = jax.lax.with_sharding_constraint(data["y_train"][idx], batch_sh)
      return fns.train_step(s, (x, y), h)

    new, tel = jax.lax.scan(step, state, jnp.arange(steps))
    ev = fns.evaluate(new, data["x_valid"], data["y_valid"], h)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, state)
    return new, pop.epoch_metrics(tel, ev)

  def chunk(states, h, alive, key, data):
    n = alive.shape[0]
    if shared_batches:
      perm = jax.random.permutation(key, n_train)
      return jax.vmap(trial_chunk, in_axes=(0, 0, 0, None, None))(states, h, alive, perm, data)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_train))(jax.random.split(key, n))
    return jax.vmap(trial_chunk, in_axes=(0, 0, 0, 0, None))(states, h, alive, perms, data)

  pop_sh, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
  init = OptionsJit(jax.vmap(fns.init), pop.init_compile_options(False),
                    in_shardings=(pop_sh, pop_sh), out_shardings=pop_sh)
  chunk_j = jax.jit(chunk, in_shardings=(pop_sh, pop_sh, pop_sh, rep, rep),
                    out_shardings=(pop_sh, pop_sh), donate_argnums=(0,))

  def chunk_sharded(states, h, alive, key, data):
    return chunk_j(jax.device_put(states, pop_sh), h, alive, key, data)

  return pop.PopulationKernel(init, chunk_sharded, steps, mesh.shape["pop"])
