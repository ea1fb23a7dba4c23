"""Benchmark: gradient-based NAS on the procedural shapes images (NB201-style mini space).

* Search cost of DARTS-1st, DARTS-2nd and GDAS, in multiples of training one derived network
  from scratch (wall clock on this machine, compilation excluded).
* Test accuracy of each derived cell (3 seeds) vs 10 random cells of the same space and vs
  regularised evolution at equal compute (as many cell evaluations as DARTS-1st's search
  cost in trainings), all trained identically (one population kernel: a masked supernet
  with one-hot weights per member; same budget, same data order per seed). Evolution reads
  its evaluations from the shipped tabular benchmark when it covers the space (the table was
  built with this very training protocol and seed 0), else trains them.

  python benchmarks/nas.py --quick     # 5-15 min on 2 shared CPU cores

Writes benchmarks/results_nas.md; the last line printed is ``darts_vs_random_arch_delta: X``
(DARTS-1st mean test accuracy minus the random cells' mean, in accuracy points).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

import metaopt  # noqa: E402
from metaopt import nas  # noqa: E402
from metaopt._src.nas import api, tabular  # noqa: E402
from metaopt._src.nas.train import train_networks  # noqa: E402
from metaopt.tasks import load_dataset  # noqa: E402

OUT = pathlib.Path(__file__).with_name("results_nas.md")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  search_epochs = 3 if a.quick else 8
  train_epochs = 3  # = the tabular benchmark's budget, so table queries are real evaluations
  n_random = 10
  data = load_dataset("shapes")
  space = api.SPACES["nb201_mini"]()
  model_cfg = {**api._MODEL_DEFAULTS, **tabular.MODEL}
  supernet = api.build_model(space, model_cfg, data.num_classes)
  bs = 64
  steps = len(data.train) // bs
  methods = {
      "DARTS-1st": dict(method="darts", order=1, a_lr=0.01),
      "DARTS-2nd": dict(method="darts", order=2, a_lr=0.01),
      "GDAS": dict(method="gdas", order=1, a_lr=0.03),
  }
  rows, derived = {}, {}
  for name, kw in methods.items():
    s = api.SearchSettings(total_steps=steps * search_epochs, **kw)
    prog, _ = api.make_program(space, supernet, s, data, bs)
    t0 = time.perf_counter()
    r = api.search(prog, data, epochs=search_epochs, batch_size=bs, seed=a.seed,
                   safeguard=nas.SafeguardSettings())
    print(f"{name}: {r['genotype']}  search {r['seconds']:.1f}s (+{r['compile_seconds']:.0f}s "
          f"compile) collapsed={r['collapsed']} [{time.perf_counter() - t0:.0f}s]", flush=True)
    rows[name] = {"search_s": r["seconds"], "collapsed": r["collapsed"],
                  "skip": r["history"][-1]["skip_count"]}
    derived[name] = r["genotype"]

  # the unit of cost: training one derived (discrete) network once
  one = api.build_model(space, model_cfg, data.num_classes, derived["DARTS-1st"])
  unit = train_networks(one, data, [a.seed], epochs=train_epochs, batch_size=bs)["seconds"]
  for name in methods:
    rows[name]["cost"] = rows[name]["search_s"] / unit
  print(f"one derived training: {unit:.1f}s", flush=True)

  rng = np.random.default_rng(a.seed + 1)
  randoms = [space.random(rng) for _ in range(n_random)]
  n_re = max(1, int(round(rows["DARTS-1st"]["cost"])))
  re_geno, re_note = None, ""
  table_path = tabular.TABLE_PATH
  if table_path.exists() and len(tabular.load_table(table_path)) == 729:
    table = tabular.load_table(table_path)
    re = metaopt.regularized_evolution(space.cube().dim, population_size=max(2, min(n_re, 8)),
                                       tournament_size=2, levels=space.levels())
    sim = tabular.simulate(re, table, n_re, jax.random.key(a.seed))
    re_geno = space.decode(space.encode(space.enumerate()[sim["best"]["index"]]))
    re_note = f"{n_re} table evaluations"
  else:
    cand = [space.random(rng) for _ in range(n_re)]
    w = {c: jnp.stack([space.to_weights(g)[c] for g in cand]) for c in space.cell_types}
    r = train_networks(supernet, data, [a.seed] * n_re, w, epochs=train_epochs, test=False)
    re_geno = cand[int(np.argmax(r["valid_acc"][:, -1]))]
    re_note = f"{n_re} trained evaluations (no full table)"

  seeds = [a.seed, a.seed + 1, a.seed + 2]
  members = [(n, derived[n], sd) for n in methods for sd in seeds]
  members += [("RE", re_geno, sd) for sd in seeds]
  members += [(f"random{i}", g, a.seed) for i, g in enumerate(randoms)]
  w = {c: jnp.stack([space.to_weights(g)[c] for _, g, _ in members]) for c in space.cell_types}
  t0 = time.perf_counter()
  res = train_networks(supernet, data, [m[2] for m in members], w, epochs=train_epochs,
                       batch_size=bs)
  print(f"population of {len(members)} trainings: {time.perf_counter() - t0:.0f}s", flush=True)
  acc = {}
  for (n, _, _), t in zip(members, res["test_acc"], strict=True):
    acc.setdefault("random" if n.startswith("random") else n, []).append(float(t))
  # zero-cost proxies of the distinct cells trained above, scored together in one kernel
  from metaopt._src.nas.proxies import PROXIES, proxy_scores, rank_correlation
  distinct = {}
  for (_, g, _), t in zip(members, res["test_acc"], strict=True):
    distinct.setdefault(g, []).append(float(t))
  cells = list(distinct)
  batch = (data.train.x[:64], data.train.y[:64])
  scores = proxy_scores(supernet, cells, batch, jax.random.key(a.seed))
  cell_acc = [np.mean(distinct[g]) for g in cells]
  corr = {p: rank_correlation(scores[p], cell_acc) for p in PROXIES}
  rnd = np.asarray(acc["random"])
  target = rnd.mean() + rnd.std()
  lines = [
      "| method | search cost (x one training) | collapsed | skips (last search epoch) |"
      " test acc (3 seeds) |"
      " >= random mean+1std |", "|---|---|---|---|---|---|"]
  for n in methods:
    m = np.mean(acc[n])
    lines.append(f"| {n} | {rows[n]['cost']:.2f} | {rows[n]['collapsed']} | {rows[n]['skip']} "
                 f"| {m:.3f} ± {np.std(acc[n]):.3f} | {m >= target} |")
  lines.append(f"| RE, equal compute ({re_note}) | {n_re:.0f} | - | - | "
               f"{np.mean(acc['RE']):.3f} ± {np.std(acc['RE']):.3f} | "
               f"{np.mean(acc['RE']) >= target} |")
  lines.append(f"| {n_random} random cells | 0 | - | - | {rnd.mean():.3f} ± {rnd.std():.3f} "
               "| - |")
  delta = 100 * (np.mean(acc["DARTS-1st"]) - rnd.mean())
  header = (f"NB201-style mini space (none/skip/3x3 conv, 729 cells), shapes 16x16, "
            f"{search_epochs} search epochs, {train_epochs} training epochs, "
            f"one training = {unit:.1f}s on {jax.devices()[0].platform} "
            f"({os.cpu_count()} cores, shared), quick={a.quick}.")
  genos = "\n".join(f"- {n}: `{derived[n]}`" for n in methods) + f"\n- RE: `{re_geno}`"
  ptab = ["| proxy | Spearman | Kendall |", "|---|---|---|"] + [
      f"| {p} | {corr[p]['spearman']:.2f} | {corr[p]['kendall']:.2f} |" for p in PROXIES]
  genos += (f"\n\nZero-cost proxies vs trained test accuracy ({len(cells)} distinct cells "
            "above, scored at initialisation in one vmapped kernel):\n\n" + "\n".join(ptab))
  text = f"{header}\n\n" + "\n".join(lines) + f"\n\nDerived cells:\n\n{genos}\n\n" \
      f"darts_vs_random_arch_delta: {delta:.2f}\n"
  out = results_path(str(OUT), a.quick)  # a quick run leaves the committed table alone
  with open(out, "w") as f:
    f.write(text)
  print(f"wrote {out}")
  print(text)
  print(f"darts_vs_random_arch_delta: {delta:.2f}")


if __name__ == "__main__":
  main()
