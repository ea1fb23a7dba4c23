"""Our own tabular NAS benchmark: every cell of the 729-cell NB201-style mini space trained.

``build_table`` covers all ``3^6`` cells (none / skip / 3x3 conv on 6 edges) of a tiny
network on the procedural shapes images, trained once with one fixed seed for every cell
(same initialisation key, same data order), as a population: a masked supernet with one-hot
mixing weights vmapped over chunks of cells, one kernel per chunk. Cells that differ only in
ops that cannot reach the output (:func:`canonical`) compute the same function, so only the
291 distinct ones are trained and each row says which one it was ``trained_as``. The table ships as
``metaopt/_src/nas/data/nb201_mini.json`` with its provenance (command, seed, code version,
date, data version, budget). A table built with ``--sample N`` holds a uniform sample of
the cells (``Table.query`` raises ``KeyError`` for the others; :func:`simulate` counts those
as failed evaluations). Queries answer in microseconds, so NAS searchers (random search,
regularised evolution, BO on the genotype cube) compare in seconds: see :func:`simulate`.

Build:  python -m metaopt.nas.tabular --epochs 3
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.nas.train import train_networks
from metaopt.spaces import NB201_MINI_OPS, CellSpace, Genotype, nb201_space
from metaopt.tasks import Network, load_dataset

TABLE_PATH = pathlib.Path(__file__).parent / "data" / "nb201_mini.json"
MODEL = {"features": 8, "n_cells": 1, "stages": 2, "stem_stride": 2}


def mini_space() -> CellSpace:
  return nb201_space(NB201_MINI_OPS)


def canonical(space: CellSpace, genotype: Genotype) -> Genotype:
  """The genotype with every op that cannot change the cell's output set to ``none``.

  Every op of the mini space maps zero to zero (no biases, no affine norms), so an op on an
  edge whose source node receives nothing, or whose target never reaches the output node,
  contributes exactly zero: cells with the same canonical form compute the same function
  from the same initialisation, and train to the same numbers.
  """
  ops = {(s, t): o for o, s, t in genotype.normal}
  n = max(t for _, t in ops) + 1
  while True:
    live_in = {0}
    for t in range(1, n):
      if any(o != "none" and s in live_in for (s, tt), o in ops.items() if tt == t):
        live_in.add(t)
    reaches = {n - 1}
    for s in range(n - 2, -1, -1):
      if any(o != "none" and t in reaches for (ss, t), o in ops.items() if ss == s):
        reaches.add(s)
    new = {(s, t): o if s in live_in and t in reaches else "none" for (s, t), o in ops.items()}
    if new == ops:
      break
    ops = new
  return Genotype(tuple((ops[(s, t)], s, t) for _, s, t in genotype.normal))


def build_table(dataset: str = "shapes", epochs: int = 3, seed: int = 0, chunk: int = 81,
                sample: int | None = None, lr: float = 3e-3, batch_size: int = 64,
                progress: bool = True) -> dict[str, Any]:
  """Trains every cell (or a uniform ``sample`` of them, drawn with ``default_rng(seed)``)
  and returns the table as a dict."""
  from metaopt._src.provenance import code_version
  space = mini_space()
  data = load_dataset(dataset)
  cells = space.enumerate()
  if sample is not None and sample < len(cells):
    pick = np.sort(np.random.default_rng(seed).choice(len(cells), sample, replace=False))
    cells = [cells[i] for i in pick]
  model = Network(space, num_classes=data.num_classes, **MODEL)
  unique = sorted({canonical(space, g) for g in cells}, key=space.index)
  trained: dict[Genotype, dict[str, Any]] = {}
  t0 = time.perf_counter()
  for i in range(0, len(unique), chunk):
    part = unique[i:i + chunk]
    w = {c: jnp.stack([space.to_weights(g)[c] for g in part]) for c in space.cell_types}
    r = train_networks(model, data, [seed] * len(part), w, epochs=epochs,
                       batch_size=batch_size, lr=lr)
    for j, g in enumerate(part):
      trained[g] = {"valid_acc": float(r["valid_acc"][j, -1]),
                    "test_acc": float(r["test_acc"][j]),
                    "train_loss": float(r["train_loss"][j, -1])}
    if progress:
      print(f"[table] {len(trained)}/{len(unique)} distinct cells "
            f"({len(cells)} in all), {time.perf_counter() - t0:.0f}s", flush=True)
  rows = [{"index": space.index(g), "genotype": str(g),
           "trained_as": space.index(canonical(space, g)), **trained[canonical(space, g)]}
          for g in cells]
  return {"space": {"kind": "nb201", "ops": list(space.ops), "edges": list(space.edges)},
          "model": MODEL, "budget": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                     "optimizer": "adamw+cosine", "weight_decay": 1e-4},
          "provenance": {"command": " ".join(["python -m metaopt.nas.tabular"] + sys.argv[1:]),
                         "seed": seed, "code_version": code_version(),
                         "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         "data_version": data.data_version,
                         "seconds": time.perf_counter() - t0, "device": str(jax.devices()[0]),
                         "distinct_cells_trained": len(unique)},
          "rows": rows}


class Table:
  """A loaded tabular benchmark."""

  def __init__(self, d: dict[str, Any]):
    self.meta = {k: v for k, v in d.items() if k != "rows"}
    self.space = nb201_space(tuple(d["space"]["ops"]))
    self.by_index = {r["index"]: r for r in d["rows"]}

  def __len__(self) -> int:
    return len(self.by_index)

  def query(self, genotype: Genotype) -> dict[str, Any]:
    """The row of a genotype (``KeyError`` if the table was built for fewer cells)."""
    return self.by_index[self.space.index(genotype)]

  def arrays(self) -> tuple[list[Genotype], np.ndarray, np.ndarray]:
    cells = self.space.enumerate()
    idx = sorted(self.by_index)
    return ([cells[i] for i in idx], np.array([self.by_index[i]["valid_acc"] for i in idx]),
            np.array([self.by_index[i]["test_acc"] for i in idx]))


def load_table(path: str | pathlib.Path = TABLE_PATH) -> Table:
  """The tabular NAS benchmark (default: the one bundled with the package, every trained
  cell of the NB201-style space on ``shapes``) read from its JSON file."""
  return Table(json.loads(pathlib.Path(path).read_text()))


def simulate(searcher: Any, table: Table, n_evals: int, key: jax.Array,
             batch: int = 1) -> dict[str, Any]:
  """Runs a black-box searcher (``ask``/``tell`` on the genotype cube) against the table.

  Returns the best-by-validation genotype found within ``n_evals`` queries, its test
  accuracy, and the trajectory of best validation accuracy.
  """
  space = table.space
  state = searcher.init(key)
  best, traj, seen = None, [], 0
  while seen < n_evals:
    key, k = jax.random.split(key)
    n = min(batch, n_evals - seen)
    state, u = searcher.ask(state, k, n)
    ys, status = [], []
    for row_u in np.asarray(u):
      g = space.decode(row_u)
      r = table.by_index.get(space.index(g))
      ok = r is not None
      ys.append(-r["valid_acc"] if ok else 0.0)
      status.append(0 if ok else 1)
      if ok and (best is None or r["valid_acc"] > best["valid_acc"]):
        best = r
      traj.append(best["valid_acc"] if best else float("nan"))
    state = searcher.tell(state, u, jnp.asarray(ys), jnp.asarray(status, jnp.int32))
    seen += n
  return {"best": best, "trajectory": traj}


def main(argv: Sequence[str] | None = None) -> None:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--epochs", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--sample", type=int, default=None,
                  help="train a uniform sample of this many cells (default: all 729)")
  ap.add_argument("--chunk", type=int, default=81)
  ap.add_argument("--out", default=str(TABLE_PATH))
  a = ap.parse_args(argv)
  table = build_table(epochs=a.epochs, seed=a.seed, sample=a.sample, chunk=a.chunk)
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(table, indent=1))
  print(f"wrote {a.out}: {len(table['rows'])} cells")


if __name__ == "__main__":
  main()
