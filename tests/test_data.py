"""Offline TFDS datasets: fixed splits, determinism, the TFDS round trip and concurrency."""

import glob
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as skd

from metaopt.tasks._src.data import DATASETS, Dataset, default_data_dir, load_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
# name -> (source rows, x shape of one example, num_classes)
SPEC = {
    "digits": (1797, (8, 8, 1), 10),
    "breast_cancer": (569, (30,), 2),
    "wine": (178, (13,), 3),
    "synthetic_regression": (2000, (8,), None),
}
SIZES = {"digits": (1078, 359, 360), "breast_cancer": (341, 113, 115),
         "wine": (106, 35, 37), "synthetic_regression": (1200, 400, 400)}


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory) -> str:
  """A data_dir into which this module prepares every dataset itself."""
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="module")
def loaded(fresh_dir) -> dict[str, Dataset]:
  return {name: load_dataset(name, fresh_dir) for name in DATASETS}


def _tfds_indices(tfds_name: str, data_dir: str) -> dict[str, np.ndarray]:
  sources = tfds.data_source(tfds_name, data_dir=data_dir, download=False)
  return {s: np.array([int(r["index"]) for r in src.__getitems__(list(range(len(src))))])
          for s, src in sources.items()}


def test_builtin_names():
  assert DATASETS == ("digits", "breast_cancer", "wine", "synthetic_regression")


@pytest.mark.parametrize("name", DATASETS)
def test_loads_fixed_splits_with_dtypes_and_shapes(loaded, name):
  ds = loaded[name]
  n, shape, classes = SPEC[name]
  assert (ds.name, ds.tfds_name, ds.version) == (name, f"metaopt_{name}", "1.0.0")
  assert ds.num_classes == classes and ds.input_shape == shape
  sizes = (len(ds.train), len(ds.valid), len(ds.test))
  assert sizes == SIZES[name] == (n * 3 // 5, n // 5, n - n * 3 // 5 - n // 5)
  assert sum(sizes) == n
  for split in (ds.train, ds.valid, ds.test):
    assert split.x.dtype == np.float32 and split.x.shape == (len(split), *shape)
    assert split.y.shape == (len(split),)
    assert np.isfinite(split.x).all()
    assert not split.x.flags.writeable and not split.y.flags.writeable
    if classes is None:
      assert split.y.dtype == np.float32 and np.isfinite(split.y).all()
    else:
      assert split.y.dtype == np.int32
      assert split.y.min() >= 0 and split.y.max() < classes
  if classes is not None:  # every class appears in training
    assert set(np.unique(ds.train.y)) == set(range(classes))
  assert ds.data_version == {"name": name, "tfds_name": f"metaopt_{name}",
                             "version": "1.0.0", "checksum": ds.checksum}


@pytest.mark.parametrize("name", DATASETS)
def test_splits_are_disjoint_and_cover_the_source(loaded, fresh_dir, name):
  del loaded  # prepared
  idx = _tfds_indices(f"metaopt_{name}", fresh_dir)
  assert set(idx) == {"train", "valid", "test"}
  train, valid, test = (set(idx[s].tolist()) for s in ("train", "valid", "test"))
  assert not (train & valid) and not (train & test) and not (valid & test)
  assert train | valid | test == set(range(SPEC[name][0]))
  perm = np.random.default_rng(0).permutation(SPEC[name][0])
  assert train == set(perm[:SIZES[name][0]].tolist())


def test_digits_pixels_scaled_and_ordered_by_source_row(loaded, fresh_dir):
  ds = loaded["digits"]
  for split in (ds.train, ds.valid, ds.test):
    assert split.x.min() >= 0.0 and split.x.max() <= 1.0
  assert ds.train.x.max() == 1.0
  # Records come back sorted by source row, whatever order the array_record files hold.
  rows = np.sort(_tfds_indices("metaopt_digits", fresh_dir)["valid"])
  src = skd.load_digits()
  np.testing.assert_allclose(ds.valid.x[..., 0], src.images[rows] / 16.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.valid.y, src.target[rows])


def test_tabular_standardized_with_train_statistics(loaded):
  for name in ("breast_cancer", "wine"):
    x = loaded[name].train.x.astype(np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-5)
  # Valid and test use the train statistics, so they are only roughly standardized.
  v = loaded["breast_cancer"].valid.x
  assert np.abs(v.mean(0)).max() < 1.0 and not np.allclose(v.std(0), 1.0, atol=1e-5)


def test_synthetic_regression_matches_its_formula(loaded):
  ds = loaded["synthetic_regression"]
  x, y = ds.train.x, ds.train.y
  f = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3] + 0.3 * x[:, 4]
  resid = y - f
  assert 0.07 < resid.std() < 0.13 and abs(resid.mean()) < 0.02


