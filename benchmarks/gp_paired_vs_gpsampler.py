"""Paired log10 final regret of ``blackbox_suite.py --raw`` files against Optuna's cached
GPSampler runs, per cell and per d, with the count of cells at or below GPSampler's median.

    python benchmarks/gp_paired_vs_gpsampler.py CACHE SEEDS RAW[,RAW2] [RAW[,RAW2] ...]

SEEDS: comma-separated (e.g. 0,1,2,3,4); cells without all SEEDS cached (or with a cache file
being written) are skipped; budget max(40, 10 d), batch 10 (the ``--quick`` protocol).
"""
import json
import os
import sys

import numpy as np
from scipy.stats import wilcoxon

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blackbox_suite as bs  # noqa: E402
from paired_raw_compare import merged_raw  # noqa: E402

SOLVED = 1e-8


def load(paths: str) -> dict:
  return {(k.split("|")[2], int(k.split("|")[3])): np.maximum([r["traj"][-1] for r in v], SOLVED)
          for k, v in merged_raw(paths).items()}


def gpsampler(cache: str, f: str, d: int, seeds: list[int]) -> np.ndarray | None:
  out = []
  for s in seeds:
    key = bs._cache_key("optuna", "gp", f, d, s, max(40, 10 * d), 10)
    try:
      with open(os.path.join(cache, key + ".json")) as fh:
        out.append(max(json.load(fh)["traj"][-1], SOLVED))
    except (OSError, ValueError):
      return None
  return np.asarray(out)


def main(cache: str, seeds: str, *raws: str) -> None:
  seed_list = [int(s) for s in seeds.split(",")]
  runs = [load(p) for p in raws]
  diffs = [[] for _ in runs]
  counts = [0] * len(runs)
  for f, d in sorted(runs[0], key=lambda c: (c[1], int(c[0][1:]))):
    o = gpsampler(cache, f, d, seed_list)
    if o is None:
      continue
    line = f"{f:4s} d={d:2d} GPSampler {np.median(o):9.3g} |"
    for i, r in enumerate(runs):
      if (f, d) not in r:
        continue
      dl = np.log10(r[(f, d)]) - np.log10(o)
      diffs[i].append((d, dl))
      le = np.median(r[(f, d)]) <= np.median(o)
      counts[i] += le
      line += f" {np.median(r[(f, d)]):9.3g}{'*' if le else ' '} {dl.mean():+.2f} |"
    print(line)
  for i in range(len(runs)):
    for dd in sorted({d for d, _ in diffs[i]}) + [None]:
      x = np.concatenate([dl for d, dl in diffs[i] if dd is None or d == dd])
      print(f"run {i} d={dd}: {x.size} runs, mean log10 (ours - GPSampler) {x.mean():+.3f}, "
            f"better/worse {(x < 0).sum()}/{(x > 0).sum()}, Wilcoxon p {wilcoxon(x).pvalue:.3g}")
    print(f"run {i}: {counts[i]} cells at or below GPSampler's median")


if __name__ == "__main__":
  main(*sys.argv[1:])
