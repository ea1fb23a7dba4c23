"""MNIST-1D: our searched models next to the published test accuracies.

For each model, the search of ``configs/mnist1d_cnn.py`` (TPE + ASHA, 32 trials in
populations of 16, rungs after 2, 6, 18 epochs, batch 100) on its task, then ``evaluate``:
the top 3 configurations retrained with 3 seeds each and tested once on the published test
split (the search never sees it). Models: logistic regression (``logreg`` on ``mnist1d``),
``mnist1d_mlp``, ``mnist1d_cnn`` (stride-1 convolutions, max pooling), the paper's CNN
(``mnist1d_cnn``, ``arch="paper"``) and ``mnist1d_gru``. Published (Greydanus & Kobak 2024):
logistic regression 32 %, MLP 68 %, CNN 94 %, GRU 91 %.

    python benchmarks/mnist1d_published.py [--quick] [--models cnn,mlp] [--seeds N]

Protocol (BENCHMARKS.md): nothing is tuned here; the config was fixed in
``configs/mnist1d_cnn.py`` (developed on its seed 0, a development seed). Each model is
searched once per report seed (``_protocol.REPORT_SEEDS``, default the first 10), and each
search's result is the mean test accuracy over retraining seeds of its configuration best on
validation; the table shows the spread (median [IQR]) over search seeds, and the headline
``mnist1d_cnn_test_acc: X`` is the CNN's median. Search and evaluate seconds include
compilation (shown separately).

``--quick`` (a smoke run) runs the CNN only, with a smaller search (16 trials, rungs after
1, 3, 9 epochs) on 2 report seeds, and tests each best configuration with 2 seeds. Stores go
to a temporary directory; nothing else is written.
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


def run(model: str, quick: bool, out_dir: str, seed: int) -> dict:
  import metaopt
  from metaopt._src import config as config_lib
  from metaopt._src import population as pop
  from metaopt._src.evaluate import evaluate_top
  from metaopt.configs import mnist1d_cnn

  cfg = mnist1d_cnn.get_config().to_dict()
  task_name, task_kwargs = MODELS[model]
  cfg.update(name=f"mnist1d_{model}_{seed}", task_name=task_name, task=task_kwargs,
             store=f"sqlite:///{out_dir}/{model}_{seed}.db", seed=seed)
  if quick:
    cfg.update(n_trials=16, epochs=9, pruner={"min_epochs": 1, "eta": 3},
               searcher={"n_startup": 8})
  program, task, space, kwargs = config_lib.build(cfg)
  store = metaopt.Store(cfg["store"])
  c0, t0 = pop.compile_seconds(), time.perf_counter()
  res = metaopt.search(program, task, space=space, store=store, config=cfg, progress=False,
                       **kwargs)
  search_s, search_c = time.perf_counter() - t0, pop.compile_seconds() - c0
  c0, t0 = pop.compile_seconds(), time.perf_counter()
  ev = evaluate_top(store, cfg["name"], task, space, k=1 if quick else 3,
                    seeds=2 if quick else 3)
  eval_s, eval_c = time.perf_counter() - t0, pop.compile_seconds() - c0
  best = max(ev["configs"], key=lambda c: c["valid"])
  return {"model": model, "seed": seed, "valid": res.best.objective,
          "test": best["test_accuracy"], "test_std": best["test_accuracy_std"],
          "params": best["params"], "search_s": search_s, "search_compile_s": search_c,
          "eval_s": eval_s, "eval_compile_s": eval_c}


def main() -> None:
  import _protocol as proto  # benchmarks/ is on sys.path (the script's folder)

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
  ap.add_argument("--seeds", type=int, default=None,
                  help="report seeds per model (default 10; 2 with --quick)")
  args = ap.parse_args()
  models = (args.models.split(",") if args.models else
            ["cnn"] if args.quick else list(MODELS))
  for m in models:
    if m not in MODELS:
      ap.error(f"--models: {m!r} is unknown; allowed: {', '.join(MODELS)}")
  seeds = proto.seeds("report", args.seeds or (2 if args.quick else 10))
  load = os.getloadavg()[0]
  print(f"# load average at start: {load:.1f} on {os.cpu_count()} CPUs; report seeds "
        f"{seeds[0]}-{seeds[-1]}" + (" (--quick: a smoke run)" if args.quick else ""))
  print("# per search seed: model, seed, test (mean over retraining seeds of the best-on-"
        "valid configuration), best valid, search s (compile s), evaluate s (compile s)")
  rows: dict[str, list[dict]] = {}
  with tempfile.TemporaryDirectory(prefix="mnist1d-bench-") as d:
    for m in models:
      for seed in seeds:
        r = run(m, args.quick, d, seed)
        rows.setdefault(m, []).append(r)
        print(f"# {m:<10} {seed:>5} {r['test']:.4f}±{r['test_std']:.4f} {r['valid']:.4f} "
              f"{r['search_s']:.0f} ({r['search_compile_s']:.0f}) {r['eval_s']:.0f} "
              f"({r['eval_compile_s']:.0f})  {r['params']}", flush=True)
  print(f"\n| model | published | ours: test, median [IQR] over {len(seeds)} search seeds | "
        "search s | evaluate s |")
  print("|---|---|---|---|---|")
  for m, rs in rows.items():
    sp = proto.spread([r["test"] for r in rs])
    print(f"| {m} | {PUBLISHED[m]:.2f} | {sp.cell('.4f')} | "
          f"{proto.spread([r['search_s'] for r in rs]).cell('.0f')} | "
          f"{proto.spread([r['eval_s'] for r in rs]).cell('.0f')} |")
  if "cnn" in rows:
    sp = proto.spread([r["test"] for r in rows["cnn"]])
    print(f"# mnist1d_cnn_test_acc spread: {sp}; published 0.94; min over seeds "
          f"{min(r['test'] for r in rows['cnn']):.4f}")
    proto.headline("mnist1d_cnn_test_acc", sp.median,
                   "configs/mnist1d_cnn.py" + (" (quick search)" if args.quick else ""),
                   "configs/mnist1d_cnn.py")


if __name__ == "__main__":
  main()
