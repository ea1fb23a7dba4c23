"""A search run again in the same process compiles nothing (the in-process compile cache),
with the same trials for the same seed; the cache tells different computations apart."""

import collections
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from metaopt._src import compile_cache, evaluators, keys, loop
from metaopt._src.types import COMPLETE
from metaopt.tasks import get_task

XLA: collections.Counter = collections.Counter()
ON_MAIN: collections.Counter = collections.Counter()  # compiles on the main thread


def _count(event: str, duration: float, **kw) -> None:
  del duration
  if event == "/jax/core/compile/backend_compile_duration":  # every thread
    XLA[kw.get("fun_name", "?")] += 1
    ON_MAIN[kw.get("fun_name", "?")] += threading.current_thread() is threading.main_thread()


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
  assert cold > 0  # (tests/conftest.py empties the cache for each test module)


def test_search_keys_equal_the_eager_ones_and_compile_nothing():
  # host threefry (keys.py): the bits of JAX's split / fold_in / key, no XLA program
  XLA.clear()
  for seed in (0, 1, 1000, 2**31 - 1, -3, -2**31):
    eager = jax.random.split(jax.random.key(seed))
    n = sum(XLA.values())
    got = loop.root_keys(seed)
    folded = {data: loop.fold_in(got[1], data) for data in (0, 1, 7, 2**31, 2**32 - 1)}
    assert sum(XLA.values()) == n, dict(XLA)
    for a, b in zip(eager, got, strict=True):
      assert b.dtype == a.dtype and b.shape == a.shape == ()
      np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    for data, key in folded.items():
      np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(eager[1], data)),
                                    jax.random.key_data(key))
  for seed in (2**31, 2**40):  # past int32: the eager path
    for a, b in zip(jax.random.split(jax.random.key(seed)), loop.root_keys(seed), strict=True):
      np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
  seeds = np.asarray([0, 5, 2**31, 2**32 - 1], np.uint32)
  n = sum(XLA.values())
  trial = evaluators._trial_keys(seeds)
  assert sum(XLA.values()) == n
  np.testing.assert_array_equal(jax.random.key_data(jax.vmap(jax.random.key)(seeds)),
                                jax.random.key_data(trial))


def test_search_keys_under_another_prng_are_jaxs():
  # not threefry: JAX makes the keys, as before
  with jax.default_prng_impl("rbg"):
    assert not keys.on_host()
    got = loop.root_keys(4)
    eager = jax.random.split(jax.random.key(4))
    np.testing.assert_array_equal(jax.random.key_data(eager[1]), jax.random.key_data(got[1]))
    np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(eager[1], 3)),
                                  jax.random.key_data(loop.fold_in(got[1], 3)))
  assert keys.on_host()


def test_searcher_functions_compile_to_the_same_bits_with_the_older_emitters(monkeypatch):
  # loop.SEARCHER_COMPILE_CPU (XLA's non-MLIR fusion emitters) changes no searcher output:
  # the same trials and curves as fast_jit's build, and the same decoded values bit for bit
  task = get_task("digits_mlp")
  u = np.random.default_rng(0).random((512, task.space.dim)).astype(np.float32)
  assert loop.SEARCHER_COMPILE_CPU == {"xla_cpu_use_fusion_emitters": False}
  decoded, runs = {}, {}
  for options in ({}, dict(loop.SEARCHER_COMPILE_CPU)):
    monkeypatch.setattr(loop, "SEARCHER_COMPILE_CPU", options)
    # the task kernels stay: SEARCHER_COMPILE_CPU does not compile them
    compile_cache.clear(keep="task-kernel")
    older = bool(options)
    decoded[older] = jax.device_get(loop.searcher_jit(task.space.decode)(u))
    XLA.clear()
    res = _search(seed=7, study=f"emitters{older}")
    assert XLA["jit(tell)"] == 1, dict(XLA)  # the searcher compiled again, with `options`
    runs[older] = (_rows(res), [[(m["train_loss"], m["valid_accuracy"]) for m in t.metrics]
                                for t in res.trials])
  for name, v in decoded[False].items():
    np.testing.assert_array_equal(v, decoded[True][name], err_msg=name)
  assert runs[True] == runs[False]
  assert any(t[1] == "pruned" for t in runs[True][0])  # the observer (ASHA) acted


