"""Benchmark: gradient-based NAS on the procedural shapes images (NB201-style mini space).

Follows the protocol at the top of BENCHMARKS.md (``benchmarks/_protocol.py``):

* **Search cost** of the configured search (DARTS first order, ``SEARCH_EPOCHS`` epochs), in
  multiples of training its derived network once from scratch (same clock, compilation
  excluded and shown separately). The search runs all its configured epochs with the collapse
  safeguard reporting; the cost of the full search is the headline, the cost of the search a
  safeguard truncates (it stops where the safeguard fires) is reported beside it.
* **Derived cell vs baselines**, every cell trained identically (one population kernel: a
  masked supernet with one-hot weights per member; same budget, same data order and
  initialisation seed per pair): random cells drawn from the cells that compute something
  (the rule every derived cell obeys: ``nas.derive`` never returns a cell whose output is
  zero), and regularised evolution and random search at equal compute (as many evaluations
  as the full search costs in trainings, rounded up in their favour; each evaluation is a
  query of the shipped tabular benchmark, built with this very training protocol).
* Seeds: ``--dev`` chooses ``SEARCH_EPOCHS`` on dev seeds (median cost <= 4 trainings, then
  the best median validation accuracy of the derived cell in the tabular benchmark, ties to
  the longer search); the report runs on report seeds (3 with ``--quick``, 10 by default).
  Each search seed is also the training seed of its pair, so differences are paired by seed
  (sign and Wilcoxon tests).

  python benchmarks/nas.py --quick     # ~5 min on 2 idle CPU cores
  python benchmarks/nas.py             # 10 report seeds, DARTS-1st, DARTS-2nd and GDAS
  python benchmarks/nas.py --dev       # the dev-seed choice of SEARCH_EPOCHS

Writes benchmarks/results_nas.md (a ``--quick`` run writes under runs/benchmarks/ only);
prints ``nas_full_search_cost_over_one_training: X`` and ``darts_vs_filtered_random_delta: X``
(DARTS-1st test accuracy minus the mean of the filtered random cells, accuracy points, median
over report seeds).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path
from _protocol import headline, paired, seeds, spread  # noqa: E402

import metaopt  # noqa: E402
from metaopt import nas  # noqa: E402
from metaopt._src.nas import api, tabular  # noqa: E402
from metaopt._src.nas.train import train_networks  # noqa: E402
from metaopt.tasks import load_dataset  # noqa: E402

OUT = pathlib.Path(__file__).with_name("results_nas.md")
# Chosen with --dev on DEV_SEEDS 0-2 (median cost 3.16 at 2 epochs, 4.31 at 3; the derived
# cell's median table valid accuracy is the same, 0.312, for every length 1-8; see BENCHMARKS.md),
# frozen before the report run.
SEARCH_EPOCHS = 2
TRAIN_EPOCHS = 3  # = the tabular benchmark's budget, so table queries are real evaluations
BATCH = 64
N_RANDOM = 4  # filtered random cells per seed
METHODS = {
    "DARTS-1st": dict(method="darts", order=1, a_lr=0.01),  # the configured search
    "DARTS-2nd": dict(method="darts", order=2, a_lr=0.01),
    "GDAS": dict(method="gdas", order=1, a_lr=0.03),
}
HEADLINE = "DARTS-1st"
FIXED = "benchmarks/nas.py (SEARCH_EPOCHS, METHODS, N_RANDOM)"


def computes_something(space, g) -> bool:
  """The derivation rule: the cell's output depends on its input (``nas.derive``)."""
  return any(o != "none" for o, _, _ in tabular.canonical(space, g).normal)


def run_search(ctx, kw: dict, epochs: int, seed: int) -> dict:
  """One search of ``epochs`` epochs with the safeguard reporting (never stopping), so the
  full and the safeguard-truncated outcomes come from one run."""
  space, supernet, data = ctx["space"], ctx["supernet"], ctx["data"]
  s = api.SearchSettings(total_steps=ctx["steps"] * epochs, **kw)
  prog, _ = api.make_program(space, supernet, s, data, BATCH)
  return api.search(prog, data, epochs=epochs, batch_size=BATCH, seed=seed,
                    safeguard=nas.SafeguardSettings(enabled=False))


