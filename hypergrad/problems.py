"""Bilevel problems for hypergradient methods: ridge, logistic regression, an MLP on digits.

A :class:`BilevelProblem` bundles pure functions of ``(params, hparams)`` over data closed
over at build time (small, bundled datasets from ``metaopt.tasks.load_dataset``):

* ``init_params(key) -> params``;
* ``train_loss(params, hparams, batch)`` with ``batch`` an index array into the train split;
* ``val_loss(params, hparams)`` on the whole validation split;
* ``optimizer(hparams) -> optax.GradientTransformation`` for the inner loop;
* ``sample(key, T) -> xs``: ``T`` minibatches of indices, the scan inputs of an unroll;
* ``full_batch``: every training index (implicit differentiation solves on it);
* ``hparams`` (a default starting point) and ``spec`` (bijectors, ``metaopt.hypergrad.transforms``).

Ridge regression has closed forms (:func:`ridge_solution`, :func:`ridge_hypergrad`) for
checking implicit differentiation (Pedregosa 2016). Floating dtypes follow the parameters,
so everything runs in float64 inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.hypergrad.inner import sgd, tree_sgd
from metaopt.hypergrad.types import HParams, PyTree


class BilevelProblem(NamedTuple):
  """A bilevel hyperparameter problem (see the module docstring)."""

  init_params: Callable[[jax.Array], PyTree]
  train_loss: Callable[[PyTree, HParams, jax.Array], jax.Array]
  val_loss: Callable[[PyTree, HParams], jax.Array]
  optimizer: Callable[[HParams], optax.GradientTransformation]
  sample: Callable[[jax.Array, int], jax.Array]
  full_batch: jax.Array
  hparams: HParams
  spec: PyTree


def _float() -> Any:
  return jnp.result_type(float)


def _sampler(n: int, batch_size: int) -> Callable[[jax.Array, int], jax.Array]:
  def sample(key: jax.Array, steps: int) -> jax.Array:
    if batch_size >= n:  # full batch: every step sees the whole split
      return jnp.broadcast_to(jnp.arange(n), (steps, n))
    return jax.random.randint(key, (steps, batch_size), 0, n)

  return sample


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ------------------------------------------------------------------------- ridge
def ridge_data(n: int = 40, n_val: int = 40, d: int = 8, noise: float = 0.5,
               seed: int = 0) -> tuple[np.ndarray, ...]:
  """A synthetic regression problem ``(x, y, x_val, y_val)`` in float64 numpy."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=d)
  x, xv = rng.normal(size=(n, d)), rng.normal(size=(n_val, d))
  return x, x @ w + noise * rng.normal(size=n), xv, xv @ w + noise * rng.normal(size=n_val)


