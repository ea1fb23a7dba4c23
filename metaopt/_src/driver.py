"""The search driver: runs a black-box program over rounds of trials, with a store.

``search`` asks the program for a population of points per round, hands them to an
evaluator (a task's population kernels, a pure JAX function, a Python callable; see
``evaluators.py``) through the one round loop (``loop.py``: epoch by epoch, pruning and PBT
between epochs, every epoch recorded, checkpoints), and tells the program the results.
Failed trials (non-finite loss or weights, an exception) stop and are recorded with their
reason while the rest of the population goes on.

Killed and restarted with the same arguments, ``search`` resumes: finished rounds are not
re-run, and an unfinished round continues from its newest checkpoint with the searcher state
saved at that epoch, so the resumed search produces the same trials as an uninterrupted one.

Run in several processes after :func:`metaopt.initialize_distributed`, ``search`` splits
every round's population between them (see ``distributed.py``); for several independent
processes sharing one study, see :func:`metaopt.worker`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
from tqdm.auto import tqdm

from metaopt._src import compile_cache, loop
from metaopt._src import distributed as dist
from metaopt._src.evaluators import COMPACTIONS, Evaluator, TaskEvaluator, as_evaluator
from metaopt._src.objectives import OBJECTIVES, check_objectives
from metaopt._src.provenance import code_version, hardware
from metaopt._src.store import Store
from metaopt._src.types import Result, Searcher
from metaopt.spaces import Space
from metaopt.tasks import Task

__all__ = ["OBJECTIVES", "code_version", "enable_compilation_cache", "hardware", "search"]


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


def default_checkpoint_dir(st: Store, study: str, fallback: str | None = None) -> str:
  """Beside a SQLite store file (``<file>.ckpt/<study>``), else a temporary directory."""
  db = st.engine.url.database if st.url.startswith("sqlite") else None
  base = (db + ".ckpt") if db and db != ":memory:" else (
      fallback or tempfile.mkdtemp(prefix="metaopt-"))
  return os.path.join(base, study)


def search(
    program: Searcher,
    task: Task | Evaluator,
    *,
    space: Space | None = None,
    n_trials: int,
    population: int,
    epochs: int = 1,
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
    objectives: list[tuple[str, str]] | None = None,
    mesh: tuple[int, int] | None = None,
    compute_dtype: str | None = None,
    complete_top_k: int = 0,
) -> Result:
  """Runs (or resumes) a search: ask -> evaluate -> tell, and returns its :class:`Result`.

  Args:
    program: the black-box search program (``init/ask/tell`` and optional ``observe``).
    task: what each trial runs: a :class:`metaopt.tasks.Task` (trained as population kernels) or
      any :class:`metaopt.Evaluator` (:class:`metaopt.JaxEvaluator`,
      :class:`metaopt.CallableEvaluator`, ...). Its ``space`` is searched unless ``space``
      is given.
    n_trials: total trials; rounds of ``population`` trials (the last may be smaller).
    population: trials evaluated together per round.
    epochs: epochs (chunks) each trial trains at most; the program's observer (pruning,
      PBT) acts between epochs.
    batch_size: minibatch size (tasks only).
    seed: root seed; searcher keys, trial seeds and data order all derive from it.
    store: a :class:`Store` or SQLAlchemy URL; default an in-memory SQLite store.
    study: study name in the store. An existing study of that name is resumed.
    checkpoint_dir: where round checkpoints go; default beside a SQLite store file.
    config: JSON-able settings recorded with the study (the CLI stores its config here).
    shared_batches: one minibatch order per epoch for the whole population (tasks only).
    progress: show a progress bar.
    on_epoch: ``(round, epoch, per-trial metrics)`` callback after each epoch.
    checkpoint_every_s: seconds between checkpoints within a round (0: every epoch); the
      last epoch of a round is always checkpointed. A resumed round restarts from its
      newest checkpoint and re-runs later epochs identically.
    devices: devices to shard the population axis over (tasks only; default: all local).
    constraint: ``params -> value``, feasible when ``value <= 0`` (e.g.
      :func:`metaopt.max_params`); infeasible trials are recorded ``infeasible`` and not
      evaluated, and the searcher is told so.
    target: stop after the round in which a trial reaches this objective (at least it when
      the direction is maximize, at most when minimize); a ``target`` event is recorded.
    compaction: when a task group's kernel shrinks to its surviving trials
      (:func:`evaluators.compaction_size`): ``"auto"``, ``"always"`` or ``"never"``.
    objectives: several objectives ``[(name, direction), ...]`` (see :data:`OBJECTIVES`):
      the searcher is told ``y[n, m]`` (each minimised: maximised ones negated), the store
      keeps every value and the :class:`Result` gives the Pareto front and its hypervolume.
      The evaluator's own objective still fills ``Trial.objective``.
    mesh: ``(pop, data)``: a 2-D device mesh over ``devices`` (tasks only): trials sharded
      over ``pop`` devices, each minibatch over ``data`` (gradients averaged by collectives),
      so one trial can span devices. ``pop * data`` must divide the device count and
      ``data`` every minibatch size. Default: the population over all ``devices``.
    compute_dtype: ``"bfloat16"`` runs the forward and backward pass in bfloat16 with
      float32 parameters and optimizer state (tasks only); default float32.
    complete_top_k: after the search, the pruned ones of the ``k`` best trials
      (:func:`complete_top`) are retrained unpruned to ``epochs`` as new complete trials
      (``Result.info["complete_top"]`` and ``complete_top`` events name the sources).
  """
  n_trials, population, epochs, batch_size = _check_settings(
      program, n_trials, population, epochs, batch_size, compaction, checkpoint_every_s)
  complete_top_k = _check_complete_top_k(complete_top_k, n_trials, objectives)
  ev, space, objectives = _prepare(
      task, program, space, epochs, objectives, constraint, min(population, n_trials),
      batch_size=batch_size, shared_batches=shared_batches, devices=devices,
      compaction=compaction, mesh=mesh, compute_dtype=compute_dtype)
  st = _open_store(store, study)
  record = dict(config or {}, n_trials=n_trials, population=population, epochs=epochs,
                batch_size=batch_size, seed=seed, **(
                    {"complete_top_k": complete_top_k} if complete_top_k else {}))
  key_init, key_rounds = loop.root_keys(seed)
  template = _searcher_init(program, key_init)
  rec = _open_study(st, study, record, config, ev, seed, objectives)
  state = _stored_state(template, rec)
  bar = progress_bar(study, progress, loop.round_count(n_trials, population) * epochs)
  env = loop.RoundEnv(ev, loop.searcher_fns(program, space), space, st, epochs,
                      loop.direction_sign(ev.direction), checkpoint_every_s, bar, on_epoch,
                      objectives)
  run = _Rounds(env, rec, key_rounds, n_trials, population, seed, constraint,
                checkpoint_dir or default_checkpoint_dir(st, study), complete_top_k)
  try:
    state = run.all(state, target)
  finally:
    bar.close()
  return Result(study, ev.direction, st.trials(rec.id), state, objectives=st.objectives(
      rec.id) or None, info={"complete_top": run.completed} if complete_top_k else {})


def _check_complete_top_k(k: Any, n_trials: int, objectives: Any) -> int:
  """``complete_top_k`` as an int, or one ValueError naming it (before anything compiles)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n_trials:
    raise ValueError(f"complete_top_k={k!r}: must be an integer from 0 (none) to n_trials "
                     f"({n_trials})")
  if k and objectives:
    raise ValueError(f"complete_top_k={k!r}: needs one objective to rank the trials by; "
                     "this search declares several (objectives=...)")
  return int(k)


