"""The built-in tasks and the task registry.

* ``digits_mlp``: MLP classifier on scikit-learn's digits (flattened 8x8). ``width`` is
  *masked*: weights are allocated at the space's upper bound and units past ``width`` are
  zeroed, so width stays a traced value and a whole population shares one kernel. ``depth``
  and ``optimizer`` are *structural*: the engine compiles one kernel per value.
* ``wine_mlp``, ``breast_cancer_mlp``: the same MLP on the other bundled tabular datasets.
  All MLP tasks also take the structural ``norm`` (masked layer norm) and ``residual``.
* ``digits_cnn``: a small Flax CNN on digits as 8x8x1 images (reads ``init_scale`` and
  ``bias_init`` as the MLPs do; no width, depth, norm or residual).

Every task declares the parameters it reads (``Task.reads``): a search whose space sets any
other fails before compiling.
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

from metaopt.spaces import Choice, Float, Int, Space
from metaopt.tasks._src import base
from metaopt.tasks._src.base import H, Task, TrialFns
from metaopt.tasks._src.data import Dataset, resolve_dataset


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


def _init_scale_bias(params, h: H):
  """The initializer hyperparameters of a network whose last kernel is its head:
  ``init_scale`` multiplies every initial kernel (default 1), ``bias_init`` is added to the
  hidden layers' initial biases (default 0). No mask (every parameter is live)."""
  init_scale = jnp.asarray(h.get("init_scale", 1.0), jnp.float32)
  bias_init = jnp.asarray(h.get("bias_init", 0.0), jnp.float32)
  head = base.output_layer_mask(params)

  def one(path, v, m):
    key = getattr(path[-1], "key", None)
    if key == "kernel":
      return v * init_scale.astype(v.dtype)
    if key == "bias":
      return v + (bias_init * (1.0 - m)).astype(v.dtype)
    return v

  return jax.tree_util.tree_map_with_path(one, params, head), None


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


DATA_KINDS = ("any", "classify", "image", "signal")


def _data(task: str, dataset: Any, data_dir: str | None, kind: str = "any") -> Dataset:
  """The task's dataset (see ``tasks.resolve_dataset``), checked against what its model takes:
  ``"any"`` input shape, classification or regression; ``"classify"``: class labels;
  ``"image"``: class labels and ``(H, W, C)`` inputs; ``"signal"``: class labels and 1-D
  ``(L,)`` or ``(L, 1)`` inputs."""
  data = resolve_dataset(dataset, data_dir)
  shape = data.input_shape
  if kind != "any" and data.num_classes is None:
    raise ValueError(f"dataset={data.name!r}: {task} is a classifier and needs integer class "
                     "labels; this dataset has float targets (regression)")
  if kind == "image" and len(shape) != 3:
    raise ValueError(f"dataset={data.name!r}: {task} needs images of shape (H, W, C); its "
                     f"inputs have shape {shape}")
  if kind == "signal" and not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
    raise ValueError(f"dataset={data.name!r}: {task} needs 1-D signals of shape (L,) or (L, 1); "
                     f"its inputs have shape {shape}")
  return data


MLP_READS = base.SUPERVISED_READS | {"width", "activation", "init_scale", "bias_init", "depth",
                                     "norm", "residual"}


def _mlp_task(name: str, dataset: Any, data_dir: str | None, max_width: int,
              max_lr: float) -> Task:
  data = _data(name, dataset, data_dir)
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
  return Task(name, data, space, build, objective, direction, defaults, "mlp",
              reads=MLP_READS)


def digits_mlp(data_dir: str | None = None, max_width: int = 128,
               dataset: Any = "digits") -> Task:
  """MLP on digits; see module docstring for masked vs structural parameters."""
  return _mlp_task("digits_mlp", dataset, data_dir, max_width, max_lr=3e-1)


def wine_mlp(data_dir: str | None = None, max_width: int = 64,
             dataset: Any = "wine") -> Task:
  """MLP classifier on scikit-learn's wine (13 features, 3 classes)."""
  return _mlp_task("wine_mlp", dataset, data_dir, max_width, max_lr=3e-1)


def breast_cancer_mlp(data_dir: str | None = None, max_width: int = 64,
                      dataset: Any = "breast_cancer") -> Task:
  """MLP classifier on scikit-learn's breast cancer (30 features, 2 classes)."""
  return _mlp_task("breast_cancer_mlp", dataset, data_dir, max_width, max_lr=3e-1)


