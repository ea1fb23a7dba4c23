"""Training many networks in one kernel: retraining derived cells and masked populations.

``train_networks`` trains ``n`` members as ``jit(vmap(epoch))``: either one derived
(discrete) network over several seeds, or a masked supernet over a population of
genotypes (one-hot mixing weights, so each member computes exactly its own cell). Adam with
decoupled weight decay and a cosine learning rate; validation accuracy every epoch; the test
split is evaluated once, after the last epoch. Members with the same seed see the same data
order, so architectures trained together are trained identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt._src import compile_cache
from metaopt.tasks import Dataset, Network


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """``(steps, batch_size)`` row indices: reshuffled passes over ``n`` rows."""
  rng = np.random.default_rng(seed)
  reps = -(-steps * batch_size // n)
  idx = np.concatenate([rng.permutation(n) for _ in range(reps)])
  return idx[:steps * batch_size].reshape(steps, batch_size)


def _accuracy(model, params, w, x, y, chunk: int = 512):
  accs = []
  for i in range(0, x.shape[0], chunk):
    xb = x[i:i + chunk]
    logits = model.apply(params, xb) if w is None else model.apply(params, xb, w)
    accs.append(jnp.sum(jnp.argmax(logits, -1) == y[i:i + chunk]))
  return sum(accs) / x.shape[0]


def train_networks(model: Network, data: Dataset, seeds: Sequence[int],
                   weights: dict[str, Any] | None = None, *, epochs: int = 5,
                   batch_size: int = 64, lr: float = 3e-3, wd: float = 1e-4,
                   test: bool = True,
                   on_epoch: Callable[[int, Any, Any], Any] | None = None) -> dict[str, Any]:
  """Trains ``len(seeds)`` networks together; returns per-member curves and accuracies.

  Args:
    model: a derived ``Network`` (``weights=None``) or a supernet.
    data: train / valid / test splits.
    seeds: one per member (initialisation and data order).
    weights: with a supernet, mixing weights stacked over members (``[n, edges, ops]``).
    epochs, batch_size, lr, wd: the training budget (Adam-W, cosine schedule).
    test: evaluate the test split once at the end.
    on_epoch: ``(epoch, valid_acc[n], train_loss[n]) -> None``.

  Returns:
    ``valid_acc`` ``[n, epochs]``, ``train_loss`` ``[n, epochs]``, ``test_acc`` ``[n]``
    (if ``test``), ``seconds`` (training, compilation excluded) and ``compile_seconds``.
  """
  n = len(seeds)
  xt, yt = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
  xv, yv = jnp.asarray(data.valid.x), jnp.asarray(data.valid.y)
  steps = max(1, len(data.train) // batch_size)
  sched = optax.cosine_decay_schedule(lr, steps * epochs)
  opt = optax.adamw(sched, weight_decay=wd)
  apply = (lambda p, x, w: model.apply(p, x)) if weights is None else model.apply

  def init(seed, w):
    p = model.init(jax.random.key(seed), xt[:2], *(() if w is None else (w,)))
    return p, opt.init(p)

  def epoch(carry, w, idx):
    def step(c, ix):
      p, o = c
      def loss(p_):
        logits = apply(p_, xt[ix], w)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yt[ix]).mean()
      val, g = jax.value_and_grad(loss)(p)
      upd, o = opt.update(g, o, p)
      return (optax.apply_updates(p, upd), o), val
    carry, losses = jax.lax.scan(step, carry, idx)
    return carry, jnp.mean(losses), _accuracy(model, carry[0], w, xv, yv)

  w_axis = None if weights is None else 0
  seeds_arr = jnp.asarray(list(seeds), jnp.uint32)
  t0 = time.perf_counter()
  # compiled once per process for the same model, data, optimizer (the numbers its optax
  # closures hold: lr, wd, schedule) and argument shapes; see compile_cache
  same = (n, batch_size, steps, jax.tree_util.tree_map(
      lambda a: (np.shape(a), str(np.asarray(a).dtype)), weights))
  init_v = compile_cache.cached(lambda: jax.jit(jax.vmap(init, in_axes=(0, w_axis))),
                                "nas-train-init", init, *same)
  carry = init_v(seeds_arr, weights)
  idx0 = np.stack([batch_indices(len(data.train), batch_size, steps, s * 1000) for s in seeds])
  epoch_v = compile_cache.cached(lambda: jax.jit(jax.vmap(epoch, in_axes=(0, w_axis, 0))).lower(
      carry, weights, jnp.asarray(idx0)).compile(), "nas-train-epoch", epoch, *same)
  test_v = jax.jit(jax.vmap(lambda p, w: _accuracy(model, p[0], w, jnp.asarray(data.test.x),
                                                   jnp.asarray(data.test.y)),
                            in_axes=(0, w_axis)))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  vals, losses = [], []
  for e in range(epochs):
    idx = np.stack([batch_indices(len(data.train), batch_size, steps, s * 1000 + e)
                    for s in seeds])
    carry, tl, va = epoch_v(carry, weights, jnp.asarray(idx))
    vals.append(np.asarray(va))
    losses.append(np.asarray(tl))
    if on_epoch is not None:
      on_epoch(e, vals[-1], losses[-1])
  seconds = time.perf_counter() - t0
  out = {"valid_acc": np.stack(vals, 1), "train_loss": np.stack(losses, 1),
         "seconds": seconds, "compile_seconds": compile_s, "members": n, "params": carry[0]}
  if test:
    out["test_acc"] = np.asarray(test_v(carry, weights))
  return out
