"""Offline TFDS datasets over data bundled with pip packages, with fixed splits.

Each built-in dataset is a real ``tfds.core.GeneratorBasedBuilder`` (registered with TFDS as
``metaopt_<name>``), prepared once with ``file_format="array_record"`` and read with
``builder.as_data_source()``, which needs neither TensorFlow nor the network. Splits are
fixed: a ``np.random.default_rng(0).permutation(n)``, then the first ``3n // 5`` rows are
train, the next ``n // 5`` valid and the rest test. Every :class:`Dataset` carries a data
version (name, TFDS name, TFDS version and a sha256 checksum of its arrays) that the trial
store records.

Built in (train / valid / test sizes):

* ``digits``: scikit-learn's 1797 8x8 digit images, pixels scaled to [0, 1], 10 classes
  (1078 / 359 / 360).
* ``breast_cancer``: scikit-learn's 569 x 30 table, standardized with the train split's
  mean and std, 2 classes (341 / 113 / 115).
* ``wine``: scikit-learn's 178 x 13 table, standardized the same way, 3 classes
  (106 / 35 / 37).
* ``synthetic_regression``: 2000 x 8 Gaussian inputs and the scalar target
  ``sin(2 x0) + 0.5 x1^2 - x2 x3 + 0.3 x4 + 0.1 noise``, generated from ``default_rng(0)``
  (1200 / 400 / 400).

Procedural (``PROCEDURAL``): ``shapes`` (16x16x1 shapes and textures, 1800 / 600 / 600) and
``mnist1d`` (MNIST-1D, the published split: 3600 / 400 / 1000, see ``metaopt.tasks._src.mnist1d``).

Any other TFDS dataset loads as ``"tfds:<name>"`` on a machine that is online (TFDS downloads
and prepares it the usual way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

import numpy as np
import tensorflow_datasets as tfds

from metaopt.tasks._src import images32 as _images32
from metaopt.tasks._src import mnist1d as _mnist1d
from metaopt.tasks._src import shapes as _shapes

DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "wine", "synthetic_regression")
_SPLITS = ("train", "valid", "test")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: inputs ``x`` and labels or targets ``y``, both read-only.

  Attributes:
    x: float32 inputs; images keep their ``(n, H, W, C)`` shape, tables are ``(n, d)``.
    y: int32 class labels for classification, float32 targets for regression.
  """

  x: np.ndarray
  y: np.ndarray

  def __len__(self) -> int:
    return len(self.x)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Fixed train / valid / test splits and the version that identifies them.

  Attributes:
    name: the name it was loaded by, e.g. ``"digits"``.
    tfds_name: the TFDS builder name, e.g. ``"metaopt_digits"``.
    version: the TFDS builder version, e.g. ``"1.0.0"``.
    checksum: sha256 hex digest of the train, valid and test ``x`` and ``y`` arrays (their
      dtype, shape and bytes, in that order).
    num_classes: number of classes, or None for regression.
    train: the training split.
    valid: the validation split.
    test: the test split.
  """

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
    """What identifies the data: ``name``, ``tfds_name``, ``version`` and ``checksum``."""
    return {"name": self.name, "tfds_name": self.tfds_name, "version": self.version,
            "checksum": self.checksum}

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example's ``x``."""
    return tuple(self.train.x.shape[1:])


# ------------------------------------------------------------------------- sources

def _split_indices(n: int) -> dict[str, np.ndarray]:
  """Row indices of each fixed split of ``n`` rows."""
  perm = np.random.default_rng(0).permutation(n)
  a = n * 3 // 5
  b = a + n // 5
  return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def _standardize(x: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
  mu = x[train_idx].mean(0)
  sd = x[train_idx].std(0)
  return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits
  d = load_digits()
  return (d.images[..., None] / 16.0).astype(np.float32), d.target.astype(np.int64)


def _tabular(loader_name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
  def load() -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets as skd
    d = getattr(skd, loader_name)()
    x = d.data.astype(np.float64)
    return _standardize(x, _split_indices(len(x))["train"]), d.target.astype(np.int64)
  return load


def _synthetic_regression() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2000, 8)).astype(np.float32)
  y = (np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3] + 0.3 * x[:, 4]
       + 0.1 * rng.standard_normal(2000)).astype(np.float32)
  return x, y


