"""Where benchmark scripts write their results.

The committed ``benchmarks/results_*.md`` (and BENCHMARKS.md) hold full-run figures. A
``--quick`` run is a smoke test: it writes its tables under ``runs/benchmarks/`` (ignored by
git), never over a file of the repository.
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_DIR = os.path.join(ROOT, "runs", "benchmarks")


def results_path(path: str | None, quick: bool) -> str | None:
  """The file a benchmark writes for ``path`` (None: nothing): ``path`` itself for a full
  run or outside the repository; for a ``--quick`` run, a file of the same name under
  ``runs/benchmarks/`` when ``path`` is in the repository (and not already under ``runs/``).
  The directory is created."""
  if path is None or path == "":
    return None
  out = os.path.abspath(path)
  inside = os.path.commonpath([out, ROOT]) == ROOT
  under_runs = os.path.commonpath([out, os.path.join(ROOT, "runs")]) == os.path.join(ROOT,
                                                                                    "runs")
  if quick and inside and not under_runs:
    out = os.path.join(QUICK_DIR, os.path.basename(out))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  return out
