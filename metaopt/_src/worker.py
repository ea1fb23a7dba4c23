"""Several worker processes sharing one study: rounds leased from the store, with heartbeats.

``worker`` runs the same rounds as :func:`metaopt.search` (same points, seeds and minibatch
orders for round ``r``), but any number of processes, on one host or many, may run it on the
same study at once. Each round is a lease in the store (:meth:`Store.claim_round`): a worker
atomically asks the searcher for the next round, trains it, and tells the searcher in one
serialized transaction. While training, a background thread refreshes the lease's heartbeat;
a round whose heartbeat is older than ``stale_after_s`` (its worker was killed or lost) is
taken over by another worker, which resumes it from the round's newest checkpoint, or, after
``max_attempts``, records its unfinished trials as failed.

Searchers are told in the order rounds finish (asynchronous batch search): a round asked
while others are in flight does not see their results. Searchers whose ``ask`` does not
depend on results (random, Sobol, Halton, grid) produce exactly the trials of a
single-process ``search``, however many workers run. State updated by ``observe`` during a
round (e.g. a median pruner's history) is carried into the study's state when the round is
told; with concurrent rounds the last told round's copy wins.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from metaopt._src.checkpoint import Checkpointer
from metaopt._src.driver import (
    _engine,
    _group,
    _json_round_trip,
    _positive_int,
    _Round,
    _searcher_fns,
    _ser,
    _train_round,
    code_version,
    hardware,
    trial_seed,
)
from metaopt._src.store import Claim, Store
from metaopt._src.types import COMPLETE, FAILED, STATUS_NAMES, Result, Searcher
from spaces import Space
from tasks import Task


class _LeaseLost(Exception):
  """Another worker took this round over (this one was presumed dead)."""


def _merge(told: Any, local: Any) -> Any:
  """The study's current state ``told`` with the observer-owned parts (pruner, monitor) of
  this round's ``local`` state: ``{"search": ..., <observer>: ...}`` dicts made by
  ``with_pruning`` / ``with_monitor``, at any depth."""
  if isinstance(told, dict) and isinstance(local, dict) and "search" in told \
      and set(told) == set(local):
    return {**local, "search": _merge(told["search"], local["search"])}
  return told


def _open_study(st: Store, study: str, record: dict[str, Any], config: Any, task: Task,
                seed: int):
  """Creates the study, or loads it (several workers may race to create it)."""
  for _ in range(3):
    if study in st.study_names():
      rec = st.load_study(study)
      if rec.state_phase in ("asked", "told"):
        raise ValueError(f"study {study!r} was run by `search` (not by workers); resume it "
                         "without --worker, or pick a new study name")
      now = _json_round_trip(record)
      changed = sorted(k for k in set(rec.config) | set(now)
                       if k not in ("store", "worker") and rec.config.get(k) != now.get(k))
      if config is not None and changed:
        raise ValueError(f"study {study!r} exists with a different config (fields {changed}); "
                         "run every worker with the same config")
      return rec
    try:
      return st.create_study(study, direction=task.direction, config=record, seed=seed,
                             code_version=code_version(), data_version=task.data.data_version,
                             hardware=hardware())
    except Exception:  # noqa: BLE001 - another worker created it first: load it
      time.sleep(0.05)
  return st.load_study(study)


def worker(
    program: Searcher,
    task: Task,
    *,
    space: Space | None = None,
    n_trials: int,
    population: int,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    store: Store | str,
    study: str = "study",
    checkpoint_dir: str | None = None,
    config: Mapping[str, Any] | None = None,
    shared_batches: bool = True,
    progress: bool = False,
    checkpoint_every_s: float = 10.0,
    devices: list[jax.Device] | None = None,
    constraint: Callable[[dict[str, Any]], float] | None = None,
    worker_id: str | None = None,
    stale_after_s: float = 60.0,
    heartbeat_s: float | None = None,
    max_attempts: int = 3,
    poll_s: float = 0.5,
    on_epoch: Callable[[int, int, list[dict[str, Any]]], None] | None = None,
) -> Result:
  """Works on a shared study until all its rounds are done; returns the study's Result.

  Takes the arguments of :func:`metaopt.search` (every worker of a study must pass the same)
  plus:

  Args:
    store: a :class:`Store` or SQLAlchemy URL every worker can reach (a SQLite file for
      processes on one host, PostgreSQL for several hosts).
    worker_id: this worker's name in the store (default ``host:pid:random``).
    stale_after_s: a round whose heartbeat is older than this is taken over.
    heartbeat_s: seconds between heartbeats (default ``stale_after_s / 4``).
    max_attempts: leases a round may have; after that its unfinished trials fail.
    poll_s: seconds between looks at the store while other workers hold every round.
  """
  space = task.space if space is None else space
  n_trials = _positive_int("n_trials", n_trials)
  population = _positive_int("population", population)
  epochs = _positive_int("epochs", epochs)
  batch_size = _positive_int("batch_size", batch_size)
  max_attempts = _positive_int("max_attempts", max_attempts)
  for name, v in (("stale_after_s", stale_after_s), ("poll_s", poll_s)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
      raise ValueError(f"{name}={v!r}: must be a number > 0")
  if batch_size > len(task.data.train):
    raise ValueError(f"batch_size={batch_size}: must be <= {len(task.data.train)} "
                     f"(size of {task.data.name}'s train split)")
  if not isinstance(program, Searcher):
    raise ValueError(f"program: expected a metaopt.Searcher, got {type(program).__name__}")
  if store is None:
    raise ValueError("store: workers need a shared store URL (e.g. sqlite:///runs/s.db)")
  st = store if isinstance(store, Store) else Store(store)
  if st.url in ("sqlite://", "sqlite:///:memory:"):
    raise ValueError("store: an in-memory SQLite store cannot be shared by workers")
  wid = worker_id or f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
  heartbeat_s = heartbeat_s or stale_after_s / 4
  sign = -1.0 if task.direction == "maximize" else 1.0
  if checkpoint_dir is None:
    db = st.engine.url.database if st.url.startswith("sqlite") else None
    base = (db + ".ckpt") if db and db != ":memory:" else os.path.join(
        tempfile.gettempdir(), "metaopt-ckpt")
    checkpoint_dir = os.path.join(base, study)

  root = jax.random.key(seed)
  key_init, key_rounds = jax.random.split(root)
  template = program.init(key_init)
  record = dict(config or {}, n_trials=n_trials, population=population, epochs=epochs,
                batch_size=batch_size, seed=seed)
  rec = _open_study(st, study, record, config, task, seed)

  ask, tell, observe, decode = _searcher_fns(program, space)
  multiple, data, kernel = _engine(task, devices, batch_size, shared_batches)
  flops_cache: dict[str, Any] = {}

  def load(b: bytes | None):
    return template if b is None else flax.serialization.from_bytes(template, b)

  n_rounds = -(-n_trials // population)
  sizes = {min(population, n_trials - r * population) for r in range(n_rounds)}
  for n in sizes:  # compile ask and tell outside the store's serialized transactions
    ask(template, jax.random.key(0), n)  # the startup ask, if the program has one
    s, u = ask(template, jax.random.key(0), n, model=True)
    tell(s, u, jnp.zeros(n), jnp.zeros(n, jnp.int32))

  def make_round(state_bytes: bytes | None, rnd: int):
    n = min(population, n_trials - rnd * population)
    key_r = jax.random.fold_in(key_rounds, rnd)
    state, u = ask(load(state_bytes), jax.random.fold_in(key_r, 0), n)
    u = np.asarray(u, np.float32)
    if u.shape != (n, space.dim):
      raise ValueError(f"program.ask returned points of shape {u.shape}; the space needs "
                       f"(n, {space.dim}) for {space.names}")
    params = space.to_python_batch(jax.device_get(decode(jnp.asarray(u))))
    numbers = [rnd * population + i for i in range(n)]
    return _ser(state), [{"number": num, "params": p, "u": uu, "seed": trial_seed(seed, num)}
                         for num, p, uu in zip(numbers, params, u.tolist(), strict=True)]

  def ckpt_dir(rnd: int) -> str:
    return os.path.join(checkpoint_dir, f"round_{rnd:05d}")

  bar = tqdm(disable=not progress, desc=f"{study} [{wid}]", unit="epoch", mininterval=1.0,
             leave=False)
  try:
    while True:
      claim = st.claim_round(rec.id, wid, n_rounds, make_round, stale_after_s=stale_after_s,
                             max_attempts=max_attempts, checkpoint_path=ckpt_dir)
      if claim == "done":
        break
      if claim == "wait":
        time.sleep(poll_s)
        continue
      assert isinstance(claim, Claim)
      _work_round(claim, st, rec.id, wid, load, tell, observe, decode, kernel, data, task,
                  space, key_rounds, epochs, sign, seed, population, bar, on_epoch,
                  checkpoint_every_s, multiple, flops_cache, batch_size, constraint,
                  heartbeat_s, ckpt_dir(claim.round))
  finally:
    bar.close()
  final = st.load_study(study)
  return Result(study, task.direction, st.trials(rec.id), load(final.searcher_state))


def _work_round(claim: Claim, st: Store, study_id: int, wid: str, load, tell, observe,
                decode, kernel, data, task: Task, space: Space, key_rounds, epochs: int,
                sign: float, seed: int, population: int, bar, on_epoch, checkpoint_every_s,
                multiple: int, flops_cache: dict, batch_size: int, constraint,
                heartbeat_s: float, directory: str) -> None:
  """Trains (or gives up) one leased round and tells the searcher; a lost lease drops it."""
  t0 = time.time()
  rnd = claim.round
  rows = claim.trials
  u = np.asarray([_json_loads(x["u"]) for x in rows], np.float32)
  ids = [x["id"] for x in rows]
  state = load(claim.searcher_state)
  if claim.kind == "give_up":
    results = []
    for x in rows:
      if x["status"] == "running":
        results.append((x["id"], "failed", None,
                        f"worker lost {claim.attempts - 1} times (round {rnd})"))
      else:
        results.append((x["id"], x["status"], x["objective"], x["failure_reason"]))
    _finish(st, study_id, rnd, wid, results, u, sign, state, claim.searcher_state, load, tell,
            t0, status="failed")
    return
  h = jax.device_get(decode(jnp.asarray(u)))
  params = space.to_python_batch(h)
  violation = [None if constraint is None else float(constraint(p)) for p in params]
  feasible = np.asarray([v is None or v <= 0 for v in violation])
  groups, structures = _group(space, params, task, multiple, feasible)
  r = _Round(rnd, ids, u, h, params, groups, structures, feasible, study_id=study_id,
             resumed=claim.kind == "retry")
  if claim.kind == "new":
    st.record_epoch([], 0, [], [
        (r.ids[i], "infeasible", f"constraint violated by {violation[i]:g}", None)
        for i in np.flatnonzero(~feasible)])
  lost = threading.Event()
  stop = threading.Event()

  def beat():
    while not stop.wait(heartbeat_s):
      try:
        if not st.heartbeat(study_id, rnd, wid):
          lost.set()
          return
      except Exception:  # noqa: BLE001 - a missed beat is retried; staleness decides
        pass

  def epoch_done(number, epoch, metrics):
    if lost.is_set():
      raise _LeaseLost(f"round {number} was taken over")
    if on_epoch is not None:
      on_epoch(number, epoch, metrics)

  thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{rnd}")
  thread.start()
  ckpt = Checkpointer(directory)
  try:
    key_r = jax.random.fold_in(key_rounds, rnd)
    state = _train_round(r, state, task, kernel, data, ckpt, st, key_r, epochs, sign, observe,
                         seed, population, bar, epoch_done, space, checkpoint_every_s,
                         multiple, flops_cache, batch_size)
  except _LeaseLost:
    return
  finally:
    stop.set()
    thread.join()
    ckpt.close()
  rows = st.round_trials(study_id, rnd)
  results = [(x["id"], "complete" if x["status"] == "running" else x["status"], x["objective"],
              x["failure_reason"]) for x in rows]
  _finish(st, study_id, rnd, wid, results, r.u, sign, state, claim.searcher_state, load, tell,
          t0)


def _finish(st: Store, study_id: int, rnd: int, wid: str, results, u: np.ndarray,
            sign: float, local, asked: bytes | None, load, tell, t0: float,
            status: str = "done") -> bool:
  codes = np.asarray([STATUS_NAMES.index(s) if s != "running" else COMPLETE
                      for _, s, _, _ in results], np.int32)
  codes = np.where(np.asarray([s == "failed" for _, s, _, _ in results]), FAILED, codes)
  y = np.asarray([sign * o if o is not None else np.inf for _, _, o, _ in results], np.float32)

  def told(current: bytes | None) -> bytes:
    # nobody told since this round's ask: exactly the sequential search's state
    merged = local if current == asked else _merge(load(current), local)
    return _ser(tell(merged, jnp.asarray(u), jnp.asarray(y), jnp.asarray(codes)))

  return st.finish_round(study_id, rnd, wid, results, told, duration_s=time.time() - t0,
                         status=status)


def _json_loads(x: str | None) -> Any:
  return json.loads(x or "null")
