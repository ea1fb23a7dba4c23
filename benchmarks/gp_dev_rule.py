"""The gp2 lane's decision rule (BENCHMARKS.md, "GP-BO robustness") on two suite runs.

Reads the ``--raw`` JSON of two ``blackbox_suite.py --quick --dev --ours gp --peers gp`` runs
(the current default and a candidate, same seeds and cells) and prints, per d, the cells at
or below GPSampler's median for each, the mean over paired runs of log10 regret(candidate)
- log10 regret(default), and whether the rule is met: (a) more cells over all, (b) no d
with fewer, (c) mean paired difference <= 0, on all 24 quick cells.

    python benchmarks/gp_dev_rule.py /tmp/default.json /tmp/candidate.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

SOLVED = 1e-8


def finals(path: str) -> dict[tuple[str, str, str, int], np.ndarray]:
  with open(path) as f:
    raw = json.load(f)
  out = {}
  for key, recs in raw.items():
    lib, name, pname, dim = key.split("|")
    out[(lib, name, pname, int(dim))] = np.asarray([r["traj"][-1] for r in recs])
  return out


def main() -> None:
  base, cand = finals(sys.argv[1]), finals(sys.argv[2])
  cells = sorted({(p, d) for (lib, n, p, d) in base if lib == "metaopt" and n == "gp"}
                 & {(p, d) for (lib, n, p, d) in cand if lib == "metaopt" and n == "gp"},
                 key=lambda c: (c[1], c[0]))
  k = {"default": {}, "candidate": {}}
  diffs = []
  for p, d in cells:
    peer = base[("optuna", "gp", p, d)]
    for side, res in (("default", base), ("candidate", cand)):
      ours = res[("metaopt", "gp", p, d)]
      k[side][d] = k[side].get(d, 0) + int(np.median(ours) <= np.median(peer) * (1 + 1e-9))
    a = np.log10(np.maximum(cand[("metaopt", "gp", p, d)], SOLVED))
    b = np.log10(np.maximum(base[("metaopt", "gp", p, d)], SOLVED))
    diffs.append(a - b)
    print(f"{p} d={d}: GPSampler {np.median(peer):.3g}, default "
          f"{np.median(base[('metaopt', 'gp', p, d)]):.3g}, candidate "
          f"{np.median(cand[('metaopt', 'gp', p, d)]):.3g}")
  dims = sorted({d for _, d in cells})
  kd, kc = sum(k["default"].values()), sum(k["candidate"].values())
  mean = float(np.mean(np.concatenate(diffs))) if diffs else float("nan")
  for d in dims:
    print(f"d={d}: default {k['default'][d]}, candidate {k['candidate'][d]} cells at or below")
  print(f"all: default {kd}/{len(cells)}, candidate {kc}/{len(cells)}; mean paired log10 "
        f"difference {mean:+.3f} over {sum(len(x) for x in diffs)} runs")
  met = (len(cells) == 24 and kc > kd and all(k["candidate"][d] >= k["default"][d] for d in dims)
         and mean <= 0)
  print(f"rule met: {met}" + ("" if len(cells) == 24 else f" (only {len(cells)} of 24 cells)"))


if __name__ == "__main__":
  main()
