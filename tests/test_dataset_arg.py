"""Every MLP / CNN task takes a dataset (a name, ``tfds:<name>`` or arrays), checked before
anything compiles; TFDS data-dir conventions; offline ``tfds:`` datasets fail fast."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt import tasks
from metaopt._src.population import fast_jit
from metaopt.tasks import from_arrays, get_task, load_dataset


def _arrays(n=60, shape=(5,), classes=3, seed=0):
  rng = np.random.default_rng(seed)
  mk = lambda m: (rng.normal(size=(m, *shape)).astype(np.float32),
                  rng.integers(0, classes, m).astype(np.int64))
  return {"train": mk(n), "valid": mk(n // 3), "test": mk(n // 3)}


_slow = pytest.mark.slow  # the same code path as digits_mlp


@pytest.mark.parametrize("name,shape", [("digits_mlp", (5,)),
                                        pytest.param("wine_mlp", (5,), marks=_slow),
                                        pytest.param("breast_cancer_mlp", (5,), marks=_slow),
                                        ("logreg", (5,)), ("digits_cnn", (6, 6, 2)),
                                        pytest.param("mnist1d_mlp", (5,), marks=_slow),
                                        ("mnist1d_cnn", (12,)), ("mnist1d_gru", (12, 1))])
def test_tasks_take_arrays_and_train(name, shape):
  task = get_task(name, dataset={**_arrays(shape=shape), "name": "mine"})
  assert task.data.input_shape == shape and task.data.num_classes == 3
  assert task.data.data_version["name"] == "mine" and len(task.data.checksum) == 64
  fns = task.build({})
  h = task.space.decode(jnp.full((task.space.dim,), 0.5))
  # compiled (op by op, a step costs several times its compile), each called once: by
  # fast_jit (no backend optimisation: the compile is what costs here)
  state = fast_jit(fns.init)(jax.random.key(0), h)
  x, y = jnp.asarray(task.data.train.x[:8]), jnp.asarray(task.data.train.y[:8])
  state, tel = fast_jit(fns.train_step)(state, (x, y), h)
  assert np.isfinite(float(tel["loss"]))
  assert fast_jit(fns.evaluate)(state, x, y, h)["accuracy"].shape == ()


def test_regression_arrays_and_a_dataset_object():
  rng = np.random.default_rng(0)
  pair = lambda m: (rng.normal(size=(m, 4)), rng.normal(size=m))
  data = from_arrays(pair(40), pair(10), pair(10))
  assert data.num_classes is None and data.train.y.dtype == np.float32
  task = get_task("synthetic_regression", dataset=data)
  assert task.data is data and task.objective == "mse"
  assert get_task("digits_mlp", dataset="wine").data.name == "wine"


def test_uint8_images_are_scaled():
  d = _arrays(shape=(4, 4, 3))
  d = {k: ((np.abs(x) * 60).astype(np.uint8), y) for k, (x, y) in d.items()}
  data = from_arrays(**d)
  assert data.train.x.dtype == np.float32 and data.train.x.max() <= 1.0
  np.testing.assert_allclose(data.train.x, d["train"][0] / 255.0, rtol=1e-6)


def _bad(**change):
  d = _arrays()
  d.update(change)
  return d


BAD = {
    "not a pair": (lambda: _bad(train=np.zeros((5, 3))), "split 'train' must be a pair"),
    "1-D x": (lambda: _bad(valid=(np.zeros(4), np.zeros(4, int))), "valid x must be.*shape"),
    "y length": (lambda: _bad(test=(np.zeros((4, 5)), np.zeros(3, int))), r"test y .*\(4,\)"),
    "label range": (lambda: {**_arrays(), "num_classes": 2}, r"labels must lie in \[0, 2\)"),
    "negative label": (lambda: _bad(valid=(np.zeros((4, 5)), np.array([0, -1, 1, 2]))),
                       r"valid labels must lie in \[0, 3\)"),
    "mixed y": (lambda: _bad(test=(np.zeros((4, 5)), np.zeros(4))), "integer labels in every"),
    "non-finite": (lambda: _bad(train=(np.full((4, 5), np.nan), np.zeros(4, int))),
                   "train x has non-finite"),
    "shapes": (lambda: _bad(test=(np.zeros((4, 6)), np.zeros(4, int))), "same shape per"),
    "keys": (lambda: {"train": _arrays()["train"]}, r"missing \['test', 'valid'\]"),
    "type": (lambda: 3.5, "dataset=float: must be a dataset name"),
    "name": (lambda: "mnist", "dataset 'mnist' is unknown"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dataset_argument_is_one_clear_error(case):
  make, match = BAD[case]
  with pytest.raises(ValueError, match=match) as e:
    get_task("digits_mlp", dataset=make())
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,dataset,match", [
    ("digits_cnn", "wine", r"digits_cnn needs images of shape \(H, W, C\)"),
    ("mnist1d_cnn", "digits", r"mnist1d_cnn needs 1-D signals"),
    ("mnist1d_gru", "digits", r"mnist1d_gru needs 1-D signals"),
    ("logreg", "synthetic_regression", "logreg is a classifier"),
    ("digits_cnn", "synthetic_regression", "digits_cnn is a classifier"),
])
def test_a_dataset_the_model_cannot_take_is_one_clear_error(name, dataset, match):
  with pytest.raises(ValueError, match=match):
    get_task(name, dataset=dataset)


def test_offline_tfds_dataset_fails_fast_with_one_line(tmp_path, monkeypatch):
  # an HTTPS proxy that refuses connections: offline, whatever this machine's network
  monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match="not prepared in .* unreachable .*prepare it") as e:
    load_dataset("tfds:mnist", str(tmp_path))
  # no download retries (those take minutes); the bound is loose for a loaded CI machine
  assert time.perf_counter() - t0 < 30.0
  assert "\n" not in str(e.value) and "tfds:mnist" in str(e.value)


def test_tfds_data_dir_conventions(data_dir, tmp_path, monkeypatch):
  load_dataset("wine", data_dir)  # prepared (metaopt_wine) in the session's data dir
  monkeypatch.delenv("METAOPT_DATA_DIR")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert tasks.default_data_dir() == str(tmp_path)
  # a tfds: dataset prepared under $TFDS_DATA_DIR is read there, without the network
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
  monkeypatch.setenv("HOME", str(tmp_path))
  ds = load_dataset("tfds:metaopt_wine")
  assert ds.tfds_name == "metaopt_wine" and len(ds.train) + len(ds.valid) == 106
  assert not os.path.exists(os.path.join(tmp_path, ".cache"))  # nothing prepared elsewhere