def digits_cnn(data_dir: str | None = None, channels: int = 16, dataset: Any = "digits") -> Task:
  """Small CNN on digits as 8x8x1 images (or on any image ``dataset``)."""
  data = _data("digits_cnn", dataset, data_dir, "image")
  space = Space({
      "learning_rate": Float(1e-4, 1e-1, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
      "activation": Choice(list(base.ACTIVATIONS[:4])),
  })

  def build(structure: Mapping[str, Any]) -> TrialFns:
    model = CNN(channels=int(structure.get("channels", channels)), outputs=data.num_classes)
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, structure.get("optimizer", "adamw"), {},
                           init_transform=_init_scale_bias)

  return Task("digits_cnn", data, space, build, "accuracy", "maximize", {}, "cnn",
              reads=base.SUPERVISED_READS | {"activation", "channels", "init_scale",
                                             "bias_init"})


def synthetic_regression(data_dir: str | None = None, max_width: int = 64,
                         dataset: Any = "synthetic_regression") -> Task:
  """MLP regression on the procedural dataset; objective is validation MSE."""
  return _mlp_task("synthetic_regression", dataset, data_dir, max_width,
                   max_lr=1e-1)


def logreg(data_dir: str | None = None, dataset: Any = "breast_cancer") -> Task:
  """L2-regularised logistic regression; ``l2`` multiplies ``0.5 * ||W||^2`` in the loss."""
  data = _data("logreg", dataset, data_dir, "classify")
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

  return Task("logreg", data, space, build, "accuracy", "maximize", {}, "linear",
              reads=base.SUPERVISED_READS | {"l2"})


# ------------------------------------------------------------------------- MNIST-1D
class Conv1D(nn.Module):
  """A 1-D convolution computed as one matrix product over gathered
  windows: XLA:CPU runs ``conv`` ops inside loops (the engine's ``lax.scan``) 4-15x slower
  than this product (measured on 2 cores, MNIST-1D CNN, 25 and 64 channels)."""

  features: int
  kernel_size: int
  stride: int = 2
  padding: int | None = None  # default: 1 with stride 2, "same" (k // 2) with stride 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    pad = self.padding if self.padding is not None else (1 if self.stride > 1 else k // 2)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    length = (xp.shape[1] - k) // self.stride + 1
    span = self.stride * (length - 1) + 1
    cols = jnp.concatenate([xp[:, j:j + span:self.stride] for j in range(k)], axis=-1)
    return cols @ kernel.reshape(k * c, self.features) + bias


MNIST1D_ARCHS: tuple[str, ...] = ("pool", "paper")


class Conv1DNet(nn.Module):
  """A 1-D CNN for MNIST-1D; channels past ``h["channels"]`` are masked (traced: a population
  of widths shares one kernel).

  ``arch="paper"`` is the paper's CNN: three convolutions (kernels 5, 3, 3, stride 2) and a
  linear head over the flattened features. ``arch="pool"`` keeps the resolution (three
  stride-1 convolutions, kernel 5) and max-pools over positions before the linear head, so
  the head sees where a feature is not (the signals are randomly translated).
  """

  max_channels: int
  outputs: int
  arch: str = "pool"

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    x = x.reshape(x.shape[0], -1, 1)
    width = h.get("channels", self.max_channels)
    mask = (jnp.arange(self.max_channels) < width).astype(x.dtype)
    act = h.get("activation", 0)
    layers = ((5, 2), (3, 2), (3, 2)) if self.arch == "paper" else ((5, 1), (5, 1), (5, 1))
    for i, (k, stride) in enumerate(layers):
      x = base.activation(act, Conv1D(self.max_channels, k, stride, name=f"Conv_{i}")(x)) * mask
    if self.arch == "pool":  # masked channels are 0 after the mask: max over live ones
      x = jnp.max(x, axis=1)
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