def complete_top(trials: list, k: int, epochs: int, direction: str) -> list:
  """The trials :func:`search`'s ``complete_top_k`` trains to the full budget: of the ``k``
  best trials, those not yet complete. Best is ASHA's order: the most epochs trained first
  (a trial that passed more rungs beat more of the others), then the objective; failed and
  infeasible trials and those without an objective never count."""
  sign = loop.direction_sign(direction)
  ranked = sorted((t for t in trials if t.status in ("complete", "pruned")
                   and t.objective is not None and np.isfinite(t.objective)),
                  key=lambda t: (-(epochs if t.status == "complete" else len(t.metrics)),
                                 sign * t.objective, t.number))
  return [t for t in ranked[:k] if t.status != "complete"]


def _compile_ahead(ev: Evaluator, space: Space, constraint: Any, n: int) -> None:
  """Starts compiling the first round's kernel of ``n`` trials while the searcher's first
  ``ask`` compiles (:meth:`TaskEvaluator.precompile`), where that kernel is known ahead."""
  if constraint is None and not dist.is_multi() and isinstance(ev, TaskEvaluator):
    ev.precompile(space, n)


def _space_of(ev: Evaluator, space: Space | None, program: Searcher) -> Space:
  """The space searched: ``space`` if given, else the evaluator's; ``program`` is refused
  if it was built for another dimension (before anything compiles)."""
  space = ev.space if space is None else space
  if space is None:
    raise ValueError("space: the evaluator has no space; pass space=spaces.Space({...})")
  loop.check_dim(program, space)
  return space


