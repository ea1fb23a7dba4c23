"""metaopt command line: run, resume, report and evaluate searches.

    metaopt run --config metaopt:quickstart [--config.seed=3] [--config.task.max_width=64]
    metaopt run --config configs/quickstart.py          # a config file of your own
    metaopt resume --store sqlite:///runs/quickstart.db [--study quickstart]
    metaopt report --store sqlite:///runs/quickstart.db [--format json] [--out DIR]
    metaopt evaluate --store sqlite:///runs/quickstart.db [--top_k 3] [--seeds 3] [--ensemble]
    metaopt run --help                                   # flags and the config's fields

``--config metaopt:NAME`` is the bundled config ``NAME`` (:func:`config_path`); from a source
checkout ``python run.py ...`` is the same command.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("run", "resume", "report", "evaluate")

BUNDLED = "metaopt:"  # --config metaopt:NAME names a config shipped with the package

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config file (a .py with get_config()), or metaopt:NAME for a bundled one "
    "(metaopt:quickstart); override fields with --config.FIELD=VALUE, nested ones with "
    "--config.task.FIELD=VALUE", lock_config=True)
_STORE = flags.DEFINE_string("store", None, "SQLAlchemy URL of the trial store (resume/report).")
_STUDY = flags.DEFINE_string("study", None, "Study name (default: the only one in the store).")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Report format.")
_OUT = flags.DEFINE_string("out", None, "Report directory (default: report_<study> beside the "
                           "store's SQLite file; runs/report_<study> for a server store).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "evaluate: how many of the best configurations.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "evaluate: fresh seeds per configuration.")
_WORKER = flags.DEFINE_bool("worker", False, "run/resume: be one of several worker processes "
                            "sharing the study (rounds leased from the store).")
_WORKER_ID = flags.DEFINE_string("worker_id", None, "worker name in the store.")
_STALE = flags.DEFINE_float("stale_after_s", 60.0, "worker: take over a round whose heartbeat "
                            "is older than this.")
_ENSEMBLE = flags.DEFINE_bool("ensemble", False, "evaluate: also average the top-k models' "
                              "predicted probabilities and report the ensemble's accuracy.")


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _search(cfg: dict) -> None:
  import metaopt
  from metaopt._src import config as config_lib

  program, task, space, kwargs = config_lib.build(cfg)
  store = metaopt.Store(cfg["store"])
  if _WORKER.value:
    result = metaopt.worker(program, task, space=space, store=store, config=cfg,
                            progress=not _QUIET.value, worker_id=_WORKER_ID.value,
                            stale_after_s=_STALE.value, **kwargs)
  else:
    result = metaopt.search(program, task, space=space, store=store, config=cfg,
                            progress=not _QUIET.value, **kwargs)
  print(json.dumps(result.summary(), indent=2))


def _study_task(cfg: dict) -> tuple[Any, Any]:
  """``(task, space)`` of a study, built once from its config; None where it does not say."""
  from spaces import from_spec
  from tasks import get_task
  try:
    task = get_task(cfg["task_name"], **cfg.get("task", {}))
  except (KeyError, TypeError, ValueError):
    task = None
  try:
    space = from_spec(cfg["space"]) if cfg.get("space") else getattr(task, "space", None)
  except (KeyError, TypeError, ValueError):
    space = None
  return task, space


def _live_weights(task: Any, space: Any, trials: list) -> tuple[str, dict[int, float]] | None:
  """Live weights of every complete trial's model, when the study's config names a task."""
  if task is None:
    return None
  from metaopt import param_counter
  try:
    count = param_counter(task, space)
    return "live weights", {t.number: float(count(t.params)) for t in trials
                            if t.status == "complete" and t.objective is not None}
  except (KeyError, TypeError, ValueError):
    return None


def _sqlite_path(url: str) -> str | None:
  """The file of a ``sqlite:///PATH`` store URL (None for other stores and in-memory ones)."""
  if not url.startswith("sqlite:///"):
    return None
  path = url[len("sqlite:///"):].split("?")[0]
  return None if path in ("", ":memory:") else path


def _existing_store(url: str, cmd: str) -> str:
  """``url``, or one error line when it names a SQLite file that does not exist (nothing is
  created)."""
  path = _sqlite_path(url)
  if path is not None and not os.path.isfile(path):
    _fail(f"{cmd}: no store at {path} (--store {url}); run a search first")
  return url


