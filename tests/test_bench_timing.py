"""The timing rule of benchmarks/population_vs_sequential.py (issue 24): every side timed
in the same interleaved rounds over windows of at least the same length, after one untimed
warm-up round, and ratios taken per round. (The benchmark itself is too long for tests.)"""

import importlib.util
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  path = os.path.join(ROOT, "benchmarks", "population_vs_sequential.py")
  spec = importlib.util.spec_from_file_location("population_vs_sequential", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_rounds_rotate_the_sides_and_drop_the_warm_up_round():
  b = _bench()
  calls = []
  fs = {c: (lambda c=c: calls.append(c)) for c in "abc"}
  t = b.interleaved(fs, rounds=3, window=0.0)  # a zero window: one call per side and round
  assert "".join(calls) == "abc" + "abc" + "bca" + "cab"  # warm-up, then rotated rounds
  assert sorted(t) == ["a", "b", "c"] and all(v.shape == (3,) for v in t.values())


def test_a_window_lasts_at_least_its_length_and_gives_the_time_per_call():
  b = _bench()
  n = [0]

  def side():
    n[0] += 1
    time.sleep(0.01)

  per_call = b._window(side, 0.05)
  assert per_call >= 0.01 and per_call * n[0] >= 0.05  # (n[0] >= 2 unless a sleep overran)


def test_ratios_are_taken_per_round():
  b = _bench()
  t = {"slow": np.array([10.0, 30.0, 20.0]), "fast": np.array([1.0, 3.0, 4.0])}
  r = b.ratio(t, "slow", "fast")
  assert (r.median, r.n) == (10.0, 3)  # per round 10, 10, 5; the ratio of medians is 6.67
  assert r.q25 == 7.5 and r.q75 == 10.0