def _check_settings(program: Any, n_trials: int, population: int, epochs: int,
                    batch_size: int, compaction: str,
                    checkpoint_every_s: float) -> tuple[int, int, int, int]:
  """The search's sizes as ints, or one ValueError naming the first bad setting."""
  if not isinstance(program, Searcher):
    raise ValueError(f"program: expected a metaopt.Searcher, got {type(program).__name__}")
  sizes = tuple(loop.positive_int(n, v) for n, v in (
      ("n_trials", n_trials), ("population", population), ("epochs", epochs),
      ("batch_size", batch_size)))
  if compaction not in COMPACTIONS:
    raise ValueError(f"compaction={compaction!r}: must be one of {', '.join(COMPACTIONS)}")
  if not isinstance(checkpoint_every_s, (int, float)) or checkpoint_every_s < 0:
    raise ValueError(f"checkpoint_every_s={checkpoint_every_s!r}: must be a number >= 0")
  return sizes


def _prepare(task: Task | Evaluator, program: Searcher, space: Space | None, epochs: int,
             objectives: Any, constraint: Any, first_round: int,
             **ev_kwargs: Any) -> tuple[Evaluator, Space, Any]:
  """``(evaluator, space, objectives)`` of a search, checked (before anything compiles),
  with the first round's kernel compiling ahead where it is known."""
  ev = as_evaluator(task, space=space, **ev_kwargs)
  space = _space_of(ev, space, program)
  ev.validate(epochs)
  objectives = check_objectives(objectives, program, space.dim, getattr(ev, "task", None))
  _compile_ahead(ev, space, constraint, first_round)
  return ev, space, objectives


def progress_bar(desc: str, show: bool, total: int | None = None) -> tqdm:
  """The epochs progress bar of a search or worker (``total`` epochs when known)."""
  return tqdm(total=total, disable=not show, desc=desc, unit="epoch", mininterval=1.0,
              leave=False)


def _stored_state(template: Any, rec: Any) -> Any:
  """The searcher's state stored in the study ``rec``, else ``template`` (a fresh one)."""
  return template if rec.searcher_state is None else \
      flax.serialization.from_bytes(template, rec.searcher_state)


def _searcher_init(program: Searcher, key: jax.Array):
  """The program's initial state: one compile, not one per eager op, and none when the same
  program was searched before in this process."""
  return compile_cache.cached(lambda: loop.searcher_jit(program.init), "searcher-init",
                              program.init)(key)


