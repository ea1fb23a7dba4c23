"""The Study API: ``ask`` / ``tell`` / ``optimize`` over any Python objective, with a store.

The vocabulary of Optuna (``create_study``, ``ask``, ``tell``, ``optimize``, ``enqueue``,
``best_trial``), Vizier and Ray Tune (a named ``metric`` in a dict of results) over a
:class:`metaopt.spaces.Space` and any :class:`metaopt.Searcher`::

    study = metaopt.create_study(space, "tpe", direction="maximize", seed=0)
    study.optimize(lambda p: train_and_score(**p), n_trials=50)
    print(study.best_trial.params, study.best_value)

Each ``ask(n)`` is one batch (a *round* in the store): the searcher's ``ask`` proposes ``n``
points, the first ones replaced by enqueued parameters, and the searcher is told the batch
once every trial of it has been told (searchers that update per generation, such as CMA-ES,
want ``n`` = their population). A study runs on the search loop (``loop.py``): ``ask`` is
the loop's ask half of a round (``loop.ask_round``), the last ``tell`` of a batch its tell
half (``loop.close_round``), and ``optimize`` runs every batch as one ``loop.one_round``
with the objective as a :class:`metaopt.CallableEvaluator`. The searcher's ``ask`` and
``tell`` are jitted once per batch size and searcher (a searcher given by name is built
once per process and settings, so a second study with the same settings compiles nothing);
before its ``n_startup`` observations TPE's cheap ``startup_ask`` stands in for ``ask``.
TPE by name starts with a history of 128 rows and doubles it (one more compile) when it
fills, up to 4096.

Parameter values are plain Python: values a user typed come back as typed, and decoded
floats as the shortest decimal of their float32 (``0.9``, not ``0.8999999761581421``).

With ``store`` (any SQLAlchemy URL) every ask and tell is written through, in the schema
``metaopt.search`` and ``run.py`` use (``run.py report`` reads a Python study), and
``create_study`` with the name of a stored study continues it, searcher state included.
Without one, the study lives in an in-memory SQLite store of its own.

Warm start (``warm_start=``): complete trials of earlier studies (a :class:`Study`, a
``(store_url, study_name)`` pair, or an ``optuna.Study``) whose parameters fit this space are
told to the searcher as prior observations before the first ask, and the best
``warm_start_top_k`` of them are enqueued so they are evaluated first; the sources are
recorded in the study's config (``warm_start``) and as a ``warm_start`` event.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import loop, registry
from metaopt._src import population as pop
from metaopt._src.evaluators import SPACE_HINT, CallableEvaluator, TrialPruned
from metaopt._src.store import Store
from metaopt._src.types import COMPLETE, PRUNED, Searcher, Trial
from metaopt.spaces import Choice, Fixed, Float, Int, Space, from_spec, to_spec

__all__ = ["Study", "TrialPruned", "create_study", "from_optuna", "load_study",
           "space_from_optuna"]

DIRECTIONS = ("minimize", "maximize")
STATES = ("complete", "failed", "pruned")
_TPE_CAPACITY, _TPE_MAX_CAPACITY = 128, 4096

# The loop's compiled searcher functions per (searcher, space) object, kept alive here so
# ids stay unique: a second study with the same settings compiles nothing.
_FNS: dict[tuple[int, int], tuple[Searcher, Space, loop.SearcherFns]] = {}
_BY_NAME: dict[tuple, Searcher] = {}
_fold_in = pop.fast_jit(jax.random.fold_in)  # one dispatch, not several eager ops per ask


def _searcher_fns(program: Searcher, space: Space) -> loop.SearcherFns:
  key = (id(program), id(space))
  if key not in _FNS:
    _FNS[key] = (program, space, loop.searcher_fns(program, space))
  return _FNS[key][2]


def _named_searcher(name: str, dim: int, options: Mapping[str, Any]) -> Searcher:
  key = (name, dim, json.dumps(dict(options), sort_keys=True, default=repr))
  if key not in _BY_NAME:
    _BY_NAME[key] = registry.make_searcher(name, dim, **options)
  return _BY_NAME[key]


def _number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_params(space: Space, params: Any, what: str = "params") -> dict[str, Any]:
  """User-given values, checked against ``space`` (known names, inside the bounds or among
  the choices), as plain Python values; one ``ValueError`` naming the parameter otherwise."""
  if not isinstance(params, Mapping):
    raise ValueError(f"{what}: expected a dict {{name: value}}, got {type(params).__name__}")
  unknown = sorted(set(params) - set(space.params))
  if unknown:
    raise ValueError(f"{what}: unknown parameter(s) {unknown}; the space has "
                     f"{sorted(space.params)}")
  out = {}
  for n, v in params.items():
    p = space.params[n]
    if isinstance(p, Float):
      ok = _number(v) and math.isfinite(float(v)) and p.lo <= float(v) <= p.hi
      allowed, v = f"a number in [{p.lo}, {p.hi}]", float(v) if _number(v) else v
    elif isinstance(p, Int):
      ok = _number(v) and float(v).is_integer() and p.lo <= v <= p.hi
      allowed, v = f"an integer in [{p.lo}, {p.hi}]", int(v) if ok else v
    elif isinstance(p, Choice):
      ok = any(v == c and type(v) is type(c) for c in p.choices) or v in p.choices
      allowed = f"one of {list(p.choices)}"
    else:
      ok, allowed = v == p.value, f"the fixed value {p.value!r}"
    if not ok:
      raise ValueError(f"{what}: {n}={v!r} is outside the space; allowed: {allowed}")
    out[n] = v
  return out


def _make_program(searcher: Any, dim: int, options: Mapping[str, Any] | None
                  ) -> tuple[Searcher, str, dict[str, Any]]:
  """``(program, name, options)``: a registered searcher by name, or a given Searcher."""
  options = dict(options or {})
  if isinstance(searcher, Searcher):
    if options:
      raise ValueError("searcher_options: only for a searcher given by name")
    return searcher, "custom", {}
  if not isinstance(searcher, str) or searcher not in registry.SEARCHERS:
    raise ValueError(f"searcher={searcher!r} is unknown; allowed: a metaopt.Searcher or one "
                     f"of {', '.join(registry.SEARCHERS)}")
  full = dict(options)
  if searcher == "tpe" and "capacity" not in options:
    full["capacity"] = _TPE_CAPACITY
  return _named_searcher(searcher, dim, full), searcher, options


def _optuna_direction(obj: Any) -> str:
  dirs = [d.name.lower() for d in obj.directions]
  if len(dirs) != 1:
    raise ValueError(f"warm_start: Optuna study {obj.study_name!r} has {len(dirs)} objectives; "
                     "only single-objective studies can warm-start a metaopt study")
  return dirs[0]


def _source(src: Any) -> tuple[dict[str, Any], str, list[tuple[dict[str, Any], float]]]:
  """``(description, direction, [(params, value)])`` of one warm-start source's complete
  trials."""
  if isinstance(src, Study):
    pairs = [(t.params, t.objective) for t in src._trials
             if t.status == "complete" and t.objective is not None]
    return ({"study": src.study_name, "store": src.store_url}, src.direction, pairs)
  if type(src).__module__.startswith("optuna"):
    import optuna
    done = src.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return ({"optuna_study": src.study_name}, _optuna_direction(src),
            [(dict(t.params), float(t.value)) for t in done])
  if isinstance(src, Mapping) and set(src) == {"store", "study"}:
    url, name = src["store"], src["study"]
  elif isinstance(src, (tuple, list)) and len(src) == 2 and all(isinstance(x, str) for x in src):
    url, name = src
  else:
    raise ValueError(f"warm_start: {src!r} is not a source; allowed: a metaopt.Study, a "
                     "(store_url, study_name) pair, {'store': url, 'study': name}, or an "
                     "optuna.Study")
  st = Store(url)
  rec = st.load_study(name)
  pairs = [(t.params, t.objective) for t in st.trials(rec.id, with_metrics=False)
           if t.status == "complete" and t.objective is not None]
  return {"study": name, "store": url}, rec.direction, pairs


def _fit(space: Space, params: Mapping[str, Any]) -> dict[str, Any] | None:
  """A source trial's values restricted to ``space``, or None when one is outside it."""
  kept = {k: v for k, v in params.items() if k in space.params}
  try:
    return check_params(space, kept)
  except ValueError:
    return None


