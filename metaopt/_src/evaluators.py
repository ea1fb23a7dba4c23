"""Evaluators: what :func:`metaopt.search` runs for the trials a searcher asks for.

An :class:`Evaluator` advances a batch of trials one *epoch* (chunk) at a time; the search
loop (``loop.py``) owns everything else: asking, decoding, recording, pruning and PBT
between epochs, checkpoints and telling. Four evaluators ship with metaopt:

* :class:`TaskEvaluator`: a bundled :class:`metaopt.tasks.Task`, trained as compiled population
  kernels (one per structural group; a loop over live trials on one CPU device, ``vmap``
  sharded over the devices on accelerators);
* :class:`JaxEvaluator`: a user's pure JAX function, either ``train(h, key) -> metrics``
  (one epoch) or ``init(h, key) -> state`` with ``epoch(state, h) -> (state, metrics)``
  (pruning and PBT between epochs), vmapped or looped over the batch like a task;
* :class:`CallableEvaluator`: any Python callable ``params -> value | metrics`` (no JAX
  needed), called one trial at a time or with the whole batch;
* NAS retraining (``metaopt.nas``) is a :class:`JaxEvaluator` over a genotype's training.

The protocol, in short (see :class:`Evaluator`)::

    state = ev.start(batch)                                  # fresh trial states
    state, metrics = ev.epoch(state, batch, alive, epoch, key)  # metrics[i]: dict or None
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import compile_cache, keys, mesh2d, streaming
from metaopt._src import population as pop
from metaopt.spaces import Choice, Space
from metaopt.tasks import ACTIVATIONS, Task, TrialFns, check_reads, with_activation_branches

PyTree = Any
Metrics = dict[str, Any]

DIRECTIONS = ("minimize", "maximize")

# what to do with a dict given where a Space belongs
SPACE_HINT = ("; wrap a dict of parameters as Space({...}), or use spaces.from_spec for "
              "{'type': ...} dicts")


def _cross_group_copy(batch: TrialBatch, t: int, c: int) -> str:
  """The error of a PBT copy between trials whose structures (weight shapes) differ."""
  structural = [n for n, p in batch.space.params.items() if getattr(p, "structural", False)]
  differ = {n: (batch.params[t].get(n), batch.params[c].get(n)) for n in structural
            if batch.params[t].get(n) != batch.params[c].get(n)}
  what = (", ".join(f"{n}={a!r} vs {b!r}" for n, (a, b) in differ.items()) if differ
          else "another structural group")
  return (f"exploit: trial {t} cannot copy the weights of trial {c} ({what}); "
          "population-based training copies weights between trials, so they need one "
          f"structure: fix the structural parameter(s) {structural} in the space "
          "(metaopt.spaces.Fixed) or search them with a searcher that does not copy")


@dataclasses.dataclass
class TrialBatch:
  """The trials of one round, as the evaluator sees them.

  Attributes:
    number: the round number.
    ids: store ids of the trials.
    numbers: trial numbers in the study.
    seeds: one integer seed per trial.
    u: ``[n, d]`` points in the unit cube (PBT may change them between epochs).
    h: the decoded hyperparameters, a dict of ``[n]`` host arrays.
    params: the same values as plain Python dicts, one per trial.
    feasible: ``[n]`` False for trials a constraint ruled out (never evaluated).
    owned: multi-host: ``[n]`` True for the trials this process evaluates; None otherwise.
    epochs: epochs each trial trains at most.
    space: the space the points come from.
  """

  number: int
  ids: list[int]
  numbers: list[int]
  seeds: np.ndarray
  u: np.ndarray
  h: dict[str, Any]
  params: list[dict[str, Any]]
  feasible: np.ndarray
  owned: np.ndarray | None
  epochs: int
  space: Space | None = None
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # evaluator's own use

  @property
  def mine(self) -> np.ndarray:
    """Trials this process evaluates."""
    return self.feasible if self.owned is None else self.feasible & self.owned


class Evaluator:
  """The protocol every evaluator implements (subclass it, or duck-type the two methods).

  Required:
    ``start(batch) -> state``: fresh evaluation state for ``batch``'s feasible trials (a
      pytree, checkpointed with the round).
    ``epoch(state, batch, alive, epoch, key) -> (state, metrics)``: advances the trials
      with ``alive[i]`` one epoch; ``metrics[i]`` is a dict of numbers for a trial that ran
      (it must hold ``objective``, the metric the search optimizes) and None for one that did
      not. A trial that broke gets ``{"error": "why"}``; it is recorded failed and the rest
      go on (``{"pruned": "why"}``: recorded pruned). An exception raised by ``epoch``
      stops the search (a ``failed`` study event; the round's trials stay ``running`` so a
      resume after the fix trains them).

  Optional (defaults here):
    ``exploit(state, batch, copy_from, alive)``: copy trial ``copy_from[i]``'s state into
      trial ``i`` (PBT). ``settle(state, batch, alive, epochs_left)``: drop or gather
      stopped trials (compaction). ``checkpoint(state) -> (tree, meta)`` and
      ``restore(batch, meta) -> abstract tree`` / ``resume(tree, batch, meta) -> state``.
    ``validate(epochs)``: raise ``ValueError`` for a setting it cannot run, before anything
      compiles. ``first_metrics(batch)``: one trial's epoch metrics as zeros (names, shapes
      and dtypes) while its first epoch is still compiling, or None; the loop then compiles
      the program's observer meanwhile (``loop.warm_observe``).

  Attributes:
    objective: name of the metric (in ``metrics[i]``) the search optimizes.
    direction: ``"minimize"`` or ``"maximize"``.
    space: the space searched when ``search`` is given none (or None).
    data_version: what the evaluator trains on, recorded with the study (or None).
  """

  objective: str = "objective"
  direction: str = "minimize"
  space: Space | None = None
  data_version: Mapping[str, Any] | None = None

  def start(self, batch: TrialBatch) -> PyTree:
    raise NotImplementedError

  def epoch(self, state: PyTree, batch: TrialBatch, alive: np.ndarray, epoch: int,
            key: jax.Array) -> tuple[PyTree, list[Metrics | None]]:
    raise NotImplementedError

  def validate(self, epochs: int) -> None:
    del epochs

  def exploit(self, state: PyTree, batch: TrialBatch, copy_from: np.ndarray,
              alive: np.ndarray) -> PyTree:
    del state, batch, copy_from, alive
    raise ValueError(f"{type(self).__name__} cannot copy trial states (population-based "
                     "training needs an evaluator with per-trial state)")

  def settle(self, state: PyTree, batch: TrialBatch, alive: np.ndarray,
             epochs_left: int) -> PyTree:
    del batch, alive, epochs_left
    return state

  def checkpoint(self, state: PyTree) -> tuple[PyTree, dict[str, Any]]:
    return state, {}

  def restore(self, batch: TrialBatch, meta: Mapping[str, Any]) -> PyTree:
    del meta
    return jax.eval_shape(lambda: self.start(batch))

  def resume(self, tree: PyTree, batch: TrialBatch, meta: Mapping[str, Any]) -> PyTree:
    del batch, meta
    return tree


def _check_direction(direction: str) -> str:
  if direction not in DIRECTIONS:
    raise ValueError(f"direction={direction!r}: must be one of {', '.join(DIRECTIONS)}")
  return direction


def _scalars(out: Any, objective: str) -> Metrics:
  """A trial's result as a metrics dict: a number is the objective; a mapping is copied."""
  if isinstance(out, Mapping):
    m = {k: np.asarray(v) for k, v in out.items()}
    if objective not in m:
      raise ValueError(f"metrics {sorted(m)} have no {objective!r} (the evaluator's "
                       "objective); return it, or set objective=... to one of them")
    return m
  return {objective: np.asarray(out, np.float64)}


