"""Experiment configs: validation and turning a config into a search, before anything compiles.

A config (``configs/<name>.py`` -> ``get_config()``) is an ``ml_collections.ConfigDict``
with exactly the fields of :data:`FIELDS`. :func:`validate` checks names, types and ranges
and raises one ``ValueError`` naming the field and the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaopt._src import registry
from metaopt._src.combinators import with_pruning
from metaopt._src.types import Result, Searcher
from metaopt.spaces import Space, from_spec
from metaopt.tasks import TASKS, Task, get_task

FIELDS: dict[str, str] = {
    "name": "study name in the store",
    "task_name": f"one of {', '.join(TASKS)}, or an import path 'my_module:my_task'",
    "task": "keyword arguments of the task factory",
    "searcher_name": f"one of {', '.join(registry.SEARCHERS)}",
    "searcher": "keyword arguments of the searcher factory",
    "pruner_name": f"'none' or one of {', '.join(registry.PRUNERS)}",
    "pruner": "keyword arguments of the pruner factory",
    "space": "search space spec {name: {type, ...}}; empty for the task's default space",
    "n_trials": "total number of trials (>= 1)",
    "population": "trials trained together in one kernel (>= 1)",
    "epochs": "epochs per trial (>= 1)",
    "batch_size": "minibatch size (>= 1)",
    "seed": "root random seed (integer)",
    "store": "SQLAlchemy URL of the trial store, e.g. sqlite:///runs/quickstart.db",
    "checkpoint_dir": "population checkpoints; empty for beside the store file",
    "shared_batches": "all trials of a population see the same minibatch order (bool)",
    "checkpoint_every_s": "seconds between population checkpoints in a round (0: every epoch)",
    "objectives": "several objectives [[name, 'maximize'|'minimize'], ...] (empty: the task's "
                  "one objective); names: flops, device_seconds, live_weights or an epoch "
                  "metric such as valid_accuracy",
    "mesh": "[pop, data] device mesh: trials over pop devices, each minibatch over data "
            "devices (pop * data divides the device count); empty for all devices over pop",
    "compute_dtype": "'float32' or 'bfloat16' (forward and backward pass; parameters float32)",
}


# Fields a config may leave out (and that older stored studies lack).
DEFAULTS: dict[str, Any] = {"checkpoint_dir": "", "shared_batches": True,
                            "checkpoint_every_s": 10.0, "objectives": []}
# Fields a config may leave out that are dropped at their default, so studies stored before
# they existed resume with the same config.
OPTIONAL: dict[str, Any] = {"mesh": [], "compute_dtype": "float32"}
_MULTI = ("nsga2", "motpe", "parego")  # searchers that take n_objectives


def _to_dict(x: Any) -> Any:
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return x


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
  """Checks a config and returns it as a plain dict; raises one ``ValueError`` on bad input."""
  cfg = _to_dict(config)
  if not isinstance(cfg, Mapping):
    raise ValueError(f"config: expected a ConfigDict or dict, got {type(config).__name__}")
  if cfg.get("program", "search") != "search":
    raise ValueError(f"program={cfg['program']!r}: this is the black-box search's config "
                     "(program 'search')")
  cfg = {k: v for k, v in cfg.items() if k != "program"}
  unknown = sorted(set(cfg) - set(FIELDS))
  if unknown:
    raise ValueError(f"config: unknown field(s) {unknown}; allowed fields: {sorted(FIELDS)}")
  cfg = {**DEFAULTS, **cfg}
  missing = sorted(set(FIELDS) - set(cfg) - set(OPTIONAL))
  if missing:
    what = "; ".join(f"{m}: {FIELDS[m]}" for m in missing)
    raise ValueError(f"config: missing field(s) {missing} ({what})")
  for f in ("task_name", "searcher_name", "pruner_name"):
    if not isinstance(cfg[f], str):
      raise ValueError(f"{f}={cfg[f]!r}: must be a string, {FIELDS[f]}")
  if cfg["task_name"] not in TASKS and ":" not in cfg["task_name"]:
    raise ValueError(f"task_name={cfg['task_name']!r} is unknown; allowed: {', '.join(TASKS)}, "
                     "or an import path 'my_module:my_task'")
  if cfg["searcher_name"] not in registry.SEARCHERS:
    raise ValueError(f"searcher_name={cfg['searcher_name']!r} is unknown; allowed: "
                     f"{', '.join(registry.SEARCHERS)}")
  if cfg["pruner_name"] not in ("none", *registry.PRUNERS):
    raise ValueError(f"pruner_name={cfg['pruner_name']!r} is unknown; allowed: none, "
                     f"{', '.join(registry.PRUNERS)}")
  for f in ("n_trials", "population", "epochs", "batch_size"):
    v = cfg[f]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{f}={v!r}: must be an integer >= 1 ({FIELDS[f]})")
  if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int):
    raise ValueError(f"seed={cfg['seed']!r}: must be an integer")
  if not isinstance(cfg["name"], str) or not cfg["name"]:
    raise ValueError(f"name={cfg['name']!r}: must be a non-empty string (the study name)")
  if not isinstance(cfg["store"], str) or "://" not in cfg["store"]:
    raise ValueError(f"store={cfg['store']!r}: must be an SQLAlchemy URL such as "
                     "sqlite:///runs/quickstart.db")
  for f in ("task", "searcher", "pruner", "space"):
    if not isinstance(cfg[f], Mapping):
      raise ValueError(f"{f}: must be a dict ({FIELDS[f]})")
    if not all(isinstance(k, str) for k in cfg[f]):
      raise ValueError(f"{f}: keys must be strings ({FIELDS[f]})")
  if not isinstance(cfg["checkpoint_dir"], str):
    raise ValueError(f"checkpoint_dir={cfg['checkpoint_dir']!r}: must be a string "
                     f"({FIELDS['checkpoint_dir']})")
  if not isinstance(cfg["shared_batches"], bool):
    raise ValueError(f"shared_batches={cfg['shared_batches']!r}: must be True or False")
  v = cfg["checkpoint_every_s"]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
    raise ValueError(f"checkpoint_every_s={v!r}: must be a number >= 0 "
                     f"({FIELDS['checkpoint_every_s']})")
  objs = cfg["objectives"]
  ok = isinstance(objs, (list, tuple)) and all(
      isinstance(o, (list, tuple)) and len(o) == 2 and isinstance(o[0], str) and o[0]
      and o[1] in ("maximize", "minimize") for o in objs)
  if not ok:
    raise ValueError(f"objectives={objs!r}: must be a list of [name, direction] pairs with "
                     f"direction 'maximize' or 'minimize' ({FIELDS['objectives']})")
  cfg["objectives"] = [[str(n), str(d)] for n, d in objs]
  mesh = cfg.get("mesh", [])
  if mesh is None or (isinstance(mesh, (list, tuple)) and len(mesh) == 0):
    cfg.pop("mesh", None)
  elif not (isinstance(mesh, (list, tuple)) and len(mesh) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in mesh)):
    raise ValueError(f"mesh={mesh!r}: must be [pop, data], two integers >= 1 ({FIELDS['mesh']})")
  else:
    cfg["mesh"] = [int(v) for v in mesh]
  dt = cfg.get("compute_dtype", "float32")
  if dt not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype={dt!r}: must be 'float32' or 'bfloat16' "
                     f"({FIELDS['compute_dtype']})")
  if dt == "float32":
    cfg.pop("compute_dtype", None)
  if cfg["space"]:
    from_spec(cfg["space"])
  return dict(cfg)


def build(config: Mapping[str, Any]) -> tuple[Searcher, Task, Space, dict[str, Any]]:
  """``(program, task, space, search_kwargs)`` for a validated config."""
  cfg = validate(config)
  try:
    task = get_task(cfg["task_name"], **cfg["task"])
  except TypeError as e:
    raise ValueError(f"task: bad option for task {cfg['task_name']!r}: {e}") from None
  space = from_spec(cfg["space"]) if cfg["space"] else task.space
  m = len(cfg["objectives"])
  opts = dict(cfg["searcher"])
  if m and cfg["searcher_name"] in _MULTI:
    opts.setdefault("n_objectives", m)
  program = _checked("searcher", cfg["searcher_name"], opts,
                     lambda: registry.make_searcher(cfg["searcher_name"], space.dim, **opts),
                     lambda p: _trace_searcher(p, min(cfg["population"], cfg["n_trials"]),
                                               m))
  if cfg["pruner_name"] != "none":
    pruner = _checked("pruner", cfg["pruner_name"], cfg["pruner"],
                      lambda: registry.make_pruner(cfg["pruner_name"], cfg["epochs"],
                                                   **cfg["pruner"]),
                      lambda p: _trace_pruner(p, cfg["population"], cfg["epochs"], m))
    program = with_pruning(program, pruner)
  kwargs = {k: cfg[k] for k in ("n_trials", "population", "epochs", "batch_size", "seed",
                                "shared_batches", "checkpoint_every_s")}
  kwargs["study"] = cfg["name"]
  kwargs["checkpoint_dir"] = cfg["checkpoint_dir"] or None
  if m:
    kwargs["objectives"] = [tuple(o) for o in cfg["objectives"]]
  if "mesh" in cfg:
    kwargs["mesh"] = tuple(cfg["mesh"])
  if "compute_dtype" in cfg:
    kwargs["compute_dtype"] = cfg["compute_dtype"]
  return program, task, space, kwargs


def _checked(field: str, name: str, options: Mapping[str, Any], make, trace):
  """Builds a searcher or pruner and traces its functions abstractly (no compilation), so
  bad options fail here with one ``ValueError`` instead of inside a compiled kernel later."""
  try:
    obj = make()
  except ValueError:
    raise
  except Exception as e:  # noqa: BLE001 - bad option values surface as many error types
    raise ValueError(f"{field} {name!r}: bad option value(s) {dict(options)}: "
                     f"{type(e).__name__}: {e}") from None
  try:
    trace(obj)
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{field} {name!r}: options {dict(options)} do not give a working "
                     f"{field}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
  return obj


def _trace_searcher(program: Searcher, n: int, m: int = 0) -> None:
  import jax
  import jax.numpy as jnp

  key = jax.random.key(0)
  state = jax.eval_shape(program.init, key)
  state, u = jax.eval_shape(lambda s, k: program.ask(s, k, n), state, key)
  jax.eval_shape(program.tell, state, u,
                 jax.ShapeDtypeStruct((n, m) if m else (n,), jnp.float32),
                 jax.ShapeDtypeStruct((n,), jnp.int32))


def _trace_pruner(pruner: Any, n: int, epochs: int, m: int = 0) -> None:
  import jax
  import jax.numpy as jnp

  if pruner.uses == "objectives" and not m:
    raise ValueError("this pruner ranks several objectives: declare objectives")
  shape = {"objective_history": (n, epochs), "objectives": (n, max(m, 1))}.get(pruner.uses, (n,))
  values = jax.ShapeDtypeStruct(shape, jnp.float32)
  jax.eval_shape(pruner.prune, jax.eval_shape(pruner.init), values,
                 jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((n,), jnp.bool_))


def run_config(config: Mapping[str, Any], store: Any, progress: bool = True, *,
               worker: bool = False, worker_id: str | None = None,
               stale_after_s: float = 60.0) -> Result:
  """Runs (or resumes) a black-box search config in ``store`` (a :class:`Store` or a URL,
  opened only after the task, space and settings are checked); with ``worker``, as one of
  several worker processes sharing the study."""
  from metaopt._src.driver import search
  from metaopt._src.worker import worker as run_worker

  cfg = validate(config)
  program, task, space, kwargs = build(cfg)
  if worker:
    if cfg["objectives"]:
      raise ValueError("objectives: workers run single-objective studies; run a study with "
                       "several objectives without --worker")
    return run_worker(program, task, space=space, store=store, config=cfg, progress=progress,
                      worker_id=worker_id, stale_after_s=stale_after_s, **kwargs)
  return search(program, task, space=space, store=store, config=cfg, progress=progress,
                **kwargs)