@dataclasses.dataclass
class _Prior:
  """Warm-start observations resolved before the study is created or written."""

  u: np.ndarray
  y: np.ndarray  # as the sources report them (not negated for maximize)
  best: list[dict[str, Any]]
  provenance: list[dict[str, Any]]


def _resolve_warm_start(space: Space, direction: str, sources: Any, top_k: int) -> _Prior | None:
  if sources is None:
    return None
  if isinstance(sources, (Study, Mapping)) or type(sources).__module__.startswith("optuna") or (
      isinstance(sources, tuple) and len(sources) == 2 and all(isinstance(x, str)
                                                              for x in sources)):
    sources = [sources]
  if not isinstance(sources, (list, tuple)):
    sources = [sources]  # _source says what it accepts
  rows, prov = [], []
  for src in sources:
    desc, src_dir, pairs = _source(src)
    if src_dir != direction:
      raise ValueError(f"warm_start: source {desc} is a {src_dir} study; this study is "
                       f"{direction}: their objectives cannot be compared")
    fitted = [(_fit(space, p), v) for p, v in pairs if math.isfinite(float(v))]
    used = [(p, float(v)) for p, v in fitted if p is not None]
    rows += used
    prov.append({**desc, "n_complete": len(pairs), "n_used": len(used)})
  if not rows:
    return _Prior(np.zeros((0, space.dim), np.float32), np.zeros(0, np.float32), [], prov)
  sign = loop.direction_sign(direction)
  u = np.asarray([loop.encode_values(space, p) for p, _ in rows], np.float32)
  y = np.asarray([v for _, v in rows], np.float64)
  best, seen = [], set()
  for i in np.argsort(np.asarray(sign * y, np.float32), kind="stable"):
    key = json.dumps(rows[i][0], sort_keys=True, default=repr)
    if key not in seen and len(best) < top_k:
      seen.add(key)
      best.append(rows[i][0])
  return _Prior(u, y, best, prov)


