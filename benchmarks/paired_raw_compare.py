"""Paired comparison of two gp_bo settings from blackbox_suite --raw files (comma-separated
files are merged): per-cell medians, at-or-below count, paired mean log10 ratio with bootstrap
and Wilcoxon spread.

    python benchmarks/paired_raw_compare.py A.json[,A2.json] B.json[,B2.json] [labelA labelB]
"""
import json
import sys

import numpy as np
from scipy.stats import wilcoxon

SOLVED = 1e-8


def merged_raw(paths: str) -> dict:
  """The runs of comma-separated ``blackbox_suite.py --raw`` files, merged by key."""
  raw = {}
  for p in paths.split(","):
    with open(p) as f:
      raw.update(json.load(f))
  return raw


def load(paths: str) -> dict:
  out = {}
  for k, recs in merged_raw(paths).items():
    lib, name, prob, d = k.split("|")
    out[(prob, int(d))] = {i: r["traj"][-1] for i, r in enumerate(recs)}
  return out


def main(a_path: str, b_path: str, label_a: str = "True", label_b: str = "gp") -> None:
  A, B = load(a_path), load(b_path)
  cells = sorted(set(A) & set(B), key=lambda c: (c[1], len(c[0]) if c[0][0] == "f" else 99,
                                                  c[0]))
  rows, diffs, wins, worse, cell_meds = [], [], 0, [], []
  for c in cells:
    seeds = sorted(set(A[c]) & set(B[c]))
    a = np.maximum([A[c][s] for s in seeds], SOLVED)
    b = np.maximum([B[c][s] for s in seeds], SOLVED)
    ma, mb = np.median(a), np.median(b)
    ok = mb <= ma
    wins += ok
    dl = np.log10(b) - np.log10(a)
    diffs.extend(dl)
    dmed = np.log10(mb) - np.log10(ma)
    cell_meds.append(np.mean(dl))
    if dmed > 0.5:
      worse.append((c[0], round(float(dmed), 2)))
    try:
      p = wilcoxon(np.log10(a), np.log10(b)).pvalue if not np.allclose(a, b) else 1.0
    except ValueError:
      p = float("nan")
    rows.append(f"| {c[0]} | {c[1]} | {len(seeds)} | {ma:.3g} | {mb:.3g} | {dmed:+.2f} | "
                f"{np.mean(dl):+.2f} | {p:.2f} | {'yes' if ok else 'no'} |")
  diffs = np.asarray(diffs)
  rng = np.random.default_rng(0)
  boot = [rng.choice(diffs, diffs.size).mean() for _ in range(10000)]
  # cell-level bootstrap (resample functions), more honest given within-cell correlation
  cm = np.asarray(cell_meds)
  bootc = [rng.choice(cm, cm.size).mean() for _ in range(10000)]
  nz = diffs[np.abs(diffs) > 1e-12]
  pw = wilcoxon(nz).pvalue if nz.size else float("nan")
  print(f"| function | d | seeds | median regret {label_a} | median regret {label_b} | "
        f"d log10 median | mean paired d log10 | Wilcoxon p | {label_b} at or below |")
  print("|---|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  print()
  print(f"cells: {len(cells)}; {label_b} at or below {label_a}: {wins}/{len(cells)}")
  print(f"paired pairs: {diffs.size}; mean log10({label_b}/{label_a}) = {diffs.mean():+.3f} "
        f"(pair bootstrap 95% [{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}];"
        f" function bootstrap 95% [{np.percentile(bootc, 2.5):+.3f}, "
        f"{np.percentile(bootc, 97.5):+.3f}]); median {np.median(diffs):+.3f}; "
        f"Wilcoxon over pairs p = {pw:.3g}; {label_b} better in {(diffs < -1e-12).sum()}, "
        f"worse in {(diffs > 1e-12).sum()}, tied {(np.abs(diffs) <= 1e-12).sum()}")
  print(f"{label_b} much worse (> 0.5 log10 median): {worse}")


if __name__ == "__main__":
  main(*sys.argv[1:])
