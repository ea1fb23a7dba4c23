"""Multi-host searches: several JAX processes (``jax.distributed``) share one search.

After :func:`initialize` in every process (same arguments but ``process_id``),
:func:`metaopt.search` splits each round's population between the processes: trial ``i`` of
a round is trained by process ``i % num_processes`` on that process's local devices. After
every epoch the processes exchange their trials' metrics (a CPU all-gather, gloo on CPU), so
each holds the whole population's results and takes the same pruning decisions and the
same searcher steps. Only process 0 writes the store. What the others need from it to take
their next step (the study record, a round's trial ids, its outcomes) process 0 reads and
hands them in a collective (:func:`from_leader`), so every process takes the same steps and
collectives in the same order (read by each process itself, the store may already hold
process 0's next round).
Each process checkpoints its own trials (``round_NNNNN/process_P``) and a resumed run
restores the newest step every process can read.

Exploit steps of population-based training copy weights between trials and so need every
trial in one process: PBT runs single-host.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               **kwargs: Any) -> None:
  """``jax.distributed.initialize`` with CPU collectives (gloo) enabled, as this process
  ``process_id`` of ``num_processes``; e.g. ``initialize("127.0.0.1:1234", 2, 0)``."""
  for name, v, lo in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
  if process_id >= num_processes:
    raise ValueError(f"process_id={process_id}: must be < num_processes={num_processes}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **kwargs)


def is_multi() -> bool:
  return jax.process_count() > 1


def allgather(obj: Any) -> list[Any]:
  """Every process's ``obj`` (any picklable value), in process order."""
  if not is_multi():
    return [obj]
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
  sizes = sizes.reshape(-1)
  # powers of two: each new buffer shape compiles a new all-gather
  buf = np.zeros(1 << max(10, int(sizes.max() - 1).bit_length()), np.uint8)
  buf[:data.size] = data
  every = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
  return [pickle.loads(every[p, :int(sizes[p])].tobytes()) for p in range(len(sizes))]


def from_leader(name: str, fn: Callable[[], T]) -> T:
  """``fn()`` run by process 0 alone, its value (or its exception) handed to every process.

  A collective: every process calls it at the same point of the program, with the same
  ``name`` (an AssertionError names both when they differ). One process: ``fn()``.
  """
  if not is_multi():
    return fn()
  out, error = None, None
  if jax.process_index() == 0:
    try:
      out = (True, fn())
    except Exception as e:  # noqa: BLE001 - every process raises it
      error, out = e, (False, _picklable(e))
  got = allgather((name, out))
  names = [n for n, _ in got]
  if len(set(names)) > 1:
    raise AssertionError(f"processes out of step: at {names} (in process order)")
  if error is not None:
    raise error
  ok, value = got[0][1]
  if not ok:
    raise value
  return value


def _picklable(e: Exception) -> Exception:
  try:
    pickle.loads(pickle.dumps(e))
    return e
  except Exception:  # noqa: BLE001
    return RuntimeError(f"process 0: {type(e).__name__}: {e}")


class HostStore:
  """A store as seen by one process of a multi-host search: process 0 writes, the others
  skip writes; the trial ids process 0 stores reach the others through :func:`from_leader`."""

  def __init__(self, store: Any):
    self._store = store
    self.leader = jax.process_index() == 0

  def __getattr__(self, name: str) -> Any:  # reads pass through
    return getattr(self._store, name)

  def log_event(self, *args: Any, **kwargs: Any) -> None:
    if self.leader:
      self._store.log_event(*args, **kwargs)

  def record_epoch(self, *args: Any, **kwargs: Any) -> None:
    if self.leader:
      self._store.record_epoch(*args, **kwargs)

  def set_objectives(self, *args: Any, **kwargs: Any) -> None:
    if self.leader:
      self._store.set_objectives(*args, **kwargs)

  def record_values(self, *args: Any, **kwargs: Any) -> None:
    if self.leader:
      self._store.record_values(*args, **kwargs)

  def start_round(self, study_id: int, rnd: int, *args: Any, **kwargs: Any) -> list[int]:
    return from_leader(f"metaopt-start-round-{rnd}",
                       lambda: self._store.start_round(study_id, rnd, *args, **kwargs))

  def end_round(self, study_id: int, rnd: int, *args: Any, **kwargs: Any) -> None:
    from_leader(f"metaopt-end-round-{rnd}",
                lambda: self._store.end_round(study_id, rnd, *args, **kwargs))
