"""The one ask -> evaluate -> tell loop, in named phases over a round-state dataclass.

``search`` (``driver.py``), ``worker``, the white-box, NAS and repair fallbacks and the
``Study`` API (``study.py``: ``ask`` is ``ask_round``, a batch's last ``tell`` is
``tell_round``, ``optimize`` runs ``one_round``) all run rounds through here. A round is:

1. ``ask_round``: the searcher proposes points (enqueued ones first); they are decoded into a
   :class:`TrialBatch` (constraint-infeasible trials marked, never evaluated) and stored;
2. ``run_round``: the evaluator advances the batch epoch by epoch. Per epoch: ``evaluate``
   (the evaluator's chunk), ``share`` (multi-host: every process gets every trial's epoch),
   ``judge`` (failures, objective history), ``decide`` (the program's observer returns a
   :class:`Decision`), ``apply`` (prune, PBT exploit / explore, compaction), ``record``
   (store) and ``save`` (checkpoint). A restored round continues from its newest checkpoint;
3. ``close_round``: the round's final statuses and objectives (``outcomes``) become the
   ``tell`` (``told``, ``tell_round``), stored with the post-tell searcher state.

An unasked round (``RoundPlan.points``: ``search``'s ``complete_top_k`` retraining) takes its
points as given in step 1 and tells nothing in step 3; the rest is the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import compile_cache, keys
from metaopt._src import distributed as dist
from metaopt._src import objectives as mo
from metaopt._src import population as pop
from metaopt._src.checkpoint import Checkpointer
from metaopt._src.evaluators import Evaluator, TrialBatch
from metaopt._src.jit_options import OptionsJit
from metaopt._src.store import Store, _dumps
from metaopt._src.types import (
    FAILED,
    INFEASIBLE,
    PRUNED,
    RUNNING,
    STATUS_NAMES,
    Decision,
    Searcher,
)
from metaopt.spaces import Space

PyTree = Any
Stop = tuple[int, str, str | None, float | None]  # (trial id, status, reason, objective)


def trial_seed(seed: int, number: int) -> int:
  """The seed of trial ``number`` of a study seeded ``seed``."""
  return (int(seed) * 1_000_003 + int(number)) % (2**31 - 1)


# A search's keys are made on the host (``keys.py``: numpy threefry, the bits of JAX's), no XLA
# compile; under another default PRNG, by two functions compiled without backend optimisation,
# once per process (the eager ops compile ``stage``, ``_threefry_seed``, ``_threefry_split``,
# ``unstack``, ``convert_element_type`` and ``_threefry_fold_in`` one by one, optimised).
@pop.fast_jit
def search_keys(seed: jax.Array) -> tuple[jax.Array, jax.Array]:
  key_init, key_rounds = jax.random.split(jax.random.key(seed))
  return key_init, key_rounds


_fold_in = pop.fast_jit(jax.random.fold_in)


def fold_in(key: jax.Array, data: int) -> jax.Array:
  """``jax.random.fold_in(key, data)`` for ``data >= 0`` (nothing compiled on the host path,
  one compile for every ``data`` otherwise)."""
  if keys.on_host() and 0 <= int(data) < 2**32:
    return keys.wrap(keys.fold_in_data(np.asarray(jax.random.key_data(key)), int(data)))
  return _fold_in(key, np.uint32(data))


def root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """``(key_init, key_rounds)`` of a search seeded ``seed``: ``split(key(seed))``."""
  if -2**31 <= int(seed) < 2**31:
    if keys.on_host():
      key_init, key_rounds = keys.split2(keys.seed_data(int(seed)))
      return keys.wrap(key_init), keys.wrap(key_rounds)
    return search_keys(int(seed))
  key_init, key_rounds = jax.random.split(jax.random.key(seed))  # past int32: eager ops
  return key_init, key_rounds


def direction_sign(direction: str) -> float:
  """-1 for ``"maximize"``, else 1: the objective times it is minimised."""
  return -1.0 if direction == "maximize" else 1.0


def round_count(n_trials: int, population: int) -> int:
  """Rounds of a search of ``n_trials`` trials, ``population`` a round (the last may be
  smaller)."""
  return -(-n_trials // population)


def round_numbers(rnd: int, n_trials: int, population: int) -> list[int]:
  """Trial numbers of round ``rnd`` of such a search (``search`` and ``worker`` alike)."""
  first = rnd * population
  return list(range(first, min(first + population, n_trials)))


def round_dir(root: str, rnd: int, *sub: str) -> str:
  """Round ``rnd``'s checkpoint directory under ``root`` (``round_NNNNN``, then ``sub``)."""
  return os.path.join(root, f"round_{rnd:05d}", *sub)


def positive_int(name: str, v: Any) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
    raise ValueError(f"{name}={v!r}: must be an integer >= 1")
  return int(v)


def ser(state: Any) -> bytes:
  return flax.serialization.to_bytes(jax.device_get(state))