@dataclasses.dataclass(frozen=True)
class _Source:
  load: Callable[[], tuple[np.ndarray, np.ndarray]]
  x_shape: tuple[int, ...]
  x_key: str
  y_key: str
  num_classes: int | None
  description: str
  splits: Callable[[int], dict[str, np.ndarray]] = _split_indices
  split_note: str = "fixed 60/20/20 splits"


_SOURCES: dict[str, _Source] = {
    "digits": _Source(_digits, (8, 8, 1), "image", "label", 10,
                      "scikit-learn's 8x8 handwritten digits, pixels scaled to [0, 1]."),
    "breast_cancer": _Source(_tabular("load_breast_cancer"), (30,), "features", "label", 2,
                             "scikit-learn's Wisconsin breast cancer table, standardized "
                             "with the train split's mean and std."),
    "wine": _Source(_tabular("load_wine"), (13,), "features", "label", 3,
                    "scikit-learn's wine table, standardized with the train split's mean "
                    "and std."),
    "synthetic_regression": _Source(
        _synthetic_regression, (8,), "features", "target", None,
        "2000 procedural rows: y = sin(2 x0) + 0.5 x1^2 - x2 x3 + 0.3 x4 + 0.1 noise."),
}


def _make_builder(ds: str) -> type[tfds.core.GeneratorBasedBuilder]:
  src = _SOURCES[ds]
  builder_name = f"metaopt_{ds}"

  class Builder(tfds.core.GeneratorBasedBuilder):
    name = builder_name
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"Initial release: {src.split_note}."}

    def _info(self) -> tfds.core.DatasetInfo:
      y_feat = (tfds.features.ClassLabel(num_classes=src.num_classes) if src.num_classes
                else tfds.features.Scalar(dtype=np.float32))
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"{src.description} Offline; {src.split_note}.",
          features=tfds.features.FeaturesDict({
              src.x_key: tfds.features.Tensor(shape=src.x_shape, dtype=np.float32),
              src.y_key: y_feat,
              "index": np.int64,
          }),
          supervised_keys=(src.x_key, src.y_key),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      x, y = src.load()
      return {s: self._generate_examples(x, y, idx)
              for s, idx in src.splits(len(x)).items()}

    def _generate_examples(self, x, y, idx):
      for i in idx:
        yield int(i), {src.x_key: x[i], src.y_key: y[i], "index": int(i)}

  Builder.__name__ = Builder.__qualname__ = "Metaopt" + "".join(
      p.title() for p in ds.split("_"))
  return Builder


# Procedural datasets (not in DATASETS, whose four tabular/digit sets tests pin):
# ``shapes`` is tasks._src.shapes, 16x16x1 shapes and textures for NAS; ``mnist1d`` is
# tasks._src.mnist1d, the published MNIST-1D benchmark generated by the mnist1d package.
PROCEDURAL: tuple[str, ...] = ("shapes", "mnist1d")
_SOURCES["shapes"] = _Source(_shapes.generate, (16, 16, 1), "image", "label", 10,
                             _shapes.DESCRIPTION)
_SOURCES["mnist1d"] = _Source(
    _mnist1d.generate, (_mnist1d.LENGTH,), "signal", "label", _mnist1d.NUM_CLASSES,
    _mnist1d.DESCRIPTION, _mnist1d.split_indices,
    "published 4000 / 1000 train / test, 400 valid rows carved from train by default_rng(0)")

_BUILDERS = {name: _make_builder(name) for name in DATASETS + PROCEDURAL}