# --------------------------------------------------------------------------- callable


class TrialPruned(Exception):  # noqa: N818 - the name Optuna users know
  """Raise inside an objective to record the trial as pruned."""


@dataclasses.dataclass
class _Raised:
  e: BaseException


class CallableEvaluator(Evaluator):
  """Any Python callable as an evaluator; no JAX needed inside it.

  ``fn(params) -> value`` (or a dict of metrics holding ``objective``), where ``params`` is
  the trial's plain Python parameter dict. With ``batched=True``, ``fn(list_of_params) ->
  list of values`` is called once per round. An exception in ``catch`` fails that trial
  (or, batched, the whole round) with the exception as its reason and the search goes on;
  :class:`TrialPruned` records it as pruned; any other exception stops the search. A
  batched ``fn`` returning the wrong number of values stops it too.

  Example:
    >>> ev = metaopt.CallableEvaluator(lambda p: (p["x"] - 0.3) ** 2)
    >>> res = metaopt.search(metaopt.tpe(1), ev, space=Space({"x": Float(0, 1)}),
    ...                      n_trials=20, population=4)
  """

  timed = True  # each trial's metrics get its share of the call's time as ``device_s``

  def __init__(self, fn: Callable[..., Any], *, batched: bool = False,
               direction: str = "minimize", objective: str = "objective",
               space: Space | None = None,
               catch: tuple[type[BaseException], ...] = (Exception,)):
    if not callable(fn):
      raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
    self.fn, self.batched, self.catch = fn, bool(batched), tuple(catch)
    self.direction, self.objective = _check_direction(direction), objective
    self.space, self.data_version = space, None

  def validate(self, epochs: int) -> None:
    if epochs != 1:
      raise ValueError(f"epochs={epochs}: a CallableEvaluator evaluates each trial once "
                       "(epochs=1)")

  def start(self, batch: TrialBatch) -> PyTree:
    return {"done": np.zeros(len(batch.params), bool)}

  def metrics(self, out: Any) -> Metrics:
    """One trial's result as its metrics; ``ValueError`` when it is not a result."""
    return _scalars(out, self.objective)

  def rejected(self, e: ValueError) -> Metrics:
    """The metrics of a trial whose result :meth:`metrics` rejected."""
    return {"error": f"{type(e).__name__}: {e}"}

  def _outcome(self, out: Any) -> Metrics:
    if isinstance(out, _Raised) and isinstance(out.e, TrialPruned):
      return {"pruned": str(out.e) or "pruned by the objective"}
    if isinstance(out, _Raised):
      return {"error": f"{type(out.e).__name__}: {out.e}"}
    try:
      return self.metrics(out)
    except ValueError as e:
      return self.rejected(e)

  def _call(self, arg: Any) -> Any:
    try:
      return self.fn(arg)
    except (TrialPruned, *self.catch) as e:
      return _Raised(e)

  def epoch(self, state, batch, alive, epoch, key):
    del epoch, key
    idx = [i for i in np.flatnonzero(alive)]
    out: list[Metrics | None] = [None] * len(batch.params)
    t0 = time.perf_counter()
    if self.batched and idx:
      values = self._call([dict(batch.params[i]) for i in idx])
      values = [values] * len(idx) if isinstance(values, _Raised) else list(values)
      if len(values) != len(idx):
        raise ValueError(f"objective: the batched objective returned {len(values)} values "
                         f"for {len(idx)} trials")
    else:
      values = [self._call(dict(batch.params[i])) for i in idx]
    dt = (time.perf_counter() - t0) / max(1, len(idx))
    for i, v in zip(idx, values, strict=True):
      out[i] = self._outcome(v)
      if self.timed and "error" not in out[i] and "pruned" not in out[i]:
        out[i]["device_s"] = dt
    done = np.array(state["done"])
    done[idx] = True
    return {"done": done}, out


# --------------------------------------------------------------------------- pure JAX


