"""BBOB functions against COCO's values (through ``ioh``, a C++ port of COCO's suite)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt import BBOB_GROUPS, bbob_function, bbob_instance, bbob_problem

ioh = pytest.importorskip("ioh", reason="ioh (the reference BBOB implementation) not installed")


def _reference(fid, dim, instance):
  return ioh.get_problem(fid, instance, dim, ioh.ProblemClass.BBOB)


@pytest.mark.parametrize("fid", range(1, 25))
def test_bbob_values_match_coco_in_float64(fid):
  """Random points in [-6, 6]^d (the penalties outside [-5, 5] included) and the optimum,
  (d, instance) in (2, 1), (5, 7), (20, 1): same xopt, fopt and values to 1e-9 (relative)."""
  rng = np.random.default_rng(fid)
  with jax.enable_x64(True):
    for dim, instance in ((2, 1), (5, 7), (20, 1)):
      ref = _reference(fid, dim, instance)
      mine = bbob_instance(fid, dim, instance)
      np.testing.assert_allclose(mine["xopt"], ref.optimum.x, atol=1e-9)
      assert mine["fopt"] == pytest.approx(ref.optimum.y, abs=1e-12)
      x = np.concatenate([rng.uniform(-5, 5, (6, dim)), rng.uniform(-6, 6, (2, dim)),
                          np.asarray(ref.optimum.x)[None]])
      want = np.asarray([ref(list(xi)) for xi in x])
      got = np.asarray(bbob_function(fid, dim, instance)(jnp.asarray(x)))
      assert got.dtype == np.float64
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
      assert got[-1] == pytest.approx(mine["fopt"], abs=1e-8)


def test_bbob_float32_jit_and_the_unit_cube():
  """float32 (jitted) agrees with the reference to float32 accuracy; the cube wrapper maps
  u to x = 10 u - 5 and its minimum is fopt at (xopt + 5) / 10."""
  rng = np.random.default_rng(0)
  for fid in (8, 21):
    ref = _reference(fid, 5, 3)
    x = rng.uniform(-5, 5, (16, 5))
    want = np.asarray([ref(list(xi)) for xi in x])
    f = jax.jit(bbob_function(fid, 5, 3))
    got = np.asarray(f(jnp.asarray(x, jnp.float32)))
    assert got.dtype == np.float32
    assert np.all(np.abs(got - want) <= 2e-3 * np.maximum(1.0, np.abs(want))), (fid, got, want)
    p = bbob_problem(fid, 5, 3)
    u = (x + 5.0) / 10.0
    np.testing.assert_allclose(p.fn(jnp.asarray(u, jnp.float32)), got, rtol=1e-4)
    u_opt = (bbob_instance(fid, 5, 3)["xopt"] + 5.0) / 10.0
    assert float(p.fn(jnp.asarray(u_opt, jnp.float32))) == pytest.approx(p.minimum, abs=1e-2)


def test_bbob_groups_and_bad_arguments():
  assert sorted(f for g in BBOB_GROUPS.values() for f in g) == list(range(1, 25))
  assert metaopt.bbob_function is bbob_function
  for kwargs, name in (({"fid": 25, "dim": 2}, "fid"), ({"fid": 1, "dim": 1}, "dim"),
                       ({"fid": 1, "dim": 2, "instance": 0}, "instance")):
    with pytest.raises(ValueError, match=f"^{name}="):
      bbob_function(**kwargs)
