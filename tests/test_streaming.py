"""Streaming input: the same batches and results as in memory; data over the memory budget
trains from a memmap through the search driver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt._src import population as pop
from metaopt._src import streaming
from metaopt._src.evaluate import evaluate_top
from metaopt.tasks import from_arrays, get_task


@pytest.fixture(scope="module")
def task():
  return get_task("digits_mlp")


@pytest.mark.parametrize("shared", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_streaming_equals_in_memory_bit_for_bit(task, shared):
  fns = task.build({})
  n = 3
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  keys = jax.random.split(jax.random.key(1), n)
  alive = jnp.asarray([True, False, True])
  # 1078 rows / batch 64 = 16 steps: blocks of 5 leave a padded last block
  mem = pop.make_kernel(fns, len(task.data.train), 64, shared, mode="vmap")
  stm = streaming.make_streaming_kernel(fns, task.data, 64, shared, block_steps=5)
  assert stm.steps_per_chunk == mem.steps_per_chunk == 16
  data = pop.data_arrays(task.data)
  s_mem, s_stm = mem.init(keys, h), stm.init(keys, h)
  for epoch in range(2):
    key = jax.random.key(10 + epoch)
    s_mem, m_mem = mem.chunk(s_mem, h, alive, key, data)
    s_stm, m_stm = stm.chunk(s_stm, h, alive, key, None)
    for a, b in zip(jax.tree_util.tree_leaves(s_mem), jax.tree_util.tree_leaves(s_stm),
                    strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for k in ("train_loss", "train_loss_last", "valid_accuracy", "valid_loss",
              "grad_norm_first", "zero_grad_frac"):
      live = np.asarray(alive)
      np.testing.assert_array_equal(np.asarray(m_mem[k])[live], np.asarray(m_stm[k])[live], k)


def test_batched_validation_matches_one_pass(task):
  fns = task.build({})
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (2, task.space.dim)))
  stm = streaming.make_streaming_kernel(fns, task.data, 64, eval_batch=100)
  states = stm.init(jax.random.split(jax.random.key(1), 2), h)
  h = {k: jnp.asarray(v) for k, v in h.items()}
  batched = stm.evaluate(states, h)
  whole = pop.fast_jit(jax.vmap(fns.evaluate, in_axes=(0, None, None, 0)))(  # one call
      states, jnp.asarray(task.data.valid.x), jnp.asarray(task.data.valid.y), h)
  for k in whole:
    np.testing.assert_allclose(batched[k], whole[k], rtol=1e-5, atol=1e-6)


def test_bad_streaming_settings_are_clear_errors(task):
  fns = task.build({})
  with pytest.raises(ValueError, match="block_steps=0: must be an integer >= 1"):
    streaming.make_streaming_kernel(fns, task.data, 64, block_steps=0)
  with pytest.raises(ValueError, match=r"batch_size=5000: must be in \[1, 1078\]"):
    streaming.make_streaming_kernel(fns, task.data, 5000)


def test_budget_picks_in_memory_or_streaming(task, monkeypatch):
  assert not streaming.should_stream(task.data)  # digits: 0.3 MB, default budget 2 GiB
  monkeypatch.setenv("METAOPT_DATA_MEMORY_BYTES", "1000")
  assert streaming.should_stream(task.data)
  monkeypatch.setenv("METAOPT_DATA_MEMORY_BYTES", "lots")
  with pytest.raises(ValueError, match="METAOPT_DATA_MEMORY_BYTES='lots'"):
    streaming.memory_budget()


# slow (~29 s in CI's default run: a streamed search, then the best configuration retrained
# streamed and in memory). By default a search over the memory budget streams its data in
# test_a_tfds_data_source_is_read_lazily_and_streams (below) and in tests/test_mesh_search.py
# (onto a mesh); batched test evaluation equals one pass in
# test_batched_test_evaluation_is_the_one_pass_mean.
@pytest.mark.slow
def test_a_dataset_over_the_memory_budget_trains_from_a_memmap(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  n, d = 3000, 16
  w = rng.normal(size=(d, 4))
  path = tmp_path / "x.f32"
  x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
  x[:] = rng.normal(size=(n, d)).astype(np.float32)
  y = np.argmax(np.asarray(x) @ w, -1)
  x.flush()
  del x
  xr = np.load(path, mmap_mode="r")
  data = from_arrays((xr[:2000], y[:2000]), (xr[2000:2500], y[2000:2500]),
                     (xr[2500:], y[2500:]), name="memmapped")
  assert isinstance(data.train.x, np.memmap)
  monkeypatch.setenv("METAOPT_DATA_MEMORY_BYTES", str(streaming.data_bytes(data) // 4))
  task = get_task("digits_mlp", dataset=data, max_width=32)
  res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=4, population=4,
                       epochs=3, batch_size=100, seed=0, store=f"sqlite:///{tmp_path}/s.db",
                       progress=False)
  assert res.count("complete") == 4
  assert res.best.objective > 0.7  # a linear teacher: learnable
  for t in res.trials:
    assert [m["epoch"] for m in t.metrics] == [0, 1, 2]
  # the top configuration retrained (streamed, as searched) and tested in batches of 128
  # rows gives the numbers of in-memory retraining tested in one pass
  st = metaopt.Store(f"sqlite:///{tmp_path}/s.db")
  streamed = evaluate_top(st, None, task, task.space, k=1, seeds=2, eval_batch=128,
                          ensemble=True)
  monkeypatch.delenv("METAOPT_DATA_MEMORY_BYTES")
  whole = evaluate_top(st, None, task, task.space, k=1, seeds=2, eval_batch=10_000,
                       ensemble=True)
  a, b = streamed["configs"][0], whole["configs"][0]
  assert a["number"] == b["number"] == res.best.number
  np.testing.assert_allclose(a["per_seed"], b["per_seed"], atol=1.5 / 500)  # <= 1 flip
  assert a["test_accuracy"] > 0.7
  assert abs(streamed["ensemble"]["test_accuracy"] - whole["ensemble"]["test_accuracy"]) \
      <= 1.5 / 500


def test_batched_test_evaluation_is_the_one_pass_mean(task):
  fns = task.build({})
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (3, task.space.dim)))
  states = pop.fast_jit(jax.vmap(fns.init))(jax.random.split(jax.random.key(1), 3), h)
  ev = jax.jit(lambda s, hh, x, y: jax.vmap(fns.evaluate, in_axes=(0, None, None, 0))(
      s, x, y, hh))
  # 360 test rows in batches of 7: a short last batch
  batched = streaming.evaluate_batched(ev, states, h, task.data.test, 7, np.int32)
  one = streaming.evaluate_batched(ev, states, h, task.data.test, 1000, np.int32)
  whole = ev(states, h, jnp.asarray(task.data.test.x), jnp.asarray(task.data.test.y))
  for k in whole:
    np.testing.assert_array_equal(one[k], np.asarray(whole[k]))  # one batch: exactly fn's
    np.testing.assert_allclose(batched[k], whole[k], rtol=1e-5, atol=1e-6)


def test_a_tfds_data_source_is_read_lazily_and_streams(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  from metaopt.tasks import SourceArray, default_data_dir, from_sources, load_dataset

  mem = load_dataset("digits")  # prepares the array_record files if needed
  src = tfds.builder("metaopt_digits", data_dir=default_data_dir()).as_data_source()
  ds = from_sources(src["train"], src["valid"], src["test"], name="digits_source")
  assert isinstance(ds.train.x, SourceArray) and ds.num_classes == 10
  assert [len(s) for s in (ds.train, ds.valid, ds.test)] == \
      [len(s) for s in (mem.train, mem.valid, mem.test)]
  # array_record keeps no order: rows sorted by their generation index are the loaded split
  order = np.argsort([r["index"] for r in src["valid"].__getitems__(list(range(len(ds.valid))))])
  np.testing.assert_array_equal(np.asarray(ds.valid.x)[order], mem.valid.x)
  np.testing.assert_array_equal(ds.valid.y[order], mem.valid.y)
  with pytest.raises(ValueError, match="dataset: valid must be a random-access source"):
    from_sources(src["train"], [1, 2], src["test"])
  with pytest.raises(ValueError, match="records have keys .*not x_key='x'"):
    from_sources(src["train"], src["valid"], src["test"], x_key="x")
  # over the memory budget, a task on the raw sources streams them through the search
  monkeypatch.setenv("METAOPT_DATA_MEMORY_BYTES", "1000")
  task = get_task("digits_mlp", max_width=32, dataset={
      "train": src["train"], "valid": src["valid"], "test": src["test"], "name": "src"})
  assert streaming.should_stream(task.data)
  res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=2, population=2,
                       epochs=2, batch_size=64, seed=0, progress=False)
  assert res.count("complete") == 2 and res.best.objective > 0.5
  # under the budget the same sources are read into memory and train in the in-memory kernel
  monkeypatch.delenv("METAOPT_DATA_MEMORY_BYTES")
  assert not streaming.should_stream(task.data)
  mem_res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=2,
                           population=2, epochs=2, batch_size=64, seed=0, progress=False)
  assert mem_res.count("complete") == 2 and mem_res.best.objective > 0.5