def test_deterministic_across_data_dirs(loaded, tmp_path):
  for name in DATASETS:
    a, b = loaded[name], load_dataset(name, str(tmp_path))
    assert a is not b and a.checksum == b.checksum
    for s in ("train", "valid", "test"):
      np.testing.assert_array_equal(getattr(a, s).x, getattr(b, s).x)
      np.testing.assert_array_equal(getattr(a, s).y, getattr(b, s).y)


def test_checksum_covers_the_arrays(loaded):
  sums = {ds.checksum for ds in loaded.values()}
  assert len(sums) == len(DATASETS)
  for ds in loaded.values():
    h = hashlib.sha256()
    for split in (ds.train, ds.valid, ds.test):
      for a in (split.x, split.y):
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    assert ds.checksum == h.hexdigest()


def test_cached_in_process(loaded, fresh_dir):
  assert load_dataset("wine", fresh_dir) is loaded["wine"]


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("METAOPT_DATA_DIR", str(tmp_path))
  assert default_data_dir() == str(tmp_path)
  monkeypatch.delenv("METAOPT_DATA_DIR")
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  assert default_data_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "metaopt", "tensorflow_datasets")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # the TFDS convention
  assert default_data_dir() == str(tmp_path / "tfds")


@pytest.mark.parametrize("bad", ["mnits", "", "tfds:", "DIGITS"])
def test_unknown_name_lists_allowed(bad, tmp_path):
  with pytest.raises(ValueError, match="is unknown; allowed: digits, breast_cancer, wine, "
                                       "synthetic_regression, shapes, mnist1d, "
                                       "or 'tfds:<name>'") as e:
    load_dataset(bad, str(tmp_path))
  assert repr(bad) in str(e.value)


@pytest.mark.parametrize("name", DATASETS)
def test_prepared_through_tfds_as_array_record(loaded, fresh_dir, name):
  ds, tfds_name = loaded[name], f"metaopt_{name}"
  prepared = os.path.join(fresh_dir, tfds_name, "1.0.0")
  assert os.path.isfile(os.path.join(prepared, "dataset_info.json"))
  for s in ("train", "valid", "test"):
    assert glob.glob(os.path.join(prepared, f"{tfds_name}-{s}.array_record-*"))
  builder = tfds.builder(tfds_name, data_dir=fresh_dir)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert str(builder.version) == ds.version
  sources = tfds.data_source(tfds_name, data_dir=fresh_dir, download=False)
  for s in ("train", "valid", "test"):
    assert builder.info.splits[s].num_examples == len(sources[s]) == len(getattr(ds, s))


_RACED = ("digits", "breast_cancer")
_CHILD = textwrap.dedent(f"""
    import json, sys
    from metaopt.tasks._src.data import load_dataset
    print(json.dumps({{n: load_dataset(n, sys.argv[1]).checksum for n in {_RACED!r}}}))
""")


def test_concurrent_preparation_in_two_processes(loaded, tmp_path):
  data_dir = str(tmp_path / "shared")
  procs = [subprocess.Popen([sys.executable, "-c", _CHILD, data_dir], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert results[0] == results[1] == {n: loaded[n].checksum for n in _RACED}
  # TFDS banners stay off stdout: the only line is the child's own.
  assert all(len(out.strip().splitlines()) == 1 for out, _ in outs)
