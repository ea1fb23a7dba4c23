"""Population checkpoints through orbax, written atomically at chunk boundaries.

Each step holds two items: ``state`` (any pytree of arrays: population train states,
searcher state, masks) saved with ``StandardSave``, and ``meta`` (JSON) saved with
``JsonSave``. orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves only the previous step visible. Restoring needs an abstract
target (``jax.ShapeDtypeStruct`` leaves) so optax state types survive the round trip; if the
newest step cannot be read, the one before it is used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any
log = logging.getLogger(__name__)


class Checkpointer:
  """Keeps the newest ``max_to_keep`` steps of one pytree + JSON metadata under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
    self._mgr.wait_until_finished()

  def steps(self) -> list[int]:
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def restore(self, abstract: PyTree | Callable[[dict[str, Any]], PyTree]
              ) -> tuple[int, PyTree, dict[str, Any]] | None:
    """The newest readable ``(step, state, meta)``, or None when there is none.

    ``abstract`` is the target pytree (arrays or ``ShapeDtypeStruct`` s), or a function of
    the step's metadata returning it, for states whose shapes the metadata records.
    """
    for step in reversed(self.steps()):
      try:
        meta = self._mgr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        tree = abstract(meta) if callable(abstract) else abstract
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        return step, out["state"], meta
      except Exception as e:  # noqa: BLE001 - a damaged step falls back to the previous one
        log.warning("checkpoint step %d in %s unreadable (%s); trying an older one", step,
                    self.directory, e)
    return None

  def meta(self) -> dict[str, Any] | None:
    """The JSON metadata of the newest step, or None when there is none."""
    steps = self.steps()
    if not steps:
      return None
    return self._mgr.restore(steps[-1], args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self._mgr.close()
