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

Protocol (BENCHMARKS.md): MOTPE's defaults were chosen on the development seeds
(`--seed_kind dev`, `_protocol.DEV_SEEDS`); the reported figures use the report seeds
1000.. (`_protocol.REPORT_SEEDS`, the default). For each pair it prints, per function, the
median hypervolume of each side over the seeds with its interquartile range, the ratio of the
medians and a paired sign / Wilcoxon test over the seeds (`_protocol.paired`), then the same
test over all (function, seed) pairs; the headline `hypervolume_vs_optuna_<pair>` is the
geometric mean over the three functions of the ratio of medians (ours / Optuna; > 1: ours is
better). Seconds per run: metaopt's exclude its compile, shown separately (one ask and tell
in a fresh jit, once per process); Optuna has none. Optuna's runs do not depend on metaopt's
code and are cached under runs/ (git-ignored) with their seconds.

    python benchmarks/multiobjective.py --quick   # 200 evaluations, 5 report seeds
    python benchmarks/multiobjective.py           # 200 evaluations, 10 report seeds
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _protocol  # noqa: E402 - benchmarks/ is on sys.path
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402

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


COMPILE_S: dict[str, float] = {}


@functools.cache
def _jitted(name: str, batch: int = 1):
  s = ours(name)
  ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
  t0 = time.time()  # compile once, timed on its own
  state, u = ask(s.init(jax.random.key(0)), jax.random.key(1), batch)
  jax.block_until_ready(tell(state, u, jnp.zeros((batch, 2)), jnp.zeros(batch, jnp.int32)))
  COMPILE_S[name] = time.time() - t0
  return s, ask, tell


def run_ours(name: str, fn, evals: int, batch: int, seed: int) -> tuple[float, float]:
  s, ask, tell = _jitted(name, batch)
  f = jax.jit(fn)
  jax.block_until_ready(f(jnp.zeros((batch, DIM))))
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
  return float(hypervolume(np.concatenate(ys), REF)), time.time() - t0


WAIT_FOR_OPTUNA = False
CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                     "benchmarks", "optuna_mo_cache.json")


def run_optuna(name: str, fname: str, evals: int, batch: int, seed: int) -> tuple[float, float]:
  """Optuna's (hypervolume, seconds); a run depends only on Optuna, so it is cached under
  runs/ (ignored by git) by (Optuna version, sampler, function, evaluations, batch, seed)."""
  import json

  import optuna

  key = f"{optuna.__version__}|{name}|{fname}|d{DIM}|e{evals}|b{batch}|s{seed}"
  cache = json.load(open(CACHE)) if os.path.exists(CACHE) else {}
  while WAIT_FOR_OPTUNA and key not in cache:  # another process is filling the cache
    time.sleep(5)
    cache = json.load(open(CACHE)) if os.path.exists(CACHE) else {}
  if key not in cache:
    cache[key] = _run_optuna(name, FUNCTIONS[fname], evals, batch, seed)
    fresh = json.load(open(CACHE)) if os.path.exists(CACHE) else {}  # other processes' runs
    fresh.update(cache)
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    with open(CACHE + ".tmp", "w") as f:
      json.dump(fresh, f, indent=0)
    os.replace(CACHE + ".tmp", CACHE)
  return tuple(cache[key])


def _run_optuna(name: str, fn, evals: int, batch: int, seed: int) -> tuple[float, float]:
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
  return float(hypervolume(np.concatenate(ys), REF)), time.time() - t0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="5 seeds (else 10)")
  ap.add_argument("--evals", type=int, default=200)
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--seed_kind", default="report", choices=["report", "dev"])
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--pairs", default="nsga2,tpe")
  ap.add_argument("--functions", default=",".join(FUNCTIONS))
  ap.add_argument("--out", default=None, help="also write the markdown table here")
  ap.add_argument("--wait_for_optuna", action="store_true",
                  help="wait for Optuna's runs to appear in the cache (another process "
                       "filling it) instead of running them")
  args = ap.parse_args()
  global WAIT_FOR_OPTUNA
  WAIT_FOR_OPTUNA = args.wait_for_optuna
  seeds = list(_protocol.seeds(args.seed_kind, args.seeds or (5 if args.quick else 10)))

  lines = [f"ZDT (d={DIM}) {args.evals} evaluations, batch {args.batch}, {args.seed_kind} seeds "
           f"{seeds[0]}..{seeds[-1]}, reference point {REF.tolist()}", "",
           "| function | pair | ours median [IQR] | Optuna median [IQR] | ratio | paired test "
           "(ours vs Optuna) | random median | s/run ours | s/run Optuna |",
           "|---|---|---|---|---|---|---|---|---|"]
  headline = {}
  for pair in args.pairs.split(","):
    ratios, all_a, all_b = [], [], []
    for fname in args.functions.split(","):
      fn = FUNCTIONS[fname]
      a = [run_ours(pair, fn, args.evals, args.batch, s) for s in seeds]
      b = [run_optuna(pair, fname, args.evals, args.batch, s) for s in seeds]
      r = [run_ours("random", fn, args.evals, args.batch, s)[0] for s in seeds]
      ha, hb = [x[0] for x in a], [x[0] for x in b]
      ratio = float(np.median(ha) / np.median(hb))
      ratios.append(ratio)
      all_a += ha
      all_b += hb
      sa, sb = _protocol.spread(ha), _protocol.spread(hb)
      row = (f"| {fname} | {pair} | {sa.cell('.4f')} | "
             f"{sb.cell('.4f')} | {ratio:.4f} | "
             f"{_protocol.paired(ha, hb, lower_is_better=False)} | {np.median(r):.4f} | "
             f"{np.median([x[1] for x in a]):.2f} | {np.median([x[1] for x in b]):.2f} |")
      lines.append(row)
      print(row, flush=True)
    headline[pair] = float(np.exp(np.mean(np.log(ratios))))
    lines.append(f"| all | {pair} | | | {headline[pair]:.4f} (geo. mean) | "
                 f"{_protocol.paired(all_a, all_b, lower_is_better=False)} | | | |")
    print(lines[-1], flush=True)
  lines += ["", "metaopt compile, once per process (s): " + ", ".join(
      f"{k} {v:.1f}" for k, v in COMPILE_S.items()) + f"; load {os.getloadavg()[0]:.1f} at the end"]
  table = "\n".join(lines)
  print("\n" + table)
  variant = {"nsga2": "nsga2(30) defaults vs NSGAIISampler()",
             "tpe": "motpe(30) defaults vs TPESampler() (two objectives)"}
  for pair, v in headline.items():
    _protocol.headline(f"hypervolume_vs_optuna_{pair}", f"{v:.4f}",
                       f"{variant[pair]}, {args.seed_kind} seeds {seeds[0]}-{seeds[-1]}",
                       "metaopt/_src/mosearch.py")
  out = results_path(args.out, quick=args.quick)  # a quick run writes no tracked file
  if out:
    with open(out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
