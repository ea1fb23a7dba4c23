"""metaopt command line: run, resume, report and evaluate searches.

    metaopt run --config metaopt:quickstart [--config.seed=3] [--config.task.max_width=64]
    metaopt run --config configs/quickstart.py          # a config file of your own
    metaopt resume --store sqlite:///runs/quickstart.db [--study quickstart]
    metaopt report --store sqlite:///runs/quickstart.db [--format json] [--out DIR]
    metaopt evaluate --store sqlite:///runs/quickstart.db [--top_k 3] [--seeds 3] [--ensemble]
    metaopt run --help                                   # flags and the config's fields

``--config metaopt:NAME`` is the bundled config ``NAME`` (:func:`config_path`); from a source
checkout ``python run.py ...`` is the same command.

    python run.py run --config configs/quickstart.py [--config.seed=3] [--worker]
    python run.py resume --store sqlite:///runs/quickstart.db [--study quickstart]
    python run.py report --store sqlite:///runs/quickstart.db [--format json] [--out DIR]
    python run.py evaluate --store sqlite:///runs/quickstart.db [--top_k 3] [--seeds 3]
                           [--ensemble]

A bad flag, config field, config file or store prints one ``error:`` line and exits with
code 2, before anything is written; ``report``, ``resume`` and ``evaluate`` never create a
store, and ``resume`` of a finished study prints its summary and writes nothing.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import sqlalchemy
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
_PROFILE = flags.DEFINE_bool("profile", False, "run/resume: print JAX compile seconds and XLA "
                             "compilations per function (to stderr) after the run.")
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


def _run(cfg) -> None:
  """Runs any program's config (``program``: search, whitebox, nas, lopt, repair)."""
  import metaopt
  from metaopt._src import compile_cache

  kwargs = {}
  if metaopt.program_of(cfg) == "search":
    cfg = metaopt.validate_config(cfg)
    kwargs = {"worker": _WORKER.value, "worker_id": _WORKER_ID.value,
              "stale_after_s": _STALE.value}
  before, t0 = compile_cache.snapshot(), time.time()
  result = metaopt.run_config(cfg, _STORE.value, progress=not _QUIET.value, **kwargs)
  print(json.dumps(result.summary(), indent=2, default=str))
  if _PROFILE.value:
    print(compile_cache.profile_text(before, time.time() - t0), file=sys.stderr)


def _report(store_url: str, study: str | None) -> None:
  import metaopt

  summary, result = metaopt.study_report(metaopt.Store(store_url, create=False), study,
                                         _OUT.value)
  if _FORMAT.value == "json":
    print(json.dumps(summary, indent=2))
  else:
    print(metaopt.report_text(summary, result))


def main(argv: list[str]) -> None:
  import metaopt

  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  metaopt.enable_compilation_cache()  # kernels compiled by one run are reused by the next
  args = argv[1:]
  if len(args) != 1 or args[0] not in COMMANDS:
    _fail(f"expected one command, one of {', '.join(COMMANDS)}; got {args}")
  cmd = args[0]
  try:
    if cmd == "run":
      if _config_value() is None:
        _fail("run needs --config FILE.py or --config metaopt:NAME (bundled: "
              f"{', '.join(config_names())})")
      _apply_extra(_CONFIG.value)
      _run(_CONFIG.value)
      return
    if not _STORE.value:
      _fail(f"{cmd} needs --store URL")
    if cmd == "resume":
      _resume(_STORE.value, _STUDY.value)
    elif cmd == "evaluate":
      store = metaopt.Store(_STORE.value, create=False)
      if store.read_only:
        _fail(f"store {_STORE.value!r} is read-only; evaluate records its results there")
      print(json.dumps(metaopt.evaluate_study(store, _STUDY.value, k=_TOP_K.value,
                                              seeds=_SEEDS.value, ensemble=_ENSEMBLE.value),
                       indent=2))
    else:
      _report(_STORE.value, _STUDY.value)
  except ValueError as e:
    _fail(" ".join(str(e).split()))
  except sqlalchemy.exc.SQLAlchemyError as e:  # e.g. the store's server went away
    _fail(f"store {_STORE.value or ''}: {' '.join(str(e).split('[SQL:')[0].split())}")
  except OSError as e:  # a config file that does not exist or does not load
    _fail(" ".join(str(e).split()))


