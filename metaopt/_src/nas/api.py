"""NAS configs end to end: search with safeguards, derive, retrain, test once, record.

``run_config(cfg, store)`` validates the whole config (one ``ValueError`` naming the field
and its allowed values, before anything compiles), searches on the train / valid splits,
derives the genotype, retrains it from scratch over several seeds, evaluates the test split
once and records everything in the trial store: round 0 holds the search trial (one
"epoch" row per search epoch: losses, arch weights and entropy, skip count, dominant Hessian
eigenvalue, hyperparameters), the last round one trial per retraining seed; a ``collapse``
event is logged when a safeguard fires. When the architecture gradients can't be trusted (a
safeguard fired, or the search loss went non-finite) the run falls back to black-box search
over the same cell space (config ``fallback``: ``searcher``, default regularised evolution,
or ``"none"``; ``trials``, ``population``, ``epochs``), recorded as rounds 1.. before the
retraining and announced by a ``switch`` event; its best genotype is the one retrained.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import compile_cache
from metaopt._src.evaluators import Evaluator, TrialBatch
from metaopt._src.nas import hardware, safeguards
from metaopt._src.nas.darts import make_mixing, temperature
from metaopt._src.nas.search import NASProgram, SearchSettings, make_search
from metaopt._src.nas.train import batch_indices, train_networks
from metaopt._src.types import Result
from metaopt.spaces import (
    NB201_MINI_OPS,
    CellSpace,
    Genotype,
    conv1d_space,
    count_ops,
    darts_space,
    discretize,
    nb201_space,
)
from metaopt.tasks import Dataset, Network, count_params, load_dataset

SPACES: dict[str, Callable[[], CellSpace]] = {
    "nb201": nb201_space,
    "nb201_mini": lambda: nb201_space(NB201_MINI_OPS),
    "darts": darts_space,
    "conv1d": conv1d_space,
}
DATASETS: tuple[str, ...] = ("shapes", "digits", "mnist1d")

_MODEL_DEFAULTS = {"features": 8, "n_cells": 1, "stages": 2, "stem_stride": 2, "partial_k": 1,
                   "head": "mean"}
_SEARCH_DEFAULTS = {"epochs": 4, "batch_size": 64}
_RETRAIN_DEFAULTS = {"epochs": 6, "seeds": 3, "batch_size": 64, "lr": 3e-3, "wd": 1e-4}
# black-box stage after a search whose gradients can't be trusted (epochs 0: retrain.epochs)
_FALLBACK_DEFAULTS = {"searcher": "evolution", "trials": 8, "population": 4, "epochs": 0,
                      "objectives": ("accuracy",), "when": "untrusted"}
# what the black-box stage can trade against validation accuracy (hardware.py tables)
_FALLBACK_COSTS = ("params", "flops", "latency")
_SAFEGUARD_FIELDS = {f.name for f in dataclasses.fields(safeguards.SafeguardSettings)}
_SETTINGS_FIELDS = {f.name for f in dataclasses.fields(SearchSettings)}


def _as_dict(x: Any) -> dict[str, Any]:
  if x is None:
    return {}
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def _int(section: str, d: Mapping[str, Any], name: str, lo: int) -> int:
  v = d[name]
  if isinstance(v, bool) or not isinstance(v, int) or v < lo:
    raise ValueError(f"config field '{section}.{name}'={v!r}: must be an int >= {lo}")
  return v


@dataclasses.dataclass(frozen=True)
class NASConfig:
  """A validated NAS config."""

  name: str
  seed: int
  dataset: str
  space: CellSpace
  model: dict[str, int]
  search: dict[str, int]
  settings: SearchSettings
  safeguard: safeguards.SafeguardSettings
  retrain: dict[str, Any]
  raw: dict[str, Any]
  fallback: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(_FALLBACK_DEFAULTS))


def parse_config(cfg: Any) -> NASConfig:
  """Validates a NAS config (``program="nas"``); raises one ``ValueError`` naming the field."""
  c = _as_dict(cfg)
  if c.get("program", "nas") != "nas":
    raise ValueError(f"config field 'program'={c.get('program')!r}: must be 'nas'")
  known = {"program", "name", "seed", "dataset", "space", "model", "search", "method", "order",
           "hessian", "safeguard", "retrain", "store", "hardware", "hpo", "fallback"}
  unknown = sorted(set(c) - known)
  if unknown:
    raise ValueError(f"config field(s) {unknown} unknown; allowed: {sorted(known)}")
  name = c.get("name")
  if not isinstance(name, str) or not name:
    raise ValueError(f"config field 'name'={name!r}: must be a non-empty string")
  seed = c.get("seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"config field 'seed'={seed!r}: must be an int >= 0")
  dataset = c.get("dataset", "shapes")
  if dataset not in DATASETS:
    raise ValueError(f"config field 'dataset'={dataset!r}: allowed values are "
                     f"{', '.join(DATASETS)}")
  sp_name = c.get("space", "nb201_mini")
  if sp_name not in SPACES:
    raise ValueError(f"config field 'space'={sp_name!r}: allowed values are "
                     f"{', '.join(SPACES)}")
  space = SPACES[sp_name]()
  model = {**_MODEL_DEFAULTS, **_as_dict(c.get("model"))}
  bad = sorted(set(model) - set(_MODEL_DEFAULTS))
  if bad:
    raise ValueError(f"config field(s) model.{bad} unknown; allowed: {sorted(_MODEL_DEFAULTS)}")
  for k in ("features", "n_cells", "stages", "stem_stride", "partial_k"):
    _int("model", model, k, 1)
  if model["head"] not in ("mean", "flatten"):
    raise ValueError(f"config field 'model.head'={model['head']!r}: allowed values are mean, "
                     "flatten")
  if dataset == "mnist1d" and model["stages"] != 1:
    raise ValueError(f"config field 'model.stages'={model['stages']}: must be 1 with dataset "
                     "'mnist1d' (signals of width 1 have no room for the stride-2 blocks "
                     "between stages)")
  if model["features"] % model["partial_k"]:
    raise ValueError(f"config field 'model.partial_k'={model['partial_k']}: must divide "
                     f"model.features={model['features']}")
  search = {**_SEARCH_DEFAULTS}
  extra = _as_dict(c.get("search"))
  settings_kw = {k: v for k, v in extra.items() if k in _SETTINGS_FIELDS}
  bad = sorted(set(extra) - set(_SEARCH_DEFAULTS) - _SETTINGS_FIELDS)
  if bad:
    raise ValueError(f"config field(s) search.{bad} unknown; allowed: "
                     f"{sorted(set(_SEARCH_DEFAULTS) | _SETTINGS_FIELDS)}")
  search.update({k: v for k, v in extra.items() if k in _SEARCH_DEFAULTS})
  for k in ("epochs", "batch_size"):
    _int("search", search, k, 1)
  for k in ("method", "order", "hessian", "hpo"):
    if k in c:
      settings_kw[k] = c[k]
  hw = _as_dict(c.get("hardware"))
  bad = sorted(set(hw) - {"metric", "penalty", "budget"})
  if bad:
    raise ValueError(f"config field(s) hardware.{bad} unknown; allowed: budget, metric, "
                     "penalty")
  settings_kw.update({f"hw_{k}": v for k, v in hw.items()})
  try:
    settings = SearchSettings(**settings_kw)
  except ValueError as e:
    raise ValueError(f"config field {e}") from None
  sg = _as_dict(c.get("safeguard"))
  bad = sorted(set(sg) - _SAFEGUARD_FIELDS)
  if bad:
    raise ValueError(f"config field(s) safeguard.{bad} unknown; allowed: "
                     f"{sorted(_SAFEGUARD_FIELDS)}")
  try:
    sg_settings = safeguards.SafeguardSettings(**sg)
  except ValueError as e:
    raise ValueError(f"config field safeguard.{e}") from None
  retrain = {**_RETRAIN_DEFAULTS, **_as_dict(c.get("retrain"))}
  bad = sorted(set(retrain) - set(_RETRAIN_DEFAULTS))
  if bad:
    raise ValueError(f"config field(s) retrain.{bad} unknown; allowed: "
                     f"{sorted(_RETRAIN_DEFAULTS)}")
  for k in ("epochs", "batch_size"):
    _int("retrain", retrain, k, 1)
  _int("retrain", retrain, "seeds", 0)
  for k in ("lr", "wd"):
    v = retrain[k]
    if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      raise ValueError(f"config field 'retrain.{k}'={v!r}: must be a number >= 0")
  fallback = _parse_fallback(c.get("fallback"))
  return NASConfig(name, seed, dataset, space, model, search, settings, sg_settings, retrain, c,
                   fallback)


def _parse_fallback(section: Any) -> dict[str, Any]:
  """The validated ``fallback`` section (black-box stage) of a NAS config."""
  fallback = {**_FALLBACK_DEFAULTS, **_as_dict(section)}
  bad = sorted(set(fallback) - set(_FALLBACK_DEFAULTS))
  if bad:
    raise ValueError(f"config field(s) fallback.{bad} unknown; allowed: "
                     f"{sorted(_FALLBACK_DEFAULTS)}")
  from metaopt._src.registry import SEARCHERS
  if fallback["searcher"] != "none" and fallback["searcher"] not in SEARCHERS:
    raise ValueError(f"config field 'fallback.searcher'={fallback['searcher']!r}: allowed "
                     f"values are none, {', '.join(SEARCHERS)}")
  for k in ("trials", "population"):
    _int("fallback", fallback, k, 1)
  _int("fallback", fallback, "epochs", 0)
  objs = fallback["objectives"]
  objs = [objs] if isinstance(objs, str) else list(objs)
  if (not objs or objs[0] != "accuracy" or len(set(objs)) != len(objs)
      or any(o not in _FALLBACK_COSTS for o in objs[1:])):
    raise ValueError(f"config field 'fallback.objectives'={fallback['objectives']!r}: must be "
                     f"['accuracy'] followed by any of {list(_FALLBACK_COSTS)} (accuracy "
                     "maximised, costs minimised)")
  fallback["objectives"] = tuple(objs)
  if len(objs) > 1 and fallback["searcher"] not in ("none", "nsga2", "motpe", "parego",
                                                    "random", "sobol", "halton"):
    raise ValueError(f"config field 'fallback.searcher'={fallback['searcher']!r}: with "
                     f"fallback.objectives={list(objs)} it must be a multi-objective "
                     "searcher: nsga2, motpe, parego (or random, sobol, halton)")
  if fallback["when"] not in ("untrusted", "always"):
    raise ValueError(f"config field 'fallback.when'={fallback['when']!r}: allowed values are "
                     "'untrusted' (when the architecture gradients can't be trusted), "
                     "'always' (black-box search after every gradient search)")
  return fallback


def load_nas_dataset(name: str) -> Dataset:
  """A dataset as the cell networks read it: images as they are, 1-D signals ``(n, length)``
  (MNIST-1D) as ``(n, length, 1, 1)`` images, so the 1-D ops convolve along the signal."""
  data = load_dataset(name)
  if data.train.x.ndim != 2:
    return data
  img = lambda sp: dataclasses.replace(sp, x=sp.x.reshape(sp.x.shape + (1, 1)))
  return dataclasses.replace(data, train=img(data.train), valid=img(data.valid),
                             test=img(data.test))


def check_cell_data(data: Dataset) -> None:
  """Raises one ``ValueError`` unless ``data`` is what the cell networks read: integer class
  labels and images ``(n, height, width, channels)`` (1-D signals as ``(n, length, 1, 1)``,
  see :func:`load_nas_dataset`)."""
  shape = tuple(data.train.x.shape)
  if len(shape) != 4:
    hint = (f"; 1-D signals: reshape to (n, {shape[1]}, 1, 1) as load_nas_dataset does"
            if len(shape) == 2 else "")
    raise ValueError(f"data: the cell networks read images (n, height, width, channels); "
                     f"train x has shape {shape}{hint}")
  if not data.num_classes:
    raise ValueError("data: the cell networks are classifiers; train y must be integer class "
                     "labels (got float targets)")


def derive(space: CellSpace, alpha: Mapping[str, Any]) -> Genotype:
  """The cell a search derives from its architecture logits: :func:`metaopt.spaces.discretize`,
  except that an NB201 cell that would compute nothing (``none`` cuts every path from the
  input to the output) takes the strongest non-``none`` op on each edge instead, as DARTS
  derives its cells."""
  from metaopt._src.nas.tabular import canonical

  geno = discretize(space, alpha)
  if space.kind != "nb201" or any(o != "none" for o, _, _ in canonical(space, geno).normal):
    return geno
  none = space.op_index("none")
  masked = {c: np.where(np.arange(space.num_ops) == none, -np.inf, np.asarray(a, np.float64))
            for c, a in alpha.items()}
  return discretize(space, masked)


class GenotypeSpace:
  """A cell space as the search loop sees it: points are rows of the genotype cube, and a
  trial's params are its genotype (``{"genotype": json}``)."""

  structural: tuple[str, ...] = ()

  def __init__(self, cells: CellSpace, dim: int):
    self.cells, self.dim, self.names = cells, dim, ["genotype"]

  def decode(self, u: jax.Array) -> dict[str, jax.Array]:
    return {"u": u}

  def to_python_batch(self, h: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"genotype": self.cells.decode(np.asarray(row)).to_json()}
            for row in np.asarray(h["u"])]