def test_the_startup_points_made_on_the_host_are_the_compiled_ones():
  # Searcher.startup_host (TPE's, kept by with_pruning): startup_ask's points, state and ok
  # bit for bit, nothing compiled; under another PRNG it declines (None) and JAX makes them
  progs = [(metaopt.tpe(5, n_startup=4), 5),
           (metaopt.with_pruning(metaopt.tpe(3, n_startup=20), metaopt.asha(3, eta=3)), 3)]
  oks = []
  for prog, dim in progs:
    state = jax.jit(prog.init)(jax.random.key(0))
    told = jax.jit(prog.tell)(state, jnp.full((6, dim), 0.5), jnp.zeros(6),
                              jnp.full(6, COMPLETE, jnp.int32))
    for st in (state, told):
      for seed, n in ((0, 1), (1000, 16), (2**31 - 1, 7)):
        key = loop.root_keys(seed)[1]
        want = jax.jit(prog.startup_ask, static_argnums=2)(st, key, n)
        n_xla = sum(XLA.values())
        got = prog.startup_host(st, key, n)
        assert sum(XLA.values()) == n_xla, dict(XLA)
        assert got[1].dtype == np.float32 and got[1].shape == want[1].shape == (n, dim)
        np.testing.assert_array_equal(np.asarray(want[1]).view(np.uint32),
                                      got[1].view(np.uint32))
        assert bool(got[2]) == bool(want[2])
        oks.append(bool(got[2]))
        jax.tree_util.tree_map(np.testing.assert_array_equal, want[0], got[0])
  assert True in oks and False in oks  # tpe(5, n_startup=4) told 6: the model's turn
  with jax.default_prng_impl("rbg"):
    assert progs[0][0].startup_host(state, jax.random.key(0), 3) is None


def test_the_first_chunk_compiles_in_the_background_into_the_same_trials(monkeypatch):
  # the population chunk compiles on a background thread while the first ask and init
  # compile on the caller's; the chunk's call finds it compiled: once, nothing compiled
  # twice, and the trials equal those of the search that compiles it on the caller's thread
  # meanwhile the loop compiles the observer on zeros shaped as the chunk's metrics.
  # Both searches are cold (nothing compiled before, JAX's own caches too): each compiles at
  # most six programs (the searcher's init, decode, observe and tell, the population init and
  # the chunk); no PRNG op compiles on its own (the search's keys are made on the host), nor
  # the startup ask (its points too), nor the task's optimizer-name check
  runs, warmed, zeros = {}, [], []
  warm, first = loop.warm_observe, evaluators.TaskEvaluator.first_metrics
  monkeypatch.setattr(loop, "warm_observe", lambda *a: warmed.append(warm(*a)) or warmed[-1])
  monkeypatch.setattr(evaluators.TaskEvaluator, "first_metrics",
                      lambda self, b: zeros.append(first(self, b)) or zeros[-1])
  for background in (False, True):
    monkeypatch.setattr(evaluators, "BACKGROUND_COMPILE", background)
    jax.clear_caches()
    compile_cache.clear()
    XLA.clear()
    ON_MAIN.clear()
    warmed.clear()
    runs[background] = (_search(seed=3, study=f"bg{background}"), dict(XLA), dict(ON_MAIN),
                        list(warmed))
  (seq, seq_xla, seq_main, seq_warm), (bg, bg_xla, bg_main, bg_warm) = runs[False], runs[True]
  eager = {"jit(_threefry_split)", "jit(_threefry_fold_in)", "jit(_threefry_seed)",
           "jit(unstack)", "jit(stage)", "jit(search_keys)", "jit(fold_in)", "jit(key)"}
  for xla in (seq_xla, bg_xla):
    assert not eager & set(xla), xla
    assert "jit(startup_ask)" not in xla, xla
    assert sum(xla.values()) <= 6, xla
  assert seq_warm == [False] * 3 and bg_warm == [True, False, False]  # first round only
  assert bg_xla["jit(observe)"] == 1 and bg_main["jit(observe)"] == 1
  real = bg.trials[0].metrics[0]
  got = next(z for z in zeros if z is not None)
  assert set(got) <= set(real) and {"train_loss", "valid_accuracy", "nonfinite_loss"} <= set(got)
  assert all(np.shape(v) == np.shape(real[k]) for k, v in got.items())
  assert _rows(bg) == _rows(seq)
  curves = lambda res: [[(m["epoch"] if "epoch" in m else None, m["train_loss"],
                          m["valid_accuracy"]) for m in t.metrics] for t in res.trials]
  assert curves(bg) == curves(seq) and sum(map(len, curves(seq))) > 12
  assert all(n <= seq_xla.get(f, 0) for f, n in bg_xla.items()), (bg_xla, seq_xla)
  assert bg_xla["jit(loop_chunk)"] == seq_xla["jit(loop_chunk)"] == 1
  assert seq_main["jit(loop_chunk)"] == 1 and bg_main["jit(loop_chunk)"] == 0