# Large procedural images (tasks._src.images32), read lazily: not in DATASETS / PROCEDURAL,
# whose splits load into memory.
LARGE: tuple[str, ...] = tuple(_images32.SIZES)


def _make_image_builder(ds: str) -> type[tfds.core.GeneratorBasedBuilder]:
  parts = _images32.split_blocks(ds)

  class Builder(tfds.core.GeneratorBasedBuilder):
    name = f"metaopt_{ds}"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: generated from seed 0 in blocks of 1000."}

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(
          builder=self, description=_images32.DESCRIPTION,
          features=tfds.features.FeaturesDict({
              # uint8 tensors, not tfds.features.Image: no PNG encoding, no TensorFlow
              "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
              "label": tfds.features.ClassLabel(num_classes=_images32.NUM_CLASSES),
              "index": np.int64,
          }),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(first, n) for s, (first, n) in parts.items()}

    def _generate_examples(self, first, n):
      for b, (x, y) in enumerate(_images32.blocks(n, 0, first)):
        for i in range(len(y)):
          k = (first + b) * _images32.BLOCK + i
          yield k, {"image": x[i], "label": y[i], "index": k}

  Builder.__name__ = Builder.__qualname__ = "Metaopt" + ds.title().replace("_", "")
  return Builder


_IMAGE_BUILDERS = {name: _make_image_builder(name) for name in LARGE}


class SourceArray:
  """Rows of one feature of a TFDS data source, read on demand as float32 in [0, 1] (uint8
  pixels / 255): an array-like of shape ``(n, ...)`` that a streaming engine indexes by row
  without loading the split. ``np.asarray`` reads it all."""

  def __init__(self, source: Sequence[Mapping[str, Any]], key: Any, row_shape: tuple[int, ...],
               scale: float = 255.0):
    self._source, self._key, self._scale = source, key, np.float32(scale)
    self.shape = (len(source), *row_shape)
    self.dtype = np.dtype(np.float32)
    self.ndim = len(self.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, idx: Any) -> np.ndarray:
    rows = np.arange(len(self))[idx]
    if rows.ndim == 0:
      return self[rows[None]][0]
    recs = _records(self._source, rows.tolist())
    out = np.empty((len(rows), *self.shape[1:]), np.float32)
    for i, r in enumerate(recs):
      out[i] = np.asarray(r[self._key], np.float32)
    return out / self._scale if self._scale != 1 else out

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    out = np.concatenate([self[i:i + 1000] for i in range(0, len(self), 1000)] or
                         [np.zeros((0, *self.shape[1:]), np.float32)])
    return out if dtype is None else out.astype(dtype)


def _records(source: Any, rows: list[int]) -> list[Any]:
  """Records ``rows`` of a random-access source (``__getitems__`` when it has one)."""
  if not rows:
    return []
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(rows))
  return [source[i] for i in rows]


