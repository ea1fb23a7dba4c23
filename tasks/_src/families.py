"""Task families: distributions of small training problems for learned optimizers.

Follows learned_optimization's ``TaskFamily`` (Metz et al. 2022, "Practical tradeoffs
between memory, compute, and performance in learned optimizers"): a family samples a task
configuration from a key, and every function of a task is a pure function of that
configuration. All tasks of one family share array shapes, so many of them ``vmap`` in one
kernel: what differs between tasks is *traced* (hidden width by masking up to a maximum,
activation by ``lax.switch``, initialisation scale, data subset, noise, curvature).

A :class:`TaskFamily` holds

* ``sample(key) -> cfg``: a dict of arrays describing one task;
* ``init(key, cfg) -> params``: initial weights (a Flax variable dict or a plain dict);
* ``loss(params, cfg, batch) -> scalar``: training loss on one minibatch;
* ``batch(key, cfg, split) -> batch``: a minibatch of ``split`` ("train" or "valid");
* ``eval_loss(params, cfg, split) -> scalar``: loss on a whole split (or a large fixed
  sample for synthetic families).

Families on the bundled TFDS datasets (``metaopt.tasks.load_dataset``): MLPs on digits, wine,
breast_cancer and synthetic_regression; a small CNN on digits. Synthetic families: noisy
quadratics and linear regression against a random teacher; MLPs and 1-D CNNs on MNIST-1D.
:data:`TRAIN_FAMILIES` are used for meta-training, :data:`VALID_FAMILIES` (other sizes of
training families) for choosing meta-training settings, :data:`HELDOUT_FAMILIES` (other
datasets, a deeper and wider MLP, a 2-D CNN, a larger quadratic) only for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.tasks._src.base import ACTIVATIONS, activation
from metaopt.tasks._src.data import load_dataset

PyTree = Any
Cfg = dict[str, jax.Array]
SPLITS: tuple[str, ...] = ("train", "valid")


class TaskFamily(NamedTuple):
  """A distribution over training problems, as pure functions of a sampled ``cfg``."""

  name: str
  sample: Callable[[jax.Array], Cfg]
  init: Callable[[jax.Array, Cfg], PyTree]
  loss: Callable[[PyTree, Cfg, Any], jax.Array]
  batch: Callable[[jax.Array, Cfg, str], Any]
  eval_loss: Callable[[PyTree, Cfg, str], jax.Array]


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: allowed values are {', '.join(SPLITS)}")


def _log_uniform(key: jax.Array, lo: float, hi: float, shape=()) -> jax.Array:
  return jnp.exp(jax.random.uniform(key, shape, minval=np.log(lo), maxval=np.log(hi)))


def _act_indices(names: tuple[str, ...]) -> jax.Array:
  for n in names:
    if n not in ACTIVATIONS:
      raise ValueError(f"activation {n!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
  return jnp.asarray([ACTIVATIONS.index(n) for n in names], jnp.int32)


def _scale_kernels(params: PyTree, scale: jax.Array, fan_in: Callable[[int], jax.Array]
                   ) -> PyTree:
  """Multiplies every kernel by ``scale * fan_in(layer_index)``."""
  layers = params["params"]
  names = sorted(layers, key=lambda n: (n.split("_")[0], int(n.split("_")[-1])))
  out = {}
  for i, n in enumerate(names):
    out[n] = {**layers[n], "kernel": layers[n]["kernel"] * scale * fan_in(i)}
  return {"params": out}


# ------------------------------------------------------------------------- dataset families
class _MaskedMLP(nn.Module):
  """Dense layers of ``max_width`` units, units past ``cfg["width"]`` masked to zero."""

  max_width: int
  depth: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, cfg: Cfg) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    mask = (jnp.arange(self.max_width) < cfg["width"]).astype(x.dtype)
    for _ in range(self.depth):
      x = activation(cfg["activation"], nn.Dense(self.max_width)(x)) * mask
    return nn.Dense(self.outputs)(x)


class _MaskedCNN(nn.Module):
  """Two 3x3 convolutions (channels past ``cfg["width"]`` masked), mean pool, dense head."""

  max_channels: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, cfg: Cfg) -> jax.Array:
    mask = (jnp.arange(self.max_channels) < cfg["width"]).astype(x.dtype)
    x = activation(cfg["activation"], nn.Conv(self.max_channels, (3, 3))(x)) * mask
    x = activation(cfg["activation"],
                   nn.Conv(self.max_channels, (3, 3), strides=(2, 2))(x)) * mask
    return nn.Dense(self.outputs)(x.mean(axis=(1, 2)))


class _MaskedCNN1D(nn.Module):
  """Two width-5 1-D convolutions (channels past ``cfg["width"]`` masked), mean pool, head."""

  max_channels: int
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, cfg: Cfg) -> jax.Array:
    mask = (jnp.arange(self.max_channels) < cfg["width"]).astype(x.dtype)
    x = x.reshape(x.shape[0], -1, 1)
    x = activation(cfg["activation"], nn.Conv(self.max_channels, (5,))(x)) * mask
    x = activation(cfg["activation"],
                   nn.Conv(self.max_channels, (5,), strides=(2,))(x)) * mask
    return nn.Dense(self.outputs)(x.mean(axis=1))


def _dataset_family(name: str, dataset: str, model: nn.Module, min_width: int,
                    max_width: int, activations: tuple[str, ...], batch_size: int,
                    data_dir: str | None) -> TaskFamily:
  data = load_dataset(dataset, data_dir)
  regression = data.num_classes is None
  acts = _act_indices(activations)
  arrays = {s: (jnp.asarray(getattr(data, s).x), jnp.asarray(getattr(data, s).y))
            for s in SPLITS}
  perm = jnp.asarray(np.random.default_rng(0).permutation(len(data.train)), jnp.int32)
  n_train = len(data.train)
  example = jnp.zeros((2, *data.input_shape), jnp.float32)

  def sample(key: jax.Array) -> Cfg:
    ks = jax.random.split(key, 5)
    return {
        "width": jax.random.randint(ks[0], (), min_width, max_width + 1),
        "activation": acts[jax.random.randint(ks[1], (), 0, len(activations))],
        "init_scale": _log_uniform(ks[2], 0.5, 2.0),
        "subset": jax.random.uniform(ks[3], (), minval=0.5, maxval=1.0),
        "offset": jax.random.randint(ks[4], (), 0, n_train),
    }

  def init(key: jax.Array, cfg: Cfg) -> PyTree:
    params = model.init(key, example, cfg)
    live = jnp.sqrt(max_width / cfg["width"].astype(jnp.float32))
    return _scale_kernels(params, cfg["init_scale"],
                          lambda i: jnp.where(i > 0, live, 1.0))

  def objective(pred: jax.Array, y: jax.Array) -> jax.Array:
    if regression:
      return jnp.mean(jnp.square(pred.reshape(y.shape) - y))
    return optax.softmax_cross_entropy_with_integer_labels(pred, y).mean()

  def loss(params: PyTree, cfg: Cfg, batch: Any) -> jax.Array:
    x, y = batch
    return objective(model.apply(params, x, cfg), y)

  def batch(key: jax.Array, cfg: Cfg, split: str) -> Any:
    _check_split(split)
    x, y = arrays[split]
    if split == "train":  # a window of a fixed permutation: each task sees its own subset
      m = jnp.maximum(jnp.floor(cfg["subset"] * n_train).astype(jnp.int32), batch_size)
      idx = perm[(cfg["offset"] + jax.random.randint(key, (batch_size,), 0, m)) % n_train]
    else:
      idx = jax.random.randint(key, (batch_size,), 0, len(x))
    return x[idx], y[idx]

  def eval_loss(params: PyTree, cfg: Cfg, split: str) -> jax.Array:
    _check_split(split)
    return loss(params, cfg, arrays[split])

  return TaskFamily(name, sample, init, loss, batch, eval_loss)


def mlp_family(dataset: str = "digits", depth: int = 1, min_width: int = 8,
               max_width: int = 32, activations: tuple[str, ...] = ("relu", "tanh", "gelu"),
               batch_size: int = 32, data_dir: str | None = None,
               name: str | None = None) -> TaskFamily:
  """MLPs on a bundled dataset: sampled width (masked), activation, init scale, data subset.

  Args:
    dataset: one of ``metaopt.tasks.DATASETS``.
    depth: hidden layers (structural: one kernel per depth).
    min_width: smallest sampled hidden width.
    max_width: allocated hidden width; wider units are masked.
    activations: names from ``metaopt.tasks.ACTIVATIONS`` to sample from (``lax.switch``).
    batch_size: minibatch size.
    data_dir: TFDS data directory.
    name: family name (default ``<dataset>_mlp``).

  Returns:
    A :class:`TaskFamily`.

  Examples:
    >>> fam = mlp_family("wine")  # doctest: +SKIP
    >>> cfg = fam.sample(jax.random.key(0))  # doctest: +SKIP
  """
  if depth < 1:
    raise ValueError(f"depth={depth}: must be >= 1")
  if not 1 <= min_width <= max_width:
    raise ValueError(f"min_width={min_width}, max_width={max_width}: need "
                     "1 <= min_width <= max_width")
  data = load_dataset(dataset, data_dir)
  model = _MaskedMLP(max_width, depth, 1 if data.num_classes is None else data.num_classes)
  return _dataset_family(name or f"{dataset}_mlp", dataset, model, min_width, max_width,
                         activations, batch_size, data_dir)


def cnn_family(dataset: str = "digits", min_channels: int = 4, max_channels: int = 8,
               activations: tuple[str, ...] = ("relu", "tanh", "gelu"), batch_size: int = 32,
               data_dir: str | None = None, name: str | None = None) -> TaskFamily:
  """Small CNNs on an image dataset (2-D convolutions) or a 1-D signal dataset such as
  ``mnist1d`` (1-D convolutions): sampled channels (masked), activation, init scale."""
  data = load_dataset(dataset, data_dir)
  if len(data.input_shape) not in (1, 3):
    raise ValueError(f"dataset={dataset!r}: a CNN family needs image data (H, W, C) or 1-D "
                     f"signals (L,); its inputs have shape {data.input_shape}")
  cls = _MaskedCNN if len(data.input_shape) == 3 else _MaskedCNN1D
  model = cls(max_channels, data.num_classes or 1)
  return _dataset_family(name or f"{dataset}_cnn", dataset, model, min_channels,
                         max_channels, activations, batch_size, data_dir)


# ------------------------------------------------------------------------- synthetic families
def quadratic_family(dim: int = 16, min_eig: float = 0.01, max_eig: float = 10.0,
                     noise: tuple[float, float] = (0.01, 1.0),
                     name: str | None = None) -> TaskFamily:
  """Noisy quadratics ``0.5 sum_i h_i (x_i - c_i - n_i)^2`` with log-uniform curvature ``h``.

  Each task samples curvatures in ``[min_eig, max_eig]``, a centre ``c`` and a noise scale;
  training minibatches are Gaussian target noise ``n`` (zero for the valid split, so the
  valid loss is the noise-free quadratic).
  """
  if not 0 < min_eig <= max_eig:
    raise ValueError(f"min_eig={min_eig}, max_eig={max_eig}: need 0 < min_eig <= max_eig")

  def sample(key: jax.Array) -> Cfg:
    ks = jax.random.split(key, 3)
    return {"h": _log_uniform(ks[0], min_eig, max_eig, (dim,)),
            "center": jax.random.normal(ks[1], (dim,)),
            "noise": _log_uniform(ks[2], *noise)}

  def init(key: jax.Array, cfg: Cfg) -> PyTree:
    del cfg
    return {"x": jax.random.normal(key, (dim,))}

  def loss(params: PyTree, cfg: Cfg, batch: jax.Array) -> jax.Array:
    d = params["x"] - cfg["center"] - batch
    return 0.5 * jnp.sum(cfg["h"] * jnp.square(d))

  def batch(key: jax.Array, cfg: Cfg, split: str) -> jax.Array:
    _check_split(split)
    scale = cfg["noise"] if split == "train" else 0.0
    return scale * jax.random.normal(key, (dim,))

  def eval_loss(params: PyTree, cfg: Cfg, split: str) -> jax.Array:
    _check_split(split)
    return loss(params, cfg, jnp.zeros((dim,)))

  return TaskFamily(name or f"quadratic{dim}", sample, init, loss, batch, eval_loss)


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(1)(x)[:, 0]


def linear_regression_family(dim: int = 16, batch_size: int = 32,
                             noise: tuple[float, float] = (0.01, 0.5),
                             name: str | None = None) -> TaskFamily:
  """Linear regression against a random teacher ``y = x.w + b + noise``, fresh Gaussian x."""
  model = _Linear()

  def sample(key: jax.Array) -> Cfg:
    ks = jax.random.split(key, 4)
    return {"w": jax.random.normal(ks[0], (dim,)) * _log_uniform(ks[1], 0.3, 3.0),
            "b": jax.random.normal(ks[2], ()),
            "noise": _log_uniform(ks[3], *noise)}

  def init(key: jax.Array, cfg: Cfg) -> PyTree:
    del cfg
    return model.init(key, jnp.zeros((1, dim)))

  def loss(params: PyTree, cfg: Cfg, batch: Any) -> jax.Array:
    x, y = batch
    del cfg
    return jnp.mean(jnp.square(model.apply(params, x) - y))

  def draw(key: jax.Array, cfg: Cfg, n: int) -> Any:
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (n, dim))
    return x, x @ cfg["w"] + cfg["b"] + cfg["noise"] * jax.random.normal(kn, (n,))

  def batch(key: jax.Array, cfg: Cfg, split: str) -> Any:
    _check_split(split)
    return draw(key, cfg, batch_size)

  def eval_loss(params: PyTree, cfg: Cfg, split: str) -> jax.Array:
    _check_split(split)
    return loss(params, cfg, draw(jax.random.key(SPLITS.index(split)), cfg, 512))

  return TaskFamily(name or f"linear_regression{dim}", sample, init, loss, batch, eval_loss)


# ------------------------------------------------------------------------- registry
_FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "digits_mlp": lambda **kw: mlp_family("digits", name="digits_mlp", **kw),
    "synthetic_regression_mlp": lambda **kw: mlp_family(
        "synthetic_regression", name="synthetic_regression_mlp", **kw),
    "quadratic": lambda **kw: quadratic_family(name="quadratic", **kw),
    "linear_regression": lambda **kw: linear_regression_family(name="linear_regression", **kw),
    "mnist1d_mlp": lambda **kw: mlp_family("mnist1d", min_width=16, max_width=32,
                                           name="mnist1d_mlp", **kw),
    "mnist1d_cnn": lambda **kw: cnn_family("mnist1d", min_channels=4, max_channels=8,
                                           name="mnist1d_cnn", **kw),
    # validation (choosing meta-training settings): other sizes of the training families
    "mnist1d_mlp_deep": lambda **kw: mlp_family("mnist1d", depth=2, min_width=24,
                                                max_width=48, name="mnist1d_mlp_deep", **kw),
    "linear_regression_large": lambda **kw: linear_regression_family(
        dim=48, name="linear_regression_large", **kw),
    # held out: other datasets, other architectures, other sizes
    "wine_mlp": lambda **kw: mlp_family("wine", name="wine_mlp", **kw),
    "breast_cancer_mlp": lambda **kw: mlp_family("breast_cancer", name="breast_cancer_mlp",
                                                 **kw),
    "digits_mlp_deep": lambda **kw: mlp_family("digits", depth=2, min_width=32, max_width=64,
                                               name="digits_mlp_deep", **kw),
    "digits_cnn": lambda **kw: cnn_family("digits", name="digits_cnn", **kw),
    "quadratic_large": lambda **kw: quadratic_family(dim=64, min_eig=0.001, max_eig=30.0,
                                                     name="quadratic_large", **kw),
}
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
TRAIN_FAMILIES: tuple[str, ...] = ("digits_mlp", "synthetic_regression_mlp", "quadratic",
                                   "linear_regression", "mnist1d_mlp", "mnist1d_cnn")
VALID_FAMILIES: tuple[str, ...] = ("mnist1d_mlp_deep", "linear_regression_large")
HELDOUT_FAMILIES: tuple[str, ...] = ("wine_mlp", "breast_cancer_mlp", "digits_mlp_deep",
                                     "digits_cnn", "quadratic_large")


def get_family(name: str, **kwargs: Any) -> TaskFamily:
  """The registered family ``name`` (one of :data:`FAMILIES`), built with ``kwargs``."""
  if name not in _FAMILIES:
    raise ValueError(f"task family {name!r} is unknown; allowed: {', '.join(FAMILIES)}")
  return _FAMILIES[name](**kwargs)