def json_round_trip(x: Any) -> Any:
  """``x`` as the store will give it back (JSON-safe, non-finite floats as None)."""
  return json.loads(_dumps(x))


def config_changes(saved: Mapping[str, Any], record: Mapping[str, Any],
                   ignore: tuple[str, ...] = ("store",)) -> list[str]:
  """Fields whose values differ between a stored study config and this run's."""
  now = json_round_trip(record)
  return sorted(k for k in set(saved) | set(now)
                if k not in ignore and saved.get(k) != now.get(k))


# --------------------------------------------------------------------------- searcher


@dataclasses.dataclass
class SearcherFns:
  """A program's functions compiled for the loop (see :func:`searcher_fns`)."""

  ask: Callable
  tell: Callable
  observe: Callable | None
  decode: Callable
  init: Callable | None = None
  tell_epochs: bool = False  # tell takes a fifth argument, epochs[n] (Searcher.tell_epochs)


# The searcher's small functions (``init``, ``startup_ask``, ``observe``, ``tell``, ``decode``)
# compile on the CPU without backend optimisation and with XLA's older (non-MLIR) fusion
# emitters, which compile these programs in about 60% of the CPU time (a cold digits search:
# ``startup_ask`` 0.26 s instead of 0.6, ``observe`` 0.26 instead of 0.4, ``tell`` 0.13 instead
# of 0.23, process CPU under load ~38); they run once per round or epoch, in milliseconds.
# Their outputs are bit for bit those of the newer emitters (integer PRNG hashes, float
# arithmetic; checked by tests/test_compile_cache.py). The population ``init`` has its own
# options (``population.init_compile_options``, older emitters too: its fast build's initial
# weights change in the last bits). The TPE / GP ``ask`` keeps :class:`population.TieredJit`'s
# builds: the fast one with the newer emitters (the older would round its proposals
# differently, which tests/test_loop.py pins bit for bit), the optimised one with the older
# (``population.OPT_COMPILE_CPU``).
SEARCHER_COMPILE_CPU: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


def searcher_jit(fun: Callable, **kwargs: Any) -> Callable:
  """:func:`population.fast_jit`, on the CPU also with :data:`SEARCHER_COMPILE_CPU`."""
  if jax.default_backend() != "cpu":
    return pop.fast_jit(fun, **kwargs)
  return OptionsJit(fun, {**pop.FAST_COMPILE, **SEARCHER_COMPILE_CPU}, **kwargs)


def searcher_fns(program: Searcher, space: Space) -> SearcherFns:
  """The program's functions compiled for the loop, shared by every search of the same
  program and space in this process (see ``compile_cache``)."""
  return compile_cache.cached(lambda: _searcher_fns(program, space), "searcher-fns",
                              program, space)


def _searcher_fns(program: Searcher, space: Space) -> SearcherFns:
  """``ask`` tiered (see :class:`population.TieredJit`; call it with ``calls_left``) and
  only compiled once the program's ``startup_ask`` (if any) no longer stands in for it; the
  others (``init`` too) by :func:`searcher_jit` (each runs once per round or epoch, in
  milliseconds, but would take seconds to compile optimised)."""
  static = program.ask_static  # host function: the code path this state takes (Searcher)
  tiered = pop.TieredJit(program.ask, static_argnums=2 if static is None else (2, 3))
  startup = None if program.startup_ask is None else \
      searcher_jit(program.startup_ask, static_argnums=2)
  host = None if startup is None else program.startup_host

  def ask(state, key, n: int, calls_left: int = 1, model: bool = False):
    if startup is not None and not model:  # the model is not used yet: ask stays uncompiled
      # its host twin, where there is one, compiles nothing either (the same values)
      out = None if host is None else host(state, key, n)
      s, u, ok = startup(state, key, n) if out is None else out
      if bool(ok):
        return s, u
    args = (state, key, n) if static is None else (state, key, n, static(state))
    return tiered(*args, calls_left=calls_left)

  observe = searcher_jit(program.observe) if program.observe is not None else None
  return SearcherFns(ask, searcher_jit(program.tell), observe, searcher_jit(space.decode),
                     searcher_jit(program.init), bool(program.tell_epochs))


def check_dim(program: Searcher, space: Space, field: str = "program") -> None:
  """Refuses a searcher built for another dimension than ``space``'s, before anything
  compiles: its ``init`` and first ask (``startup_ask`` where it has one) are traced, not
  compiled. A searcher that cannot be traced so is left to :func:`ask_points`'s check."""
  try:
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(program.init, key)
    ask = program.ask if program.startup_ask is None else program.startup_ask
    u = jax.eval_shape(lambda s, k: ask(s, k, 2)[1], state, key)
  except Exception:  # noqa: BLE001 - e.g. an ask that needs its static argument
    return
  if len(u.shape) == 2 and u.shape[1] != space.dim:
    raise ValueError(f"{field}: the searcher was built for dim={u.shape[1]}; this space needs "
                     f"dim={space.dim} ({', '.join(space.names)})")


