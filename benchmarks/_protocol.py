"""The benchmark protocol shared by every script in ``benchmarks/`` (see BENCHMARKS.md).

Defaults and variants are chosen on DEV seeds / cases only, frozen in a commit, and the
reported figures come from REPORT seeds / cases that were never used for choosing. Every
"at or below" claim is printed with its spread and a paired test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

DEV_SEEDS: tuple[int, ...] = tuple(range(0, 10))
REPORT_SEEDS: tuple[int, ...] = tuple(range(1000, 1030))


def seeds(kind: str, n: int) -> tuple[int, ...]:
  """The first ``n`` seeds of ``kind`` ('dev' or 'report')."""
  pool = {"dev": DEV_SEEDS, "report": REPORT_SEEDS}
  if kind not in pool:
    raise ValueError(f"seeds kind must be one of {sorted(pool)}, got {kind!r}")
  if n > len(pool[kind]):
    start = pool[kind][0]
    return tuple(range(start, start + n))
  return pool[kind][:n]


@dataclasses.dataclass(frozen=True)
class Spread:
  """Median and interquartile range of a sample."""
  median: float
  q25: float
  q75: float
  n: int

  def __str__(self) -> str:
    return f"{self.cell('.4g')} (n={self.n})"

  def cell(self, fmt: str = ".3g") -> str:
    """``median [q25, q75]`` for a table cell."""
    return f"{self.median:{fmt}} [{self.q25:{fmt}}, {self.q75:{fmt}}]"


def spread(values: Sequence[float]) -> Spread:
  """Median and quartiles of ``values`` (NaNs dropped)."""
  v = np.asarray([x for x in values if not math.isnan(float(x))], dtype=float)
  if v.size == 0:
    return Spread(float("nan"), float("nan"), float("nan"), 0)
  q25, med, q75 = np.percentile(v, [25, 50, 75])
  return Spread(float(med), float(q25), float(q75), int(v.size))


@dataclasses.dataclass(frozen=True)
class Paired:
  """A paired comparison of ``ours`` against ``theirs`` (lower is better unless stated)."""
  wins: int
  ties: int
  losses: int
  sign_p: float
  wilcoxon_p: float

  def __str__(self) -> str:
    return (f"wins/ties/losses {self.wins}/{self.ties}/{self.losses}, sign test p="
            f"{self.sign_p:.3g}, Wilcoxon p={self.wilcoxon_p:.3g}")


def paired(ours: Sequence[float], theirs: Sequence[float], lower_is_better: bool = True,
           rtol: float = 0.0) -> Paired:
  """Two-sided sign test and Wilcoxon signed-rank test over paired runs (same seed / case).

  Pairs within ``rtol`` of each other count as ties (dropped from both tests)."""
  from scipy import stats
  a = np.asarray(ours, dtype=float)
  b = np.asarray(theirs, dtype=float)
  if a.shape != b.shape:
    raise ValueError(f"paired samples must have the same length, got {a.shape} and {b.shape}")
  d = (a - b) if lower_is_better else (b - a)
  tie = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))
  wins = int(np.sum((d < 0) & ~tie))
  losses = int(np.sum((d > 0) & ~tie))
  ties = int(a.size - wins - losses)
  n = wins + losses
  sign_p = float(stats.binomtest(wins, n, 0.5).pvalue) if n else 1.0
  dd = d[~tie]
  wil_p = float(stats.wilcoxon(dd).pvalue) if dd.size and np.any(dd != 0) else 1.0
  return Paired(wins, ties, losses, sign_p, wil_p)


def headline(name: str, value: float | str, variant: str, fixed_in: str = "") -> str:
  """The one line a script prints for a headline figure, naming the variant and that it was
  fixed in advance (``fixed_in``: the commit or file where the default was frozen)."""
  val = f"{value:.4g}" if isinstance(value, float) else str(value)
  note = f"  # variant: {variant}" + (f"; fixed in advance in {fixed_in}" if fixed_in else "")
  line = f"{name}: {val}{note}"
  print(line, flush=True)
  return line