def _report(store_url: str, study: str | None) -> None:
  import metaopt
  from metaopt._src.report import compute_summary, param_importance, pareto_front, write_report

  store = metaopt.Store(store_url)
  rec = store.load_study(study)
  result = metaopt.Result(rec.name, rec.direction, store.trials(rec.id))
  out = _OUT.value or os.path.join(os.path.dirname(_sqlite_path(store_url) or "runs/x"),
                                   f"report_{rec.name}")
  summary = result.summary()
  task, space = _study_task(rec.config)
  costs = _live_weights(task, space, result.trials)
  paths = write_report(result, out, {"code version": rec.code_version,
                                     "data version": rec.data_version,
                                     "hardware": rec.hardware, "seed": rec.seed},
                       coords=None if space is None else space.names,
                       events=store.events(rec.id), costs=costs, space=space)
  summary["plot"] = paths["history"]
  summary["html"] = paths["html"]
  summary["plots"] = paths
  summary["importance"] = param_importance(result)
  summary["pareto_front"] = pareto_front(result, costs)
  comp = compute_summary(result)
  summary["compute"] = {k: v for k, v in comp.items() if k != "per_trial"}
  summary["events"] = store.events(rec.id)
  summary["data_version"] = rec.data_version
  summary["code_version"] = rec.code_version
  if _FORMAT.value == "json":
    print(json.dumps(summary, indent=2))
    return
  print(f"study {rec.name}: {summary['n_trials']} trials, {summary['n_complete']} complete, "
        f"{summary['n_failed']} failed, {summary['n_pruned']} pruned ({rec.direction})")
  b = summary["best"]
  if b:
    print(f"best trial #{b['number']}: objective {b['objective']:.4f} params {b['params']}")
  for t in sorted(result.trials, key=lambda t: (t.objective is None, -(t.objective or 0)
                                                if rec.direction == "maximize"
                                                else (t.objective or 0)))[:10]:
    obj = "-" if t.objective is None else f"{t.objective:.4f}"
    print(f"  #{t.number:<4d} {t.status:<9s} {obj:>8s}  {t.failure_reason or ''} {t.params}")
  c = summary["compute"]
  print(f"compute: {c['total_flops'] / 1e9:.2f} GFLOPs, {c['total_device_seconds']:.2f} "
        "device-seconds")
  print(f"report: {summary['html']}")


def _whitebox(cfg) -> None:
  import metaopt
  from metaopt._src.whitebox import run_whitebox

  url = _STORE.value or f"sqlite:///runs/{cfg.name}.db"
  print(json.dumps(run_whitebox(cfg, metaopt.Store(url)), indent=2))


# configs with a ``program`` field are run by that package's ``run_config(cfg, store, progress)``.
PROGRAMS = {"nas": "metaopt.nas", "lopt": "metaopt.lopt", "repair": "metaopt.repair"}


def _program(cfg) -> None:
  import importlib

  import metaopt

  name = cfg["program"]
  if name not in PROGRAMS:
    _fail(f"config field 'program' must be one of {', '.join(PROGRAMS)}; got {name!r}")
  url = _STORE.value or cfg.get("store") or f"sqlite:///runs/{cfg.name}.db"
  run_config = importlib.import_module(PROGRAMS[name]).run_config
  print(json.dumps(run_config(cfg, metaopt.Store(url), progress=not _QUIET.value), indent=2,
                   default=str))


def _evaluate(store_url: str, study: str | None) -> None:
  import metaopt
  from metaopt._src import config as config_lib
  from metaopt._src.evaluate import evaluate_top

  store = metaopt.Store(store_url)
  rec = store.load_study(study)
  _, task, space, _ = config_lib.build({**rec.config, "store": store_url})
  out = evaluate_top(store, rec.name, task, space, k=_TOP_K.value, seeds=_SEEDS.value,
                     ensemble=_ENSEMBLE.value)
  print(json.dumps(out, indent=2))


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  from metaopt._src.driver import enable_compilation_cache
  enable_compilation_cache()  # kernels compiled by one run are reused by the next
  args = argv[1:]
  if len(args) != 1 or args[0] not in COMMANDS:
    _fail(f"expected one command, one of {', '.join(COMMANDS)}; got {args}")
  cmd = args[0]
  try:
    if cmd == "run":
      if _CONFIG.value is None:
        _fail("run needs --config FILE.py or --config metaopt:NAME (bundled: "
              f"{', '.join(config_names())})")
      _apply_extra(_CONFIG.value)
      if "method" in _CONFIG.value and "problem_name" in _CONFIG.value:
        _whitebox(_CONFIG.value)  # a configs/hypergrad_*.py gradient-HPO config
        return
      if "program" in _CONFIG.value:
        _program(_CONFIG.value)  # NAS, learned-optimizer and repair configs
        return
      from metaopt._src import config as config_lib
      _search(config_lib.validate(_CONFIG.value))
    elif cmd == "resume":
      if not _STORE.value:
        _fail("resume needs --store URL")
      _existing_store(_STORE.value, "resume")
      import metaopt
      rec = metaopt.Store(_STORE.value).load_study(_STUDY.value)
      cfg = {k: v for k, v in rec.config.items()}
      for k in ("n_trials", "population", "epochs", "batch_size", "seed"):
        cfg[k] = rec.config[k]
      cfg["store"] = _STORE.value
      _search(cfg)
    elif cmd == "evaluate":
      if not _STORE.value:
        _fail("evaluate needs --store URL")
      _existing_store(_STORE.value, "evaluate")
      _evaluate(_STORE.value, _STUDY.value)
    else:
      if not _STORE.value:
        _fail("report needs --store URL")
      _existing_store(_STORE.value, "report")
      _report(_STORE.value, _STUDY.value)
  except ValueError as e:
    _fail(str(e))
  except OSError as e:  # a config file that does not exist or does not load
    _fail(" ".join(str(e).split()))


