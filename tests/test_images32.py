"""The procedural 32x32x3 image set (deterministic, lazy) and the ResNet task's augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt._src.population import fast_jit
from metaopt.tasks import get_task
from metaopt.tasks._src import images32
from metaopt.tasks._src.library import augment


def test_blocks_are_deterministic_balanced_uint8_images():
  x, y = images32._block(0, 3)
  x2, y2 = images32._block(0, 3)
  assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  assert np.bincount(y).tolist() == [100] * 10
  assert not np.array_equal(images32._block(1, 3)[0], x)  # the seed matters
  # the 5k set's train split is the 50k set's first 5,000 images; valid and test are shared
  a, b = images32.split_blocks("images32"), images32.split_blocks("images32_5k")
  assert a["train"] == (0, 50_000) and b["train"] == (0, 5_000)
  assert a["valid"] == b["valid"] == (50, 5_000) and a["test"] == b["test"] == (55, 5_000)


def test_classes_differ_in_structure_not_only_colour():
  x, y = images32._block(0, 0)
  grey = x.astype(np.float32).mean(-1)
  across = np.abs(np.diff(grey, axis=2)).mean((1, 2))  # changes along a row
  down = np.abs(np.diff(grey, axis=1)).mean((1, 2))
  # horizontal stripes (5) change down the columns, vertical stripes (6) along the rows
  assert down[y == 5].mean() > 1.2 * across[y == 5].mean()
  assert across[y == 6].mean() > 1.2 * down[y == 6].mean()


def _crops(xp, pad, hh):
  return [xp[a:a + hh, b:b + hh] for a in range(2 * pad + 1) for b in range(2 * pad + 1)]


def test_augment_is_a_crop_or_flipped_crop_of_the_padded_image():
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
  out = np.asarray(augment(jax.random.key(1), x, pad=2))
  xp = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    cands = _crops(xp[i], 2, 8)
    plain = any(np.array_equal(out[i], c) for c in cands)
    flipped = any(np.array_equal(out[i], c[:, ::-1]) for c in cands)
    assert plain or flipped
  assert not np.array_equal(out, np.asarray(augment(jax.random.key(2), x, pad=2)))


def test_resnet_task_trains_with_a_key_per_trial():
  rng = np.random.default_rng(0)
  mk = lambda m: (rng.integers(0, 255, (m, 32, 32, 3)).astype(np.uint8),
                  rng.integers(0, 10, m))
  task = get_task("images32_resnet", channels=4, dataset={"train": mk(16), "valid": mk(8),
                                                          "test": mk(8)})
  fns = task.build({})
  h = {"learning_rate": jnp.asarray([1e-3, 1e-3]), "weight_decay": jnp.asarray([0.0, 0.0])}
  states = fast_jit(jax.vmap(fns.init))(jax.random.split(jax.random.key(0), 2), h)
  assert not np.array_equal(states["aug_key"][0], states["aug_key"][1])
  x, y = jnp.asarray(task.data.train.x[:8]), jnp.asarray(task.data.train.y[:8])
  same = jax.tree_util.tree_map(lambda a: jnp.stack([a[0], a[0]]), states)
  same["aug_key"] = states["aug_key"]  # same weights, different augmentation keys
  # programs run once: compiled without backend optimisation (population.fast_jit)
  new, tel = fast_jit(jax.vmap(fns.train_step, in_axes=(0, None, 0)))(same, (x, y), h)
  assert np.all(np.isfinite(np.asarray(tel["loss"])))
  assert float(tel["loss"][0]) != float(tel["loss"][1])
  assert int(new["step"][0]) == 1 and np.array_equal(new["aug_key"], states["aug_key"])
  plain = get_task("images32_resnet", channels=4, augment=False, dataset=task.data).build({})
  # the state's structure is enough here: traced, not compiled
  assert "aug_key" not in jax.eval_shape(plain.init, jax.random.key(0),
                                         {k: v[0] for k, v in h.items()})
  with pytest.raises(ValueError, match="augment='yes': must be True or False"):
    get_task("images32_resnet", augment="yes", dataset=task.data)


@pytest.mark.slow
def test_images32_5k_loads_lazily_with_a_checksum():
  from metaopt.tasks import load_dataset
  from metaopt.tasks._src.data import SourceArray
  ds = load_dataset("images32_5k")
  assert (len(ds.train), len(ds.valid), len(ds.test)) == (5000, 5000, 5000)
  assert isinstance(ds.train.x, SourceArray) and ds.input_shape == (32, 32, 3)
  assert np.bincount(ds.train.y).tolist() == [500] * 10 and len(ds.checksum) == 64
  rows = ds.train.x[np.array([3, 0])]
  assert rows.dtype == np.float32 and 0.0 <= rows.min() and rows.max() <= 1.0
