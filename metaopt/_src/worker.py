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

from metaopt._src import loop
from metaopt._src.checkpoint import Checkpointer
from metaopt._src.driver import default_checkpoint_dir, progress_bar
from metaopt._src.evaluators import Evaluator, as_evaluator
from metaopt._src.provenance import code_version, hardware
from metaopt._src.store import Claim, Store
from metaopt._src.types import Result, Searcher
from metaopt.spaces import Space
from metaopt.tasks import Task


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


def _open_study(st: Store, study: str, record: dict[str, Any], config: Any, ev: Evaluator,
                seed: int):
  """Creates the study, or loads it (several workers may race to create it)."""
  for _ in range(3):
    if study in st.study_names():
      rec = st.load_study(study)
      if rec.state_phase in ("asked", "told"):
        raise ValueError(f"study {study!r} was run by `search` (not by workers); resume it "
                         "without --worker, or pick a new study name")
      changed = loop.config_changes(rec.config, record, ("store", "worker", "mesh"))
      if config is not None and changed:
        raise ValueError(f"study {study!r} exists with a different config (fields {changed}); "
                         "run every worker with the same config")
      return rec
    try:
      return st.create_study(study, direction=ev.direction, config=record, seed=seed,
                             code_version=code_version(), data_version=ev.data_version,
                             hardware=hardware())
    except Exception:  # noqa: BLE001 - another worker created it first: load it
      time.sleep(0.05)
  return st.load_study(study)