class JaxEvaluator(Evaluator):
  """A user's pure JAX training function, run over the batch like a task's kernel.

  Give either ``train(h, key) -> metrics`` (evaluated in one epoch), or ``init(h, key) ->
  state`` and ``epoch(state, h) -> (state, metrics)`` (one call per epoch, so pruners and
  PBT act between epochs). ``h`` is a dict of scalar hyperparameters (traced: one compile
  serves every value), ``key`` a per-trial PRNG key from the trial's seed, and ``metrics``
  a scalar (the objective) or a dict of scalars holding ``objective``.

  ``mode="vmap"`` runs the batch as ``jit(vmap(fn))`` (sharded over ``devices`` when there
  are several), ``"loop"`` as ``lax.map`` inside one jit (one trial at a time, less memory;
  the default on one CPU device, as for tasks), ``"auto"`` picks.

  Example:
    >>> def train(h, key):
    ...   w = jax.random.normal(key) * 0.01
    ...   for _ in range(10): w = w - h["lr"] * 2 * (w - 3.0)
    ...   return {"objective": (w - 3.0) ** 2}
    >>> res = metaopt.search(metaopt.tpe(1), metaopt.JaxEvaluator(train), space=space,
    ...                      n_trials=16, population=8)
  """

  def __init__(self, train: Callable | None = None, *, init: Callable | None = None,
               epoch: Callable | None = None, direction: str = "minimize",
               objective: str = "objective", space: Space | None = None,
               mode: str = "auto", devices: Sequence[jax.Device] | None = None,
               data_version: Mapping[str, Any] | None = None):
    if (train is None) == (init is None or epoch is None):
      raise ValueError("JaxEvaluator: give train=..., or both init=... and epoch=...")
    if mode not in ("auto", *pop.KERNEL_MODES):
      raise ValueError(f"mode={mode!r}: must be one of auto, {', '.join(pop.KERNEL_MODES)}")
    self.direction, self.objective = _check_direction(direction), objective
    self.space, self.data_version = space, data_version
    self._train, self._init, self._epoch = train, init, epoch
    self._mesh = pop.population_mesh(devices)
    self.mode = pop.default_mode(self._mesh) if mode == "auto" else mode
    self._fns: dict[str, Callable] = {}

  @property
  def epochwise(self) -> bool:
    return self._train is None

  def validate(self, epochs: int) -> None:
    if not self.epochwise and epochs != 1:
      raise ValueError(f"epochs={epochs}: train(h, key) is one epoch; pass init=... and "
                       "epoch=... to train over several epochs")

  def _fn(self, name: str) -> Callable:
    """The jitted ``init``, ``train`` or ``epoch`` over the batch, shared by every evaluator
    of the same functions in this process (see ``compile_cache``)."""
    if name not in self._fns:
      user = {"init": self._init, "train": self._train, "epoch": self._epoch}[name]
      mesh = None if self._mesh is None else tuple(d.id for d in self._mesh.devices.flat)
      self._fns[name] = compile_cache.cached(
          lambda: _batched(name, user, self.objective, self.mode), "jax-evaluator", name,
          user, self.objective, self.mode, mesh)
    return self._fns[name]

  def _h(self, batch: TrialBatch) -> dict[str, jax.Array]:
    h = {k: jnp.asarray(v) for k, v in batch.h.items()}
    if self._mesh is not None and len(batch.params) % self._mesh.size == 0:
      sh = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("pop"))
      h = jax.device_put(h, sh)
    return h

  def _keys(self, batch: TrialBatch) -> jax.Array:
    return _trial_keys(np.asarray(batch.seeds, np.uint32))

  def start(self, batch: TrialBatch) -> PyTree:
    if not self.epochwise:
      return {"done": np.zeros(len(batch.params), bool)}
    return self._fn("init")(self._h(batch), self._keys(batch))

  def epoch(self, state, batch, alive, epoch, key):
    del key
    t0 = time.perf_counter()
    if self.epochwise:
      state, m = self._fn("epoch")(state, self._h(batch), jnp.asarray(alive))
    else:
      m = self._fn("train")(self._h(batch), self._keys(batch))
      state = {"done": np.array(state["done"]) | alive}
    m = jax.device_get(m)
    dt = (time.perf_counter() - t0) / max(1, int(alive.sum()))
    out: list[Metrics | None] = [None] * len(batch.params)
    for i in np.flatnonzero(alive):
      out[i] = {k: np.asarray(v[i]) for k, v in m.items()}
      out[i]["device_s"] = dt
    return state, out

  def exploit(self, state, batch, copy_from, alive):
    if not self.epochwise:
      return super().exploit(state, batch, copy_from, alive)
    src = np.arange(len(copy_from))
    take = (copy_from >= 0) & alive
    src[take] = copy_from[take]
    return gather(state, src) if take.any() else state


def _batched(name: str, fn: Callable, objective: str, mode: str) -> Callable:
  """A user's ``init``, ``train`` or ``epoch`` over a leading batch axis: vmap or a loop
  (``lax.map``), jitted once."""
  if name == "train":
    one = lambda h, k: _as_dict(fn(h, k), objective)
  elif name == "epoch":
    def one(state, h, alive):
      new, m = fn(state, h)
      new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, state)
      return new, _as_dict(m, objective)
  else:
    one = fn
  if mode == "vmap":
    return jax.jit(jax.vmap(one))
  return jax.jit(lambda *args: jax.lax.map(lambda a: one(*a), args))


def _as_dict(m: Any, objective: str) -> dict[str, jax.Array]:
  if isinstance(m, Mapping):
    if objective not in m:
      raise ValueError(f"metrics {sorted(m)} have no {objective!r} (the evaluator's "
                       "objective); return it, or set objective=... to one of them")
    return dict(m)
  return {objective: jnp.asarray(m)}


# --------------------------------------------------------------------------- tasks


_trial_keys_jit = pop.fast_jit(jax.vmap(jax.random.key))  # one compile, not one per eager op


def _trial_keys(seeds: np.ndarray) -> jax.Array:
  """``vmap(jax.random.key)(seeds)``: each trial's key, made on the host (see ``keys.py``)."""
  if keys.on_host():
    return keys.wrap(keys.trial_keys_data(seeds))
  return _trial_keys_jit(np.asarray(seeds, np.uint32))


@pop.fast_jit
def _gather_jit(tree, idx):
  return jax.tree_util.tree_map(lambda a: a[idx], tree)


def gather(tree: PyTree, idx: np.ndarray) -> PyTree:
  """Rows ``idx`` of every leaf, in one compiled call (eager indexing would compile once per
  leaf shape)."""
  return _gather_jit(tree, jnp.asarray(idx, jnp.int32))


_background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metaopt-flops")

# TaskEvaluator.precompile: compile the first round's chunk on the background thread while
# the searcher's first ask and the population init compile on the caller's (False: off)
BACKGROUND_COMPILE = True
# TaskEvaluator.precompile returns once the chunk is traced and lowered: tracing holds the GIL,
# so the caller's own tracing would only slow it down; XLA's compile of it (on one core, the
# GIL released) then runs beside the caller's work (False: the caller goes on at once).
# Measured (cold --quick digits search, process CPU, 2 pairs under load): the chunk is lowered
# after 0.9-1.2 s of process CPU with the wait, 2.0-2.3 s without (the caller's 0.6-0.9 s of
# tracing interleaved with it), the same CPU to the target either way: the wait starts the
# chunk's compile, the critical path on 2 cores, earlier; the caller's work fits beside it
WAIT_FOR_LOWERING = True


class _Precompile:
  """A first chunk compiling in the background (see :meth:`TaskEvaluator.precompile`): its
  round size ``n``, the shapes of the metrics it returns (``metrics``, set once lowered) and
  the future of its compile."""

  def __init__(self, n: int):
    self.n, self.metrics, self.lowered = n, None, threading.Event()
    self.future: concurrent.futures.Future | None = None