class _Objective(CallableEvaluator):
  """A study's objective as the loop's evaluator: each result checked as ``tell`` checks it
  (a result ``tell`` would reject fails its trial, and ``optimize`` raises it once the
  round is stored)."""

  timed = False  # a study records what the objective returned, nothing more

  def __init__(self, study: Study, fn: Callable[..., Any], vectorized: bool,
               catch: tuple[type[BaseException], ...]):
    super().__init__(fn, batched=vectorized, direction=study.direction,
                     objective=study.metric or "objective", space=study.space, catch=catch)
    self.study, self.first_rejected = study, None
    self.last: list[dict[str, Any] | None] = []

  def metrics(self, out: Any) -> dict[str, Any]:
    value, metrics = self.study._check_value(out)
    if value is None:
      raise ValueError("tell: a 'complete' trial has no value (the objective returned None)")
    if not math.isfinite(value):
      return {"error": f"objective is {value}"}
    return metrics if metrics is not None else {self.objective: value}

  def rejected(self, e: ValueError) -> dict[str, Any]:
    self.first_rejected = self.first_rejected or str(e)
    return {"error": str(e)}

  def epoch(self, state, batch, alive, epoch, key):
    state, self.last = super().epoch(state, batch, alive, epoch, key)
    return state, self.last