def _mask_channels(max_channels: int) -> Callable:
  """Zeroes the weights of channels past ``h["channels"]`` in a :class:`Conv1DNet` and
  rescales every later layer's fan-in to the live channels (init_scale multiplies all kernels,
  bias_init is added to the convolutions' initial biases)."""

  def transform(params, h: H):
    width = jnp.asarray(h.get("channels", max_channels))
    unit = (jnp.arange(max_channels) < width).astype(jnp.float32)
    scale = jnp.sqrt(max_channels / width.astype(jnp.float32))
    init_scale = jnp.asarray(h.get("init_scale", 1.0), jnp.float32)
    bias_init = jnp.asarray(h.get("bias_init", 0.0), jnp.float32)
    layers = params["params"]
    new, live = {}, {}
    for i in range(3):
      name = f"Conv_{i}"
      k, b = layers[name]["kernel"], layers[name]["bias"]
      in_m = unit[None, :, None] if i > 0 else jnp.ones((1, 1, 1))
      m_k = in_m * unit[None, None, :] * jnp.ones_like(k)
      new[name] = {"kernel": k * m_k * (scale if i > 0 else 1.0) * init_scale,
                   "bias": (b + bias_init) * unit}
      live[name] = {"kernel": m_k, "bias": unit}
    k = layers["Dense_0"]["kernel"]  # rows: flattened (position, channel) features
    m_k = jnp.tile(unit, k.shape[0] // max_channels)[:, None] * jnp.ones_like(k)
    new["Dense_0"] = {"kernel": k * m_k * scale * init_scale, "bias": layers["Dense_0"]["bias"]}
    live["Dense_0"] = {"kernel": m_k, "bias": jnp.ones_like(layers["Dense_0"]["bias"])}
    return {"params": new}, {"params": live}

  return transform


class GRUNet(nn.Module):
  """The MNIST-1D paper's GRU: a bidirectional GRU over the 40 steps of the signal and a
  linear head over all its hidden states."""

  hidden: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    del h
    x = x.reshape(x.shape[0], -1, 1)
    x = nn.Bidirectional(nn.RNN(nn.GRUCell(self.hidden)), nn.RNN(nn.GRUCell(self.hidden)))(x)
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


def mnist1d_mlp(data_dir: str | None = None, max_width: int = 256,
                dataset: Any = "mnist1d") -> Task:
  """MLP on MNIST-1D (the paper's: two hidden layers of 100 ReLU units, 68 % test)."""
  return _mlp_task("mnist1d_mlp", dataset, data_dir, max_width, max_lr=1e-1)


def mnist1d_cnn(data_dir: str | None = None, max_channels: int = 32, arch: str = "pool",
                dataset: Any = "mnist1d") -> Task:
  """A 1-D CNN on MNIST-1D; ``channels`` is masked up to ``max_channels``.

  Args:
    data_dir: TFDS data directory.
    max_channels: allocated channels per layer (the space searches 8 to this).
    arch: ``"pool"`` (default: stride-1 convolutions and max pooling over positions) or
      ``"paper"`` (the paper's CNN, 94 % published test accuracy), see :class:`Conv1DNet`.
    dataset: any classification dataset of 1-D signals (see ``metaopt.tasks.resolve_dataset``).
  """
  if arch not in MNIST1D_ARCHS:
    raise ValueError(f"arch={arch!r}: must be one of {', '.join(MNIST1D_ARCHS)}")
  if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 8:
    raise ValueError(f"max_channels={max_channels!r}: must be an integer >= 8")
  data = _data("mnist1d_cnn", dataset, data_dir, "signal")
  space = Space({
      "learning_rate": Float(1e-4, 3e-2, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
      "channels": Int(8, max_channels, log=True),
      "activation": Choice(list(base.ACTIVATIONS[:4])),
  })

  def build(structure: Mapping[str, Any]) -> TrialFns:
    model = Conv1DNet(max_channels=max_channels, outputs=data.num_classes, arch=arch)
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, structure.get("optimizer", "adamw"), {},
                           init_transform=_mask_channels(max_channels))

  return Task("mnist1d_cnn", data, space, build, "accuracy", "maximize", {}, "cnn",
              reads=base.SUPERVISED_READS | {"channels", "activation", "init_scale",
                                             "bias_init"})


def mnist1d_gru(data_dir: str | None = None, hidden: int = 6, dataset: Any = "mnist1d") -> Task:
  """The paper's bidirectional GRU on MNIST-1D (6 hidden units, 91 % test); ``hidden`` is
  structural when the space has it."""
  data = _data("mnist1d_gru", dataset, data_dir, "signal")
  space = Space({
      "learning_rate": Float(1e-4, 3e-2, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
  })

  def build(structure: Mapping[str, Any]) -> TrialFns:
    model = GRUNet(hidden=int(structure.get("hidden", hidden)), outputs=data.num_classes)
    return base.supervised(model, _example(data), base.softmax_xent,
                           base.classification_metrics, structure.get("optimizer", "adamw"), {})

  return Task("mnist1d_gru", data, space, build, "accuracy", "maximize", {}, "rnn",
              reads=base.SUPERVISED_READS | {"hidden"})


# ------------------------------------------------------------------------- 32x32 images
class Conv2D(nn.Module):
  """A 3x3 'same' convolution as one matrix product over the 9 shifted inputs (XLA:CPU runs
  ``conv`` inside the engine's scan several times slower, see :class:`Conv1D`)."""

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, s = x.shape[-1], self.stride
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    hh, ww = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + hh:s, j:j + ww:s] for i in range(3) for j in range(3)],
                           axis=-1)
    return cols @ kernel.reshape(9 * c, self.features) + bias