def ask_points(fns: SearcherFns, state, key, n: int, space: Space, calls_left: int = 1):
  """``(state, u)``: ``n`` new points, checked against the space."""
  state, u = fns.ask(state, key, n, calls_left=calls_left)
  u = np.asarray(u, np.float32)
  if u.shape != (n, space.dim):
    raise ValueError(f"program.ask returned points of shape {u.shape}; the space needs "
                     f"(n, {space.dim}) for {space.names}")
  return state, u


def make_batch(fns: SearcherFns, space: Space, rnd: int, numbers: list[int], u: np.ndarray,
               *, seed: int, epochs: int, constraint=None, multi: bool = False,
               ids: list[int] | None = None, seeds: list[int] | None = None,
               given: list[Mapping[str, Any]] | None = None
               ) -> tuple[TrialBatch, list[float | None]]:
  """The round's :class:`TrialBatch` and each trial's constraint violation (or None); trial
  seeds derive from ``seed`` and the trial numbers unless ``seeds`` gives them. ``given``:
  values a user typed for the first trials (see :func:`enqueued`), kept exactly as typed."""
  h = jax.device_get(fns.decode(np.asarray(u, np.float32)))  # host arrays: slicing compiles nothing
  params = space.to_python_batch(h)
  for p, g in zip(params, given or [], strict=False):
    p.update({k: v for k, v in g.items() if k in p})
  violation = [None if constraint is None else float(constraint(p)) for p in params]
  feasible = np.asarray([v is None or v <= 0 for v in violation], bool)
  n = len(numbers)
  owned = (np.arange(n) % jax.process_count() == jax.process_index()) if multi else None
  seeds = np.asarray(seeds if seeds is not None else
                     [trial_seed(seed, num) for num in numbers], np.uint32)
  batch = TrialBatch(rnd, list(ids or []), list(numbers), seeds, u, h, params, feasible,
                     owned, epochs, space)
  return batch, violation


def encode_values(space: Space, values: Mapping[str, Any], base: np.ndarray | None = None
                  ) -> np.ndarray:
  """Unit-cube point of ``values``; coordinates they leave out come from ``base`` (or the
  parameters' defaults)."""
  u = space.encode({}) if base is None else np.array(base, np.float64)
  for i, n in enumerate(space.names):
    if n in values:
      p = space.params[n]
      u[i] = p.encode(p.from_python(values[n]))
  return u


def enqueued(space: Space, u: np.ndarray, points: Any) -> tuple[np.ndarray, list[dict]]:
  """``u`` with its first rows replaced by ``points`` (each a unit-cube row, or a dict of
  some of the space's values: the coordinates it leaves out stay the searcher's), and the
  values given per replaced row (``{}`` for a unit-cube row)."""
  u, given = np.array(u, np.float32), []
  for i in range(min(len(u), len(points))):
    if isinstance(points[i], Mapping):
      u[i] = encode_values(space, points[i], u[i])
      given.append(dict(points[i]))
    else:
      u[i] = np.asarray(points[i], np.float32)
      given.append({})
  return u, given


def new_trials(batch: TrialBatch) -> list[dict[str, Any]]:
  """The batch's trials as rows for ``Store.start_round`` / ``Store.claim_round``."""
  return [{"number": num, "params": p, "u": uu, "seed": int(s)}
          for num, p, uu, s in zip(batch.numbers, batch.params, batch.u.tolist(), batch.seeds,
                                   strict=True)]


def record_infeasible(store: Store, batch: TrialBatch, violation: list[float | None]) -> None:
  """Records the new round's constraint-infeasible trials (never evaluated) as stopped."""
  stops = [(batch.ids[i], "infeasible", f"constraint violated by {violation[i]:g}", None)
           for i in np.flatnonzero(~batch.feasible)]
  if stops:
    store.record_epoch([], 0, [], stops)


def outcomes(rows: list[dict[str, Any]]) -> list[tuple[int, str, float | None, str | None]]:
  """``(id, status, objective, reason)`` of a finished round's stored trials."""
  return [(x["id"], "complete" if x["status"] == "running" else x["status"], x["objective"],
           x["failure_reason"]) for x in rows]


def trained_epochs(rows: list[dict[str, Any]]) -> list[int]:
  """The epochs each of a finished round's stored trials trained (``last_epoch + 1``; 0
  where none was recorded), in the order of :func:`outcomes`."""
  return [0 if x.get("last_epoch") is None else int(x["last_epoch"]) + 1 for x in rows]


def told(results, sign: float) -> tuple[np.ndarray, np.ndarray]:
  """``(y, status)`` for ``tell``: objectives minimised (``inf`` where there is none)."""
  status = np.asarray([STATUS_NAMES.index(s) for _, s, _, _ in results], np.int32)
  y = np.asarray([sign * o if o is not None else np.inf for _, _, o, _ in results],
                 np.float32)
  return y, status  # host arrays: jitted tell takes them (jnp.asarray would compile)


