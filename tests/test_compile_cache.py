"""A search run again in the same process compiles nothing (the in-process compile cache),
with the same trials for the same seed; the cache tells different computations apart."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt._src import compile_cache
from metaopt.tasks import get_task

XLA: collections.Counter = collections.Counter()


def _count(event: str, duration: float, **kw) -> None:
  del duration
  if event == "/jax/core/compile/backend_compile_duration":  # every thread
    XLA[kw.get("fun_name", "?")] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def _search(seed: int, study: str = "study"):
  task = get_task("digits_mlp")  # rebuilt each time, as a notebook cell re-run does
  prog = metaopt.with_pruning(metaopt.tpe(task.space.dim, n_startup=4),
                              metaopt.asha(3, min_epochs=1, eta=3))
  return metaopt.search(prog, task, n_trials=12, population=4, epochs=3, batch_size=256,
                        seed=seed, study=study, progress=False)


def _rows(res):
  return [(t.params, t.status, t.objective) for t in res.trials]


def test_a_search_run_again_compiles_nothing():
  XLA.clear()
  first = _search(seed=1)
  cold = sum(XLA.values())
  XLA.clear()
  again = _search(seed=1)
  assert sum(XLA.values()) == 0, dict(XLA)  # the kernel, init, ask, tell, observe, decode
  assert _rows(again) == _rows(first)
  assert any(t.status == "pruned" for t in first.trials) and len(first.trials) == 12
  other = _search(seed=2, study="other")
  assert sum(XLA.values()) == 0, dict(XLA)
  assert _rows(other) != _rows(first)
  assert cold > 0 or compile_cache.STATS["hits"] > 0  # (cold is 0 if an earlier test compiled)


def _closure(c: float, scale: int):
  def f(x):
    return jnp.sin(x) * c + scale
  return f


G = 2.0


def _uses_global(x):
  return x * G


def test_fingerprints_tell_computations_apart():
  key = lambda *p: compile_cache.fingerprint(*p)[0]
  assert key(_closure(1.0, 2)) == key(_closure(1.0, 2))  # rebuilt: the same computation
  assert key(_closure(1.0, 2)) != key(_closure(1.5, 2))  # a closed-over constant differs
  assert key(_closure(1.0, 2)) != key(_closure(1.0, 3))
  assert key(metaopt.asha(9, min_epochs=1, eta=3)) == key(metaopt.asha(9, min_epochs=1, eta=3))
  assert key(metaopt.asha(9, min_epochs=1, eta=3)) != key(metaopt.asha(9, min_epochs=1, eta=2))
  assert key(np.arange(3)) != key(np.arange(3) + 1)
  # attribute names count: ASHA's and the median pruner's inits differ only in jnp.inf / nan
  assert key(metaopt.asha(4, min_epochs=1, eta=3).init) != key(metaopt.median_pruner(4).init)
  a = key(_uses_global)
  globals()["G"] = 3.0  # a global the function reads changed: another computation
  try:
    assert key(_uses_global) != a
  finally:
    globals()["G"] = 2.0
  assert key(get_task("digits_mlp").build) == key(get_task("digits_mlp").build)
  assert key(get_task("digits_mlp", max_width=32).build) != key(get_task("digits_mlp").build)


def test_a_cached_function_is_built_once():
  built = []

  def build():
    built.append(1)
    return jax.jit(lambda x: x + 1)

  f = compile_cache.cached(build, "test-once", _closure(0.5, 1))
  g = compile_cache.cached(build, "test-once", _closure(0.5, 1))
  h = compile_cache.cached(build, "test-once", _closure(0.25, 1))
  assert f is g and h is not f and len(built) == 2


@pytest.mark.parametrize("big", [True])
def test_what_cannot_be_fingerprinted_is_not_cached(big, monkeypatch):
  monkeypatch.setattr(compile_cache, "_MAX_HASHED_BYTES", 8)
  assert compile_cache.fingerprint(np.zeros(16)) is None
  built = []
  compile_cache.cached(lambda: built.append(1), "x", np.zeros(16))
  compile_cache.cached(lambda: built.append(1), "x", np.zeros(16))
  assert len(built) == 2


def test_profile_text_names_each_compiled_function_and_its_seconds():
  import threading

  before = compile_cache.snapshot()

  def perf_probe_fn(x):
    return jnp.cos(x) * 7.0

  def other_thread_fn(x):
    return jnp.sinh(x) - 2.0

  jax.jit(perf_probe_fn)(jnp.ones(37)).block_until_ready()
  t = threading.Thread(target=lambda: jax.jit(other_thread_fn)(jnp.ones(39)).block_until_ready())
  t.start()
  t.join()
  text = compile_cache.profile_text(before, 1.0)
  line = next(x for x in text.splitlines() if "perf_probe_fn" in x)
  assert line.rstrip().endswith("x1") and float(line.split()[-3]) > 0, text
  assert "(background)" not in line
  assert "other_thread_fn (background)" in text, text
  assert text.startswith("# compile: ") and "XLA compilations" in text