def _parse(argv: list[str]) -> list[str]:
  """Flag parsing with one clear line for a bad flag or config override (no traceback)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl/ml_collections raise several error types
    msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "").replace("'", "").split())
    if any(a.startswith("--config.") for a in argv):
      from metaopt._src.config import FIELDS
      msg += f" (config fields: {', '.join(sorted(FIELDS))})"
    _fail(f"bad flag: {msg.strip(chr(34))}")
  return []


def config_names() -> list[str]:
  """Names of the bundled configs (``metaopt:NAME``)."""
  import importlib.resources
  root = importlib.resources.files("metaopt.configs")
  return sorted(p.name[:-3] for p in root.iterdir()
                if p.name.endswith(".py") and not p.name.startswith("_"))


def config_path(name: str) -> str:
  """The file of the bundled config ``name`` (e.g. ``"quickstart"``), for ``--config``."""
  import importlib.resources
  name = name.removeprefix(BUNDLED).removesuffix(".py")
  names = config_names()
  if name not in names:
    raise ValueError(f"config {name!r} is not bundled; bundled configs: {', '.join(names)}")
  return str(importlib.resources.files("metaopt.configs") / f"{name}.py")


def _resolve_configs(argv: list[str]) -> list[str]:
  """``--config metaopt:NAME`` / ``--config=metaopt:NAME`` become the bundled file's path."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config=" + BUNDLED):
      out[i] = "--config=" + config_path(a.split("=", 1)[1])
    elif a == "--config" and i + 1 < len(out) and out[i + 1].startswith(BUNDLED):
      out[i + 1] = config_path(out[i + 1])
  return out


def _config_file(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(path: str) -> Any:
  """The ConfigDict that the config file ``path`` returns (None where it does not load)."""
  import importlib.util
  try:
    spec = importlib.util.spec_from_file_location("_metaopt_help_config", path.split(":")[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
  except Exception:  # noqa: BLE001 - help and overrides fall back to the plain flags
    return None


def _flat(cfg: Any, prefix: str = "") -> list[tuple[str, Any, bool]]:
  """``(dotted name, value, is_dict)`` for every field of a ConfigDict, nested ones expanded."""
  out = []
  for k, v in cfg.items():
    is_dict = hasattr(v, "items")
    out.append((prefix + k, v, is_dict))
    if is_dict:
      out += _flat(v, f"{prefix}{k}.")
  return out


def _help(argv: list[str]) -> None:
  """Usage, flags and the fields of the config (``--config``, else the bundled quickstart)."""
  from metaopt._src.config import FIELDS
  print(__doc__.strip())
  print("\ncommands: " + ", ".join(COMMANDS))
  print("\nflags:")
  for f in sorted(flags.FLAGS.get_flags_for_module(__name__), key=lambda f: f.name):
    print(f"  --{f.name}: {' '.join(f.help.split())}" + (
        f" (default {f.default!r})" if f.default not in (None, "") else ""))
  path = _config_file(argv) or config_path("quickstart")
  cfg = _load_config(path)
  if cfg is not None:
    print(f"\nconfig fields of {path} (set with --config.FIELD=VALUE; nested fields, and new "
          "keys of the task/searcher/pruner keyword dicts, with --config.task.FIELD=VALUE):")
    for name, value, is_dict in _flat(cfg):
      what = FIELDS.get(name, "")
      shown = "{...}" if is_dict and len(value) else repr(value.to_dict() if is_dict else value)
      print(f"  {name} = {shown}" + (f"    # {what}" if what else ""))
  print("\nbundled configs (--config metaopt:NAME): " + ", ".join(config_names()))


# --config.<dict field>.<key>=VALUE where <key> is not yet in that dict (e.g. a task factory's
# keyword argument): applied after flag parsing, the value read as a Python literal.
_EXTRA: list[tuple[str, Any]] = []


def _literal(text: str) -> Any:
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _split_new_keys(argv: list[str]) -> list[str]:
  """Takes out the ``--config.a.b=v`` whose key ``b`` is new to an existing dict field ``a``."""
  path = _config_file(argv)
  cfg = _load_config(path) if path else None
  if cfg is None:
    return argv
  known = {name: is_dict for name, _, is_dict in _flat(cfg)}
  out = []
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      name, value = a[len("--config."):].split("=", 1)
      parent = name.rpartition(".")[0]
      if name not in known and known.get(parent):
        _EXTRA.append((name, _literal(value)))
        continue
    out.append(a)
  return out


def _apply_extra(cfg: Any) -> None:
  for name, value in _EXTRA:
    *parents, key = name.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[key] = value


def console_main(argv: list[str] | None = None) -> None:
  """Entry point of the ``metaopt`` command (and of ``python run.py``)."""
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = _resolve_configs(argv)
  except ValueError as e:
    _fail(str(e))
  if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in argv[1:]):
    _help(argv)
    sys.exit(0)
  argv = _split_new_keys(argv)
  sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
  app.run(main, argv=argv, flags_parser=_parse)


if __name__ == "__main__":
  console_main()