def one_training(ctx, geno, seed: int) -> dict:
  """Training the derived network once (the unit of search cost)."""
  net = api.build_model(ctx["space"], ctx["model_cfg"], ctx["data"].num_classes, geno)
  return train_networks(net, ctx["data"], [seed], epochs=TRAIN_EPOCHS, batch_size=BATCH,
                        test=False)


def table_search(name: str, space, table, n: int, seed: int):
  """Regularised evolution or random search with ``n`` table evaluations."""
  dim = space.cube().dim
  if name == "RE":
    s = metaopt.regularized_evolution(dim, population_size=max(2, min(n // 2, 8)),
                                      tournament_size=2, levels=space.levels())
  else:
    s = metaopt.random_search(dim)
  sim = tabular.simulate(s, table, n, jax.random.key(seed))
  return space.enumerate()[sim["best"]["index"]]


def context() -> dict:
  data = load_dataset("shapes")
  space = api.SPACES["nb201_mini"]()
  model_cfg = {**api._MODEL_DEFAULTS, **tabular.MODEL}
  return {"data": data, "space": space, "model_cfg": model_cfg,
          "supernet": api.build_model(space, model_cfg, data.num_classes),
          "steps": len(data.train) // BATCH, "table": tabular.load_table()}


def dev(a) -> None:
  """SEARCH_EPOCHS on dev seeds: for each E, the cell the configured (safeguarded) E-epoch
  search derives, its cost, and its validation accuracy in the tabular benchmark."""
  ctx = context()
  table = ctx["table"]
  max_e = a.max_epochs
  rows = {e: {"cost": [], "valid": [], "fired": 0} for e in range(1, max_e + 1)}
  for sd in seeds("dev", a.seeds):
    r = run_search(ctx, METHODS[HEADLINE], max_e, sd)
    unit = one_training(ctx, r["safeguard_genotype"], sd)["seconds"]
    cum = np.cumsum([h["seconds"] for h in r["history"]])
    for e in range(1, max_e + 1):
      f = r["safeguard_epoch"]
      g = r["safeguard_genotype"] if f is not None and f < e else r["genotypes"][e - 1]
      rows[e]["cost"].append(cum[e - 1] / unit)
      rows[e]["valid"].append(table.query(g)["valid_acc"])
      rows[e]["fired"] += int(f is not None and f < e)
    print(f"dev seed {sd}: unit {unit:.2f}s, safeguard epoch {r['safeguard_epoch']}, "
          f"cells {[str(g) for g in r['genotypes']]}", flush=True)
  print("| epochs | cost (x one training) | table valid acc of the derived cell | "
        "safeguard fired |\n|---|---|---|---|")
  ok = []
  for e, r in rows.items():
    c, v = spread(r["cost"]), spread(r["valid"])
    print(f"| {e} | {c} | {v} | {r['fired']}/{len(r['cost'])} |")
    if c.median <= 4:
      ok.append((v.median, e))
  best = max(ok) if ok else None  # ties: the longer search (the cost target is harder)
  print(f"chosen SEARCH_EPOCHS: {best[1] if best else 'none within 4 trainings'}")


def report(a) -> None:
  ctx = context()
  space, table, data, supernet = ctx["space"], ctx["table"], ctx["data"], ctx["supernet"]
  report_seeds = seeds("report", a.seeds)
  methods = a.methods.split(",") if a.methods else ([HEADLINE] if a.quick else list(METHODS))
  if HEADLINE not in methods or set(methods) - set(METHODS):
    raise ValueError(f"--methods={a.methods!r}: must include {HEADLINE}, allowed "
                     f"{', '.join(METHODS)}")
  live = [g for g in space.enumerate() if computes_something(space, g)]
  per = {sd: {} for sd in report_seeds}
  members = []  # (label, genotype, seed)
  for sd in report_seeds:
    for name in methods:
      t0 = time.perf_counter()
      r = run_search(ctx, METHODS[name], SEARCH_EPOCHS, sd)
      tr = one_training(ctx, r["safeguard_genotype"], sd)
      unit = tr["seconds"]
      per[sd][name] = {"full_cost": r["seconds"] / unit, "trunc_cost": r["safeguard_seconds"] /
                       unit, "search_s": r["seconds"], "search_compile_s": r["compile_seconds"],
                       "unit_s": unit, "unit_compile_s": tr["compile_seconds"],
                       "fired": r["safeguard_epoch"], "reason": r["collapse_reason"],
                       "cell": r["safeguard_genotype"], "full_cell": r["genotype"]}
      members += [(name, r["safeguard_genotype"], sd), (f"{name} (full)", r["genotype"], sd)]
      print(f"seed {sd} {name}: {r['safeguard_genotype']} search {r['seconds']:.1f}s "
            f"(+{r['compile_seconds']:.0f}s compile), one training {unit:.2f}s, cost "
            f"{per[sd][name]['full_cost']:.2f} (truncated "
            f"{per[sd][name]['trunc_cost']:.2f}), safeguard epoch {r['safeguard_epoch']} "
            f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    n_eq = math.ceil(per[sd][HEADLINE]["full_cost"])
    per[sd]["n_equal"] = n_eq
    for base in ("RE", "RS"):
      members.append((base, table_search(base, space, table, n_eq, sd), sd))
    rng = np.random.default_rng(sd)
    for i in rng.choice(len(live), N_RANDOM, replace=False):
      members.append(("random", live[i], sd))

  # one population kernel; identical (canonical cell, seed) pairs are trained once
  key_of = lambda g, sd: (tabular.canonical(space, g), sd)
  uniq = list(dict.fromkeys(key_of(g, sd) for _, g, sd in members))
  w = {c: jnp.stack([space.to_weights(g)[c] for g, _ in uniq]) for c in space.cell_types}
  t0 = time.perf_counter()
  res = train_networks(supernet, data, [sd for _, sd in uniq], w, epochs=TRAIN_EPOCHS,
                       batch_size=BATCH)
  print(f"population of {len(uniq)} distinct trainings ({len(members)} members): "
        f"{time.perf_counter() - t0:.0f}s", flush=True)
  acc_of = {k: float(t) for k, t in zip(uniq, res["test_acc"], strict=True)}
  acc = {sd: {} for sd in report_seeds}
  for label, g, sd in members:
    acc[sd].setdefault(label, []).append(acc_of[key_of(g, sd)])
  mean = lambda label: [float(np.mean(acc[sd][label])) for sd in report_seeds]

  lines, out = [], []

  def emit(s=""):
    lines.append(s)
    print(s, flush=True)

  emit(f"Report seeds {report_seeds[0]}-{report_seeds[-1]} ({len(report_seeds)} search seeds; "
       f"each also the training seed of its pair), {SEARCH_EPOCHS} search epochs (chosen on dev "
       f"seeds), {TRAIN_EPOCHS} training epochs, one training = the derived network trained "
       f"once; {jax.devices()[0].platform}, {os.cpu_count()} cores, load at start "
       f"{a.load_start:.2f}, at end {os.getloadavg()[0]:.2f}; quick={a.quick}.")
  emit()
  emit("| method | full search cost (x one training) | truncated by the safeguard | "
       "safeguard fired | search compile s | test acc, configured cell | test acc, full-run "
       "cell |")
  emit("|---|---|---|---|---|---|---|")
  for name in methods:
    v = lambda k, name=name: [per[sd][name][k] for sd in report_seeds]
    fired = sum(f is not None for f in v("fired"))
    emit(f"| {name} | {spread(v('full_cost'))} | {spread(v('trunc_cost'))} | "
         f"{fired}/{len(report_seeds)} | {spread(v('search_compile_s'))} | "
         f"{spread(mean(name))} | {spread(mean(name + ' (full)'))} |")
  n_eq = [per[sd]["n_equal"] for sd in report_seeds]
  emit(f"| RE, equal compute ({min(n_eq)}-{max(n_eq)} table evaluations) | = | - | - | - | "
       f"{spread(mean('RE'))} | - |")
  emit(f"| random search, equal compute (same) | = | - | - | - | {spread(mean('RS'))} | - |")
  emit(f"| {N_RANDOM} random cells per seed, filtered ({len(live)} of 729 compute something) "
       f"| 0 | - | - | - | {spread(mean('random'))} | - |")
  unit = [per[sd][HEADLINE]["unit_s"] for sd in report_seeds]
  unit_c = [per[sd][HEADLINE]["unit_compile_s"] for sd in report_seeds]
  emit()
  first = per[report_seeds[0]][HEADLINE]
  cold = ((first["search_s"] + first["search_compile_s"])
          / (first["unit_s"] + first["unit_compile_s"]))
  emit(f"Median (IQR) over seeds; one training of the {HEADLINE} cell: {spread(unit)} s "
       f"(+ {spread(unit_c)} s compile). Compilation, cold (first seed): search "
       f"{first['search_compile_s']:.1f} s, one training {first['unit_compile_s']:.1f} s; later "
       "seeds reuse the process's compilation cache for the search (not for the derived "
       "networks, whose cells differ). Cost with compilation included on both sides, first "
       f"seed (both cold): {cold:.2f}.")
  emit()
  d = mean(HEADLINE)
  tests = {"filtered random (mean of the seed's cells)": mean("random"),
           "regularised evolution, equal compute": mean("RE"),
           "random search, equal compute": mean("RS"),
           f"{HEADLINE}, full-run cell": mean(HEADLINE + " (full)")}
  emit(f"Paired by seed, {HEADLINE} (configured, safeguarded) cell vs:")
  emit()
  for k, other in tests.items():
    delta = 100 * (np.asarray(d) - np.asarray(other))
    emit(f"- {k}: delta {spread(delta)} points; "
         f"{paired(d, other, lower_is_better=False)}")
  emit()
  emit("Cells (configured search per seed): " + "; ".join(
      f"{sd}: `{per[sd][HEADLINE]['cell']}`" for sd in report_seeds))
  emit()
  full = [per[sd][HEADLINE]["full_cost"] for sd in report_seeds]
  trunc = [per[sd][HEADLINE]["trunc_cost"] for sd in report_seeds]
  delta = 100 * (np.asarray(d) - np.asarray(mean("random")))
  variant = f"{HEADLINE}, {SEARCH_EPOCHS} epochs, report seeds, quick={a.quick}"
  out.append(f"nas_full_search_cost spread: {spread(full)}; at or below 4 on each seed: "
             f"{paired(full, [4.0] * len(full))}")
  out.append(headline("nas_full_search_cost_over_one_training", float(np.median(full)),
                      variant, FIXED))
  out.append(headline("nas_truncated_search_cost_over_one_training", float(np.median(trunc)),
                      variant, FIXED))
  out.append(f"darts_vs_filtered_random_delta spread: {spread(delta)} points; "
             f"{paired(d, mean('random'), lower_is_better=False)}")
  out.append(headline("darts_vs_filtered_random_delta", float(np.median(delta)), variant,
                      FIXED))
  print(out[0])
  print(out[3])
  text = "\n".join(lines) + "\n\n```\n" + "\n".join(out) + "\n```\n"
  path = results_path(str(OUT), a.quick)  # a quick run leaves the committed table alone
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="3 report seeds, DARTS-1st only")
  ap.add_argument("--dev", action="store_true", help="choose SEARCH_EPOCHS on dev seeds")
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--max-epochs", type=int, default=8, help="--dev: longest search tried")
  ap.add_argument("--methods", default=None, help=f"comma-separated, from {list(METHODS)}")
  a = ap.parse_args()
  # A fresh persistent compilation cache for this process: the first seed compiles cold, the
  # later seeds reuse its kernels (compilation is excluded from every cost and shown apart).
  import tempfile
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="nas-bench-jax-"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  a.load_start = os.getloadavg()[0]
  if a.dev:
    a.seeds = a.seeds or 3
    dev(a)
  else:
    a.seeds = a.seeds or (3 if a.quick else 10)
    report(a)


if __name__ == "__main__":
  main()
