"""The repair loop vs random search and TPE, each started from the same broken config.

A suite of seeded broken starting configurations across the bundled tasks (digits, wine and
breast-cancer MLP classifiers, synthetic regression): learning rates far too high or too
low, deep sigmoid nets with tiny initial weights, ReLU nets with strongly negative initial
biases, saturated tanh nets. Every method trains the start first, then proposes more trials
over the same repair space (``metaopt.repair.repair_space()``) with the same budget, the same
epochs per trial and the same data:

* ``repair-1``: DREAM's Algorithm 1 as in the paper, one action per trial (population 1);
* ``repair-4``: ours, the top 4 actions per round trained as a population in one kernel;
* ``random``: random search (population 4);
* ``tpe``: metaopt's multivariate TPE (population 4).

For each, the number of trials up to and including the first that reaches the task's target
(by trial number: for population methods this is the count a one-at-a-time user would have
needed with the same proposals, which favours them over counting whole rounds), and the
wall-clock until the search stopped. A method that never reaches the target within the budget
counts as ``budget + 1``.

    python benchmarks/repair.py [--quick]

The last line is ``repair_median_trials_to_target: X`` (``repair-4``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

import metaopt  # noqa: E402
from metaopt.repair import repair, repair_space  # noqa: E402
from metaopt.tasks import get_task  # noqa: E402

TARGETS = {"digits_mlp": 0.93, "wine_mlp": 0.93, "breast_cancer_mlp": 0.95,
           "synthetic_regression": 0.35}

_BROKEN = {
    "lr10_sgd": {"optimizer": "sgd", "learning_rate": 10.0, "momentum": 0.9},
    "lr1e-6_sgd": {"optimizer": "sgd", "learning_rate": 1e-6, "momentum": 0.0},
    "deep_sigmoid_tiny_init": {"activation": "sigmoid", "depth": 5, "init_scale": 0.05,
                               "learning_rate": 1e-3},
    "relu_negative_bias": {"activation": "relu", "bias_init": -4.0, "learning_rate": 1e-3},
    "lr3_adamw": {"optimizer": "adamw", "learning_rate": 3.0},
    "tanh_saturated": {"activation": "tanh", "depth": 4, "init_scale": 6.0,
                       "learning_rate": 1e-4},
}
SUITE = [(task, name) for task in TARGETS for name in
         ("lr10_sgd", "lr1e-6_sgd", "deep_sigmoid_tiny_init", "relu_negative_bias",
          "lr3_adamw")]
SUITE += [("digits_mlp", "tanh_saturated"), ("wine_mlp", "tanh_saturated")]


def _program(method: str, space, start, seed: int):
  n = space.dim
  if method.startswith("repair"):
    k = int(method.split("-")[1])
    return repair(metaopt.random_search(n), space, start=start, population=k), k
  first = metaopt.points(space.encode(start)[None])
  inner = metaopt.random_search(n) if method == "random" else metaopt.tpe(n, n_startup=4)
  return metaopt.sequential(first, inner, n_first=1), 4


def _trials_to_target(trials, target: float, direction: str) -> int | None:
  for t in sorted(trials, key=lambda t: t.number):
    if t.status == "complete" and t.objective is not None and (
        t.objective >= target if direction == "maximize" else t.objective <= target):
      return t.number + 1
  return None


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="8 configs, budget 8, 4 epochs")
  ap.add_argument("--budget", type=int, default=16)
  ap.add_argument("--epochs", type=int, default=6)
  ap.add_argument("--methods", default="repair-1,repair-4,random,tpe")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "results_repair.md"))
  a = ap.parse_args()
  metaopt.enable_compilation_cache()
  suite = SUITE[::3] if a.quick else SUITE
  budget, epochs = (8, 4) if a.quick else (a.budget, a.epochs)
  methods = a.methods.split(",")
  space = repair_space()
  rows, per_method = [], {m: [] for m in methods}
  secs = {m: [] for m in methods}
  for i, (task_name, broken) in enumerate(suite):
    task = get_task(task_name)
    target = TARGETS[task_name]
    start = _BROKEN[broken]
    line = [f"{task_name}/{broken}"]
    for m in methods:
      prog, pop = _program(m, space, start, seed=i)
      t0 = time.perf_counter()
      res = metaopt.search(prog, task, space=space, n_trials=budget, population=pop,
                           epochs=epochs, batch_size=32, seed=i, progress=False, target=target,
                           study=f"{m}_{i}")
      dt = time.perf_counter() - t0
      n = _trials_to_target(res.trials, target, task.direction)
      per_method[m].append(budget + 1 if n is None else n)
      secs[m].append(dt)
      best = res.best.objective if res.best else float("nan")
      line.append(f"{'>' + str(budget) if n is None else n} ({best:.3f}, {dt:.0f}s)")
      print(f"{task_name:22s} {broken:24s} {m:9s} trials_to_target={n} best={best:.4f} "
            f"{dt:.1f}s", flush=True)
    rows.append(line)
  med = {m: statistics.median(v) for m, v in per_method.items()}
  reached = {m: sum(x <= budget for x in v) for m, v in per_method.items()}
  header = ["config"] + methods
  flags = " --quick" if a.quick else f" --budget {budget} --epochs {epochs}"
  md = [f"Command: `python benchmarks/repair.py{flags}` "
        f"(budget {budget} trials, {epochs} epochs per trial, targets {TARGETS}).",
        "", "Cells: trials to target (best objective, wall-clock of the search).", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(r) + " |" for r in rows]
  md += ["", "| summary | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
         "| median trials to target | " + " | ".join(f"{med[m]:g}" for m in methods) + " |",
         "| reached target | " + " | ".join(f"{reached[m]}/{len(suite)}" for m in methods)
         + " |",
         "| median wall-clock (s) | " + " | ".join(f"{statistics.median(secs[m]):.1f}"
                                                   for m in methods) + " |"]
  if "random" in med and "repair-4" in med:
    md.append("")
    md.append(f"random / repair-4 median trials: {med['random'] / med['repair-4']:.2f}x")
  text = "\n".join(md)
  print(text)
  a.out = results_path(a.out, a.quick)  # a quick run leaves the committed table alone
  with open(a.out, "w") as f:
    f.write(text + "\n")
  key = "repair-4" if "repair-4" in med else methods[0]
  print(f"repair_median_trials_to_target: {med[key]:g}")


if __name__ == "__main__":
  main()