def from_sources(train: Any, valid: Any, test: Any, *, x_key: Any = "image",
                 y_key: Any = "label", name: str = "source",
                 num_classes: int | None = None) -> Dataset:
  """A :class:`Dataset` over random-access sources, read lazily: a TFDS ``data_source``
  (``builder.as_data_source()[split]``, array_record), a grain source, or anything with
  ``__len__`` and ``__getitem__`` whose records are dicts (``x_key``, ``y_key``) or
  ``(x, y)`` pairs (pass ``x_key=0, y_key=1``).

  One pass in blocks of 1000 records reads the labels, checks every split (the same rules as
  :func:`from_arrays`: shapes per example, finite inputs, label range) and computes the
  checksum; inputs stay in the source (a :class:`SourceArray`, uint8 scaled to [0, 1]), so
  the engine streams data larger than memory (``$METAOPT_DATA_MEMORY_BYTES``) from it.
  """
  h = hashlib.sha256()
  splits, shapes, ys = [], {}, {}
  for what, src in (("train", train), ("valid", valid), ("test", test)):
    if isinstance(src, (tuple, list, np.ndarray)) or not (
        hasattr(src, "__len__") and hasattr(src, "__getitem__")):
      raise ValueError(f"dataset: {what} must be a random-access source (__len__ and "
                       f"__getitem__), got {type(src).__name__}")
    n = len(src)
    if n == 0:
      raise ValueError(f"dataset: {what} source is empty")
    first = _records(src, [0])[0]
    try:
      x0, y0 = np.asarray(first[x_key]), np.asarray(first[y_key])
    except (KeyError, IndexError, TypeError):
      keys = sorted(first) if isinstance(first, Mapping) else f"a {type(first).__name__}"
      raise ValueError(f"dataset: {what} records have keys {keys}, not x_key={x_key!r} / "
                       f"y_key={y_key!r}") from None
    shapes[what], scale = x0.shape, 255.0 if x0.dtype == np.uint8 else 1.0
    labels = []
    for i in range(0, n, 1000):
      recs = _records(src, list(range(i, min(n, i + 1000))))
      xb = np.stack([np.asarray(r[x_key]) for r in recs])
      if xb.shape[1:] != x0.shape:
        raise ValueError(f"dataset: {what} x must have one shape per example; record {i} "
                         f"has {x0.shape}, a later one {xb.shape[1:]}")
      if xb.dtype.kind == "f" and not np.all(np.isfinite(xb)):
        raise ValueError(f"dataset: {what} x has non-finite values (records {i}-{i + 999})")
      h.update(np.ascontiguousarray(xb).tobytes())
      labels.append(np.asarray([r[y_key] for r in recs]))
    y = np.concatenate(labels)
    ys[what] = y
    splits.append((src, scale, y, y0))
  if len(set(shapes.values())) > 1:
    raise ValueError("dataset: x must have the same shape per example in every split; got "
                     + ", ".join(f"{s} {v}" for s, v in shapes.items()))
  classify = all(y.dtype.kind in "biu" for y in ys.values())
  if classify:
    num_classes = max(int(y.max()) for y in ys.values()) + 1 if num_classes is None \
        else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
      raise ValueError(f"num_classes={num_classes!r}: must be an integer >= 2")
    for what, y in ys.items():
      if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"dataset: {what} labels must lie in [0, {num_classes}) "
                         f"(num_classes={num_classes}); got [{int(y.min())}, {int(y.max())}]")
  out = []
  for (src, scale, y, _), what in zip(splits, ("train", "valid", "test"), strict=True):
    y = y.astype(np.int32) if classify else y.astype(np.float32)
    h.update(y.tobytes())
    y.setflags(write=False)
    out.append(Split(SourceArray(src, x_key, shapes[what], scale), y))
  return Dataset(name, name, "source", h.hexdigest(), num_classes if classify else None, *out)


def _is_source(v: Any) -> bool:
  return hasattr(v, "__len__") and hasattr(v, "__getitem__") and not isinstance(
      v, (tuple, list, np.ndarray, str, Mapping))


