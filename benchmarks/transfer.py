"""Warm start across related tasks: trials to a target, cold vs warm-started from a finished study.

The source task is Hartmann-6 on ``[0, 1]^6``; the related target task is Hartmann-6 with
its optimum moved by ``DELTA`` along every coordinate, values scaled by 1.1 and shifted by
+0.3 (a task whose good region overlaps the source's but whose values and optimum differ).
The target level is a regret of ``REGRET`` on the target task. For each seed:

* cold: a TPE study on the target task, counted until a trial reaches the level;
* warm: a TPE study on the source task runs ``--source_trials`` trials to completion, then a
  TPE study on the target task is created with ``warm_start=`` that study (its trials told
  to TPE as prior observations, weighed by how well they rank the target's own trials, TPE's
  default ``prior_weighting="ranking"``; its best 3 points evaluated first) and counted the
  same way. ``--prior_weighting`` picks another rule for the warm study.

Trials of the source study are not counted (it is an earlier, finished study). A run that
does not reach the level within ``--max_trials`` counts as ``max_trials`` (reported as
censored). DELTA, REGRET and the budgets were set on the development seeds 0-4
(``--dev`` runs them); the headline comes from report seeds (``_protocol.REPORT_SEEDS``)
never used to choose anything, with a paired sign / Wilcoxon test of warm against cold.

    python benchmarks/transfer.py --quick   # report seeds 1000-1004, writes nothing
    python benchmarks/transfer.py           # report seeds 1000-1009
    python benchmarks/transfer.py --dev     # development seeds 0-4

Prints ``warmstart_trials_to_target_ratio: X`` (median cold trials / median warm trials on
the report seeds; target >= 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _protocol  # noqa: E402 - benchmarks/ is on sys.path
import jax  # noqa: E402
import numpy as np  # noqa: E402

import metaopt  # noqa: E402
from metaopt.spaces import Float, Space  # noqa: E402

SPACE = Space({f"x{i}": Float(0.0, 1.0) for i in range(6)})
DELTA, SCALE, SHIFT, REGRET = 0.05, 1.1, 0.3, 0.2
H6_MIN = -3.32237
_h6 = jax.jit(metaopt.hartmann6)


def _u(p: dict) -> np.ndarray:
  return np.asarray([p[f"x{i}"] for i in range(6)], np.float32)


def source_task(p: dict) -> float:
  return float(_h6(_u(p)))


def target_task(p: dict) -> float:
  return SCALE * float(_h6(np.clip(_u(p) - DELTA, 0.0, 1.0))) + SHIFT


TARGET_LEVEL = SCALE * H6_MIN + SHIFT + REGRET


def trials_to_target(study: metaopt.Study, max_trials: int) -> int | None:
  """Trials until one reaches the level (None if none does within ``max_trials``)."""
  for i in range(max_trials):
    (t,) = study.ask()
    v = target_task(t.params)
    study.tell(t, v)
    if v <= TARGET_LEVEL:
      return i + 1
  return None


def run_seed(seed: int, source_trials: int, max_trials: int, top_k: int = 3,
             options: dict | None = None) -> tuple[int | None, int | None]:
  cold = trials_to_target(metaopt.create_study(SPACE, "tpe", seed=seed), max_trials)
  src = metaopt.create_study(SPACE, "tpe", seed=10_000 + seed, study_name=f"source{seed}")
  src.optimize(source_task, n_trials=source_trials)
  warm_study = metaopt.create_study(SPACE, "tpe", seed=seed, warm_start=src,
                                    warm_start_top_k=top_k, searcher_options=options or {})
  assert warm_study.warm_start_sources[0]["n_used"] == source_trials
  return cold, trials_to_target(warm_study, max_trials)


def summarize(name: str, rows: list[tuple[int | None, int | None]], max_trials: int) -> float:
  cold = [max_trials if c is None else c for c, _ in rows]
  warm = [max_trials if w is None else w for _, w in rows]
  censored = (sum(c is None for c, _ in rows), sum(w is None for _, w in rows))
  ratio = statistics.median(cold) / statistics.median(warm)
  print(f"{name}: cold {cold} (median {statistics.median(cold)}), warm {warm} "
        f"(median {statistics.median(warm)}), censored cold/warm {censored}, ratio {ratio:.2f}; "
        f"warm vs cold: {_protocol.paired(warm, cold)}")
  return ratio


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="5 report seeds (else 10)")
  ap.add_argument("--dev", action="store_true", help="the development seeds 0-4 instead")
  ap.add_argument("--top_k", type=int, default=3, help="warm_start_top_k")
  ap.add_argument("--seeds", type=int, default=None, help="how many seeds (overrides 5 / 10)")
  ap.add_argument("--source_trials", type=int, default=100)
  ap.add_argument("--max_trials", type=int, default=200)
  ap.add_argument("--prior_weighting", default=None, choices=["ranking", "ranking_vs_own", "equal"],
                  help="TPE's prior_weighting for the warm study (default: TPE's default)")
  args = ap.parse_args()
  print(f"target level {TARGET_LEVEL:.4f} (regret {REGRET} on the target task); "
        f"load average {os.getloadavg()[0]:.2f}")
  kind = "dev" if args.dev else "report"
  seeds = _protocol.seeds(kind, args.seeds or (5 if (args.quick or args.dev) else 10))
  opts = {} if args.prior_weighting is None else {"prior_weighting": args.prior_weighting}
  rows = [run_seed(s, args.source_trials, args.max_trials, args.top_k, opts) for s in seeds]
  ratio = summarize(f"{kind} seeds {seeds[0]}-{seeds[-1]}", rows, args.max_trials)
  _protocol.headline("warmstart_trials_to_target_ratio", f"{ratio:.2f}",
                     f"TPE warm-started from a {args.source_trials}-trial source study, "
                     f"{kind} seeds {seeds[0]}-{seeds[-1]}", "benchmarks/transfer.py")


if __name__ == "__main__":
  main()
