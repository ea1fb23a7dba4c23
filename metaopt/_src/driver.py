"""The search driver: runs a black-box program over a population of trials, with a store.

``search`` is the one loop that ties the pieces together. Per round it asks the program for
a population of points, decodes them, trains the population epoch by epoch in compiled
kernels (one per structural group), lets the program prune between epochs, records every
epoch, checkpoints, and tells the program the results. Failed trials (non-finite loss or
weights) stop and are recorded with their reason while the rest of the population goes on.

Killed and restarted with the same arguments, ``search`` resumes: finished rounds are not
re-run, and an unfinished round continues from its newest checkpoint with the searcher state
saved at that epoch, so the resumed search produces the same trials as an uninterrupted one.

Run in several processes after :func:`metaopt.initialize_distributed`, ``search`` splits
every round's population between them (see ``distributed.py``); for several independent
processes sharing one study, see :func:`metaopt.worker`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from metaopt._src import distributed as dist
from metaopt._src import population as pop
from metaopt._src import streaming
from metaopt._src.checkpoint import Checkpointer
from metaopt._src.store import Store, _dumps
from metaopt._src.types import (
    COMPLETE,
    FAILED,
    INFEASIBLE,
    PRUNED,
    RUNNING,
    STATUS_NAMES,
    Result,
    Searcher,
)
from spaces import Space
from tasks import Task


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """The git commit of the metaopt checkout (``+dirty`` if modified), or the package version."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return rev + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    from importlib.metadata import version
    return f"metaopt-{version('metaopt')}"


def hardware() -> dict[str, Any]:
  """A description of the devices and host a search ran on."""
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind,
          "device_count": len(devs), "process_count": jax.process_count(),
          "host": platform.node(), "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "jax": jax.__version__}


def enable_compilation_cache(path: str | None = None, min_compile_time_s: float = 0.3) -> str:
  """Turns on JAX's persistent compilation cache (default ``~/.cache/metaopt/jax`` or
  ``$JAX_COMPILATION_CACHE_DIR``), so population kernels compiled once are reused by later
  runs and processes; returns the directory."""
  path = path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "metaopt", "jax")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
  return path


def trial_seed(seed: int, number: int) -> int:
  return (int(seed) * 1_000_003 + int(number)) % (2**31 - 1)


def _positive_int(name: str, v: Any) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
    raise ValueError(f"{name}={v!r}: must be an integer >= 1")
  return int(v)


@dataclasses.dataclass
class _Round:
  """Host-side bookkeeping of the round in progress."""

  number: int
  ids: list[int]
  u: np.ndarray
  h: dict[str, jax.Array]
  params: list[dict[str, Any]]
  groups: dict[str, np.ndarray]
  structures: dict[str, dict[str, Any]]
  feasible: np.ndarray
  owned: np.ndarray | None = None  # multi-host: the trials this process trains


def _ser(state: Any) -> bytes:
  return flax.serialization.to_bytes(jax.device_get(state))