def _compile_in_background(kernel: pop.PopulationKernel, space: Space, n: int,
                           data: Any, pre: _Precompile | None = None) -> float:
  """Compiles ``kernel.chunk`` into JAX's cache for a round of ``n`` trials over ``space``
  (argument shapes as ``TaskEvaluator._run_group`` passes them); returns the seconds this
  thread spent tracing, lowering and compiling. Once lowered, the shapes of the metrics it
  returns go to ``pre.metrics``."""
  c0 = pop.compile_seconds()
  try:
    sds = jax.ShapeDtypeStruct
    h = {name: sds(v.shape, v.dtype) for name, v in jax.eval_shape(
        space.decode, sds((n, space.dim), jnp.float32)).items()}  # host arrays: not weak
    if "schedule_steps" not in h:
      h["schedule_steps"] = sds((n,), jnp.float32)
    states = kernel.init.eval_shape(_trial_keys_jit.eval_shape(sds((n,), jnp.uint32)), h)
    key = jax.eval_shape(lambda: jax.random.key(0))
    lowered = kernel.chunk.lower(states, h, sds((n,), jnp.bool_), key, data)
    if pre is not None:
      pre.metrics = lowered.out_info[1]
  finally:
    if pre is not None:
      pre.lowered.set()
  lowered.compile()
  return pop.compile_seconds() - c0


COMPACTIONS = ("auto", "always", "never")
SWITCHED = "_switched"  # a structure's key naming the switches grouped into it
BRANCHES = "_activation_branches"  # a structure's key: its kernels' activation branches


def _branches(task: Task, space: Space, switches: Sequence[str]) -> dict[str, int]:
  """``{BRANCHES: n}`` where ``space`` searches the task's ``activation`` switch as a
  non-structural ``Choice`` of the first ``n`` < ``len(ACTIVATIONS)`` activations, by name and
  in order, not grouped as structure: its index is below ``n``, so the kernels trace a
  ``lax.switch`` over those ``n`` only (the same values, a smaller program; ``n`` is part of
  the kernel's cache key, so another choice set compiles its own); ``{}`` otherwise (any
  other choice list: a task may map its index to other activations itself)."""
  p = space.params.get("activation")
  if ("activation" not in task.switches or "activation" in switches
      or not isinstance(p, Choice) or p.structural or p.when is not None
      or len(p.choices) >= len(ACTIVATIONS)
      or list(p.choices) != list(ACTIVATIONS[:len(p.choices)])):
    return {}
  return {BRANCHES: len(p.choices)}


@dataclasses.dataclass
class _TaskState:
  """Per structural group: the trial indices of its kernel slots and their train states."""

  layout: dict[str, np.ndarray]
  states: dict[str, PyTree]
  merged: dict[str, dict] = dataclasses.field(default_factory=dict)  # see _merge_switched


