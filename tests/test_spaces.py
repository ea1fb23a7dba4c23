"""Spaces: validation, encode/decode round trips (hypothesis), jit/vmap, conditionals."""

import chex
import hypothesis.strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from metaopt.spaces import Choice, Fixed, Float, Int, Space, from_spec, to_spec


def _space():
  return Space({
      "lr": Float(1e-5, 1.0, log=True),
      "momentum": Float(0.0, 0.99),
      "width": Int(8, 512, log=True),
      "depth": Int(1, 4, structural=True),
      "act": Choice(["relu", "tanh", "gelu"]),
      "opt": Choice(["adam", "sgd"]),
      "nesterov": Choice([False, True], when={"opt": ["sgd"]}),
      "eps": Fixed(1e-8),
  })


def test_dim_and_structural():
  s = _space()
  assert s.dim == 7
  assert s.structural == ["depth"]
  assert "eps" not in s.names


@pytest.mark.parametrize("bad, match", [
    (lambda: Space({"x": Float(1.0, 1.0)}), "'x': needs lo < hi"),
    (lambda: Space({"x": Float(0.0, 1.0, log=True)}), "'x': log=True needs lo > 0"),
    (lambda: Space({"x": Int(5, 2)}), "'x': needs lo <= hi"),
    (lambda: Space({"x": Int(0, 4, log=True)}), "'x': log=True needs lo > 0"),
    (lambda: Space({"x": Choice([])}), "'x': choices must not be empty"),
    (lambda: Space({"x": Choice(["a", "a"])}), "'x': choices must be distinct"),
    (lambda: Space({"x": Float(0, float("nan"))}), "'x': hi=nan must be a finite number"),
    (lambda: Space({"x": Float(0, 1), "y": Float(0, 1, when={"z": [1]})}),
     "'y': condition parent 'z' is not in the space"),
    (lambda: Space({"o": Choice(["a", "b"]), "y": Float(0, 1, when={"o": ["c"]})}),
     "'y': condition value 'c' is not one of 'o'"),
    (lambda: Space({"x": Float(0, 1, default=3.0)}), "'x': default=3.0 outside"),
    (lambda: Space({"1x": Float(0, 1)}), "must be a Python identifier"),
    (lambda: Space({"x": (0, 1)}), "'x': expected one of Float, Int, Choice, Fixed"),
    (lambda: Space({}), "non-empty dict"),
])
def test_validation_errors_name_the_parameter(bad, match):
  with pytest.raises(ValueError, match=match):
    bad()


@settings(max_examples=200, deadline=None)
@given(hst.lists(hst.floats(0.0, 1.0), min_size=7, max_size=7))
def test_decode_encode_decode_is_identity(u):
  s = _space()
  h = s.decode(jnp.asarray(u))
  py = s.to_python(h)
  u2 = s.encode(py)
  h2 = s.decode(jnp.asarray(u2))
  for k in h:
    if k == "nesterov" and py.get("opt") != "sgd":
      continue
    np.testing.assert_allclose(np.asarray(h[k]), np.asarray(h2[k]), rtol=2e-5)


@settings(max_examples=200, deadline=None)
@given(lr=hst.floats(1e-5, 1.0), m=hst.floats(0.0, 0.99), width=hst.integers(8, 512),
       depth=hst.integers(1, 4), act=hst.sampled_from(["relu", "tanh", "gelu"]))
def test_encode_decode_round_trips_values(lr, m, width, depth, act):
  s = _space()
  values = {"lr": lr, "momentum": m, "width": width, "depth": depth, "act": act, "opt": "adam"}
  back = s.to_python(s.decode(jnp.asarray(s.encode(values))))
  assert back["width"] == width and back["depth"] == depth and back["act"] == act
  np.testing.assert_allclose(back["lr"], lr, rtol=1e-5)
  np.testing.assert_allclose(back["momentum"], m, rtol=1e-5, atol=1e-6)
  assert "nesterov" not in back  # inactive under opt=adam
  assert back["eps"] == 1e-8


def test_int_log_uniform_covers_every_value_and_stays_in_bounds():
  s = Space({"w": Int(1, 10, log=True)})
  vals = np.asarray(s.decode(jnp.linspace(0, 1, 10001)[:, None])["w"])
  assert set(vals.tolist()) == set(range(1, 11))
  counts = np.bincount(vals)[1:]
  assert counts[0] > counts[-1]  # log scale favours small values


def test_choice_is_uniform_over_the_cube():
  s = Space({"c": Choice(list("abcde"))})
  vals = np.asarray(s.decode(((jnp.arange(10000) + 0.5) / 10000)[:, None])["c"])
  np.testing.assert_array_equal(np.bincount(vals), [2000] * 5)


class DecodeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_decode_batch_matches_single_and_vmap(self):
    s = _space()
    u = jax.random.uniform(jax.random.key(0), (16, s.dim))
    batch = self.variant(s.decode)(u)
    single = [s.decode(u[i]) for i in range(16)]
    vm = jax.vmap(s.decode)(u)
    for k in batch:
      assert batch[k].shape == (16,)
      np.testing.assert_allclose(np.asarray(batch[k]),
                                 np.stack([np.asarray(x[k]) for x in single]), rtol=1e-5)
      np.testing.assert_allclose(np.asarray(vm[k]), np.asarray(batch[k]), rtol=1e-5)


def test_conditional_inactive_takes_default_and_active_mask():
  s = _space()
  u = np.full(s.dim, 0.1)
  u[s.names.index("opt")] = 0.2   # adam
  u[s.names.index("nesterov")] = 0.9
  h = s.decode(jnp.asarray(u))
  assert int(h["nesterov"]) == 0 and not bool(s.active(h)["nesterov"])
  u[s.names.index("opt")] = 0.8   # sgd
  h = s.decode(jnp.asarray(u))
  assert int(h["nesterov"]) == 1 and bool(s.active(h)["nesterov"])
  assert s.to_python(h)["nesterov"] is True


def test_spec_round_trip_and_errors():
  s = _space()
  s2 = from_spec(to_spec(s))
  assert s2.names == s.names and s2.structural == s.structural
  u = jax.random.uniform(jax.random.key(1), (5, s.dim))
  for k, v in s.decode(u).items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(s2.decode(u)[k]))
  with pytest.raises(ValueError, match=r"space.lr.type='flt': allowed values are float"):
    from_spec({"lr": {"type": "flt", "lo": 0, "hi": 1}})
  with pytest.raises(ValueError, match=r"space.lr: unknown field\(s\) \['high'\]"):
    from_spec({"lr": {"type": "float", "lo": 0, "high": 1}})


def test_decode_rejects_wrong_dimension():
  with pytest.raises(ValueError, match="expected points with last axis 7"):
    _space().decode(jnp.zeros((3, 5)))


def test_float_values_print_without_float32_noise():
  f = Float(1e-4, 1e-1, log=True)
  for u in (0.1, 0.37, 0.9):
    v = f.decode(jnp.float32(u))
    p = f.to_python(v)
    assert np.float32(p) == v  # the same float32
    assert len(repr(p)) <= 14  # 0.0012882495, not 0.0012882495066151023
  assert f.to_python(0.1 + 1e-12) == 0.1 + 1e-12  # a float64 keeps every digit