def _open_store(store: Store | str | None, study: str) -> Store:
  st = store if isinstance(store, Store) else Store(store or "sqlite://")
  if dist.is_multi():  # process 0 writes and reads; the others get what it read
    if st.url in ("sqlite://", "sqlite:///:memory:"):
      raise ValueError("store: a multi-host search needs a store every process can reach "
                       "(a SQLite file on a shared disk, or PostgreSQL)")
    st = dist.HostStore(st)
  return st


def _open_study(st: Store, study: str, record: dict, config, ev: Evaluator, seed: int,
                objectives: list[tuple[str, str]] | None = None):
  """Loads (to resume) or creates the study (declaring its ``objectives``); multi-host,
  process 0 alone opens it and hands every process its record."""
  return dist.from_leader(f"metaopt-open-{study}", lambda: _open_study_here(
      st, study, record, config, ev, seed, objectives))


def _open_study_here(st: Store, study: str, record: dict, config, ev: Evaluator, seed: int,
                     objectives: list[tuple[str, str]] | None):
  if study in st.study_names():
    rec = st.load_study(study)
    if rec.state_phase == "worker":
      raise ValueError(f"study {study!r} is run by workers; continue it with "
                       "metaopt.worker(...) / `run.py run --worker`")
    # the device mesh is where the study runs, not what it computes: it may change
    changed = loop.config_changes(rec.config, record, ignore=("store", "mesh"))
    if config is not None and changed:
      raise ValueError(f"study {study!r} exists with a different config (fields {changed}); "
                       "resume it with the same config or pick a new study name "
                       "(e.g. --config.name=...)")
    if _rounds_done(rec) < loop.round_count(record["n_trials"], record["population"]):
      # (a finished study is only read: nothing is written)
      st.log_event(rec.id, "resume", f"resumed at round {rec.state_round} ({rec.state_phase})")
  else:
    rec = st.create_study(study, direction=ev.direction, config=record, seed=seed,
                          code_version=code_version(), data_version=ev.data_version,
                          hardware=hardware())
    if objectives:
      st.set_objectives(rec.id, objectives)
  if objectives and st.objectives(rec.id) not in ([], objectives):
    raise ValueError(f"study {study!r} exists with objectives {st.objectives(rec.id)}; "
                     f"got {objectives}")
  return rec


