"""Population kernel vs one-trial-at-a-time training, side by side in one run.

Trains the same digits MLP on the same data for N trials of `steps` minibatch steps each,
with a *searched activation* (trial i uses relu / tanh / gelu / silu, i mod 4), every side
timed by the same rule (below):
  (a) loop:     the population kernel in "loop" mode (live trials one after another inside
                one compiled chunk, the population split over the CPU cores, one part per
                core: `make_kernel(workers=...)`; the engine's default on one CPU device),
  (b) vmap:     the population kernel in "vmap" mode as the engine runs it
                (`group_switches="auto"`: one kernel per activation, each computing only its
                branch, when there are >= SWITCH_GROUP_MIN trials per value, the groups'
                chunks run at once on the cores as `TaskEvaluator` runs them; else one
                kernel),
  (c) branches: one "vmap" kernel for all N trials, where every activation branch runs for
                every trial and a select keeps the trial's own (what (b) avoids),
  (d) jit:      N calls of a jitted per-trial training loop (lax.scan over steps), the
                activation fixed in each trial's program,
  (e) steploop: a Python loop per trial calling a jitted train step on host-sliced batches,
                the way a typical Optuna objective is written (activation fixed per trial).
Two sizes: small (width 16, batch 32: dispatch-bound) and medium (width 128, batch 128:
compute-bound). The fraction of the machine's matmul peak (a 2048^2 jitted jnp.dot) is
measured on the medium N=32 kernels, interleaved: peak, kernel, peak, kernel, ... in the same
run, one fraction per pair (useful FLOPs: XLA's cost analysis of each trial's own branch).

Timing rule, the same for every side (fixed before measuring; see BENCHMARKS.md "steploop"):
one untimed warm-up round, then ``--rounds`` rounds; in each round every side is timed once,
in an order rotated from round to round, over a window of back-to-back calls lasting at least
``--window`` seconds (per-call time = window / calls). A table cell is the median per-call
time of its side; a ratio is the median of the per-round ratios (both sides of a round timed
next to each other), printed with its interquartile range and its min-max.

    python benchmarks/population_vs_sequential.py [--quick] [--no-canonical-dots] [--workers K]
        [--rounds K] [--window SECONDS]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _protocol import spread  # noqa: E402

from metaopt._src import evaluators  # noqa: E402
from metaopt._src import loop as search_loop  # noqa: E402
from metaopt._src import population as pop  # noqa: E402
from metaopt.tasks import get_task  # noqa: E402

SIZES = {"small": {"width": 16, "batch": 32}, "medium": {"width": 128, "batch": 128}}
N_ACT = 4  # relu, tanh, gelu, silu: the digits MLP space's activation choices
WORKERS = None  # kernel threads (--workers); None: the engine's default


def _best(f, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f()
    times.append(time.perf_counter() - t)
  return min(times)


def _window(f, seconds: float) -> float:
  """Seconds per call of ``f`` over back-to-back calls lasting at least ``seconds``
  (garbage collected first, so no side inherits another's garbage)."""
  gc.collect()
  calls, t = 0, time.perf_counter()
  while True:
    f()
    calls += 1
    dt = time.perf_counter() - t
    if dt >= seconds:
      return dt / calls


def interleaved(fs: dict, rounds: int, window: float) -> dict[str, np.ndarray]:
  """Per-call seconds of every side in each of ``rounds`` rounds (the module's timing rule):
  after one untimed warm-up round, each round times every side once over a window of at
  least ``window`` seconds, the sides' order rotated by one each round."""
  names = list(fs)
  times = {c: [] for c in names}
  for r in range(-1, rounds):
    k = max(r, 0) % len(names)
    for c in names[k:] + names[:k]:
      dt = _window(fs[c], window)
      if r >= 0:
        times[c].append(dt)
  return {c: np.asarray(v) for c, v in times.items()}


def ratio(times: dict[str, np.ndarray], num: str, den: str):
  """Spread of the per-round ratios ``times[num] / times[den]`` (how much faster ``den``)."""
  return spread(times[num] / times[den])


def _range(x: np.ndarray) -> str:
  return f"min-max [{np.min(x):.2f}, {np.max(x):.2f}]"


def matmul_fn(n: int = 2048):
  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  return lambda: f(a, b).block_until_ready(), 2 * n**3


def matmul_peak(repeats: int = 5) -> float:
  f, flops = matmul_fn()
  return flops / _best(f, repeats)


def setup(size: str, steps: int):
  cfg = SIZES[size]
  task = get_task("digits_mlp", max_width=cfg["width"])
  fns = task.build({})
  n_train = cfg["batch"] * steps
  data = pop.data_arrays(task.data)
  reps = -(-n_train // len(task.data.train))
  for k in ("x_train", "y_train"):  # tile so one chunk is exactly `steps` steps
    data[k] = jnp.concatenate([data[k]] * reps)[:n_train]
  return task, fns, data, cfg, n_train


def activations(n):
  return np.arange(n) % N_ACT


def hparams(task, n, acts):
  u = jax.random.uniform(jax.random.key(0), (n, task.space.dim))
  h = task.space.decode(u)
  h["width"] = jnp.full((n,), task.space.params["width"].hi)  # full width
  h["activation"] = jnp.asarray(acts, jnp.int32)
  h["learning_rate"] = jnp.full((n,), 1e-3)
  return h


class Kernels:
  """Population kernels of one size, built once per (activation fixed or traced, mode)."""

  def __init__(self, fns, n_train, batch):
    self.fns, self.n_train, self.batch, self.k = fns, n_train, batch, {}

  def get(self, act, mode):
    if (act, mode) not in self.k:
      fns = self.fns if act is None else pop.fix_hparams(self.fns, {"activation": int(act)})
      self.k[(act, mode)] = pop.make_kernel(fns, self.n_train, self.batch, mode=mode,
                                            workers=WORKERS if mode == "loop" else None)
    return self.k[(act, mode)]


def population_fn(task, ks, data, n, mode, grouped):
  """One chunk of the population (of each activation group when ``grouped``)."""
  acts = activations(n)
  parts = [(a, np.flatnonzero(acts == a)) for a in range(N_ACT)] if grouped else \
      [(None, np.arange(n))]
  parts = [(a, idx, jax.device_get(hparams(task, len(idx), acts[idx])), ks.get(a, mode))
           for a, idx in parts if len(idx)]  # host hyperparameters, as a TrialBatch holds them
  seeds = np.arange(n, dtype=np.uint32)
  round_key = jax.random.key(2)

  def once(together=True):
    # as TaskEvaluator runs a round of one epoch (_fresh, then _run_group per group): the
    # groups' trial keys and inits (compiled on this thread), then the epoch's key, the
    # groups' hyperparameters put on the device, their chunks on the host `alive` mask and
    # the metrics fetched, several groups at once on the cores once each has run here
    inits = [k.init.bind(evaluators._trial_keys(seeds[idx]), h) for _, idx, h, k in parts]
    inits = [lambda c=c: jax.block_until_ready(c()) for c in inits]
    states = pop.run_parallel(inits, WORKERS) if together else [c() for c in inits]
    key = search_loop.fold_in(round_key, 1)
    calls = [lambda s=s, p=p: jax.device_get(p[3].chunk(
        s, jax.device_put(p[2]), np.ones(len(p[1]), bool), key, data)[1])
             for s, p in zip(states, parts, strict=True)]
    if together:
      pop.run_parallel(calls, WORKERS)
    else:
      [c() for c in calls]

  once(False)
  return once


def jit_loop_fn(task, ks, data, n):
  acts = activations(n)
  h = hparams(task, n, acts)
  seeds = np.arange(n, dtype=np.uint32)
  hs = [{k: v[i:i + 1] for k, v in h.items()} for i in range(n)]
  one = np.ones(1, bool)
  round_key = jax.random.key(2)

  def once():
    key = search_loop.fold_in(round_key, 1)  # trial and epoch keys as population_fn's
    for i in range(n):
      k = ks.get(int(acts[i]), "vmap")
      s = k.init(evaluators._trial_keys(seeds[i:i + 1]), hs[i])
      s, m = k.chunk(s, hs[i], one, key, data)
      jax.device_get(m)

  once()
  return once


def step_loop_fn(task, fns, data, n, steps, batch):
  acts = activations(n)
  h = hparams(task, n, acts)
  hs = [{k: v[i] for k, v in h.items()} for i in range(n)]
  x = np.asarray(data["x_train"])
  y = np.asarray(data["y_train"])
  per_act = {a: pop.fix_hparams(fns, {"activation": a}) for a in range(N_ACT)}
  step = {a: jax.jit(f.train_step) for a, f in per_act.items()}
  init = {a: jax.jit(f.init) for a, f in per_act.items()}

  def once():
    rng = np.random.default_rng(0)
    for i in range(n):
      a = int(acts[i])
      s = init[a](jax.random.key(i), hs[i])
      perm = rng.permutation(len(x))
      for t in range(steps):
        idx = perm[t * batch:(t + 1) * batch]
        s, tel = step[a](s, (x[idx], y[idx]), hs[i])
      jax.block_until_ready(tel["loss"])

  once()
  return once


def useful_flops(task, fns, data, n, steps, batch) -> float:
  """FLOPs of one chunk of ``n`` trials counting each trial's own activation only:
  XLA's cost analysis of one trial's train step (times the steps) plus its evaluation,
  per activation. (Cost analysis counts a loop body once, hence the step on its own.)"""
  acts = activations(n)
  h = {k: v[0] for k, v in hparams(task, 1, [0]).items()}
  xb, yb = data["x_train"][:batch], data["y_train"][:batch]
  total = 0.0
  for a in range(N_ACT):
    f = pop.fix_hparams(fns, {"activation": a})
    s = jax.jit(f.init)(jax.random.key(0), h)
    step = pop._cost_flops(jax.jit(f.train_step), s, (xb, yb), h)
    ev = pop._cost_flops(jax.jit(f.evaluate), s, data["x_valid"], data["y_valid"], h)
    total += int(np.sum(acts == a)) * (steps * step + ev)
  return total


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="N=32 only, fewer steps, shorter windows")
  ap.add_argument("--no-canonical-dots", action="store_true",
                  help="kernels without population.CANONICAL_DOTS (the A/B baseline)")
  ap.add_argument("--workers", type=int, default=None,
                  help="CPU threads of the kernels (default: the engine's, one per core); "
                       "1: one thread, the engine before the split (the A/B baseline)")
  ap.add_argument("--rounds", type=int, default=7,
                  help="timed rounds per table row, all sides interleaved (default 7)")
  ap.add_argument("--window", type=float, default=None,
                  help="seconds of back-to-back calls per side and round (default 0.4 with "
                       "--quick, else 1.0)")
  args = ap.parse_args()
  if args.rounds < 1 or (args.window is not None and not args.window > 0):
    ap.error(f"--rounds must be >= 1 (got {args.rounds}) and --window > 0 (got {args.window})")
  global WORKERS
  WORKERS = args.workers
  pop.CANONICAL_DOTS = not args.no_canonical_dots
  ns = (32,) if args.quick else (1, 8, 32, 128)
  steps = 40 if args.quick else 100
  window = args.window or (0.4 if args.quick else 1.0)
  pairs = 5 if args.quick else 7     # interleaved (peak, kernel) pairs for the fraction
  dev = jax.devices()[0]
  load = os.getloadavg()[0]
  print(f"# device: {dev.platform} {dev.device_kind} x{len(jax.devices())}, jax {jax.__version__}"
        f", {os.cpu_count()} cores (kernel threads {WORKERS or pop.default_workers()}), "
        f"load average at start {load:.1f}, steps/trial={steps}, "
        f"searched activation (trial i: {N_ACT} values, i mod {N_ACT}), every side timed in "
        f"{args.rounds} interleaved rounds over windows >= {window} s (+1 warm-up round), "
        f"canonical_dots={pop.CANONICAL_DOTS}")
  print(f"matmul_peak_gflops (at start): {matmul_peak() / 1e9:.1f}")
  rows = {}
  cols = ("loop", "vmap", "branches", "jit", "steploop")
  print(f"{'size':7s} {'N':>4s} " + " ".join(f"{c + ' t/s':>12s}" for c in cols) +
        f" {'vmap/step':>10s} {'loop/step':>10s} {'vmap/jit':>9s} {'vmap grouped':>13s}")
  fractions = {}
  for size in SIZES:
    task, fns, data, cfg, n_train = setup(size, steps)
    ks = Kernels(fns, n_train, cfg["batch"])
    for n in ns:
      grouped = pop.group_switches("auto", "vmap", n, min(n, N_ACT))
      f = {"loop": population_fn(task, ks, data, n, "loop", False),
           "branches": population_fn(task, ks, data, n, "vmap", False),
           "jit": jit_loop_fn(task, ks, data, n),
           "steploop": step_loop_fn(task, fns, data, n, steps, cfg["batch"])}
      f["vmap"] = population_fn(task, ks, data, n, "vmap", True) if grouped else f["branches"]
      t = rows[(size, n)] = interleaved({c: f[c] for c in cols}, args.rounds, window)
      med = {c: float(np.median(t[c])) for c in cols}
      print(f"{size:7s} {n:4d} " + " ".join(f"{n / med[c]:12.1f}" for c in cols) +
            f" {ratio(t, 'steploop', 'vmap').median:10.2f}"
            f" {ratio(t, 'steploop', 'loop').median:10.2f}"
            f" {ratio(t, 'jit', 'vmap').median:9.2f} {str(grouped):>13s}", flush=True)
      if size == "medium" and n == 32:
        flops = useful_flops(task, fns, data, n, steps, cfg["batch"])
        peak_f, peak_flops = matmul_fn()
        for c in ("loop", "vmap", "branches"):
          fr, peaks = [], []
          for _ in range(pairs):
            p = peak_flops / _best(peak_f, 1)
            fr.append(flops / _best(f[c], 1) / p)
            peaks.append(p / 1e9)
          fractions[c] = (spread(fr), spread(peaks))
  print(f"# load average at end {os.getloadavg()[0]:.1f}")
  for c, (fr, pk) in fractions.items():
    print(f"# medium N=32 {c}: fraction of peak {fr}; interleaved peak GFLOP/s {pk}")
  t = rows[("small", 32)]
  for c in cols:  # which side's time moves from round to round
    ms = t[c] * 1e3
    print(f"# small N=32 {c}: ms per call {spread(ms).cell('.4g')} {_range(ms)}, "
          f"(max - min) / median {(ms.max() - ms.min()) / np.median(ms):.1%}")
  for name, num, den in (("vmap_vs_steploop", "steploop", "vmap"),
                         ("loop_vs_steploop", "steploop", "loop"), ("vmap_vs_jit", "jit", "vmap")):
    r = ratio(t, num, den)
    print(f"ratio_{name}_N32_small: {r.median:.2f}   # median of {r.n} interleaved rounds, "
          f"IQR [{r.q25:.2f}, {r.q75:.2f}], {_range(t[num] / t[den])}")
  print(f"kernel_fraction_of_matmul_peak_loop: {fractions['loop'][0].median:.3f}")
  print(f"kernel_fraction_of_matmul_peak_vmap_branches: {fractions['branches'][0].median:.3f}")
  # headline: the kernel a search runs by default on this device, medians of interleaved pairs
  default = "loop" if pop.default_mode() == "loop" else "vmap"
  print(f"kernel_fraction_of_matmul_peak_vmap: {fractions['vmap'][0].median:.3f}")
  print(f"kernel_fraction_of_matmul_peak: {fractions[default][0].median:.3f}  "
        f"# variant: {default} kernel (this device's default), searched activation")


if __name__ == "__main__":
  main()
