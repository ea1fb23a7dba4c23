"""Scaling: search throughput (trials/s) vs simulated devices, population size and processes.

Each measurement runs in its own subprocess (XLA_FLAGS fixes the simulated CPU device count
at start-up), runs one warm-up search so compilation is excluded, then times ``--repeats``
(default 3) searches of the same shapes on the digits MLP and reports their median and
interquartile range. Every row runs the same kernel mode (``--kernel-mode``, default
``vmap``: the only mode that shards over devices), so rows compare devices, populations and
processes, not kernels:

  (a) devices: the population sharded over 1, 2, 4, 8 simulated CPU devices
      (``--xla_force_host_platform_device_count=8``, ``devices=jax.devices()[:d]``);
  (b) population: populations of 8 .. 128 trials per kernel on one device;
  (c) processes: the same study run by 1 and by 2 ``metaopt.worker`` processes sharing one
      SQLite store (the per-round cost of leases, heartbeats and store round trips);
  (d) multi-host: one search split over 2 ``jax.distributed`` processes on 127.0.0.1 (gloo)
      vs 1 process (the cost of per-epoch metric exchange and barriers).

Simulated devices share the host's cores: on a 2-core machine, 8 devices cannot beat 2.

    python benchmarks/scaling.py [--quick] [--repeats 3] [--kernel-mode vmap]

Writes benchmarks/results_scaling.md; the last line printed is
``scaling_8dev_over_1dev: X`` (trials/s on 8 simulated devices over 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _paths import results_path
from _protocol import spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUN = """
import json, sys, time
import jax
import metaopt
from metaopt import tasks
n_dev, population, n_trials, epochs, repeats = (int(a) for a in sys.argv[1:6])
task = tasks.get_task("digits_mlp")
ev = metaopt.TaskEvaluator(task, batch_size=64, devices=jax.devices()[:n_dev],
                           kernel_mode=sys.argv[6])
def once(study):
  t = time.perf_counter()
  metaopt.search(metaopt.random_search(task.space.dim), ev, n_trials=n_trials,
                 population=population, epochs=epochs, batch_size=64, seed=0, progress=False,
                 study=study, checkpoint_every_s=1e9)
  return time.perf_counter() - t
once("warmup")
print(json.dumps({"seconds": [once(f"timed{r}") for r in range(repeats)]}))
"""

WORKER = """
import json, os, sys, time
import metaopt
from metaopt import tasks
url, ck, population, n_trials, epochs, mine, mode = sys.argv[1:8]
task = tasks.get_task("digits_mlp")
ev = metaopt.TaskEvaluator(task, batch_size=64, kernel_mode=mode)
prog = metaopt.random_search(task.space.dim)
kw = dict(population=int(population), epochs=int(epochs), batch_size=64, seed=0,
          checkpoint_every_s=1e9, checkpoint_dir=ck)
metaopt.search(prog, ev, n_trials=int(population), progress=False, **kw)  # compile
open(mine, "w").close()
while not all(os.path.exists(p) for p in sys.argv[8:]):
  time.sleep(0.01)
metaopt.worker(prog, ev, store=url, study="bench", n_trials=int(n_trials), **kw)
"""


DIST = """
import json, sys, time
import metaopt
from metaopt import tasks
nproc, pid, port, db, ck, population, n_trials, epochs, repeats, mode = sys.argv[1:11]
if int(nproc) > 1:
  metaopt.initialize_distributed(f"127.0.0.1:{port}", int(nproc), int(pid))
task = tasks.get_task("digits_mlp")
ev = metaopt.TaskEvaluator(task, batch_size=64, kernel_mode=mode)
def once(study):
  t = time.perf_counter()
  metaopt.search(metaopt.random_search(task.space.dim), ev, n_trials=int(n_trials),
                 population=int(population), epochs=int(epochs), batch_size=64, seed=0,
                 store=f"sqlite:///{db}", study=study, checkpoint_dir=ck + study,
                 progress=False, checkpoint_every_s=1e9)
  return time.perf_counter() - t
once("warmup")
print(json.dumps({"seconds": [once(f"timed{r}") for r in range(int(repeats))]}))
"""


def run_distributed(n_proc: int, population: int, n_trials: int, epochs: int, repeats: int,
                    mode: str) -> list[float]:
  """Seconds of ``repeats`` searches split over ``n_proc`` jax.distributed processes
  (compilation excluded; the slowest process per repeat)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  d = tempfile.mkdtemp(prefix="metaopt-bench-")
  procs = [subprocess.Popen([sys.executable, "-c", DIST, str(n_proc), str(i), port,
                             f"{d}/m.db", f"{d}/ck", str(population), str(n_trials),
                             str(epochs), str(repeats), mode], cwd=ROOT, env=_env(1),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(n_proc)]
  secs = []
  for p in procs:
    out, err = p.communicate(timeout=1800)
    if p.returncode != 0:
      raise RuntimeError(err[-3000:])
    secs.append(json.loads(out.strip().splitlines()[-1])["seconds"])
  return [max(s) for s in zip(*secs, strict=True)]


def _env(devices: int = 8) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(tempfile.gettempdir(), "metaopt-bench-jax-cache"))
  return env