# --------------------------------------------------------------------------- one round


@dataclasses.dataclass
class RoundEnv:
  """What stays fixed while rounds run: the evaluator, program functions and the store."""

  evaluator: Evaluator
  fns: SearcherFns
  space: Space
  store: Store
  epochs: int
  sign: float
  checkpoint_every_s: float = 0.0
  bar: Any = None
  on_epoch: Callable[[int, int, list[dict[str, Any]]], None] | None = None
  objectives: list[tuple[str, str]] | None = None  # several: the searcher is told y[n, m]
  objective_keys: Mapping[str, str] | None = None  # objective name -> epoch metric holding it
  keep_state: bool = True  # False: nothing resumes from this store (an in-memory Study), so
  #                          the searcher state is not serialised into it


def state_bytes(env: RoundEnv, state: PyTree) -> bytes | None:
  """The searcher state as the store keeps it (None where ``env.keep_state`` is off)."""
  return ser(state) if env.keep_state else None


@dataclasses.dataclass
class RoundState:
  """The round in progress (host arrays over the round's ``n`` trials)."""

  searcher: PyTree      # the program's state
  evaluator: PyTree     # the evaluator's state (trial train states)
  alive: np.ndarray     # [n] still training
  status: np.ndarray    # [n] status codes
  last: np.ndarray      # [n] latest objective, as the evaluator reports it
  hist: np.ndarray      # [n, epochs] minimised objective per epoch
  start: int = 0        # first epoch to run
  last_save: float = 0.0
  running: Any = None   # several objectives: their values so far (objectives.RunningObjectives)

  def tree(self, ev_tree: PyTree, u: np.ndarray) -> dict[str, Any]:
    return {"evaluator": ev_tree, "searcher": self.searcher, "alive": self.alive,
            "status": self.status, "last": self.last, "hist": self.hist, "u": u}


@dataclasses.dataclass
class EpochOutcome:
  """One epoch's per-trial metrics (None: not run) and the trials that stopped in it."""

  metrics: list[dict[str, Any] | None]
  stopped: list[Stop]
  started: np.ndarray
  values: np.ndarray | None = None
  prev: np.ndarray | None = None


def begin(env: RoundEnv, batch: TrialBatch, searcher_state, ckpt: Checkpointer | None,
          resumed_in: int | None = None) -> RoundState:
  """A fresh round state, or the one in the round's newest readable checkpoint (none
  without a checkpointer). A round that started before (``resumed_in``: its study's id)
  records what it restored as a ``restore`` event (``restored epoch E``: epochs ``0..E-1``
  are not run again)."""
  n, ev = len(batch.params), env.evaluator

  def abstract(meta):
    return {"evaluator": ev.restore(batch, meta), "searcher": searcher_state,
            "alive": np.zeros(n, bool), "status": np.zeros(n, np.int32),
            "last": np.zeros(n), "hist": np.zeros((n, env.epochs)), "u": batch.u}

  restored = None if ckpt is None else ckpt.restore(abstract)
  if batch.owned is not None and ckpt is not None:  # every process resumes from the same epoch
    steps = dist.allgather(0 if restored is None else restored[0])
    if len(set(steps)) > 1:
      restored = ckpt.restore(abstract, max_step=min(steps)) if min(steps) > 0 else None
      if dist.allgather(0 if restored is None else restored[0]) != [min(steps)] * len(steps):
        restored = None
  if resumed_in is not None:
    gone = [] if ckpt is None else ckpt.skipped
    skipped = f"; skipped unreadable steps {gone}" if gone else ""
    what = (f"epoch 0 of {env.epochs} (no readable checkpoint{skipped})" if restored is None
            else f"epoch {restored[0]} of {env.epochs} from checkpoint step {restored[0]}"
                 f"{skipped}")
    env.store.log_event(resumed_in, "restore", f"round {batch.number}: restored {what}")
  if restored is not None:
    start, saved, meta = restored
    batch.u = np.array(saved["u"], np.float32)
    batch.h = jax.device_get(env.fns.decode(np.asarray(batch.u, np.float32)))
    return RoundState(saved["searcher"], ev.resume(saved["evaluator"], batch, meta),
                      np.array(saved["alive"]), np.array(saved["status"]),
                      np.array(saved["last"]), np.array(saved["hist"]), start, time.time())
  status = np.where(batch.feasible, RUNNING, INFEASIBLE).astype(np.int32)
  return RoundState(searcher_state, ev.start(batch), batch.feasible.copy(), status,
                    np.full(n, np.nan), np.full((n, env.epochs), np.nan), 0, time.time())


