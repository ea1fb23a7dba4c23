"""metaopt's black-box searchers vs Optuna's samplers on synthetic functions with known minima.

Functions (metaopt/_src/benchmark_functions.py): Branin (2-D), Hartmann-6, Rosenbrock-10 and a
mixed function (two categoricals with 3 and 4 choices, two continuous). Each run has a budget
of `--evals` evaluations asked in batches of `--batch` (as metaopt's engine asks a population
per round; Optuna is driven the same way with ask/tell, `--batch` trials asked before the first
is told), and reports the median over `--seeds` seeds of the final regret
(best value found - known minimum) and the wall time per run (optimiser overhead: the
functions cost microseconds). The first metaopt run of each searcher and function includes
its jit compile; the "compile" column estimates it as first run - median of the others.

  ours:   tpe (multivariate, constant liar), gp_bo (Matern-5/2, log-EI, kriging believer;
          on the mixed function `levels` gives it the two categoricals: Hamming kernel and
          choice-by-choice search), cma_es (evosax, popsize = batch, resampled at the
          bounds), random
  Optuna: TPESampler(multivariate=True, constant_liar=True), GPSampler(deterministic_objective=
          True), CmaEsSampler(popsize = batch), RandomSampler; in-memory storage. On the mixed
          function Optuna gets real categorical distributions (its CMA-ES samples those at
          random); metaopt's TPE and CMA-ES see index coordinates.

  The Optuna side does not change with metaopt's code: run it once with `--libs optuna --raw
  FILE`, the metaopt side with `--libs metaopt --raw FILE2`, and join them with `--from_raw
  FILE,FILE2`.

    python benchmarks/blackbox_vs_optuna.py            # 100 evaluations, 10 seeds
    python benchmarks/blackbox_vs_optuna.py --quick    # 30 evaluations, 2 seeds, 2 functions,
                                                       # no GP (compile and Optuna's GP are slow)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

from metaopt._src import benchmark_functions as bf  # noqa: E402
from metaopt._src.evolution import cma_es  # noqa: E402
from metaopt._src.gp import gp_bo  # noqa: E402
from metaopt._src.searchers import random_search  # noqa: E402
from metaopt._src.tpe import tpe  # noqa: E402

PAIRS = [("tpe", "TPE"), ("gp", "GP"), ("cma_es", "CMA-ES"), ("random", "random")]


def ours(name: str, problem: bf.Problem, batch: int):
  dim = problem.dim
  return {"tpe": lambda: tpe(dim), "gp": lambda: gp_bo(dim, levels=problem.levels),
          "cma_es": lambda: cma_es(dim, popsize=batch),
          "random": lambda: random_search(dim)}[name]()


def run_ours(s, ask, tell, fn, evals: int, batch: int, seed: int) -> float:
  state = s.init(jax.random.key(seed))
  best = np.inf
  for r in range(evals // batch):
    state, u = ask(state, jax.random.fold_in(jax.random.key(seed + 10_000), r), batch)
    y = fn(u)
    state = tell(state, u, y, jnp.zeros(batch, jnp.int32))
    best = min(best, float(jnp.min(y)))
  return best


def optuna_sampler(name: str, seed: int, batch: int):
  import optuna

  if name == "tpe":
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
  if name == "gp":
    return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
  if name == "cma_es":
    return optuna.samplers.CmaEsSampler(seed=seed, popsize=batch, warn_independent_sampling=False)
  return optuna.samplers.RandomSampler(seed=seed)


def run_optuna(name: str, problem: bf.Problem, fn, evals: int, batch: int, seed: int) -> float:
  import optuna
  from optuna.distributions import CategoricalDistribution, FloatDistribution

  levels = problem.levels or (0,) * problem.dim
  dists = {f"x{j}": (CategoricalDistribution(list(range(k))) if k else FloatDistribution(0, 1))
           for j, k in enumerate(levels)}
  study = optuna.create_study(sampler=optuna_sampler(name, seed, batch))
  best = np.inf
  for _ in range(evals // batch):
    trials = [study.ask(dists) for _ in range(batch)]
    u = np.asarray([[(t.params[f"x{j}"] + 0.5) / k if k else t.params[f"x{j}"]
                     for j, k in enumerate(levels)] for t in trials], np.float32)
    y = np.asarray(fn(jnp.asarray(u)), np.float64)
    for t, v in zip(trials, y, strict=True):
      study.tell(t, float(v))
    best = min(best, float(y.min()))
  return best


def summarize(regret, times):
  """(median, 25%, 75% regret, steady s/run, compile s) of one searcher on one function."""
  regret = np.asarray(regret)
  steady = np.median(times[1:]) if len(times) > 1 else times[0]
  return (np.median(regret), np.quantile(regret, 0.25), np.quantile(regret, 0.75), steady,
          times[0] - steady)


def load_raw(paths):
  """Rows of the table from ``--raw`` files; a later line replaces an earlier one."""
  got = {}
  for path in paths:
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        got[(r["function"], r["searcher"], r["lib"])] = r
  rows, seen, seeds, evals = [], {}, set(), set()
  total = sum(sum(r["times"]) for r in got.values())
  for (fname, name, lib), r in got.items():
    seen.setdefault((fname, name), {})[lib] = summarize(r["regret"], r["times"])
    seeds.add(len(r["regret"]))
    evals.add(r["evals"])
  order = {n: i for i, (n, _) in enumerate(PAIRS)}
  for (fname, name) in sorted(seen, key=lambda k: (list(bf.PROBLEMS).index(k[0]), order[k[1]])):
    rows.append((fname, name, seen[(fname, name)]))
  return rows, "/".join(map(str, sorted(evals))), "/".join(map(str, sorted(seeds))), total


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 30 evaluations, 2 seeds, Branin and mixed, no GP")
  ap.add_argument("--evals", type=int, default=None)
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--batch", type=int, default=10)
  ap.add_argument("--functions", default=None, help="comma-separated; default all four")
  ap.add_argument("--searchers", default=None, help="comma-separated; default all four")
  ap.add_argument("--libs", default="metaopt,optuna", help="which side(s) to run")
  ap.add_argument("--out", default=None, help="also write the markdown table here")
  ap.add_argument("--raw", default=None,
                  help="append per-seed results (JSON lines) here, to merge runs later")
  ap.add_argument("--from_raw", default=None,
                  help="comma-separated JSON-lines files of --raw: build the table from them "
                       "(later lines win) instead of running")
  args = ap.parse_args()
  evals = args.evals or (30 if args.quick else 100)
  seeds = args.seeds or (2 if args.quick else 10)
  funcs = (args.functions.split(",") if args.functions else
           (["branin", "mixed"] if args.quick else ["branin", "hartmann6", "rosenbrock10",
                                                     "mixed"]))
  names = (args.searchers.split(",") if args.searchers else
           ["tpe", "cma_es", "random"] if args.quick else [p for p, _ in PAIRS])

  import optuna

  optuna.logging.set_verbosity(optuna.logging.ERROR)
  warnings.filterwarnings("ignore")

  t_all = time.perf_counter()
  rows = []
  raw_total = None
  if args.from_raw:
    rows, evals, seeds, raw_total = load_raw(args.from_raw.split(","))
    funcs = []
  for fname in funcs:
    p = bf.PROBLEMS[fname]
    fn = jax.jit(p.fn)
    for name in names:
      s = ours(name, p, args.batch)
      ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
      res = {}
      for lib in args.libs.split(","):
        bests, times = [], []
        for seed in range(seeds):
          t = time.perf_counter()
          if lib == "metaopt":
            bests.append(run_ours(s, ask, tell, fn, evals, args.batch, seed))
          else:
            bests.append(run_optuna(name, p, fn, evals, args.batch, seed))
          times.append(time.perf_counter() - t)
        res[lib] = summarize(np.asarray(bests) - p.minimum, times)
        if args.raw:
          with open(args.raw, "a") as f:
            f.write(json.dumps({"function": fname, "searcher": name, "lib": lib,
                                "evals": evals, "batch": args.batch,
                                "regret": (np.asarray(bests) - p.minimum).tolist(),
                                "times": times}) + "\n")
        print(f"{fname:13s} {name:7s} {lib:8s} median regret {res[lib][0]:.4g} "
              f"(IQR {res[lib][1]:.3g}-{res[lib][2]:.3g})  {res[lib][3]:.2f} s/run", flush=True)
      rows.append((fname, name, res))
  wall = time.perf_counter() - t_all if raw_total is None else raw_total

  label = dict(PAIRS)
  lines = [f"Budget {evals} evaluations in batches of {args.batch}, {seeds} seeds; median final "
           f"regret (interquartile range); wall seconds per run (metaopt: after compile).", "",
           "| function | searcher | metaopt regret | Optuna regret | metaopt s/run | "
           "metaopt compile s | Optuna s/run |", "|---|---|---|---|---|---|---|"]
  nan = (np.nan,) * 5
  for fname, name, res in rows:
    m, o = res.get("metaopt", nan), res.get("optuna", nan)
    lines.append(f"| {fname} | {label[name]} | {m[0]:.3g} ({m[1]:.3g}-{m[2]:.3g}) | "
                 f"{o[0]:.3g} ({o[1]:.3g}-{o[2]:.3g}) | {m[3]:.2f} | {max(m[4], 0):.1f} | "
                 f"{o[3]:.2f} |")
  lines += ["", f"Total wall time: {wall:.0f} s ({jax.devices()[0].platform}, "
                f"{os.cpu_count()} CPU cores, jax {jax.__version__}, optuna {optuna.__version__})."]
  table = "\n".join(lines)
  print("\n" + table)
  out = results_path(args.out, args.quick)
  if out:
    with open(out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
