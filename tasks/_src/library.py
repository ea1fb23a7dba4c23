"""The built-in tasks and the task registry.

* ``digits_mlp``: MLP classifier on scikit-learn's digits (flattened 8x8). ``width`` is
  *masked*: weights are allocated at the space's upper bound and units past ``width`` are
  zeroed, so width stays a traced value and a whole population shares one kernel. ``depth``
  and ``optimizer`` are *structural*: the engine compiles one kernel per value.
* ``wine_mlp``, ``breast_cancer_mlp``: the same MLP on the other bundled tabular datasets.
  All MLP tasks also take the structural ``norm`` (masked layer norm) and ``residual``.
* ``digits_cnn``: a small Flax CNN on digits as 8x8x1 images.
* ``synthetic_regression``: MLP regression on a procedural dataset (objective: valid MSE).
* ``logreg``: L2-regularised multinomial logistic regression (convex; the L2 strength
  ``l2`` enters the loss, so it is differentiable for hypergradient checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spaces import Choice, Float, Int, Space
from tasks._src import base
from tasks._src.base import H, Task, TrialFns
from tasks._src.data import load_dataset


class MaskedLayerNorm(nn.Module):
  """Layer normalisation over the live (unmasked) units only."""

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mu = jnp.sum(x * mask, -1, keepdims=True) / n
    var = jnp.sum(jnp.square(x - mu) * mask, -1, keepdims=True) / n
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return (x - mu) * jax.lax.rsqrt(var + 1e-5) * scale + bias


class MLP(nn.Module):
  """Dense network with a traced hidden width (masked up to ``max_width``) and activation.

  ``norm`` adds layer normalisation before each hidden activation; ``residual`` adds skip
  connections around the hidden layers after the first (both structural).
  """

  max_width: int
  depth: int
  outputs: int
  norm: bool = False
  residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    width = h.get("width", self.max_width)
    mask = (jnp.arange(self.max_width) < width).astype(x.dtype)
    act = h.get("activation", 0)
    for i in range(self.depth):
      z = nn.Dense(self.max_width)(x)
      if self.norm:
        z = MaskedLayerNorm()(z, mask)
      z = base.activation(act, z) * mask
      x = x + z if self.residual and i > 0 else z
    return nn.Dense(self.outputs)(x)


def _mask_width(max_width: int) -> Callable:
  """Zeroes weights of units past ``width`` and rescales fan-in to the live width.

  Also applies the initializer hyperparameters ``init_scale`` (multiplies every initial
  kernel, default 1) and ``bias_init`` (initial value of hidden biases, default 0).
  """

  def transform(params, h: H):
    width = jnp.asarray(h.get("width", max_width))
    unit = (jnp.arange(max_width) < width).astype(jnp.float32)
    scale = jnp.sqrt(max_width / width.astype(jnp.float32))
    init_scale = jnp.asarray(h.get("init_scale", 1.0), jnp.float32)
    bias_init = jnp.asarray(h.get("bias_init", 0.0), jnp.float32)
    layers = params["params"]
    names = sorted((n for n in layers if n.startswith("Dense_")),
                   key=lambda n: int(n.split("_")[-1]))
    live = {n: jax.tree_util.tree_map(jnp.ones_like, v) for n, v in layers.items()
            if not n.startswith("Dense_")}  # layer-norm scales and biases
    new = {n: v for n, v in layers.items() if not n.startswith("Dense_")}
    for i, name in enumerate(names):
      k = layers[name]["kernel"]
      in_mask = unit[:, None] if i > 0 else jnp.ones((k.shape[0], 1))
      out_mask = unit[None, :] if i < len(names) - 1 else jnp.ones((1, k.shape[1]))
      m_k = in_mask * out_mask
      m_b = out_mask[0]
      k = k * m_k * (scale if i > 0 else 1.0) * init_scale
      b = layers[name]["bias"] + (bias_init if i < len(names) - 1 else 0.0)
      new[name] = {"kernel": k, "bias": b * m_b}
      live[name] = {"kernel": m_k, "bias": m_b}
    return {"params": new}, {"params": live}

  return transform


class CNN(nn.Module):
  """Two 3x3 conv layers, global average pooling and a dense head."""

  channels: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    act = h.get("activation", 0)
    x = base.activation(act, nn.Conv(self.channels, (3, 3))(x))
    x = base.activation(act, nn.Conv(2 * self.channels, (3, 3), strides=(2, 2))(x))
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.outputs)(x)


class Linear(nn.Module):
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


def _example(data, batch: int = 2) -> jax.Array:
  return np.zeros((batch, *data.input_shape), np.float32)


def _mlp_space(max_lr: float, max_width: int) -> Space:
  """The default space of the MLP tasks: optimizer settings, masked width, activation."""
  return Space({
      "learning_rate": Float(1e-4, max_lr, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
      "width": Int(8, max_width, log=True),
      "activation": Choice(list(base.ACTIVATIONS[:4])),
  })


def _mlp_task(name: str, dataset: str, data_dir: str | None, max_width: int,
              max_lr: float) -> Task:
  data = load_dataset(dataset, data_dir)
  regression = data.num_classes is None
  space = _mlp_space(max_lr=max_lr, max_width=max_width)
  defaults = {"depth": 2, "optimizer": "adamw"}

  def build(structure: Mapping[str, Any]) -> TrialFns:
    depth = int(structure.get("depth", 2))
    opt = structure.get("optimizer", "adamw")
    if depth < 1:
      raise ValueError(f"depth={depth}: must be >= 1")
    model = MLP(max_width=max_width, depth=depth, outputs=1 if regression else data.num_classes,
                norm=bool(structure.get("norm", False)),
                residual=bool(structure.get("residual", False)))
    if regression:
      return base.supervised(model, _example(data), base.mse, base.regression_metrics, opt, {},
                             init_transform=_mask_width(max_width))
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, opt, {},
                           init_transform=_mask_width(max_width))

  objective, direction = ("mse", "minimize") if regression else ("accuracy", "maximize")
  return Task(name, data, space, build, objective, direction, defaults, "mlp")


def digits_mlp(data_dir: str | None = None, max_width: int = 128) -> Task:
  """MLP on digits; see module docstring for masked vs structural parameters."""
  return _mlp_task("digits_mlp", "digits", data_dir, max_width, max_lr=3e-1)


def wine_mlp(data_dir: str | None = None, max_width: int = 64) -> Task:
  """MLP classifier on scikit-learn's wine (13 features, 3 classes)."""
  return _mlp_task("wine_mlp", "wine", data_dir, max_width, max_lr=3e-1)