def evaluate(env: RoundEnv, batch: TrialBatch, rs: RoundState, epoch: int, key,
             study_id: int | None = None) -> EpochOutcome:
  """Runs the evaluator's epoch on the live trials this process evaluates. An exception
  from the evaluator stops the search, recorded as a ``failed`` study event."""
  started = rs.alive.copy()
  run = started if batch.owned is None else started & batch.owned
  try:
    rs.evaluator, metrics = env.evaluator.epoch(rs.evaluator, batch, run, epoch, key)
  except Exception as e:
    if study_id is not None:
      why = batch.cache.pop("stop_reason", "the evaluator raised")
      env.store.log_event(study_id, "failed", f"round {batch.number} epoch {epoch}: {why}; "
                          f"search stopped: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:2000]}")
    raise
  metrics = list(metrics)
  stopped: list[Stop] = []
  for i, m in enumerate(metrics):
    if m is not None and ("error" in m or "pruned" in m):  # the evaluator stopped it
      failed = "error" in m
      rs.alive[i], rs.status[i] = False, FAILED if failed else PRUNED
      stopped.append((batch.ids[i], "failed" if failed else "pruned",
                      str(m["error" if failed else "pruned"]), None))
      metrics[i] = None
    elif m is not None and batch.owned is not None:
      m["process"] = jax.process_index()
  return EpochOutcome(metrics, stopped, started)


def share(batch: TrialBatch, rs: RoundState, out: EpochOutcome) -> None:
  """Multi-host: every process gets every trial's epoch and failures."""
  if batch.owned is None:
    return
  mine = ({i: out.metrics[i] for i in np.flatnonzero(batch.owned)
           if out.metrics[i] is not None}, list(out.stopped))
  for p, (theirs, failed) in enumerate(dist.allgather(mine)):
    if p == jax.process_index():
      continue
    for i, mi in theirs.items():
      out.metrics[i] = mi
    for x in failed:
      i = batch.ids.index(x[0])
      rs.alive[i], rs.status[i] = False, FAILED
      out.stopped.append(x)


def failure(m: Mapping[str, Any], obj_key: str, epoch: int) -> str | None:
  """Why a trial's epoch failed (non-finite loss, weights, gradients or objective)."""
  if m.get("nonfinite_loss"):
    return f"non-finite loss at epoch {epoch}"
  if m.get("nonfinite_params"):
    return f"non-finite weights at epoch {epoch}"
  if m.get("nonfinite_grads"):
    return f"non-finite gradients at epoch {epoch}"
  if obj_key not in m:
    return f"no {obj_key!r} in the metrics at epoch {epoch} (got {sorted(m)})"
  if not np.isfinite(m[obj_key]):
    return f"non-finite {obj_key} at epoch {epoch}"
  return None


def judge(env: RoundEnv, batch: TrialBatch, rs: RoundState, out: EpochOutcome,
          epoch: int) -> None:
  """Fails broken trials and records every live trial's objective."""
  n = len(batch.params)
  obj = env.evaluator.objective
  out.values = np.full(n, np.inf, np.float64)
  out.prev = env.sign * rs.last
  for i in range(n):
    m = out.metrics[i]
    if m is None or not rs.alive[i]:
      continue
    reason = failure(m, obj, epoch)
    if reason:
      rs.alive[i], rs.status[i] = False, FAILED
      out.stopped.append((batch.ids[i], "failed", reason, None))
      continue
    rs.last[i] = float(m[obj])
    out.values[i] = env.sign * rs.last[i]
    rs.hist[i, epoch] = out.values[i]


_ACCOUNTING = ("device_s", "flops", "process")


def population_metrics(metrics: list[dict[str, Any] | None], values: np.ndarray,
                       delta: np.ndarray) -> dict[str, np.ndarray]:
  """Scalar epoch metrics of the whole population as ``[n]`` arrays for ``observe``."""
  ref = next((m for m in metrics if m is not None), {})
  out = {"objective": np.asarray(values, np.float32),
         "objective_delta": np.asarray(delta, np.float32)}
  for k, v in ref.items():
    if k in _ACCOUNTING:  # host-measured, not training telemetry
      continue
    if np.ndim(v) == 0 and np.asarray(v).dtype.kind in "biuf":
      dtype = bool if np.asarray(v).dtype == bool else np.float32
      col = [m.get(k, 0) if m is not None else 0 for m in metrics]
      out[k] = np.asarray(col, dtype)
  return out


def observer_metrics(batch: TrialBatch, rs: RoundState, out: EpochOutcome) -> dict[str, Any]:
  """The epoch's population metrics as the program's ``observe`` reads them (one objective;
  :func:`decide` adds several objectives' values)."""
  pm = population_metrics(out.metrics, out.values, out.prev - out.values)
  pm["objective_history"] = np.asarray(rs.hist, np.float32)
  pm["u"] = np.array(batch.u, np.float32)  # copies: jit may alias a host array on CPU
  return pm


