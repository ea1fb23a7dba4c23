"""Offline TFDS datasets over data bundled with pip packages, with fixed splits.

Each built-in dataset is a real ``tfds.core.GeneratorBasedBuilder``, prepared once with
``file_format="array_record"`` and read with ``builder.as_data_source()``, which needs no
TensorFlow and no network. Splits are fixed: a ``default_rng(0)`` permutation, then 60% train,
20% valid, 20% test. Every :class:`Dataset` carries a data version (name, TFDS version and a
sha256 checksum of its arrays) that the trial store records.

Built in: ``digits`` (1797 8x8 images: 1078 / 359 / 360), ``breast_cancer`` (569 x 30:
341 / 113 / 115), ``wine`` (178 x 13: 106 / 35 / 37) and ``synthetic_regression`` (2000 x 8:
1200 / 400 / 400). Any other TFDS dataset loads as ``"tfds:<name>"`` on a machine that is
online (it is downloaded by TFDS the usual way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "wine", "synthetic_regression")
_FRACTIONS = (0.6, 0.2)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: inputs ``x`` (float32) and labels or targets ``y``."""

  x: np.ndarray
  y: np.ndarray

  def __len__(self) -> int:
    return len(self.x)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train / valid / test splits and the version that identifies them."""

  name: str
  tfds_name: str
  version: str
  checksum: str
  num_classes: int | None
  train: Split
  valid: Split
  test: Split

  @property
  def data_version(self) -> dict[str, Any]:
    return {"name": self.name, "tfds_name": self.tfds_name, "version": self.version,
            "checksum": self.checksum}

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train.x.shape[1:])


def _split_indices(n: int) -> dict[str, np.ndarray]:
  perm = np.random.default_rng(0).permutation(n)
  a = int(n * _FRACTIONS[0])
  b = a + int(n * _FRACTIONS[1])
  return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def _standardize(x: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
  mu = x[train_idx].mean(0)
  sd = x[train_idx].std(0)
  return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def _digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  return (d.images[..., None] / 16.0).astype(np.float32), d.target.astype(np.int64)


def _tabular(loader):
  def load():
    d = loader()
    x = d.data.astype(np.float64)
    return _standardize(x, _split_indices(len(x))["train"]), d.target.astype(np.int64)
  return load


def _synthetic_regression():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2000, 8)).astype(np.float32)
  y = (np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3] + 0.3 * x[:, 4]
       + 0.1 * rng.standard_normal(2000)).astype(np.float32)
  return x, y


def _sklearn(name):
  import sklearn.datasets as skd
  return getattr(skd, f"load_{name}")


# name -> (source arrays, x feature key, y feature key, num_classes)
_SOURCES = {
    "digits": (_digits, "image", "label", 10),
    "breast_cancer": (_tabular(_sklearn("breast_cancer")), "features", "label", 2),
    "wine": (_tabular(_sklearn("wine")), "features", "label", 3),
    "synthetic_regression": (_synthetic_regression, "features", "target", None),
}


def _make_builder(ds: str) -> type[tfds.core.GeneratorBasedBuilder]:
  source, xkey, ykey, classes = _SOURCES[ds]
  builder_name = f"metaopt_{ds}"

  class Builder(tfds.core.GeneratorBasedBuilder):
    name = builder_name
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: fixed 60/20/20 splits from default_rng(0)."}

    def _info(self) -> tfds.core.DatasetInfo:
      x, _ = source()
      y_feat = (tfds.features.ClassLabel(num_classes=classes) if classes else
                tfds.features.Scalar(dtype=np.float32))
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"{ds}, bundled with a pip package or generated; offline.",
          features=tfds.features.FeaturesDict({
              xkey: tfds.features.Tensor(shape=x.shape[1:], dtype=np.float32),
              ykey: y_feat,
              "index": np.int64,
          }),
          supervised_keys=(xkey, ykey),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      x, y = source()
      return {s: self._generate_examples(x, y, idx)
              for s, idx in _split_indices(len(x)).items()}

    def _generate_examples(self, x, y, idx):
      for i in idx:
        yield int(i), {xkey: x[i], ykey: y[i], "index": int(i)}

  Builder.__name__ = "Metaopt" + "".join(p.title() for p in ds.split("_"))
  return Builder


_BUILDERS = {name: _make_builder(name) for name in DATASETS}


def default_data_dir() -> str:
  """``$METAOPT_DATA_DIR``, else ``~/.cache/metaopt/tensorflow_datasets``."""
  return os.environ.get("METAOPT_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "metaopt", "tensorflow_datasets")


@contextlib.contextmanager
def _lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _read(source, xkey: str, ykey: str, sort: bool) -> Split:
  n = len(source)
  recs = source.__getitems__(list(range(n))) if n else []
  if sort:
    recs = sorted(recs, key=lambda r: int(r["index"]))
  x = np.stack([np.asarray(r[xkey], np.float32) for r in recs])
  y = np.asarray([r[ykey] for r in recs])
  return Split(x, y.astype(np.int32) if y.dtype.kind in "iu" else y.astype(np.float32))


def _checksum(splits: list[Split]) -> str:
  h = hashlib.sha256()
  for s in splits:
    for a in (s.x, s.y):
      h.update(str(a.dtype).encode() + str(a.shape).encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _quiet_tfds() -> None:
  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.WARNING)
  with contextlib.suppress(Exception):
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)


@functools.lru_cache(maxsize=16)
def _load(name: str, data_dir: str) -> Dataset:
  _quiet_tfds()
  if name.startswith("tfds:"):
    return _load_online(name[len("tfds:"):], data_dir)
  cls = _BUILDERS[name]
  _, xkey, ykey, classes = _SOURCES[name]
  builder = cls(data_dir=data_dir, file_format="array_record")
  with _lock(os.path.join(data_dir, f".{cls.name}.lock")):
    builder.download_and_prepare()
  src = builder.as_data_source()
  splits = [_read(src[s], xkey, ykey, sort=True) for s in ("train", "valid", "test")]
  return Dataset(name, cls.name, str(builder.version), _checksum(splits), classes, *splits)


def _load_online(name: str, data_dir: str) -> Dataset:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    with _lock(os.path.join(data_dir, f".{name.replace('/', '_')}.lock")):
      builder.download_and_prepare(file_format="array_record")
    src = builder.as_data_source()
  except Exception as e:  # noqa: BLE001 - any failure here means "cannot fetch"
    raise ValueError(
        f"dataset 'tfds:{name}' could not be prepared ({type(e).__name__}: {e}); this machine "
        f"may be offline. Built-in offline datasets: {', '.join(DATASETS)}") from None
  xkey, ykey = builder.info.supervised_keys
  splits = list(src)
  valid = "validation" if "validation" in splits else None
  train = _read(src["train"], xkey, ykey, sort=False)
  if valid is None:  # carve a fixed validation set off the end of train
    cut = int(len(train) * 0.9)
    train, val = Split(train.x[:cut], train.y[:cut]), Split(train.x[cut:], train.y[cut:])
  else:
    val = _read(src[valid], xkey, ykey, sort=False)
  test = _read(src["test"], xkey, ykey, sort=False)
  lab = builder.info.features[ykey]
  classes = getattr(lab, "num_classes", None)
  train, val, test = (Split(s.x / (255.0 if s.x.max() > 1 else 1.0), s.y)
                      for s in (train, val, test))
  return Dataset(name, name, str(builder.version), _checksum([train, val, test]), classes,
                 train, val, test)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """Prepares (once, offline) and loads a dataset's fixed train / valid / test splits.

  Args:
    name: one of ``DATASETS``, or ``"tfds:<name>"`` for any TFDS dataset (needs internet).
    data_dir: TFDS data directory; default :func:`default_data_dir`.
  """
  if not isinstance(name, str) or (name not in DATASETS and not name.startswith("tfds:")):
    raise ValueError(f"dataset {name!r} is unknown; allowed: {', '.join(DATASETS)}, or "
                     "'tfds:<name>' for any TFDS dataset (needs internet)")
  return _load(name, os.path.abspath(data_dir or default_data_dir()))
