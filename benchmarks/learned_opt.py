"""Learned optimizer vs per-task tuned Adam on held-out task families (the issue-23 protocol).

The learned optimizer is ``metaopt.lopt.adam_controller``: Adam times a learned per-step
multiplier of its update (untrained it is Adam exactly). The multiplier is an MLP either on
global training statistics and progress (``inputs="all"``) or on the fraction of training
``t / num_steps`` alone (``inputs="progress"``: a meta-learned learning-rate schedule,
``max_log_increase`` bounding how far it may raise Adam's step). Both sides train with the
same Adam learning rate, tuned per task.

1. **Adam's learning rate** for every task: grid ``LRS`` (1e-4 ... 1.0, extended upward while
   the best value is the top edge), the value with the lowest final training loss on a
   *tuning seed* (``DEV_SEEDS[0]``), never on a reported seed. The learned optimizer gets no
   tuning of its own: it runs on top of that same learning rate.
2. **Meta-training** (PES, antithetic) on ``metaopt.tasks.TRAIN_FAMILIES`` (digits, synthetic
   regression and MNIST-1D MLPs, an MNIST-1D 1-D CNN, noisy quadratics, linear regression),
   horizon ``--steps`` in truncations of ``--unroll``; each task's base learning rate is its
   family's tuned Adam rate (median over dev tasks) times a log-uniform factor in [1/2, 2].
3. **Choosing the meta-training setting** on ``metaopt.tasks.VALID_FAMILIES`` (a deeper
   MNIST-1D MLP, 48-d linear regression; neither trained on nor reported) with dev seeds:
   every candidate in ``CANDIDATES`` is meta-trained and the one with the lowest mean
   log(final loss / tuned Adam's final loss) is kept (the controller's inputs and bound are
   part of the setting). The held-out families are not looked at.
4. **Report** on ``metaopt.tasks.HELDOUT_FAMILIES`` (wine and breast-cancer MLPs, a deeper and
   wider digits MLP, a 2-D digits CNN, a 64-d ill-conditioned quadratic), ``--tasks_per_family``
   tasks each, every task trained under ``--seeds`` report seeds (``REPORT_SEEDS``) by both
   sides, at the meta-training horizon and at twice it (Adam re-tuned for the longer run). A
   task is a win when the learned optimizer's median final training loss over the report
   seeds is below tuned Adam's; every task prints both spreads and a paired sign / Wilcoxon
   test over its seeds.

    python benchmarks/learned_opt.py [--quick] [--markdown benchmarks/results_learned_opt.md]

The run's parts (``lrs``: training families' Adam rates; ``cand<i>``: meta-train candidate
i and score it on the validation families; ``report1`` / ``report2``: held-out families at H
/ 2H) can run in separate processes with the same settings, each stored in ``--parts_dir``;
a run without ``--part`` reads the stored parts, computes any missing, and writes the tables::

    python benchmarks/learned_opt.py --parts_dir runs/lopt --part lrs,cand0,cand1
    python benchmarks/learned_opt.py --parts_dir runs/lopt --part cand2,cand3  # after lrs
    python benchmarks/learned_opt.py --parts_dir runs/lopt --part report1  # after every cand
    python benchmarks/learned_opt.py --parts_dir runs/lopt --part report2
    python benchmarks/learned_opt.py --parts_dir runs/lopt --markdown ...

Last lines: ``lopt_wins_vs_tuned_adam: K/N`` (meta-training horizon) and
``lopt_wins_vs_tuned_adam_2x_horizon: K/N``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path
from _protocol import DEV_SEEDS, REPORT_SEEDS, headline, paired, spread  # noqa: E402

from metaopt import lopt as L  # noqa: E402
from metaopt import tasks  # noqa: E402

LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
TUNE_SEED = DEV_SEEDS[0]
TASK_SEED_DEV, TASK_SEED_REPORT = 100, 2000  # which tasks of a family (not training seeds)
# Meta-training settings compared on VALID_FAMILIES (fixed before any held-out run); the
# first is the default --quick uses, frozen from a --select run on the validation families.
CANDIDATES: tuple[dict, ...] = (
    # chosen by `--quick --select --tune_train_lrs` (validation score -0.245; the others
    # -0.068, -0.126 and +0.099 in this order)
    {"inputs": "progress", "normalise": "log", "meta_loss": "train_late", "meta_lr": 1e-2},
    {"inputs": "progress", "max_log_increase": 0.7, "normalise": "log",
     "meta_loss": "train_late", "meta_lr": 1e-2},
    {"inputs": "progress", "max_log_increase": 0.7, "normalise": "log",
     "meta_loss": "train_mean", "meta_lr": 1e-2},
    {"inputs": "all", "normalise": "log", "meta_loss": "train_mean", "meta_lr": 1e-2},
)
HIDDEN = (16,)
# Training families' tuned Adam lr (median over 2 dev tasks, tuning seed, 100-step runs: the
# --quick --select --tune_train_lrs run); --tune_train_lrs (full mode) re-tunes at --steps.
TRAIN_LRS: dict[str, float] = {"digits_mlp": 0.03, "synthetic_regression_mlp": 0.0548,
                               "quadratic": 0.1, "linear_regression": 0.173,
                               "mnist1d_mlp": 0.0316, "mnist1d_cnn": 0.0548}


CONTROLLER_KEYS = ("inputs", "max_log_increase", "max_log_change")
QUARTERS = 4  # training curves are read at 1/4, 1/2, 3/4 and the end of the run


def controller(steps: int, cand: dict | None = None) -> L.LearnedOptimizer:
  kw = {k: v for k, v in (cand or {}).items() if k in CONTROLLER_KEYS}
  return L.adam_controller(1.0, hidden_sizes=HIDDEN, num_steps=steps, **kw)


def _final_losses(family, steps: int, cand: dict | None):
  """A jitted function of a batch of (theta, lr, task key, seed key) -> train-split loss at
  each quarter of the run ``[QUARTERS]`` and the final valid loss; ``theta`` of the
  untrained controller gives Adam at ``lr`` exactly."""
  lopt = controller(steps, cand)

  def one(theta, lr, task_key, seed_key):
    opt = optax.chain(lopt.as_optax(theta), optax.scale(lr))
    c = L.fit(family, opt, task_key, steps, steps // QUARTERS, seed_key=seed_key)
    return c["train_eval"], c["valid_loss"][-1]

  return jax.jit(jax.vmap(one))


def _padded(fn, batch: int):
  """``fn`` on a batch of any size, run in chunks of exactly ``batch`` rows (padding by
  repeating the last row), so each family and horizon compiles once."""
  def call(*args):
    n = jax.tree.leaves(args)[0].shape[0]
    outs = []
    for i in range(0, n, batch):
      m = min(batch, n - i)
      chunk = jax.tree.map(lambda x, i=i, m=m: jnp.concatenate(
          [x[i:i + m], jnp.repeat(x[i + m - 1:i + m], batch - m, axis=0)]), args)
      outs.append(jax.tree.map(lambda y, m=m: np.asarray(y)[:m], fn(*chunk)))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs)
  return call


def _stack(theta, n: int):
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), theta)


class Evaluator:
  """Tunes Adam per task on the tuning seed and runs both sides on other seeds."""

  def __init__(self, family_name: str, steps: int, batch: int, cand: dict | None = None):
    self.family = tasks.get_family(family_name)
    self.name, self.steps = family_name, steps
    self.run = _padded(_final_losses(self.family, steps, cand), batch)
    self.theta0 = controller(steps, cand).init(jax.random.PRNGKey(0))  # Adam exactly

  def tune(self, task_keys: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per task: the lr with the lowest final training loss on the tuning seed (grid extended
    by x sqrt(10) steps while the best is the top edge), and whether it is still an edge."""
    n = task_keys.shape[0]
    lrs = list(LRS)
    best = np.full(n, np.inf)
    best_lr = np.zeros(n)
    at_top = np.ones(n, bool)
    todo = list(LRS)
    while todo and at_top.any():
      grid = np.asarray(todo)
      b = len(grid) * n
      tr, _ = self.run(_stack(self.theta0, b), jnp.asarray(np.repeat(grid, n), jnp.float32),
                       jnp.tile(task_keys, (len(grid), 1)),
                       jnp.tile(jax.random.PRNGKey(TUNE_SEED)[None], (b, 1)))
      tr = np.asarray(tr)[:, -1].reshape(len(grid), n)
      tr = np.where(np.isfinite(tr), tr, np.inf)
      for j, lr in enumerate(grid):
        better = tr[j] < best
        best = np.where(better, tr[j], best)
        best_lr = np.where(better, lr, best_lr)
      at_top = best_lr >= max(lrs) * 0.999
      if not at_top.any() or max(lrs) >= 100.0:
        break
      nxt = max(lrs) * np.sqrt(10.0)
      lrs.append(nxt)
      todo = [nxt]
    edge = (best_lr >= max(lrs) * 0.999) | (best_lr <= min(lrs) * 1.001)
    return best_lr, edge

  def compare(self, theta, task_keys: jax.Array, lrs: np.ndarray, seeds) -> tuple:
    """Train-split losses ``[task, seed, quarter]`` and final valid losses ``[task, seed]``
    of the controller and of Adam."""
    n, s = task_keys.shape[0], len(seeds)
    seed_keys = jnp.stack([jax.random.PRNGKey(x) for x in seeds])
    tk = jnp.repeat(task_keys, s, axis=0)
    sk = jnp.tile(seed_keys, (n, 1))
    lr = jnp.asarray(np.repeat(lrs, s), jnp.float32)
    both = jax.tree.map(lambda a, b: jnp.concatenate([_stack(a, n * s), _stack(b, n * s)]),
                        theta, self.theta0)
    tr, va = self.run(both, jnp.concatenate([lr, lr]), jnp.concatenate([tk, tk]),
                      jnp.concatenate([sk, sk]))
    tr = np.asarray(tr).reshape(2, n, s, QUARTERS)
    va = np.asarray(va).reshape(2, n, s)
    return tr[0], va[0], tr[1], va[1]


