"""Gradient HPO of 21 per-layer hyperparameters vs random search and TPE at equal compute.

The problem: a 10-layer ReLU MLP (width 32) on digits trained for ``T`` SGD steps
(``metaopt.hypergrad.problems.mlp(per_layer=True)``); the hyperparameters are one learning rate
and one weight decay per layer plus the momentum (21 in all). Every method minimises the same
objective, the validation loss after ``T`` steps from a fresh initialisation, over the same
box (learning rates [1e-3, 1] and weight decays [1e-6, 1e-2], both log; momentum [0, 0.99]).

Protocol (BENCHMARKS.md "Protocol", issue 23):

* **Budget in training-run equivalents (TRE).** One TRE is one inner training run of ``T``
  steps. One hypergradient costs ``c`` TRE, measured in this process (best of interleaved
  rounds of a population-batched hypergradient step vs the same batch of plain training
  runs, compile excluded). Per seed every method gets ``B`` TRE: the gradient method
  ``floor(B / (N c))`` outer steps of its population of ``N = 4``, random search and TPE
  ``B`` trials each (batches of 8 in one ``jit(vmap)``).
* **Same start.** The problem's defaults (learning rate 0.05, weight decay 1e-4, momentum
  0.9) are member 0 of the gradient population (the others are perturbed around it) and the
  first trial of random search and TPE (enqueued).
* **Meta step chosen on development seeds.** ``--select`` runs the gradient method for each
  candidate Adam step on ``DEV_SEEDS[:5]`` and prints the one with the lowest median
  validation loss; that value is frozen in ``HYPER_LR`` below before the report run.
* **Reported on report seeds, on data that chose nothing.** ``REPORT_SEEDS[:10]`` (2 with
  ``--quick``). Each method's pick (lowest validation loss it saw) is retrained from 4 fresh
  initialisations; the figure is the mean *test* loss (the digits test split, which no
  method sees). Printed: medians with quartiles and paired sign / Wilcoxon tests per seed.

    python benchmarks/hypergrad_vs_blackbox.py [--quick] [--select] [--budget B] [--cost C]

The last line is ``hypergrad_vs_tpe_test_loss_ratio: X`` (median gradient-HPO test loss /
median TPE test loss; < 1: the gradient method wins).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path
from _protocol import DEV_SEEDS, REPORT_SEEDS, headline, paired, spread  # noqa: E402

import metaopt  # noqa: E402
from metaopt import hypergrad  # noqa: E402
from metaopt.hypergrad.inner import optax_inner_loop  # noqa: E402
from metaopt.hypergrad.unrolled import run_inner  # noqa: E402
from metaopt.spaces import Float, Space  # noqa: E402

DEPTH, WIDTH, POP, BATCH = 10, 32, 4, 8
# Adam step on the log / logit hyperparameters, chosen by `--select` on DEV_SEEDS[:5]
# (candidates HYPER_LR_CANDIDATES) and frozen here before the report run.
HYPER_LR = 0.1
HYPER_LR_CANDIDATES = (0.05, 0.1, 0.2, 0.5)
DEFAULTS = {"learning_rate": 0.05, "weight_decay": 1e-4, "momentum": 0.9}


def _config(steps: int, outer: int, seed: int, hyper_lr: float) -> dict:
  return {"name": "bench", "problem_name": "mlp", "method": "unrolled",
          "problem": {"dataset": "digits", "widths": [WIDTH] * (DEPTH - 1), "per_layer": True,
                      "batch_size": 64},
          "tune": ["learning_rate", "momentum", "weight_decay"], "init": dict(DEFAULTS),
          "estimator": {"truncate": 0, "max_norm": 1e6},
          "inner_steps": steps, "outer_steps": outer, "population": POP, "init_spread": 0.3,
          "meta_optimizer": "adam", "hyper_lr": hyper_lr, "warm_start": False, "seed": seed}


def _space(layers: list[str]) -> Space:
  p = {f"lr_{n}": Float(1e-3, 1.0, log=True) for n in layers}
  p.update({f"wd_{n}": Float(1e-6, 1e-2, log=True) for n in layers})
  p["momentum"] = Float(0.0, 0.99)
  return Space(p)


def _default_point(layers: list[str]) -> dict:
  point = {f"lr_{n}": DEFAULTS["learning_rate"] for n in layers}
  point.update({f"wd_{n}": DEFAULTS["weight_decay"] for n in layers})
  point["momentum"] = DEFAULTS["momentum"]
  return point


def _objective(problem, layers: list[str], steps: int):
  """``jit(vmap(f))``, ``f(h, key)``: the loss of ``problem.val_loss`` after ``steps`` SGD
  steps from the initialisation drawn by ``key`` (inf when it diverged)."""
  inner = optax_inner_loop(problem.train_loss, problem.optimizer)
  dtype = jnp.result_type(problem.hparams["momentum"])

  def hparams(h):
    return {"learning_rate": {n: h[f"lr_{n}"].astype(dtype) for n in layers},
            "weight_decay": {n: h[f"wd_{n}"].astype(dtype) for n in layers},
            "momentum": h["momentum"].astype(dtype)}

  def f(h, key):
    full = hparams(h)
    k_init, k_data = jax.random.split(key)
    state, _ = run_inner(inner, full, problem.init_params(k_init), problem.sample(k_data, steps))
    loss = problem.val_loss(inner.params(state), full)
    return jnp.where(jnp.isfinite(loss), loss, jnp.inf)

  return jax.jit(jax.vmap(f))


def _retrain(evaluate, space: Space, point: dict, key) -> float:
  """Mean loss of ``point`` trained from 4 fresh initialisations."""
  h = {n: jnp.full((4,), point[n], jnp.float32) for n in space.names}
  return float(jnp.mean(evaluate(h, jax.random.split(key, 4))))


def _best_times(fns: dict, rounds: int) -> dict:
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(rounds):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      best[name] = min(best[name], time.perf_counter() - t)
  return best


_PROGRAMS: dict = {}


def _program(cfg: dict):
  """(theta0, jitted init, jitted step): the program is built and compiled once per Adam step
  and reused across seeds (only theta0 depends on the seed)."""
  program, theta0, _ = hypergrad.hpo.build(cfg)
  if cfg["hyper_lr"] not in _PROGRAMS:
    _PROGRAMS[cfg["hyper_lr"]] = (jax.jit(program.init), jax.jit(program.step))
  return (theta0, *_PROGRAMS[cfg["hyper_lr"]])


def _gradient(cfg: dict) -> tuple[dict, float, float, int]:
  """(best hparams, best val loss seen, seconds, outer steps)."""
  t0 = time.perf_counter()
  theta0, init, step = _program(cfg)
  key = jax.random.key(cfg["seed"])
  k_init, k_run = jax.random.split(key)
  state = init(k_init, theta0)
  best, best_h = np.inf, None
  for k in jax.random.split(k_run, cfg["outer_steps"]):
    state, tel = step(state, k)
    val = np.asarray(tel["val_loss"])
    i = int(np.nanargmin(np.where(np.isfinite(val), val, np.inf)))
    if val[i] < best:
      best, best_h = float(val[i]), jax.tree.map(lambda a, i=i: np.asarray(a)[i], tel["hparams"])
  jax.block_until_ready(state)
  point = {f"lr_{k}": float(v) for k, v in best_h["learning_rate"].items()}
  point.update({f"wd_{k}": float(v) for k, v in best_h["weight_decay"].items()})
  point["momentum"] = float(best_h["momentum"])
  return point, best, time.perf_counter() - t0, cfg["outer_steps"]


_SEARCHERS: dict = {}


def _searcher(name: str, space: Space):
  """(searcher, jitted ask, jitted tell, jitted decode), built once per process."""
  if name not in _SEARCHERS:
    s = (metaopt.random_search(space.dim) if name == "random"
         else metaopt.tpe(space.dim, n_startup=16))
    _SEARCHERS[name] = (s, jax.jit(s.ask, static_argnums=2), jax.jit(s.tell),
                        jax.jit(space.decode))
  return _SEARCHERS[name]


def _blackbox(name: str, space: Space, evaluate, trials: int, seed: int, start: dict):
  """(best point, best val loss seen, seconds, trials): ``trials`` evaluations in batches of
  BATCH, the first one ``start``."""
  t0 = time.perf_counter()
  searcher, ask, tell, decode = _searcher(name, space)
  key = jax.random.key(seed + 100)
  state = searcher.init(key)
  best, best_u = np.inf, None
  for r in range(math.ceil(trials / BATCH)):
    state, u = ask(state, jax.random.fold_in(key, r), BATCH)
    if r == 0:  # the default point is the first trial (enqueued), as for the gradient method
      u = u.at[0].set(jnp.asarray(space.encode(start), u.dtype))
    y = evaluate(decode(u), jax.random.split(jax.random.fold_in(key, 10_000 + r), BATCH))
    state = tell(state, u, y, jnp.where(jnp.isfinite(y), 0, 1).astype(jnp.int32))
    y = np.asarray(y)
    i = int(np.argmin(y))
    if y[i] < best:
      best, best_u = float(y[i]), np.asarray(u[i])
  point = space.to_python(jax.device_get(space.decode(jnp.asarray(best_u))))
  return point, best, time.perf_counter() - t0, math.ceil(trials / BATCH) * BATCH


def hypergrad_cost(steps: int, evaluate, space: Space, layers: list[str],
                   rounds: int = 5) -> tuple[float, dict]:
  """TRE of one hypergradient (time of one population step / time of POP training runs)
  and the compile seconds of each method (first call minus a steady call)."""
  cfg = _config(steps, 1, 0, HYPER_LR)
  theta0, init, step = _program(cfg)
  key = jax.random.key(0)
  state = init(key, theta0)
  point = _default_point(layers)
  h = {n: jnp.full((POP,), point[n], jnp.float32) for n in space.names}
  keys = jax.random.split(key, POP)
  first = {}
  for name, fn in (("hypergrad", lambda: step(state, key)), ("train", lambda: evaluate(h, keys))):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - t
  secs = _best_times({"hypergrad": lambda: step(state, key),
                      "train": lambda: evaluate(h, keys)}, rounds)
  compile_s = {"hypergrad": first["hypergrad"] - secs["hypergrad"],
               "train (random, TPE)": first["train"] - secs["train"]}
  for name in ("random", "tpe"):
    searcher, ask, tell, decode = _searcher(name, space)
    st = searcher.init(key)
    t = time.perf_counter()
    st, u = ask(st, key, BATCH)
    jax.block_until_ready(tell(st, u, jnp.zeros(BATCH), jnp.zeros(BATCH, jnp.int32)))
    jax.block_until_ready(decode(u))
    compile_s[f"{name} ask/tell"] = time.perf_counter() - t
  return secs["hypergrad"] / secs["train"], compile_s


def _outer_steps(budget: float, cost: float) -> int:
  return max(1, int(budget // (POP * cost)))


def select(steps: int, budget: float, cost: float, n_seeds: int) -> float:
  """The candidate Adam step with the lowest median validation loss on development seeds."""
  outer = _outer_steps(budget, cost)
  seeds = DEV_SEEDS[:n_seeds]
  print(f"select: gradient method only, {outer} outer steps, dev seeds {list(seeds)}")
  med = {}
  for lr in HYPER_LR_CANDIDATES:
    vals = [_gradient(_config(steps, outer, s, lr))[1] for s in seeds]
    med[lr] = spread(vals)
    print(f"  hyper_lr {lr:g}: best val loss seen {med[lr]}", flush=True)
  chosen = min(med, key=lambda k: med[k].median)
  print(f"chosen hyper_lr (dev seeds): {chosen:g}  (frozen value in the script: {HYPER_LR:g})")
  return chosen


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="T=50, budget 64 TRE, 2 report seeds")
  ap.add_argument("--select", action="store_true",
                  help="choose the Adam step on development seeds (no report)")
  ap.add_argument("--seeds", type=int, default=10, help="report seeds (REPORT_SEEDS[:n])")
  ap.add_argument("--dev_seeds", type=int, default=5, help="development seeds for --select")
  ap.add_argument("--steps", type=int, default=100, help="inner SGD steps T")
  ap.add_argument("--budget", type=float, default=192, help="TRE per method and seed")
  ap.add_argument("--cost", type=float, default=0.0,
                  help="TRE of one hypergradient (0: measure it in this run; give the value a "
                       "--select run printed to give both runs the same outer steps)")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "results_hypergrad_vs_blackbox.md"))
  a = ap.parse_args()
  if a.cost < 0 or a.budget <= 0:
    ap.error(f"--cost must be >= 0 and --budget > 0, got {a.cost:g} and {a.budget:g}")
  steps, budget, n_seeds = (50, 64, 2) if a.quick else (a.steps, a.budget, a.seeds)
  problem = hypergrad.get_problem("mlp", **_config(steps, 1, 0, HYPER_LR)["problem"])
  test_problem = hypergrad.get_problem("mlp", val_split="test",
                                       **_config(steps, 1, 0, HYPER_LR)["problem"])
  layers = sorted(problem.hparams["learning_rate"])
  space = _space(layers)
  evaluate = _objective(problem, layers, steps)
  evaluate_test = _objective(test_problem, layers, steps)
  load = os.getloadavg()
  cost, compile_s = hypergrad_cost(steps, evaluate, space, layers)
  if a.cost > 0:
    print(f"measured {cost:.2f} TRE per hypergradient; using --cost {a.cost:g}")
    cost = a.cost
  outer = _outer_steps(budget, cost)
  print(f"{space.dim} hyperparameters, T={steps}; one hypergradient = {cost:.2f} TRE "
        f"({'--cost' if a.cost > 0 else 'measured here'}); budget {budget:g} TRE: "
        f"gradient {outer} outer steps x {POP}, "
        f"random / TPE {math.ceil(budget / BATCH) * BATCH} trials; "
        f"load {load[0]:.1f}", flush=True)
  print("compile seconds (once per process): "
        + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()), flush=True)
  if a.select:
    select(steps, budget, cost, a.dev_seeds)
    return
  seeds = REPORT_SEEDS[:n_seeds]
  start = _default_point(layers)
  methods = ("hypergrad", "random", "tpe")
  test = {m: [] for m in methods}
  val = {m: [] for m in methods}
  secs = {m: [] for m in methods}
  for seed in seeds:
    key = jax.random.key(7000 + seed)
    for m in methods:  # interleaved per seed
      if m == "hypergrad":
        point, _, dt, _ = _gradient(_config(steps, outer, seed, HYPER_LR))
      else:
        point, _, dt, _ = _blackbox(m, space, evaluate, budget, seed, start)
      test[m].append(_retrain(evaluate_test, space, point, key))
      val[m].append(_retrain(evaluate, space, point, key))
      secs[m].append(dt)
    print(f"seed {seed}: " + ", ".join(f"{m} test {test[m][-1]:.4f} val {val[m][-1]:.4f} "
                                        f"({secs[m][-1]:.1f}s)" for m in methods), flush=True)
  load_end = os.getloadavg()
  flags = " --quick" if a.quick else ""
  md = [f"Command: `python benchmarks/hypergrad_vs_blackbox.py{flags}` "
        f"({space.dim} hyperparameters: per-layer learning rate and weight decay of a "
        f"{DEPTH}-layer width-{WIDTH} MLP on digits, plus momentum; T={steps} SGD steps; "
        f"report seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}); Adam step {HYPER_LR:g} on the "
        f"log / logit hyperparameters, chosen on dev seeds {DEV_SEEDS[0]}-"
        f"{DEV_SEEDS[a.dev_seeds - 1]} with `--select`; load average {load[0]:.1f} at the "
        f"start, {load_end[0]:.1f} at the end).", "",
        f"Budget per method and seed: {budget:g} training-run equivalents (TRE). One "
        f"hypergradient of this net costs {cost:.2f} TRE ("
        f"{'given by --cost' if a.cost > 0 else 'measured in this run'}), so the "
        f"gradient method gets {outer} outer steps x population {POP} "
        f"({outer * POP} hypergradients = {outer * POP * cost:.0f} TRE); random search and TPE "
        f"get {math.ceil(budget / BATCH) * BATCH} training runs each. Every method starts from "
        "the defaults (lr 0.05, wd 1e-4, momentum 0.9: gradient population member 0, the "
        "first trial of random and TPE).", "",
        "Test loss: each method's pick (lowest validation loss seen) retrained from 4 fresh "
        "initialisations, mean cross-entropy on the digits test split (seen by no method). "
        "Compile seconds, paid once per process: "
        + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()) + ".", "",
        "| method | test loss median [IQR] | val loss median [IQR] | per seed (test) | "
        "wall seconds per seed (median, compile excluded) |", "|---|---|---|---|---|"]
  for m in methods:
    md.append(f"| {m} | {spread(test[m])} | {spread(val[m])} | "
              f"{', '.join(f'{v:.4f}' for v in test[m])} | {np.median(secs[m]):.1f} |")
  md += ["", "Paired over seeds (test loss, lower is better):", ""]
  for m in ("tpe", "random"):
    md.append(f"- gradient HPO vs {m}: {paired(test['hypergrad'], test[m])}")
  md.append(f"- TPE vs random: {paired(test['tpe'], test['random'])}")
  text = "\n".join(md)
  print(text)
  a.out = results_path(a.out, a.quick)  # a quick run leaves the committed table alone
  with open(a.out, "w") as f:
    f.write(text + "\n")
  ratio = spread(test["hypergrad"]).median / spread(test["tpe"]).median
  headline("hypergrad_vs_tpe_test_loss_ratio", ratio,
           f"unrolled reverse-mode, Adam step {HYPER_LR:g}, equal TRE budget {budget:g}",
           "benchmarks/hypergrad_vs_blackbox.py HYPER_LR (chosen by --select on dev seeds)")


if __name__ == "__main__":
  main()