class _Rounds:
  """The rounds of one ``search``: ask (or reload an asked round), run, tell, record."""

  def __init__(self, env: loop.RoundEnv, rec, key_rounds, n_trials: int, population: int,
               seed: int, constraint, checkpoint_dir: str, complete_top_k: int = 0):
    self.env, self.rec, self.key_rounds = env, rec, key_rounds
    self.n_trials, self.population, self.seed = n_trials, population, seed
    self.constraint, self.checkpoint_dir = constraint, checkpoint_dir
    self.n_rounds = loop.round_count(n_trials, population)
    self.complete_top_k = complete_top_k
    self.completed: list[dict[str, Any]] = []  # {"source": number, "number": number}

  def all(self, state, target: float | None):
    env, st = self.env, self.env.store
    rnd = done = _rounds_done(self.rec)
    env.bar.update(min(rnd, self.n_rounds) * env.epochs)
    if target is not None and rnd > 0 and dist.from_leader("metaopt-resumed-target", lambda: (
        _reached([(t.number, t.status, t.objective, None) for t in st.trials(self.rec.id)],
                 target, env.evaluator.direction))):
      rnd = self.n_rounds  # a resumed study that had already reached its target
    while rnd < self.n_rounds:
      state, results = self.one(state, rnd)
      rnd += 1
      if target is not None and _reached(results, target, env.evaluator.direction):
        st.log_event(self.rec.id, "target", f"objective reached {target:g} in round {rnd - 1}")
        break
    if self.complete_top_k:
      self.complete(state, max(done, rnd, self.n_rounds))
    return state

  def complete(self, state, first: int) -> None:
    """``complete_top_k``: rounds ``n_rounds, n_rounds + 1, ...`` train the best trials of
    the search rounds that are not complete to the full epochs, without the program's
    observer (no pruning, no PBT) and without telling the program; ``first``: the first of
    these rounds not yet finished (a resumed study skips the finished ones)."""
    env, st, rec = self.env, self.env.store, self.rec
    src = dist.from_leader("metaopt-complete-top", lambda: [
        (t.number, t.seed, t.u) for t in complete_top(
            [t for t in st.trials(rec.id) if t.round < self.n_rounds], self.complete_top_k,
            env.epochs, env.evaluator.direction)])
    base = self.n_rounds * self.population
    self.completed = [{"source": num, "number": base + i} for i, (num, _, _) in enumerate(src)]
    if src and first == self.n_rounds and not (rec.state_round == first
                                               and rec.state_phase == "asked"):
      st.log_event(rec.id, "complete_top", json.dumps(
          {"k": self.complete_top_k, "epochs": env.epochs, "trials": self.completed}))
    env_c = dataclasses.replace(env, fns=dataclasses.replace(env.fns, observe=None))
    for j in range(0, len(src), self.population):
      rnd = self.n_rounds + j // self.population
      if rnd >= first:  # an unasked round: the program is neither asked nor told
        part = src[j:j + self.population]
        loop.one_round(env_c, state, self.plan(
            rnd, loop.round_numbers(rnd, base + len(src), self.population),
            seeds=[x[1] for x in part],
            points=np.asarray([x[2] for x in part], np.float32)))

  def plan(self, rnd: int, numbers: list[int], **kw: Any) -> loop.RoundPlan:
    """Round ``rnd`` of trials ``numbers`` (``kw``: further :class:`loop.RoundPlan`
    fields), reloaded as a killed run had asked it (:meth:`asked_before`)."""
    key_r = loop.fold_in(self.key_rounds, rnd)
    proc = f"process_{jax.process_index()}" if dist.is_multi() else ""
    return loop.RoundPlan(self.rec.id, rnd, numbers, loop.fold_in(key_r, 0), key_r,
                          loop.round_dir(self.checkpoint_dir, rnd, proc),
                          self.seed, asked=self.asked_before(rnd), **kw)

  def asked_before(self, rnd: int) -> tuple[list[int], np.ndarray] | None:
    """``(ids, u)`` of round ``rnd`` when a killed run had asked and stored it (process 0
    reads it for every process), else None: the round is asked now."""
    rec = self.rec
    if rec.state_phase == "asked" and rec.state_round == rnd:
      return dist.from_leader(f"metaopt-asked-{rnd}", lambda: _asked(self.env.store, rec.id,
                                                                      rnd))
    return None

  def one(self, state, rnd: int):
    """Asks (or reloads), runs and tells round ``rnd``; returns the state and results."""
    state, results, _ = loop.one_round(self.env, state, self.plan(
        rnd, loop.round_numbers(rnd, self.n_trials, self.population),
        constraint=self.constraint, calls_left=self.n_rounds - rnd))
    # what the store now says (not read back: in a multi-host search process 0 may already
    # have asked the next round when another process would read it)
    self.rec = dataclasses.replace(self.rec, state_round=rnd, state_phase="told")
    return state, results


def _rounds_done(rec) -> int:
  """Rounds of the study ``rec`` finished (told); a resumed search goes on from there."""
  return max(rec.state_round + (1 if rec.state_phase == "told" else 0), 0)


def _asked(st: Store, study_id: int, rnd: int) -> tuple[list[int], np.ndarray]:
  """``(ids, u)`` of round ``rnd``'s stored trials (a round asked before a restart)."""
  rows = st.round_trials(study_id, rnd)
  return [r["id"] for r in rows], np.asarray([json.loads(r["u"]) for r in rows], np.float32)


def _reached(results: list[tuple], target: float, direction: str) -> bool:
  vals = [obj for _, status, obj, _ in results if status == "complete" and obj is not None]
  if direction == "maximize":
    return any(v >= target for v in vals)
  return any(v <= target for v in vals)
