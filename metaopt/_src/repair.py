"""Feedback-driven repair (after DREAM, Cao et al. 2022), as a search program.

A *repair action* is an ``(object, value)`` pair on a hyperparameter of the search space:
``Action("learning_rate", 1e-3)`` sets it, ``Action("learning_rate", 0.1, "scale")``
multiplies it (log-scale parameters). :func:`repair_space` is the expanded repair space of
the MLP tasks (optimizer, learning rate, momentum, weight decay, schedule and its end value,
initializer scale and bias, activation, normalisation, gradient clipping, batch size, width,
depth, residual connections, multi-step fine-tuning: 2 or 3 stages, the share of training
and the learning rate of each later stage, a frozen body); :data:`DEFAULT_ACTIONS` are the
actions over it.

:func:`repair` is DREAM's Algorithm 1 as a :class:`~metaopt.Searcher`, run by the population
engine like any other program:

1. the first round trains the starting configuration beside the actions that gained most on
   corpus models that changed the same parameters from their defaults (the conditions of
   the start are not known yet; without such data, the table's opening portfolio), and,
   right after the top one, the top one together with the best action that moves one of
   the start's departures from the defaults back (``undo="combine"``, :func:`reverts`);
2. while training, ``observe`` detects the A-C-G-W conditions of every trial
   (:func:`metaopt.detect_conditions`);
3. each later round applies the ``k`` highest-priority actions not already applied to the
   best model so far (its conditions and its changed parameters select the table rows; two
   actions that make the same configuration count as one) -- as a population in one
   kernel, not one at a time -- and keeps the better model; the engine stops at the target
   score (``search(..., target=...)``) or the trial budget. The last ``combine`` slots of a
   round (of 4 or more) train its top action together with the next best on other
   parameters, for models broken in two ways at once.

Priorities come from a *priority table*: the mean share of the gap to the task's best run
that each action closes on corpus models that showed each condition, measured by
:func:`build_table` (``python -m metaopt.repair build-table``) on faulty variants of the
space's defaults, and shipped as ``data/repair_table.json``. Beyond the paper, the
priorities are updated online from the gains the loop observes (a UCB bandit over actions
per condition: relative improvements of the minimised objective, clipped to ``[-1, 1]``,
so classification and regression share them); conditions the table has no data for fall
back to random actions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import compile_cache
from metaopt._src.monitor import CONDITIONS, FAMILIES, architecture_family, detect_conditions
from metaopt._src.types import COMPLETE, Decision, Searcher
from metaopt.spaces import Choice, Float, Int, Space

ROWS: tuple[str, ...] = (*CONDITIONS, "none")  # "none": no condition detected
CHANGED = "changed:"  # + a parameter name: a row for models that set it off its default
TABLE_PATH = os.path.join(os.path.dirname(__file__), "data", "repair_table.json")
# conditions other than slow convergence count when seen in any epoch; slow convergence
# when seen in at least half of the epochs after the first
_SLOW_FRACTION = 0.5
_SHRINK = 3.0  # pseudo-runs pulling a table cell towards the action's mean over all rows
_UNDO_FIRST = 1e3  # added to the opening score of an action that reverts a departure
UNDO_MODES = ("off", "first", "combine")


@dataclasses.dataclass(frozen=True)
class Action:
  """One repair action: set ``param`` to ``value`` or, with ``kind="scale"``, multiply it.

  ``also`` sets further parameters with it, e.g. ``Action("optimizer", "adamw",
  also={"learning_rate": 1e-3})``: a change of optimizer that brings the optimizer's
  standard settings along, as DREAM's optimizer actions do (Keras' defaults)."""

  param: str
  value: Any
  kind: str = "set"
  also: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if isinstance(self.also, Mapping):
      object.__setattr__(self, "also", tuple(self.also.items()))

  @property
  def name(self) -> str:
    base = (f"{self.param}*{self.value:g}" if self.kind == "scale"
            else f"{self.param}={self.value}")
    return base + "".join(f"+{k}={v}" for k, v in self.also)

  def parts(self) -> tuple[tuple[str, Any, str], ...]:
    """``(param, value, kind)`` of every parameter the action touches."""
    return ((self.param, self.value, self.kind), *((k, v, "set") for k, v in self.also))


def repair_space(max_width: int = 128, task: Any = None) -> Space:
  """The expanded repair space of the MLP tasks (``digits_mlp``, ``wine_mlp``,
  ``breast_cancer_mlp``, ``synthetic_regression``, ``mnist1d_mlp``); with ``task`` (a
  :class:`metaopt.tasks.Task`), only the parameters it reads (``Task.reads``; e.g. no width,
  depth, norm or residual for ``digits_cnn``)."""
  from metaopt.tasks import ENGINE_READS

  space = _full_repair_space(max_width)
  if task is None:
    return space
  reads = getattr(task, "reads", None)
  if reads is None:
    raise ValueError(
        f"repair_space(task={getattr(task, 'name', task)!r}): the task does not declare "
        "which parameters it reads (Task.reads; a tasks.from_flax task whose optimizer is a "
        "function), so the repair actions (optimizer, activation, depth, ...) might change "
        "nothing it trains; name the optimizer (from_flax(..., optimizer='adamw')) or set "
        "Task.reads, or pass repair a space of your own")
  keep = {n: p for n, p in space.params.items() if n in reads or n in ENGINE_READS}
  return Space(keep)


def space_default_actions(space: Space,
                          actions: Sequence[Action] | None = None) -> tuple[Action, ...]:
  """The actions of ``actions`` (default :data:`DEFAULT_ACTIONS`) that touch only parameters
  of ``space`` (e.g. of :func:`repair_space` for one task)."""
  return tuple(a for a in (DEFAULT_ACTIONS if actions is None else actions)
               if all(p in space.names for p, _, _ in a.parts()))


def _full_repair_space(max_width: int) -> Space:
  from metaopt.tasks import ACTIVATIONS, SCHEDULES

  return Space({
      "optimizer": Choice(["adamw", "sgd"], default="adamw", structural=True),
      "learning_rate": Float(1e-7, 10.0, log=True, default=1e-3),
      "momentum": Float(0.0, 0.99, default=0.9, when={"optimizer": ["sgd"]}),
      "weight_decay": Float(1e-6, 1e-1, log=True, default=1e-4),
      "lr_schedule": Choice(list(SCHEDULES), default="constant"),
      "lr_end": Float(1e-3, 1.0, log=True, default=0.01,
                      when={"lr_schedule": ["cosine", "warmup_cosine"]}),
      "init_scale": Float(1e-2, 10.0, log=True, default=1.0),
      "bias_init": Float(-5.0, 1.0, default=0.0),
      "activation": Choice(list(ACTIVATIONS), default="relu"),
      "norm": Choice([False, True], default=False, structural=True),
      "clip_norm": Float(0.1, 1e3, log=True, default=1e3),
      "batch_size": Choice([16, 32, 64, 128], default=32, structural=True),
      "width": Int(8, max_width, log=True, default=min(64, max_width)),
      "depth": Int(1, 6, default=2, structural=True),
      "residual": Choice([False, True], default=False, structural=True),
      # multi-step fine-tuning: stages at the end of training, each at a lower lr
      "finetune_steps": Int(1, 3, default=1),
      "finetune_fraction": Float(0.1, 0.5, default=0.2, when={"finetune_steps": [2, 3]}),
      "finetune_lr": Float(0.01, 1.0, log=True, default=0.1, when={"finetune_steps": [2, 3]}),
      "finetune_freeze": Choice([False, True], default=False,
                                when={"finetune_steps": [2, 3]}),
  })


DEFAULT_ACTIONS: tuple[Action, ...] = (
    Action("optimizer", "adamw"), Action("optimizer", "sgd"),
    # a new optimizer with its standard settings (DREAM's optimizer actions)
    Action("optimizer", "adamw", also={"learning_rate": 1e-3, "weight_decay": 1e-4}),
    Action("optimizer", "sgd", also={"learning_rate": 0.01, "momentum": 0.9}),
    Action("optimizer", "adamw", also={"learning_rate": 1e-2, "weight_decay": 1e-4}),
    Action("learning_rate", 1e-3), Action("learning_rate", 1e-2),
    Action("learning_rate", 10.0, "scale"), Action("learning_rate", 0.1, "scale"),
    Action("momentum", 0.9), Action("momentum", 0.0),
    Action("weight_decay", 1e-4), Action("weight_decay", 1e-6),
    Action("lr_schedule", "cosine"), Action("lr_schedule", "warmup_cosine"),
    Action("lr_schedule", "constant"), Action("lr_end", 0.1),
    Action("init_scale", 1.0), Action("init_scale", 1.41), Action("bias_init", 0.0),
    # re-initialise with the standard initializer; ReLU with it (DREAM: He initializer)
    Action("init_scale", 1.0, also={"bias_init": 0.0}),
    Action("activation", "relu", also={"init_scale": 1.0, "bias_init": 0.0}),
    Action("activation", "relu"), Action("activation", "tanh"), Action("activation", "gelu"),
    Action("activation", "silu"), Action("activation", "elu"),
    Action("norm", True), Action("norm", False),
    Action("norm", True, also={"learning_rate": 1e-2}),  # normalised nets take higher rates
    Action("clip_norm", 1.0), Action("clip_norm", 1e3),
    Action("batch_size", 16), Action("batch_size", 128),
    Action("width", 64), Action("depth", 2), Action("depth", 1), Action("residual", True),
    Action("finetune_steps", 2), Action("finetune_steps", 3), Action("finetune_fraction", 0.4),
    Action("finetune_lr", 0.01), Action("finetune_freeze", True),
    # undos: every parameter an action moves can be set back to its default (or moved back)
    Action("lr_end", 0.01), Action("batch_size", 32), Action("residual", False),
    Action("finetune_steps", 1), Action("finetune_fraction", 0.2), Action("finetune_lr", 0.1),
    Action("finetune_lr", 10.0, "scale"), Action("finetune_freeze", False),
)


def space_actions(space: Space) -> tuple[Action, ...]:
  """Generic repair actions for any space: x10, x3, /3, /10 on log-scale numbers, 10% / 50% /
  90% of the range on linear ones, and every option of a choice."""
  out: list[Action] = []
  for name, p in space.params.items():
    if isinstance(p, (Float, Int)) and p.log:
      out += [Action(name, f, "scale") for f in (10.0, 3.0, 1 / 3, 0.1)]
    elif isinstance(p, (Float, Int)):
      vals = [p.lo + q * (p.hi - p.lo) for q in (0.1, 0.5, 0.9)]
      vals = sorted({int(round(v)) for v in vals}) if isinstance(p, Int) else vals
      out += [Action(name, v) for v in vals]
    elif isinstance(p, Choice):
      out += [Action(name, c) for c in p.choices]
  return tuple(out)


# ----------------------------------------------------------------------------- actions
def _action_arrays(space: Space, actions: Sequence[Action]) -> tuple[np.ndarray, ...]:
  """Per (action, parameter) entry: the action, the coordinate, the kind (True: set) and the
  value (target u, or u shift)."""
  owner, idx, is_set, val = [], [], [], []
  for i, a in enumerate(actions):
    if not isinstance(a, Action):
      raise ValueError(f"actions: expected metaopt.repair.Action items, got {a!r}")
    names = [n for n, _, _ in a.parts()]
    if len(set(names)) != len(names):
      raise ValueError(f"action {a.name}: sets {names} (a parameter twice)")
    for param, value, kind in a.parts():
      if param not in space.names:
        raise ValueError(f"action {a.name}: {param!r} is not a searched parameter of the "
                         f"space; allowed: {', '.join(space.names)}")
      p = space.params[param]
      if kind == "set":
        try:
          u = float(p.encode(p.from_python(value)))
        except (TypeError, ValueError) as e:
          raise ValueError(f"action {a.name}: {e}") from None
        if isinstance(p, (Float, Int)) and not p.lo <= value <= p.hi:
          raise ValueError(f"action {a.name}: {param}={value} outside [{p.lo}, {p.hi}]")
        is_set.append(True)
        val.append(u)
      elif kind == "scale":
        if not (isinstance(p, (Float, Int)) and p.log) or not value > 0:
          raise ValueError(f"action {a.name}: kind='scale' needs a log-scale Float/Int and a "
                           "positive factor")
        lo, hi = p._bounds()
        is_set.append(False)
        val.append(math.log(value) / (hi - lo))
      else:
        raise ValueError(f"action {a.name}: kind={kind!r} is unknown; allowed: set, scale")
      owner.append(i)
      idx.append(space.names.index(param))
  return (np.asarray(owner, np.int32), np.asarray(idx, np.int32), np.asarray(is_set, bool),
          np.asarray(val, np.float32))


def apply_actions(space: Space, actions: Sequence[Action], u: jax.Array) -> jax.Array:
  """``[A, d]``: the point ``u[d]`` with each action applied (jittable)."""
  owner, idx, is_set, val = (jnp.asarray(x) for x in _action_arrays(space, actions))
  cur = u[idx]
  new = jnp.where(is_set, val, jnp.clip(cur + val, 0.0, 1.0))
  out = jnp.broadcast_to(u, (len(actions), u.shape[-1]))
  return out.at[owner, idx].set(new)


def _changes(space: Space, u0: jax.Array, cand: jax.Array) -> jax.Array:
  """``[A]``: whether each candidate decodes to a different configuration than ``u0``."""
  h0 = space.decode(u0)
  h = space.decode(cand)
  diff = jnp.zeros(cand.shape[0], bool)
  for n in h:
    diff = diff | (h[n] != h0[n])
  return diff


def _same(space: Space, cand: jax.Array) -> jax.Array:
  """``[A, A]``: which candidates decode to the same configuration (e.g. ``learning_rate=0.01``
  and ``optimizer=sgd+learning_rate=0.01+momentum=0.9`` on an SGD model at momentum 0.9)."""
  h = space.decode(cand)
  same = jnp.ones((cand.shape[0], cand.shape[0]), bool)
  for n in h:
    same = same & (h[n][:, None] == h[n][None, :])
  return same


def _select(score: jax.Array, same: jax.Array, n: int) -> jax.Array:
  """``[n]`` the best-scoring actions, best first, none decoding like an earlier pick; -1
  once no action with a finite score is left."""
  picks = []
  for _ in range(n):
    a = jnp.argmax(score)
    ok = jnp.isfinite(score[a])
    picks.append(jnp.where(ok, a, -1))
    score = jnp.where(ok & same[a], -jnp.inf, score)
  return jnp.stack(picks).astype(jnp.int32)


def table_rows(space: Space) -> tuple[str, ...]:
  """Rows of the priority table over ``space``: the conditions, ``"none"``, and one
  ``"changed:<param>"`` row per parameter for models that set it off its default."""
  return (*ROWS, *(CHANGED + n for n in space.names))


def deviations(space: Space, u: jax.Array) -> jax.Array:
  """``[..., P]``: which parameters of the point(s) ``u`` decode off the space's defaults
  (the configuration is known before training, its conditions only after; jittable)."""
  h = space.decode(u)
  h0 = space.decode(jnp.asarray(space.encode({}), jnp.float32))
  out = []
  for n in space.names:
    a, b = jnp.asarray(h[n], jnp.float32), jnp.asarray(h0[n], jnp.float32)
    out.append(jnp.abs(a - b) > 1e-4 * jnp.maximum(jnp.abs(b), 1e-6))
  return jnp.stack(out, -1)


def reverts(space: Space, u: jax.Array, cand: jax.Array) -> jax.Array:
  """``[A]``: whether each candidate moves at least one parameter that ``u`` sets off the
  space's defaults closer to its default (a choice: back to it; a number: nearer, on a log
  scale for log parameters; jittable). Inactive parameters decode to their defaults, so
  undoing a gate (e.g. ``finetune_steps=1``) reverts the parameters it switches on too."""
  h, hc = space.decode(u), space.decode(cand)
  h0 = space.decode(jnp.asarray(space.encode({}), jnp.float32))
  out = jnp.zeros(cand.shape[0], bool)
  for n, p in space.params.items():
    a, b, c = (jnp.asarray(x, jnp.float32) for x in (h[n], hc[n], h0[n]))
    if isinstance(p, Choice):
      closer = (a != c) & (b == c)
    else:
      f = (lambda x: jnp.log(jnp.maximum(x, 1e-30))) if p.log else (lambda x: x)
      before, after = jnp.abs(f(a) - f(c)), jnp.abs(f(b) - f(c))
      closer = after < before - 1e-4 * jnp.maximum(before, 1e-6)
    out = out | closer
  return out


# ----------------------------------------------------------------------------- conditions
def aggregate(counts: jax.Array, epochs: jax.Array) -> jax.Array:
  """``[..., C]`` trial conditions from per-condition epoch counts and epochs observed."""
  frac = counts / jnp.maximum(epochs, 1)[..., None]
  slow = jnp.asarray([c == "slow_convergence" for c in CONDITIONS])
  return jnp.where(slow, frac >= _SLOW_FRACTION, counts > 0)


def trial_conditions(epochs: Sequence[Mapping[str, Any]]) -> list[str]:
  """A recorded trial's conditions from its per-epoch ``conditions`` lists (as the store
  keeps them); the same rule the repair searcher applies in the kernel."""
  counts = np.zeros(len(CONDITIONS))
  for m in epochs:
    for c in m.get("conditions", []) or []:
      if c in CONDITIONS:
        counts[CONDITIONS.index(c)] += 1
  seen = max(len(epochs) - 1, 1)  # slow convergence cannot fire at the first epoch
  cond = np.asarray(aggregate(jnp.asarray(counts), jnp.asarray(float(seen))))
  return [c for c, v in zip(CONDITIONS, cond, strict=True) if v]


def _gain(parent: Any, child: Any) -> Any:
  """Relative improvement of a minimised objective, in ``[-1, 1]``: ``(parent - child) /
  |parent|``; a failed child scores -1 against a finite parent, a finished child +1 against
  a failed (non-finite) parent, and two failures 0."""
  parent, child = jnp.asarray(parent, jnp.float32), jnp.asarray(child, jnp.float32)
  rel = (parent - child) / jnp.maximum(jnp.abs(parent), 1e-8)
  p_ok, c_ok = jnp.isfinite(parent), jnp.isfinite(child)
  g = jnp.where(p_ok, jnp.where(c_ok, rel, -1.0), jnp.where(c_ok, 1.0, 0.0))
  return jnp.clip(jnp.nan_to_num(g, nan=-1.0), -1.0, 1.0)


# ----------------------------------------------------------------------------- table
def load_table(path: str | None = None) -> dict[str, Any]:
  """The priority table (``{"actions", "rows", "mean_gain", "count", "provenance"}``)."""
  with open(path or TABLE_PATH) as f:
    return json.load(f)


def table_applies(table: Mapping[str, Any] | None, family: str | None) -> bool:
  """Whether a priority table was measured on models of ``family`` (None: any)."""
  return table is not None and (family is None or family in table.get("families", [family]))


def _prior(table: Mapping[str, Any] | None, actions: Sequence[Action],
           prior_weight: float, rows: Sequence[str] = ROWS) -> tuple[np.ndarray, np.ndarray]:
  """Prior mean gain and pseudo-count ``[rows, actions]`` from a table (0 where absent).

  Each measured mean is shrunk towards the action's mean over all the table's rows by
  ``_SHRINK`` pseudo-runs, so that a cell measured on one or two runs cannot outrank an
  action measured on dozens by luck."""
  mean = np.zeros((len(rows), len(actions)), np.float32)
  count = np.zeros((len(rows), len(actions)), np.float32)
  if table is None:
    return mean, count
  cols = {name: j for j, name in enumerate(table["actions"])}
  t_mean = np.asarray([[np.nan if g is None else g for g in row] for row in table["mean_gain"]],
                      np.float64)
  t_count = np.asarray(table["count"], np.float64)
  t_count = np.where(np.isfinite(t_mean), t_count, 0.0)
  pooled = np.nansum(np.nan_to_num(t_mean) * t_count, 0) / np.maximum(t_count.sum(0), 1e-9)
  for r, row in enumerate(rows):
    if row not in table["rows"]:
      continue
    tr = table["rows"].index(row)
    for a, act in enumerate(actions):
      j = cols.get(act.name)
      if j is None or t_count[tr, j] == 0:
        continue
      c = t_count[tr, j]
      mean[r, a] = (c * t_mean[tr, j] + _SHRINK * pooled[j]) / (c + _SHRINK)
      count[r, a] = min(float(c), prior_weight)
  return mean, count


def _active_rows(n_rows: int, cond: jax.Array | None, changed: jax.Array | None) -> jax.Array:
  """``[rows]``: the table rows of a model with conditions ``cond[C]`` (None: not known yet,
  before it trained) and parameters ``changed[P]`` off their defaults (None: not used)."""
  c = (jnp.zeros(len(ROWS), bool) if cond is None
       else jnp.concatenate([cond, ~jnp.any(cond, keepdims=True)]))  # "none" if healthy
  rest = n_rows - len(ROWS)
  d = jnp.zeros(rest, bool) if changed is None or rest == 0 else changed
  return jnp.concatenate([c, d])


def priorities(state: Mapping[str, jax.Array], cond: jax.Array | None, key: jax.Array,
               ucb: float, changed: jax.Array | None = None) -> jax.Array:
  """``[A]`` scores of every action for a model with conditions ``cond[C]`` (None: not
  known yet) and parameters ``changed[P]`` off their defaults: the summed mean gains of its
  table rows, with a UCB bonus; actions with no data for any of its rows score at random
  below every measured positive gain."""
  rows = _active_rows(state["prior_n"].shape[0], cond, changed)
  n = state["prior_n"] + state["obs_n"]
  mean = (state["prior_mean"] * state["prior_n"] + state["obs_sum"]) / jnp.maximum(n, 1e-9)
  bonus = ucb * jnp.sqrt(jnp.log1p(jnp.sum(n, 1, keepdims=True)) / (1.0 + n))
  known = (n > 0) & rows[:, None]
  score = jnp.sum(jnp.where(known, mean + bonus, 0.0), 0)
  # an action with no data for any of the model's conditions gets a random score below
  # every action with a positive measured gain (DREAM: unknown conditions, random actions)
  noise = jax.random.uniform(key, score.shape, minval=-1e-3, maxval=0.0)
  return jnp.where(jnp.any(known, 0), score, noise)


def _opening_rank(table: Mapping[str, Any] | None, actions: Sequence[Action]) -> np.ndarray:
  """``[A]`` score from the table's opening portfolio: higher for earlier actions, -1 for
  actions it does not list (when it lists none, the mean gain over all rows decides)."""
  order = {n: i for i, n in enumerate((table or {}).get("opening", []))}
  return np.asarray([len(order) - order[a.name] if a.name in order else -1.0
                     for a in actions], np.float32)


def _unconditional(state: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
  """``[A]`` score of every action before any condition of the model is known: its place
  in the table's opening portfolio, else its mean gain over all the table's conditions."""
  n = jnp.sum(state["prior_n"], 0)
  mean = jnp.sum(state["prior_mean"] * state["prior_n"], 0) / jnp.maximum(n, 1e-9)
  noise = jax.random.uniform(key, mean.shape, minval=-1e-3, maxval=0.0)
  ranked = state["opening"] >= 0
  return jnp.where(jnp.any(ranked), jnp.where(ranked, 2.0 + state["opening"], -2.0),
                   jnp.where(n > 0, mean, noise))


def repair(
    searcher: Searcher,
    space: Space,
    *,
    start: Mapping[str, Any] | None = None,
    actions: Sequence[Action] | None = None,
    table: Mapping[str, Any] | str | None = "default",
    population: int = 64,
    ucb: float = 0.05,
    prior_weight: float = 5.0,
    thresholds: Mapping[str, float] | None = None,
    family: str | None = None,
    combine: int = 1,
    undo: str = "combine",
) -> Searcher:
  """DREAM's repair loop (Algorithm 1) over ``searcher``, with top-k actions as a population.

  Args:
    searcher: proposes the first round when there is no ``start`` and fills slots when no
      untried action is left; it is told every result, repairs included.
    space: the searched space; every action's parameter must be in it.
    start: the starting configuration (trial 0), e.g. a broken config to repair.
    actions: the action space; default: the :data:`DEFAULT_ACTIONS` whose parameters are all
      in ``space`` (:func:`space_default_actions`).
    table: priority table: ``"default"`` (the shipped one), a path, a dict, or ``None``
      (every action random until the loop has observed gains).
    population: the largest number of trials per round (sizes the searcher state).
    ucb: exploration bonus of the online bandit (0: greedy on the measured gains).
    prior_weight: pseudo-count of each table entry against online observations.
    thresholds: condition thresholds (see :data:`metaopt.THRESHOLDS`).
    family: architecture family of the model being repaired
      (:func:`metaopt.architecture_family`); a table measured on other families is not
      used (every action random until observed), as for conditions the table lacks.
    combine: slots per round (the last ones; rounds of 4 or more trials) that train the
      round's top action together with the next best untried action on other parameters
      (e.g. a smaller initial scale and a lower learning rate at once, for a model broken
      in two ways); 0: one action per trial.
    undo: how the opening round (before any condition of the start is known) treats the
      actions that move a parameter the start sets off its default back towards it
      (:func:`reverts`; the defaults are the known-good configuration, so a departure from
      them is a suspect): ``"combine"``: its combined slot pairs the top action with the
      best such undo on other parameters (the table's order among them) and is trained
      right after the top action; ``"first"``: they are ranked before all other actions;
      ``"off"``: the table alone. Later rounds rank by the table and the conditions only.
  """
  if not isinstance(searcher, Searcher):
    raise ValueError(f"searcher: expected a metaopt.Searcher, got {type(searcher).__name__}")
  actions = space_default_actions(space) if actions is None else tuple(actions)
  if not actions:
    raise ValueError("actions: must not be empty (the default actions need parameters of "
                     f"repair_space(); the space has {space.names})")
  _action_arrays(space, actions)  # validates before anything compiles
  if isinstance(population, bool) or not isinstance(population, int) or population < 1:
    raise ValueError(f"population={population!r}: must be a positive integer")
  if not ucb >= 0 or not prior_weight >= 0:
    raise ValueError(f"ucb={ucb}, prior_weight={prior_weight}: must be >= 0")
  if isinstance(combine, bool) or not isinstance(combine, int) or combine < 0:
    raise ValueError(f"combine={combine!r}: must be an integer >= 0")
  if undo not in UNDO_MODES:
    raise ValueError(f"undo={undo!r} is unknown; allowed: {', '.join(UNDO_MODES)}")
  if family is not None and family not in FAMILIES:
    raise ValueError(f"family={family!r} is unknown; allowed: {', '.join(FAMILIES)} or None")
  if isinstance(table, str):
    table = load_table(None if table == "default" else table)
  if not table_applies(table, family):
    table = None
  rows = table_rows(space)
  prior_mean, prior_n = _prior(table, actions, prior_weight, rows)
  opening = _opening_rank(table, actions)
  touches = np.zeros((len(actions), space.dim), bool)
  for a, act in enumerate(actions):
    for param, _, _ in act.parts():
      touches[a, space.names.index(param)] = True
  disjoint = jnp.asarray(~(touches.astype(np.int32) @ touches.T.astype(np.int32) > 0))
  u_start = None if start is None else jnp.asarray(space.encode(dict(start)), jnp.float32)
  n_act, n_cond, cap = len(actions), len(CONDITIONS), population
  if thresholds:
    detect_conditions({k: jnp.zeros(1) for k in ("grad_norm_first", "grad_norm_last",
                                                  "objective_delta", "nonfinite_grads",
                                                  "zero_grad_frac", "nonfinite_params",
                                                  "nonfinite_loss")}, thresholds)

  def init(key):
    return {
        "search": searcher.init(key),
        "best_u": jnp.zeros(space.dim, jnp.float32) if u_start is None else u_start,
        "best_y": jnp.asarray(jnp.inf, jnp.float32),
        "best_cond": jnp.zeros(n_cond, bool),
        "best_applied": jnp.zeros(n_act, bool),
        "has_best": jnp.asarray(False),
        "tried": jnp.zeros(n_act, bool),
        "round": jnp.zeros((), jnp.int32),
        "pending": jnp.full(cap, -1, jnp.int32),
        "pending2": jnp.full(cap, -1, jnp.int32),  # a combined slot's second action
        "parent_y": jnp.asarray(jnp.inf, jnp.float32),
        "parent_cond": jnp.zeros(n_cond, bool),
        "parent_changed": jnp.zeros(space.dim, bool),
        "parent_known": jnp.asarray(False),
        "counts": jnp.zeros((cap, n_cond), jnp.float32),
        "epochs": jnp.zeros(cap, jnp.float32),
        "prior_mean": jnp.asarray(prior_mean), "prior_n": jnp.asarray(prior_n),
        "opening": jnp.asarray(opening),
        "obs_sum": jnp.zeros((len(rows), n_act), jnp.float32),
        "obs_n": jnp.zeros((len(rows), n_act), jnp.float32),
    }

  def ask(state, key, n):
    if n > cap:
      raise ValueError(f"repair: asked for {n} trials but population={cap}")
    k_inner, k_score = jax.random.split(key)
    inner, proposals = searcher.ask(state["search"], k_inner, n)
    cand = apply_actions(space, actions, state["best_u"])  # best_u is the start until a best
    usable = _changes(space, state["best_u"], cand) & ~state["tried"] & ~state["best_applied"]
    changed = deviations(space, state["best_u"])
    # the first round trains the start beside the actions that gain most for the parameters
    # it changed (its conditions are not known yet), else the table's opening portfolio
    opening = (state["round"] == 0) & (u_start is not None)
    n_all = state["prior_n"] + state["obs_n"]
    by_config = jnp.any((n_all > 0) & _active_rows(n_all.shape[0], None, changed)[:, None])
    first = jnp.where(by_config, priorities(state, None, k_score, ucb, changed),
                      _unconditional(state, k_score))
    back = reverts(space, state["best_u"], cand)  # undoes a departure of the best model
    if undo == "first":  # the start's departures from the defaults are the first suspects
      first = jnp.where(back, first + _UNDO_FIRST, first)
    score = jnp.where(opening, first,
                      priorities(state, state["best_cond"], k_score, ucb, changed))
    score = jnp.where(usable & (state["has_best"] | opening), score, -jnp.inf)
    same = _same(space, cand)
    pick = _select(score, same, min(n, n_act))
    pick = jnp.full(n, -1, jnp.int32).at[:pick.shape[0]].set(pick)
    # combined slots: the top action with the best untried action on other parameters
    n_comb = min(combine, max(n - 3, 0), n_act - 1)  # rounds of 4+: 2 single slots stay
    top = pick[0]
    cand2 = apply_actions(space, actions, cand[jnp.maximum(top, 0)])  # [A, d]
    ok2 = (disjoint[jnp.maximum(top, 0)] & usable & (top >= 0)
           & _changes(space, cand[jnp.maximum(top, 0)], cand2))
    boost = jnp.where(opening & back, _UNDO_FIRST, 0.0) if undo == "combine" else 0.0
    partner = _select(jnp.where(ok2, score + boost, -jnp.inf), _same(space, cand2), n_comb) \
        if n_comb else jnp.zeros(0, jnp.int32)
    pick = jnp.where(opening, jnp.roll(pick, 1).at[0].set(-1), pick)  # slot 0: the start
    second = jnp.full(n, -1, jnp.int32)
    if n_comb:
      last = jnp.arange(n - n_comb, n)
      pick = pick.at[last].set(jnp.where(partner >= 0, top, pick[last]))
      second = second.at[last].set(partner)
    repairing = pick >= 0
    u = jnp.where(repairing[:, None], cand[jnp.maximum(pick, 0)], proposals)
    u = jnp.where((second >= 0)[:, None], cand2[jnp.maximum(second, 0)], u)
    if u_start is not None:
      u = jnp.where((opening & (jnp.arange(n) == 0))[:, None], u_start, u)
    if undo == "combine" and n_comb:  # an opening with an undo partner: the combined slots
      # right after the top action (the start, the top action, top + undo, the rest)
      perm = jnp.asarray([0, 1, *range(n - n_comb, n), *range(2, n - n_comb)])
      move = opening & (partner[0] >= 0) & back[jnp.maximum(partner[0], 0)]
      pick, second = (jnp.where(move, x[perm], x) for x in (pick, second))
      u = jnp.where(move, u[perm], u)
      repairing = pick >= 0
    # an action is tried with every action that makes the same configuration of this model
    single = repairing & (second < 0)
    tried = state["tried"] | jnp.any(same[jnp.maximum(pick, 0)] & single[:, None], 0)
    return {**state, "search": inner, "tried": tried,
            "pending": state["pending"].at[:n].set(pick),
            "pending2": state["pending2"].at[:n].set(second),
            "parent_y": state["best_y"], "parent_cond": state["best_cond"],
            "parent_changed": changed, "parent_known": state["has_best"],
            "counts": jnp.zeros_like(state["counts"]),
            "epochs": jnp.zeros_like(state["epochs"])}, u

  def observe(state, metrics, epoch, alive):
    n = alive.shape[0]
    seen = alive | jnp.asarray(metrics["nonfinite_loss"], bool) \
        | jnp.asarray(metrics["nonfinite_params"], bool)
    cond = detect_conditions(metrics, thresholds)
    hit = jnp.stack([cond[c] for c in CONDITIONS], -1) & seen[:, None]
    counted = seen & (epoch > 0)  # the epochs slow convergence could have fired in
    counts = state["counts"].at[:n].add(hit.astype(jnp.float32))
    epochs = state["epochs"].at[:n].add(counted.astype(jnp.float32))
    info = {c: cond[c] & seen for c in CONDITIONS}
    return {**state, "counts": counts, "epochs": epochs}, Decision(jnp.ones_like(alive), info)

  def tell(state, u, y, status):
    n = y.shape[0]
    ok = (status == COMPLETE) & jnp.isfinite(y)
    yv = jnp.where(ok, y, jnp.inf)
    cond = aggregate(state["counts"][:n], state["epochs"][:n])
    pending = state["pending"][:n]
    # online priorities: relative gain over the parent, credited to the parent's rows
    gain = _gain(state["parent_y"], yv)
    rows = _active_rows(state["obs_n"].shape[0], state["parent_cond"],
                        state["parent_changed"]).astype(jnp.float32)
    pending2 = state["pending2"][:n]
    credit = (jax.nn.one_hot(pending, n_act) * (pending >= 0)[:, None]
              + jax.nn.one_hot(pending2, n_act) * (pending2 >= 0)[:, None])  # [n, A]
    rows = rows * state["parent_known"]  # the opening round's parent was not measured yet
    obs_sum = state["obs_sum"] + rows[:, None] * jnp.sum(credit * gain[:, None], 0)
    obs_n = state["obs_n"] + rows[:, None] * jnp.sum(credit, 0)
    # keep the better model; a failed start is still the model to repair
    i = jnp.argmin(yv)
    first = (state["round"] == 0) & (u_start is not None)
    better = (yv[i] < state["best_y"]) | (first & ~jnp.isfinite(yv[i]))
    i = jnp.where(first & ~jnp.isfinite(yv[i]), 0, i)
    # the actions behind the new best: its parent's plus its own (none for a fresh proposal)
    applied = jnp.where(pending[i] >= 0, state["best_applied"] | (credit[i] > 0), False)
    new = {
        "best_u": jnp.where(better, u[i], state["best_u"]),
        "best_y": jnp.where(better, yv[i], state["best_y"]),
        "best_cond": jnp.where(better, cond[i], state["best_cond"]),
        "best_applied": jnp.where(better, applied, state["best_applied"]),
        # a new model has tried nothing yet; the start keeps the opening round's actions
        "tried": jnp.where(better & ~(first & (i == 0)), jnp.zeros_like(state["tried"]),
                           state["tried"]),
        "has_best": state["has_best"] | jnp.isfinite(yv[i]) | first,
    }
    return {**state, **new, "obs_sum": obs_sum, "obs_n": obs_n,
            "round": state["round"] + 1,
            "search": searcher.tell(state["search"], u, y, status)}

  return Searcher(init, ask, tell, observe)


# ----------------------------------------------------------------------------- table builder
def collect_corpus(
    task_names: Sequence[str] = ("digits_mlp", "wine_mlp", "synthetic_regression"),
    n_configs: int = 64,
    epochs: int = 5,
    population: int = 64,
    seed: int = 0,
    actions: Sequence[Action] = DEFAULT_ACTIONS,
    store: str | None = None,
    progress: bool = True,
    mutations: int = 3,
    broken_fraction: float = 0.5,
) -> list[dict[str, Any]]:
  """Trains the corpus behind a priority table, one record per task.

  For every task, ``n_configs`` configurations of :func:`repair_space` are trained: with
  ``mutations=k > 0``, faulty variants of the space's defaults, each with 1 to ``k`` random
  parameters set to random values over their whole range (learning rates over 1e-7..10,
  initial scales over 0.01..10, negative biases, sigmoid activations, deep nets, fine-tuning
  rates with fine-tuning switched on: a drawn parameter switches on the parameter that
  gates it; most mutants carry one or two faults, like the buggy models DREAM studied); with
  ``mutations=0``, uniformly random configurations (most of them broken in several ways at
  once). Then every action is applied to each of the worst ``broken_fraction`` of them (the
  models a repair loop is asked to fix) and trained the same way. A record holds, for each
  run, the minimised objective ``y`` (``inf`` if it failed), its conditions, the
  configuration it repairs (``parent``, -1 for a corpus configuration), its ``action``, and
  which parameters it sets off their defaults (``changed[runs, params]``,
  :func:`deviations`).
  """
  if not 0.0 < broken_fraction <= 1.0:
    raise ValueError(f"broken_fraction={broken_fraction}: must be in (0, 1]")
  if isinstance(mutations, bool) or not isinstance(mutations, int) or mutations < 0:
    raise ValueError(f"mutations={mutations!r}: must be an integer >= 0 (0: uniformly random "
                     "configurations)")
  from metaopt._src.combinators import with_monitor
  from metaopt._src.driver import search
  from metaopt._src.searchers import points
  from metaopt._src.store import Store
  from metaopt.tasks import get_task

  space = repair_space()
  actions = tuple(actions)
  rng = np.random.default_rng(seed)
  st = Store(store or "sqlite://")
  out = []
  for t_i, name in enumerate(task_names):
    task = get_task(name)
    sign = -1.0 if task.direction == "maximize" else 1.0

    def train(u: np.ndarray, study: str, task=task, sign=sign, t_i=t_i):
      params = space.to_python_batch(jax.device_get(space.decode(jnp.asarray(u))))
      # one kernel per model structure: group the runs by it
      order = sorted(range(len(u)), key=lambda j: (repr([params[j].get(s) for s in
                                                         space.structural]), j))
      res = search(with_monitor(points(u[order])), task, space=space, n_trials=len(order),
                   population=population, epochs=epochs, seed=seed + t_i, store=st,
                   study=study, progress=progress)
      by_number = {t.number: t for t in res.trials}
      y = np.full(len(u), np.inf)
      conds: list[list[str]] = [[] for _ in u]
      for pos, j in enumerate(order):
        t = by_number[pos]
        if t.status == "complete" and t.objective is not None and math.isfinite(t.objective):
          y[j] = sign * t.objective
        conds[j] = trial_conditions(t.metrics)
      return y, conds, params

    if mutations > 0:
      base = np.stack([_mutant(space, rng, mutations) for _ in range(n_configs)])
    else:
      base = rng.uniform(size=(n_configs, space.dim)).astype(np.float32)
      for col, choices in (("batch_size", 4), ("norm", 2), ("residual", 2)):
        base[:, space.names.index(col)] = (1 if col == "batch_size" else 0) / choices + 0.01
      base[:, space.names.index("depth")] = rng.choice([0.3, 0.75], n_configs)  # depth 2 or 5
    y0, cond0, par0 = train(base, f"repair_corpus_{name}")
    cut = np.quantile(y0, 1.0 - broken_fraction, method="lower")
    broken = np.flatnonzero(y0 >= cut)
    cand = np.asarray(jax.vmap(lambda u: apply_actions(space, actions, u))(
        jnp.asarray(base[broken])))
    changed = np.asarray(jax.vmap(lambda u0, c: _changes(space, u0, c))(
        jnp.asarray(base[broken]), jnp.asarray(cand)))
    rows_u, owner = [], []
    for a in range(len(actions)):
      keep = np.flatnonzero(changed[:, a])
      rows_u.append(cand[keep, a])
      owner += [(a, int(broken[i])) for i in keep]
    kids = np.concatenate(rows_u)
    y1, cond1, par1 = train(kids, f"repair_corpus_{name}_actions")
    changed = np.asarray(jax.vmap(lambda u: deviations(space, u))(
        jnp.asarray(np.concatenate([base, kids]))))
    out.append({"task": name, "family": [architecture_family(task, p) for p in par0 + par1],
                "y": np.concatenate([y0, y1]), "conditions": cond0 + cond1,
                "changed": changed, "params": list(space.names),
                "parent": np.asarray([-1] * n_configs + [o[1] for o in owner]),
                "action": np.asarray([-1] * n_configs + [o[0] for o in owner]),
                "actions": [a.name for a in actions]})
  return out


def _python_decoder(space: Space) -> Callable[[np.ndarray], dict[str, Any]]:
  """``u -> space.to_python(space.decode(u))`` through one jitted decode per space (kept in
  ``compile_cache``): a corpus draw decodes several times per mutant, and an eager decode
  dispatches every op on its own."""
  decode = compile_cache.cached(lambda: jax.jit(space.decode), "repair-decode", space)
  return lambda u: space.to_python(jax.device_get(decode(jnp.asarray(u, jnp.float32))))


def _mutant(space: Space, rng: np.random.Generator, k: int) -> np.ndarray:
  """The space's defaults with 1..k random parameters that change the configuration set to
  random values. A drawn parameter that its parent switches off (``when=``) switches the
  parent on (to one of its allowed values, at random), so e.g. a fine-tuning rate is drawn
  together with fine-tuning itself."""
  u0 = space.encode({}).astype(np.float32)
  to_python = _python_decoder(space)
  h0 = to_python(u0)
  u = u0.copy()
  for _ in range(int(rng.integers(1, k + 1))):
    for _ in range(20):  # a draw that leaves the configuration unchanged: draw again
      v = u.copy()
      i = int(rng.integers(space.dim))
      v[i] = rng.uniform()
      _switch_on(space, v, space.names[i], rng, to_python)
      if to_python(v) != h0:
        u = v
        break
  return u


def _switch_on(space: Space, u: np.ndarray, name: str, rng: np.random.Generator,
               to_python: Callable[[np.ndarray], dict[str, Any]]) -> None:
  """Sets the parents of parameter ``name`` in ``u`` (in place) to random allowed values
  where they switch it off (recursively, for parents that are conditional themselves);
  ``to_python``: :func:`_python_decoder` of ``space``."""
  when = space.params[name].when or {}
  h = to_python(u)
  for parent, values in when.items():
    if parent not in h or h[parent] not in values:
      p = space.params[parent]
      u[space.names.index(parent)] = p.encode(p.from_python(values[int(rng.integers(
          len(values)))]))
      _switch_on(space, u, parent, rng, to_python)


def gap_closed(parent: np.ndarray, child: np.ndarray, best: float) -> np.ndarray:
  """Share of the gap between ``parent`` and ``best`` (minimised objectives) that a child
  closes, clipped to ``[-1, 1]``: 1 reaches ``best``, 0 changes nothing; a failed child
  scores -1 against a finished parent, a finished child +1 against a failed parent."""
  parent, child = np.asarray(parent, float), np.asarray(child, float)
  gap = np.maximum(parent - best, 1e-8)
  g = np.where(np.isfinite(child), (parent - child) / gap, -1.0)
  g = np.where(np.isfinite(parent), g, np.where(np.isfinite(child), 1.0, 0.0))
  return np.clip(np.nan_to_num(g, nan=-1.0), -1.0, 1.0)


def table_from_corpus(corpus: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The priority table of a corpus (:func:`collect_corpus`): per (condition, action) the
  mean share of the gap to the task's best run that the action closes
  (:func:`gap_closed`), over the corpus configurations that showed the condition (rows
  ``"changed:<param>"``: that set the parameter off its default); and the
  ``opening``: every action in the order that greedily maximises the summed best gap closed
  over all corpus configurations (a portfolio for the first round, before any condition of
  the model is known: each next action covers the configurations the earlier ones left)."""
  names = list(corpus[0]["actions"])
  row_names = list(ROWS) + [CHANGED + p for p in corpus[0]["params"]]
  gains: dict[tuple[str, str], list[float]] = {}
  families: set[str] = set()  # of the models the gains were measured on
  cover = []  # [configs, actions] gap closed (0 where an action changes nothing)
  for rec in corpus:
    y, parent, action = rec["y"], rec["parent"], rec["action"]
    finite = y[np.isfinite(y)]
    best = float(finite.min()) if finite.size else 0.0
    rows = {int(i): np.zeros(len(names)) for i in np.unique(parent[action >= 0])}
    for j in np.flatnonzero(action >= 0):
      i = parent[j]
      families.add(rec["family"][i])
      g = float(gap_closed(y[i], y[j], best))
      rows[int(i)][action[j]] = g
      changed = [CHANGED + p for p, c in zip(rec["params"], rec["changed"][i], strict=True)
                 if c]
      for row in (rec["conditions"][i] or ["none"]) + changed:
        gains.setdefault((row, names[action[j]]), []).append(g)
    cover += list(rows.values())
  mean = [[None if not gains.get((r, a)) else round(float(np.mean(gains[(r, a)])), 5)
           for a in names] for r in row_names]
  count = [[len(gains.get((r, a), [])) for a in names] for r in row_names]
  return {"actions": names, "rows": row_names, "mean_gain": mean, "count": count,
          "opening": [names[a] for a in _greedy_portfolio(np.asarray(cover))],
          "families": sorted(families)}


def _greedy_portfolio(gain: np.ndarray) -> list[int]:
  """Columns of ``gain[configs, actions]`` in the order that greedily maximises
  ``sum_configs max_chosen gain`` (ties: the higher mean gain first)."""
  if gain.size == 0:
    return []
  n_act = gain.shape[1]
  cur = np.zeros(gain.shape[0])
  order: list[int] = []
  left = list(range(n_act))
  while left:
    val = [np.maximum(cur, gain[:, a]).sum() + 1e-6 * gain[:, a].mean() for a in left]
    a = left.pop(int(np.argmax(val)))
    order.append(a)
    cur = np.maximum(cur, gain[:, a])
  return order


def build_table(
    task_names: Sequence[str] = ("digits_mlp", "wine_mlp", "synthetic_regression"),
    n_configs: int = 64,
    epochs: int = 5,
    population: int = 64,
    seed: int = 0,
    actions: Sequence[Action] = DEFAULT_ACTIONS,
    store: str | None = None,
    progress: bool = True,
    broken_fraction: float = 0.5,
    mutations: int = 3,
) -> dict[str, Any]:
  """Measures the priority table on a corpus of runs (:func:`collect_corpus`,
  :func:`table_from_corpus`), with its provenance."""
  import time

  from metaopt._src.provenance import code_version

  t0 = time.time()
  corpus = collect_corpus(task_names, n_configs, epochs, population, seed, actions, store,
                          progress, mutations, broken_fraction)
  table = table_from_corpus(corpus)
  table["provenance"] = {
      "command": ("python -m metaopt.repair build-table "
                  f"--tasks {','.join(task_names)} --configs {n_configs} "
                  f"--epochs {epochs} --seed {seed} --broken {broken_fraction:g} "
                  f"--mutations {mutations}"),
      "tasks": list(task_names), "n_configs": n_configs, "epochs": epochs,
      "mutations": mutations,
      "broken_fraction": broken_fraction,
      "seed": seed, "runs": sum(len(r["y"]) for r in corpus),
      "seconds": round(time.time() - t0, 1),
      "code_version": code_version(),
      "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
  return table


def ranked_actions(table: Mapping[str, Any], condition: str) -> list[tuple[str, float]]:
  """The table's actions for ``condition`` (a row of :data:`ROWS`), best first."""
  if condition not in table["rows"]:
    raise ValueError(f"condition {condition!r} is unknown; allowed: {', '.join(table['rows'])}")
  r = table["rows"].index(condition)
  out = [(a, g) for a, g in zip(table["actions"], table["mean_gain"][r], strict=True)
         if g is not None]
  return sorted(out, key=lambda x: -x[1])