def run_search(n_dev: int, population: int, n_trials: int, epochs: int, repeats: int,
               mode: str) -> list[float]:
  r = subprocess.run([sys.executable, "-c", RUN, str(n_dev), str(population), str(n_trials),
                      str(epochs), str(repeats), mode], cwd=ROOT, env=_env(),
                     capture_output=True, text=True,
                     timeout=1800)
  if r.returncode != 0:
    raise RuntimeError(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def run_workers(n_proc: int, population: int, n_trials: int, epochs: int, mode: str) -> float:
  """Wall time from the moment all workers are compiled and ready until the last ends."""
  d = tempfile.mkdtemp(prefix="metaopt-bench-")
  url = f"sqlite:///{d}/w.db"
  ready = [os.path.join(d, f"ready{i}") for i in range(n_proc)]
  procs = [subprocess.Popen(
      [sys.executable, "-c", WORKER, url, os.path.join(d, f"ck{i}"), str(population),
       str(n_trials), str(epochs), ready[i], mode, *ready], cwd=ROOT, env=_env(1),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n_proc)]
  t0 = None
  while t0 is None:
    if all(os.path.exists(p) for p in ready):
      t0 = time.perf_counter()
    for p in procs:
      if p.poll() is not None and p.returncode != 0:
        raise RuntimeError(p.stderr.read()[-3000:])
    time.sleep(0.01)
  for p in procs:
    _, err = p.communicate(timeout=1800)
    if p.returncode != 0:
      raise RuntimeError(err[-3000:])
  return time.perf_counter() - t0


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="smaller sizes (about 6 minutes)")
  ap.add_argument("--repeats", type=int, default=3, help="timed searches per row (>= 3)")
  ap.add_argument("--kernel-mode", default="vmap", choices=("vmap", "loop"),
                  help="the kernel every row runs ('loop' only without several devices)")
  args = ap.parse_args()
  epochs = 2 if args.quick else 5
  pop_dev = 32 if args.quick else 64
  rounds = 2 if args.quick else 4
  mode, reps = args.kernel_mode, args.repeats
  dev_counts = (1,) if mode == "loop" else (1, 2, 4, 8)
  lines = ["| measurement | setting | trials | seconds, median [IQR] (n) | trials/s (median) |",
           "|---|---|---|---|---|"]

  def row(what, setting, n, secs):
    sp = spread(secs)
    lines.append(f"| {what} | {setting} | {n} | {sp} | {n / sp.median:.1f} |")
    print(lines[-1], flush=True)
    return n / sp.median

  load0 = os.getloadavg()[0]
  rate = {}
  for d in dev_counts:
    n = pop_dev * rounds
    rate[d] = row("devices", f"{d} device(s), population {pop_dev}", n,
                  run_search(d, pop_dev, n, epochs, reps, mode))
  for p in ((8,) if args.quick else (8, 128)):  # population pop_dev on 1 device: row above
    n = p * rounds
    row("population", f"population {p}, 1 device", n, run_search(1, p, n, epochs, reps, mode))
  wp = 8
  n = wp * (4 if args.quick else 8)
  w1 = row("processes", f"1 worker, population {wp}", n,
           [run_workers(1, wp, n, epochs, mode) for _ in range(reps)])
  w2 = row("processes", f"2 workers, population {wp}", n,
           [run_workers(2, wp, n, epochs, mode) for _ in range(reps)])
  d1 = row("multi-host", f"1 process, population {pop_dev}", pop_dev * rounds,
           run_distributed(1, pop_dev, pop_dev * rounds, epochs, reps, mode))
  d2 = row("multi-host", f"2 jax.distributed processes, population {pop_dev}",
           pop_dev * rounds, run_distributed(2, pop_dev, pop_dev * rounds, epochs, reps, mode))
  load1 = os.getloadavg()[0]
  ratio = rate[max(dev_counts)] / rate[1]
  header = (f"Scaling on {os.cpu_count()} CPU cores ({'--quick' if args.quick else 'full'}), "
            f"digits MLP, {epochs} epochs per trial, batch 64, compilation excluded, "
            f"kernel mode {mode} on every row, {reps} timed searches per row (median and "
            f"interquartile range), load average {load0:.1f} at start and {load1:.1f} at "
            f"end.\n\n")
  footer = (f"\n\n{max(dev_counts)} simulated devices / 1 device: {ratio:.2f}x trials/s. "
            f"2 worker processes / 1: {w2 / w1:.2f}x. "
            f"2 jax.distributed processes / 1: {d2 / d1:.2f}x.\n")
  out = results_path(os.path.join(ROOT, "benchmarks", "results_scaling.md"), args.quick)
  with open(out, "w") as f:
    f.write(header + "\n".join(lines) + footer)
  print(f"2workers_over_1worker: {w2 / w1:.2f}")
  print(f"2processes_over_1process: {d2 / d1:.2f}")
  print(f"scaling_8dev_over_1dev: {ratio:.2f}  # kernel mode {mode}")


if __name__ == "__main__":
  main()
