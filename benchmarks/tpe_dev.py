"""TPE development runs: variants of ``tpe(d, **kwargs)`` against the default and against
Optuna's ``TPESampler(multivariate=True, constant_liar=True)`` on DEVELOPMENT seeds (or
diagnostic seeds with ``--seed_range``; never report seeds).

The runs are those of ``benchmarks/blackbox_suite.py --quick`` (batch 10, budget
``max(40, 10 d)``), on BBOB functions and dimensions given here, for ``DEV_SEEDS`` (0-9 =
BBOB instances 1-10; the report seeds 1000+ are never used). Optuna's runs are read from the
suite's cache (``--cache``; filled with ``blackbox_suite.py --dev``); a cell whose Optuna runs
are missing is left out of the comparison with Optuna, never run here.

    python benchmarks/tpe_dev.py --variants '{"base": {}, "g20": {"gamma": 0.2}}' \\
        --cache /work/bbcache_dev --out /tmp/tpe_dev.json

prints, per variant: cells (function x d, median over seeds) at or below Optuna's median, by
d; E5, the expected number of such cells when a cell has 5 seeds (averaged over the 5-seed
subsets); and, against the first variant, the paired mean change of log10(max(regret, 1e-8)), wins /
ties / losses and the Wilcoxon p, per d and pooled. Results already in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _protocol  # noqa: E402
import blackbox_suite as bs  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402


def log_regret(r: float) -> float:
  return float(np.log10(max(r, bs.SOLVED)))


def run_variant(name: str, kwargs: dict, funcs, dims, seeds, done: dict) -> None:
  """Final regrets of ``tpe(d, **kwargs)`` into ``done[name]["f|d|seed"]``."""
  bs.OURS_KWARGS.clear()
  bs.OURS_KWARGS["tpe"] = kwargs
  bs._COMPILED.clear()
  out = done.setdefault(name, {})
  for dim in dims:
    budget = max(40, 10 * dim)
    for f in funcs:
      for seed in seeds:
        k = f"{f}|{dim}|{seed}"
        if k not in out:
          out[k] = bs.run_ours("tpe", f"f{f}", dim, seed, budget, 10)[-1]


def optuna_finals(funcs, dims, seeds, cache: str, fill: bool = False) -> dict:
  """Optuna TPE's final regrets from the cache (``fill``: run and cache the missing ones)."""
  out = {}
  for dim in dims:
    budget = max(40, 10 * dim)
    for f in funcs:
      for seed in seeds:
        p = os.path.join(cache, bs._cache_key("optuna", "tpe", f"f{f}", dim, seed, budget, 10)
                         + ".json")
        if fill and not os.path.exists(p):
          bs.run_cell("optuna", "tpe", f"f{f}", dim, [seed], budget, 10, cache)
        if os.path.exists(p):
          with open(p) as fh:
            out[f"{f}|{dim}|{seed}"] = json.load(fh)["traj"][-1]
  return out


def e5(res: dict, opt: dict, funcs, dims, seeds) -> float:
  """Expected count of cells at or below Optuna with 5 seeds: each cell's fraction over all
  5-seed subsets of ``seeds`` (same subset on both sides), summed."""
  subs = [list(c) for c in itertools.combinations(seeds, min(5, len(seeds)))]
  tot = 0.0
  for dim in dims:
    for f in funcs:
      if not all(f"{f}|{dim}|{s}" in opt for s in seeds):
        continue
      tot += np.mean([bs.at_or_below(np.asarray([res[f"{f}|{dim}|{s}"] for s in sub]),
                                     np.asarray([opt[f"{f}|{dim}|{s}"] for s in sub]))
                      for sub in subs])
  return tot


