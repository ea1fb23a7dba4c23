"""Runs three small bundled-task searches and prints their trials as JSON.

Made ``engine_pin_8e022cd.json`` on commit 8e022cd (the driver before the search loop):
``PYTHONPATH=<checkout of 8e022cd> python tests/data/engine_pin.py``; ``tests/test_loop.py``
checks that the current engine reproduces those numbers exactly.
"""

import json

import metaopt
from metaopt.tasks import get_task


def run(prog, task, **kw):
  res = metaopt.search(prog, task, progress=False, batch_size=64, seed=3, **kw)
  return [{"number": t.number, "status": t.status, "objective": t.objective,
           "params": t.params, "epochs": len(t.metrics)} for t in res.trials]


task = get_task("digits_mlp")
d = task.space.dim
out = {}
out["tpe_asha"] = run(metaopt.with_pruning(metaopt.tpe(d, n_startup=4), metaopt.asha(3)),
                      task, n_trials=8, population=4, epochs=3)
out["pbt"] = run(metaopt.pbt(d, interval=1), task, n_trials=4, population=4, epochs=3)
out["random_median"] = run(metaopt.with_pruning(metaopt.random_search(d),
                                                metaopt.median_pruner(3, min_trials=2)),
                           task, n_trials=6, population=6, epochs=2)
print(json.dumps(out, indent=1))
