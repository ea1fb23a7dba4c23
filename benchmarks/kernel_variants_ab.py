"""A/B of train-step variants inside the medium population kernel (issue 24, diagnostic).

Builds the medium digits MLP `loop` kernel of `population_vs_sequential.py` (width 128,
batch 128, searched activation, trial i: relu / tanh / gelu / silu) once per variant, then
times one chunk of each variant in turn, in one process, CPU seconds per chunk
(`time.process_time`, so the figures hold under load better than wall time; min and median
over rounds), and prints the compiled chunk's op counts. Variants (none is the engine's
code; they are swapped in while the kernel is traced):

* `base`: the engine as it is.
* `no_telemetry`: the task's per-step telemetry replaced by constants. An upper bound on
  what a cheaper telemetry could save, not a candidate (it drops promised metrics).
* `telemetry_separate_sums`: the telemetry's sums as separate `jnp.sum`s of materialised
  inputs (behind an `optimization_barrier`) instead of one variadic reduce per leaf.
* `activation_jvp`: the searched activation as a `custom_jvp` whose forward `lax.switch`
  returns the value and the slope: no backward conditional, two outputs instead of the
  union of every branch's residuals (results equal for relu, within rounding otherwise).

Run it with one XLA thread so that the CPU time counts work, not idle spinning:

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      python benchmarks/kernel_variants_ab.py [--rounds 9] [--trials 8]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import population_vs_sequential as pvs  # noqa: E402

from metaopt._src import population as pop  # noqa: E402
from metaopt.tasks._src import base  # noqa: E402

_TELEMETRY, _ACTIVATION, _SUMS = base.telemetry, base.activation, base._sums


def _no_telemetry(loss, params, grads, live):
  z = jnp.zeros((), jnp.float32)
  n = len(base._kernels(grads)) or len(jax.tree_util.tree_leaves(grads))
  return {"loss": loss, "layer_grad_norms": jnp.zeros(n), "grad_norm_first": z,
          "grad_norm_last": z, "zero_grad_frac": z, "nonfinite_loss": ~jnp.isfinite(loss),
          "nonfinite_grads": z > 0, "nonfinite_params": z > 0}


def _separate_sums(*xs):
  xs = jax.lax.optimization_barrier(tuple(jax.lax.stop_gradient(x) for x in xs))
  return tuple(jnp.sum(x) for x in xs)


def _value_and_slope(f):
  return lambda x: jax.jvp(f, (x,), (jnp.ones_like(x),))


_SLOPES = tuple(_value_and_slope(f) for f in base._ACT_FNS)


@jax.custom_jvp
def _switched(index, x):
  return jax.lax.switch(index, base._ACT_FNS, x)


@_switched.defjvp
def _switched_jvp(primals, tangents):
  index, x = primals
  y, slope = jax.lax.switch(index, _SLOPES, x)
  return y, slope * tangents[1]


def _activation_jvp(index, x):
  if isinstance(index, int):
    return base._ACT_FNS[index](x)
  return _switched(jnp.asarray(index, jnp.int32), x)


VARIANTS = {"base": {}, "no_telemetry": {"telemetry": _no_telemetry},
            "telemetry_separate_sums": {"_sums": _separate_sums},
            "activation_jvp": {"activation": _activation_jvp}}


def build(variant: dict, n: int, steps: int):
  """One chunk call of the medium loop kernel (one thread) traced with ``variant``'s
  functions swapped into the task module, and the compiled chunk's HLO text."""
  old = {k: getattr(base, k) for k in variant}
  for k, v in variant.items():
    setattr(base, k, v)
  try:
    task, fns, data, cfg, n_train = pvs.setup("medium", steps)
    kernel = pop.make_kernel(fns, n_train, cfg["batch"], mode="loop", workers=1)
    h = pvs.hparams(task, n, pvs.activations(n))
    alive, key = jnp.ones(n, bool), jax.random.key(2)
    states = kernel.init(jax.random.split(jax.random.key(1), n), h)
    hlo = kernel.chunk.lower(states, h, alive, key, data).compile().as_text()
    out = jax.block_until_ready(kernel.chunk(states, h, alive, key, data))  # traced here
  finally:
    for k, v in old.items():
      setattr(base, k, v)
  box = [out[0]]

  def call():
    o = jax.block_until_ready(kernel.chunk(box[0], h, alive, key, data))
    box[0] = o[0]
  return call, hlo


def op_counts(hlo: str) -> dict:
  ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", hlo))
  fus = collections.Counter(re.findall(r"%(\w+?)_fusion[.\d]* = ", hlo))
  return {"conditional": ops["conditional"], "copy": ops["copy"], "fusion": ops["fusion"],
          "transpose_copy": fus["transpose_copy"], "multiply_reduce": fus["multiply_reduce"],
          "ynn": fus["ynn"]}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--rounds", type=int, default=9)
  ap.add_argument("--reps", type=int, default=2, help="chunks per timed call")
  ap.add_argument("--trials", type=int, default=8)
  ap.add_argument("--steps", type=int, default=40)
  args = ap.parse_args()
  print(f"# load average at start {os.getloadavg()[0]:.1f}; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}; medium loop kernel, {args.trials} trials, "
        f"{args.steps} steps")
  calls = {}
  for name, variant in VARIANTS.items():
    calls[name], hlo = build(variant, args.trials, args.steps)
    print(f"# {name}: {op_counts(hlo)}", flush=True)
  cpu = collections.defaultdict(list)
  for _ in range(args.rounds):
    for name, call in calls.items():
      t = time.process_time()
      for _ in range(args.reps):
        call()
      cpu[name].append((time.process_time() - t) / args.reps * 1e3)
  print(f"# load average at end {os.getloadavg()[0]:.1f}")
  b = min(cpu["base"])
  for name, v in cpu.items():
    print(f"{name:24s} CPU ms/chunk min {min(v):7.1f}  median {np.median(v):7.1f}  "
          f"min vs base {min(v) / b:.3f}")


if __name__ == "__main__":
  main()