def summary(done: dict, names, funcs, dims, seeds, opt: dict, quick: tuple[int, ...]) -> str:
  lines = []
  base = names[0]
  for name in names:
    res = done[name]
    row = [f"{name:>14s}"]
    tot_k = tot_n = qk = qn = 0
    for dim in dims:
      k = n = 0
      for f in funcs:
        ks = [f"{f}|{dim}|{s}" for s in seeds]
        if not all(x in opt for x in ks):
          continue
        ok = bs.at_or_below(np.asarray([res[x] for x in ks]), np.asarray([opt[x] for x in ks]))
        k, n = k + ok, n + 1
        if f in quick:
          ks5 = ks[:5]
          qk += bs.at_or_below(np.asarray([res[x] for x in ks5]),
                               np.asarray([opt[x] for x in ks5]))
          qn += 1
      row.append(f"d{dim} {k}/{n}")
      tot_k, tot_n = tot_k + k, tot_n + n
    row.append(f"all {tot_k}/{tot_n}  quick-5seed {qk}/{qn}  "
               f"E5 {e5(res, opt, funcs, dims, seeds):.1f}")
    # per-run paired vs Optuna (log10 regret), pooled
    keys = [x for x in res if x in opt and int(x.split("|")[0]) in funcs
            and int(x.split("|")[1]) in dims and int(x.split("|")[2]) in seeds]
    dv = np.asarray([log_regret(res[x]) - log_regret(opt[x]) for x in keys])
    row.append(f"vs optuna mean dlog {dv.mean():+.3f} W/L {int((dv < 0).sum())}/"
               f"{int((dv > 0).sum())}")
    if name != base:
      for dim in (*dims, None):
        ks = [f"{f}|{d}|{s}" for d in dims for f in funcs for s in seeds
              if dim is None or d == dim]
        a = [log_regret(done[name][x]) for x in ks]
        b = [log_regret(done[base][x]) for x in ks]
        pr = _protocol.paired(a, b)
        tag = f"d{dim}" if dim else "all"
        row.append(f"| {tag} {np.mean(np.subtract(a, b)):+.3f} {pr.wins}/{pr.ties}/{pr.losses}"
                   f" p={pr.wilcoxon_p:.2g}")
    lines.append("  ".join(row))
  return "\n".join(lines)


def run_seeds(seeds: str, seed_range: str | None = None) -> tuple[int, ...]:
  """The seeds of a run: ``seeds`` "N" (the first N dev seeds) or "A-B" (dev seeds A..B), or
  with ``seed_range`` the diagnostic seeds of ``blackbox_suite.suite_seeds`` (report seeds
  refused there)."""
  if seed_range is not None:
    return bs.suite_seeds(seed_range=seed_range)
  if "-" in seeds:
    a, b = map(int, seeds.split("-"))
    return tuple(s for s in _protocol.DEV_SEEDS if a <= s <= b)
  return _protocol.DEV_SEEDS[: int(seeds)]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", required=True,
                  help="JSON {name: tpe kwargs}; the first is the reference")
  ap.add_argument("--functions", default=",".join(map(str, range(1, 25))))
  ap.add_argument("--dims", default="2,5,10")
  ap.add_argument("--seeds", default="10",
                  help="N (the first N development seeds) or A-B (development seeds A..B)")
  ap.add_argument("--seed_range", default=None,
                  help="diagnostic seeds instead ('A-B' or 'A-B,C-D', neither dev nor report: "
                  "blackbox_suite.suite_seeds); their Optuna runs come from --cache")
  ap.add_argument("--cache", default="runs/blackbox_suite")
  ap.add_argument("--out", default=None, help="JSON of final regrets (reused when present; "
                  "a path in the repository goes under runs/benchmarks/)")
  ap.add_argument("--fill", action="store_true", help="run (and cache) missing Optuna runs")
  args = ap.parse_args()
  variants = json.loads(args.variants)
  funcs = [int(f) for f in args.functions.split(",")]
  dims = [int(d) for d in args.dims.split(",")]
  seeds = run_seeds(args.seeds, args.seed_range)
  args.out = results_path(args.out, quick=True)  # development runs: never a tracked file
  done = {}
  if args.out and os.path.exists(args.out):
    with open(args.out) as fh:
      done = json.load(fh)
  for name, kw in variants.items():
    run_variant(name, kw, funcs, dims, seeds, done)
    if args.out:
      with open(args.out, "w") as fh:
        json.dump(done, fh)
    print(f"{name}: done", flush=True)
  if args.fill:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
  opt = optuna_finals(funcs, dims, seeds, args.cache, args.fill)
  print(summary(done, list(variants), funcs, dims, seeds, opt, bs.QUICK_FUNCTIONS))


if __name__ == "__main__":
  main()