class Study:
  """A search over ``space`` driven by ``ask`` / ``tell`` or ``optimize`` (see module doc).

  Args:
    space: the :class:`metaopt.spaces.Space` searched.
    searcher: a name in ``metaopt.SEARCHERS`` (``"tpe"``, ``"gp"``, ``"random"``, ...) or a
      :class:`metaopt.Searcher` over ``[0, 1]^space.dim``.
    store: a SQLAlchemy URL or :class:`metaopt.Store`; None keeps the study in memory.
    study_name: name in the store; a stored study of that name is continued.
    direction: ``"minimize"`` or ``"maximize"``.
    seed: root seed of the searcher's keys.
    searcher_options: keyword arguments of a searcher given by name.
    metric: the key of the objective when results are dicts of metrics (Ray Tune style).
    warm_start: earlier studies whose complete trials seed this one (module doc).
    warm_start_top_k: how many of their best points are evaluated first.
  """

  def __init__(self, space: Space, searcher: str | Searcher = "tpe", *,
               store: str | Store | None = None, study_name: str | None = None,
               direction: str = "minimize", seed: int = 0,
               searcher_options: Mapping[str, Any] | None = None, metric: str | None = None,
               warm_start: Any = None, warm_start_top_k: int = 3):
    if not isinstance(space, Space):
      raise ValueError(f"space: expected a metaopt.spaces.Space, got "
                       f"{type(space).__name__}{SPACE_HINT}")
    if direction not in DIRECTIONS:
      raise ValueError(f"direction={direction!r}: allowed values are 'minimize', 'maximize'")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f"seed={seed!r}: must be an integer")
    if metric is not None and not isinstance(metric, str):
      raise ValueError(f"metric={metric!r}: must be a string (a key of the told metrics)")
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
      raise ValueError(f"study_name={study_name!r}: must be a non-empty string")
    if warm_start_top_k != 0:
      loop.positive_int("warm_start_top_k", warm_start_top_k)
    program, self._searcher_name, self._options = _make_program(
        searcher, space.dim, searcher_options)
    if self._searcher_name == "custom":
      loop.check_dim(program, space, "searcher")
    prior = _resolve_warm_start(space, direction, warm_start, warm_start_top_k)
    self.space, self.direction, self.seed, self.metric = space, direction, int(seed), metric
    self.study_name = study_name or f"study-{uuid.uuid4().hex[:8]}"
    self._trials: list[Trial] = []
    self._rounds: dict[int, list[int]] = {}
    self._queue: list[dict[str, Any]] = []
    self._started: dict[int, float] = {}
    self._stop = False
    self._calls_left = 1
    self._key = jax.random.fold_in(jax.random.key(seed), 1)
    self.warm_start_sources: list[dict[str, Any]] = []
    self._persistent = store is not None
    st = store if isinstance(store, Store) else Store(store or "sqlite://")
    self._env = loop.RoundEnv(None, None, space, st, 1, loop.direction_sign(direction),
                              keep_state=self._persistent)
    self._use(program)
    self._state = self._env.fns.init(jax.random.key(seed))
    self._rec_id: int = -1
    self._ids: dict[int, int] = {}
    if not self._open(st) and prior is not None:
      self._apply_prior(prior)

  # ------------------------------------------------------------------ store
  @property
  def store_url(self) -> str | None:
    """The store's URL, or None for an in-memory study."""
    return self._env.store.url if self._persistent else None

  @property
  def _store(self) -> Store:
    return self._env.store

  def _config(self) -> dict[str, Any]:
    return {"kind": "study", "space": to_spec(self.space),
            "space_order": list(self.space.params), "searcher_name":
            self._searcher_name, "searcher": self._options, "metric": self.metric,
            "direction": self.direction, "warm_start": self.warm_start_sources}

  def _open(self, st: Store) -> bool:
    """Creates the study in ``st`` or loads it; True when it existed."""
    from metaopt._src.provenance import code_version, hardware
    if self.study_name not in st.study_names():
      rec = st.create_study(self.study_name, direction=self.direction, config=self._config(),
                            seed=self.seed, code_version=code_version(), hardware=hardware())
      self._rec_id = rec.id
      return False
    rec = st.load_study(self.study_name)
    if rec.config.get("kind") != "study":
      raise ValueError(f"study {self.study_name!r} in {st.url} was made by metaopt.search / "
                       "run.py; continue it with `run.py resume`, or pick a new study_name")
    changed = loop.config_changes(rec.config, self._config(), ("warm_start",))
    if changed or rec.seed != self.seed:
      raise ValueError(f"study {self.study_name!r} exists in {st.url} with different "
                       f"settings (fields {changed or ['seed']}); pass the same ones to "
                       "continue it, or pick a new study_name")
    if rec.searcher_state is not None:
      if self._searcher_name == "tpe" and rec.config.get("warm_start"):  # marked priors
        self._state = {**self._state, "n_prior": jnp.zeros((), jnp.int32)}
      self._state = flax.serialization.from_bytes(self._state, rec.searcher_state)
      if self._grows:  # a TPE history restored at a grown capacity needs that searcher
        self._use(self._tpe(int(np.shape(self._state["y"])[0])))
    self._rec_id = rec.id
    self._reload()
    self.warm_start_sources = list(rec.config.get("warm_start") or [])
    st.log_event(rec.id, "resume", f"continued with {len(self._trials)} trials")
    return True

  def _reload(self) -> None:
    """The trials as the store holds them (running ones timed from now)."""
    self._trials = self._store.trials(self._rec_id)
    self._rounds = {}
    for t in self._trials:
      self._rounds.setdefault(t.round, []).append(t.number)
      if t.status == "running":
        self._started.setdefault(t.number, time.time())
    self._ids = self._store.trial_ids(self._rec_id)

  # ------------------------------------------------------------------ searcher
  def _use(self, program: Searcher) -> None:
    """Runs ``program`` from now on (its loop functions, ``tell`` growing TPE first)."""
    self._program = program
    self._env.fns = dataclasses.replace(_searcher_fns(program, self.space), tell=self._tell)

  @property
  def _grows(self) -> bool:
    return self._searcher_name == "tpe" and "capacity" not in self._options

  def _tpe(self, capacity: int) -> Searcher:
    return _named_searcher("tpe", self.space.dim, {**self._options, "capacity": capacity})

  def _tell(self, state, u, y, status, *epochs):
    """The searcher's ``tell`` (``epochs``: with a program's ``tell_epochs``); a TPE by name
    first doubles its history (one more compile) while the rows told would not fit, up to
    4096 rows."""
    if self._grows:
      cap = int(np.shape(state["y"])[0])
      kept = (COMPLETE, PRUNED) if "step" in state else (COMPLETE,)
      need = int(state["count"]) + int(np.sum(np.isin(np.asarray(status), kept)))
      if cap < need and cap < _TPE_MAX_CAPACITY:
        new = cap
        while new < need and new < _TPE_MAX_CAPACITY:
          new *= 2
        pad = lambda a: jnp.concatenate([a, jnp.zeros((new - cap, *a.shape[1:]), a.dtype)])
        state = {**state, **{k: pad(state[k]) for k in ("x", "y", "valid", "step")
                             if k in state}}
        self._use(self._tpe(new))
    return _searcher_fns(self._program, self.space).tell(state, u, y, status, *epochs)

  def _apply_prior(self, prior: _Prior) -> None:
    """Tells the warm-start observations, enqueues their best points, records provenance."""
    if len(prior.y):
      self._state = loop.warm_start(self._env, self._state, prior.u, prior.y, len(prior.y))
    if self._searcher_name == "tpe" and prior.provenance:  # TPE weighs these rows as priors
      self._state = {**self._state, "n_prior": jnp.asarray(self._state["count"], jnp.int32)}
    for p in prior.best:
      self.enqueue(p)
    self.warm_start_sources = prior.provenance
    self._store.update_config(self._rec_id, self._config())
    self._store.log_event(self._rec_id, "warm_start", json.dumps(
        {"sources": prior.provenance, "prior_observations": int(len(prior.y)),
         "enqueued": len(prior.best)}))
    self._store.finish_trials(self._rec_id, [],
                              searcher_state=loop.state_bytes(self._env, self._state), rnd=-1)

  # ------------------------------------------------------------------ ask / tell
  def enqueue(self, params: Mapping[str, Any]) -> None:
    """Queues ``params`` (all or some of the space's parameters, inside it) to be evaluated
    by the next ``ask``, before the searcher's own points; left-out parameters come from the
    searcher's proposal."""
    self._queue.append(check_params(self.space, params, "enqueue"))

  def _plan(self, n: int) -> loop.RoundPlan:
    """The next round of ``n`` trials, enqueued points first."""
    rnd, first = max(self._rounds, default=-1) + 1, len(self._trials)
    key = _fold_in(self._key, rnd)
    return loop.RoundPlan(self._rec_id, rnd, list(range(first, first + n)), key, key, None,
                          self.seed, enqueue=self._queue[:n], calls_left=self._calls_left)

  def _asked(self, plan: loop.RoundPlan, batch) -> list[Trial]:
    """Registers the trials of an asked round (``running``)."""
    del self._queue[:len(plan.enqueue)]
    new = [Trial(number=num, params=p, status="running", objective=None, seed=int(s),
                 round=plan.rnd, u=uu) for num, p, s, uu in
           zip(batch.numbers, batch.params, batch.seeds, batch.u.tolist(), strict=True)]
    self._ids.update(zip(batch.numbers, batch.ids, strict=True))
    self._trials += new
    self._rounds[plan.rnd] = list(batch.numbers)
    now = time.time()
    self._started.update({t.number: now for t in new})
    return new

  def ask(self, n: int = 1) -> list[Trial]:
    """``n`` new trials (status ``running``) with plain Python ``params``: enqueued ones
    first, then the searcher's."""
    plan = self._plan(loop.positive_int("n", n))
    self._state, batch, _ = loop.ask_round(self._env, self._state, plan)
    return [dataclasses.replace(t, params=dict(t.params)) for t in self._asked(plan, batch)]

  def _check_value(self, value: Any) -> tuple[float | None, dict[str, Any] | None]:
    """``(objective, metrics)`` of a told value, or one ``ValueError``."""
    metrics = None
    if isinstance(value, Mapping):
      if self.metric is None:
        raise ValueError("tell: got a dict of metrics; create the study with metric=<key> to "
                         "say which one is the objective")
      if self.metric not in value:
        raise ValueError(f"tell: metric {self.metric!r} is not among the told metrics "
                         f"{sorted(value)}")
      metrics = dict(value)
      value = value[self.metric]
    if value is not None and not _number(value) and not (
        hasattr(value, "shape") and np.shape(value) == () and np.asarray(value).dtype.kind
        in "fiu"):
      raise ValueError(f"tell: value={value!r} must be a number")
    return None if value is None else float(value), metrics

  def _check_tell(self, trial: Trial | int, value: Any, state: str
                  ) -> tuple[int, float | None, dict[str, Any] | None]:
    """``(number, objective, metrics)`` of a tell, or one ``ValueError`` (nothing changed)."""
    number = trial.number if isinstance(trial, Trial) else trial
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or \
        not 0 <= number < len(self._trials):
      raise ValueError(f"tell: trial {number!r} is unknown in study {self.study_name!r} "
                       + (f"(trials 0..{len(self._trials) - 1})" if self._trials
                          else "(no trials asked yet)"))
    t = self._trials[number]
    if t.status != "running":
      raise ValueError(f"tell: trial {number} was already told ({t.status})")
    if state not in STATES:
      raise ValueError(f"tell: state={state!r}; allowed: {', '.join(STATES)}")
    value, metrics = self._check_value(value)
    if state == "complete" and value is None:
      raise ValueError(f"tell: trial {number} is 'complete' but has no value; pass value=..., "
                       "or state='failed'")
    return int(number), value, metrics

  def tell(self, trial: Trial | int, value: float | Mapping[str, Any] | None = None,
           state: str = "complete", *, reason: str | None = None) -> Trial:
    """Records a running trial's result: ``value`` (a number, or a dict of metrics holding
    ``metric``) and ``state`` (``complete``, ``failed`` or ``pruned``). A non-finite value
    records the trial as failed. Once every trial of its batch is told, the searcher is."""
    number, value, metrics = self._check_tell(trial, value, state)
    if state == "complete" and not math.isfinite(value):
      state, reason = "failed", reason or f"objective is {value}"
    if state == "failed":
      value = None
    t = self._trials[number]
    t.status, t.objective, t.failure_reason = state, value, reason
    t.duration_s = time.time() - self._started.pop(number, time.time())
    if metrics is not None:
      t.metrics = [{"epoch": 0, **metrics}]
    batch = [self._trials[i] for i in self._rounds[t.round]]
    told = all(b.status != "running" for b in batch)
    if told:  # the loop's tell phase, as a round's end
      self._state = loop.tell_round(
          self._env, self._state, np.asarray([b.u for b in batch], np.float32),
          [(self._ids[b.number], b.status, b.objective, b.failure_reason) for b in batch])
    tid = self._ids[number]
    self._store.finish_trials(  # the trial and, at a round's end, the state: one transaction
        self._rec_id, [(tid, state, value, reason, t.duration_s)],
        metrics=None if metrics is None else {tid: metrics},
        searcher_state=loop.state_bytes(self._env, self._state) if told else None,
        rnd=t.round)
    return dataclasses.replace(t, params=dict(t.params))

  def optimize(self, objective: Callable[..., Any], n_trials: int | None = None,
               batch_size: int = 1, *, timeout: float | None = None,
               callbacks: Sequence[Callable[[Study, Trial], None]] = (),
               vectorized: bool = False,
               catch: tuple[type[BaseException], ...] = (Exception,)) -> Study:
    """Runs ``n_trials`` new trials of ``objective(params) -> value`` (a number, or a dict of
    metrics holding ``metric``), ``batch_size`` at a time, each batch one round of the
    search loop. With ``vectorized`` the objective takes the batch's list of params and
    returns a list of values. An exception in ``catch`` records the trial as failed with its
    reason and the search goes on; :class:`TrialPruned` records it as pruned. A result
    ``tell`` rejects (e.g. a dict without ``metric``) is recorded as failed with the reason,
    then raised.

    As in Optuna: ``timeout`` (seconds) starts no batch once that much time has passed
    (``n_trials`` may then be None: until the timeout); each ``callbacks`` function is
    called as ``callback(study, trial)`` after each finished trial, and :meth:`stop` (from
    a callback or the objective) ends the run after the current batch."""
    if not callable(objective):
      raise ValueError(f"objective: expected a callable params -> value, got "
                       f"{type(objective).__name__}")
    if n_trials is None and timeout is None:
      raise ValueError("n_trials=None: give n_trials, timeout (seconds) or both")
    n_trials = None if n_trials is None else loop.positive_int("n_trials", n_trials)
    batch_size = loop.positive_int("batch_size", batch_size)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
        timeout, (int, float)) or not timeout >= 0):
      raise ValueError(f"timeout={timeout!r}: must be a number of seconds >= 0")
    callbacks = list(callbacks)
    if not all(callable(c) for c in callbacks):
      raise ValueError("callbacks: expected a list of functions callback(study, trial)")
    ev = _Objective(self, objective, vectorized, catch)
    self._env.evaluator, done, start, self._stop = ev, 0, time.monotonic(), False
    try:
      while (n_trials is None or done < n_trials) and not self._stop and (
          timeout is None or time.monotonic() - start < timeout):
        k = batch_size if n_trials is None else min(batch_size, n_trials - done)
        self._calls_left = 1 if n_trials is None else -(-(n_trials - done) // batch_size)
        plan, t0 = self._plan(k), time.time()
        try:
          self._state, results, batch = loop.one_round(self._env, self._state, plan)
        except BaseException:
          self._reload()  # what the store holds: a round asked, then stopped, stays running
          if plan.rnd in self._rounds:
            del self._queue[:len(plan.enqueue)]
          raise
        trials = self._asked(plan, batch)
        self._evaluated(trials, results, ev.last, time.time() - t0)
        if ev.first_rejected:
          raise ValueError(ev.first_rejected)
        done += k
        for t in trials:
          for c in callbacks:
            c(self, t)
    finally:
      self._calls_left, self._env.evaluator = 1, None
    return self

  def stop(self) -> None:
    """Ends the running :meth:`optimize` after its current batch (Optuna's
    ``study.stop()``: call it from a callback or the objective)."""
    self._stop = True

  def _evaluated(self, trials: list[Trial], results, metrics, duration_s: float) -> None:
    """The outcomes of a round ``optimize`` ran, as the loop stored them."""
    for t, (_, status, obj, reason), m in zip(trials, results, metrics, strict=True):
      t.status, t.objective, t.failure_reason = status, obj, reason
      t.duration_s = duration_s
      if m is not None and "error" not in m and "pruned" not in m:
        t.metrics = [{"epoch": 0, **m}]
      self._started.pop(t.number, None)

  # ------------------------------------------------------------------ results
  @property
  def trials(self) -> list[Trial]:
    """Every trial, in number order (copies)."""
    return [dataclasses.replace(t, params=dict(t.params)) for t in self._trials]

  @property
  def best_trial(self) -> Trial:
    """The best complete trial; ``ValueError`` while there is none."""
    done = [t for t in self._trials if t.status == "complete" and t.objective is not None]
    if not done:
      raise ValueError(f"study {self.study_name!r} has no complete trial yet")
    pick = max if self.direction == "maximize" else min
    t = pick(done, key=lambda t: t.objective)
    return dataclasses.replace(t, params=dict(t.params))

  @property
  def best_params(self) -> dict[str, Any]:
    return self.best_trial.params

  @property
  def best_value(self) -> float:
    return self.best_trial.objective

  def table(self) -> list[dict[str, Any]]:
    """One plain dict per trial: ``number, status, value, duration_s, failure_reason`` and a
    ``params_<name>`` column per parameter."""
    names = list(self.space.params)
    return [{"number": t.number, "status": t.status, "value": t.objective,
             "duration_s": t.duration_s, "failure_reason": t.failure_reason,
             **{f"params_{n}": t.params.get(n) for n in names}} for t in self._trials]

  def to_csv(self, path: str | None = None) -> str:
    """The :meth:`table` as CSV, written to ``path`` when given; returns the text."""
    rows = self.table()
    buf = io.StringIO()
    cols = ["number", "status", "value", "duration_s", "failure_reason",
            *[f"params_{n}" for n in self.space.params]]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    if path is not None:
      with open(path, "w", newline="") as f:
        f.write(buf.getvalue())
    return buf.getvalue()

  def to_pandas(self) -> Any:
    """The :meth:`table` as a ``pandas.DataFrame`` (needs pandas)."""
    try:
      import pandas as pd
    except ImportError:
      raise ImportError("to_pandas needs pandas (pip install pandas); table() and to_csv() "
                        "need nothing") from None
    return pd.DataFrame(self.table())

  def to_optuna(self, storage: Any = None, study_name: str | None = None,
                replace: bool = False) -> Any:
    """Writes the finished trials into a new Optuna study (``storage``: None for in-memory,
    an Optuna storage or URL such as ``sqlite:///optuna.db``) that ``optuna-dashboard`` and
    ``optuna.visualization`` read; returns the ``optuna.Study``. An Optuna study of that
    name already in ``storage`` is an error, or is replaced with ``replace=True``."""
    import optuna
    dists = optuna_distributions(self.space)
    name = study_name or self.study_name
    if storage is not None:
      names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
      if name in names and not replace:
        raise ValueError(f"to_optuna: {storage} already has an Optuna study {name!r}; pass "
                         "study_name=... or replace=True")
      if name in names:
        optuna.delete_study(study_name=name, storage=storage)
    out = optuna.create_study(storage=storage, study_name=name, direction=self.direction)
    states = {"complete": optuna.trial.TrialState.COMPLETE,
              "failed": optuna.trial.TrialState.FAIL,
              "pruned": optuna.trial.TrialState.PRUNED}
    frozen = []
    for t in self._trials:
      if t.status not in states:
        continue
      attrs = {"metaopt_number": t.number, "metaopt_study": self.study_name}
      if t.failure_reason:
        attrs["failure_reason"] = t.failure_reason
      frozen.append(optuna.trial.create_trial(
          params={k: v for k, v in t.params.items() if k in dists},
          distributions={k: dists[k] for k in t.params if k in dists},
          value=t.objective if t.status == "complete" else None, state=states[t.status],
          user_attrs=attrs))
    out.add_trials(frozen)
    return out

  def __repr__(self) -> str:
    return (f"Study({self.study_name!r}, {self._searcher_name}, {self.direction}, "
            f"{len(self._trials)} trials, store={self.store_url!r})")


def optuna_distributions(space: Space) -> dict[str, Any]:
  """Optuna distributions of the space's parameters (``Fixed`` as a one-choice
  categorical)."""
  import optuna.distributions as od
  out = {}
  for n, p in space.params.items():
    if isinstance(p, Float):
      out[n] = od.FloatDistribution(p.lo, p.hi, log=p.log)
    elif isinstance(p, Int):
      out[n] = od.IntDistribution(p.lo, p.hi, log=p.log)
    elif isinstance(p, Choice):
      out[n] = od.CategoricalDistribution(list(p.choices))
    elif isinstance(p, Fixed):
      out[n] = od.CategoricalDistribution([p.value])
  return out


def space_from_optuna(optuna_study: Any) -> Space:
  """The space of an Optuna study's trials' distributions (a ``step`` is dropped: the
  parameter becomes continuous / every integer)."""
  import optuna.distributions as od
  dists: dict[str, Any] = {}
  for t in optuna_study.get_trials(deepcopy=False):
    dists.update(t.distributions)
  if not dists:
    raise ValueError(f"Optuna study {optuna_study.study_name!r} has no trial with parameters")
  params = {}
  for n, d in dists.items():
    if isinstance(d, od.FloatDistribution):
      params[n] = Float(d.low, d.high, log=d.log)
    elif isinstance(d, od.IntDistribution):
      params[n] = Int(d.low, d.high, log=d.log)
    elif isinstance(d, od.CategoricalDistribution):
      params[n] = Fixed(d.choices[0]) if len(d.choices) == 1 else Choice(list(d.choices))
    else:
      raise ValueError(f"Optuna parameter {n!r}: distribution {type(d).__name__} is not "
                       "supported")
  return Space(params)


def create_study(space: Space, searcher: str | Searcher = "tpe", *,
                 store: str | Store | None = None, study_name: str | None = None,
                 direction: str = "minimize", seed: int = 0, **kwargs: Any) -> Study:
  """A new :class:`Study`, or the stored one named ``study_name`` continued.

  Examples:
    >>> from metaopt.spaces import Float, Space
    >>> study = create_study(Space({"x": Float(-2.0, 2.0)}), "random", seed=0)
    >>> study.enqueue({"x": 0.9})
    >>> _ = study.optimize(lambda p: (p["x"] - 1.0) ** 2, n_trials=8)
    >>> study.trials[0].params
    {'x': 0.9}
  """
  return Study(space, searcher, store=store, study_name=study_name, direction=direction,
               seed=seed, **kwargs)


def space_from_config(cfg: Mapping[str, Any]) -> Space:
  """The space a study's config records, its parameters in their original order (the
  store's JSON sorts keys; the order fixes the unit-cube coordinates)."""
  spec = cfg["space"]
  order = cfg.get("space_order") or list(spec)
  return from_spec({n: spec[n] for n in order})


def load_study(study_name: str | None, store: str | Store,
               searcher: str | Searcher | None = None) -> Study:
  """A stored :class:`Study` (its space, searcher and direction read from the store),
  continued from its searcher state; pass ``searcher`` when it was a custom object."""
  # a missing file or study is one error, and creates nothing
  st = store if isinstance(store, Store) else Store(store, create=False, write=True)
  rec = st.load_study(study_name)
  cfg = rec.config
  if cfg.get("kind") != "study":
    raise ValueError(f"study {rec.name!r} in {st.url} was made by metaopt.search / run.py, "
                     "not create_study; continue it with `run.py resume`")
  name = cfg["searcher_name"]
  if name == "custom" and searcher is None:
    raise ValueError(f"study {rec.name!r} used a custom searcher object; pass it as searcher=")
  return Study(space_from_config(cfg), searcher or name, store=st, study_name=rec.name,
               direction=rec.direction, seed=rec.seed,
               searcher_options=cfg["searcher"] or None, metric=cfg.get("metric"))


def from_optuna(optuna_study: Any, searcher: str | Searcher = "tpe", **kwargs: Any) -> Study:
  """A new :class:`Study` over the space of an Optuna study's distributions, warm-started
  from its complete trials (same direction)."""
  return Study(space_from_optuna(optuna_study), searcher,
               direction=_optuna_direction(optuna_study), warm_start=optuna_study, **kwargs)

