"""Gradient-based HPO of 21 per-layer hyperparameters vs random search and TPE at equal time.

The problem: a 10-layer ReLU MLP (width 32) on digits trained for ``T`` SGD steps
(``metaopt.hypergrad.problems.mlp(per_layer=True)``); the hyperparameters are one learning rate and
one weight decay per layer plus the momentum (21 in all). The objective of every method is
the same: validation loss after ``T`` steps from a fresh initialisation.

* ``hypergrad``: unrolled reverse-mode hypergradients (sqrt(T) remat) with Adam on the
  log/logit hyperparameters, a population of 4 starting points from the problem's defaults
  (learning rate 0.05, weight decay 1e-4, momentum 0.9) perturbed in log space;
* ``random`` / ``tpe``: metaopt's random search and multivariate TPE over the same 21
  hyperparameters (learning rates in [1e-3, 1], weight decays in [1e-6, 1e-2], both log;
  momentum in [0, 0.99]), each batch of 8 configurations trained in one ``jit(vmap)``.

Every method is compiled first (not timed), then runs until it has used the wall-clock the
gradient method took for its outer steps; they run interleaved per seed on one machine.
Reported: best validation loss found (the best hyperparameters re-evaluated on 4 fresh
initialisations, mean), number of training runs, medians over seeds.

    python benchmarks/hypergrad_vs_blackbox.py [--quick]

The last line is ``hypergrad_vs_tpe_val_loss_ratio: X`` (< 1: the gradient method wins).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

import metaopt  # noqa: E402
from metaopt import hypergrad  # noqa: E402
from metaopt.hypergrad.inner import optax_inner_loop  # noqa: E402
from metaopt.hypergrad.unrolled import run_inner  # noqa: E402
from metaopt.spaces import Float, Space  # noqa: E402

DEPTH, WIDTH = 10, 32


def _config(steps: int, outer: int, seed: int, hyper_lr: float = 0.05) -> dict:
  return {"name": "bench", "problem_name": "mlp", "method": "unrolled",
          "problem": {"dataset": "digits", "widths": [WIDTH] * (DEPTH - 1), "per_layer": True,
                      "batch_size": 64},
          "tune": ["learning_rate", "momentum", "weight_decay"], "init": {},
          "estimator": {"truncate": 0, "remat": "sqrt", "max_norm": 1e6},
          "inner_steps": steps, "outer_steps": outer, "population": 4, "init_spread": 0.3,
          "meta_optimizer": "adam", "hyper_lr": hyper_lr, "warm_start": False, "seed": seed}


def _space(layers: list[str]) -> Space:
  p = {f"lr_{n}": Float(1e-3, 1.0, log=True) for n in layers}
  p.update({f"wd_{n}": Float(1e-6, 1e-2, log=True) for n in layers})
  p["momentum"] = Float(0.0, 0.99)
  return Space(p)


def _objective(problem, layers: list[str], steps: int):
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

  return jax.jit(jax.vmap(f)), hparams


def _reevaluate(evaluate, space: Space, point: dict, key) -> float:
  h = {n: jnp.full((4,), point[n], jnp.float32) for n in space.names}
  return float(jnp.mean(evaluate(h, jax.random.split(key, 4))))


def _gradient(cfg: dict) -> tuple[dict, float, int]:
  program, theta0, _ = hypergrad.hpo.build(cfg)
  key = jax.random.key(cfg["seed"])
  k_init, k_run = jax.random.split(key)
  step = jax.jit(program.step)
  state = jax.jit(program.init)(k_init, theta0)
  jax.block_until_ready(step(state, k_run))  # compile
  t0 = time.perf_counter()
  best, best_h = np.inf, None
  for k in jax.random.split(k_run, cfg["outer_steps"]):
    state, tel = step(state, k)
    val = np.asarray(tel["val_loss"])
    i = int(np.nanargmin(np.where(np.isfinite(val), val, np.inf)))
    if val[i] < best:
      best, best_h = float(val[i]), jax.tree.map(lambda a, i=i: np.asarray(a)[i], tel["hparams"])
  jax.block_until_ready(state)
  return best_h, time.perf_counter() - t0, cfg["outer_steps"] * cfg["population"]


def _blackbox(name: str, space: Space, evaluate, seconds: float, seed: int, batch: int = 8):
  searcher = (metaopt.random_search(space.dim) if name == "random"
              else metaopt.tpe(space.dim, n_startup=16))
  ask = jax.jit(searcher.ask, static_argnums=2)
  tell = jax.jit(searcher.tell)
  key = jax.random.key(seed + 100)
  state = searcher.init(key)
  decode = jax.jit(space.decode)
  # compile everything once, outside the clock (a throwaway state)
  s0, u0 = ask(state, key, batch)
  jax.block_until_ready(tell(s0, u0, evaluate(decode(u0), jax.random.split(key, batch)),
                             jnp.zeros(batch, jnp.int32)))
  t0 = time.perf_counter()
  best, best_u, runs, r = np.inf, None, 0, 0
  while time.perf_counter() - t0 < seconds:
    state, u = ask(state, jax.random.fold_in(key, r), batch)
    y = evaluate(decode(u), jax.random.split(jax.random.fold_in(key, 10_000 + r), batch))
    state = tell(state, u, y, jnp.where(jnp.isfinite(y), 0, 1).astype(jnp.int32))
    y = np.asarray(y)
    i = int(np.argmin(y))
    if y[i] < best:
      best, best_u = float(y[i]), np.asarray(u[i])
    runs += batch
    r += 1
  point = space.to_python(jax.device_get(space.decode(jnp.asarray(best_u))))
  return point, time.perf_counter() - t0, runs


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="T=50, 10 outer steps, 2 seeds")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--outer", type=int, default=30)
  ap.add_argument("--hyper_lr", type=float, default=0.05, help="Adam step on log/logit hparams")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "results_hypergrad_vs_blackbox.md"))
  a = ap.parse_args()
  steps, outer, seeds = (50, 10, 2) if a.quick else (a.steps, a.outer, a.seeds)
  problem = hypergrad.get_problem("mlp", **_config(steps, outer, 0)["problem"])
  layers = sorted(problem.hparams["learning_rate"])
  space = _space(layers)
  evaluate, _ = _objective(problem, layers, steps)
  print(f"{space.dim} hyperparameters, T={steps}, {outer} outer steps x population 4")
  res = {m: [] for m in ("hypergrad", "random", "tpe")}
  runs = {m: [] for m in res}
  secs = {m: [] for m in res}
  for seed in range(seeds):
    h, dt, n = _gradient(_config(steps, outer, seed, a.hyper_lr))
    point = {f"lr_{k}": float(v) for k, v in h["learning_rate"].items()}
    point.update({f"wd_{k}": float(v) for k, v in h["weight_decay"].items()})
    point["momentum"] = float(h["momentum"])
    key = jax.random.key(1000 + seed)
    res["hypergrad"].append(_reevaluate(evaluate, space, point, key))
    runs["hypergrad"].append(n)
    secs["hypergrad"].append(dt)
    for m in ("random", "tpe"):
      p, t, n = _blackbox(m, space, evaluate, dt, seed)
      res[m].append(_reevaluate(evaluate, space, p, key))
      runs[m].append(n)
      secs[m].append(t)
    print(f"seed {seed}: " + ", ".join(f"{m} {res[m][-1]:.4f} ({runs[m][-1]} runs, "
                                        f"{secs[m][-1]:.1f}s)" for m in res), flush=True)
  med = {m: statistics.median(v) for m, v in res.items()}
  flags = (" --quick" if a.quick else "") + (f" --hyper_lr {a.hyper_lr:g}"
                                             if a.hyper_lr != 0.05 else "")
  md = [f"Command: `python benchmarks/hypergrad_vs_blackbox.py{flags}`"
        f" ({space.dim} hyperparameters: per-layer learning rate and weight decay of a "
        f"{DEPTH}-layer MLP on digits, plus momentum; T={steps} SGD steps; {seeds} seeds; "
        "equal wall-clock per seed, compile excluded).", "",
        "| method | median best val loss | per seed | training runs (median) | seconds |",
        "|---|---|---|---|---|"]
  for m in res:
    md.append(f"| {m} | {med[m]:.4f} | {', '.join(f'{v:.4f}' for v in res[m])} | "
              f"{statistics.median(runs[m]):g} | {statistics.median(secs[m]):.1f} |")
  text = "\n".join(md)
  print(text)
  a.out = results_path(a.out, a.quick)  # a quick run leaves the committed table alone
  with open(a.out, "w") as f:
    f.write(text + "\n")
  print(f"hypergrad_vs_tpe_val_loss_ratio: {med['hypergrad'] / med['tpe']:.3f}")


if __name__ == "__main__":
  main()
