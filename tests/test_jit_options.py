"""XLA compiler options a newer (or older) jaxlib refuses are dropped, not fatal."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt._src import jit_options, loop
from metaopt._src import population as pop
from metaopt.tasks import get_task

BOGUS = "xla_metaopt_test_no_such_option"


@pytest.fixture(autouse=True)
def fresh_rejections(monkeypatch):
  monkeypatch.setattr(jit_options, "REJECTED", set())


def test_xla_refuses_an_unknown_option_with_plain_jit():
  # the failure the fallback exists for (if XLA ever accepted unknown options, the test
  # below would pass without exercising anything)
  with pytest.raises(jax.errors.JaxRuntimeError, match=BOGUS):
    jax.jit(lambda x: x + 1, compiler_options={BOGUS: False})(jnp.ones(3))


def test_a_refused_option_is_dropped_once_for_the_process():
  f = lambda x, n: jnp.sin(x) * n  # noqa: E731
  x = jnp.linspace(0.0, 1.0, 5)
  want = jax.jit(f, static_argnums=1)(x, 3)
  opts = {**pop.FAST_COMPILE, BOGUS: False}
  a = jit_options.OptionsJit(f, opts, static_argnums=1)
  with pytest.warns(RuntimeWarning, match=BOGUS):
    got = a(x, 3)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert jit_options.REJECTED == {BOGUS} and a.options == pop.FAST_COMPILE
  # another function with the option compiles without it, without trying (no warning)
  b = jit_options.OptionsJit(f, opts, static_argnums=1)
  assert b.options == pop.FAST_COMPILE
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    np.testing.assert_allclose(b(x, 3), want, rtol=1e-6)
    # lower().compile() (how the chunks compile) takes the same fallback
    exe = jit_options.OptionsJit(f, opts, static_argnums=1).lower(x, 3).compile()
  np.testing.assert_allclose(exe(x), want, rtol=1e-6)


def test_lower_then_compile_drops_a_refused_option():
  c = pop._Chunk(jit_options.OptionsJit(lambda x: x * 2.0, {BOGUS: 1}))
  with pytest.warns(RuntimeWarning, match=BOGUS):
    out = c(jnp.arange(4.0))
  np.testing.assert_array_equal(out, np.arange(4.0) * 2)
  assert BOGUS in jit_options.REJECTED
  # the lowered object still answers jax's own questions (cost analysis, text)
  low = jit_options.OptionsJit(lambda x: x @ x, {}).lower(jnp.ones((3, 3)))
  assert "dot" in low.as_text()


def test_other_errors_are_not_swallowed():
  bad = jit_options.OptionsJit(lambda x: x + 1, {"xla_backend_optimization_level": 0})
  with pytest.raises(TypeError):
    bad("not an array")
  assert not jit_options.REJECTED


def test_searcher_functions_run_when_xla_refuses_their_option(monkeypatch):
  # a jaxlib without XLA's older fusion emitters: the searcher's functions still compile,
  # to the values the other build gives
  task = get_task("digits_mlp")
  u = np.random.default_rng(0).random((64, task.space.dim)).astype(np.float32)
  want = jax.device_get(pop.fast_jit(task.space.decode)(u))
  monkeypatch.setattr(loop, "SEARCHER_COMPILE_CPU", {BOGUS: False})
  with pytest.warns(RuntimeWarning, match=BOGUS):
    got = jax.device_get(loop.searcher_jit(task.space.decode)(u))
  for name, v in want.items():
    np.testing.assert_array_equal(got[name], v, err_msg=name)
