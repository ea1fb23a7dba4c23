"""metaopt's multi-objective searchers vs Optuna's on ZDT1-3 (30-D, two objectives).

Each run has `--evals` evaluations asked `--batch` at a time (Optuna driven the same way with
ask/tell: `--batch` trials asked before the first is told) and scores the hypervolume of all
evaluated points with the reference point (1.1, 11) (1.1 x the largest value each objective
takes on the cube, so every evaluated point can count). Pairs:

  ours nsga2 (steady-state, SBX + polynomial mutation, pop_size 20)  vs  Optuna
      NSGAIISampler() (its defaults: population 50, uniform crossover)
  ours motpe                                                          vs  Optuna
      TPESampler() with two objectives (its defaults)
  random search (ours) as the floor.

Protocol: defaults were chosen on the development seeds 0-4 (`--seed_base 0`); the reported
figures use held-out seeds 100.. (`--seed_base 100`, the default). For each pair it prints, per
function, the median hypervolume of each side over the seeds with its interquartile range, the
ratio of the medians, and a Wilcoxon signed-rank test over the (function, seed) pairs; the
headline `hypervolume_vs_optuna_<pair>` is the geometric mean over the three functions of the
ratio of medians (ours / Optuna; > 1: ours is better).

    python benchmarks/multiobjective.py --quick   # 200 evaluations, 5 held-out seeds
    python benchmarks/multiobjective.py           # 200 evaluations, 10 held-out seeds
"""

from __future__ import annotations

import argparse
import functools
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
from metaopt._src.mosearch import motpe, nsga2  # noqa: E402
from metaopt._src.multiobjective import hypervolume  # noqa: E402
from metaopt._src.searchers import random_search  # noqa: E402

DIM = 30
REF = np.asarray([1.1, 11.0])
FUNCTIONS = {"zdt1": bf.zdt1, "zdt2": bf.zdt2, "zdt3": bf.zdt3}


@functools.cache
def ours(name: str):
  return {"nsga2": lambda: nsga2(DIM), "tpe": lambda: motpe(DIM),
          "random": lambda: random_search(DIM)}[name]()


@functools.cache
def _jitted(name: str):
  s = ours(name)
  return s, jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)


def run_ours(name: str, fn, evals: int, batch: int, seed: int) -> tuple[float, float]:
  s, ask, tell = _jitted(name)
  f = jax.jit(fn)
  t0 = time.time()
  state = s.init(jax.random.key(seed))
  key = jax.random.key(seed + 7919)
  ys = []
  for i in range(-(-evals // batch)):
    n = min(batch, evals - i * batch)
    state, u = ask(state, jax.random.fold_in(key, i), n)
    y = f(u)
    state = tell(state, u, y, jnp.zeros(n, jnp.int32))
    ys.append(np.asarray(y))
  return hypervolume(np.concatenate(ys), REF), time.time() - t0


def run_optuna(name: str, fn, evals: int, batch: int, seed: int) -> tuple[float, float]:
  import optuna

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  sampler = {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
             "tpe": lambda: optuna.samplers.TPESampler(seed=seed)}[name]()
  study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
  dist = optuna.distributions.FloatDistribution(0.0, 1.0)
  space = {f"x{j}": dist for j in range(DIM)}
  t0 = time.time()
  ys = []
  done = 0
  while done < evals:
    n = min(batch, evals - done)
    trials = [study.ask(space) for _ in range(n)]
    u = np.asarray([[t.params[f"x{j}"] for j in range(DIM)] for t in trials], np.float32)
    y = np.asarray(fn(jnp.asarray(u)), np.float64)
    for t, v in zip(trials, y, strict=True):
      study.tell(t, v.tolist())
    ys.append(y)
    done += n
  return hypervolume(np.concatenate(ys), REF), time.time() - t0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="5 seeds (else 10)")
  ap.add_argument("--evals", type=int, default=200)
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--seed_base", type=int, default=100,
                  help="first seed; 0-4 were the development seeds, 100.. are held out")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--pairs", default="nsga2,tpe")
  ap.add_argument("--functions", default=",".join(FUNCTIONS))
  ap.add_argument("--out", default=None, help="also write the markdown table here")
  args = ap.parse_args()
  n_seeds = args.seeds or (5 if args.quick else 10)
  seeds = [args.seed_base + k for k in range(n_seeds)]
  from scipy.stats import wilcoxon

  lines = [f"ZDT (d={DIM}) {args.evals} evaluations, batch {args.batch}, seeds {seeds[0]}.."
           f"{seeds[-1]}, reference point {REF.tolist()}", "",
           "| function | pair | ours median [IQR] | Optuna median [IQR] | ratio | "
           "random median | s/run ours | s/run Optuna |", "|---|---|---|---|---|---|---|---|"]
  headline = {}
  for pair in args.pairs.split(","):
    ratios, diffs = [], []
    for fname in args.functions.split(","):
      fn = FUNCTIONS[fname]
      a = [run_ours(pair, fn, args.evals, args.batch, s) for s in seeds]
      b = [run_optuna(pair, fn, args.evals, args.batch, s) for s in seeds]
      r = [run_ours("random", fn, args.evals, args.batch, s)[0] for s in seeds]
      ha, hb = np.asarray([x[0] for x in a]), np.asarray([x[0] for x in b])
      ratio = float(np.median(ha) / np.median(hb))
      ratios.append(ratio)
      diffs.extend((ha - hb).tolist())

      def iqr(h):
        return f"{np.median(h):.4f} [{np.percentile(h, 25):.4f}, {np.percentile(h, 75):.4f}]"
      # the first metaopt run includes the jit compile: report the median
      row = (f"| {fname} | {pair} | {iqr(ha)} | {iqr(hb)} | {ratio:.4f} | "
             f"{np.median(r):.4f} | {np.median([x[1] for x in a]):.2f} | "
             f"{np.median([x[1] for x in b]):.2f} |")
      lines.append(row)
      print(row, flush=True)
    p = wilcoxon(diffs).pvalue if np.any(np.asarray(diffs) != 0) else 1.0
    wins = int(np.sum(np.asarray(diffs) > 0))
    headline[pair] = float(np.exp(np.mean(np.log(ratios))))
    lines.append(f"| all | {pair} | wins {wins}/{len(diffs)} | Wilcoxon p={p:.3g} | "
                 f"{headline[pair]:.4f} (geo. mean) | | | |")
    print(lines[-1], flush=True)
  table = "\n".join(lines)
  print("\n" + table)
  for pair, v in headline.items():
    print(f"hypervolume_vs_optuna_{pair}: {v:.4f}")
  out = results_path(args.out, quick=args.quick)  # a quick run writes no tracked file
  if out:
    with open(out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