def family_lrs(args) -> dict[str, float]:
  """Each training family's tuned Adam rate: median (in log) over dev tasks."""
  out = {}
  for name in tasks.TRAIN_FAMILIES:
    ev = Evaluator(name, args.steps, args.batch)
    keys = jax.random.split(jax.random.PRNGKey(TASK_SEED_DEV), args.tasks_per_family)
    lrs, _ = ev.tune(keys)
    out[name] = float(np.exp(np.median(np.log(lrs))))
  return out


def meta_train(args, cand: dict, base_lrs: dict[str, float]):
  lopt = controller(args.steps, cand)
  problems = []
  for name in tasks.TRAIN_FAMILIES:
    lr0 = base_lrs[name]

    def sample_lr(key, lr0=lr0):
      return lr0 * jnp.exp(jax.random.uniform(key, (), minval=-np.log(2), maxval=np.log(2)))

    problems.append(L.make_problem(tasks.get_family(name), lopt, args.steps, args.unroll,
                                   cand["meta_loss"], normalise=cand["normalise"],
                                   learning_rate=sample_lr))
  trainer = L.meta_trainer(lopt, problems, "pes", num_tasks=args.num_tasks, sigma=args.sigma,
                           meta_lr=cand["meta_lr"], clip=1.0)
  t0 = time.perf_counter()
  state, hist = L.meta_train(trainer, jax.random.PRNGKey(args.seed), args.meta_steps,
                             log_every=max(1, args.meta_steps // 10), progress=args.progress)
  return state.theta, hist, time.perf_counter() - t0


def _ctrl_key(cand: dict) -> tuple:
  return tuple((k, cand.get(k)) for k in CONTROLLER_KEYS)


def validation_score(theta, cand: dict, args, cache: dict) -> tuple[float, dict]:
  """Mean over VALID_FAMILIES tasks and dev seeds of log(controller final loss / tuned Adam
  final loss), and that mean per family and quarter of the run (where it loses)."""
  scores, per_family = [], {}
  for name in tasks.VALID_FAMILIES:
    keys = jax.random.split(jax.random.PRNGKey(TASK_SEED_DEV + 1), args.tasks_per_family)
    if (name, _ctrl_key(cand)) not in cache:
      cache[(name, _ctrl_key(cand))] = Evaluator(name, args.steps, args.batch, cand)
    ev = cache[(name, _ctrl_key(cand))]
    if name not in cache:  # Adam's tuned rates do not depend on the controller
      cache[name] = ev.tune(keys)[0]
    c_tr, _, a_tr, _ = ev.compare(theta, keys, cache[name], DEV_SEEDS[1:1 + args.dev_seeds])
    lr = np.log(np.maximum(c_tr, 1e-12) / np.maximum(a_tr, 1e-12))  # [task, seed, quarter]
    scores.append(lr[..., -1].ravel())
    per_family[name] = lr.reshape(-1, QUARTERS).mean(0)
  return float(np.mean(np.concatenate(scores))), per_family


def report(theta, cand: dict, args, steps: int) -> list[dict]:
  rows = []
  seeds = REPORT_SEEDS[:args.seeds]
  for name in tasks.HELDOUT_FAMILIES:
    ev = Evaluator(name, steps, args.batch, cand)
    keys = jax.random.split(jax.random.PRNGKey(TASK_SEED_REPORT), args.tasks_per_family)
    lrs, edge = ev.tune(keys)
    c_tr, c_va, a_tr, a_va = ev.compare(theta, keys, lrs, seeds)
    for i in range(len(lrs)):
      rows.append({"task": f"{name}#{i}", "family": name, "lr": float(lrs[i]),
                   "edge": bool(edge[i]), "c_tr": c_tr[i, :, -1], "a_tr": a_tr[i, :, -1],
                   "c_curve": c_tr[i], "a_curve": a_tr[i], "c_va": c_va[i], "a_va": a_va[i]})
  return rows


def where_it_loses(rows) -> list[str]:
  """Per family: median over (task, seed) of controller / Adam training loss at each quarter
  of the run (below 1: the controller is ahead)."""
  lines = ["| family | " + " | ".join(f"ratio at {q + 1}/{QUARTERS}" for q in range(QUARTERS))
           + " |", "|---|" + "---|" * QUARTERS]
  for fam in dict.fromkeys(r["family"] for r in rows):
    c = np.concatenate([r["c_curve"] for r in rows if r["family"] == fam])
    a = np.concatenate([r["a_curve"] for r in rows if r["family"] == fam])
    ratio = np.exp(np.median(np.log(np.maximum(c, 1e-12) / np.maximum(a, 1e-12)), axis=0))
    lines.append(f"| {fam} | " + " | ".join(f"{x:.3f}" for x in ratio) + " |")
  return lines


def _wins(rows, key_c="c_tr", key_a="a_tr") -> int:
  return sum(float(np.median(r[key_c])) < float(np.median(r[key_a])) for r in rows)


def table(rows, steps: int) -> list[str]:
  lines = [f"Held-out tasks, {steps} steps, final training loss (whole train split; median "
           "[IQR] over report seeds), paired over seeds:", "",
           "| task | Adam lr | controller train | tuned Adam train | paired (train) | "
           "valid: controller / Adam (medians) |", "|---|---|---|---|---|---|"]
  for r in rows:
    win = float(np.median(r["c_tr"])) < float(np.median(r["a_tr"]))
    b = "**" if win else ""
    lines.append(f"| {r['task']} | {r['lr']:.3g} | {b}{spread(r['c_tr'])}{b} | "
                 f"{spread(r['a_tr'])} | {paired(r['c_tr'], r['a_tr'])} | "
                 f"{np.median(r['c_va']):.4g} / {np.median(r['a_va']):.4g} |")
  c = np.concatenate([r["c_tr"] for r in rows])
  a = np.concatenate([r["a_tr"] for r in rows])
  ratio = np.median(np.log(np.maximum(c, 1e-12) / np.maximum(a, 1e-12)))
  lines += ["", f"Wins (median training loss below tuned Adam's): {_wins(rows)}/{len(rows)}; "
            f"on validation loss: {_wins(rows, 'c_va', 'a_va')}/{len(rows)}. All (task, seed) "
            f"pairs: {paired(c, a)}; median loss ratio {np.exp(ratio):.3f}. Tuned lr at a "
            f"grid edge on {sum(r['edge'] for r in rows)} tasks.", "",
            "Controller / tuned Adam training loss during the run (median over tasks and "
            "seeds of each family):", "", *where_it_loses(rows)]
  return lines


def _part_names(n_cand: int) -> list[str]:
  return ["lrs", *(f"cand{i}" for i in range(n_cand)), "report1", "report2"]


def _settings(args) -> dict:
  """Everything a stored part depends on; parts are only combined when these agree."""
  keys = ("quick", "meta_steps", "steps", "unroll", "num_tasks", "sigma", "tasks_per_family",
          "seeds", "dev_seeds", "select", "tune_train_lrs", "seed", "batch")
  return {**{k: getattr(args, k) for k in keys}, "candidates": repr(CANDIDATES),
          "lrs": LRS, "train_lrs": repr(TRAIN_LRS), "hidden": HIDDEN}


def _needed(args, name: str) -> bool:
  return args.part is not None and name in args.part


def _timed(fn):
  t0 = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - t0


def _stored(args, name: str, compute):
  """``compute()`` -> (value, seconds), or the part ``name`` stored in ``--parts_dir`` by an
  earlier run with the same settings; a computed part is stored there."""
  path = os.path.join(args.parts_dir, f"{name}.pkl") if args.parts_dir else None
  if path and os.path.exists(path):
    with open(path, "rb") as f:
      d = pickle.load(f)
    if d["settings"] != _settings(args):
      raise ValueError(f"--parts_dir: {path} was made with settings {d['settings']}, not "
                       f"{_settings(args)}")
    args.loaded_secs[name] = d["value"][1]
    print(f"part {name}: stored ({d['value'][1]:.0f} s), read from {path}", flush=True)
    return d["value"]
  if args.part is not None and name not in args.part:
    raise ValueError(f"--part: part {name!r} is needed but not stored in {args.parts_dir} "
                     f"yet; run it first (--part {name})")
  value = compute()
  if path:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      pickle.dump({"settings": _settings(args), "value": value}, f)
    os.replace(tmp, path)
    print(f"part {name}: {value[1]:.0f} s, stored in {path}", flush=True)
  return value


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small budget (a few minutes)")
  p.add_argument("--meta_steps", type=int, default=None)
  p.add_argument("--steps", type=int, default=None, help="inner steps (= meta horizon)")
  p.add_argument("--unroll", type=int, default=20)
  p.add_argument("--num_tasks", type=int, default=None, help="PES pairs per family")
  p.add_argument("--sigma", type=float, default=0.01)
  p.add_argument("--tasks_per_family", type=int, default=2)
  p.add_argument("--seeds", type=int, default=None, help="report seeds per task")
  p.add_argument("--dev_seeds", type=int, default=3, help="dev seeds per validation task")
  p.add_argument("--select", action=argparse.BooleanOptionalAction, default=None,
                 help="meta-train every CANDIDATE and keep the best on VALID_FAMILIES "
                 "(default: full mode; --quick uses the frozen default CANDIDATES[0])")
  p.add_argument("--tune_train_lrs", action=argparse.BooleanOptionalAction, default=None,
                 help="tune the training families' Adam lr at --steps (default: full mode)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--progress", action="store_true")
  p.add_argument("--markdown", default=None, help="write the tables to this file")
  p.add_argument("--save", default=None, help="save the chosen optimizer here (orbax)")
  p.add_argument("--parts_dir", default=None,
                 help="store each part (lrs, cand<i>, report1, report2) here and reuse the "
                 "parts already stored with the same settings")
  p.add_argument("--part", default=None,
                 help="comma-separated parts to compute into --parts_dir, then exit (parts "
                 "can run in separate processes; a run without --part combines them): lrs, "
                 "cand<i> (meta-train candidate i and score it on the validation families), "
                 "report1 / report2 (held-out families at H / 2H)")
  args = p.parse_args()
  args.meta_steps = args.meta_steps or (100 if args.quick else 600)
  args.steps = args.steps or (100 if args.quick else 200)
  args.num_tasks = args.num_tasks or (2 if args.quick else 4)
  args.seeds = args.seeds or (5 if args.quick else 10)
  if args.select is None:
    args.select = not args.quick
  if args.tune_train_lrs is None:
    args.tune_train_lrs = not args.quick
  n_cand = len(CANDIDATES) if args.select else 1
  args.batch = max(len(LRS), 2 * args.seeds, 2 * args.dev_seeds) * args.tasks_per_family
  if args.part is not None:
    args.part = [x.strip() for x in args.part.split(",")]
    bad = [x for x in args.part if x not in _part_names(n_cand)]
    if bad or not args.parts_dir:
      raise ValueError(f"--part: {bad or args.part} needs --parts_dir and names among "
                       f"{_part_names(n_cand)}")
  args.parts_dir = results_path(args.parts_dir, args.quick)
  if args.parts_dir:
    os.makedirs(args.parts_dir, exist_ok=True)
  args.loaded_secs = {}
  t_start = time.perf_counter()

  base_lrs = (_stored(args, "lrs", lambda: _timed(lambda: family_lrs(args)))[0]
              if args.tune_train_lrs else dict(TRAIN_LRS))
  print("training families' tuned Adam lr:", {k: f"{v:.3g}" for k, v in base_lrs.items()},
        flush=True)
  cache: dict = {}
  trained = []
  reporting = args.part is None or any(_needed(args, f"report{k}") for k in (1, 2))
  for i, cand in enumerate(CANDIDATES[:n_cand]):
    if args.part is not None and not _needed(args, f"cand{i}") and not reporting:
      continue

    def train_one(cand=cand):
      theta, hist, secs = meta_train(args, cand, base_lrs)
      score, per_fam = (validation_score(theta, cand, args, cache) if n_cand > 1
                        else (float("nan"), {}))
      return jax.device_get(((score, cand, theta, hist, secs), per_fam))

    (score, cand, theta, hist, secs), per_fam = _stored(
        args, f"cand{i}", lambda train_one=train_one: _timed(train_one))[0]
    trained.append((score, cand, theta, hist, secs))
    print(f"candidate {cand}: {secs:.0f} s, meta-loss {hist[0]['meta_loss']:.4f} -> "
          f"{hist[-1]['meta_loss']:.4f}, validation score {score:.4f}; per family, mean log "
          "ratio at each quarter: " + "; ".join(
              f"{k} " + " ".join(f"{x:+.3f}" for x in v) for k, v in per_fam.items()),
          flush=True)
  if not reporting:
    return
  best = min(trained, key=lambda t: t[0] if np.isfinite(t[0]) else 0.0)
  score, cand, theta, hist, secs = best
  if args.part is None:
    args.save = results_path(args.save, args.quick)
    if args.save:
      L.save(args.save, controller(args.steps, cand), theta,
             {"benchmark": "benchmarks/learned_opt.py", "meta_steps": args.meta_steps,
              "horizon": args.steps, **cand})

  rows = {}
  for k in (1, 2):
    if args.part is None or _needed(args, f"report{k}"):
      rows[k] = _stored(args, f"report{k}", lambda k=k: _timed(
          lambda: report(theta, cand, args, k * args.steps)))[0]
  if args.part is not None:
    return
  rows1, rows2 = rows[1], rows[2]
  t_start -= sum(args.loaded_secs.values())  # parts stored by earlier runs: their own time
  total = time.perf_counter() - t_start

  lines = [
      f"`{' '.join(['python', 'benchmarks/learned_opt.py', *sys.argv[1:]])}` on "
      f"{platform.machine()} ({os.cpu_count()} cores, jax {jax.__version__}, "
      f"{jax.devices()[0].platform}), {total:.0f} s in all.", "",
      f"Learned optimizer: `adam_controller` (hidden {HIDDEN}), PES, {args.meta_steps} outer "
      f"steps, {args.num_tasks} antithetic pairs per family x {len(tasks.TRAIN_FAMILIES)} "
      f"families ({', '.join(tasks.TRAIN_FAMILIES)}), horizon {args.steps} in truncations of "
      f"{args.unroll}. Training families' tuned Adam lr: "
      + ", ".join(f"{k} {v:.3g}" for k, v in base_lrs.items()) + ".", "",
      f"Meta-training settings compared on validation families "
      f"({', '.join(tasks.VALID_FAMILIES)}; score = mean log loss ratio vs tuned Adam, dev "
      f"seeds): " + "; ".join(f"{c} -> {s:.4f} ({t:.0f} s, meta-loss {h[0]['meta_loss']:.3f} "
                               f"-> {h[-1]['meta_loss']:.3f})" for s, c, _, h, t in trained)
      + f". Chosen: {cand}"
      + (" (its score is above 0: on the validation families it does not beat the Adam it "
         "starts from)" if np.isfinite(score) and score > 0 else "") + ".", "",
      f"Adam lr grid {{{', '.join(f'{x:g}' for x in LRS)}}} (extended upward while the best is "
      f"the top edge), chosen per task on tuning seed {TUNE_SEED}; report seeds "
      f"{REPORT_SEEDS[0]}..{REPORT_SEEDS[args.seeds - 1]}; the controller uses the same lr.", "",
      *table(rows1, args.steps), "", *table(rows2, 2 * args.steps),
  ]
  md = "\n".join(lines) + "\n"
  print(md)
  args.markdown = results_path(args.markdown, args.quick)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("# Learned optimizers vs tuned Adam\n\n" + md)
  variant = (f"adam_controller {cand}, chosen on {'/'.join(tasks.VALID_FAMILIES)}"
             if n_cand > 1 else f"adam_controller {cand} (frozen default)")
  headline("lopt_wins_vs_tuned_adam", f"{_wins(rows1)}/{len(rows1)}", variant,
           "benchmarks/learned_opt.py CANDIDATES")
  headline("lopt_wins_vs_tuned_adam_2x_horizon", f"{_wins(rows2)}/{len(rows2)}", variant,
           "benchmarks/learned_opt.py CANDIDATES")


if __name__ == "__main__":
  main()