def warm_observe(env: RoundEnv, batch: TrialBatch, rs: RoundState) -> bool:
  """Compiles the program's ``observe`` for this round before its first epoch runs, where
  the evaluator's first chunk is still compiling in the background (an evaluator's
  ``first_metrics(batch)``: one trial's epoch metrics as zeros, or None): ``observe`` is
  called once on those zeros (its result dropped), so the first epoch's results wait for no
  compile of it. Returns whether it was called."""
  first = getattr(env.evaluator, "first_metrics", None)
  if env.fns.observe is None or env.objectives or first is None or rs.start != 0:
    return False
  m = first(batch)
  if m is None:
    return False
  n = len(batch.params)
  zeros = EpochOutcome([dict(m) for _ in range(n)], [], rs.alive.copy(), np.zeros(n),
                       np.zeros(n))
  env.fns.observe(rs.searcher, observer_metrics(batch, rs, zeros), rs.start,
                  np.array(rs.alive))
  return True


def decide(env: RoundEnv, batch: TrialBatch, rs: RoundState, out: EpochOutcome,
           epoch: int) -> Decision | None:
  """The program's observer on this epoch's population (None without an observer)."""
  if env.fns.observe is None:
    return None
  pm = observer_metrics(batch, rs, out)
  if env.objectives:  # y[n, m] so far, minimised, for multi-objective pruners
    if rs.running is None:
      rs.running = mo.RunningObjectives(env.objectives, batch.params,
                                        getattr(env.evaluator, "task", None), env.space,
                                        env.objective_keys)
    pm["objectives"] = np.asarray(rs.running.update(out.metrics, rs.alive), np.float32)
  # host arrays into the jitted observe (jnp.asarray would compile a conversion per shape),
  # copied: on CPU jit may alias a host buffer, and rs.alive changes after this epoch
  rs.searcher, d = env.fns.observe(rs.searcher, pm, epoch, np.array(rs.alive))
  conditions = {c: np.asarray(v) for c, v in (d.conditions or {}).items()}
  for i in np.flatnonzero(out.started):
    if out.metrics[i] is not None:
      out.metrics[i]["conditions"] = [c for c, v in conditions.items() if v[i]]
  return Decision(np.asarray(d.keep, bool), conditions,
                  None if d.copy_from is None else np.asarray(d.copy_from),
                  None if d.u is None else np.asarray(d.u))


def apply(env: RoundEnv, batch: TrialBatch, rs: RoundState, out: EpochOutcome,
          d: Decision, epoch: int) -> None:
  """Prunes, copies (PBT exploit) and moves (PBT explore) trials, then lets the evaluator
  settle (compact) its state around the survivors."""
  ev = env.evaluator
  if epoch < env.epochs - 1:
    for i in np.flatnonzero(rs.alive & ~d.keep):
      rs.alive[i], rs.status[i] = False, PRUNED
      conds = out.metrics[i]["conditions"]
      why = f"stopped after epoch {epoch}: {', '.join(conds)}" if conds else \
          f"pruned after epoch {epoch}"
      out.stopped.append((batch.ids[i], "pruned", why, rs.last[i]))
    if d.copy_from is not None:
      rs.evaluator = ev.exploit(rs.evaluator, batch, d.copy_from, rs.alive)
      for i in np.flatnonzero((d.copy_from >= 0) & rs.alive):
        out.metrics[i]["parent"] = batch.numbers[int(d.copy_from[i])]
    if d.u is not None:
      explore(env, batch, rs, out, d.u)
  rs.evaluator = ev.settle(rs.evaluator, batch, rs.alive, env.epochs - epoch - 1)


def explore(env: RoundEnv, batch: TrialBatch, rs: RoundState, out: EpochOutcome,
            new_u: np.ndarray) -> None:
  """Live trials continue at ``new_u``; changed ones record their next parameters."""
  changed = np.flatnonzero(np.any(new_u != batch.u, axis=1) & rs.alive)
  batch.u = np.where(rs.alive[:, None], new_u, batch.u).astype(np.float32)
  batch.h = jax.device_get(env.fns.decode(np.asarray(batch.u, np.float32)))
  h_changed = {k: v[changed] for k, v in batch.h.items()}
  for i, p in zip(changed, env.space.to_python_batch(h_changed), strict=True):
    out.metrics[i]["next_params"] = p


def record(env: RoundEnv, batch: TrialBatch, out: EpochOutcome, epoch: int) -> list[dict]:
  """Stores the epoch's metrics and stopped trials; returns the metrics recorded."""
  rows = [(batch.ids[i], m) for i, m in enumerate(out.metrics) if m is not None]
  env.store.record_epoch([i for i, _ in rows], epoch, [m for _, m in rows], out.stopped)
  return [m for _, m in rows]


