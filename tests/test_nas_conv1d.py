"""The 1-D cell space (``conv1d_space``) and its ops on MNIST-1D-shaped signals."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt import nas
from metaopt.spaces import CONV1D_OPS, Genotype, conv1d_space
from metaopt.tasks._src.nas_models import Op

SPACE = conv1d_space()
X = jax.random.normal(jax.random.key(0), (2, 40, 1, 4))  # two signals of length 40, 4 channels


class Conv1DOpTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_ops_keep_the_shape_and_act_along_the_signal_only(self):
    for name in CONV1D_OPS:
      op = Op(name, 4)
      p = op.init(jax.random.key(1), X)
      f = self.variant(lambda p, x, op=op: op.apply(p, x))
      y = f(p, X)
      chex.assert_shape(y, X.shape)
      chex.assert_tree_all_finite(y)
      if name == "none":
        np.testing.assert_array_equal(y, 0)
      elif name == "skip_connect":
        np.testing.assert_array_equal(y, X)
      # a change at position 20 of the signal moves only outputs within the op's reach
      reach = {"conv_k3": 1, "conv_k5": 2, "dil_conv_k3": 2, "max_pool_k3": 1,
               "avg_pool_k3": 1}.get(name)
      if reach is not None:
        x2 = X.at[:, 20].add(5.0)
        d = np.abs(np.asarray(f(p, x2)) - np.asarray(y)).max(axis=(0, 2, 3))
        if name.startswith("conv") or name.startswith("dil"):  # the norm spreads a change
          assert d[20] > 0
        else:
          assert d[20] > 0 and np.all(d[:20 - reach] == 0) and np.all(d[21 + reach:] == 0)

  def test_conv_taps_match_a_direct_1d_convolution(self):
    for name, k, dil in (("conv_k3", 3, 1), ("conv_k5", 5, 1), ("dil_conv_k3", 3, 2)):
      op = Op(name, 4, use_norm=False)
      p = op.init(jax.random.key(2), X)
      kern = jax.tree_util.tree_leaves(p)[0]  # (k, 1, in, out)
      chex.assert_shape(kern, (k, 1, 4, 4))
      xr = np.maximum(np.asarray(X[:, :, 0, :]), 0)
      pad = dil * (k // 2)
      xp = np.pad(xr, ((0, 0), (pad, pad), (0, 0)))
      want = sum(np.einsum("nlc,cd->nld", xp[:, j * dil:j * dil + 40], np.asarray(kern[j, 0]))
                 for j in range(k))
      np.testing.assert_allclose(op.apply(p, X)[:, :, 0, :], want, rtol=1e-4, atol=1e-5)


def test_conv1d_space_cells_derivation_and_rejects_unknown_ops():
  assert SPACE.num_edges == 6 and SPACE.ops == CONV1D_OPS
  rng = np.random.default_rng(0)
  for _ in range(5):
    g = SPACE.random(rng)
    assert SPACE.decode(SPACE.encode(g)) == g
  # logits favouring 'none' everywhere: the derivation rule keeps the strongest real op
  alpha = {"normal": jnp.zeros((6, len(CONV1D_OPS))).at[:, 0].set(5.0).at[:, 3].set(1.0)}
  g = nas.canonical(SPACE, nas.derive(SPACE, alpha))
  assert g == Genotype(tuple(("conv_k5", s, t) for s, t in SPACE.edges))
  with pytest.raises(ValueError, match="ops"):
    conv1d_space(("none", "conv_k7"))


def test_mnist1d_served_as_signals_for_the_cell_network():
  data = nas.load_nas_dataset("mnist1d")
  assert data.input_shape == (40, 1, 1) and data.num_classes == 10
  sp = conv1d_space(("none", "skip_connect", "conv_k3"))
  net = nas.build_model(sp, {"features": 4, "n_cells": 1, "stages": 1, "stem_stride": 2,
                             "partial_k": 1}, 10)
  w = sp.to_weights(sp.random(np.random.default_rng(1)))
  p = net.init(jax.random.key(0), data.train.x[:2], w)
  chex.assert_shape(net.apply(p, data.train.x[:3], w), (3, 10))


@pytest.mark.parametrize("model,field", [({"head": "max"}, "model.head"),
                                         ({"stages": 2}, "model.stages")])
def test_conv1d_config_rejects_bad_model_fields(model, field):
  cfg = {"program": "nas", "name": "c1", "dataset": "mnist1d", "space": "conv1d",
         "model": {"stages": 1, "head": "flatten", **model}}
  assert nas.parse_config({**cfg, "model": {"stages": 1, "head": "flatten"}}).model["head"] == (
      "flatten")
  with pytest.raises(ValueError, match=field):
    nas.parse_config(cfg)