class TaskEvaluator(Evaluator):
  """A bundled :class:`metaopt.tasks.Task` trained as population kernels (today's engine).

  Trials are grouped by their structural hyperparameters (one compiled kernel per group,
  padded to a multiple of the device count); each epoch runs every group's kernel once
  (``population.make_kernel``: a loop over live trials on one CPU device, ``vmap`` sharded
  over a device mesh elsewhere). Every trial-epoch records ``flops`` (XLA cost analysis of
  the population step, per trial) and ``device_s`` (wall time of its group's chunk,
  compilation excluded, times the devices or the CPU threads its population is split over,
  divided by the group's slots, or by its live trials for a ``"loop"`` kernel). On one CPU
  device a ``"loop"`` kernel splits its population over the cores
  (``population.make_kernel``'s ``workers``); several ``"vmap"`` groups run at once, one
  per core, once each has run (and compiled) on the calling thread. ``compaction`` decides
  when a group's kernel shrinks to its survivors (see :func:`compaction_size`).

  ``kernel_mode`` fixes the kernel (``"vmap"`` or ``"loop"``; default
  ``population.default_mode``: ``"loop"`` on one CPU device, else ``"vmap"``).
  ``group_switches`` decides, per round, whether a searched switch of the task (its
  ``switches``, e.g. ``activation``: a non-structural ``Choice`` read through
  ``lax.switch``) is grouped as structure, one kernel per value computing only its branch,
  instead of one kernel where ``vmap`` computes every branch for every trial:
  ``"auto"`` (:func:`population.group_switches`: ``"vmap"`` kernels with at least
  ``SWITCH_GROUP_MIN`` trials per value), ``"always"`` or ``"never"``. Both give every trial
  the same results. A PBT step that copies or moves a trial across such groups merges them
  back into one kernel for the rest of the round.
  """

  def __init__(self, task: Task, *, batch_size: int = 32, shared_batches: bool = True,
               devices: Sequence[jax.Device] | None = None, compaction: str = "auto",
               kernel_mode: str | None = None, group_switches: str = "auto",
               mesh: tuple[int, int] | None = None, compute_dtype: Any = None,
               space: Space | None = None):
    if compaction not in COMPACTIONS:
      raise ValueError(f"compaction={compaction!r}: must be one of {', '.join(COMPACTIONS)}")
    if group_switches not in pop.SWITCH_GROUPINGS:
      raise ValueError(f"group_switches={group_switches!r}: must be one of "
                       f"{', '.join(pop.SWITCH_GROUPINGS)}")
    if batch_size > len(task.data.train):
      raise ValueError(f"batch_size={batch_size}: must be <= {len(task.data.train)} "
                       f"(size of {task.data.name}'s train split)")
    self.task, self.batch_size, self.compaction = task, batch_size, compaction
    self.objective = f"valid_{task.objective}"
    self.direction, self.space = task.direction, task.space
    self.data_version = task.data.data_version
    self.compute_dtype = mesh2d.check_compute_dtype(compute_dtype)
    n_devices = len(jax.local_devices() if devices is None else devices)
    if mesh is None:
      mesh = pop.population_mesh(devices)
    else:  # trials over "pop", each minibatch over "data"
      mesh = mesh2d.search_mesh(mesh, devices)
      mesh2d.check_batch_sizes(mesh, batch_size, task.space if space is None else space,
                               len(task.data.train))
      n_devices = mesh.size
    self._two_d = mesh is not None and "data" in mesh.axis_names
    self.n_devices = 1 if mesh is None else n_devices
    if kernel_mode is not None and (kernel_mode not in pop.KERNEL_MODES or
                                    (kernel_mode == "loop" and mesh is not None)):
      raise ValueError(f"kernel_mode={kernel_mode!r}: must be one of "
                       f"{', '.join(pop.KERNEL_MODES)} ('vmap' with several devices)")
    self.mode = pop.default_mode(mesh) if kernel_mode is None else kernel_mode
    self.group_switches = group_switches
    self.multiple = 1 if mesh is None else mesh.shape["pop"]
    # data larger than the memory budget streams from the host (blocks placed on the mesh)
    self._stream = streaming.should_stream(task.data)
    data = streaming.shape_only(task.data) if self._stream else pop.data_arrays(task.data)
    if mesh is not None and not self._stream:
      data = jax.device_put(data, jax.sharding.NamedSharding(mesh,
                                                             jax.sharding.PartitionSpec()))
    self.data, self._mesh, self._shared = data, mesh, shared_batches
    self._kernels: dict[tuple, pop.PopulationKernel] = {}
    self._shared_info: dict[tuple, dict[str, Any]] = {}  # per kernel, shared with the cache
    self.flops: dict[str, Any] = {}   # structure -> FLOPs per trial-epoch (or a future)
    # per structure, for compaction: compile seconds, seconds per slot-epoch, sizes compiled
    self.perf: dict[str, dict[str, Any]] = {}
    self._pending: dict[tuple, concurrent.futures.Future] = {}  # see precompile
    self._precompiling: dict[tuple, _Precompile] = {}
    self._ran: set[tuple] = set()  # (structure, size) of every chunk run once (see epoch)
    self._fns: dict[tuple, TrialFns] = {}  # see fns

  def precompile(self, space: Space, n: int) -> bool:
    """Starts compiling the population chunk that a first round of ``n`` trials over
    ``space`` runs, on a background thread, so that it compiles while the searcher's first
    ``ask`` and the population ``init`` compile on the caller's thread (XLA releases the
    GIL: on a multi-core CPU both cores work). Only where that kernel is known before
    anything is asked: one structural group (no structural parameter, no switch grouped as
    structure), one device, data in memory; returns whether a compile was started.

    The chunk's first call waits for it and finds the executable in JAX's cache (the same
    jitted function, argument shapes and settings): it runs the code a compile on the
    caller's thread would have made. A call whose arguments differ from those precompiled
    compiles as before, and an error here is raised where the round meets it (only time is
    lost)."""
    if not BACKGROUND_COMPILE or self._stream or self._mesh is not None or space.structural:
      return False
    grouped = [name for name in self.task.switches
               if isinstance(space.params.get(name), Choice)
               and not space.params[name].structural and space.params[name].when is None]
    if grouped and not (self.group_switches == "never" or
                        (self.group_switches == "auto" and self.mode == "loop")):
      return False  # whether a switch is grouped depends on the values asked
    structure = {**self.task.defaults, **_branches(self.task, space, ())}
    k = tuple(sorted(structure.items()))
    try:
      kernel = self.kernel(structure)
    except Exception:  # noqa: BLE001 - the round builds it again, and raises, in its place
      return False
    info = self._shared_info[k]
    done = info.setdefault("precompiled", set())
    if n in done or k in self._pending:
      return False
    done.add(n)
    pre = self._precompiling[k] = _Precompile(n)
    pre.future = self._pending[k] = _background.submit(_compile_in_background, kernel, space,
                                                       n, self.data, pre)
    if WAIT_FOR_LOWERING:
      pre.lowered.wait()
    return True

  def first_metrics(self, batch: TrialBatch) -> dict[str, np.ndarray] | None:
    """One trial's epoch metrics as zeros, with the names, shapes and dtypes that the first
    chunk of ``batch``, compiling in the background (:meth:`precompile`), returns (so the
    search loop can compile what reads them meanwhile); None where no such compile runs."""
    if batch.owned is not None or not batch.feasible.all() or len(self._precompiling) != 1:
      return None
    k, pre = next(iter(self._precompiling.items()))
    if pre.n != len(batch.params) or k not in self._pending:
      return None
    pre.lowered.wait()
    if pre.metrics is None:  # the lowering raised: the round meets the error itself
      return None
    return {name: np.zeros(s.shape[1:], s.dtype) for name, s in pre.metrics.items()}

  def kernel(self, structure: Mapping[str, Any]) -> pop.PopulationKernel:
    """The population kernel of one structural setting, built once; a structural
    ``batch_size`` wins over the evaluator's."""
    k = tuple(sorted(structure.items()))
    if k not in self._kernels:
      n_train = len(self.task.data.train)
      bs = min(int(structure.get("batch_size", self.batch_size)), n_train)
      if self._stream:
        self._kernels[k] = streaming.make_streaming_kernel(
            self.fns(structure), self.task.data, bs, self._shared, mesh=self._mesh)
        self._shared_info[k] = {}
      else:  # shared (with its FLOPs) by every search of the same task and settings
        def build():
          if self._two_d:
            return mesh2d.make_kernel(self.fns(structure), n_train, bs, self._mesh,
                                      self._shared), {}
          return pop.make_kernel(self.fns(structure), n_train, bs, self._shared,
                                 self._mesh, self.mode), {}
        self._kernels[k], self._shared_info[k] = compile_cache.cached(
            build, "task-kernel", self.task.build, k, n_train, bs, self._shared,
            self._mesh_key(), self.mode, str(self.compute_dtype))
    return self._kernels[k]

  def _mesh_key(self) -> tuple | None:
    if self._mesh is None:
      return None
    return (tuple(self._mesh.shape.items()), tuple(d.id for d in self._mesh.devices.flat))

  def fns(self, structure: Mapping[str, Any]) -> TrialFns:
    """The task's trial functions for one group: built from its structural values, with
    its grouped switches (named by ``structure[SWITCHED]``, each holding the index of its
    choice) fixed to that index, and its ``activation`` switch over
    ``structure[BRANCHES]`` branches where that is set (see :func:`_branches`)."""
    # built once per structure: the kernel and the FLOPs accounting then trace the same
    # functions, so the accounting finds the train step's trace in JAX's cache (CPU: the
    # kernel's canonical_dots traces it with the same argument types)
    k = tuple(sorted(structure.items()))
    if k not in self._fns:
      sw = {n: int(structure[n]) for n in structure.get(SWITCHED, ())}
      fns = self.task.build({n: v for n, v in structure.items()
                             if n not in sw and n not in (SWITCHED, BRANCHES)})
      fns = with_activation_branches(pop.fix_hparams(fns, sw), structure.get(BRANCHES))
      self._fns[k] = fns if self.compute_dtype is None else mesh2d.bfloat16_compute(fns)
    return self._fns[k]

  def switches(self, batch: TrialBatch) -> list[str]:
    """The task's switches grouped as structure in ``batch`` (see ``group_switches``)."""
    space = self.space if batch.space is None else batch.space
    mine = batch.mine
    n = int(mine.sum())
    out = []
    for name in self.task.switches:
      p = space.params.get(name)
      if not isinstance(p, Choice) or p.structural or p.when is not None:
        continue
      values = len({batch.params[i].get(name) for i in np.flatnonzero(mine)})
      if n and pop.group_switches(self.group_switches, self.mode, n, values, self.multiple):
        out.append(name)
    return out

  def structures(self, batch: TrialBatch) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Trial indices per structural setting (one compiled kernel per group), each padded
    with ``-1`` entries (frozen placeholders) to a multiple of the device count; the trials
    this process does not evaluate are left out."""
    space = self.space if batch.space is None else batch.space
    switches = self.switches(batch)
    layout, structs = group(space, batch.params, self.task, self.multiple, batch.mine,
                            switches)
    if switches:
      for st in structs.values():  # a grouped switch holds the index its kernel fixes
        st.update({n: space.params[n].from_python(st[n]) for n in switches})
        st[SWITCHED] = tuple(switches)
    for st in structs.values():
      st.update(_branches(self.task, space, switches))
    return layout, structs

  def _merge_switched(self, state: _TaskState, batch: TrialBatch) -> _TaskState:
    """The groups that differ only in grouped switches merged back into one kernel each
    (the switch traced again), for the rest of the round."""
    _, structs = self._groups(batch)
    by: dict[tuple, list[str]] = {}
    for g in state.layout:
      base = {n: v for n, v in structs[g].items()
              if n != SWITCHED and n not in structs[g].get(SWITCHED, ())}
      by.setdefault(tuple(sorted(base.items())), []).append(g)
    layout, states, merged = {}, {}, dict(state.merged)
    for key, gs in by.items():
      if len(gs) == 1 and SWITCHED not in structs[gs[0]]:
        layout[gs[0]], states[gs[0]] = state.layout[gs[0]], state.states[gs[0]]
        continue
      name = "+".join(gs)
      structs[name] = merged[name] = dict(key)
      self.kernel(structs[name])
      idx = np.concatenate([state.layout[g] for g in gs])
      tree = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a),
                                    *[state.states[g] for g in gs])
      keep = np.flatnonzero(idx >= 0)
      keep = np.concatenate([keep, np.full(-len(keep) % self.multiple, keep[0])])
      layout[name] = np.where(np.arange(len(keep)) < int((idx >= 0).sum()), idx[keep], -1)
      states[name] = gather(tree, keep)
    return _TaskState(layout, states, merged)

  def _switch_conflict(self, state: _TaskState, batch: TrialBatch, alive: np.ndarray,
                       copy_from: np.ndarray | None = None) -> bool:
    """Whether a live trial's switch no longer matches its group's (PBT explore), or a copy
    crosses groups (PBT exploit)."""
    _, structs = self._groups(batch)
    if not any(SWITCHED in structs[g] for g in state.layout):
      return False
    where = {int(t): g for g, idx in state.layout.items() for t in idx if t >= 0}
    for g, idx in state.layout.items():
      for t in idx[idx >= 0]:
        if not alive[t]:
          continue
        if any(int(batch.h[n][t]) != structs[g][n] for n in structs[g].get(SWITCHED, ())):
          return True
        if copy_from is not None and copy_from[t] >= 0 and where.get(int(copy_from[t])) != g:
          return True
    return False

  def _hparams(self, batch: TrialBatch, structure: Mapping[str, Any], idx: np.ndarray):
    """A group's hyperparameters; learning-rate schedules span the round's training
    (``schedule_steps``: epochs x steps per epoch) unless the space sets the horizon."""
    hg = {k: v[idx] for k, v in batch.h.items()}
    if "schedule_steps" not in hg:
      steps = batch.epochs * self.kernel(structure).steps_per_chunk
      hg = {**hg, "schedule_steps": np.full(len(idx), steps, np.float32)}
    return hg

  def _fresh(self, batch: TrialBatch, layout: Mapping[str, np.ndarray]):
    _, structs = self._groups(batch)
    inits = {g: self.kernel(structs[g]).init for g in layout}
    if self._mesh is not None or self._stream or len(layout) < 2 or not all(
        isinstance(i, pop.PopulationInit) for i in inits.values()):
      return {g: inits[g](_trial_keys(batch.seeds[idx]), self._hparams(batch, structs[g], idx))
              for g, idx in layout.items()}
    # several groups: each init compiled here (bind), then the groups' inits run at once
    calls = [inits[g].bind(_trial_keys(batch.seeds[idx]), self._hparams(batch, structs[g], idx))
             for g, idx in layout.items()]
    return dict(zip(layout, pop.run_parallel([lambda c=c: jax.block_until_ready(c())
                                              for c in calls]), strict=True))

  def _groups(self, batch: TrialBatch):
    if "groups" not in batch.cache:
      batch.cache["groups"] = self.structures(batch)
      for s in batch.cache["groups"][1].values():  # built outside any trace (eval_shape)
        self.kernel(s)
    return batch.cache["groups"]

  def start(self, batch: TrialBatch) -> _TaskState:
    layout = dict(self._groups(batch)[0])
    return _TaskState(layout, self._fresh(batch, layout))

  def checkpoint(self, state: _TaskState):
    merged = {g: {k: list(v) if k == SWITCHED else v for k, v in st.items()}
              for g, st in state.merged.items()}
    return state.states, {"layout": {g: v.tolist() for g, v in state.layout.items()},
                          "merged": merged}

  def _restore_merged(self, batch, meta):
    _, structs = self._groups(batch)
    for g, st in meta.get("merged", {}).items():
      structs[g] = {k: tuple(v) if k == SWITCHED else v for k, v in st.items()}
      self.kernel(structs[g])
    return structs

  def restore(self, batch, meta):
    layout = {g: np.asarray(v, np.int64) for g, v in meta["layout"].items()}
    structs = self._restore_merged(batch, meta)
    # the jitted init's own eval_shape: jax.eval_shape around it would trace a jit built
    # with compiler_options, which JAX refuses below the top level
    return {g: self.kernel(structs[g]).init.eval_shape(
        _trial_keys(batch.seeds[idx]), self._hparams(batch, structs[g], idx))
        for g, idx in layout.items()}

  def resume(self, tree, batch, meta):
    layout = {g: np.asarray(v, np.int64) for g, v in meta["layout"].items()}
    structs = self._restore_merged(batch, meta)
    return _TaskState(layout, tree, {g: structs[g] for g in meta.get("merged", {})})

  def epoch(self, state: _TaskState, batch, alive, epoch, key):
    metrics: list[Metrics | None] = [None] * len(batch.params)
    _, structs = self._groups(batch)
    states, raised = dict(state.states), {}
    held = batch.cache.get("h_device")  # see _run_group; set here, before any thread
    if held is None or held[0] is not batch.h:
      batch.cache["h_device"] = (batch.h, {})

    def run(g, idx):
      try:
        return self._run_group(structs[g], states[g], batch, idx, alive, key)
      except Exception as e:  # noqa: BLE001 - a broken group fails, the population goes on
        return e

    groups = list(state.layout.items())
    sigs = [(tuple(sorted(structs[g].items())), len(idx)) for g, idx in groups]
    # groups run at once on the CPU's cores once each has run (compiled) on this thread;
    # a "loop" kernel splits its own population over the cores instead
    together = (self._mesh is None and not self._stream and len(groups) > 1
                and all(s in self._ran for s in sigs)
                and all(getattr(self.kernel(structs[g]), "workers", 1) == 1 for g, _ in groups))
    calls = [lambda g=g, idx=idx: run(g, idx) for g, idx in groups]
    results = pop.run_parallel(calls) if together else [c() for c in calls]
    for (g, idx), sig, out in zip(groups, sigs, results, strict=True):
      if not isinstance(out, Exception):
        self._ran.add(sig)
        states[g], m, acct = out
      else:
        e = raised[g] = out
        for i in idx[idx >= 0]:
          if alive[i]:
            metrics[i] = {"error": f"{type(e).__name__} at epoch {epoch}: {e}"}
        continue
      for j, i in enumerate(idx):
        if i >= 0 and alive[i]:
          metrics[i] = {name: np.asarray(v[j]) for name, v in m.items()}
          metrics[i].update(acct)
    # every live group raised: an error no trial's hyperparameters explain (a bug, a compile
    # or tracing error, the device failing) would fail every trial of every round: stop
    live = [g for g, idx in state.layout.items() if alive_at(alive, idx).any()]
    if batch.owned is None and live and all(g in raised for g in live):
      batch.cache["stop_reason"] = "every group raised"
      raise raised[live[0]]
    return _TaskState(state.layout, states, state.merged), metrics

  def _run_group(self, structure, states, batch, idx, alive, key):
    """One chunk of one group's kernel; returns its states, metrics and accounting."""
    k = self.kernel(structure)
    # the group's hyperparameters go to the device once per round (again only after PBT
    # moved trials: explore gives batch.h anew), not every epoch
    held = batch.cache.get("h_device")
    if held is None or held[0] is not batch.h:
      held = batch.cache["h_device"] = (batch.h, {})
    hkey = (repr(sorted(structure.items())), idx.tobytes())
    if hkey not in held[1]:
      where = None if self._mesh is None else jax.sharding.NamedSharding(
          self._mesh, jax.sharding.PartitionSpec("pop"))
      held[1][hkey] = jax.device_put(self._hparams(batch, structure, idx), where)
    hg = held[1][hkey]
    skey = repr(sorted(structure.items()))
    info = self._shared_info[tuple(sorted(structure.items()))]
    if skey not in self.flops:
      self.flops[skey] = info.get("flops")
    pending = self._pending.pop(tuple(sorted(structure.items())), None)  # see precompile
    if self.flops[skey] is None:
      bs = min(int(structure.get("batch_size", self.batch_size)), len(self.task.data.train))
      args = (self.fns(structure), pop.shapes(states), pop.shapes(hg), self.data, bs)
      per_trial = k.mode == "loop"  # what each trial of a loop kernel runs: its own step
      if pending is not None and not pending.done():
        # this thread would wait for the chunk's background compile: it traces them meanwhile
        self.flops[skey] = info["flops"] = pop.trial_epoch_flops(*args, per_trial=per_trial)
      else:  # traced on another thread while the chunk compiles (XLA releases the GIL)
        self.flops[skey] = _background.submit(pop.trial_epoch_flops, *args,
                                              per_trial=per_trial)
    live = alive_at(alive, idx)
    background = 0.0
    if pending is not None:
      try:
        background = pending.result()
      except Exception:  # noqa: BLE001 - the call below compiles, and raises, itself
        pass
    c0, t0 = pop.compile_seconds(), time.perf_counter()
    states, m = k.chunk(states, hg, np.asarray(live), key, self.data)
    m = jax.device_get(m)
    compiled = pop.compile_seconds() - c0
    busy = max(0.0, time.perf_counter() - t0 - compiled)
    if isinstance(self.flops.get(skey), concurrent.futures.Future):
      self.flops[skey] = info["flops"] = self.flops[skey].result()
    # "loop" kernels spend time on live trials only; "vmap" ones on every slot
    slots = max(1, int(live.sum())) if k.mode == "loop" else len(idx)
    p = self.perf.setdefault(skey, {"compile_s": 0.0, "slot_s": None, "sizes": set(),
                                    "mode": k.mode})
    if len(idx) not in p["sizes"]:
      p["sizes"].add(len(idx))
      p["compile_s"] = max(p["compile_s"], compiled + background)
    slot = busy / slots
    p["slot_s"] = slot if p["slot_s"] is None else min(p["slot_s"], slot)
    acct = {"device_s": busy * self.n_devices * getattr(k, "workers", 1) / slots}
    if not isinstance(self.flops.get(skey), concurrent.futures.Future):
      acct["flops"] = self.flops[skey]
    return states, m, acct

  def exploit(self, state: _TaskState, batch, copy_from, alive):
    """Copies train states (weights and optimizer state) from ``copy_from[i]`` into i."""
    if self._switch_conflict(state, batch, alive, copy_from):
      state = self._merge_switched(state, batch)
    out = dict(state.states)
    for g, idx in state.layout.items():
      where = {int(t): j for j, t in enumerate(idx) if t >= 0}
      src = np.arange(len(idx))
      for j, t in enumerate(idx):
        c = int(copy_from[t]) if t >= 0 else -1
        if c >= 0 and alive[t]:
          if c not in where:
            raise ValueError(_cross_group_copy(batch, t, c))
          src[j] = where[c]
      if np.any(src != np.arange(len(idx))):
        out[g] = gather(state.states[g], src)
    return _TaskState(state.layout, out, state.merged)

  def settle(self, state: _TaskState, batch, alive, epochs_left):
    if self._switch_conflict(state, batch, alive):
      state = self._merge_switched(state, batch)
    if self.compaction == "never":
      return state
    _, structs = self._groups(batch)

    def choose(g, size, live):
      perf = self.perf.get(repr(sorted(structs[g].items())))
      return compaction_size(self.compaction, self.multiple, epochs_left, perf, size, live)

    layout, states = compact(state.layout, state.states, alive, self.multiple, choose)
    return _TaskState(layout, states, state.merged)