class SmallResNet(nn.Module):
  """A stem convolution, two residual blocks (the second halves the resolution and doubles
  the channels, with a 1x1 projection on the skip), global average pooling, a linear head."""

  channels: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, h: H) -> jax.Array:
    act = h.get("activation", 0)
    x = base.activation(act, Conv2D(self.channels)(x))
    for c, stride in ((self.channels, 1), (2 * self.channels, 2)):
      y = base.activation(act, Conv2D(c, stride)(x))
      y = Conv2D(c)(y)
      if stride != 1 or x.shape[-1] != c:
        x = nn.Dense(c)(x[:, ::stride, ::stride])
      x = base.activation(act, x + y)
    return nn.Dense(self.outputs)(x.mean(axis=(1, 2)))


def augment(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
  """Random crops (zero padding ``pad``, then a random ``H x W`` window) and horizontal flips
  of a batch of images, one draw per image."""
  n, hh, ww = x.shape[:3]
  k1, k2, k3 = jax.random.split(key, 3)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oy = jax.random.randint(k1, (n,), 0, 2 * pad + 1)
  ox = jax.random.randint(k2, (n,), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), (hh, ww, x.shape[3])))
  x = crop(xp, oy, ox)
  flip = jax.random.bernoulli(k3, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def with_augmentation(fns: TrialFns) -> TrialFns:
  """``fns`` whose train step augments its batch (:func:`augment`) inside the kernel, with a
  key per trial (from its init key) and per step."""

  def init(key: jax.Array, h: H):
    return {**fns.init(key, h), "aug_key": jax.random.key_data(jax.random.fold_in(key, 7))}

  def train_step(state, batch, h: H):
    inner = {k: v for k, v in state.items() if k != "aug_key"}
    key = jax.random.fold_in(jax.random.wrap_key_data(state["aug_key"]), state["step"])
    x, y = batch
    new, tel = fns.train_step(inner, (augment(key, x), y), h)
    return {**new, "aug_key": state["aug_key"]}, tel

  return TrialFns(init, train_step, fns.evaluate)


def images32_resnet(data_dir: str | None = None, channels: int = 16, augment: bool = True,
                    dataset: Any = "images32") -> Task:
  """A small ResNet-style CNN (:class:`SmallResNet`) on the procedural 32x32x3 images (50,000
  train images, read lazily and streamed when over the memory budget); ``augment`` adds
  random crops and flips inside the kernel."""
  if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
    raise ValueError(f"channels={channels!r}: must be an integer >= 1")
  if not isinstance(augment, bool):
    raise ValueError(f"augment={augment!r}: must be True or False")
  data = _data("images32_resnet", dataset, data_dir, "image")
  space = Space({
      "learning_rate": Float(1e-4, 3e-2, log=True),
      "weight_decay": Float(1e-6, 1e-1, log=True),
  })

  def build(structure: Mapping[str, Any]) -> TrialFns:
    model = SmallResNet(channels=int(structure.get("channels", channels)),
                        outputs=data.num_classes)
    fns = base.supervised(model, _example(data), base.softmax_xent,
                          base.classification_metrics, structure.get("optimizer", "adamw"), {})
    return with_augmentation(fns) if augment else fns

  return Task("images32_resnet", data, space, build, "accuracy", "maximize", {}, "cnn",
              reads=base.SUPERVISED_READS | {"activation", "channels"})


TASKS: dict[str, Callable[..., Task]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
    "wine_mlp": wine_mlp,
    "breast_cancer_mlp": breast_cancer_mlp,
    "synthetic_regression": synthetic_regression,
    "logreg": logreg,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "mnist1d_gru": mnist1d_gru,
    "images32_resnet": images32_resnet,
}


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds a registered task by name, or the task at an import path ``"module:attr"`` (a
  :class:`Task` or a factory called with ``kwargs``, e.g. one made by ``tasks.from_flax``)."""
  if isinstance(name, str) and ":" in name:
    from metaopt.tasks._src.custom import import_task
    return import_task(name, **kwargs)
  if name not in TASKS:
    raise ValueError(f"task {name!r} is unknown; allowed: {', '.join(TASKS)}, or an import "
                     "path 'my_module:my_task'")
  return TASKS[name](**kwargs)


def register_task(name: str, factory: Callable[..., Task]) -> None:
  """Adds a task factory to the registry (``run.py`` and configs find it by name)."""
  TASKS[name] = factory

