"""``python -m metaopt.repair build-table [--tasks a,b] [--configs N] [--epochs E] [--seed S]
[--broken F] [--mutations K] [--store URL] [--out PATH]``: measures the priority table on a
corpus of runs and writes it as JSON. With ``--store`` the corpus runs are kept; re-running
with the same store recomputes the table from them without training again."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
  from metaopt._src.repair import TABLE_PATH, build_table

  p = argparse.ArgumentParser(prog="python -m metaopt.repair")
  p.add_argument("command", choices=["build-table"])
  p.add_argument("--tasks", default="digits_mlp,wine_mlp,synthetic_regression")
  p.add_argument("--configs", type=int, default=64)
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--population", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--broken", type=float, default=0.5,
                 help="fraction of the worst corpus configs whose repairs are measured")
  p.add_argument("--mutations", type=int, default=3,
                 help="corpus configs are the defaults with 1..K random parameters set at "
                      "random (0: uniformly random configs)")
  p.add_argument("--store", default=None, help="SQLAlchemy URL to keep the corpus runs")
  p.add_argument("--out", default=TABLE_PATH)
  p.add_argument("--quiet", action="store_true")
  a = p.parse_args(argv)
  from metaopt._src.driver import enable_compilation_cache
  enable_compilation_cache()
  table = build_table(a.tasks.split(","), a.configs, a.epochs, a.population, a.seed,
                      store=a.store, progress=not a.quiet, broken_fraction=a.broken,
                      mutations=a.mutations)
  with open(a.out, "w") as f:
    json.dump(table, f, indent=1)
  print(f"wrote {a.out}: {table['provenance']['runs']} runs in "
        f"{table['provenance']['seconds']} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