def save(env: RoundEnv, batch: TrialBatch, rs: RoundState, ckpt: Checkpointer | None,
         epoch: int) -> None:
  """Checkpoints the round after ``epoch`` when it is due (always after its last epoch;
  never without a checkpointer)."""
  if ckpt is None:
    return
  due = (epoch == env.epochs - 1 or not rs.alive.any()
         or time.time() - rs.last_save >= env.checkpoint_every_s)
  if batch.owned is not None:
    due = any(dist.allgather(due))  # the same epochs in every process
  if due:
    rs.last_save = time.time()
    tree, meta = env.evaluator.checkpoint(rs.evaluator)
    ckpt.save(epoch + 1, rs.tree(tree, batch.u), {"round": batch.number, "epoch": epoch,
                                                  **meta})


def run_round(env: RoundEnv, batch: TrialBatch, searcher_state, ckpt: Checkpointer | None,
              key_r, study_id: int | None = None, resumed: bool = False) -> PyTree:
  """Evaluates one round epoch by epoch, recording everything; returns the searcher state.

  Trials still running after the last epoch complete with their last objective. A round
  started before (``resumed``) records a ``restore`` event in study ``study_id``."""
  rs = begin(env, batch, searcher_state, ckpt, study_id if resumed else None)
  warm_observe(env, batch, rs)
  if env.bar is not None:
    env.bar.update(rs.start)
  for epoch in range(rs.start, env.epochs):
    out = evaluate(env, batch, rs, epoch, fold_in(key_r, 1 + epoch), study_id)
    share(batch, rs, out)
    judge(env, batch, rs, out, epoch)
    d = decide(env, batch, rs, out, epoch)
    if d is not None:
      apply(env, batch, rs, out, d, epoch)
    metrics = record(env, batch, out, epoch)
    save(env, batch, rs, ckpt, epoch)
    if env.bar is not None:
      env.bar.update(1)
    if env.on_epoch is not None:
      env.on_epoch(batch.number, epoch, metrics)
    if not rs.alive.any():
      if env.bar is not None:
        env.bar.update(env.epochs - epoch - 1)
      break
  finals = [(batch.ids[i], "complete", None, rs.last[i]) for i in range(len(batch.params))
            if rs.status[i] == RUNNING]
  if finals:
    env.store.record_epoch([], env.epochs - 1, [], finals)
  return rs.searcher


def tell_round(env: RoundEnv, state, u: np.ndarray, results,
               y_vector: np.ndarray | None = None, epochs=None) -> PyTree:
  """The program told a finished round's results (``y_vector``: ``y[n, m]`` of several
  objectives, each minimised; ``epochs``: the epochs each trial trained, for a program with
  ``tell_epochs``, 0 each where not given)."""
  y, status = told(results, env.sign)
  if y_vector is not None:
    y = np.asarray(y_vector, np.float32)
  u = np.array(u, np.float32)
  if env.fns.tell_epochs:
    e = np.zeros(len(y), np.int32) if epochs is None else np.asarray(epochs, np.int32)
    return env.fns.tell(state, u, y, status, e)
  return env.fns.tell(state, u, y, status)


def round_outcomes(env: RoundEnv, study_id: int, rnd: int):
  """``(results, y[n, m] or None, epochs)`` of a finished round, from the store; with several
  objectives their values are recorded too (see :func:`objectives.vector_outcomes`);
  ``epochs``: :func:`trained_epochs`."""
  rows = env.store.round_trials(study_id, rnd)
  results = outcomes(rows)
  epochs = trained_epochs(rows)
  if not env.objectives:
    return results, None, epochs
  results, y = mo.vector_outcomes(env.store, study_id, rnd, rows, results, env.objectives,
                                  getattr(env.evaluator, "task", None), env.space,
                                  env.objective_keys)
  return results, y, epochs


@dataclasses.dataclass
class RoundPlan:
  """Where one round goes in its study, and how its points are made.

  Attributes:
    study_id: the study's id in the store.
    rnd: the round number.
    numbers: the trial numbers of the round's trials.
    key_ask: the key the searcher asks with.
    key_r: the round's key (epoch ``e`` evaluates with ``fold_in(key_r, 1 + e)``).
    checkpoint_dir: the round's checkpoint directory; None: the round is not checkpointed
      (a killed round starts again; for evaluators whose one epoch is the whole trial).
    seed: the study seed (trial seeds derive from it and the trial numbers).
    constraint: ``params -> value``, infeasible when ``> 0`` (or None).
    asked: ``(ids, u)`` of a round asked (and stored) before a restart: not asked again.
    enqueue: points evaluated first (unit-cube rows, or dicts of parameter values as in
      :func:`enqueued`): they replace the first rows the searcher proposed, and the searcher
      is told them.
    calls_left: rounds left, for the tiered compilation of ``ask``.
    label: maps a trial's params to what the store records (default: the params).
    seeds: the trials' seeds (default: derived from ``seed`` and the trial numbers).
    points: the round's unit-cube points, given: an unasked round (``search``'s
      ``complete_top_k`` retraining): the searcher is neither asked nor told and keeps its
      state. A round ``asked`` before a restart is reloaded as any other.
  """

  study_id: int
  rnd: int
  numbers: list[int]
  key_ask: Any
  key_r: Any
  checkpoint_dir: str | None
  seed: int
  constraint: Callable[[dict[str, Any]], float] | None = None
  asked: tuple[list[int], np.ndarray] | None = None
  enqueue: np.ndarray | list[Mapping[str, Any]] | None = None
  calls_left: int = 1
  label: Callable[[dict[str, Any]], dict[str, Any]] | None = None
  seeds: list[int] | None = None
  points: np.ndarray | None = None


