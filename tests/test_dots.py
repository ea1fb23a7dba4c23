"""canonical_dots: weight-gradient products in XLA:CPU's fast layout, same values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from metaopt._src import population as pop
from metaopt._src.dots import _leading_contraction, canonical_dots
from metaopt.tasks import get_task


def _dots(fun, *args):
  """(dimension numbers, leading contraction) of every dot_general, nested jaxprs included."""
  out = []

  def walk(jaxpr):
    for e in jaxpr.eqns:
      if e.primitive.name == "dot_general":
        out.append(_leading_contraction(e))
      for sub in pop._sub_jaxprs(e.params):
        walk(sub)
  walk(jax.make_jaxpr(fun)(*args).jaxpr)
  return out


class TestCanonicalDots(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_products_match_numpy(self):
    rng = np.random.default_rng(0)
    x, d = rng.normal(size=(32, 5)), rng.normal(size=(32, 7))
    a3 = rng.normal(size=(4, 3, 6))

    def f(x, d, a3):
      xtd = lax.dot_general(x, d, (((0,), (0,)), ((), ())))          # x^T d
      dtx = lax.dot_general(d, x, (((0,), (0,)), ((), ()))).T        # (d^T x)^T = x^T d
      c = lax.dot_general(a3, x[:4, :3], (((0, 1), (0, 1)), ((), ())))  # two contractions
      return xtd, dtx, c, x @ x.T

    g = self.variant(canonical_dots(f))
    xtd, dtx, c, xxt = g(jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32),
                         jnp.asarray(a3, jnp.float32))
    np.testing.assert_allclose(xtd, x.T @ d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dtx, x.T @ d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, np.einsum("ijk,ij->k", a3, x[:4, :3]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xxt, x @ x.T, rtol=1e-5, atol=1e-5)
    assert any(_dots(f, x, d, a3)) and not any(_dots(canonical_dots(f), x, d, a3))

  @chex.variants(with_jit=True, without_jit=True)
  def test_mlp_train_step_same_up_to_rounding(self):
    task = get_task("digits_mlp", max_width=16)
    fns = pop.fix_hparams(task.build({}), {"activation": 1})
    h = {k: v[0] for k, v in task.space.decode(
        jax.random.uniform(jax.random.key(0), (1, task.space.dim))).items()}
    h.pop("activation")
    data = pop.data_arrays(task.data)
    batch = (data["x_train"][:32], data["y_train"][:32])
    state = jax.jit(fns.init)(jax.random.key(0), h)
    assert any(_dots(fns.train_step, state, batch, h))  # weight gradients on the slow path
    assert not any(_dots(canonical_dots(fns.train_step), state, batch, h))
    want = jax.jit(fns.train_step)(state, batch, h)
    got = self.variant(canonical_dots(fns.train_step))(state, batch, h)
    chex.assert_trees_all_equal_structs(got, want)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["loop", pytest.param("vmap", marks=pytest.mark.slow)])
def test_kernel_chunk_matches_plain_step(monkeypatch, mode):
  task = get_task("digits_mlp", max_width=16)
  fns, n = task.build({}), 4
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  h["activation"] = jnp.arange(n, dtype=jnp.int32) % 4
  data = pop.data_arrays(task.data)
  keys = jax.random.split(jax.random.key(1), n)
  out = {}
  for canon in (False, True):
    monkeypatch.setattr(pop, "CANONICAL_DOTS", canon)
    k = pop.make_kernel(fns, 32 * 8, 32, mode=mode)
    out[canon] = k.chunk(k.init(keys, h), h, jnp.ones(n, bool), jax.random.key(2), data)
  # 8 AdamW steps: float rounding of the reordered sums grows a little, flags stay exact
  chex.assert_trees_all_close(out[True], out[False], rtol=1e-4, atol=1e-5)
  for k in out[True][1]:
    if k.startswith("nonfinite"):
      np.testing.assert_array_equal(out[True][1][k], out[False][1][k])
