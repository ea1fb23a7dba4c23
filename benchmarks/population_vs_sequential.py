"""Population kernel vs one-trial-at-a-time training, side by side in one run.

Trains the same digits MLP on the same data for N trials of `steps` minibatch steps each:
  (a) vmap:     one jit(vmap(train)) population kernel (metaopt's engine),
  (b) jit:      N calls of a jitted per-trial training loop (lax.scan over steps),
  (c) steploop: a Python loop per trial calling a jitted train step on host-sliced batches,
                the way a typical Optuna objective is written.
Two sizes: small (width 16, batch 32: dispatch-bound) and medium (width 128, batch 128:
compute-bound). In the same run it measures the machine's matmul peak (a large jitted
jnp.dot) and reports the medium N=32 kernel's achieved FLOP/s (XLA cost analysis) as a
fraction of it.

    python benchmarks/population_vs_sequential.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from metaopt._src import population as pop  # noqa: E402
from metaopt.tasks import get_task  # noqa: E402

SIZES = {"small": {"width": 16, "batch": 32}, "medium": {"width": 128, "batch": 128}}


def _best(f, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f()
    times.append(time.perf_counter() - t)
  return min(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  t = _best(lambda: f(a, b).block_until_ready(), repeats)
  return 2 * n**3 / t


def setup(size: str, steps: int):
  cfg = SIZES[size]
  task = get_task("digits_mlp", max_width=cfg["width"])
  fns = task.build({})
  n_train = cfg["batch"] * steps
  data = pop.data_arrays(task.data)
  reps = -(-n_train // len(task.data.train))
  for k in ("x_train", "y_train"):  # tile so one chunk is exactly `steps` steps
    data[k] = jnp.concatenate([data[k]] * reps)[:n_train]
  kernel = pop.make_kernel(fns, n_train, cfg["batch"])
  return task, fns, data, kernel, cfg


def hparams(task, n):
  u = jax.random.uniform(jax.random.key(0), (n, task.space.dim))
  h = task.space.decode(u)
  h["width"] = jnp.full((n,), task.space.params["width"].hi)  # full width
  del h["activation"]  # a fixed relu model (a searched activation costs all branches)
  h["learning_rate"] = jnp.full((n,), 1e-3)
  return h


def run_vmap(task, kernel, data, n, repeats):
  h = hparams(task, n)
  keys = jax.random.split(jax.random.key(1), n)
  alive = jnp.ones(n, bool)

  def once():
    s = kernel.init(keys, h)
    s, m = kernel.chunk(s, h, alive, jax.random.key(2), data)
    jax.block_until_ready(m)

  once()
  return _best(once, repeats)


def run_jit_loop(task, kernel, data, n, repeats):
  h = hparams(task, n)
  keys = jax.random.split(jax.random.key(1), n)
  hs = [{k: v[i:i + 1] for k, v in h.items()} for i in range(n)]
  one = jnp.ones(1, bool)

  def once():
    for i in range(n):
      s = kernel.init(keys[i:i + 1], hs[i])
      s, m = kernel.chunk(s, hs[i], one, jax.random.key(2), data)
      jax.block_until_ready(m)

  once()
  return _best(once, repeats)


def run_step_loop(task, fns, data, n, steps, batch, repeats):
  h = hparams(task, n)
  hs = [{k: v[i] for k, v in h.items()} for i in range(n)]
  x = np.asarray(data["x_train"])
  y = np.asarray(data["y_train"])
  step = jax.jit(fns.train_step)
  init = jax.jit(fns.init)

  def once():
    rng = np.random.default_rng(0)
    for i in range(n):
      s = init(jax.random.key(i), hs[i])
      perm = rng.permutation(len(x))
      for t in range(steps):
        idx = perm[t * batch:(t + 1) * batch]
        s, tel = step(s, (x[idx], y[idx]), hs[i])
      jax.block_until_ready(tel["loss"])

  once()
  return _best(once, repeats)


def kernel_flops(task, fns, data, n, steps, batch) -> float:
  """FLOPs of one population chunk: `steps` vmapped train steps plus one evaluation.

  XLA's cost analysis counts a loop body once, so the step and the evaluation are costed
  separately and the step is multiplied by the trip count.
  """
  h = hparams(task, n)
  s = jax.vmap(fns.init)(jax.random.split(jax.random.key(1), n), h)
  xb, yb = data["x_train"][:batch], data["y_train"][:batch]

  def cost(f, *args):
    c = jax.jit(f).lower(*args).compile().cost_analysis()
    return float((c[0] if isinstance(c, list) else c)["flops"])

  step = cost(jax.vmap(fns.train_step, in_axes=(0, None, 0)), s, (xb, yb), h)
  ev = cost(jax.vmap(fns.evaluate, in_axes=(0, None, None, 0)), s, data["x_valid"],
            data["y_valid"], h)
  return steps * step + ev


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="fewer N, steps and repeats (< 2 min)")
  args = ap.parse_args()
  ns = (1, 8, 32) if args.quick else (1, 8, 32, 128)
  steps = 40 if args.quick else 100
  repeats = 1 if args.quick else 3
  dev = jax.devices()[0]
  print(f"# device: {dev.platform} {dev.device_kind} x{len(jax.devices())}, jax {jax.__version__}"
        f", steps/trial={steps}")
  peak = matmul_peak()
  print(f"matmul_peak_gflops: {peak / 1e9:.1f}")
  rows = {}
  print(f"{'size':7s} {'N':>4s} {'vmap t/s':>10s} {'jit t/s':>10s} {'steploop t/s':>13s} "
        f"{'vmap/jit':>9s} {'vmap/step':>10s}")
  fraction = float("nan")
  for size in SIZES:
    task, fns, data, kernel, cfg = setup(size, steps)
    for n in ns:
      tv = run_vmap(task, kernel, data, n, repeats)
      tj = run_jit_loop(task, kernel, data, n, repeats)
      ts = run_step_loop(task, fns, data, n, steps, cfg["batch"], 1 if n >= 32 else repeats)
      rows[(size, n)] = (tv, tj, ts)
      print(f"{size:7s} {n:4d} {n / tv:10.1f} {n / tj:10.1f} {n / ts:13.1f} {tj / tv:9.2f} "
            f"{ts / tv:10.2f}", flush=True)
      if size == "medium" and n == 32:
        fraction = kernel_flops(task, fns, data, n, steps, cfg["batch"]) / tv / peak
  tv, tj, ts = rows[("small", 32)]
  print(f"ratio_vmap_vs_steploop_N32_small: {ts / tv:.2f}")
  print(f"ratio_vmap_vs_jit_N32_small: {tj / tv:.2f}")
  print(f"kernel_fraction_of_matmul_peak: {fraction:.3f}")


if __name__ == "__main__":
  main()
