"""MNIST-1D: our searched models next to the published test accuracies.

For each model, the search of ``configs/mnist1d_cnn.py`` (TPE + ASHA, 32 trials in
populations of 16, rungs after 2, 6, 18 epochs, batch 100) on its task, then ``evaluate``:
the top 3 configurations retrained with 3 seeds each and tested once on the published test
split (the search never sees it). Models: logistic regression (``logreg`` on ``mnist1d``),
``mnist1d_mlp``, ``mnist1d_cnn`` (stride-1 convolutions, max pooling), the paper's CNN
(``mnist1d_cnn``, ``arch="paper"``) and ``mnist1d_gru``. Published (Greydanus & Kobak 2024):
logistic regression 32 %, MLP 68 %, CNN 94 %, GRU 91 %.

    python benchmarks/mnist1d.py [--quick] [--models cnn,mlp]

``--quick`` runs the CNN only with a smaller search (16 trials, rungs after 1, 3, 9 epochs)
and tests its best configuration with 2 seeds. Stores go to a temporary directory. The last
line is ``mnist1d_cnn_test_acc: X`` (mean test accuracy over seeds of the best configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PUBLISHED = {"logreg": 0.32, "mlp": 0.68, "cnn": 0.94, "cnn_paper": 0.94, "gru": 0.91}
# model -> (task name, task kwargs)
MODELS = {"logreg": ("logreg", {"dataset": "mnist1d"}), "mlp": ("mnist1d_mlp", {}),
          "cnn": ("mnist1d_cnn", {}), "cnn_paper": ("mnist1d_cnn", {"arch": "paper"}),
          "gru": ("mnist1d_gru", {})}


def run(model: str, quick: bool, out_dir: str) -> dict:
  import metaopt
  from metaopt._src import config as config_lib
  from metaopt._src.evaluate import evaluate_top
  from metaopt.configs import mnist1d_cnn

  cfg = mnist1d_cnn.get_config().to_dict()
  task_name, task_kwargs = MODELS[model]
  cfg.update(name=f"mnist1d_{model}", task_name=task_name, task=task_kwargs,
             store=f"sqlite:///{out_dir}/{model}.db")
  if quick:
    cfg.update(n_trials=16, epochs=9, pruner={"min_epochs": 1, "eta": 3},
               searcher={"n_startup": 8})
  program, task, space, kwargs = config_lib.build(cfg)
  store = metaopt.Store(cfg["store"])
  t0 = time.perf_counter()
  res = metaopt.search(program, task, space=space, store=store, config=cfg, progress=False,
                       **kwargs)
  search_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  ev = evaluate_top(store, cfg["name"], task, space, k=1 if quick else 3,
                    seeds=2 if quick else 3)
  eval_s = time.perf_counter() - t0
  best = max(ev["configs"], key=lambda c: c["valid"])
  return {"model": model, "valid": res.best.objective, "test": best["test_accuracy"],
          "test_std": best["test_accuracy_std"], "params": best["params"],
          "search_s": search_s, "eval_s": eval_s}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
  args = ap.parse_args()
  models = (args.models.split(",") if args.models else
            ["cnn"] if args.quick else list(MODELS))
  for m in models:
    if m not in MODELS:
      ap.error(f"--models: {m!r} is unknown; allowed: {', '.join(MODELS)}")
  load = os.getloadavg()[0]
  print(f"# load average at start: {load:.1f} on {os.cpu_count()} CPUs")
  print(f"{'model':<10} {'published':>9} {'ours':>14} {'best valid':>10} {'search s':>9} "
        f"{'eval s':>7}  params")
  rows = {}
  with tempfile.TemporaryDirectory(prefix="mnist1d-bench-") as d:
    for m in models:
      r = rows[m] = run(m, args.quick, d)
      print(f"{m:<10} {PUBLISHED[m]:>9.2f} {r['test']:>8.3f}±{r['test_std']:.3f} "
            f"{r['valid']:>10.3f} {r['search_s']:>9.0f} {r['eval_s']:>7.0f}  {r['params']}",
            flush=True)
  if "cnn" in rows:
    print(f"mnist1d_cnn_test_acc: {rows['cnn']['test']:.4f}")


if __name__ == "__main__":
  main()
