"""The repair loop vs random search, TPE and the same actions in random order, from broken
starting configs, on an in-sample suite and on a held-out suite.

Every method trains the start first, then proposes more trials over the same repair space
(``metaopt.repair.repair_space(task=task)``: the parameters the task reads) with the same
budget, epochs per trial, data and seeds:

* ``repair-4``: the shipped loop (``metaopt.repair.repair``, shipped priority table, default
  settings; the table is applied to every task, ``family=None``, as this benchmark always
  did), the top 4 actions per round trained as a population in one kernel;
* ``random-order``: the ablation: the same loop and actions with the table's ranking replaced
  by a random one (its action columns and opening portfolio shuffled, per start and seed);
* ``random``: random search (population 4);
* ``tpe``: metaopt's multivariate TPE (population 4).

Suites (see the Protocol in BENCHMARKS.md):

* **in-sample** (development): the 22 starts the table's compound actions and the loop were
  developed on (issue 8): learning rates far too high or too low, deep sigmoid nets with tiny
  initial weights, ReLU nets with strongly negative biases, saturated tanh nets, on digits,
  wine and breast-cancer MLPs and synthetic regression, seeds = case index. Figures from it
  are in-sample.
* **held-out** (report): tasks outside the table's corpus (``digits_cnn``: a CNN;
  ``mnist1d_mlp`` and ``mnist1d_cnn``: MNIST-1D) and fault types outside the in-sample suite
  (fine-tuning stages at a tiny rate, a frozen body, plain SGD at 1e-4 with batch 128,
  sigmoid with plain SGD, a cosine schedule from 1e-5, initial weights x10 at learning rate
  0.1, ELU with biases -5), seeds from ``_protocol.REPORT_SEEDS``. Targets: 0.95 x the valid
  accuracy the task's default config reached at 5 epochs on development seed 0 (rounded down
  to 0.01), fixed before any held-out run.

Trials to target counts trials up to and including the first that reaches the target, by
trial number (favours the population methods); a method that never reaches it counts as
``budget + 1``. A start that already reaches the target is not broken: such (case, seed)
pairs are left out of every method's figures (the start is the same first trial for all).
Wall-clock includes compilation (no persistent compilation cache in a full run: every search
compiles its kernels), and the compile seconds are shown separately. ``--quick`` turns the
persistent cache on (a smoke run: its wall-clock is not a figure).

    python benchmarks/repair.py            # full: both suites, budget 12, 5 epochs
    python benchmarks/repair.py --quick    # smoke run: fewer cases and seeds, budget 8

The last lines are the headline figures of both suites, among them
``repair_heldout_median_trials_to_target: X`` and ``repair_random_order_over_table: X``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path
from _protocol import DEV_SEEDS, REPORT_SEEDS, headline, paired, spread  # noqa: E402

import metaopt  # noqa: E402
from metaopt.repair import load_table, repair, repair_space  # noqa: E402
from metaopt.tasks import get_task  # noqa: E402

# ---------------------------------------------------------------- in-sample (development)
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
# development fine-tuning faults on corpus tasks (``--dev --dev-finetune``; values unlike
# the held-out starts': for choosing how the loop treats fine-tuning, never reported)
_BROKEN.update({
    "ft_2stage_lr0.02": {"finetune_steps": 2, "finetune_fraction": 0.45, "finetune_lr": 0.02},
    "ft_3stage_lr0.03": {"finetune_steps": 3, "finetune_fraction": 0.4, "finetune_lr": 0.03},
    "ft_frozen_lr1e-4": {"finetune_steps": 2, "finetune_fraction": 0.4, "finetune_freeze": True,
                         "learning_rate": 1e-4},
})
DEV_FINETUNE = [(task, name) for task in ("digits_mlp", "wine_mlp") for name in
                ("ft_2stage_lr0.02", "ft_3stage_lr0.03", "ft_frozen_lr1e-4")]

# ---------------------------------------------------------------- held-out (report)
# 0.95 x the default config's valid accuracy at 5 epochs on development seed 0, rounded down
# (digits_cnn 0.490, mnist1d_mlp 0.427, mnist1d_cnn 0.935)
HELDOUT_TARGETS = {"digits_cnn": 0.46, "mnist1d_mlp": 0.40, "mnist1d_cnn": 0.88}
HELDOUT_BROKEN = {
    "finetune_tiny": {"finetune_steps": 3, "finetune_fraction": 0.5, "finetune_lr": 0.01},
    "frozen_body": {"finetune_steps": 2, "finetune_fraction": 0.5, "finetune_freeze": True,
                    "learning_rate": 3e-4},
    "sgd_slow_bigbatch": {"optimizer": "sgd", "learning_rate": 1e-4, "momentum": 0.0,
                          "batch_size": 128},
    "sigmoid_sgd": {"activation": "sigmoid", "optimizer": "sgd", "learning_rate": 1e-2,
                    "momentum": 0.0},
    "cosine_lr1e-5": {"learning_rate": 1e-5, "lr_schedule": "cosine", "lr_end": 0.001},
    "huge_init_lr0.1": {"init_scale": 10.0, "learning_rate": 0.1},
    "elu_bias-5": {"activation": "elu", "bias_init": -5.0, "learning_rate": 1e-4},
}
HELDOUT = [(task, name) for task in HELDOUT_TARGETS for name in HELDOUT_BROKEN]

METHODS = ("repair-4", "random-order", "random", "tpe")


def shuffled_table(table: dict, rng: np.random.Generator) -> dict:
  """``table`` with its ranking replaced by a random one: each action takes the measured
  gains (and the opening-portfolio place) of another, drawn by a random permutation."""
  names = list(table["actions"])
  perm = rng.permutation(len(names))
  relabel = {names[j]: names[perm[j]] for j in range(len(names))}
  return {**table, "actions": [relabel[n] for n in names],
          "opening": [relabel[n] for n in table.get("opening", [])]}


def _program(method: str, space, start, table, rng, repair_kw=None):
  n = space.dim
  if method in ("repair-4", "random-order"):
    tab = table if method == "repair-4" else shuffled_table(table, rng)
    return repair(metaopt.random_search(n), space, start=start, population=4, table=tab,
                  **(repair_kw or {})), 4
  first = metaopt.points(space.encode(start)[None])
  inner = metaopt.random_search(n) if method == "random" else metaopt.tpe(n, n_startup=4)
  return metaopt.sequential(first, inner, n_first=1), 4


def _trials_to_target(trials, target: float, direction: str) -> int | None:
  for t in sorted(trials, key=lambda t: t.number):
    if t.status == "complete" and t.objective is not None and (
        t.objective >= target if direction == "maximize" else t.objective <= target):
      return t.number + 1
  return None


class _CompileClock:
  """Seconds of XLA compilation since ``reset`` (a jax.monitoring listener)."""

  def __init__(self):
    self.s = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on)

  def _on(self, name, secs, **kw):
    if "backend_compile" in name:
      self.s += secs

  def reset(self):
    self.s = 0.0


def run_suite(label, cases, targets, seeds_of, methods, budget, epochs, clock, table,
              repair_kw=None):
  """Runs every (case, seed) with every method; returns per-pair records."""
  out = []
  for ci, (task_name, broken) in enumerate(cases):
    task = get_task(task_name)
    space = repair_space(task=task)
    start = (_BROKEN if label == "in-sample" else HELDOUT_BROKEN)[broken]
    target = targets[task_name]
    for seed in seeds_of(ci):
      rec = {"case": f"{task_name}/{broken}", "seed": seed, "n": {}, "best": {}, "s": {},
             "compile_s": {}}
      for m in methods:
        rng = np.random.default_rng([seed, ci])
        prog, pop = _program(m, space, start, table, rng, repair_kw)
        clock.reset()
        t0 = time.perf_counter()
        res = metaopt.search(prog, task, space=space, n_trials=budget, population=pop,
                             epochs=epochs, batch_size=32, seed=seed, progress=False,
                             target=target, study=f"{m}_{ci}_{seed}")
        dt = time.perf_counter() - t0
        n = _trials_to_target(res.trials, target, task.direction)
        rec["n"][m] = budget + 1 if n is None else n
        rec["best"][m] = res.best.objective if res.best else float("nan")
        rec["s"][m], rec["compile_s"][m] = dt, clock.s
        print(f"{label:9s} {task_name:20s} {broken:22s} seed={seed:<5d} {m:12s} "
              f"trials_to_target={n} best={rec['best'][m]:.4f} {dt:.1f}s "
              f"(compile {clock.s:.1f}s)", flush=True)
      out.append(rec)
  return out


def summarise(label, recs, methods, budget):
  """Markdown lines and the per-method trials-to-target of the broken (case, seed) pairs."""
  broken = [r for r in recs if not all(r["n"][m] == 1 for m in methods)]
  left = len(recs) - len(broken)
  per = {m: [r["n"][m] for r in broken] for m in methods}
  md = [f"**{label}** ({len(broken)} broken (start, seed) pairs; {left} left out: the start "
        "already reached the target)", "",
        "| method | median trials to target [IQR] | reached | median wall-clock s "
        "(compile s) |", "|---|---|---|---|"]
  for m in methods:
    if not broken:
      break
    reached = sum(x <= budget for x in per[m])
    wall = np.median([r["s"][m] for r in broken])
    comp = np.median([r["compile_s"][m] for r in broken])
    md.append(f"| {m} | {spread(per[m])} | {reached}/{len(broken)} | {wall:.1f} "
              f"({comp:.1f}) |")
  md.append("")
  if "repair-4" in methods:
    for other in methods:
      if other != "repair-4" and broken:
        md.append(f"- repair-4 vs {other} (trials to target, lower is better): "
                  f"{paired(per['repair-4'], per[other])}")
  return md, per


def _table(recs, methods, budget):
  rows = ["| start | seed | " + " | ".join(methods) + " |",
          "|---|---|" + "---|" * len(methods)]
  for r in recs:
    cells = [f"{'>' + str(budget) if r['n'][m] > budget else r['n'][m]} "
             f"({r['best'][m]:.3f}, {r['s'][m]:.0f}s)" for m in methods]
    rows.append(f"| {r['case']} | {r['seed']} | " + " | ".join(cells) + " |")
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 2 in-sample starts, 2 held-out faults per task, 1 seed, "
                       "budget 8, 4 epochs, no TPE, persistent compilation cache on")
  ap.add_argument("--budget", type=int, default=12)
  ap.add_argument("--epochs", type=int, default=5)
  ap.add_argument("--seeds", type=int, default=2, help="report seeds per held-out start")
  ap.add_argument("--suites", default="in-sample,held-out")
  ap.add_argument("--insample-every", type=int, default=1,
                  help="run every k-th in-sample start (a reduced full run)")
  ap.add_argument("--limit", type=int, default=0, help="first N starts per suite (smoke test)")
  ap.add_argument("--methods", default=None,
                  help=f"comma-separated subset of {','.join(METHODS)} (default: all; "
                       "--quick: all but tpe)")
  ap.add_argument("--dev", action="store_true",
                  help="development run for choosing settings: the in-sample starts on "
                       "development seeds (--seeds of DEV_SEEDS), repair methods only; "
                       "writes under runs/ only")
  ap.add_argument("--table", default=None, help="priority table JSON (default: shipped)")
  ap.add_argument("--combine", type=int, default=None,
                  help="repair(combine=...) (default: the shipped default)")
  ap.add_argument("--undo", default=None, choices=("off", "first", "combine"),
                  help="repair(undo=...) (default: the shipped default)")
  ap.add_argument("--dev-finetune", action="store_true",
                  help="with --dev: the development fine-tuning faults on corpus tasks "
                       "instead of the in-sample starts")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "results_repair.md"))
  a = ap.parse_args()
  if a.quick or a.dev:  # smoke and development runs may reuse compiled kernels
    metaopt.enable_compilation_cache()
  elif jax.config.jax_compilation_cache_dir:
    raise SystemExit("a persistent compilation cache is on (JAX_COMPILATION_CACHE_DIR): the "
                     "report measures cold compiles; unset it")
  budget, epochs = (8, 4) if a.quick else (a.budget, a.epochs)
  methods = (tuple(a.methods.split(",")) if a.methods
             else ("repair-4", "random-order", "random") if a.quick else METHODS)
  bad = sorted(set(methods) - set(METHODS))
  if bad:
    raise SystemExit(f"--methods: unknown {bad}; allowed: {', '.join(METHODS)}")
  suites = a.suites.split(",")
  n_seeds = 1 if a.quick else a.seeds
  insample = SUITE[::11] if a.quick else SUITE[::a.insample_every]
  heldout = ([(t, f) for t in HELDOUT_TARGETS for f in ("finetune_tiny", "sgd_slow_bigbatch")]
             if a.quick else HELDOUT)
  if a.dev:
    suites = ["in-sample"]
    methods = tuple(m for m in methods if m in ("repair-4", "random-order"))
  if a.limit:
    insample, heldout = insample[:a.limit], heldout[:a.limit]
  table = load_table(a.table)
  repair_kw = {} if a.combine is None else {"combine": a.combine}
  if a.undo is not None:
    repair_kw["undo"] = a.undo
  if a.dev_finetune:
    if not a.dev:
      raise SystemExit("--dev-finetune: only with --dev")
    insample = DEV_FINETUNE
  clock = _CompileClock()
  t_start = time.time()
  load0 = os.getloadavg()
  recs = {}
  if "held-out" in suites:
    recs["held-out"] = run_suite("held-out", heldout, HELDOUT_TARGETS,
                                 lambda ci: REPORT_SEEDS[:n_seeds], methods, budget, epochs,
                                 clock, table, repair_kw)
  if "in-sample" in suites:
    dev_seeds = DEV_SEEDS[:a.seeds]
    recs["in-sample"] = run_suite(  # seed: index in SUITE, or the development seeds
        "in-sample", insample, TARGETS,
        (lambda ci: dev_seeds) if a.dev else (lambda ci: (SUITE.index(insample[ci]),)),
        methods, budget, epochs, clock, table, repair_kw)
  load1 = os.getloadavg()
  quick_flags = (" --quick" + (f" --methods {a.methods}" if a.methods else "")
                 + (f" --suites {a.suites}" if a.suites != "in-sample,held-out" else ""))
  flags = quick_flags if a.quick else (
      f" --budget {budget} --epochs {epochs} --seeds {n_seeds} --suites {a.suites} "
      f"--methods {','.join(methods)}" + (f" --insample-every {a.insample_every}"
                                          if a.insample_every > 1 else "")
      + (f" --limit {a.limit}" if a.limit else ""))
  flags += (" --dev" if a.dev else "") + (f" --table {a.table}" if a.table else "") + (
      f" --combine {a.combine}" if a.combine is not None else "") + (
      f" --undo {a.undo}" if a.undo is not None else "") + (
      " --dev-finetune" if a.dev_finetune else "")
  cache = ("persistent compilation cache on: wall-clock is not a figure" if a.quick or a.dev
           else "no persistent compilation cache")
  md = [f"Command: `python benchmarks/repair.py{flags}` (budget {budget} trials, {epochs} "
        f"epochs per trial; {time.time() - t_start:.0f} s; load average "
        f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end, "
        f"{os.cpu_count()} CPUs; {cache}).", "",
        f"In-sample targets {TARGETS}; held-out targets {HELDOUT_TARGETS}.", "",
        "Cells: trials to target (best objective, wall-clock of the search incl. compile).",
        ""]
  per = {}
  for label in ("held-out", "in-sample"):
    if label not in recs:
      continue
    s_md, per[label] = summarise(label, recs[label], methods, budget)
    md += s_md + [""] + _table(recs[label], methods, budget) + [""]
  text = "\n".join(md)
  print(text)
  out = results_path(a.out, a.quick or a.dev)  # a quick/dev run: not the committed file
  with open(out, "w") as f:
    f.write(text + "\n")
  print(f"wrote {out}")
  fixed = "benchmarks/repair.py and metaopt/_src/data/repair_table.json"
  if "in-sample" in per and per["in-sample"]["repair-4"]:
    v = float(np.median(per["in-sample"]["repair-4"]))
    headline("repair_insample_median_trials_to_target", v,
             f"repair-4 on {len(per['in-sample']['repair-4'])} broken development starts "
             "(in-sample: chosen and reported on them)")
  if "held-out" in per and per["held-out"]["repair-4"]:
    h = per["held-out"]
    v = float(np.median(h["repair-4"]))
    print(f"repair_heldout_spread: {spread(h['repair-4'])}")
    for other in ("random", "random-order", "tpe"):
      if other in h:
        print(f"repair_heldout_vs_{other}: median {np.median(h[other]):g} vs {v:g}; "
              f"{paired(h['repair-4'], h[other])}")
    if "random-order" in h:
      headline("repair_random_order_over_table",
               float(np.median(h["random-order"]) / max(v, 1e-9)),
               "median held-out trials to target, same actions in random order / shipped "
               "table (target >= 1.5)", fixed)
    headline("repair_heldout_median_trials_to_target", v,
             "repair-4, shipped table, held-out tasks/faults/report seeds (target <= 3)", fixed)


if __name__ == "__main__":
  main()
