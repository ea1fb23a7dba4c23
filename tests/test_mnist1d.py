"""MNIST-1D: the builder reproduces the published split; its tasks' models are what they say."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt import Store
from metaopt._src.population import fast_jit
from metaopt.tasks import get_task, load_dataset
from metaopt.tasks._src.library import Conv1D

# sha256 of our float32 splits (train, valid, test: x then y), pinned: a change in the
# mnist1d package's generator or in our split changes the store's data version.
CHECKSUM = "5bf29723f7af3552e76e905a4d653b65e474c2315cd03f3721dfa383505ee6c9"
# the published split's label counts (mnist1d_data.pkl: 4000 train, 1000 test)
TRAIN_COUNTS = [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
TEST_COUNTS = [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]


@pytest.fixture(scope="module")
def data():
  return load_dataset("mnist1d")


def test_builder_reproduces_the_published_split(data):
  from mnist1d.data import get_dataset_args, make_dataset

  ref = make_dataset(get_dataset_args())
  assert (len(data.train), len(data.valid), len(data.test)) == (3600, 400, 1000)
  assert data.input_shape == (40,) and data.num_classes == 10
  # test split: the published one, row for row
  np.testing.assert_array_equal(data.test.x, ref["x_test"].astype(np.float32))
  np.testing.assert_array_equal(data.test.y, ref["y_test"])
  assert np.bincount(data.test.y).tolist() == TEST_COUNTS
  # train + valid: exactly the published train rows, valid carved out of them
  both = np.concatenate([data.train.x, data.valid.x])
  ref_rows = {r.tobytes() for r in ref["x"].astype(np.float32)}
  assert len(ref_rows) == 4000 and {r.tobytes() for r in both} == ref_rows
  assert (np.bincount(data.train.y) + np.bincount(data.valid.y)).tolist() == TRAIN_COUNTS
  assert min(np.bincount(data.valid.y)) >= 30  # every class is validated
  assert data.checksum == CHECKSUM
  assert data.data_version == {"name": "mnist1d", "tfds_name": "metaopt_mnist1d",
                               "version": "1.0.0", "checksum": CHECKSUM}


def test_search_records_the_checksum_in_the_store(tmp_path):
  task = get_task("mnist1d_mlp")
  url = f"sqlite:///{tmp_path}/m.db"
  metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=2, population=2,
                 epochs=1, batch_size=400, seed=0, store=url, study="m", progress=False)
  assert Store(url).load_study("m").data_version["checksum"] == CHECKSUM


@pytest.mark.parametrize("stride,kernel", [(1, 5), (2, 5), (2, 3)])
def test_conv1d_equals_flax_conv(stride, kernel):
  x = jax.random.normal(jax.random.key(0), (3, 40, 4))
  ours = Conv1D(7, kernel, stride)
  params = ours.init(jax.random.key(1), x)
  pad = 1 if stride > 1 else kernel // 2
  ref = nn.Conv(7, (kernel,), strides=(stride,), padding=((pad, pad),))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["pool", pytest.param("paper", marks=pytest.mark.slow)])
def test_masked_channels_stay_zero_and_do_not_change_the_output(arch):
  task = get_task("mnist1d_cnn", arch=arch)
  fns = task.build({})
  h = {"learning_rate": jnp.asarray(1e-2), "weight_decay": jnp.asarray(1e-4),
       "channels": jnp.asarray(8), "activation": jnp.asarray(0)}
  # init, 3 steps and 2 evaluations: fast_jit programs (compiled without backend optimisation)
  state = fast_jit(fns.init)(jax.random.key(0), h)
  x, y = jnp.asarray(task.data.train.x[:64]), jnp.asarray(task.data.train.y[:64])
  step, evaluate = fast_jit(fns.train_step), fast_jit(fns.evaluate)
  for _ in range(3):
    state, tel = step(state, (x, y), h)
  assert not bool(tel["nonfinite_loss"])
  p = state["params"]["params"]
  for name in ("Conv_0", "Conv_1", "Conv_2"):
    assert not np.any(np.asarray(p[name]["kernel"])[..., 8:])  # dead output channels
  # perturbing dead input weights of later layers leaves the function unchanged
  p2 = jax.tree_util.tree_map(lambda a: a, state["params"])
  k = p2["params"]["Conv_1"]["kernel"]
  p2["params"]["Conv_1"]["kernel"] = k.at[:, 8:, :].set(5.0).at[..., 8:].set(0.0)
  out1 = evaluate(state, x, y, h)["loss"]
  out2 = evaluate({**state, "params": p2}, x, y, h)["loss"]
  np.testing.assert_allclose(out1, out2, rtol=1e-6)


def test_bad_arch_is_one_clear_error():
  with pytest.raises(ValueError, match="arch='resnet'.*pool, paper"):
    get_task("mnist1d_cnn", arch="resnet")