def group(space: Space, params: list[dict[str, Any]], task: Task, multiple: int = 1,
          feasible: np.ndarray | None = None, switches: Sequence[str] = ()):
  """Trial indices per structural setting (plus the ``switches`` grouped as structure),
  padded with ``-1`` to a multiple of the device count, and each group's structure; trials
  with ``feasible[i]`` False are left out."""
  names = [*space.structural, *(n for n in switches if n not in space.structural)]
  by: dict[tuple, list[int]] = {}
  for i, p in enumerate(params):
    if feasible is not None and not feasible[i]:
      continue
    key = tuple((n, p.get(n, task.defaults.get(n))) for n in names)
    by.setdefault(key, []).append(i)
  groups, structures = {}, {}
  for gi, key in enumerate(sorted(by, key=repr)):
    groups[f"g{gi}"] = _pad(np.asarray(by[key]), multiple)
    structures[f"g{gi}"] = {**dict(task.defaults.items()), **dict(key)}
  return groups, structures


def _pad(idx: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(idx) % multiple
  return np.concatenate([idx, np.full(extra, -1, idx.dtype)]) if extra else idx


def alive_at(alive: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """``alive`` at kernel slots ``idx`` (``-1`` placeholders are never alive)."""
  return (idx >= 0) & alive[np.maximum(idx, 0)]


def pow2_size(live: int, multiple: int) -> int:
  """The next power of two (times the device count) at or above ``live`` trials."""
  return multiple * (1 << int(np.ceil(np.log2(max(1, -(-live // multiple))))))


def compaction_size(mode: str, multiple: int, epochs_left: int, p: dict | None,
                    size: int, live: int) -> int:
  """The kernel size a group (``size`` slots, ``live`` trials alive) continues at.

  ``"always"``: the next power of two above ``live`` once that is at most half of ``size``.
  ``"auto"``: a ``"loop"`` kernel keeps its size (stopped trials cost nothing in it); for
  ``"vmap"``, of the current size, the sizes already compiled for this structure that hold
  the survivors, and the next power of two, the one with the least expected cost:
  ``slots * slot_s * epochs_left`` plus ``compile_s`` if not compiled yet, with ``slot_s``
  (seconds per slot-epoch) and ``compile_s`` measured on this group's kernel (``p``). On a
  small task one compile costs hundreds of trial-epochs, so a round then keeps its kernel
  and lets pruned trials sit in it, frozen."""
  pow2 = pow2_size(live, multiple)
  if mode == "always" or p is None or p["slot_s"] is None:
    return pow2 if pow2 <= size // 2 else size
  if p["mode"] == "loop":  # stopped trials cost nothing there
    return size
  best, cost = size, size * p["slot_s"] * epochs_left
  for s in sorted({pow2} | {s for s in p["sizes"] if live <= s < size}):
    c = s * p["slot_s"] * epochs_left + (0.0 if s in p["sizes"] else p["compile_s"])
    if s < size and c < cost:
      best, cost = s, c
  return best


def compact(layout, states, alive: np.ndarray, multiple: int = 1, choose=None):
  """Drops groups with no live trial and gathers a group's survivors into a smaller kernel
  when ``choose(group, size, live) -> new size`` says so (default: the next power of two,
  times the device count, above the live trials once that is at most half the size). Sizes
  stay powers of two, so a search compiles a handful of kernel sizes however trials stop."""
  new_layout, new_states = {}, {}
  for g, idx in layout.items():
    live = np.flatnonzero(alive_at(alive, idx))
    if len(live) == 0:
      continue
    if choose is None:
      size = pow2_size(len(live), multiple)
      size = size if size <= len(idx) // 2 else len(idx)
    else:
      size = choose(g, len(idx), len(live))
    if len(live) <= size < len(idx):
      pos = np.concatenate([live, np.full(size - len(live), live[0])])
      new_layout[g] = np.concatenate([idx[live], np.full(size - len(live), -1, idx.dtype)])
      new_states[g] = gather(states[g], pos)
    else:
      new_layout[g], new_states[g] = idx, states[g]
  return new_layout, new_states


def as_evaluator(x: Any, *, batch_size: int = 32, shared_batches: bool = True,
                 devices: Sequence[jax.Device] | None = None,
                 compaction: str = "auto", space: Space | None = None,
                 mesh: tuple[int, int] | None = None, compute_dtype: Any = None) -> Evaluator:
  """``x`` as an evaluator: a :class:`metaopt.tasks.Task` becomes a :class:`TaskEvaluator` (with the
  task-only settings given here), an evaluator is returned as is. A ``space`` to search on a
  task must set only parameters the task reads (``tasks.check_reads``, before any compile)."""
  if space is not None and not isinstance(space, Space):
    raise ValueError(f"space: expected a metaopt.spaces.Space, got {type(space).__name__}"
                     f"{SPACE_HINT}")
  if isinstance(x, Task):
    if space is not None:
      check_reads(x, space.names)  # before the evaluator stages data (nothing compiled yet)
    return TaskEvaluator(x, batch_size=batch_size, shared_batches=shared_batches,
                         devices=devices, compaction=compaction, mesh=mesh,
                         compute_dtype=compute_dtype, space=space)
  if compaction not in COMPACTIONS:
    raise ValueError(f"compaction={compaction!r}: must be one of {', '.join(COMPACTIONS)}")
  for name, v in (("mesh", mesh), ("compute_dtype", compute_dtype)):
    if v is not None:
      raise ValueError(f"{name}={v!r}: only for tasks (a metaopt.tasks.Task); "
                       f"{type(x).__name__} places its own computation")
  if hasattr(x, "start") and hasattr(x, "epoch"):
    return x
  raise ValueError(f"evaluator: expected a tasks.Task or a metaopt.Evaluator (e.g. "
                   f"metaopt.CallableEvaluator(fn)), got {type(x).__name__}")
