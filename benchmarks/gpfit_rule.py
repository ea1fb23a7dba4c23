"""The gpfit lane's decision rule (BENCHMARKS.md, "gpfit lane") on suite runs of two sides.

Reads ``--raw`` JSON files of ``blackbox_suite.py --quick --dev --ours gp --peers gp`` runs:
``--default`` files (the current default) and ``--candidate`` files (a variant, same cells and
seeds; several files per side are merged, e.g. one per d). For each d present on both sides it
prints the cells at or below GPSampler's median for each side and the mean over paired runs of
log10 regret(candidate) - log10 regret(default), and a paired sign / Wilcoxon test. The rule:
the candidate becomes the default only if, over the cells of every d in ``--require`` (all 8
quick functions each), (a) it has strictly more cells at or below GPSampler than the default,
(b) at no d does it have fewer, and (c) the mean paired log10 difference is <= 0.

    python benchmarks/gpfit_rule.py --default /tmp/a2.json /tmp/a5.json \
        --candidate /tmp/b2.json /tmp/b5.json --require 2,5
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _protocol  # noqa: E402

SOLVED = 1e-8
N_FUNCTIONS = 8  # quick-suite functions per d


def finals(paths: list[str]) -> dict[tuple[str, str, str, int], np.ndarray]:
  out = {}
  for path in paths:
    with open(path) as f:
      raw = json.load(f)
    for key, recs in raw.items():
      lib, name, pname, dim = key.split("|")
      out[(lib, name, pname, int(dim))] = np.asarray([r["traj"][-1] for r in recs])
  return out


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--default", nargs="+", required=True)
  ap.add_argument("--candidate", nargs="+", required=True)
  ap.add_argument("--require", default="2,5", help="comma-separated d that must be complete")
  args = ap.parse_args()
  base, cand = finals(args.default), finals(args.candidate)
  ours = lambda res: {(p, d) for (lib, n, p, d) in res if lib == "metaopt" and n == "gp"}  # noqa: E731
  cells = sorted(ours(base) & ours(cand), key=lambda c: (c[1], c[0]))
  need = [int(d) for d in args.require.split(",")]
  k = {"default": {}, "candidate": {}}
  diffs = {}
  for p, d in cells:
    peer = (base.get(("optuna", "gp", p, d)) if ("optuna", "gp", p, d) in base
            else cand[("optuna", "gp", p, d)])
    row = [f"{p} d={d}: GPSampler {np.median(peer):.3g}"]
    for side, res in (("default", base), ("candidate", cand)):
      v = res[("metaopt", "gp", p, d)]
      at = bool(np.median(v) <= np.median(peer) * (1 + 1e-9))
      k[side][d] = k[side].get(d, 0) + int(at)
      row.append(f"{side} {np.median(v):.3g}{' <=' if at else ''}")
    a = np.log10(np.maximum(cand[("metaopt", "gp", p, d)], SOLVED))
    b = np.log10(np.maximum(base[("metaopt", "gp", p, d)], SOLVED))
    diffs.setdefault(d, []).append(a - b)
    print(", ".join(row))
  dims = sorted(diffs)
  for d in dims:
    a = np.concatenate(diffs[d])
    print(f"d={d}: {len(diffs[d])} cells; at or below GPSampler: default {k['default'][d]}, "
          f"candidate {k['candidate'][d]}; mean paired log10 difference {a.mean():+.3f} over "
          f"{a.size} runs; candidate vs default: {_protocol.paired(a, np.zeros_like(a))}")
  complete = all(len(diffs.get(d, [])) == N_FUNCTIONS for d in need)
  use = [d for d in dims if d in need]
  kd = sum(k["default"].get(d, 0) for d in use)
  kc = sum(k["candidate"].get(d, 0) for d in use)
  mean = float(np.mean(np.concatenate([np.concatenate(diffs[d]) for d in use]))) if use else 0.0
  met = (complete and kc > kd and all(k["candidate"][d] >= k["default"][d] for d in use)
         and mean <= 0)
  print(f"over d in {need}: default {kd}, candidate {kc} cells at or below; mean paired log10 "
        f"difference {mean:+.3f}")
  print(f"rule met: {met}" + ("" if complete else " (required d incomplete)"))


if __name__ == "__main__":
  main()