def _resume(url: str, study: str | None) -> None:
  """Resumes a stored study; a finished one is only read (its summary printed)."""
  import metaopt
  from metaopt._src.programs import NOT_RESUMABLE, made_by_search_call

  store = metaopt.Store(url, create=False)
  rec = store.load_study(study)
  if metaopt.study_finished(store, rec):  # nothing to do, and nothing written
    print(json.dumps(metaopt.Result(rec.name, rec.direction,
                                    store.trials(rec.id)).summary(), indent=2))
    return
  program = rec.config.get("program", "search")
  if program in NOT_RESUMABLE:
    _fail(f"study {rec.name!r} ran program {program!r}, which cannot be resumed (it starts "
          "afresh); `report` shows what it recorded: run its config again with a new "
          "--config.name")
  if rec.config.get("kind") == "study":
    _fail(f"study {rec.name!r} was made in Python by metaopt.create_study; its objective is "
          f"Python code: continue it with metaopt.load_study({rec.name!r}, store)")
  if made_by_search_call(rec.config):
    _fail(f"study {rec.name!r} was run in Python by metaopt.search, and no config names its "
          "task: continue it by calling metaopt.search again with the same store and "
          f"study={rec.name!r}")
  if store.read_only:
    _fail(f"store {url!r} is read-only; resuming records trials there")
  store.close()
  _run({**rec.config, "store": url})


def _config_value() -> Any:
  """The loaded ``--config``; exits with one line naming the file when it did not load."""
  try:
    cfg = _CONFIG.value
    if cfg is not None:
      "method" in cfg  # noqa: B015 - a config that failed to load raises on first use
    return cfg
  except Exception as e:  # noqa: BLE001 - ml_collections raises several error types
    _fail(_flag_error(e, sys.argv))


def _config_reason(e: BaseException) -> str:
  """One line on why a config file did not load."""
  msg = str(e)
  if "No such file or directory" in msg or isinstance(e, FileNotFoundError):
    return "no such file"
  if isinstance(e, SyntaxError):
    return f"invalid Python: {e.msg} (line {e.lineno})"
  lines = [x.strip() for x in msg.replace("\\n", "\n").splitlines() if x.strip()]
  return lines[-1] if lines else type(e).__name__


def _parse(argv: list[str]) -> list[str]:
  """Flag parsing with one clear line for a bad flag, config field or config file."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl/ml_collections raise several error types
    _fail(_flag_error(e, argv))
  return []


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One line for an error raised while parsing ``argv``."""
  from metaopt import CONFIG_FIELDS
  allowed = f"allowed fields: {', '.join(sorted(CONFIG_FIELDS))}"
  name = getattr(e, "flagname", None)
  if isinstance(e, flags.UnrecognizedFlagError) and name and name.startswith("config."):
    return f"unknown field {name[len('config.'):]} in --config; {allowed}"
  overrides = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    e = e.args[0]  # ml_collections wraps the KeyError of an unknown field
  if isinstance(e, KeyError) and overrides:  # an override of no field
    first, *rest = (str(e.args[0]) if e.args else "").splitlines() or [""]
    key = first.strip("'\"")
    field = next((o for o in overrides if key in o.split(".")), key)
    hint = re.search(r'Did you mean "([^"]+)"', " ".join(rest))
    hint = f" (did you mean {hint.group(1)}?)" if hint else ""
    return f"unknown field {field} in --config{hint}; {allowed}"
  msg = " ".join(str(e).split())
  if isinstance(e, flags.IllegalFlagValueError) and msg.startswith("flag --config."):
    field = msg[len("flag --config."):].split("=")[0]
    why = msg.split(": ", 1)[1] if ": " in msg else msg
    return f"bad value for config field {field}: {why}"
  config_file = isinstance(e, flags.IllegalFlagValueError) and msg.startswith("flag --config=")
  if config_file or not isinstance(e, flags.Error):  # raised while loading the config file
    path = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config=")),
                None)  # absl keeps the last
    if path is None and "--config" in argv[:-1]:
      path = argv[argv.index("--config") + 1]
    return f"config file {path}: {_config_reason(e)}"
  return f"bad flag: {msg}"


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
  from metaopt import CONFIG_FIELDS as FIELDS
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
