"""Programs by name: every config names its program with one key, ``program``.

Each program module offers the same pair: ``validate(config)`` (one ``ValueError`` naming
the field and the allowed values, before anything compiles or is stored) and
``run_config(config, store, progress=True) -> Result``.

=========== ============================================ =====================================
program     module                                       what
=========== ============================================ =====================================
search      ``metaopt._src.config``                      black-box search (the default)
whitebox    ``metaopt._src.whitebox``                    gradient HPO (``hypergrad``)
nas         ``metaopt._src.nas.api``                     gradient NAS, retraining, test once
lopt        ``metaopt._src.lopt.program``                learned-optimizer training / apply
repair      ``metaopt._src.repair_run``                  the repair loop
=========== ============================================ =====================================
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from metaopt._src.store import Store, check_url
from metaopt._src.types import Result

PROGRAMS: dict[str, str] = {
    "search": "metaopt._src.config",
    "whitebox": "metaopt._src.whitebox",
    "nas": "metaopt._src.nas.api",
    "lopt": "metaopt._src.lopt.program",
    "repair": "metaopt._src.repair_run",
}


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
  try:
    return config[key]
  except (KeyError, AttributeError):
    return default


def program_of(config: Mapping[str, Any]) -> str:
  """The program a config names (``program``; ``"search"`` when it names none)."""
  name = _get(config, "program", "search")
  if name not in PROGRAMS:
    raise ValueError(f"config field 'program' must be one of {', '.join(PROGRAMS)}; "
                     f"got {name!r}")
  return name


def _module(config: Mapping[str, Any]):
  return importlib.import_module(PROGRAMS[program_of(config)])


def validate_config(config: Mapping[str, Any]) -> Any:
  """Checks any program's config (one ``ValueError`` naming the field)."""
  return _module(config).validate(config)


def default_store(config: Mapping[str, Any]) -> str:
  """The config's ``store``, else ``sqlite:///runs/<name>.db``."""
  return _get(config, "store") or f"sqlite:///runs/{_get(config, 'name', 'study')}.db"


def run_config(config: Mapping[str, Any], store: Store | str | None = None, *,
               progress: bool = True, **kwargs: Any) -> Result:
  """Validates and runs any program's config into ``store`` (default: the config's, else
  ``sqlite:///runs/<name>.db``); ``kwargs`` go to the program (search: ``worker``,
  ``worker_id``, ``stale_after_s``)."""
  module = _module(config)
  module.validate(config)
  url = store if isinstance(store, Store) else store or default_store(config)
  if program_of(config) == "search" and isinstance(url, str) and url.startswith("sqlite:"):
    check_url(url)  # a bad URL: one error before the task is built or anything compiles
    # a search creates its SQLite file only once its task, space and settings are checked,
    # so a task that fails to import or build leaves no empty database behind
    return module.run_config(config, url, progress=progress, **kwargs)
  st = url if isinstance(url, Store) else Store(url)  # a server: reachable before building
  return module.run_config(config, st, progress=progress, **kwargs)


def made_by_search_call(config: Mapping[str, Any]) -> bool:
  """Whether a stored study's config is that of a ``metaopt.search`` / ``metaopt.worker``
  called from Python (sizes and seed only, no ``task_name``): its task is Python code that
  no config names, so ``run.py resume`` and ``evaluate`` cannot rebuild it."""
  return (config.get("kind") != "study" and "program" not in config
          and "task_name" not in config)


# programs that record their run in the store but start it afresh (`resume` reports a
# finished one and refuses a killed one)
NOT_RESUMABLE: tuple[str, ...] = ("whitebox", "nas")


def study_finished(store: Store, rec: Any) -> bool:
  """Whether a stored study has nothing left to run: its target was reached, or it has all
  its trials and none is running (and, for a search, the last round was told)."""
  if any(ev["kind"] == "target" for ev in store.events(rec.id)):
    return True
  trials = store.trials(rec.id, with_metrics=False)
  program = rec.config.get("program", "search") if isinstance(rec.config, Mapping) else None
  if program in NOT_RESUMABLE:  # no n_trials: done when its last stage's trials are told
    idle = bool(trials) and all(t.status != "running" for t in trials)
    if program == "nas":
      return idle and any(t.params.get("role") == "retrain" for t in trials)
    return idle and len(trials) >= int(rec.config.get("population", 1) or 1)
  return (len(trials) >= int(rec.config.get("n_trials", 0) or 0) > 0
          and all(t.status != "running" for t in trials) and rec.state_phase != "asked")
