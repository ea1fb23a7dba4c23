"""Device check: the quickstart search and the population kernel on whatever accelerator jax sees.

Prints the devices, then
  (1) the bundled quickstart search (random search, digits MLP, populations of 64 trials in one
      kernel): wall time, trials/s, the device's busy fraction (device-seconds
      over wall) and, on an NVIDIA GPU, the mean / peak utilisation nvidia-smi reports;
  (2) the population kernel alone (benchmarks/population_vs_sequential.py's medium MLP, full
      width): trials/s at several population sizes and the kernel's FLOP/s as a fraction of a
      large jitted matmul's (the machine's practical peak).
A few minutes on a GPU or on a 2-core CPU (--quick: about a minute on CPU).

    python benchmarks/device_check.py [--quick] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # population_vs_sequential

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

import metaopt  # noqa: E402


class GpuSampler:
  """Samples ``nvidia-smi`` GPU utilisation (%) in a thread; empty where there is none."""

  def __init__(self, every_s: float = 0.25):
    self.every_s, self.samples, self._stop = every_s, [], threading.Event()
    self.ok = shutil.which("nvidia-smi") is not None and jax.devices()[0].platform == "gpu"
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5).stdout.split()
        self.samples.append(float(out[0]))
      except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
      self._stop.wait(self.every_s)

  def __enter__(self) -> GpuSampler:
    if self.ok:
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self.ok:
      self._thread.join()

  def summary(self) -> dict[str, float] | None:
    if not self.samples:
      return None
    return {"mean_pct": float(np.mean(self.samples)), "peak_pct": float(np.max(self.samples)),
            "n_samples": len(self.samples)}


def quickstart(n_trials: int, population: int, epochs: int, store_dir: str) -> dict:
  """The bundled quickstart config, searched end to end (store, checkpoints and all)."""
  from metaopt._src import config as config_lib
  from metaopt.cli import _load_config, config_path

  cfg = _load_config(config_path("quickstart")).to_dict()
  cfg.update(n_trials=n_trials, population=population, epochs=epochs,
             store=f"sqlite:///{store_dir}/quickstart.db")
  cfg = config_lib.validate(cfg)
  program, task, space, kwargs = config_lib.build(cfg)
  with GpuSampler() as gpu:
    t = time.perf_counter()
    result = metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]),
                            config=cfg, progress=False, **kwargs)
    wall = time.perf_counter() - t
  s = result.summary()
  from metaopt._src.report import compute_summary
  comp = compute_summary(result)
  return {"n_trials": n_trials, "population": population, "epochs": epochs,
          "wall_s": wall, "trials_per_s": n_trials / wall,
          "best_objective": (s.get("best") or {}).get("objective"),
          "device_seconds": comp.get("total_device_seconds"),
          "device_busy_fraction": (comp.get("total_device_seconds") or 0.0) / wall,
          "gpu_utilisation": gpu.summary()}


def population_kernel(ns: tuple[int, ...], steps: int, repeats: int) -> dict:
  """Trials/s of the population kernel and its FLOP/s over the matmul peak."""
  import population_vs_sequential as pvs

  from metaopt._src import population as pop

  peak = pvs.matmul_peak()
  task, fns, data, cfg, n_train = pvs.setup("medium", steps)
  kernels = pvs.Kernels(fns, n_train, cfg["batch"])
  mode = pop.default_mode()  # as a search runs it: searched activation, switches per "auto"
  rows = []
  with GpuSampler() as gpu:
    for n in ns:
      grouped = pop.group_switches("auto", mode, n, min(n, pvs.N_ACT))
      tv = pvs._best(pvs.population_fn(task, kernels, data, n, mode, grouped), repeats)
      flops = pvs.useful_flops(task, fns, data, n, steps, cfg["batch"])
      rows.append({"population": n, "trials_per_s": n / tv, "chunk_s": tv,
                   "gflops_per_s": flops / tv / 1e9, "fraction_of_matmul_peak": flops / tv / peak})
  return {"matmul_peak_gflops": peak / 1e9, "steps_per_trial": steps, "width": cfg["width"],
          "batch": cfg["batch"], "kernel_mode": mode, "rows": rows,
          "gpu_utilisation": gpu.summary()}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="smaller search and kernel sizes")
  ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
  args = ap.parse_args()
  devs = jax.devices()
  accel = devs[0].platform != "cpu"
  print(f"# device: {devs[0].platform} {devs[0].device_kind} x{len(devs)}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}, metaopt from {os.path.dirname(metaopt.__file__)}")
  if args.quick:
    qs, ns, steps, repeats = (32, 16, 5), (8, 32), 20, 1
  elif accel:
    qs, ns, steps, repeats = (256, 128, 20), (32, 128, 512, 2048), 100, 3
  else:
    qs, ns, steps, repeats = (128, 64, 20), (8, 32, 128), 50, 2
  out = {"device": {"platform": devs[0].platform, "kind": devs[0].device_kind,
                    "count": len(devs), "jax": jax.__version__}}
  with tempfile.TemporaryDirectory() as d:
    q = quickstart(*qs, d)
  out["quickstart"] = q
  gpu = q["gpu_utilisation"]
  print(f"quickstart: {q['n_trials']} trials (population {q['population']}, {q['epochs']} epochs)"
        f" in {q['wall_s']:.1f} s = {q['trials_per_s']:.1f} trials/s; "
        f"best {q['best_objective']:.4f}"
        f"; device busy {q['device_busy_fraction']:.0%} of wall"
        + (f"; GPU utilisation mean {gpu['mean_pct']:.0f}% peak {gpu['peak_pct']:.0f}%"
           if gpu else ""), flush=True)
  k = population_kernel(ns, steps, repeats)
  out["population_kernel"] = k
  print(f"population kernel (digits MLP width {k['width']}, batch {k['batch']}, "
        f"{k['steps_per_trial']} steps/trial); matmul peak {k['matmul_peak_gflops']:.1f} GFLOP/s")
  for r in k["rows"]:
    print(f"  population {r['population']:5d}: {r['trials_per_s']:9.1f} trials/s, "
          f"{r['gflops_per_s']:8.1f} GFLOP/s = {r['fraction_of_matmul_peak']:.1%} of matmul peak")
  if k["gpu_utilisation"]:
    g = k["gpu_utilisation"]
    print(f"  GPU utilisation during the kernel runs: mean {g['mean_pct']:.0f}%, "
          f"peak {g['peak_pct']:.0f}%")
  path = results_path(args.json, quick=args.quick)  # a quick run never writes a tracked file
  if path:
    with open(path, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