class RetrainEvaluator(Evaluator):
  """NAS retraining as an evaluator: each trial's genotype trained from scratch (one
  population kernel: the supernet with one-hot mixing weights) for ``epochs`` epochs, in
  one loop epoch; the objective is the last validation accuracy. ``costs`` (name -> a
  :mod:`hardware` cost table) adds each genotype's cost as the metric ``cost_<name>``."""

  objective, direction = "valid_acc", "maximize"

  def __init__(self, supernet: Network, data: Dataset, cells: CellSpace, *, epochs: int,
               batch_size: int, lr: float, wd: float,
               costs: Mapping[str, Any] | None = None):
    self.supernet, self.data, self.cells = supernet, data, cells
    self.costs = dict(costs or {})
    self.train_kw = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "wd": wd}
    self.space, self.data_version = None, data.data_version

  def validate(self, epochs: int) -> None:
    if epochs != 1:
      raise ValueError(f"epochs={epochs}: a RetrainEvaluator trains each genotype in one call")

  def start(self, batch: TrialBatch) -> dict[str, np.ndarray]:
    return {"done": np.zeros(len(batch.params), bool)}

  def epoch(self, state, batch, alive, epoch, key):
    del epoch, key
    idx = np.flatnonzero(alive)
    genos = [self.cells.decode(np.asarray(batch.u[i])) for i in idx]
    w = {c: jnp.stack([self.cells.to_weights(g)[c] for g in genos])
         for c in self.cells.cell_types}
    tr = train_networks(self.supernet, self.data, [int(batch.seeds[i]) for i in idx], w,
                        test=False, **self.train_kw)
    acc = np.asarray(tr["valid_acc"][:, -1], np.float64)
    out: list[dict[str, Any] | None] = [None] * len(batch.params)
    for j, i in enumerate(idx):
      out[i] = {"valid_acc": acc[j], "genotype": str(genos[j]),
                "device_s": tr["seconds"] / max(1, len(idx)),
                **{f"cost_{o}": float(hardware.genotype_cost(self.cells, genos[j], t))
                   for o, t in self.costs.items()}}
    return {"done": np.array(state["done"]) | alive}, out