def test_no_background_compile_where_the_first_kernel_depends_on_what_is_asked():
  task = get_task("digits_mlp")
  ev = evaluators.TaskEvaluator(task, batch_size=256)
  space = metaopt.spaces.Space({**task.space.params,
                                "optimizer": metaopt.spaces.Choice(["adamw", "sgd"],
                                                                   structural=True)})
  assert not ev.precompile(space, 4)  # one kernel per optimizer: known after the ask
  vmapped = evaluators.TaskEvaluator(task, batch_size=256, kernel_mode="vmap",
                                     group_switches="always")
  assert "activation" in task.switches and not vmapped.precompile(task.space, 4)
  assert not ev._pending and not vmapped._pending


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
  assert key(_closure(0.0, 2)) != key(_closure(-0.0, 2))  # 0.0 == -0.0, yet sin(x) * c differs
  assert key(_closure(float("nan"), 2)) == key(_closure(float("nan"), 2))
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
  # a user's step closing over an optax optimizer: the library's closures are named, but the
  # numbers they hold count (a re-run with another learning rate is another computation)
  assert key(_optax_step(1e-3)) == key(_optax_step(1e-3))
  assert key(_optax_step(1e-3)) != key(_optax_step(1e-2))
  assert key(_optax_step(optax.cosine_decay_schedule(1e-3, 100))) != key(
      _optax_step(optax.cosine_decay_schedule(1e-3, 200)))


def _optax_step(lr):
  opt = optax.adamw(lr, weight_decay=1e-4)

  def step(params, grads, state):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def test_a_cached_function_is_built_once():
  built = []

  def build():
    built.append(1)
    return jax.jit(lambda x: x + 1)

  f = compile_cache.cached(build, "test-once", _closure(0.5, 1))
  g = compile_cache.cached(build, "test-once", _closure(0.5, 1))
  h = compile_cache.cached(build, "test-once", _closure(0.25, 1))
  assert f is g and h is not f and len(built) == 2
  other = compile_cache.cached(build, "test-other", _closure(0.5, 1))
  compile_cache.clear(keep="test-once")  # all but the entries named "test-once"
  assert compile_cache.cached(build, "test-once", _closure(0.5, 1)) is f and len(built) == 3
  assert compile_cache.cached(build, "test-other", _closure(0.5, 1)) is not other
  assert len(built) == 4


def test_what_cannot_be_fingerprinted_is_not_cached(monkeypatch):
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


def _jitted(i: int):
  return jax.jit(lambda x: jnp.tanh(x * i).sum() + jnp.cumsum(x)[-1] * i)


def test_the_cache_stays_bounded_and_frees_what_it_drops(monkeypatch):
  """At most MAX_ENTRIES functions are kept (least recently used go first); above
  MAX_MAP_FRACTION of the process's mapping limit the older half goes; clear() drops all,
  and the executables of what is dropped are freed (their code pages unmapped)."""
  import weakref

  metaopt.clear_compile_cache()
  monkeypatch.setattr(compile_cache, "MAX_ENTRIES", 4)
  refs = []
  for i in range(10):
    f = compile_cache.cached(lambda i=i: _jitted(i), "bounded", i)
    f(jnp.ones(7)).block_until_ready()
    refs.append(weakref.ref(f))
    assert metaopt.compile_cache_info()["entries"] <= 4
  del f
  import gc

  gc.collect()
  assert [r() is not None for r in refs] == [False] * 6 + [True] * 4  # the last 4 are kept
  assert compile_cache.cached(lambda: _jitted(9), "bounded", 9) is refs[9]()  # a hit
  info = metaopt.compile_cache_info()
  assert info["entries"] == 4 and info["evicted"] >= 6 and info["max_entries"] == 4
  if info["map_limit"] is not None:  # Linux: the mapping guard
    before = info["mappings"]
    metaopt.clear_compile_cache()
    assert all(r() is None for r in refs) and metaopt.compile_cache_info()["entries"] == 0
    assert metaopt.compile_cache_info()["mappings"] < before  # executables unmapped
    monkeypatch.setattr(compile_cache, "MAX_MAP_FRACTION", 0.0)  # always "too many"
    for i in range(3):
      compile_cache.cached(lambda i=i: _jitted(i), "bounded", i)
      assert metaopt.compile_cache_info()["entries"] == 0
