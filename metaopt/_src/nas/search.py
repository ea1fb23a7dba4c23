"""Gradient-based NAS as a pure white-box program: ``init(key)`` and ``step(state, ...)``.

One bilevel step: an architecture step on a *validation* batch, then a weight step on a
*train* batch (the test split never enters a search). The method fixes how the mixing
weights come from the architecture logits ``alpha`` (see ``darts.py`` and ``gdas.py``):

* ``darts``: ``softmax(alpha)`` (Liu et al., ICLR 2019); ``order=1`` uses ``dL_val/dalpha``
  at the current weights, ``order=2`` the unrolled gradient of ``L_val(w - xi dL_train/dw,
  alpha)``, either exactly (``hessian="exact"``: JAX differentiates through the virtual
  step, i.e. exact Hessian-vector products) or with DARTS's central finite difference
  (``hessian="finite_difference"``).
* ``gdas``: a hard one-hot Gumbel-softmax sample per edge with a straight-through gradient,
  temperature annealed linearly from ``tau_max`` to ``tau_min`` (Dong & Yang, CVPR 2019).
* ``snas``: the relaxed (soft) Gumbel-softmax sample, temperature annealed exponentially
  (Xie et al., ICLR 2019); ``snas_hard=True`` uses the straight-through hard sample.

Options: weight-only warm-up steps (``warmup_steps``; they skip the architecture gradient,
only a validation forward pass is taken for the telemetry), partial channels (``partial_k``,
PC-DARTS), an auxiliary skip decaying to zero (``aux_skip``, DARTS-), a penalty on the skip
weight in the normal cell (``skip_penalty``), a hardware penalty or budget on the expected
cost (``hw_penalty``, ``hw_budget``), and joint HPO (``hpo="hypergrad"``): the weight
optimiser's log learning rate and log weight decay take a hypergradient step on the
validation loss after the one-step lookahead ``w - lr (g + wd w)`` (Baydin et al., ICLR 2018;
Luketina et al., ICML 2016).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.nas import hardware
from metaopt.spaces import CellSpace
from metaopt.tasks import Network, make_optimizer, with_hyperparams

PyTree = Any
Batch = tuple[jax.Array, jax.Array]

METHODS: tuple[str, ...] = ("darts", "gdas", "snas")
HESSIANS: tuple[str, ...] = ("exact", "finite_difference")
HPO: tuple[str, ...] = ("none", "hypergrad")


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """Static settings of a search program (validated at construction)."""

  method: str = "darts"
  order: int = 1
  hessian: str = "exact"
  w_lr: float = 0.05
  w_momentum: float = 0.9
  w_wd: float = 3e-4
  w_clip: float = 5.0
  a_lr: float = 3e-3
  a_b1: float = 0.5
  a_wd: float = 1e-3
  xi: float | None = None
  fd_eps: float = 0.01
  tau_max: float = 10.0
  tau_min: float = 0.1
  snas_hard: bool = False
  total_steps: int = 100
  warmup_steps: int = 0
  aux_skip: float = 0.0
  skip_penalty: float = 0.0
  hw_metric: str = "params"
  hw_penalty: float = 0.0
  hw_budget: float | None = None
  hpo: str = "none"
  meta_lr: float = 0.02

  def __post_init__(self):
    def choice(name, allowed):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}: allowed values are "
                         f"{', '.join(map(str, allowed))}")
    choice("method", METHODS)
    choice("order", (1, 2))
    choice("hessian", HESSIANS)
    choice("hw_metric", hardware.METRICS)
    choice("hpo", HPO)
    for name in ("w_lr", "a_lr", "tau_max", "tau_min", "meta_lr", "fd_eps"):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}={v!r}: must be a number > 0")
    for name in ("w_momentum", "w_wd", "a_wd", "aux_skip", "hw_penalty", "w_clip"):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}={v!r}: must be a number >= 0")
    if not isinstance(self.skip_penalty, (int, float)) or not math.isfinite(self.skip_penalty):
      raise ValueError(f"skip_penalty={self.skip_penalty!r}: must be a finite number")
    if self.tau_min > self.tau_max:
      raise ValueError(f"tau_min={self.tau_min}: must be <= tau_max={self.tau_max}")
    if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"warmup_steps={self.warmup_steps!r}: must be an int >= 0")
    if not isinstance(self.total_steps, int) or self.total_steps < 1:
      raise ValueError(f"total_steps={self.total_steps!r}: must be an int >= 1")
    if self.hw_budget is not None and not self.hw_budget > 0:
      raise ValueError(f"hw_budget={self.hw_budget!r}: must be > 0 or None")
    if self.xi is not None and not self.xi >= 0:
      raise ValueError(f"xi={self.xi!r}: must be >= 0 or None (= w_lr)")


class NASState(NamedTuple):
  """Search state: weights, architecture logits, their optimisers, tuned hyperparameters."""

  params: PyTree
  alpha: dict[str, jax.Array]
  w_opt: PyTree
  a_opt: PyTree
  hparams: dict[str, jax.Array]  # log_lr, log_wd of the weight optimiser
  h_opt: PyTree
  step: jax.Array


class NASProgram(NamedTuple):
  """A gradient-based NAS program over a supernet.

  ``step(state, batch_train, batch_valid, key) -> (state, telemetry)``; ``arch_grad`` is the
  architecture gradient the step applies; ``mixing(alpha, key, step)`` the weights the
  supernet mixes with; ``val_loss(params, alpha, batch)`` the deterministic (softmax)
  validation loss whose Hessian the collapse safeguard watches.
  """

  init: Callable[[jax.Array], NASState]
  step: Callable[[NASState, Batch, Batch, jax.Array], tuple[NASState, dict]]
  arch_grad: Callable[[NASState, Batch, Batch, jax.Array], dict[str, jax.Array]]
  mixing: Callable[[dict, jax.Array, jax.Array], dict]
  val_loss: Callable[[PyTree, dict, Batch], jax.Array]
  model: Network
  settings: SearchSettings


def tree_norm(t: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(t)))


def _xent(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def make_search(model: Network, settings: SearchSettings, example_x: jax.Array,
                mixing: Callable[[dict, jax.Array, jax.Array], dict],
                cost_table: Mapping[str, Any] | None = None) -> NASProgram:
  """Builds the program; ``mixing(alpha, key, step)`` comes from ``darts``/``gdas``/``snas``.

  Args:
    model: the supernet (``Network`` without a genotype).
    settings: static settings.
    example_x: one batch of inputs (shapes only).
    mixing: the relaxation.
    cost_table: the hardware table for ``hw_penalty`` (``hardware.cost_tables`` entry).
  """
  s = settings
  space: CellSpace = model.space
  if s.hw_penalty > 0 and cost_table is None:
    raise ValueError("hw_penalty > 0 needs a cost_table (hardware.cost_tables / latency_table)")
  ref = hardware.uniform_cost(space, cost_table) if cost_table is not None else 1.0
  skip = space.ops.index("skip_connect") if "skip_connect" in space.ops else None
  a_opt = optax.chain(optax.add_decayed_weights(s.a_wd), optax.scale_by_adam(b1=s.a_b1),
                      optax.scale(-s.a_lr))
  h_opt = optax.adam(s.meta_lr)

  def opt_h(hp):
    return {"learning_rate": jnp.exp(hp["log_lr"]), "weight_decay": jnp.exp(hp["log_wd"]),
            "momentum": jnp.asarray(s.w_momentum, jnp.float32)}

  def aux(step):
    return s.aux_skip * jnp.maximum(0.0, 1.0 - step / s.total_steps)

  def net(params, w, batch, step):
    x, y = batch
    return _xent(model.apply(params, x, w, aux(step)), y)

  def penalty(alpha):
    probs = jax.tree.map(lambda a: jax.nn.softmax(a, -1), alpha)
    out = jnp.zeros((), probs["normal"].dtype)
    if skip is not None and s.skip_penalty != 0.0:
      out = out + s.skip_penalty * jnp.mean(probs["normal"][:, skip])
    cost = (hardware.expected_cost(probs, cost_table) if cost_table is not None
            else jnp.zeros((), out.dtype))
    if s.hw_penalty > 0:
      out = out + s.hw_penalty * (cost / ref if s.hw_budget is None
                                  else jax.nn.relu(cost - s.hw_budget) / s.hw_budget)
    return out, cost

  def arch_objective(alpha, params, batch_v, key, step):
    loss, acc = net(params, mixing(alpha, key, step), batch_v, step)
    pen, cost = penalty(alpha)
    return loss + pen, (loss, acc, cost)

  def train_loss(params, alpha, batch_t, key, step):
    w = jax.lax.stop_gradient(mixing(alpha, key, step))
    return net(params, w, batch_t, step)

  def clip(g):
    if s.w_clip <= 0:
      return g
    n = tree_norm(g)
    return jax.tree.map(lambda x: x * jnp.minimum(1.0, s.w_clip / (n + 1e-12)), g)

  def virtual(params, g, hp):
    xi = jnp.exp(hp["log_lr"]) if s.xi is None else s.xi
    wd = jnp.exp(hp["log_wd"])
    return jax.tree.map(lambda p, gi: p - xi * (gi + wd * p), params, g), xi

  def arch_grad_aux(state, batch_t, batch_v, key):
    k_t, k_v = jax.random.split(key)
    alpha, params, step = state.alpha, state.params, state.step
    if s.order == 1:
      return jax.grad(arch_objective, has_aux=True)(alpha, params, batch_v, k_v, step)

    def wgrad(p, a):  # d L_train / d w, as a function of alpha (not stopped)
      return jax.grad(lambda p_: net(p_, mixing(a, k_t, step), batch_t, step)[0])(p)

    if s.hessian == "exact":
      def unrolled(a):
        w1, _ = virtual(params, wgrad(params, a), state.hparams)
        return arch_objective(a, w1, batch_v, k_v, step)
      return jax.grad(unrolled, has_aux=True)(alpha)
    # DARTS eq. (8): grad_a L_val(w', a) - xi * (grad_a L_tr(w+) - grad_a L_tr(w-)) / 2 eps
    w1, xi = virtual(params, wgrad(params, alpha), state.hparams)
    (g_a, g_w), aux_ = jax.grad(arch_objective, argnums=(0, 1), has_aux=True)(
        alpha, w1, batch_v, k_v, step)
    eps = s.fd_eps / (tree_norm(g_w) + 1e-12)
    ga_tr = lambda p: jax.grad(lambda a: net(p, mixing(a, k_t, step), batch_t, step)[0])(alpha)
    gp = ga_tr(jax.tree.map(lambda p, v: p + eps * v, params, g_w))
    gm = ga_tr(jax.tree.map(lambda p, v: p - eps * v, params, g_w))
    g = jax.tree.map(lambda a, p, m: a - xi * (p - m) / (2 * eps), g_a, gp, gm)
    return g, aux_

  def init(key: jax.Array) -> NASState:
    k_w, k_a = jax.random.split(key)
    alpha = space.init_logits(k_a)
    params = model.init(k_w, example_x, mixing(alpha, k_a, jnp.zeros((), jnp.int32)))
    hp = {"log_lr": jnp.log(jnp.asarray(s.w_lr, jnp.float32)),
          "log_wd": jnp.log(jnp.asarray(max(s.w_wd, 1e-8), jnp.float32))}
    w_opt = make_optimizer("sgd", opt_h(hp), {}).init(params)
    return NASState(params, alpha, w_opt, a_opt.init(alpha), hp, h_opt.init(hp),
                    jnp.zeros((), jnp.int32))

  def step(state: NASState, batch_t: Batch, batch_v: Batch, key: jax.Array):
    k_arch, k_w = jax.random.split(key)
    warm = state.step < s.warmup_steps  # weights only, architecture frozen
    if s.warmup_steps > 0:  # a warm-up step skips the architecture gradient (forward only)
      def frozen(_):
        w = jax.lax.stop_gradient(mixing(state.alpha, jax.random.split(k_arch)[1], state.step))
        loss, acc = net(state.params, w, batch_v, state.step)
        return jax.tree.map(jnp.zeros_like, state.alpha), (loss, acc, penalty(state.alpha)[1])

      g_a, (val_loss, val_acc, cost) = jax.lax.cond(
          warm, frozen, lambda _: arch_grad_aux(state, batch_t, batch_v, k_arch), None)
    else:
      g_a, (val_loss, val_acc, cost) = arch_grad_aux(state, batch_t, batch_v, k_arch)
    upd, a_state = a_opt.update(g_a, state.a_opt, state.alpha)
    a_state = jax.tree.map(lambda old, new: jnp.where(warm, old, new), state.a_opt, a_state)
    alpha = optax.apply_updates(state.alpha, jax.tree.map(lambda u: jnp.where(warm, 0.0, u),
                                                          upd))
    (tl, tacc), g = jax.value_and_grad(train_loss, has_aux=True)(state.params, alpha, batch_t,
                                                                 k_w, state.step)
    g = clip(g)
    hp, h_state, hg_norm = state.hparams, state.h_opt, jnp.zeros(())
    if s.hpo == "hypergrad":
      k_v = jax.random.fold_in(k_w, 1)

      def lookahead(hp_):
        w1, _ = virtual(state.params, g, hp_)
        return net(w1, jax.lax.stop_gradient(mixing(alpha, k_v, state.step)), batch_v,
                   state.step)[0]

      hg = jax.grad(lookahead)(hp)
      hg_norm = tree_norm(hg)
      hu, h_state = h_opt.update(hg, h_state, hp)
      hp = optax.apply_updates(hp, hu)
      hp = {"log_lr": jnp.clip(hp["log_lr"], math.log(1e-4), math.log(1.0)),
            "log_wd": jnp.clip(hp["log_wd"], math.log(1e-7), math.log(1e-1))}
    opt = make_optimizer("sgd", opt_h(hp), {})
    w_opt = with_hyperparams(state.w_opt, opt_h(hp), {})
    updates, w_opt = opt.update(g, w_opt, state.params)
    params = optax.apply_updates(state.params, updates)
    tel = {"train_loss": tl, "train_acc": tacc, "val_loss": val_loss, "val_acc": val_acc,
           "arch_grad_norm": tree_norm(g_a), "weight_grad_norm": tree_norm(g),
           "expected_cost": cost, "learning_rate": jnp.exp(hp["log_lr"]),
           "weight_decay": jnp.exp(hp["log_wd"]), "hypergrad_norm": hg_norm,
           "aux_skip": aux(state.step)}
    return NASState(params, alpha, w_opt, a_state, hp, h_state, state.step + 1), tel

  def arch_grad(state, batch_t, batch_v, key):
    return arch_grad_aux(state, batch_t, batch_v, jax.random.split(key)[0])[0]

  def val_loss(params, alpha, batch):
    probs = jax.tree.map(lambda a: jax.nn.softmax(a, -1), alpha)
    return net(params, probs, batch, jnp.asarray(s.total_steps))[0]

  return NASProgram(init, step, arch_grad, mixing, val_loss, model, settings)