def blackbox_fallback(conf: NASConfig, supernet: Network, data: Dataset, res: Mapping[str, Any],
                      store: Any, study_id: int, progress: bool = False,
                      tables: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The black-box stage of a NAS run whose architecture gradients can't be trusted.

  The config's ``fallback.searcher`` searches the genotype cube of the same cell space
  through the search loop; its first round trains the genotypes the gradient search derived
  (latest first: the history it hands over) beside the searcher's proposals. Every
  candidate is retrained from scratch (:class:`RetrainEvaluator`) and recorded as a trial;
  the best by validation accuracy is the derived genotype.

  With ``fallback.objectives`` naming costs after ``accuracy`` (e.g. ``["accuracy",
  "flops"]``), the searcher (NSGA-II, MOTPE, ParEGO) is told ``(-accuracy, cost...)`` per
  candidate, every value is stored with the trial, and the result holds the Pareto front and
  its hypervolume. The derived genotype is the most accurate candidate, except in a
  hardware-aware run (``hardware.penalty > 0``), where it is the candidate with the best
  penalised objective of the search itself, ``(1 - accuracy) + penalty * cost / reference``
  (the hinge ``penalty * relu(cost - budget) / budget`` with a budget): the black-box stage
  keeps the trade-off the config asked for (``selection`` in the output says which).
  """
  import tempfile

  from metaopt._src import loop
  from metaopt._src.registry import make_searcher

  cells, fb = conf.space, conf.fallback
  dim = len(cells.encode(res["genotype"]))
  kw = ({"population_size": max(2, fb["population"]), "tournament_size": max(
      1, fb["population"] // 2)} if fb["searcher"] == "evolution" else {})
  objs = list(fb.get("objectives", ("accuracy",)))
  m = len(objs)
  if m > 1 and fb["searcher"] in ("nsga2", "motpe", "parego"):
    kw = {"n_objectives": m, **({"pop_size": max(2, fb["population"])}
                                if fb["searcher"] == "nsga2" else {})}
  searcher = make_searcher(fb["searcher"], dim, **kw)
  declared = None
  if m > 1:
    declared = [("valid_acc", "maximize")] + [(o, "minimize") for o in objs[1:]]
    store.set_objectives(study_id, declared)
    tables = dict(tables or {})
    if "latency" in objs[1:] and "latency" not in tables:
      tables["latency"] = hardware.latency_table(supernet, data.input_shape,
                                                 conf.retrain["batch_size"])
  key = jax.random.key(conf.seed + 11)
  seen: list[Genotype] = []
  for h in [res["genotype"], *(derive(cells, {c: np.log(np.maximum(np.asarray(w), 1e-9))
                                              for c, w in h["arch_weights"].items()})
                               for h in reversed(res["history"]))]:
    if h not in seen:
      seen.append(h)
  ev = RetrainEvaluator(supernet, data, cells, epochs=fb["epochs"] or conf.retrain["epochs"],
                        **{k: conf.retrain[k] for k in ("batch_size", "lr", "wd")},
                        costs={o: tables[o] for o in objs[1:]} if m > 1 else None)
  space = GenotypeSpace(cells, dim)

  def on_epoch(rnd, epoch, metrics):
    if progress:
      print(f"[fallback] round {rnd}: valid_acc="
            f"{[round(float(m['valid_acc']), 3) for m in metrics]}", flush=True)

  env = loop.RoundEnv(ev, loop.searcher_fns(searcher, space), space, store, 1, -1.0,
                      on_epoch=on_epoch, objectives=declared,
                      objective_keys={o: f"cost_{o}" for o in objs[1:]})
  state, ckpt_root = searcher.init(key), tempfile.mkdtemp(prefix="metaopt-nas-fallback-")
  number, rnd, best, cands = 1, 1, None, []
  while number - 1 < fb["trials"]:
    n = min(fb["population"], fb["trials"] - (number - 1))
    plan = loop.RoundPlan(
        study_id, rnd, list(range(number, number + n)), jax.random.fold_in(key, rnd),
        jax.random.fold_in(key, 10_000 + rnd), f"{ckpt_root}/round_{rnd:05d}", conf.seed,
        enqueue=np.stack([cells.encode(g) for g in seen]) if rnd == 1 else None,
        label=lambda p: {"role": "fallback", "searcher": fb["searcher"], **p},
        seeds=[conf.seed] * n)  # every candidate from the same initialisation
    state, results, batch = loop.one_round(env, state, plan)
    b = loop.best_of(results, "maximize")
    cands += [(cells.decode(np.asarray(batch.u[i])), float(o)) for i, (_, st, o, _)
              in enumerate(results) if st == "complete" and o is not None]
    if b is not None and (best is None or b[1] > best[1]):
      best = (cells.decode(np.asarray(batch.u[b[0]])), b[1], number + b[0])
    number, rnd = number + n, rnd + 1
  geno = res["genotype"] if best is None else best[0]
  s, selection = conf.settings, "accuracy"
  if s.hw_penalty > 0 and cands:
    tables = dict(tables or {})
    if s.hw_metric not in tables:
      tables[s.hw_metric] = hardware.latency_table(supernet, data.input_shape,
                                                   conf.retrain["batch_size"])
    tab = tables[s.hw_metric]
    ref = hardware.uniform_cost(cells, tab)

    def penalised(c):
      cost = hardware.genotype_cost(cells, c[0], tab)
      pen = (cost / ref if s.hw_budget is None else max(0.0, cost - s.hw_budget) / s.hw_budget)
      return (1.0 - c[1]) + s.hw_penalty * pen

    geno, selection = min(cands, key=penalised)[0], f"penalised {s.hw_metric}"
  mo = _fallback_front(store, study_id, objs) if m > 1 else {}
  return {**mo, "searcher": fb["searcher"], "trials": number - 1, "genotype": geno,
          "selection": selection,
          "best_trial": None if best is None else best[2],
          "best_valid_acc": None if best is None else best[1],
          "gradient_genotype": str(res["genotype"]), "next_round": rnd}


def _fallback_front(store: Any, study_id: int, objs: list[str]) -> dict[str, Any]:
  """The fallback candidates' Pareto front (accuracy up, costs down) and its hypervolume."""
  from metaopt._src.multiobjective import hypervolume
  pts = [t for t in store.trials(study_id)
         if t.params.get("role") == "fallback" and t.status == "complete" and t.values
         and len(t.values) == len(objs) and all(v is not None for v in t.values)]
  if not pts:
    return {}
  y = np.asarray([[-t.values[0], *t.values[1:]] for t in pts], np.float64)
  le = np.all(y[:, None] <= y[None], axis=-1) & np.any(y[:, None] < y[None], axis=-1)
  on = ~np.any(le, axis=0)
  ref = y.max(axis=0) + 0.1 * np.maximum(y.max(axis=0) - y.min(axis=0), 1e-12)
  front = [{"trial": t.number, "genotype": str(Genotype.from_json(t.params["genotype"])),
            "values": list(t.values)} for t, f in zip(pts, on, strict=True) if f]
  return {"objectives": objs, "pareto_front": sorted(front, key=lambda d: d["values"][1]),
          "hypervolume": hypervolume(y, ref), "reference_point": [-ref[0], *ref[1:].tolist()]}


def build_model(space: CellSpace, model: Mapping[str, int], num_classes: int,
                genotype: Genotype | None = None) -> Network:
  """The supernet of ``space`` sized by ``model`` (``features``, ``n_cells``,
  ``partial_k``), or with ``genotype`` the discrete network of that cell (no partial
  channels). Keys left out of ``model`` take the config defaults (``features`` 8,
  ``n_cells`` 1, ``stages`` 2, ``stem_stride`` 2, ``partial_k`` 1, ``head`` ``"mean"``)."""
  bad = sorted(set(model) - set(_MODEL_DEFAULTS))
  if bad:
    raise ValueError(f"model: unknown key(s) {bad}; allowed: {sorted(_MODEL_DEFAULTS)}")
  model = {**_MODEL_DEFAULTS, **model}
  return Network(space, features=model["features"], n_cells=model["n_cells"],
                 num_classes=num_classes, partial_k=model["partial_k"] if genotype is None else 1,
                 genotype=genotype, stem_stride=model["stem_stride"], stages=model["stages"],
                 head=model.get("head", "mean"))


def make_program(space: CellSpace, model: Network, settings: SearchSettings, data: Dataset,
                 batch_size: int) -> tuple[NASProgram, dict[str, Any]]:
  """The search program and the supernet's cost tables (params, flops; latency if asked)."""
  check_cell_data(data)
  x0 = jnp.asarray(data.train.x[:batch_size])
  mixing = make_mixing(settings)
  p0 = model.init(jax.random.key(0), x0[:2], space.to_weights(space.random(
      np.random.default_rng(0))))
  tables = hardware.cost_tables(model, p0, data.input_shape)
  if settings.hw_metric == "latency" and settings.hw_penalty > 0:
    tables["latency"] = hardware.latency_table(model, data.input_shape, batch_size)
  table = tables.get(settings.hw_metric)
  return make_search(model, settings, x0, mixing, table), tables


def search(program: NASProgram, data: Dataset, *, epochs: int, batch_size: int, seed: int,
           safeguard: safeguards.SafeguardSettings,
           on_epoch: Callable[[int, dict, str | None], None] | None = None) -> dict[str, Any]:
  """Runs the bilevel search epoch by epoch with the collapse safeguards.

  Returns the derived ``genotype``, final ``alpha``, per-epoch ``history`` (each epoch's
  ``seconds`` included) and ``genotypes`` (the cell derived after each epoch), ``collapsed``
  and ``collapse_reason``, ``stopped_epoch``, ``seconds`` (compilation excluded) and
  ``compile_seconds``. ``safeguard_epoch`` is the epoch at which a safeguard first fired (None
  if none did), ``safeguard_genotype`` and ``safeguard_seconds`` the cell and search time of
  the search that stops there: with ``safeguard.enabled=False`` the search runs all
  ``epochs`` and reports both the full and the safeguarded outcome.
  """
  space = program.model.space
  xt, yt = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
  xv, yv = jnp.asarray(data.valid.x), jnp.asarray(data.valid.y)
  steps = max(1, len(data.train) // batch_size)
  key = jax.random.key(seed)
  k_init, key = jax.random.split(key)

  def run_epoch(state, it, iv, k):
    def body(st, inp):
      a, b, kk = inp
      return program.step(st, (xt[a], yt[a]), (xv[b], yv[b]), kk)
    return jax.lax.scan(body, state, (it, iv, jax.random.split(k, it.shape[0])))

  n_eig = min(len(data.valid), 256)
  eig_fn = jax.jit(lambda p, a, k: safeguards.dominant_eigenvalue(
      lambda a_: program.val_loss(p, a_, (xv[:n_eig], yv[:n_eig])), a, k, safeguard.eig_iters))
  t0 = time.perf_counter()
  # compiled once per process for the same program, data and shapes (a re-run, or another
  # seed or safeguard setting, compiles nothing; see compile_cache)
  same = (program, xt, yt, xv, yv, batch_size, steps)
  state = compile_cache.cached(lambda: jax.jit(program.init), "nas-init", program)(k_init)
  idx_t = jnp.asarray(batch_indices(len(data.train), batch_size, steps, seed * 1000))
  idx_v = jnp.asarray(batch_indices(len(data.valid), batch_size, steps, seed * 1000 + 1))
  epoch_c = compile_cache.cached(
      lambda: jax.jit(run_epoch).lower(state, idx_t, idx_v, key).compile(), "nas-epoch", *same)
  eig_c = compile_cache.cached(
      lambda: eig_fn.lower(state.params, state.alpha, key).compile(), "nas-eig", *same,
      safeguard.eig_iters)
  compile_s = time.perf_counter() - t0
  history: list[dict[str, Any]] = []
  alphas = [{c: np.asarray(a) for c, a in state.alpha.items()}]  # [0] = before the search
  collapsed, reason, seconds, stopped = False, None, 0.0, epochs - 1
  fired, guard_alpha, guard_s, genos = None, None, 0.0, []
  for e in range(epochs):
    key, k_ep, k_eig = jax.random.split(key, 3)
    idx_t = jnp.asarray(batch_indices(len(data.train), batch_size, steps, seed * 1000 + 2 * e))
    idx_v = jnp.asarray(batch_indices(len(data.valid), batch_size, steps,
                                      seed * 1000 + 2 * e + 1))
    t0 = time.perf_counter()
    state, tel = epoch_c(state, idx_t, idx_v, k_ep)
    eig = float(eig_c(state.params, state.alpha, k_eig))
    jax.block_until_ready(state)
    epoch_s = time.perf_counter() - t0
    seconds += epoch_s
    alpha = {c: np.asarray(a) for c, a in state.alpha.items()}
    alphas.append(alpha)
    geno = derive(space, alpha)
    genos.append(geno)
    rec = {k: float(np.mean(v)) for k, v in tel.items()}
    rec.update({
        "val_acc_last": float(np.asarray(tel["val_acc"])[-max(1, steps // 4):].mean()),
        "skip_count": count_ops(geno), "eigenvalue": eig,
        "entropy": float(safeguards.entropy(state.alpha)),
        "arch_weights": {c: np.round(np.asarray(jax.nn.softmax(a, -1)), 4).tolist()
                         for c, a in alpha.items()},
        "genotype": str(geno),
        "tau": float(temperature(program.settings, state.step)),
        "seconds": epoch_s,
    })
    history.append(rec)
    why, back = safeguards.check(history, safeguard)
    if on_epoch is not None:
      on_epoch(e, rec, why if not collapsed else None)
    if why is not None and not collapsed:
      collapsed, reason, fired, guard_s = True, why, e, seconds
      guard_alpha = alphas[max(0, len(alphas) - 1 - back)]  # the initial logits at worst
      if safeguard.enabled:
        stopped, alpha = e, guard_alpha
        break
  geno = derive(space, alpha)
  return {"genotype": geno, "alpha": alpha, "history": history, "collapsed": collapsed,
          "collapse_reason": reason, "stopped_epoch": stopped, "seconds": seconds,
          "compile_seconds": compile_s, "state": state, "safeguard_epoch": fired,
          "safeguard_genotype": geno if fired is None else derive(space, guard_alpha),
          "safeguard_seconds": seconds if fired is None else guard_s, "genotypes": genos}


def validate(cfg: Any) -> NASConfig:
  """Checks a ``program = "nas"`` config (one ``ValueError`` naming the field)."""
  return parse_config(cfg)


def run_config(cfg: Any, store: Any, progress: bool = True) -> Result:
  """Runs a NAS config (search, retrain, test once) and records it in ``store``; the
  :class:`Result`'s ``info`` holds the genotype, its costs and accuracies."""
  from metaopt._src.provenance import code_version
  from metaopt._src.provenance import hardware as hw_info

  conf = parse_config(cfg)
  data = load_nas_dataset(conf.dataset)
  s = conf.settings
  bs = conf.search["batch_size"]
  steps = max(1, len(data.train) // bs)
  s = dataclasses.replace(s, total_steps=max(1, steps * conf.search["epochs"]))
  model = build_model(conf.space, conf.model, data.num_classes)
  program, tables = make_program(conf.space, model, s, data, bs)
  rec = store.create_study(conf.name, direction="maximize", config=conf.raw, seed=conf.seed,
                           code_version=code_version(), data_version=data.data_version,
                           hardware=hw_info())
  params = {"role": "search", "method": s.method, "order": s.order, "hessian": s.hessian,
            "space": conf.raw.get("space", "nb201_mini"), "partial_k": conf.model["partial_k"],
            "hpo": s.hpo, "ops": list(conf.space.ops)}
  (tid,) = store.start_round(rec.id, 0, [{"number": 0, "params": params, "seed": conf.seed}],
                             b"")

  def on_epoch(e, r, why):
    if progress:
      print(f"[search] epoch {e}: val_acc={r['val_acc']:.3f} skip={r['skip_count']} "
            f"eig={r['eigenvalue']:.4g} entropy={r['entropy']:.3f} {r['genotype']}",
            flush=True)
    store.record_epoch([tid], e, [r])
    if why is not None:
      store.log_event(rec.id, "collapse", why)

  res = search(program, data, epochs=conf.search["epochs"], batch_size=bs, seed=conf.seed,
               safeguard=conf.safeguard, on_epoch=on_epoch)
  geno = res["genotype"]
  last = res["history"][-1]
  store.end_round(rec.id, 0, [(tid, "complete", last["val_acc_last"], None)], b"",
                  duration_s=res["seconds"])
  nonfinite = [e for e, h in enumerate(res["history"])
               if not all(np.isfinite(h[k]) for k in ("val_loss", "train_loss") if k in h)]
  untrusted = (f"non-finite search loss at epoch {nonfinite[0]}" if nonfinite
               else res["collapse_reason"])
  rnd = 1
  fb_out = None
  always = conf.fallback.get("when") == "always"
  if (untrusted is not None or always) and conf.fallback["searcher"] != "none":
    name = conf.fallback["searcher"]
    why = (f"architecture gradients untrusted ({untrusted})" if untrusted is not None
           else "fallback.when='always'")
    store.log_event(rec.id, "switch", f"gradient NAS -> {name}: {why}; black-box search "
                    f"goes on over the same cell space from the {len(res['history'])} "
                    "genotypes the search derived")
    plain = build_model(conf.space, {**conf.model, "partial_k": 1}, data.num_classes)
    fb_out = blackbox_fallback(conf, plain, data, res, store, rec.id, progress, tables)
    geno, rnd = fb_out["genotype"], fb_out["next_round"]
  out: dict[str, Any] = {
      "study": conf.name, "store": store.url, "method": s.method, "order": s.order,
      "genotype": str(geno), "genotype_json": geno.to_json(), "collapsed": res["collapsed"],
      "collapse_reason": res["collapse_reason"], "stopped_epoch": res["stopped_epoch"],
      "search_seconds": res["seconds"], "skip_count": count_ops(geno),
      "eigenvalue": last["eigenvalue"], "final_lr": last["learning_rate"],
      "final_wd": last["weight_decay"],
      "expected_params": hardware.genotype_cost(conf.space, geno, tables["params"]),
      "expected_flops": hardware.genotype_cost(conf.space, geno, tables["flops"]),
      "untrusted": untrusted, "fallback": fb_out and {k: v for k, v in fb_out.items()
                                                      if k != "genotype"},
  }
  n_seeds = conf.retrain["seeds"]
  if n_seeds:
    seeds = [conf.seed * 100 + i for i in range(n_seeds)]
    first = 1 + (fb_out["trials"] if fb_out else 0)
    ids = store.start_round(rec.id, rnd, [
        {"number": first + i, "params": {"role": "retrain", "genotype": geno.to_json()},
         "seed": sd} for i, sd in enumerate(seeds)], b"")
    derived = build_model(conf.space, conf.model, data.num_classes, geno)

    def on_retrain(e, va, tl):
      if progress:
        print(f"[retrain] epoch {e}: valid_acc={np.round(va, 3).tolist()}", flush=True)
      store.record_epoch(ids, e, [{"valid_acc": float(a), "train_loss": float(b)}
                                  for a, b in zip(va, tl, strict=True)])

    tr = train_networks(derived, data, seeds, epochs=conf.retrain["epochs"],
                        batch_size=conf.retrain["batch_size"], lr=conf.retrain["lr"],
                        wd=conf.retrain["wd"], on_epoch=on_retrain)
    ep = conf.retrain["epochs"]
    store.record_epoch(ids, ep, [{"test_acc": float(t), "valid_acc": float(v[-1])}
                                 for t, v in zip(tr["test_acc"], tr["valid_acc"], strict=True)])
    store.end_round(rec.id, rnd, [(i, "complete", float(v[-1]), None)
                                for i, v in zip(ids, tr["valid_acc"], strict=True)], b"",
                    duration_s=tr["seconds"])
    p_one = jax.tree.map(lambda a: a[0], tr["params"])
    out.update({
        "retrain_seeds": seeds, "test_acc": [float(t) for t in tr["test_acc"]],
        "test_acc_mean": float(np.mean(tr["test_acc"])),
        "valid_acc": [float(v[-1]) for v in tr["valid_acc"]],
        "retrain_seconds": tr["seconds"], "derived_params": count_params(p_one),
        "search_cost_in_trainings": res["seconds"] / max(tr["seconds"] / n_seeds, 1e-9),
    })
  return Result(conf.name, "maximize", store.trials(rec.id), None, "nas", out)
