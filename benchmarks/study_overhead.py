"""Host overhead per trial of a hand-driven ask / tell loop: metaopt.Study vs Optuna, TPE.

Both libraries run their default TPE (Optuna's ``TPESampler``; metaopt's ``"tpe"``) for
100 trials over the same mixed space (a float, a log float, an integer, a categorical) on a
trivial objective, so that all the time measured is the library's: proposing, decoding,
recording. Both sides keep their trials in memory (Optuna's ``InMemoryStorage``; a study
without ``store``), then both in a SQLite file. metaopt's compile time (TPE's ``ask`` is
compiled once per process and settings) is measured on the calling thread and reported
apart; the per-trial figure excludes it. Each figure is the median over seeds.

    python benchmarks/study_overhead.py           # 5 seeds, both storages
    python benchmarks/study_overhead.py --quick   # 2 seeds; writes nothing

Prints ``study_ask_tell_overhead_vs_optuna_tpe: X`` (host seconds per trial, ours /
Optuna's, in memory; target <= 2) and the same for SQLite.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import optuna  # noqa: E402

import metaopt  # noqa: E402
from metaopt._src import population as pop  # noqa: E402
from metaopt.spaces import Choice, Float, Int, Space  # noqa: E402

SPACE = Space({"x": Float(-5.0, 5.0), "lr": Float(1e-5, 1.0, log=True), "n": Int(1, 64),
               "act": Choice(["relu", "tanh", "gelu"])})


def objective(p: dict) -> float:
  return (p["x"] - 1.0) ** 2 + (math.log10(p["lr"]) + 2.0) ** 2 + 0.01 * p["n"] + \
      (p["act"] != "relu")


def ours(seed: int, n: int, store: str | None) -> tuple[float, float]:
  """(host seconds per trial excluding compilation, compile seconds)."""
  c0, t0 = pop.compile_seconds(), time.perf_counter()
  study = metaopt.create_study(SPACE, "tpe", seed=seed, store=store, study_name=f"s{seed}")
  for _ in range(n):
    (t,) = study.ask()
    study.tell(t, objective(t.params))
  wall = time.perf_counter() - t0
  compiled = pop.compile_seconds() - c0
  return (wall - compiled) / n, compiled


def theirs(seed: int, n: int, storage: str | None) -> float:
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), storage=storage,
                              study_name=f"s{seed}")
  t0 = time.perf_counter()
  for _ in range(n):
    t = study.ask()
    p = {"x": t.suggest_float("x", -5.0, 5.0), "lr": t.suggest_float("lr", 1e-5, 1.0, log=True),
         "n": t.suggest_int("n", 1, 64), "act": t.suggest_categorical("act", ["relu", "tanh",
                                                                              "gelu"])}
    study.tell(t, objective(p))
  return (time.perf_counter() - t0) / n


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--trials", type=int, default=100)
  args = ap.parse_args()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  seeds = range(2 if args.quick else 5)
  tmp = tempfile.mkdtemp(prefix="study-overhead-")
  print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
  compile_first = None
  ratios = {}
  for storage in ("memory", "sqlite"):
    ours_s, theirs_s = [], []
    for s in seeds:
      url_o = None if storage == "memory" else f"sqlite:///{tmp}/ours_{s}.db"
      url_t = None if storage == "memory" else f"sqlite:///{tmp}/optuna_{s}.db"
      per, compiled = ours(s, args.trials, url_o)
      if compile_first is None:
        compile_first = compiled
      ours_s.append(per)
      theirs_s.append(theirs(s, args.trials, url_t))
    a, b = statistics.median(ours_s), statistics.median(theirs_s)
    ratios[storage] = a / b
    print(f"{storage:6s}: metaopt {1e3 * a:.2f} ms/trial, optuna {1e3 * b:.2f} ms/trial "
          f"(medians over {len(seeds)} seeds, {args.trials} trials each)")
  print(f"metaopt compile (first study in the process): {compile_first:.2f} s")
  print(f"load average at end: {os.getloadavg()[0]:.2f}")
  print(f"study_ask_tell_overhead_vs_optuna_tpe: {ratios['memory']:.2f}")
  print(f"study_ask_tell_overhead_vs_optuna_tpe_sqlite: {ratios['sqlite']:.2f}")


if __name__ == "__main__":
  main()
