"""Reports on a study: the JSON summary and a PNG of objective per trial."""

from __future__ import annotations

import os

import numpy as np

from metaopt._src.types import Result

_COLORS = {"complete": "tab:blue", "failed": "tab:red", "pruned": "tab:gray",
           "infeasible": "tab:orange", "running": "tab:green"}


def plot_history(result: Result, path: str) -> str:
  """Objective per trial (colored by status) with the best-so-far line; returns ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  for status, color in _COLORS.items():
    ts = [t for t in result.trials if t.status == status and t.objective is not None]
    if ts:
      ax.scatter([t.number for t in ts], [t.objective for t in ts], s=14, c=color,
                 label=f"{status} ({len(ts)})", alpha=0.8)
  failed = [t for t in result.trials if t.status == "failed"]
  if failed:
    ax.scatter([], [], c=_COLORS["failed"], marker="x", label=f"failed ({len(failed)})")
  done = sorted((t.number, t.objective) for t in result.trials
                if t.status == "complete" and t.objective is not None)
  if done:
    xs, ys = zip(*done, strict=True)
    best = np.maximum.accumulate(ys) if result.direction == "maximize" else \
        np.minimum.accumulate(ys)
    ax.step(xs, best, where="post", c="k", lw=1.2, label="best so far")
  ax.set_xlabel("trial")
  ax.set_ylabel("objective (valid)")
  ax.set_title(f"{result.study}: {len(result.trials)} trials ({result.direction})")
  ax.legend(fontsize=8, loc="best")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