def breast_cancer_mlp(data_dir: str | None = None, max_width: int = 64) -> Task:
  """MLP classifier on scikit-learn's breast cancer (30 features, 2 classes)."""
  return _mlp_task("breast_cancer_mlp", "breast_cancer", data_dir, max_width, max_lr=3e-1)


def digits_cnn(data_dir: str | None = None, channels: int = 16) -> Task:
  """Small CNN on digits as 8x8x1 images."""
  data = load_dataset("digits", data_dir)
  space = Space({
      "learning_rate": Float(1e-4, 1e-1, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
      "activation": Choice(list(base.ACTIVATIONS[:4])),
  })

  def build(structure: Mapping[str, Any]) -> TrialFns:
    model = CNN(channels=int(structure.get("channels", channels)), outputs=data.num_classes)
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, structure.get("optimizer", "adamw"), {})

  return Task("digits_cnn", data, space, build, "accuracy", "maximize", {}, "cnn")


def synthetic_regression(data_dir: str | None = None, max_width: int = 64) -> Task:
  """MLP regression on the procedural dataset; objective is validation MSE."""
  return _mlp_task("synthetic_regression", "synthetic_regression", data_dir, max_width,
                   max_lr=1e-1)


def logreg(data_dir: str | None = None, dataset: str = "breast_cancer") -> Task:
  """L2-regularised logistic regression; ``l2`` multiplies ``0.5 * ||W||^2`` in the loss."""
  data = load_dataset(dataset, data_dir)
  space = Space({
      "learning_rate": Float(1e-3, 1.0, log=True),
      "l2": Float(1e-6, 1.0, log=True),
  })
  model = Linear(outputs=data.num_classes)

  def penalty(params, h: H) -> jax.Array:
    w = params["params"]["Dense_0"]["kernel"]
    return 0.5 * jnp.asarray(h.get("l2", 0.0), jnp.float32) * jnp.sum(jnp.square(w))

  def build(structure: Mapping[str, Any]) -> TrialFns:
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, structure.get("optimizer", "sgd"),
                           {"momentum": 0.0}, penalty=penalty)

  return Task("logreg", data, space, build, "accuracy", "maximize", {}, "linear")


TASKS: dict[str, Callable[..., Task]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
    "wine_mlp": wine_mlp,
    "breast_cancer_mlp": breast_cancer_mlp,
    "synthetic_regression": synthetic_regression,
    "logreg": logreg,
}


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds a registered task by name, or the task at an import path ``"module:attr"`` (a
  :class:`Task` or a factory called with ``kwargs``, e.g. one made by ``tasks.from_flax``)."""
  if isinstance(name, str) and ":" in name:
    from tasks._src.custom import import_task
    return import_task(name, **kwargs)
  if name not in TASKS:
    raise ValueError(f"task {name!r} is unknown; allowed: {', '.join(TASKS)}, or an import "
                     "path 'my_module:my_task'")
  return TASKS[name](**kwargs)


def register_task(name: str, factory: Callable[..., Task]) -> None:
  """Adds a task factory to the registry (``run.py`` and configs find it by name)."""
  TASKS[name] = factory