def search(
    program: Searcher,
    task: Task,
    *,
    space: Space | None = None,
    n_trials: int,
    population: int,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    store: Store | str | None = None,
    study: str = "study",
    checkpoint_dir: str | None = None,
    config: Mapping[str, Any] | None = None,
    shared_batches: bool = True,
    progress: bool = True,
    on_epoch: Callable[[int, int, list[dict[str, Any]]], None] | None = None,
    checkpoint_every_s: float = 10.0,
    devices: list[jax.Device] | None = None,
    constraint: Callable[[dict[str, Any]], float] | None = None,
    target: float | None = None,
    compaction: str = "auto",
) -> Result:
  """Runs (or resumes) a population search and returns its :class:`Result`.

  Args:
    program: the black-box search program (``init/ask/tell`` and optional ``observe``).
    task: what each trial trains; ``task.space`` is searched unless ``space`` is given.
    n_trials: total trials; rounds of ``population`` trials (the last may be smaller).
    population: trials trained together in one kernel per round.
    epochs: epochs (chunks) each trial trains at most.
    batch_size: minibatch size.
    seed: root seed; searcher keys, trial seeds and data order all derive from it.
    store: a :class:`Store` or SQLAlchemy URL; default an in-memory SQLite store.
    study: study name in the store. An existing study of that name is resumed.
    checkpoint_dir: where population checkpoints go; default beside a SQLite store file.
    config: JSON-able settings recorded with the study (the CLI stores its config here).
    shared_batches: one minibatch order per epoch for the whole population.
    progress: show a progress bar.
    on_epoch: ``(round, epoch, per-trial metrics)`` callback after each epoch.
    checkpoint_every_s: seconds between population checkpoints within a round (0: every
      epoch); the last epoch of a round is always checkpointed. A resumed round restarts
      from its newest checkpoint and re-runs later epochs identically.
    devices: devices to shard the population axis over (default: all local devices).
    constraint: ``params -> value``, feasible when ``value <= 0`` (e.g.
      :func:`metaopt.max_params`); infeasible trials are recorded ``infeasible`` and not
      trained, and the searcher is told so.
    target: stop after the round in which a trial reaches this objective (at least it when
      the task maximises, at most when it minimises); a ``target`` event is recorded.
    compaction: when a group's kernel shrinks to its surviving trials (see
      :func:`_compact`): ``"auto"`` when the compute it saves beats compiling the smaller
      kernel, ``"always"`` once the survivors fit in half the kernel, ``"never"``.
  """
  space = task.space if space is None else space
  n_trials = _positive_int("n_trials", n_trials)
  population = _positive_int("population", population)
  epochs = _positive_int("epochs", epochs)
  batch_size = _positive_int("batch_size", batch_size)
  if compaction not in COMPACTIONS:
    raise ValueError(f"compaction={compaction!r}: must be one of {', '.join(COMPACTIONS)}")
  if batch_size > len(task.data.train):
    raise ValueError(f"batch_size={batch_size}: must be <= {len(task.data.train)} "
                     f"(size of {task.data.name}'s train split)")
  if not isinstance(program, Searcher):
    raise ValueError(f"program: expected a metaopt.Searcher, got {type(program).__name__}")
  st = store if isinstance(store, Store) else Store(store or "sqlite://")
  multi = dist.is_multi()
  if multi:  # process 0 writes; the others read after barriers
    if st.url in ("sqlite://", "sqlite:///:memory:"):
      raise ValueError("store: a multi-host search needs a store every process can reach "
                       "(a SQLite file on a shared disk, or PostgreSQL)")
    st = dist.HostStore(st)
    if not st.leader:
      dist.sync(f"metaopt-open-{study}")
  direction = task.direction
  sign = -1.0 if direction == "maximize" else 1.0
  if not isinstance(checkpoint_every_s, (int, float)) or checkpoint_every_s < 0:
    raise ValueError(f"checkpoint_every_s={checkpoint_every_s!r}: must be a number >= 0")
  if checkpoint_dir is None:
    db = st.engine.url.database if st.url.startswith("sqlite") else None
    base = (db + ".ckpt") if db and db != ":memory:" else tempfile.mkdtemp(prefix="metaopt-")
    checkpoint_dir = os.path.join(base, study)

  root = jax.random.key(seed)
  key_init, key_rounds = jax.random.split(root)
  template = pop.fast_jit(program.init)(key_init)  # one compile, not one per eager op
  record = dict(config or {}, n_trials=n_trials, population=population, epochs=epochs,
                batch_size=batch_size, seed=seed)
  if study in st.study_names():
    rec = st.load_study(study)
    if rec.state_phase == "worker":
      raise ValueError(f"study {study!r} is run by workers; continue it with "
                       "metaopt.worker(...) / `run.py run --worker`")
    now = _json_round_trip(record)
    changed = sorted(k for k in set(rec.config) | set(now)
                     if k != "store" and rec.config.get(k) != now.get(k))
    if config is not None and changed:
      raise ValueError(f"study {study!r} exists with a different config (fields {changed}); "
                       "resume it with the same config or pick a new study name "
                       "(e.g. --config.name=...)")
    st.log_event(rec.id, "resume", f"resumed at round {rec.state_round} ({rec.state_phase})")
  else:
    rec = st.create_study(study, direction=direction, config=record, seed=seed,
                          code_version=code_version(), data_version=task.data.data_version,
                          hardware=hardware())
  if multi and st.leader:
    dist.sync(f"metaopt-open-{study}")
  state = template
  if rec.searcher_state is not None:
    state = flax.serialization.from_bytes(template, rec.searcher_state)

  ask, tell, observe, decode = _searcher_fns(program, space)
  multiple, data, kernel = _engine(task, devices, batch_size, shared_batches)
  flops_cache: dict[str, Any] = {}
  proc = f"process_{jax.process_index()}" if multi else ""

  n_rounds = -(-n_trials // population)
  rnd = rec.state_round + (1 if rec.state_phase == "told" else 0)
  rnd = max(rnd, 0)
  bar = tqdm(total=n_rounds * epochs, initial=min(rnd, n_rounds) * epochs, disable=not progress,
             desc=f"{study}", unit="epoch", mininterval=1.0, leave=False)
  if target is not None and rnd > 0 and _reached(
      [(t.number, t.status, t.objective, None) for t in st.trials(rec.id)], target, direction):
    rnd = n_rounds  # a resumed study that had already reached its target
  try:
    while rnd < n_rounds:
      t0 = time.time()
      key_r = jax.random.fold_in(key_rounds, rnd)
      n = min(population, n_trials - rnd * population)
      if rec.state_phase == "asked" and rec.state_round == rnd:
        rows = st.round_trials(rec.id, rnd)
        u = np.asarray([json.loads(r["u"]) for r in rows], np.float32)
        ids = [r["id"] for r in rows]
      else:
        state, u = ask(state, jax.random.fold_in(key_r, 0), n, calls_left=n_rounds - rnd)
        u = np.asarray(u, np.float32)
        if u.shape != (n, space.dim):
          raise ValueError(f"program.ask returned points of shape {u.shape}; the space needs "
                           f"(n, {space.dim}) for {space.names}")
        rows = None
        ids = []
      h = jax.device_get(decode(jnp.asarray(u)))  # host arrays: slicing them compiles nothing
      params = space.to_python_batch(h)
      violation = [None if constraint is None else float(constraint(p)) for p in params]
      feasible = np.asarray([v is None or v <= 0 for v in violation])
      owned = (np.arange(n) % jax.process_count() == jax.process_index()) if multi else None
      groups, structures = _group(space, params, task, multiple,
                                  feasible if owned is None else feasible & owned)
      r = _Round(rnd, ids, u, h, params, groups, structures, feasible, owned)
      ckpt = Checkpointer(os.path.join(checkpoint_dir, f"round_{rnd:05d}", proc))
      if rows is None:
        numbers = [rnd * population + i for i in range(n)]
        r.ids = st.start_round(rec.id, rnd, [
            {"number": num, "params": p, "u": uu, "seed": trial_seed(seed, num)}
            for num, p, uu in zip(numbers, params, u.tolist(), strict=True)],
            _ser(state), checkpoint_path=ckpt.directory)
        st.record_epoch([], 0, [], [
            (r.ids[i], "infeasible", f"constraint violated by {violation[i]:g}", None)
            for i in np.flatnonzero(~feasible)])
      state = _train_round(r, state, task, kernel, data, ckpt, st, key_r, epochs, sign, observe,
                           seed, population, bar, on_epoch, space, checkpoint_every_s,
                           multiple, flops_cache, batch_size, compaction)
      dist.sync(f"metaopt-trained-{rnd}")  # process 0 has written the round's statuses
      rows = st.round_trials(rec.id, rnd)
      status = np.asarray([STATUS_NAMES.index(x["status"]) if x["status"] != "running"
                           else COMPLETE for x in rows], np.int32)
      y = np.asarray([sign * x["objective"] if x["objective"] is not None else np.inf
                      for x in rows], np.float32)
      state = tell(state, jnp.asarray(u), jnp.asarray(y), jnp.asarray(status))
      results = []
      for x, s in zip(rows, status, strict=True):
        results.append((x["id"], STATUS_NAMES[s], x["objective"], x["failure_reason"]))
      st.end_round(rec.id, rnd, results, _ser(state), duration_s=time.time() - t0)
      rec = st.load_study(study)
      ckpt.close()
      rnd += 1
      if target is not None and _reached(results, target, direction):
        st.log_event(rec.id, "target", f"objective reached {target:g} in round {rnd - 1}")
        break
  finally:
    bar.close()
  return Result(study, direction, st.trials(rec.id), state)


def _searcher_fns(program: Searcher, space: Space):
  """``(ask, tell, observe, decode)`` compiled for the driver: ``ask`` tiered (see
  :class:`population.TieredJit`; call it with ``calls_left``) and only compiled once the
  program's ``startup_ask`` (if any) no longer stands in for it, the others without backend
  optimisation (each runs once per round or epoch, in milliseconds, but would take seconds
  to compile optimised)."""
  tiered = pop.TieredJit(program.ask, static_argnums=2)
  startup = None if program.startup_ask is None else \
      pop.fast_jit(program.startup_ask, static_argnums=2)

  def ask(state, key, n: int, calls_left: int = 1, model: bool = False):
    if startup is not None and not model:  # the model is not used yet: ask stays uncompiled
      s, u, ok = startup(state, key, n)
      if bool(ok):
        return s, u
    return tiered(state, key, n, calls_left=calls_left)

  tell = pop.fast_jit(program.tell)
  observe = pop.fast_jit(program.observe) if program.observe is not None else None
  return ask, tell, observe, pop.fast_jit(space.decode)


def _engine(task: Task, devices: list[jax.Device] | None, batch_size: int,
            shared_batches: bool):
  """``(multiple, data, kernel)``: the population multiple the device mesh needs, the
  task's data placed on the mesh, and ``kernel(structure)``, which builds (once per
  structural setting) the population kernel; a structural ``batch_size`` wins over
  ``batch_size``."""
  mesh = pop.population_mesh(devices)
  multiple = 1 if mesh is None else mesh.size
  # data larger than the memory budget streams from the host (single device for now)
  stream = mesh is None and streaming.should_stream(task.data)
  if stream:
    data = streaming.shape_only(task.data)
  else:
    data = pop.data_arrays(task.data)
  if mesh is not None:
    data = jax.device_put(data, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  kernels: dict[tuple, pop.PopulationKernel] = {}
  n_train = len(task.data.train)

  def kernel(structure: dict[str, Any]) -> pop.PopulationKernel:
    k = tuple(sorted(structure.items()))
    if k not in kernels:
      bs = min(int(structure.get("batch_size", batch_size)), n_train)
      if stream:
        kernels[k] = streaming.make_streaming_kernel(task.build(structure), task.data, bs,
                                                     shared_batches)
      else:
        kernels[k] = pop.make_kernel(task.build(structure), n_train, bs, shared_batches, mesh)
    return kernels[k]

  return multiple, data, kernel


COMPACTIONS = ("auto", "always", "never")


def _reached(results: list[tuple], target: float, direction: str) -> bool:
  vals = [obj for _, status, obj, _ in results if status == "complete" and obj is not None]
  if direction == "maximize":
    return any(v >= target for v in vals)
  return any(v <= target for v in vals)


def _json_round_trip(x: Any) -> Any:
  """``x`` as the store will give it back (JSON-safe, non-finite floats as None)."""
  return json.loads(_dumps(x))


def _group(space: Space, params: list[dict[str, Any]], task: Task, multiple: int = 1,
           feasible: np.ndarray | None = None):
  """Trial indices per structural setting (one compiled kernel per group), each padded with
  ``-1`` entries (frozen placeholders) to a multiple of the device count. Infeasible trials
  are left out."""
  names = space.structural
  by: dict[tuple, list[int]] = {}
  for i, p in enumerate(params):
    if feasible is not None and not feasible[i]:
      continue
    key = tuple((n, p.get(n, task.defaults.get(n))) for n in names)
    by.setdefault(key, []).append(i)
  groups, structures = {}, {}
  for gi, key in enumerate(sorted(by, key=repr)):
    groups[f"g{gi}"] = _pad(np.asarray(by[key]), multiple)
    structures[f"g{gi}"] = {**{k: v for k, v in task.defaults.items()}, **dict(key)}
  return groups, structures


def _pad(idx: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(idx) % multiple
  return np.concatenate([idx, np.full(extra, -1, idx.dtype)]) if extra else idx


def _alive_at(alive: np.ndarray, idx: np.ndarray) -> np.ndarray:
  return (idx >= 0) & alive[np.maximum(idx, 0)]


def _take(h: Mapping[str, Any], idx: np.ndarray) -> dict[str, Any]:
  return {k: v[idx] for k, v in h.items()}


_trial_keys = pop.fast_jit(jax.vmap(jax.random.key))  # one compile, not one per eager op


@pop.fast_jit
def _gather_jit(tree, idx):
  return jax.tree_util.tree_map(lambda a: a[idx], tree)


_background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metaopt-flops")


def _gather(tree, idx: np.ndarray):
  """Rows ``idx`` of every leaf, in one compiled call (eager indexing would compile once per
  leaf shape)."""
  return _gather_jit(tree, jnp.asarray(idx, jnp.int32))


def _train_round(r: _Round, state, task: Task, kernel, data, ckpt: Checkpointer, st: Store,
                 key_r, epochs: int, sign: float, observe, seed: int, population: int, bar,
                 on_epoch, space: Space, checkpoint_every_s: float = 0.0,
                 multiple: int = 1, flops_cache: dict | None = None,
                 batch_size: int | None = None, compaction: str = "auto") -> Any:
  """Trains one round's population epoch by epoch; returns the searcher state.

  Between epochs the program's ``observe`` may stop trials (pruning, monitoring) and, for
  population-based training, hand back ``copy_from`` (exploit) and new points ``u``
  (explore). Stopped trials stay in their kernel, frozen, until the group is compacted:
  the survivors are gathered into a smaller kernel so stopped trials cost no more compute
  (``compaction``; with ``"auto"`` only when the measured compute saved over the epochs
  left exceeds the measured time to compile a kernel of the new size, see
  :func:`_compaction_size`).

  Every trial-epoch records its compute: ``flops`` (XLA cost analysis of the population
  step, per trial) and ``device_s`` (wall time of its group's chunk, compilation excluded,
  times the devices, divided by the group's slots, or by its live trials for a ``"loop"``
  kernel).
  """
  n = len(r.params)
  numbers = [r.number * population + i for i in range(n)]
  seeds = np.asarray([trial_seed(seed, num) for num in numbers], np.uint32)

  for g in r.groups:  # build (outside any trace) before eval_shape below
    kernel(r.structures[g])
  flops_cache = {} if flops_cache is None else flops_cache
  # per structure, for compaction: compile seconds, seconds per slot-epoch, sizes compiled
  perf = flops_cache.setdefault("perf", {})
  decode = flops_cache.setdefault("decode", pop.fast_jit(space.decode))  # PBT explores

  def hparams(g, idx):
    """Group ``g``'s hyperparameters; learning-rate schedules span the round's training
    (``schedule_steps``: epochs x steps per epoch) unless the space sets the horizon."""
    hg = _take(r.h, idx)
    if "schedule_steps" not in hg:
      steps = epochs * kernel(r.structures[g]).steps_per_chunk
      hg = {**hg, "schedule_steps": np.full(len(idx), steps, np.float32)}
    return hg

  def fresh(layout):
    return {g: kernel(r.structures[g]).init(_trial_keys(seeds[idx]), hparams(g, idx))
            for g, idx in layout.items()}

  def abstract(meta):
    layout = {g: np.asarray(v, np.int64) for g, v in meta["layout"].items()}
    return {"groups": jax.eval_shape(lambda: fresh(layout)), "searcher": state,
            "alive": np.zeros(n, bool), "status": np.zeros(n, np.int32),
            "last": np.zeros(n), "hist": np.zeros((n, epochs)), "u": r.u}

  restored = ckpt.restore(abstract)
  if r.owned is not None:  # every process resumes from the same epoch
    steps = dist.allgather(0 if restored is None else restored[0])
    if len(set(steps)) > 1:
      restored = ckpt.restore(abstract, max_step=min(steps)) if min(steps) > 0 else None
      if dist.allgather(0 if restored is None else restored[0]) != [min(steps)] * len(steps):
        restored = None
  if restored is not None:
    start, saved, meta = restored
    layout = {g: np.asarray(v, np.int64) for g, v in meta["layout"].items()}
    states, state = saved["groups"], saved["searcher"]
    alive, status = np.array(saved["alive"]), np.array(saved["status"])
    last, hist = np.array(saved["last"]), np.array(saved["hist"])
    r.u = np.array(saved["u"], np.float32)
    r.h = jax.device_get(decode(jnp.asarray(r.u)))
  else:
    start = 0
    layout = dict(r.groups)
    states = fresh(layout)
    alive = r.feasible.copy()
    status = np.where(r.feasible, RUNNING, INFEASIBLE).astype(np.int32)
    last, hist = np.full(n, np.nan), np.full((n, epochs), np.nan)
  bar.update(start)
  obj_key = f"valid_{task.objective}"
  last_save = time.time()
  for epoch in range(start, epochs):
    key_e = jax.random.fold_in(key_r, 1 + epoch)
    metrics: list[dict[str, Any] | None] = [None] * n
    started = alive.copy()
    stopped = []
    for g, idx in layout.items():
      k = kernel(r.structures[g])
      try:
        hg = hparams(g, idx)
        skey = repr(sorted(r.structures[g].items()))
        if batch_size is not None and skey not in flops_cache:
          # traced on another thread while the chunk compiles (XLA releases the GIL)
          bs = min(int(r.structures[g].get("batch_size", batch_size)), len(task.data.train))
          flops_cache[skey] = _background.submit(
              pop.trial_epoch_flops, task.build(r.structures[g]), pop.shapes(states[g]),
              pop.shapes(hg), data, bs)
        c0, t0 = pop.compile_seconds(), time.perf_counter()
        states[g], m = k.chunk(states[g], hg, jnp.asarray(_alive_at(alive, idx)), key_e, data)
        m = jax.device_get(m)
        compiled = pop.compile_seconds() - c0
        busy = max(0.0, time.perf_counter() - t0 - compiled)
        if isinstance(flops_cache.get(skey), concurrent.futures.Future):
          flops_cache[skey] = flops_cache[skey].result()
        # "loop" kernels spend time on live trials only; "vmap" ones on every slot
        slots = max(1, int(_alive_at(started, idx).sum())) if k.mode == "loop" else len(idx)
        p = perf.setdefault(skey, {"compile_s": 0.0, "slot_s": None, "sizes": set(),
                                   "mode": k.mode})
        if len(idx) not in p["sizes"]:
          p["sizes"].add(len(idx))
          p["compile_s"] = max(p["compile_s"], compiled)
        slot = busy / slots
        p["slot_s"] = slot if p["slot_s"] is None else min(p["slot_s"], slot)
      except Exception as e:  # noqa: BLE001 - a broken group fails, the population goes on
        for i in idx[idx >= 0]:
          if alive[i]:
            alive[i], status[i] = False, FAILED
            stopped.append((r.ids[i], "failed", f"{type(e).__name__} at epoch {epoch}: {e}",
                            None))
        continue
      for j, i in enumerate(idx):
        if i >= 0 and started[i]:
          metrics[i] = {name: np.asarray(v[j]) for name, v in m.items()}
          metrics[i]["device_s"] = busy * k.multiple / slots
          if skey in flops_cache:
            metrics[i]["flops"] = flops_cache[skey]
          if r.owned is not None:
            metrics[i]["process"] = jax.process_index()
    if r.owned is not None:  # multi-host: every process gets every trial's epoch
      mine = ({i: metrics[i] for i in np.flatnonzero(r.owned) if metrics[i] is not None},
              [x for x in stopped])
      for p, (theirs, failed) in enumerate(dist.allgather(mine)):
        if p == jax.process_index():
          continue
        for i, mi in theirs.items():
          metrics[i] = mi
        for x in failed:
          i = r.ids.index(x[0])
          alive[i], status[i] = False, FAILED
          stopped.append(x)
    values = np.full(n, np.inf, np.float64)
    prev = sign * last
    for i in range(n):
      m = metrics[i]
      if m is None or not alive[i]:
        continue
      reason = _failure(m, obj_key, epoch)
      if reason:
        alive[i], status[i] = False, FAILED
        stopped.append((r.ids[i], "failed", reason, None))
        continue
      last[i] = float(m[obj_key])
      values[i] = sign * last[i]
      hist[i, epoch] = values[i]
    if observe is not None:
      was_alive = alive.copy()
      pm = _population_metrics(metrics, values, prev - values)
      pm["objective_history"] = jnp.asarray(hist, jnp.float32)
      pm["u"] = jnp.asarray(r.u)
      state, keep, info = observe(state, pm, jnp.asarray(epoch), jnp.asarray(was_alive))
      info = {c: np.asarray(v) for c, v in info.items()}
      copy_from, new_u = info.pop("copy_from", None), info.pop("u", None)
      for i in np.flatnonzero(started):
        if metrics[i] is not None:
          metrics[i]["conditions"] = [c for c, v in info.items() if v[i]]
      if epoch < epochs - 1:
        for i in np.flatnonzero(was_alive & ~np.asarray(keep)):
          alive[i], status[i] = False, PRUNED
          conds = metrics[i]["conditions"]
          why = f"stopped after epoch {epoch}: {', '.join(conds)}" if conds else \
              f"pruned after epoch {epoch}"
          stopped.append((r.ids[i], "pruned", why, last[i]))
        if copy_from is not None:
          states = _exploit(states, layout, copy_from, alive)
          for i in np.flatnonzero((copy_from >= 0) & alive):
            metrics[i]["parent"] = numbers[int(copy_from[i])]
        if new_u is not None:
          changed = np.flatnonzero(np.any(new_u != r.u, axis=1) & alive)
          r.u = np.where(alive[:, None], new_u, r.u).astype(np.float32)
          r.h = jax.device_get(decode(jnp.asarray(r.u)))
          for i, p in zip(changed, space.to_python_batch(_take(r.h, changed)), strict=True):
            metrics[i]["next_params"] = p
      if compaction != "never":
        choose = functools.partial(_compaction_size, compaction, multiple, epochs - epoch - 1,
                                   {g: perf.get(repr(sorted(r.structures[g].items())))
                                    for g in layout})
        layout, states = _compact(layout, states, alive, multiple, choose)
    rows = [(r.ids[i], m) for i, m in enumerate(metrics) if m is not None]
    st.record_epoch([i for i, _ in rows], epoch, [m for _, m in rows], stopped)
    save = (epoch == epochs - 1 or not alive.any()
            or time.time() - last_save >= checkpoint_every_s)
    if r.owned is not None:
      save = any(dist.allgather(save))  # the same epochs in every process
    if save:
      last_save = time.time()
      ckpt.save(epoch + 1, {"groups": states, "searcher": state, "alive": alive,
                            "status": status, "last": last, "hist": hist, "u": r.u},
                {"round": r.number, "epoch": epoch,
                 "layout": {g: v.tolist() for g, v in layout.items()}})
    bar.update(1)
    if on_epoch is not None:
      on_epoch(r.number, epoch, [m for _, m in rows])
    if not alive.any():
      bar.update(epochs - epoch - 1)
      break
  # Trials still running finish now with their last valid objective.
  finals = [(r.ids[i], "complete", None, last[i]) for i in range(n) if status[i] == RUNNING]
  if finals:
    st.record_epoch([], epochs - 1, [], finals)
  return state


def _exploit(states, layout, copy_from: np.ndarray, alive: np.ndarray):
  """Copies train states (weights and optimizer state) from ``copy_from[i]`` into trial i."""
  out = dict(states)
  for g, idx in layout.items():
    where = {int(t): j for j, t in enumerate(idx) if t >= 0}
    src = np.arange(len(idx))
    for j, t in enumerate(idx):
      c = int(copy_from[t]) if t >= 0 else -1
      if c >= 0 and alive[t]:
        if c not in where:
          raise ValueError(f"exploit: trial {t} cannot copy trial {c} from another structural "
                           "group; population-based training needs one group")
        src[j] = where[c]
    if np.any(src != np.arange(len(idx))):
      out[g] = _gather(states[g], src)
  return out


def _pow2_size(live: int, multiple: int) -> int:
  """The next power of two (times the device count) at or above ``live`` trials."""
  return multiple * (1 << int(np.ceil(np.log2(max(1, -(-live // multiple))))))


def _compaction_size(mode: str, multiple: int, epochs_left: int, perf: dict, g: str,
                     size: int, live: int) -> int:
  """The kernel size group ``g`` (``size`` slots, ``live`` trials alive) continues at.

  ``"always"``: the next power of two above ``live`` once that is at most half of ``size``.
  ``"auto"``: a ``"loop"`` kernel keeps its size (stopped trials cost nothing in it); for
  ``"vmap"``, of the current size, the sizes already compiled for this structure that hold
  the survivors, and the next power of two, the one with the least expected cost:
  ``slots * slot_s * epochs_left`` plus ``compile_s`` if not compiled yet, with ``slot_s``
  (seconds per slot-epoch) and ``compile_s`` measured on this group's kernel. On a small
  task one compile costs hundreds of trial-epochs, so a round then keeps its kernel and
  lets pruned trials sit in it, frozen."""
  pow2 = _pow2_size(live, multiple)
  p = perf.get(g)
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


def _compact(layout, states, alive: np.ndarray, multiple: int = 1, choose=None):
  """Drops groups with no live trial and gathers a group's survivors into a smaller kernel
  when ``choose(group, size, live) -> new size`` says so (default: the next power of two,
  times the device count, above the live trials once that is at most half the size). Sizes
  stay powers of two, so a search compiles a handful of kernel sizes however trials stop."""
  new_layout, new_states = {}, {}
  for g, idx in layout.items():
    live = np.flatnonzero(_alive_at(alive, idx))
    if len(live) == 0:
      continue
    if choose is None:
      size = _pow2_size(len(live), multiple)
      size = size if size <= len(idx) // 2 else len(idx)
    else:
      size = choose(g, len(idx), len(live))
    if len(live) <= size < len(idx):
      pos = np.concatenate([live, np.full(size - len(live), live[0])])
      new_layout[g] = np.concatenate([idx[live], np.full(size - len(live), -1, idx.dtype)])
      new_states[g] = _gather(states[g], pos)
    else:
      new_layout[g], new_states[g] = idx, states[g]
  return new_layout, new_states


_ACCOUNTING = ("device_s", "flops", "process")


def _population_metrics(metrics: list[dict[str, Any] | None], values: np.ndarray,
                        delta: np.ndarray) -> dict[str, jax.Array]:
  """Scalar epoch metrics of the whole population as ``[n]`` arrays for ``observe``."""
  ref = next((m for m in metrics if m is not None), {})
  out = {"objective": jnp.asarray(values, jnp.float32),
         "objective_delta": jnp.asarray(delta, jnp.float32)}
  for k, v in ref.items():
    if k in _ACCOUNTING:  # host-measured, not training telemetry
      continue
    if np.ndim(v) == 0:
      dtype = bool if np.asarray(v).dtype == bool else np.float32
      col = [m[k] if m is not None else 0 for m in metrics]
      out[k] = jnp.asarray(np.asarray(col, dtype))
  return out


def _failure(m: Mapping[str, Any], obj_key: str, epoch: int) -> str | None:
  if m.get("nonfinite_loss"):
    return f"non-finite loss at epoch {epoch}"
  if m.get("nonfinite_params"):
    return f"non-finite weights at epoch {epoch}"
  if m.get("nonfinite_grads"):
    return f"non-finite gradients at epoch {epoch}"
  if not np.isfinite(m[obj_key]):
    return f"non-finite {obj_key} at epoch {epoch}"
  return None
