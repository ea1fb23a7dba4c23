"""Learned optimizer vs per-task tuned Adam on held-out task families; meta-training throughput.

1. Meta-trains the per-parameter MLP learned optimizer (``metaopt.lopt.mlp_lopt``) with
   ``--estimator`` (PES by default) on ``metaopt.tasks.TRAIN_FAMILIES`` (digits MLPs, MLPs on the
   synthetic regression set, noisy quadratics, linear regression), horizon = ``--steps``.
2. On ``--tasks_per_family`` tasks of each of ``metaopt.tasks.HELDOUT_FAMILIES`` (wine and breast
   cancer MLPs, a deeper and wider digits MLP, a digits CNN, a 64-d ill-conditioned
   quadratic; none seen in meta-training) it trains ``--steps`` steps with the learned
   optimizer and with Adam at each of 7 learning rates (1e-4 ... 1e-1, vmapped), and reports
   final training loss (whole train split) and validation loss. Adam's learning rate is
   tuned per task and per column: the grid value with the lowest final training loss for the
   training column, the lowest final validation loss for the validation column.
3. Meta-training throughput (inner tasks x steps per second, PES on noisy quadratics and
   digits MLPs) with
   ``--throughput_tasks`` tasks vmapped in one kernel vs the same tasks one at a time.

    python benchmarks/learned_opt.py [--quick] [--markdown benchmarks/results_learned_opt.md]

The learned optimizer *matches* tuned Adam on a task when its final training loss is at most
tuned Adam's. Last line: ``lopt_wins_vs_tuned_adam: K/N``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

from metaopt import lopt as L  # noqa: E402
from metaopt import tasks  # noqa: E402

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def meta_train(args) -> tuple[L.LearnedOptimizer, dict, list[dict], float]:
  hidden = (32, 32) if args.lopt == "mlp" else (16,)
  lopt = L.make_lopt(args.lopt, hidden_sizes=hidden, init_lr=args.init_lr)
  problems = [L.make_problem(tasks.get_family(f), lopt, args.steps, args.unroll,
                             args.meta_loss) for f in tasks.TRAIN_FAMILIES]
  trainer = L.meta_trainer(lopt, problems, args.estimator, num_tasks=args.num_tasks,
                           sigma=args.sigma, meta_lr=args.meta_lr, clip=1.0)
  t0 = time.perf_counter()
  state, history = L.meta_train(trainer, jax.random.PRNGKey(args.seed), args.meta_steps,
                                log_every=max(1, args.meta_steps // 10), progress=True)
  return lopt, state.theta, history, time.perf_counter() - t0


def evaluate(lopt, theta, args) -> list[dict]:
  rows = []
  n_eval = max(1, args.steps // 4)
  for name in tasks.HELDOUT_FAMILIES:
    fam = tasks.get_family(name)
    keys = jax.random.split(jax.random.PRNGKey(1000 + args.seed), args.tasks_per_family)

    def final(opt, key, fam=fam):
      c = L.fit(fam, opt, key, args.steps, n_eval)
      return c["train_eval"][-1], c["valid_loss"][-1]

    learned = jax.jit(jax.vmap(lambda k: final(lopt.as_optax(theta), k)))(keys)
    adam = jax.jit(jax.vmap(jax.vmap(lambda lr, k: final(optax.adam(lr), k), (0, None)),
                            (None, 0)))(jnp.asarray(LRS), keys)
    (l_tr, l_va), (a_tr, a_va) = jax.device_get(learned), jax.device_get(adam)
    for i in range(args.tasks_per_family):
      tr = np.where(np.isfinite(a_tr[i]), a_tr[i], np.inf)
      va = np.where(np.isfinite(a_va[i]), a_va[i], np.inf)
      rows.append({"task": f"{name}#{i}", "lopt_train": float(l_tr[i]),
                   "adam_train": float(tr.min()), "adam_lr_train": LRS[int(tr.argmin())],
                   "lopt_valid": float(l_va[i]), "adam_valid": float(va.min()),
                   "adam_lr_valid": LRS[int(va.argmin())]})
  return rows


def throughput(args, family: str) -> dict:
  """Inner task-steps per second of PES meta-training steps, vmapped vs one task at a time,
  timed in interleaved rounds (best of 3) so load from other processes hits both alike."""
  lopt = L.mlp_lopt(hidden_sizes=(32, 32))
  problem = L.make_problem(tasks.get_family(family), lopt, args.steps, args.unroll)
  n = args.throughput_tasks
  runs = {}
  for label, tasks_per_call, calls in (("vmapped", n, 1), ("one at a time", 1, n)):
    trainer = L.meta_trainer(lopt, [problem], "pes", num_tasks=tasks_per_call)
    states = [trainer.init(jax.random.PRNGKey(i)) for i in range(calls)]
    states = [jax.block_until_ready(trainer.step(s)[0]) for s in states]  # compile + warm
    runs[label] = (trainer, states)
  best = {label: np.inf for label in runs}
  for _ in range(3):
    for label, (trainer, states) in runs.items():
      t0 = time.perf_counter()
      for _ in range(args.throughput_steps):
        states = [trainer.step(s)[0] for s in states]
      jax.block_until_ready(states)
      best[label] = min(best[label], time.perf_counter() - t0)
      runs[label] = (trainer, states)
  inner_steps = 2 * n * args.unroll * args.throughput_steps  # antithetic pairs
  return {label: inner_steps / t for label, t in best.items()}


def markdown(args, rows, tp, hist, meta_seconds) -> str:
  wins = sum(r["lopt_train"] <= r["adam_train"] for r in rows)
  vwins = sum(r["lopt_valid"] <= r["adam_valid"] for r in rows)
  lines = [
      f"`{' '.join(['python', 'benchmarks/learned_opt.py', *sys.argv[1:]])}` on "
      f"{platform.machine()} ({os.cpu_count()} cores, jax {jax.__version__}, "
      f"{jax.devices()[0].platform}).",
      "",
      f"Meta-training: {args.lopt} lopt, {args.estimator}, {args.meta_steps} outer steps, "
      f"{args.num_tasks} tasks per family x {len(tasks.TRAIN_FAMILIES)} families "
      f"({', '.join(tasks.TRAIN_FAMILIES)}), horizon {args.steps}, truncations of "
      f"{args.unroll}, meta-loss {args.meta_loss}, Adam meta_lr {args.meta_lr:g} from "
      f"init_lr {args.init_lr:g}: {meta_seconds:.0f} s, meta-loss "
      f"{hist[0]['meta_loss']:.3f} -> {hist[-1]['meta_loss']:.3f}.",
      "",
      f"Held-out tasks, {args.steps} steps; final loss on the whole split (lower is better); "
      "Adam tuned per task over lr in {" + ", ".join(f"{x:g}" for x in LRS) + "}.",
      "",
      "| task | lopt train | tuned Adam train (lr) | lopt valid | tuned Adam valid (lr) |",
      "|---|---|---|---|---|",
  ]
  for r in rows:
    bt = "**" if r["lopt_train"] <= r["adam_train"] else ""
    bv = "**" if r["lopt_valid"] <= r["adam_valid"] else ""
    lines.append(f"| {r['task']} | {bt}{r['lopt_train']:.4g}{bt} | {r['adam_train']:.4g} "
                 f"({r['adam_lr_train']:g}) | {bv}{r['lopt_valid']:.4g}{bv} | "
                 f"{r['adam_valid']:.4g} ({r['adam_lr_valid']:g}) |")
  lines += [
      "",
      f"Learned optimizer at least matches tuned Adam: training loss {wins}/{len(rows)} tasks, "
      f"validation loss {vwins}/{len(rows)} tasks.",
      "",
      f"Meta-training throughput: PES outer steps of the MLP learned optimizer, "
      f"{args.throughput_tasks} tasks (antithetic pairs) x {args.unroll} steps, inner "
      "task-steps per second, best of 3 interleaved rounds:",
      "",
      "| family | vmapped in one kernel | one task at a time | speed-up |",
      "|---|---|---|---|",
  ]
  for fam, t in tp.items():
    lines.append(f"| {fam} | {t['vmapped']:.0f} | {t['one at a time']:.0f} | "
                 f"{t['vmapped'] / t['one at a time']:.1f}x |")
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small budget (~3 min)")
  p.add_argument("--meta_steps", type=int, default=None)
  p.add_argument("--steps", type=int, default=None, help="inner steps (= meta horizon)")
  p.add_argument("--unroll", type=int, default=10)
  p.add_argument("--num_tasks", type=int, default=4)
  p.add_argument("--lopt", default="mlp", choices=tuple(L.LOPTS))
  p.add_argument("--estimator", default="pes", choices=L.ESTIMATORS)
  p.add_argument("--meta_loss", default="train_mean", choices=L.META_LOSSES)
  p.add_argument("--sigma", type=float, default=0.01)
  p.add_argument("--meta_lr", type=float, default=3e-3)
  p.add_argument("--init_lr", type=float, default=1e-2, help="lr of the untrained lopt")
  p.add_argument("--tasks_per_family", type=int, default=None)
  p.add_argument("--throughput_tasks", type=int, default=16)
  p.add_argument("--throughput_steps", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--markdown", default=None, help="write the tables to this file")
  p.add_argument("--save", default=None, help="save the meta-trained optimizer here (orbax)")
  args = p.parse_args()
  args.meta_steps = args.meta_steps or (300 if args.quick else 1500)
  args.steps = args.steps or (100 if args.quick else 200)
  args.tasks_per_family = args.tasks_per_family or (2 if args.quick else 4)

  lopt, theta, hist, meta_seconds = meta_train(args)
  if args.save:
    L.save(args.save, lopt, theta, {"benchmark": "benchmarks/learned_opt.py",
                                    "meta_steps": args.meta_steps, "horizon": args.steps})
  rows = evaluate(lopt, theta, args)
  tp = {f: throughput(args, f) for f in ("quadratic", "digits_mlp")}
  md = markdown(args, rows, tp, hist, meta_seconds)
  print(md)
  args.markdown = results_path(args.markdown, args.quick)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("# Learned optimizers vs tuned Adam\n\n" + md)
  wins = sum(r["lopt_train"] <= r["adam_train"] for r in rows)
  print(f"lopt_wins_vs_tuned_adam: {wins}/{len(rows)}")


if __name__ == "__main__":
  main()
