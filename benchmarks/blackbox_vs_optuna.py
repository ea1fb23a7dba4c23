"""metaopt's black-box searchers vs Optuna's samplers on synthetic functions with known minima.

Protocol (BENCHMARKS.md, issue 23). Development functions, used in earlier rounds to choose
metaopt's defaults (GP-BO's `n_exploit` among them) on seeds 0-9 and 10-29: Branin (2-D),
Hartmann-6, Rosenbrock-10 and a mixed function (two categoricals with 3 and 4 choices, two
continuous). Held-out functions, defined here and never used to choose anything: six-hump
camel (2-D), Hartmann-3, Styblinski-Tang-5. The report uses `_protocol.REPORT_SEEDS` (1000..);
`--seed_kind dev` runs the development seeds 0-9 instead. Each run has a budget of `--evals`
evaluations asked in batches of `--batch` (as metaopt's engine asks a population per round;
Optuna is driven the same way with ask/tell, `--batch` trials asked before the first is told).

Per cell (function, searcher) it prints the median final regret (best value found - known
minimum) of each side with its interquartile range, and a paired test over the seeds
(`_protocol.paired`: sign test and Wilcoxon signed-rank on the regrets, pairs within 1e-9
relative counted as ties). One rule for both directions: a cell is a **win** when the
Wilcoxon p < 0.05 and ours is lower on more seeds, a **loss** when p < 0.05 and Optuna's is,
otherwise **no difference shown**. Wall clock: metaopt's compile (one ask, tell and function
call per function and searcher, timed in a fresh jit) is shown separately and included in
its total; Optuna's total is the sum of its runs (same clock, same process).

  ours:   tpe (multivariate, constant liar), gp_bo (Matern-5/2, log-EI, kriging believer;
          on the mixed function `levels` gives it the two categoricals: Hamming kernel and
          choice-by-choice search), cma_es (evosax, popsize = batch, resampled at the
          bounds), random
  Optuna: TPESampler(multivariate=True, constant_liar=True), GPSampler(deterministic_objective=
          True), CmaEsSampler(popsize = batch), RandomSampler; in-memory storage. On the mixed
          function Optuna gets real categorical distributions (its CMA-ES samples those at
          random); metaopt's TPE and CMA-ES see index coordinates.

  Optuna's runs do not depend on metaopt's code: they are cached (git-ignored,
  runs/benchmarks/blackbox_optuna_cache.jsonl) by Optuna version, function, searcher, budget,
  batch and seed, and their recorded seconds are reused.

    python benchmarks/blackbox_vs_optuna.py            # 100 evaluations, 10 report seeds
    python benchmarks/blackbox_vs_optuna.py --quick    # 30 evaluations, 3 report seeds,
                                                       # 2 functions, no GP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _protocol  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import ROOT, results_path  # noqa: E402 - benchmarks/ is on sys.path

from metaopt._src import benchmark_functions as bf  # noqa: E402
from metaopt._src.evolution import cma_es  # noqa: E402
from metaopt._src.gp import gp_bo  # noqa: E402
from metaopt._src.searchers import random_search  # noqa: E402
from metaopt._src.tpe import tpe  # noqa: E402

PAIRS = [("tpe", "TPE"), ("gp", "GP"), ("cma_es", "CMA-ES"), ("random", "random")]
CACHE = os.path.join(ROOT, "runs", "benchmarks", "blackbox_optuna_cache.jsonl")


def camel6(u: jax.Array) -> jax.Array:
  """Six-hump camel on ``[-3, 3] x [-2, 2]``; minimum -1.0316285."""
  x, y = 6.0 * u[..., 0] - 3.0, 4.0 * u[..., 1] - 2.0
  return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547],
                         [381, 5743, 8828]])
_H3_C = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann3(u: jax.Array) -> jax.Array:
  """Hartmann-3 on ``[0, 1]^3``; minimum -3.86278."""
  r = jnp.sum(_H3_A * jnp.square(u[..., None, :] - _H3_P), axis=-1)
  return -jnp.sum(_H3_C * jnp.exp(-r), axis=-1)


def styblinski_tang(u: jax.Array) -> jax.Array:
  """Styblinski-Tang on ``[-5, 5]^d``; minimum -39.16617 d."""
  x = 10.0 * u - 5.0
  return 0.5 * jnp.sum(x**4 - 16 * x**2 + 5 * x, axis=-1)


DEV_FUNCTIONS = ("branin", "hartmann6", "rosenbrock10", "mixed")
HELDOUT = {"camel6": bf.Problem(camel6, 2, -1.0316285),
           "hartmann3": bf.Problem(hartmann3, 3, -3.86278),
           "styblinski5": bf.Problem(styblinski_tang, 5, -39.16617 * 5)}
PROBLEMS = {**{k: bf.PROBLEMS[k] for k in DEV_FUNCTIONS}, **HELDOUT}


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


def compile_ours(s, ask, tell, fn, batch: int) -> float:
  """Seconds to trace and compile ``ask``, ``tell`` and the function (one call of each)."""
  t = time.perf_counter()
  state = s.init(jax.random.key(0))
  state, u = ask(state, jax.random.key(1), batch)
  jax.block_until_ready(tell(state, u, fn(u), jnp.zeros(batch, jnp.int32)))
  return time.perf_counter() - t


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


def optuna_cached(name: str, fname: str, fn, evals: int, batch: int, seed: int,
                  wait: bool = False) -> tuple[float, float]:
  """(best value, seconds) of one Optuna run, from the cache when it was run before (with
  ``wait``, until another process running ``--libs optuna`` has put it there)."""
  import optuna

  key = f"{optuna.__version__}|{fname}|{name}|e{evals}|b{batch}|s{seed}"
  while True:
    if os.path.exists(CACHE):
      with open(CACHE) as f:
        for line in f:
          r = json.loads(line)
          if r["key"] == key:
            return r["best"], r["seconds"]
    if not wait:
      break
    time.sleep(5)
  t = time.perf_counter()
  best = run_optuna(name, PROBLEMS[fname], fn, evals, batch, seed)
  sec = time.perf_counter() - t
  os.makedirs(os.path.dirname(CACHE), exist_ok=True)
  with open(CACHE, "a") as f:
    f.write(json.dumps({"key": key, "best": best, "seconds": sec}) + "\n")
  return best, sec


def verdict(p) -> str:
  """One rule for both directions: significant (Wilcoxon p < 0.05) and more seeds one way."""
  if p.wilcoxon_p < 0.05 and p.wins > p.losses:
    return "win"
  if p.wilcoxon_p < 0.05 and p.losses > p.wins:
    return "loss"
  return "no difference shown"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 30 evaluations, 3 seeds, Branin and camel6, no GP")
  ap.add_argument("--evals", type=int, default=None)
  ap.add_argument("--seeds", type=int, default=None, help="how many (default 10; quick 3)")
  ap.add_argument("--seed_kind", default="report", choices=["report", "dev"])
  ap.add_argument("--batch", type=int, default=10)
  ap.add_argument("--functions", default=None, help="comma-separated; default all seven")
  ap.add_argument("--searchers", default=None, help="comma-separated; default all four")
  ap.add_argument("--libs", default="metaopt,optuna",
                  help="'optuna' alone fills the cache of Optuna's runs")
  ap.add_argument("--out", default=None, help="also write the markdown table here")
  ap.add_argument("--wait_for_optuna", action="store_true",
                  help="wait for Optuna's runs to appear in the cache (filled by another "
                       "process with --libs optuna) instead of running them")
  args = ap.parse_args()
  evals = args.evals or (30 if args.quick else 100)
  seeds = _protocol.seeds(args.seed_kind, args.seeds or (3 if args.quick else 10))
  funcs = (args.functions.split(",") if args.functions else
           (["branin", "camel6"] if args.quick else list(PROBLEMS)))
  names = (args.searchers.split(",") if args.searchers else
           ["tpe", "cma_es", "random"] if args.quick else [p for p, _ in PAIRS])
  libs = args.libs.split(",")

  import optuna

  optuna.logging.set_verbosity(optuna.logging.ERROR)
  warnings.filterwarnings("ignore")
  label = dict(PAIRS)
  lines = [f"Budget {evals} evaluations in batches of {args.batch}; {args.seed_kind} seeds "
           f"{seeds[0]}..{seeds[-1]} (n={len(seeds)}); median final regret [25%, 75%]; paired "
           "sign / Wilcoxon test over seeds; verdict: win / loss when Wilcoxon p < 0.05 "
           "(one rule both ways). Seconds: totals over the seeds; metaopt's include its "
           "compile, also shown alone.", "",
           "| function | set | searcher | metaopt regret | Optuna regret | test | verdict | "
           "metaopt s (compile) | Optuna s | Optuna s / metaopt s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  tally = {"dev": {}, "held-out": {}}
  tot = {"ours": 0.0, "compile": 0.0, "optuna": 0.0}
  for fname in funcs:
    p = PROBLEMS[fname]
    fn = jax.jit(p.fn)
    group = "dev" if fname in DEV_FUNCTIONS else "held-out"
    for name in names:
      ro, so, comp = [], [], 0.0
      if "metaopt" in libs:
        s = ours(name, p, args.batch)
        ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
        comp = compile_ours(s, ask, tell, fn, args.batch)
        for seed in seeds:
          t = time.perf_counter()
          ro.append(run_ours(s, ask, tell, fn, evals, args.batch, seed) - p.minimum)
          so.append(time.perf_counter() - t)
      rt, st = [], []
      if "optuna" in libs:
        for seed in seeds:
          b, sec = optuna_cached(name, fname, fn, evals, args.batch, seed,
                                 args.wait_for_optuna)
          rt.append(b - p.minimum)
          st.append(sec)
      if not (ro and rt):
        print(f"{fname} {name}: {len(ro)} metaopt / {len(rt)} Optuna runs", flush=True)
        continue
      pt = _protocol.paired(ro, rt, lower_is_better=True, rtol=1e-9)
      v = verdict(pt)
      tally[group].setdefault(v, 0)
      tally[group][v] += 1
      ours_s = comp + sum(so)
      tot["ours"] += ours_s
      tot["compile"] += comp
      tot["optuna"] += sum(st)
      a, b = _protocol.spread(ro), _protocol.spread(rt)
      row = (f"| {fname} | {group} | {label[name]} | {a.cell()} | "
             f"{b.cell()} | {pt.wins}/{pt.ties}/{pt.losses}, "
             f"sign p={pt.sign_p:.2g}, W p={pt.wilcoxon_p:.2g} | {v} | {ours_s:.1f} "
             f"({comp:.1f}) | {sum(st):.1f} | {sum(st) / ours_s:.2f} |")
      lines.append(row)
      print(row, flush=True)
  lines.append("")
  for group, t in tally.items():
    if t:
      lines.append(f"{group} functions: " + ", ".join(f"{k} {n}" for k, n in sorted(t.items())))
  if tot["ours"]:
    lines.append(f"Total seconds: metaopt {tot['ours']:.0f} (of which compile "
                 f"{tot['compile']:.0f}), Optuna {tot['optuna']:.0f}; ratio Optuna / metaopt "
                 f"{tot['optuna'] / tot['ours']:.2f} ({jax.devices()[0].platform}, "
                 f"{os.cpu_count()} CPU cores, jax {jax.__version__}, optuna "
                 f"{optuna.__version__}, load {os.getloadavg()[0]:.1f} at the end).")
  table = "\n".join(lines)
  print("\n" + table)
  out = results_path(args.out, args.quick)
  if out:
    with open(out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
