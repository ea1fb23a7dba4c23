"""Process CPU of each XLA compile in one cold ``--quick`` digits BOHB search
(``hpo_vs_optuna.py``'s metaopt side), compiled serially so each compile's CPU is its own.

The chunk's background compile is switched off (``evaluators.BACKGROUND_COMPILE``): every
compile then runs on the calling thread and the process CPU around XLA's
``backend_compile_and_load`` (XLA's own compile threads included) is that program's. Prints
one JSON line: the compile CPU per program, the process CPU and trial-epochs until the best
valid accuracy reaches the target, and the best accuracy. CPU, not wall: comparable under load
only side by side (run old and new code alternately, ``PYTHONPATH`` picking the code).

    PYTHONPATH=$PWD python benchmarks/digits_compile_cpu.py [seed]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jax._src import compiler  # noqa: E402

CPU: dict[str, float] = collections.defaultdict(float)
_compile = compiler.backend_compile_and_load


def _timed(backend, module, *args, **kwargs):
  name = str(module.operation.attributes["sym_name"]).strip('"')
  c = time.process_time()
  try:
    return _compile(backend, module, *args, **kwargs)
  finally:
    CPU[name] += time.process_time() - c


compiler.backend_compile_and_load = _timed

import hpo_vs_optuna as bench  # noqa: E402

from metaopt import tasks  # noqa: E402
from metaopt._src import evaluators  # noqa: E402


def main() -> None:
  seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
  evaluators.BACKGROUND_COMPILE = False
  w = bench.WORKLOADS["digits"]
  s = w["quick"]
  task = tasks.get_task(w["task"])
  c0 = time.process_time()
  r = bench.run_ours(task, w["primary"], s["trials"], s["population"], s["epochs"],
                     w["batch"], seed)
  print(json.dumps({
      "seed": seed, "best": r["best"], "cpu_to_target": bench.cpu_to(r, s["target"]),
      "trial_epochs_to_target": bench.cpu_to(r, s["target"], "te_curve"),
      "cpu_first_epoch": r["cpu_curve"][0], "cpu_total": time.process_time() - c0,
      "xla_compile_cpu": round(sum(CPU.values()), 2),
      "by_program": {k: round(v, 2) for k, v in sorted(CPU.items(), key=lambda x: -x[1])},
      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
  main()
