"""Scaling: search throughput (trials/s) vs simulated devices, population size and processes.

Every row runs one kernel mode, named in the table (``--kernel-modes``, default both
``loop`` and ``vmap``), so rows compare devices, populations and processes, not kernels.
Each row runs in fresh processes with no persistent compilation cache: a first run of the
digits MLP search (compilation included: its time and "compile" = first - median are shown
separately) and then ``--repeats`` (default 3, at least 3) timed runs of the same shapes,
reported as median [interquartile range]; every row gets the same repeats.

  (a) devices: the population sharded over 1, 2, 4, 8 simulated CPU devices
      (``--xla_force_host_platform_device_count=8``, ``devices=jax.devices()[:d]``);
      ``vmap`` only (the ``loop`` kernel does not shard; its 1-device row is shown);
  (b) population: populations of 8 (and 128 in full mode) trials per kernel on one device;
  (c) processes: one study run by 1 and by 2 ``metaopt.worker`` processes sharing one
      SQLite store (the per-round cost of leases, heartbeats and store round trips);
  (d) multi-host: one search split over 2 ``jax.distributed`` processes on 127.0.0.1 (gloo)
      vs 1 process, sharing one SQLite store (per-epoch metric exchange and barriers).

Simulated devices share the host's cores: on a 2-core machine, 8 devices cannot beat 2.
The full configuration is 3 epochs per trial (it was 5 before the protocol of issue 23
doubled the rows: loop and vmap), population 64 over 4 rounds for (a) and (d), 8 x 8 rounds
for (c): estimated 6-10 minutes on a quiet 2-core machine (``--quick``: about 2-3).

    python benchmarks/scaling.py [--quick] [--repeats 3] [--kernel-modes loop,vmap]

Writes benchmarks/results_scaling.md (``--quick``: runs/benchmarks/results_scaling.md, never a
tracked file); the last line printed is ``scaling_8dev_over_1dev: X`` (trials/s on 8
simulated devices over 1, kernel mode vmap, compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from _paths import results_path
from _protocol import headline, spread

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
first = once("first")
print(json.dumps({"first": first, "seconds": [once(f"timed{r}") for r in range(repeats)]}))
"""

# one set of worker processes runs the study ``repeats + 1`` times (the first compiles);
# every run starts when all workers are ready, and its time runs from the first start to the
# last end (time.time(): one host clock)
WORKER = """
import json, os, sys, time
import metaopt
from metaopt import tasks
url, ck, population, n_trials, epochs, me, n_proc, repeats, mode, d = sys.argv[1:11]
task = tasks.get_task("digits_mlp")
ev = metaopt.TaskEvaluator(task, batch_size=64, kernel_mode=mode)
prog = metaopt.random_search(task.space.dim)
spans = []
for r in range(int(repeats) + 1):
  open(os.path.join(d, f"ready{r}_{me}"), "w").close()
  while not all(os.path.exists(os.path.join(d, f"ready{r}_{i}")) for i in range(int(n_proc))):
    time.sleep(0.002)
  t = time.time()
  metaopt.worker(prog, ev, store=url, study=f"bench{r}", n_trials=int(n_trials),
                 population=int(population), epochs=int(epochs), batch_size=64, seed=0,
                 checkpoint_every_s=1e9, checkpoint_dir=f"{ck}{r}")
  spans.append((t, time.time()))
print(json.dumps(spans))
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
first = once("first")
print(json.dumps({"first": first,
                  "seconds": [once(f"timed{r}") for r in range(int(repeats))]}))
"""