def ridge_solution(x: jax.Array, y: jax.Array, l2: jax.Array) -> jax.Array:
  """``w*(λ) = (XᵀX + λI)⁻¹ Xᵀy``, the minimiser of ``½||Xw − y||² + ½λ||w||²``."""
  return jnp.linalg.solve(x.T @ x + l2 * jnp.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def ridge_val_loss(w: jax.Array, x_val: jax.Array, y_val: jax.Array) -> jax.Array:
  """``½ mean((X_val w − y_val)²)``."""
  return 0.5 * jnp.mean(jnp.square(x_val @ w - y_val))


def ridge_hypergrad(x: jax.Array, y: jax.Array, x_val: jax.Array, y_val: jax.Array,
                    l2: jax.Array) -> jax.Array:
  """Closed-form ``dV(w*(λ))/dλ = −∇V(w*)ᵀ (XᵀX + λI)⁻¹ w*``."""
  a = x.T @ x + l2 * jnp.eye(x.shape[1], dtype=x.dtype)
  w = jnp.linalg.solve(a, x.T @ y)
  g = x_val.T @ (x_val @ w - y_val) / x_val.shape[0]
  return -g @ jnp.linalg.solve(a, w)


def ridge(n: int = 40, n_val: int = 40, d: int = 8, noise: float = 0.5, seed: int = 0,
          batch_size: int | None = None) -> BilevelProblem:
  """Ridge regression, ``L = ½||Xw − y||² + ½λ||w||²`` (sum over the batch), ``V`` = val MSE/2.

  The inner optimizer is SGD with ``learning_rate = 1 / λ_max(XᵀX)`` by default (stable);
  ``full_batch`` makes the inner loss exactly the closed-form problem.
  """
  x, y, xv, yv = ridge_data(n, n_val, d, noise, seed)
  lr0 = 1.0 / float(np.linalg.eigvalsh(x.T @ x)[-1])

  def train_loss(w, h, idx):
    xb, yb = jnp.asarray(x, w.dtype)[idx], jnp.asarray(y, w.dtype)[idx]
    scale = x.shape[0] / idx.shape[0]  # minibatches estimate the full sum
    return 0.5 * scale * jnp.sum(jnp.square(xb @ w - yb)) + 0.5 * h["l2"] * jnp.sum(w * w)

  def val_loss(w, h):
    del h
    return ridge_val_loss(w, jnp.asarray(xv, w.dtype), jnp.asarray(yv, w.dtype))

  def optimizer(h):
    return sgd({"learning_rate": h.get("learning_rate", jnp.asarray(lr0, h["l2"].dtype))})

  return BilevelProblem(
      init_params=lambda key: jnp.zeros(d, _float()),
      train_loss=train_loss, val_loss=val_loss, optimizer=optimizer,
      sample=_sampler(n, batch_size or n), full_batch=jnp.arange(n),
      hparams={"l2": jnp.asarray(1.0, _float())}, spec={"l2": "log"})


# ------------------------------------------------------------------------- logistic regression
def logreg(dataset: str = "breast_cancer", batch_size: int = 64, per_feature_l2: bool = False,
           data_dir: str | None = None) -> BilevelProblem:
  """Multinomial logistic regression with an L2 penalty ``½ Σ_j λ_j ||W_j||²`` in the loss.

  Args:
    dataset: a ``metaopt.tasks.load_dataset`` name with classes (``breast_cancer``, ``wine``,
      ``digits``; images are flattened).
    batch_size: minibatch size of ``sample``.
    per_feature_l2: one L2 strength per input feature (Lorraine et al.'s many-hyperparameter
      setting) instead of one scalar.
    data_dir: TFDS data directory.

  Returns:
    A problem with ``hparams = {learning_rate, momentum, l2}`` and SGD (injected).
  """
  from metaopt.tasks import load_dataset

  data = load_dataset(dataset, data_dir)
  x = data.train.x.reshape(len(data.train), -1)
  xv = data.valid.x.reshape(len(data.valid), -1)
  y, yv = np.asarray(data.train.y), np.asarray(data.valid.y)
  d, c = x.shape[1], int(data.num_classes)

  def init_params(key):
    return {"w": 0.01 * jax.random.normal(key, (d, c), _float()), "b": jnp.zeros(c, _float())}

  def penalty(params, h):
    l2 = jnp.asarray(h["l2"], params["w"].dtype)
    l2 = l2[:, None] if l2.ndim == 1 else l2
    return 0.5 * jnp.sum(l2 * jnp.square(params["w"]))

  def train_loss(params, h, idx):
    xb = jnp.asarray(x, params["w"].dtype)[idx]
    logits = xb @ params["w"] + params["b"]
    return _xent(logits, jnp.asarray(y)[idx]) + penalty(params, h)

  def val_loss(params, h):
    del h
    logits = jnp.asarray(xv, params["w"].dtype) @ params["w"] + params["b"]
    return _xent(logits, jnp.asarray(yv))

  def optimizer(h):
    return sgd({"learning_rate": h.get("learning_rate", 0.1), "momentum": h.get("momentum", 0.0)})

  l2 = jnp.full((d,), 1e-3, _float()) if per_feature_l2 else jnp.asarray(1e-3, _float())
  return BilevelProblem(
      init_params=init_params, train_loss=train_loss, val_loss=val_loss, optimizer=optimizer,
      sample=_sampler(len(x), batch_size), full_batch=jnp.arange(len(x)),
      hparams={"learning_rate": jnp.asarray(0.1, _float()),
               "momentum": jnp.asarray(0.5, _float()), "l2": l2},
      spec={"learning_rate": "log", "momentum": "logit", "l2": "log"})


# ------------------------------------------------------------------------- MLP on digits
def mlp(dataset: str = "digits", widths: Sequence[int] = (128, 128), batch_size: int = 128,
        per_layer: bool = False, data_dir: str | None = None,
        loss_hparams: bool = False, val_split: str = "valid") -> BilevelProblem:
  """A ReLU MLP (``64-128-128-10`` on digits) trained by SGD + momentum + weight decay.

  Args:
    dataset: a ``metaopt.tasks.load_dataset`` classification dataset (inputs flattened).
    widths: hidden layer widths.
    batch_size: minibatch size of ``sample``.
    per_layer: learning rate and weight decay are dicts ``{"layer_i": value}`` (one per
      layer) instead of scalars.
    data_dir: TFDS data directory.
    loss_hparams: also ``label_smoothing`` (in (0, 1)), ``aug_noise`` (std of Gaussian
      input-noise augmentation, reparameterised so it is differentiable) and
      ``class_weights`` (one loss weight per class) enter the training loss.
    val_split: the split ``val_loss`` reads: ``"valid"`` (default) or ``"test"`` (to report
      hyperparameters chosen on ``"valid"`` on data that chose nothing).

  Returns:
    A problem with ``hparams = {learning_rate, momentum, weight_decay}`` and ``tree_sgd``.
  """
  from metaopt.tasks import load_dataset

  if val_split not in ("valid", "test"):
    raise ValueError(f"val_split={val_split!r} is unknown; allowed: valid, test")
  data = load_dataset(dataset, data_dir)
  held = getattr(data, val_split)
  x = data.train.x.reshape(len(data.train), -1)
  xv = held.x.reshape(len(held), -1)
  y, yv = np.asarray(data.train.y), np.asarray(held.y)
  sizes = [x.shape[1], *widths, int(data.num_classes)]
  names = [f"layer_{i}" for i in range(len(sizes) - 1)]

  def init_params(key):
    keys = jax.random.split(key, len(names))
    return {n: {"w": jax.random.normal(k, (a, b), _float()) * np.sqrt(2.0 / a),
                "b": jnp.zeros(b, _float())}
            for n, k, a, b in zip(names, keys, sizes[:-1], sizes[1:], strict=True)}

  def apply(params, inputs):
    h = inputs
    for i, n in enumerate(names):
      h = h @ params[n]["w"] + params[n]["b"]
      if i < len(names) - 1:
        h = jax.nn.relu(h)
    return h

  n_classes = int(data.num_classes)

  def train_loss(params, h, idx):
    dtype = params[names[0]]["w"].dtype
    inputs, labels = jnp.asarray(x, dtype)[idx], jnp.asarray(y)[idx]
    if not loss_hparams:
      return _xent(apply(params, inputs), labels)
    # a fixed noise draw per minibatch: the augmentation strength scales it
    eps = jax.random.normal(jax.random.fold_in(jax.random.key(17), jnp.sum(idx)),
                            inputs.shape, dtype)
    logits = apply(params, inputs + h["aug_noise"] * eps)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, n_classes, dtype=dtype),
                                  h["label_smoothing"])
    per_example = optax.softmax_cross_entropy(logits, targets)
    return jnp.mean(h["class_weights"][labels] * per_example)

  def val_loss(params, h):
    del h
    dtype = params[names[0]]["w"].dtype
    return _xent(apply(params, jnp.asarray(xv, dtype)), jnp.asarray(yv))

  def optimizer(h):
    return tree_sgd(h["learning_rate"], h.get("momentum", 0.0), h.get("weight_decay", 0.0))

  f = lambda v: jnp.asarray(v, _float())
  lr = {n: f(0.05) for n in names} if per_layer else f(0.05)
  wd = {n: f(1e-4) for n in names} if per_layer else f(1e-4)
  hparams = {"learning_rate": lr, "momentum": f(0.9), "weight_decay": wd}
  spec = {"learning_rate": "log", "momentum": "logit", "weight_decay": "log"}
  if loss_hparams:
    hparams.update(label_smoothing=f(0.1), aug_noise=f(0.1),
                   class_weights=jnp.ones(n_classes, _float()))
    spec.update(label_smoothing="logit", aug_noise="log", class_weights="log")
  return BilevelProblem(
      init_params=init_params, train_loss=train_loss, val_loss=val_loss, optimizer=optimizer,
      sample=_sampler(len(x), batch_size), full_batch=jnp.arange(len(x)),
      hparams=hparams, spec=spec)


PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {"ridge": ridge, "logreg": logreg,
                                                      "mlp": mlp}


def get_problem(name: str, **kwargs: Any) -> BilevelProblem:
  """Builds a registered problem by name."""
  if name not in PROBLEMS:
    raise ValueError(f"problem {name!r} is unknown; allowed: {', '.join(PROBLEMS)}")
  return PROBLEMS[name](**kwargs)
