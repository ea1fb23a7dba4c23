"""Population checkpoints through orbax, written atomically at chunk boundaries.

Each step holds two items: ``state`` (any pytree of arrays: population train states,
searcher state, masks) saved with ``StandardSave``, and ``meta`` (JSON) saved with
``JsonSave``. orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves only the previous step visible. Restoring needs an abstract
target (``jax.ShapeDtypeStruct`` leaves) so optax state types survive the round trip. Every
step's metadata carries a SHA-256 digest of the state's bytes, and each step directory a
list of its files' SHA-256 digests (``metaopt_files.json``, written once orbax has finished
the step): a step whose files no longer match (a damaged or partially copied file) is skipped
before orbax reads it, as is a step that cannot be read or whose restored bytes do not match,
and the one before it is used. (Handing orbax damaged files is not harmless: when one of its
concurrent reads fails, the reads still in flight call back into the asyncio loop it has
already closed.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
log = logging.getLogger(__name__)


def digest(tree: PyTree) -> str:
  """SHA-256 of the leaves' shapes, dtypes and bytes (PRNG keys by their key data)."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    h.update(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


FILES = "metaopt_files.json"


def _file_digests(step_dir: str) -> dict[str, str]:
  """SHA-256 of every file of the step's items (``state``, ``meta``), by relative path."""
  out = {}
  for item in ("state", "meta"):
    for root, _, files in os.walk(os.path.join(step_dir, item)):
      for f in files:
        path = os.path.join(root, f)
        with open(path, "rb") as fh:
          out[os.path.relpath(path, step_dir)] = hashlib.file_digest(fh, "sha256").hexdigest()
  return dict(sorted(out.items()))


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(tree: PyTree) -> PyTree:
  """Numpy leaves (PRNG keys as their key data): what a process of a multi-host search
  saves, since orbax takes only global arrays there."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(jax.random.key_data(x) if _is_key(x) else jax.device_get(x)), tree)


def _host_target(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(
      lambda x: np.zeros(jax.eval_shape(jax.random.key_data, x).shape, np.uint32)
      if _is_key(x) else np.zeros(x.shape, x.dtype), tree)


def _from_host(tree: PyTree, like: PyTree) -> PyTree:
  return jax.tree_util.tree_map(
      lambda x, a: jax.random.wrap_key_data(jnp.asarray(x)) if _is_key(a) else x, tree, like)


class Checkpointer:
  """Keeps the newest ``max_to_keep`` steps of one pytree + JSON metadata under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.skipped: list[int] = []
    os.makedirs(self.directory, exist_ok=True)
    kwargs: dict[str, Any] = {"create": True}
    if jax.process_count() > 1:  # multi-host searches: each process keeps its own steps
      me = jax.process_index()
      kwargs = {"create": False, "multiprocessing_options": ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"metaopt-{me}")}
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False, **kwargs))

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Writes ``state`` and ``meta`` (with a SHA-256 digest of the state) as ``step``."""
    meta = {**meta, "_digest": digest(state)}
    if step in self.steps():  # e.g. a damaged step skipped by restore, now written anew
      self._mgr.delete(step)
    if jax.process_count() > 1:
      state = _to_host(state)
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
    self._mgr.wait_until_finished()
    step_dir = self._step_dir(step)
    tmp = os.path.join(step_dir, FILES + ".tmp")
    with open(tmp, "w") as fh:
      json.dump(_file_digests(step_dir), fh)
    os.replace(tmp, os.path.join(step_dir, FILES))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_files(self, step: int) -> None:
    """Raises when the step's files differ from those listed when it was written (a step
    written without the list, e.g. killed just before, is left to the state's digest)."""
    try:
      with open(os.path.join(self._step_dir(step), FILES)) as fh:
        want = json.load(fh)
    except FileNotFoundError:
      return
    got = _file_digests(self._step_dir(step))
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
      raise ValueError(f"{len(bad)} file(s) differ from those written, e.g. {bad[0]}")

  def steps(self) -> list[int]:
    """The steps written so far, ascending (re-read from disk)."""
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def restore(self, abstract: PyTree | Callable[[dict[str, Any]], PyTree],
              max_step: int | None = None) -> tuple[int, PyTree, dict[str, Any]] | None:
    """The newest readable ``(step, state, meta)`` (at most ``max_step``), or None.

    ``abstract`` is the target pytree (arrays or ``ShapeDtypeStruct`` s), or a function of
    the step's metadata returning it, for states whose shapes the metadata records.
    Steps skipped as unreadable are listed in ``self.skipped``.
    """
    self.skipped = []
    for step in reversed(self.steps()):
      if max_step is not None and step > max_step:
        continue
      try:
        self._check_files(step)
        meta = self._mgr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        tree = abstract(meta) if callable(abstract) else abstract
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
        if jax.process_count() > 1:
          out = self._mgr.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(_host_target(target))))
          out = {"state": _from_host(out["state"], target)}
        else:
          out = self._mgr.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target)))
        meta = dict(meta)
        want = meta.pop("_digest", None)
        if want is not None and digest(out["state"]) != want:
          raise ValueError("state bytes do not match the digest written with them")
        return step, out["state"], meta
      except Exception as e:  # noqa: BLE001 - a damaged step falls back to the previous one
        log.warning("checkpoint step %d in %s unreadable (%s); trying an older one", step,
                    self.directory, e)
        self.skipped.append(step)
    return None

  def meta(self) -> dict[str, Any] | None:
    """The JSON metadata of the newest step, or None when there is none."""
    steps = self.steps()
    if not steps:
      return None
    meta = dict(self._mgr.restore(steps[-1], args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])
    meta.pop("_digest", None)
    return meta

  def close(self) -> None:
    """Waits for pending writes and closes the checkpoint manager."""
    self._mgr.close()