def _env(devices: int = 8) -> dict:
  """A cold compile for every measurement: no persistent compilation cache."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _port() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return str(s.getsockname()[1])


def _wait(procs: list[subprocess.Popen]) -> list[str]:
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=1800)
    if p.returncode != 0:
      for q in procs:
        q.kill()
      raise RuntimeError(err[-3000:])
    outs.append(out.strip().splitlines()[-1])
  return outs


def run_search(n_dev: int, population: int, n_trials: int, epochs: int, repeats: int,
               mode: str) -> tuple[float, list[float]]:
  """Seconds of the first search (compilation included) and of ``repeats`` more."""
  r = json.loads(_wait([subprocess.Popen(
      [sys.executable, "-c", RUN, str(n_dev), str(population), str(n_trials), str(epochs),
       str(repeats), mode], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)])[0])
  return r["first"], r["seconds"]


def run_distributed(n_proc: int, population: int, n_trials: int, epochs: int, repeats: int,
                    mode: str) -> tuple[float, list[float]]:
  """The same, for one search split over ``n_proc`` jax.distributed processes sharing a
  SQLite store (the slowest process per search)."""
  d, port = tempfile.mkdtemp(prefix="metaopt-bench-"), _port()
  outs = _wait([subprocess.Popen(
      [sys.executable, "-c", DIST, str(n_proc), str(i), port, f"{d}/m.db", f"{d}/ck",
       str(population), str(n_trials), str(epochs), str(repeats), mode], cwd=ROOT,
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(n_proc)])
  rs = [json.loads(o) for o in outs]
  return max(r["first"] for r in rs), [max(s) for s in zip(*(r["seconds"] for r in rs),
                                                           strict=True)]


def run_workers(n_proc: int, population: int, n_trials: int, epochs: int, repeats: int,
                mode: str) -> tuple[float, list[float]]:
  """The same, for one study run by ``n_proc`` ``metaopt.worker`` processes sharing a SQLite
  store: from the moment all are ready until the last ends."""
  d = tempfile.mkdtemp(prefix="metaopt-bench-")
  outs = _wait([subprocess.Popen(
      [sys.executable, "-c", WORKER, f"sqlite:///{d}/w.db", os.path.join(d, f"ck{i}_"),
       str(population), str(n_trials), str(epochs), str(i), str(n_proc), str(repeats), mode,
       d], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(n_proc)])
  spans = [json.loads(o) for o in outs]
  secs = [max(s[r][1] for s in spans) - min(s[r][0] for s in spans)
          for r in range(repeats + 1)]
  return secs[0], secs[1:]


def _ratio(fast, slow) -> str:
  """``slow``'s median seconds over ``fast``'s (a speed-up of ``fast``), with the range its
  interquartile ranges allow."""
  return (f"{slow.median / fast.median:.2f}x [{slow.q25 / fast.q75:.2f}, "
          f"{slow.q75 / fast.q25:.2f}]")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
  ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (>= 3)")
  ap.add_argument("--kernel-modes", default="loop,vmap",
                  help="kernel modes, each row runs one of them ('loop': one device only)")
  args = ap.parse_args()
  modes = args.kernel_modes.split(",")
  if args.repeats < 3 or not modes or any(m not in ("loop", "vmap") for m in modes):
    raise ValueError(f"--repeats={args.repeats} (must be >= 3) / --kernel-modes="
                     f"{args.kernel_modes!r} (comma-separated 'loop', 'vmap')")
  reps = args.repeats
  epochs = 2 if args.quick else 3
  pop_dev, rounds = (32, 2) if args.quick else (64, 4)
  pops = (8,) if args.quick else (8, 128)
  wp, w_rounds = 8, (4 if args.quick else 8)
  lines = ["| measurement | kernel | setting | trials | first run s (compile included) | "
           "compile s (first - median) | seconds, median [IQR] (n) | trials/s (median) |",
           "|---|---|---|---|---|---|---|---|"]
  got = {}

  def row(key, what, mode, setting, n, measured):
    first, secs = measured
    sp = got[key] = spread(secs)
    got[key + ("first",)] = first
    lines.append(f"| {what} | {mode} | {setting} | {n} | {first:.3g} | "
                 f"{first - sp.median:.3g} | {sp} | {n / sp.median:.1f} |")
    print(lines[-1], flush=True)

  t0, load0 = time.time(), os.getloadavg()[0]
  dev_counts = (1, 2, 4, 8)
  n = pop_dev * rounds
  for mode in modes:  # several devices shard the population: vmap only
    for d in (dev_counts if mode == "vmap" else (1,)):
      row(("dev", mode, d), "devices", mode, f"{d} simulated device(s), population {pop_dev}",
          n, run_search(d, pop_dev, n, epochs, reps, mode))
  for mode in modes:
    for p in pops:  # population pop_dev on 1 device: the devices row
      row(("pop", mode, p), "population", mode, f"population {p}, 1 device", p * rounds,
          run_search(1, p, p * rounds, epochs, reps, mode))
  for mode in modes:
    for k in (1, 2):
      row(("work", mode, k), "processes", mode,
          f"{k} `metaopt.worker` process(es) on one SQLite study, population {wp}",
          wp * w_rounds, run_workers(k, wp, wp * w_rounds, epochs, reps, mode))
  for mode in modes:
    for k in (1, 2):
      row(("dist", mode, k), "multi-host", mode,
          f"{k} `jax.distributed` process(es), population {pop_dev}", n,
          run_distributed(k, pop_dev, n, epochs, reps, mode))
  minutes, load1 = (time.time() - t0) / 60, os.getloadavg()[0]
  notes, heads = [], []
  for kind, a, b, what, name in (
      ("dev", 8, 1, "8 simulated devices / 1 device", "scaling_8dev_over_1dev"),
      ("work", 2, 1, "2 worker processes / 1", "2workers_over_1worker"),
      ("dist", 2, 1, "2 jax.distributed processes / 1", "2processes_over_1process")):
    for mode in modes:
      if (kind, mode, a) not in got:
        continue
      fast, slow = got[(kind, mode, a)], got[(kind, mode, b)]
      first = got[(kind, mode, b, "first")] / got[(kind, mode, a, "first")]
      notes.append(f"{what}, kernel {mode}: {_ratio(fast, slow)} trials/s (compilation "
                   f"excluded; first runs, compilation included: {first:.2f}x)")
      heads.append((f"{name}_{mode}" if kind != "dev" else name, slow.median / fast.median,
                    f"kernel mode {mode} on both sides, median of {reps} runs after a first "
                    f"(compiling) run; IQR range {_ratio(fast, slow).split(' ', 1)[1]}"))
  header = (f"Scaling on {os.cpu_count()} CPU cores ({'--quick' if args.quick else 'full'}), "
            f"digits MLP, {epochs} epochs per trial, batch 64. Each row runs one kernel mode "
            f"in fresh processes with no persistent compilation cache: a first run "
            f"(compilation included) then {reps} timed runs of the same shapes (median and "
            f"interquartile range; trials/s from the median). Load average {load0:.1f} at "
            f"start and {load1:.1f} at end; {minutes:.1f} min in all.\n\n")
  out = results_path(os.path.join(ROOT, "benchmarks", "results_scaling.md"), args.quick)
  with open(out, "w") as f:
    f.write(header + "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n")
  print(f"wrote {out}")
  for name, value, variant in sorted(heads, key=lambda h: h[0] == "scaling_8dev_over_1dev"):
    headline(name, value, variant)


if __name__ == "__main__":
  main()