def ask_round(env: RoundEnv, state, plan: RoundPlan):
  """The ask half of :func:`one_round`: asks the plan's round (or reloads it, or takes its
  given ``points``) and stores its trials as ``running`` with the post-ask searcher state.
  Returns ``(state, batch, u)``; ``u`` holds the round's points (what the searcher is told)."""
  given = None
  if plan.asked is not None:
    ids, u = plan.asked
  elif plan.points is not None:
    ids, u = [], np.asarray(plan.points, np.float32)
  else:
    state, u = ask_points(env.fns, state, plan.key_ask, len(plan.numbers), env.space,
                          plan.calls_left)
    if plan.enqueue is not None and len(plan.enqueue):
      u, given = enqueued(env.space, u, plan.enqueue)
    ids = []
  batch, violation = make_batch(env.fns, env.space, plan.rnd, plan.numbers, u,
                                seed=plan.seed, epochs=env.epochs, constraint=plan.constraint,
                                multi=dist.is_multi(), ids=ids, seeds=plan.seeds, given=given)
  if plan.asked is None:
    rows = new_trials(batch)
    if plan.label is not None:
      rows = [{**r, "params": plan.label(r["params"])} for r in rows]
    path = None if plan.checkpoint_dir is None else os.path.abspath(plan.checkpoint_dir)
    batch.ids = env.store.start_round(plan.study_id, plan.rnd, rows, state_bytes(env, state),
                                      checkpoint_path=path)
    record_infeasible(env.store, batch, violation)
  return state, batch, u


def close_round(env: RoundEnv, state, study_id: int, rnd: int, u: np.ndarray | None, *,
                results=None, duration_s: float | None = None):
  """The tell half of :func:`one_round`: the program told the finished round's results
  (read from the store unless given), stored with the post-tell searcher state (and, when
  given, ``duration_s`` as every trial's duration). ``u`` None: an unasked round, nothing
  is told (the state is stored as it is). Returns ``(state, results)``."""
  y_vector = epochs = None
  if results is None:  # multi-host: as process 0 reads them, once it has written them all
    results, y_vector, epochs = dist.from_leader(f"metaopt-outcomes-{rnd}",
                                                 lambda: round_outcomes(env, study_id, rnd))
  if u is not None:
    state = tell_round(env, state, u, results, y_vector, epochs)
  env.store.end_round(study_id, rnd, results, state_bytes(env, state), duration_s=duration_s)
  return state, results


def one_round(env: RoundEnv, state, plan: RoundPlan):
  """Asks (or reloads), evaluates and tells one round, recording it in the store; an
  unasked round (``plan.points``) is neither asked nor told, and keeps the state given.

  Returns ``(state, results, batch)``; ``results`` holds ``(id, status, objective,
  reason)`` per trial."""
  t0 = time.time()
  ckpt = None if plan.checkpoint_dir is None else Checkpointer(plan.checkpoint_dir)
  unasked = plan.points is not None
  try:
    state, batch, u = ask_round(env, state, plan)
    ran = run_round(env, batch, state, ckpt, plan.key_r, plan.study_id,
                    resumed=plan.asked is not None)
    state, results = close_round(env, state if unasked else ran, plan.study_id, plan.rnd,
                                 None if unasked else u, duration_s=time.time() - t0)
  finally:
    if ckpt is not None:
      ckpt.close()
  return state, results, batch


def warm_start(env: RoundEnv, state, u: np.ndarray, y: np.ndarray, chunk: int) -> PyTree:
  """The program told earlier observations (``y`` as the evaluator reports them; not
  finite: failed), in chunks of at most ``chunk`` (a searcher's state may be sized by its
  population)."""
  for i in range(0, len(u), chunk):
    yy = np.asarray(y[i:i + chunk], np.float64)
    ok = np.isfinite(yy)
    status = np.where(ok, 0, FAILED).astype(np.int32)
    ys = np.where(ok, env.sign * yy, np.inf).astype(np.float32)
    state = env.fns.tell(state, jnp.asarray(np.asarray(u[i:i + chunk], np.float32)),
                         jnp.asarray(ys), jnp.asarray(status))
  return state


def best_of(results, direction: str) -> tuple[int, float] | None:
  """``(index, objective)`` of a round's best complete trial, or None."""
  done = [(i, o) for i, (_, s, o, _) in enumerate(results) if s == "complete" and o is not None]
  if not done:
    return None
  return (max if direction == "maximize" else min)(done, key=lambda x: x[1])
