"""benchmarks/learned_opt.py runs its full mode in parts (``--parts_dir``/``--part``): a stored
part is read back only under the same settings, a part that is needed but not stored is an
error, and a bad ``--part`` fails before anything compiles. (The benchmark itself is far too
long for tests.)"""

import argparse
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "learned_opt.py")


@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location("learned_opt_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(os.path.join(ROOT, "benchmarks"))
  return module


def _args(parts_dir, part=None, **kw):
  a = dict(quick=False, meta_steps=600, steps=200, unroll=20, num_tasks=4, sigma=0.01,
           tasks_per_family=2, seeds=10, dev_seeds=3, select=True, tune_train_lrs=True, seed=0,
           batch=40, parts_dir=str(parts_dir), part=part, loaded_secs={})
  a.update(kw)
  return argparse.Namespace(**a)


def test_a_stored_part_is_read_back_only_under_the_same_settings(bench, tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"digits_mlp": np.float64(0.03)}, 12.5

  args = _args(tmp_path, part=["lrs"])
  assert bench._stored(args, "lrs", compute)[0] == {"digits_mlp": 0.03}
  assert os.path.exists(tmp_path / "lrs.pkl") and len(calls) == 1
  again = _args(tmp_path)  # a combining run: reads the part, does not recompute it
  value, secs = bench._stored(again, "lrs", compute)
  assert value == {"digits_mlp": 0.03} and secs == 12.5 and len(calls) == 1
  assert again.loaded_secs == {"lrs": 12.5}
  with pytest.raises(ValueError, match="--parts_dir"):
    bench._stored(_args(tmp_path, meta_steps=100), "lrs", compute)
  with pytest.raises(ValueError, match="cand0"):  # needed, not stored, not asked for
    bench._stored(_args(tmp_path, part=["report1"]), "cand0", compute)
  assert len(calls) == 1


def test_a_bad_part_is_refused_before_anything_runs(tmp_path):
  parts = tmp_path / "parts"
  r = subprocess.run([sys.executable, SCRIPT, "--part", "lrs,cand9", "--parts_dir", str(parts)],
                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                     timeout=300)
  assert r.returncode != 0
  assert "ValueError: --part: ['cand9']" in r.stderr and "'cand3', 'report1'" in r.stderr
  assert not parts.exists()  # refused before the parts directory was made