def worker(
    program: Searcher,
    task: Task | Evaluator,
    *,
    space: Space | None = None,
    n_trials: int,
    population: int,
    epochs: int = 1,
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
    mesh: tuple[int, int] | None = None,
    compute_dtype: str | None = None,
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
  n_trials = loop.positive_int("n_trials", n_trials)
  population = loop.positive_int("population", population)
  epochs = loop.positive_int("epochs", epochs)
  batch_size = loop.positive_int("batch_size", batch_size)
  max_attempts = loop.positive_int("max_attempts", max_attempts)
  for name, v in (("stale_after_s", stale_after_s), ("poll_s", poll_s)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
      raise ValueError(f"{name}={v!r}: must be a number > 0")
  ev = as_evaluator(task, batch_size=batch_size, shared_batches=shared_batches,
                    devices=devices, space=space, mesh=mesh, compute_dtype=compute_dtype)
  space = ev.space if space is None else space
  if space is None:
    raise ValueError("space: the evaluator has no space; pass space=spaces.Space({...})")
  ev.validate(epochs)
  if not isinstance(program, Searcher):
    raise ValueError(f"program: expected a metaopt.Searcher, got {type(program).__name__}")
  loop.check_dim(program, space)
  if store is None:
    raise ValueError("store: workers need a shared store URL (e.g. sqlite:///runs/s.db)")
  st = store if isinstance(store, Store) else Store(store)
  if st.url in ("sqlite://", "sqlite:///:memory:"):
    raise ValueError("store: an in-memory SQLite store cannot be shared by workers")
  w = _Worker(program, ev, space, st, study, epochs, n_trials, population, seed, constraint,
              checkpoint_dir or default_checkpoint_dir(st, study, os.path.join(
                  tempfile.gettempdir(), "metaopt-ckpt")),
              worker_id or f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
              heartbeat_s or stale_after_s / 4, checkpoint_every_s, on_epoch, progress)
  w.rec = _open_study(st, study, dict(config or {}, n_trials=n_trials, population=population,
                                      epochs=epochs, batch_size=batch_size, seed=seed),
                      config, ev, seed)
  w.run(stale_after_s, max_attempts, poll_s)
  final = st.load_study(study)
  return Result(study, ev.direction, st.trials(w.rec.id), w.load(final.searcher_state))


class _Worker:
  """One worker's view of a shared study: leases rounds and runs them through the loop."""

  def __init__(self, program: Searcher, ev: Evaluator, space: Space, st: Store, study: str,
               epochs: int, n_trials: int, population: int, seed: int, constraint,
               checkpoint_dir: str, wid: str, heartbeat_s: float, checkpoint_every_s: float,
               on_epoch, progress: bool):
    key_init, self.key_rounds = loop.root_keys(seed)
    self.template = program.init(key_init)
    self.sign = loop.direction_sign(ev.direction)
    self.bar = progress_bar(f"{study} [{wid}]", progress)
    self.env = loop.RoundEnv(ev, loop.searcher_fns(program, space), space, st, epochs,
                             self.sign, checkpoint_every_s, self.bar, None)
    self.on_epoch, self.study, self.wid, self.heartbeat_s = on_epoch, study, wid, heartbeat_s
    self.n_trials, self.population, self.seed = n_trials, population, seed
    self.constraint, self.checkpoint_dir = constraint, checkpoint_dir
    self.n_rounds = loop.round_count(n_trials, population)
    self.rec = None

  def load(self, b: bytes | None):
    return self.template if b is None else flax.serialization.from_bytes(self.template, b)

  def ckpt_dir(self, rnd: int) -> str:
    return loop.round_dir(self.checkpoint_dir, rnd)

  def numbers(self, rnd: int) -> list[int]:
    return loop.round_numbers(rnd, self.n_trials, self.population)

  def run(self, stale_after_s: float, max_attempts: int, poll_s: float) -> None:
    fns, st = self.env.fns, self.env.store
    for n in {len(self.numbers(r)) for r in range(self.n_rounds)}:
      # compile ask and tell outside the store's serialized transactions
      fns.ask(self.template, jax.random.key(0), n)  # the startup ask, if the program has one
      s, u = fns.ask(self.template, jax.random.key(0), n, model=True)
      fns.tell(s, u, jnp.zeros(n), jnp.zeros(n, jnp.int32),
               *([jnp.zeros(n, jnp.int32)] if fns.tell_epochs else []))
    try:
      while True:
        claim = st.claim_round(self.rec.id, self.wid, self.n_rounds, self.make_round,
                               stale_after_s=stale_after_s, max_attempts=max_attempts,
                               checkpoint_path=self.ckpt_dir)
        if claim == "done":
          break
        if claim == "wait":
          time.sleep(poll_s)
          continue
        assert isinstance(claim, Claim)
        self.work(claim)
    finally:
      self.bar.close()

  def make_round(self, state_bytes: bytes | None, rnd: int):
    """Asks round ``rnd`` (inside the store's lease transaction)."""
    env, numbers = self.env, self.numbers(rnd)
    key_r = loop.fold_in(self.key_rounds, rnd)
    state, u = loop.ask_points(env.fns, self.load(state_bytes), loop.fold_in(key_r, 0),
                               len(numbers), env.space)
    batch, _ = loop.make_batch(env.fns, env.space, rnd, numbers, u, seed=self.seed,
                               epochs=env.epochs)
    return loop.ser(state), loop.new_trials(batch)

  def work(self, claim: Claim) -> None:
    """Trains (or gives up) one leased round and tells the searcher; a lost lease drops it."""
    t0, rnd, rows, env = time.time(), claim.round, claim.trials, self.env
    u = np.asarray([json.loads(x["u"] or "null") for x in rows], np.float32)
    if claim.kind == "give_up":
      results = [(x["id"], "failed", None, f"worker lost {claim.attempts - 1} times "
                  f"(round {rnd})") if x["status"] == "running" else
                 (x["id"], x["status"], x["objective"], x["failure_reason"]) for x in rows]
      self.finish(rnd, results, u, self.load(claim.searcher_state), claim.searcher_state, t0,
                  status="failed")
      return
    batch, violation = loop.make_batch(env.fns, env.space, rnd, [x["number"] for x in rows],
                                       u, seed=self.seed, epochs=env.epochs,
                                       constraint=self.constraint, ids=[x["id"] for x in rows])
    if claim.kind == "new":
      loop.record_infeasible(env.store, batch, violation)
    state = self.train(batch, self.load(claim.searcher_state), claim.kind == "retry")
    if state is None:
      return
    results, _, epochs = loop.round_outcomes(env, self.rec.id, rnd)
    self.finish(rnd, results, batch.u, state, claim.searcher_state, t0, epochs=epochs)

  def train(self, batch, state, resumed: bool = False):
    """Runs the round with a heartbeat thread; None if the lease was lost meanwhile."""
    st, rnd, lost, stop = self.env.store, batch.number, threading.Event(), threading.Event()

    def beat():
      while not stop.wait(self.heartbeat_s):
        try:
          if not st.heartbeat(self.rec.id, rnd, self.wid):
            lost.set()
            return
        except Exception:  # noqa: BLE001 - a missed beat is retried; staleness decides
          pass

    def epoch_done(number, epoch, metrics):
      if lost.is_set():
        raise _LeaseLost(f"round {number} was taken over")
      if self.on_epoch is not None:
        self.on_epoch(number, epoch, metrics)

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{rnd}")
    thread.start()
    ckpt = Checkpointer(self.ckpt_dir(rnd))
    env = loop.RoundEnv(**{**vars(self.env), "on_epoch": epoch_done})
    try:
      return loop.run_round(env, batch, state, ckpt, loop.fold_in(self.key_rounds, rnd),
                            self.rec.id, resumed)
    except _LeaseLost:
      return None
    finally:
      stop.set()
      thread.join()
      ckpt.close()

  def finish(self, rnd: int, results, u: np.ndarray, local, asked: bytes | None, t0: float,
             status: str = "done", epochs: list[int] | None = None) -> bool:
    def told(current: bytes | None) -> bytes:
      # nobody told since this round's ask: exactly the sequential search's state
      merged = local if current == asked else _merge(self.load(current), local)
      return loop.ser(loop.tell_round(self.env, merged, u, results, epochs=epochs))

    return self.env.store.finish_round(self.rec.id, rnd, self.wid, results, told,
                                       duration_s=time.time() - t0, status=status)
