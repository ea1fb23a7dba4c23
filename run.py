"""metaopt command line: run, resume and report searches.

    python run.py run --config configs/quickstart.py [--config.seed=3] [--worker]
    python run.py resume --store sqlite:///runs/quickstart.db [--study quickstart]
    python run.py report --store sqlite:///runs/quickstart.db [--format json] [--out DIR]
    python run.py evaluate --store sqlite:///runs/quickstart.db [--top_k 3] [--seeds 3]
                           [--ensemble]
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("run", "resume", "report", "evaluate")

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_STORE = flags.DEFINE_string("store", None, "SQLAlchemy URL of the trial store (resume/report).")
_STUDY = flags.DEFINE_string("study", None, "Study name (default: the only one in the store).")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Report format.")
_OUT = flags.DEFINE_string("out", None, "Report directory (default: runs/report_<study>).")
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


def _run(cfg) -> None:
  """Runs any program's config (``program``: search, whitebox, nas, lopt, repair)."""
  import metaopt

  kwargs = {}
  if metaopt.program_of(cfg) == "search":
    cfg = metaopt.validate_config(cfg)
    kwargs = {"worker": _WORKER.value, "worker_id": _WORKER_ID.value,
              "stale_after_s": _STALE.value}
  result = metaopt.run_config(cfg, _STORE.value, progress=not _QUIET.value, **kwargs)
  print(json.dumps(result.summary(), indent=2, default=str))


def _report(store_url: str, study: str | None) -> None:
  import metaopt

  summary, result = metaopt.study_report(metaopt.Store(store_url), study, _OUT.value)
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
      if _CONFIG.value is None:
        _fail("run needs --config configs/<name>.py")
      _run(_CONFIG.value)
      return
    if not _STORE.value:
      _fail(f"{cmd} needs --store URL")
    store = metaopt.Store(_STORE.value)
    if cmd == "resume":
      rec = store.load_study(_STUDY.value)
      _run({**rec.config, "store": _STORE.value})
    elif cmd == "evaluate":
      print(json.dumps(metaopt.evaluate_study(store, _STUDY.value, k=_TOP_K.value,
                                              seeds=_SEEDS.value, ensemble=_ENSEMBLE.value),
                       indent=2))
    else:
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
      from metaopt import CONFIG_FIELDS
      msg += f" (config fields: {', '.join(sorted(CONFIG_FIELDS))})"
    _fail(f"bad flag: {msg.strip(chr(34))}")
  return []


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