def _load_lazy(name: str, data_dir: str) -> Dataset:
  """A LARGE dataset: prepared once, its images left in the array_record files."""
  cls = _IMAGE_BUILDERS[name]
  with _quiet():
    with _lock(data_dir, cls.name):
      builder = cls(data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare()
    sources = builder.as_data_source()
  h = hashlib.sha256()
  splits = []
  for s in _SPLITS:
    src = sources[s]
    ys = []
    for i in range(0, len(src), 1000):  # one pass in blocks: labels and checksum
      recs = src.__getitems__(list(range(i, min(len(src), i + 1000))))
      for r in recs:
        h.update(np.ascontiguousarray(r["image"]).tobytes())
      ys.append(np.asarray([r["label"] for r in recs], np.int32))
    y = np.concatenate(ys)
    h.update(y.tobytes())
    y.setflags(write=False)
    splits.append(Split(SourceArray(src, "image", (32, 32, 3)), y))
  return Dataset(name, cls.name, str(builder.version), h.hexdigest(), _images32.NUM_CLASSES,
                 *splits)


# ------------------------------------------------------------------------- loading

def default_data_dir() -> str:
  """The TFDS data directory used when none is given.

  Returns:
    ``$METAOPT_DATA_DIR`` if set, else ``$TFDS_DATA_DIR`` (the TFDS convention) if set, else
    ``~/.cache/metaopt/tensorflow_datasets``.
  """
  return (os.environ.get("METAOPT_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")
          or os.path.join(os.path.expanduser("~"), ".cache", "metaopt", "tensorflow_datasets"))


def _tfds_dirs(data_dir: str | None) -> list[str]:
  """Where a ``tfds:`` dataset may already be prepared: ``data_dir`` alone when given, else
  the default data dir, then ``$TFDS_DATA_DIR`` and TFDS's own default ``~/tensorflow_datasets``
  (the first is where it gets prepared)."""
  if data_dir is not None:
    return [data_dir]
  out = []
  for d in (default_data_dir(), os.environ.get("TFDS_DATA_DIR"),
            os.path.join("~", "tensorflow_datasets")):
    d = d and os.path.abspath(os.path.expanduser(d))
    if d and d not in out:
      out.append(d)
  return out


# how long to wait for the download host before calling the machine offline
NETWORK_PROBE_S = 3.0


def _reachable(urls: Sequence[str]) -> tuple[bool, str]:
  """``(whether a TCP connection to the download host, or the HTTPS proxy, opens within
  NETWORK_PROBE_S, the host tried)``."""
  import socket
  import urllib.parse
  proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
  url = proxy or (urls[0] if urls else "https://storage.googleapis.com")
  parsed = urllib.parse.urlparse(url if "://" in url else f"https://{url}")
  host, port = parsed.hostname or "storage.googleapis.com", parsed.port or (
      443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((host, port), timeout=NETWORK_PROBE_S).close()
    return True, host
  except OSError:
    return False, host


@contextlib.contextmanager
def _lock(data_dir: str, name: str) -> Iterator[None]:
  """Holds an exclusive lock on ``data_dir/.<name>.lock`` across processes."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name.replace('/', '_')}.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet(stdout: TextIO | None = None) -> Iterator[None]:
  """Turns off TFDS progress bars and INFO logs; sends its stdout banners to ``stdout``.

  Args:
    stdout: where TFDS's printed banners go; None logs them at DEBUG level instead.
  """
  tfds.disable_progress_bar()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(max(level, logging.WARNING))
  out = stdout or io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      yield
  finally:
    absl_logger.setLevel(level)
    if stdout is None and out.getvalue().strip():
      _log.debug("%s", out.getvalue().strip())


def _read(source: Sequence[Mapping[str, Any]], x_key: str, y_key: str, *, sort: bool,
          scale: float = 1.0) -> Split:
  """Reads a whole TFDS data source into a read-only :class:`Split`."""
  n = len(source)
  recs = source.__getitems__(list(range(n))) if n else []
  if sort:  # array_record files do not keep generation order
    recs = sorted(recs, key=lambda r: int(r["index"]))
  x = np.stack([np.asarray(r[x_key], np.float32) for r in recs]) if recs else np.zeros(0)
  if scale != 1.0:
    x = (x / scale).astype(np.float32)
  y = np.asarray([r[y_key] for r in recs])
  y = y.astype(np.int32) if y.dtype.kind in "iub" else y.astype(np.float32)
  for a in (x, y):
    a.setflags(write=False)
  return Split(x, y)


def _checksum(splits: Sequence[Split]) -> str:
  h = hashlib.sha256()
  for s in splits:
    for a in (s.x, s.y):
      h.update(str(a.dtype).encode() + str(a.shape).encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _dataset(name: str, tfds_name: str, version: str, num_classes: int | None,
             splits: Sequence[Split]) -> Dataset:
  return Dataset(name, tfds_name, version, _checksum(splits), num_classes, *splits)


@functools.lru_cache(maxsize=16)
def _load(name: str, data_dir: str | tuple[str, ...]) -> Dataset:
  """Loads ``name`` from ``data_dir`` (for ``tfds:`` names, the tuple of directories to look
  in, see :func:`_tfds_dirs`)."""
  if name.startswith("tfds:"):
    with _quiet(sys.stderr):  # a download can take minutes: keep its banners visible
      return _load_online(name, list(data_dir))
  if name in LARGE:
    return _load_lazy(name, data_dir)
  with _quiet():
    cls, src = _BUILDERS[name], _SOURCES[name]
    with _lock(data_dir, cls.name):
      # Built under the lock so that it sees data another process may just have prepared.
      builder = cls(data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare()
    sources = builder.as_data_source()
    splits = [_read(sources[s], src.x_key, src.y_key, sort=True) for s in _SPLITS]
  return _dataset(name, cls.name, str(builder.version), src.num_classes, splits)


def _offline_error(name: str, why: str) -> ValueError:
  return ValueError(f"dataset {name!r} could not be downloaded and prepared by TFDS ({why}); "
                    f"this machine may be offline. Built-in offline datasets: "
                    f"{', '.join(DATASETS + PROCEDURAL)}")


def _prepare_hint(tfds_name: str, data_dir: str) -> str:
  return (f"prepare it where there is internet with python -c \"import tasks; "
          f"tasks.load_dataset('tfds:{tfds_name}', data_dir='{data_dir}')\" and copy "
          f"{os.path.join(data_dir, tfds_name.split('/')[0])} here, or point data_dir= / "
          "TFDS_DATA_DIR / METAOPT_DATA_DIR at a directory where it is prepared")


def _load_online(name: str, dirs: list[str]) -> Dataset:
  tfds_name = name[len("tfds:"):]
  try:
    builder = None
    for d in dirs:  # a copy already prepared anywhere TFDS would look
      b = tfds.builder(tfds_name, data_dir=d, file_format="array_record")
      if b.is_prepared():
        builder = b
        break
    if builder is None:
      with _lock(dirs[0], tfds_name):
        builder = tfds.builder(tfds_name, data_dir=dirs[0], file_format="array_record")
        if not builder.is_prepared():
          ok, host = _reachable(list(getattr(builder, "url_infos", None) or {}))
          if not ok:  # TFDS itself would retry for minutes
            raise ValueError(f"dataset {name!r} is not prepared in {', '.join(dirs)} and "
                             f"{host} is unreachable (offline?): "
                             + _prepare_hint(tfds_name, dirs[0]))
          builder.download_and_prepare(file_format="array_record")
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"dataset {name!r} is unknown: TFDS has no dataset {tfds_name!r}; "
                     f"built-in offline datasets: {', '.join(DATASETS + PROCEDURAL)}") from None
  except ValueError:
    raise
  except Exception as e:
    first_line = (str(e).splitlines() or [""])[0][:300]
    raise _offline_error(name, f"{type(e).__name__}: {first_line}") from e
  info = builder.info
  x_key, y_key = info.supervised_keys or ("image", "label")
  available = set(info.splits)
  if not {"train", "test"} <= available:
    raise ValueError(f"dataset {name!r} needs 'train' and 'test' splits; it has "
                     f"{sorted(available)}")
  # Without a validation split, the last 10% of train is held out as a fixed one.
  order = (["train", "validation", "test"] if "validation" in available
           else ["train[:90%]", "train[90%:]", "test"])
  scale = 255.0 if np.dtype(info.features[x_key].np_dtype) == np.uint8 else 1.0
  splits = [_read(builder.as_data_source(split=s), x_key, y_key, sort=False, scale=scale)
            for s in order]
  num_classes = getattr(info.features[y_key], "num_classes", None)
  return _dataset(name, tfds_name, str(builder.version), num_classes, splits)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """Prepares (once) and loads a dataset's fixed train / valid / test splits through TFDS.

  Preparation is safe when several processes share ``data_dir``; loaded datasets are cached
  in the process, and their arrays are read-only.

  Args:
    name: one of ``DATASETS`` or ``PROCEDURAL`` (offline), or ``"tfds:<name>"`` for any
      TFDS dataset (needs internet the first time).
    data_dir: TFDS data directory; default :func:`default_data_dir` (a ``"tfds:"`` dataset
      already prepared under ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` is read there).

  Returns:
    The dataset.

  Raises:
    ValueError: if ``name`` is unknown, or a ``"tfds:"`` dataset cannot be prepared (when it
      is not prepared and the download host is unreachable, within ``NETWORK_PROBE_S``).
  """
  if not isinstance(name, str) or not (name in DATASETS or name in PROCEDURAL or name in LARGE
                                       or (name.startswith("tfds:") and len(name) > 5)):
    raise ValueError(f"dataset {name!r} is unknown; allowed: "
                     f"{', '.join(DATASETS + PROCEDURAL)}, or "
                     "'tfds:<name>' for any TFDS dataset (needs internet)")
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir())) if (
      data_dir is not None or not name.startswith("tfds:")) else None
  return _load(name, tuple(_tfds_dirs(data_dir)) if name.startswith("tfds:") else data_dir)


# ------------------------------------------------------------------------- arrays

def _as_split(split: str, pair: Any) -> tuple[np.ndarray, np.ndarray]:
  if not (isinstance(pair, Sequence) and len(pair) == 2):
    raise ValueError(f"dataset: split {split!r} must be a pair (x, y) of arrays; got "
                     f"{type(pair).__name__}")
  try:
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
  except Exception as e:  # ragged lists and the like
    raise ValueError(f"dataset: split {split!r} is not a pair of arrays ({e})") from None
  if x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) == 0:
    raise ValueError(f"dataset: {split} x must be a non-empty numeric array of shape "
                     f"(n, ...features); got dtype {x.dtype}, shape {x.shape}")
  if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "biuf":
    raise ValueError(f"dataset: {split} y must be a numeric array of shape ({len(x)},) (one "
                     f"label or target per row of x); got dtype {y.dtype}, shape {y.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"dataset: {split} x has non-finite values")
  return x, y


def from_arrays(train: Any, valid: Any, test: Any, *, name: str = "arrays",
                num_classes: int | None = None) -> Dataset:
  """A :class:`Dataset` from in-memory ``(x, y)`` pairs, checked before anything compiles.

  Integer labels make a classification dataset (``num_classes`` defaults to the largest label
  plus one), float ``y`` a regression one.

  Args:
    train: ``(x, y)`` with ``x`` of shape ``(n, ...)``, ``y`` of shape ``(n,)``.
    valid: the same, for the search's objective.
    test: the same, seen only by ``evaluate``.
    name: the dataset name recorded in the data version.
    num_classes: number of classes; labels must lie in ``[0, num_classes)``.

  Returns:
    The dataset, ``x`` as float32 (uint8 images scaled to [0, 1]; a float32 ``np.memmap``
    is kept as it is, not read into memory) and ``y`` as int32 labels or float32 targets,
    read-only, with a sha256 checksum of the arrays.

  Raises:
    ValueError: naming the split and the rule it breaks (pairs, shapes, dtypes, label range,
      finite values).
  """
  pairs = {s: _as_split(s, p) for s, p in (("train", train), ("valid", valid), ("test", test))}
  shapes = {s: x.shape[1:] for s, (x, _) in pairs.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError("dataset: x must have the same shape per example in every split; got "
                     + ", ".join(f"{s} {v}" for s, v in shapes.items()))
  kinds = {s: y.dtype.kind for s, (_, y) in pairs.items()}
  classify = all(k in "biu" for k in kinds.values())
  if not classify and any(k in "biu" for k in kinds.values()):
    raise ValueError(f"dataset: y must be integer labels in every split or float targets in "
                     f"every split; got {kinds}")
  if classify:
    top = max(int(y.max()) for _, y in pairs.values())
    if num_classes is None:
      num_classes = top + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
      raise ValueError(f"num_classes={num_classes!r}: must be an integer >= 2")
    for s, (_, y) in pairs.items():
      if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"dataset: {s} labels must lie in [0, {num_classes}) (num_classes="
                         f"{num_classes}); got [{int(y.min())}, {int(y.max())}]")
  elif num_classes is not None:
    raise ValueError(f"num_classes={num_classes!r}: a regression dataset (float y) has none")
  splits = []
  for (x, y), raw in zip(pairs.values(), (train, valid, test), strict=True):
    if isinstance(raw[0], np.memmap) and raw[0].dtype == np.float32:
      xf = raw[0]  # stays on disk: the engine streams it (see metaopt's streaming input)
    else:
      xf = (x / 255.0 if x.dtype == np.uint8 else x).astype(np.float32)
    yf = y.astype(np.int32) if classify else y.astype(np.float32)
    for a in (xf, yf):
      if a.flags.writeable:
        a.setflags(write=False)
    splits.append(Split(xf, yf))
  return _dataset(name, name, "arrays", num_classes if classify else None, splits)


def resolve_dataset(dataset: Any, data_dir: str | None = None) -> Dataset:
  """The :class:`Dataset` a task's ``dataset=`` argument names.

  Args:
    dataset: a built-in name or ``"tfds:<name>"`` (see :func:`load_dataset`), a
      :class:`Dataset`, or a mapping ``{"train": (x, y), "valid": (x, y), "test": (x, y)}``
      (optionally with ``"num_classes"`` and ``"name"``; see :func:`from_arrays`), or the
      same with random-access sources instead of pairs (TFDS ``data_source``, grain;
      optionally ``"x_key"``, ``"y_key"``; see :func:`from_sources`).
    data_dir: TFDS data directory for names.

  Raises:
    ValueError: if ``dataset`` is none of these, or its arrays fail :func:`from_arrays`.
  """
  if isinstance(dataset, Dataset):
    return dataset
  if isinstance(dataset, str):
    return load_dataset(dataset, data_dir)
  if isinstance(dataset, Mapping):
    extra = set(dataset) - {"train", "valid", "test", "num_classes", "name", "x_key", "y_key"}
    missing = {"train", "valid", "test"} - set(dataset)
    if extra or missing:
      raise ValueError(f"dataset: a mapping needs keys train, valid, test (and optionally "
                       f"num_classes, name; x_key, y_key for sources); missing "
                       f"{sorted(missing)}, unknown {sorted(extra)}")
    if any(_is_source(dataset[s]) for s in ("train", "valid", "test")):
      return from_sources(dataset["train"], dataset["valid"], dataset["test"],
                          x_key=dataset.get("x_key", "image"),
                          y_key=dataset.get("y_key", "label"),
                          name=str(dataset.get("name", "source")),
                          num_classes=dataset.get("num_classes"))
    return from_arrays(dataset["train"], dataset["valid"], dataset["test"],
                       name=str(dataset.get("name", "arrays")),
                       num_classes=dataset.get("num_classes"))
  raise ValueError(f"dataset={type(dataset).__name__}: must be a dataset name "
                   f"({', '.join(DATASETS + PROCEDURAL)} or 'tfds:<name>'), a tasks.Dataset, or "
                   "a mapping {'train': (x, y), 'valid': (x, y), 'test': (x, y)}")
