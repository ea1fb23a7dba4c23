"""Population kernels on several CPU cores (issue 24): a "loop" chunk split over threads and a
population init split over threads give the results of one thread, bit for bit ("vmap" groups
run at once: tests/test_switch_groups.py)."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt._src import population as pop
from metaopt.tasks import get_task


@pytest.fixture(scope="module")
def task():
  return get_task("digits_mlp", max_width=16)


def _equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("shared,workers", [
    (True, 2), pytest.param(True, 3, marks=pytest.mark.slow),
    pytest.param(False, 2, marks=pytest.mark.slow)])
def test_loop_chunk_split_over_threads_is_bit_for_bit_one_loop(task, shared, workers):
  fns, n = task.build({}), 5
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  h["activation"] = jnp.arange(n, dtype=jnp.int32) % 4
  data = pop.data_arrays(task.data)
  keys = jax.random.split(jax.random.key(1), n)
  alive = np.array([True, False, True, True, True])  # a stopped trial; 5 = 3 + 2 (padded)
  out, live = {}, {}
  for w in (1, workers):
    k = pop.make_kernel(fns, 32 * 4, 32, shared, mode="loop", workers=w)
    assert k.workers == w
    s = k.init(keys, h)
    for epoch in range(2):
      s, m = k.chunk(s, h, alive, jax.random.key(2 + epoch), data)
    out[w] = (s, m)
    # every trial live: contiguous parts, read as views of the input, which stays untouched
    # (the unsplit chunk donates its input states, so both run on a copy)
    inp = jax.device_put(jax.tree_util.tree_map(np.array, s))
    kept = jax.tree_util.tree_map(np.array, inp)
    live[w] = k.chunk(inp, h, np.ones(n, bool), jax.random.key(9), data)
    if w > 1:
      _equal(inp, kept)
  _equal(out[workers], out[1])
  _equal(live[workers], live[1])
  assert np.all(np.asarray(out[workers][1]["train_loss"])[~alive] == 0)  # stopped: none
  assert np.all(np.asarray(out[workers][1]["train_loss"])[alive] > 0)
  # the stopped trial kept its initial state
  _equal(jax.tree_util.tree_map(lambda a: a[1], out[workers][0]),
         jax.tree_util.tree_map(lambda a: a[1], k.init(keys, h)))


def test_part_layout_deals_live_trials_round_robin():
  alive = np.array([False, True, True, False, True, True, True])
  idx, part_alive, valid = pop._part_layout(alive, 2)
  assert idx.shape == part_alive.shape == valid.shape == (2, 4)
  assert part_alive.sum(axis=1).tolist() == [3, 2]  # 5 live trials, as even as they go
  assert valid.sum() == 7 and not part_alive[~valid].any()  # one padding row, stopped
  assert sorted(idx[valid].tolist()) == list(range(7))  # every trial in one part
  np.testing.assert_array_equal(part_alive[valid], alive[idx[valid]])
  parts = [{"w": np.stack([idx[p], -idx[p]], 1)} for p in range(2)]  # rows name their trial
  back = pop._cat_rows(parts, idx, valid)["w"]
  np.testing.assert_array_equal(np.asarray(back), np.stack([np.arange(7), -np.arange(7)], 1))


def test_part_layout_with_every_trial_live_is_contiguous_blocks():
  idx, part_alive, valid = pop._part_layout(np.ones(7, bool), 2)
  assert idx[valid].tolist() == list(range(7)) and part_alive.sum(axis=1).tolist() == [4, 3]
  assert pop._rows_index(idx[0]) == slice(0, 4)  # read as a view, written as one block
  np.testing.assert_array_equal(pop._rows_index(np.array([0, 2])), [0, 2])
  parts = [{"w": np.where(valid[p], idx[p], -1)} for p in range(2)]
  exe = jax.jit(lambda t: {"w": t["w"] * 2}).lower(parts[0]).compile()
  back = pop._run_parts(exe, (parts[0],), lambda p: (parts[p],), idx, valid, 2)["w"]
  np.testing.assert_array_equal(np.asarray(back), 2 * np.arange(7))


def test_run_parallel_runs_calls_at_once_in_order_and_raises():
  barrier = threading.Barrier(2, timeout=30)  # breaks unless both calls run at once
  assert pop.run_parallel([lambda: barrier.wait() * 0 + 1, lambda: barrier.wait() * 0 + 2],
                          workers=2) == [1, 2]
  assert pop.run_parallel([lambda i=i: i for i in range(7)], workers=2) == list(range(7))
  nested = pop.run_parallel([lambda: pop.run_parallel([lambda: 1, lambda: 2], 2)] * 2, 2)
  assert nested == [[1, 2], [1, 2]]

  def boom(i):
    raise ValueError(f"call {i}")
  with pytest.raises(ValueError, match="call 1"):
    pop.run_parallel([lambda: 0, lambda: boom(1), lambda: boom(2)], workers=2)


def test_bad_workers_is_a_clear_error(task):
  fns = task.build({})
  with pytest.raises(ValueError, match="workers=0: must be an integer >= 1"):
    pop.make_kernel(fns, 128, 32, mode="loop", workers=0)
  with pytest.raises(ValueError, match="workers=2"):
    pop.make_kernel(fns, 128, 32, mode="vmap", workers=2)


# The activation groups run at once on two threads: tests/test_switch_groups.py
# (test_vmap_groups_run_at_once_give_the_same_trials, beside the same grouped search).


def test_a_large_population_init_split_over_threads_is_bit_for_bit_one_call(task, monkeypatch):
  monkeypatch.setattr(pop, "INIT_OPT_MIN_ELEMENTS", 0)  # the split (level-1) build for any
  fns, n = task.build({}), 5
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  keys = jax.random.split(jax.random.key(1), n)
  one = pop.PopulationInit(fns.init)(keys, h)
  split = pop.PopulationInit(fns.init, workers=2)(keys, h)  # parts of 3 (one padded)
  assert jax.tree_util.tree_leaves(split)[0].shape[0] == n
  _equal(split, one)


def test_init_options_keep_the_level1_states_and_the_fast_build_close(task):
  """population.INIT_CPU (XLA's older fusion emitters) draws the level-1 build's initial states
  bit for bit; the fast build's agree with them to float32 rounding."""
  from metaopt._src.jit_options import OptionsJit
  fns, n = task.build({}), 3
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  keys = jax.random.split(jax.random.key(1), n)
  cpu = jax.default_backend() == "cpu"
  assert pop.init_compile_options(True) == {**pop.INIT_COMPILE, **(pop.INIT_CPU if cpu else {})}
  assert pop.init_compile_options(False) == {**pop.FAST_COMPILE, **(pop.INIT_CPU if cpu else {})}
  newer = OptionsJit(jax.vmap(fns.init), pop.INIT_COMPILE)(keys, h)
  older = OptionsJit(jax.vmap(fns.init), pop.init_compile_options(True))(keys, h)
  _equal(older, newer)
  fast = pop.PopulationInit(fns.init)(keys, h)  # 3 trials: the fast build
  leaves = jax.tree_util.tree_leaves
  assert sum(np.asarray(a).size for a in leaves(fast)) < pop.INIT_OPT_MIN_ELEMENTS
  for a, b in zip(leaves(fast), leaves(older), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_init_bound_here_runs_on_another_thread_compiling_nothing(task):
  from metaopt._src import compile_cache
  fns, n = task.build({}), 3
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  keys = jax.random.split(jax.random.key(1), n)
  init = pop.PopulationInit(fns.init)
  run = init.bind(keys, h)  # compiled here
  seen = {}

  def other():
    before = sum(compile_cache.compiles().values())
    seen["states"] = jax.block_until_ready(run())
    seen["compiles"] = sum(compile_cache.compiles().values()) - before
  t = threading.Thread(target=other)
  t.start()
  t.join()
  assert seen["compiles"] == 0
  _equal(seen["states"], pop.PopulationInit(fns.init)(keys, h))  # a call on this thread
