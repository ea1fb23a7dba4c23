"""Saving meta-parameters with orbax and loading them back as an optax transform.

A saved learned optimizer is an orbax checkpoint directory holding ``theta`` and JSON
metadata naming the factory and its settings, so::

    metaopt.lopt.save("runs/my_lopt", lopt, theta)
    opt = optax.chain(optax.clip_by_global_norm(1.0), metaopt.lopt.load("runs/my_lopt"))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import optax

from metaopt._src.checkpoint import Checkpointer
from metaopt._src.lopt.base import LearnedOptimizer
from metaopt._src.lopt.controller import adam_controller, hparam_controller
from metaopt._src.lopt.mlp_lopt import mlp_lopt

PyTree = Any
LOPTS: dict[str, Callable[..., LearnedOptimizer]] = {
    "mlp": mlp_lopt, "hparam_controller": hparam_controller, "adam_controller": adam_controller}


def make_lopt(name: str, **kwargs: Any) -> LearnedOptimizer:
  """The learned optimizer ``name`` (one of ``LOPTS``) built with ``kwargs``."""
  if name not in LOPTS:
    raise ValueError(f"lopt_name={name!r}: allowed values are {', '.join(LOPTS)}")
  return LOPTS[name](**kwargs)


def save(path: str, lopt: LearnedOptimizer, theta: PyTree,
         extra: dict[str, Any] | None = None) -> str:
  """Writes ``theta`` and ``lopt``'s name and settings to the orbax directory ``path``."""
  ckpt = Checkpointer(path, max_to_keep=1)
  meta = {"lopt": lopt.name, "config": dict(lopt.config), "extra": extra or {}}
  ckpt.save(0, jax.device_get(theta), meta)
  ckpt.close()
  return os.path.abspath(path)


def load_meta_params(path: str) -> tuple[LearnedOptimizer, PyTree, dict[str, Any]]:
  """``(lopt, theta, extra)`` saved by :func:`save` at ``path``."""
  if not os.path.isdir(path):
    raise ValueError(f"meta_params={path!r}: no saved learned optimizer there (a directory "
                     "written by metaopt.lopt.save or a meta_train run)")
  ckpt = Checkpointer(path, max_to_keep=1)
  meta = ckpt.meta()
  if meta is None:
    ckpt.close()
    raise ValueError(f"meta_params={path!r}: the directory holds no checkpoint")
  lopt = make_lopt(meta["lopt"], **meta["config"])
  restored = ckpt.restore(lopt.init(jax.random.PRNGKey(0)))
  ckpt.close()
  if restored is None:
    raise ValueError(f"meta_params={path!r}: the checkpoint could not be read")
  return lopt, restored[1], meta.get("extra", {})


def load(path: str) -> optax.GradientTransformation:
  """The learned optimizer saved at ``path`` as an ``optax.GradientTransformation``."""
  lopt, theta, _ = load_meta_params(path)
  return lopt.as_optax(theta)
