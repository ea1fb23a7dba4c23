"""Streaming input: a population trained on a dataset that need not fit in device memory.

The in-memory engine (:func:`metaopt._src.population.make_kernel`) copies the train and valid
splits onto the device once and gathers minibatches inside the compiled chunk. A streaming
kernel instead gathers each block of ``block_steps`` minibatches on the host from a
random-access source (a numpy array or ``np.memmap``, a TFDS ``data_source`` over
array_record, a grain source: anything indexable by an integer array) and feeds it to one
compiled block function, a background thread preparing the next ``prefetch`` blocks while the
device trains. Every block has the same shapes, so an epoch is several calls of one kernel
(no recompiles). The minibatch order is the in-memory engine's (the same permutation of the
chunk key, shared by the population or one per trial), and the train step is the same
function: on the same data both give the same states. Validation runs in batches of
``eval_batch`` rows; metrics that are means (loss, accuracy, MSE) are averaged weighted by
batch size. Host memory holds ``prefetch + 1`` blocks, not the dataset.

:func:`should_stream` picks streaming when the train and valid splits together exceed
:data:`memory_budget` bytes (``$METAOPT_DATA_MEMORY_BYTES``, default 2 GiB), so small data
keeps the in-memory fast path.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metaopt._src import population as pop
from metaopt._src.jit_options import OptionsJit
from metaopt.tasks import Dataset, TrialFns

PyTree = Any
_DEFAULT_BUDGET = 2 << 30


def memory_budget() -> int:
  """Bytes of train + valid data the engine keeps in device memory before it streams:
  ``$METAOPT_DATA_MEMORY_BYTES`` if set, else 2 GiB."""
  v = os.environ.get("METAOPT_DATA_MEMORY_BYTES")
  if v is None:
    return _DEFAULT_BUDGET
  try:
    out = int(v)
  except ValueError:
    raise ValueError(f"METAOPT_DATA_MEMORY_BYTES={v!r}: must be an integer >= 0") from None
  if out < 0:
    raise ValueError(f"METAOPT_DATA_MEMORY_BYTES={v!r}: must be an integer >= 0")
  return out


def data_bytes(data: Dataset) -> int:
  """Bytes of the train and valid splits as float32 inputs and their labels."""
  return sum(int(np.prod(s.x.shape)) * 4 + len(s.y) * 4 for s in (data.train, data.valid))


def should_stream(data: Dataset, budget: int | None = None) -> bool:
  """Whether the train and valid splits exceed ``budget`` (default :func:`memory_budget`)."""
  return data_bytes(data) > (memory_budget() if budget is None else budget)


def _take(source: Any, idx: np.ndarray) -> np.ndarray:
  """Rows ``idx`` of a random-access source, as a float32 / int32 numpy array."""
  if not isinstance(source, np.ndarray):  # e.g. tasks' SourceArray over array_record
    return np.asarray(source[idx])
  order = np.argsort(idx, kind="stable")  # sorted reads are sequential on a memmap
  out = np.empty((len(idx), *source.shape[1:]), source.dtype)
  out[order] = source[idx[order]]
  return out


def _cast(x: np.ndarray, like: np.dtype) -> np.ndarray:
  if x.dtype == np.uint8 and like == np.float32:
    return (x / np.float32(255.0)).astype(np.float32)
  return x.astype(like, copy=False)


class StreamingKernel:
  """A population kernel (``init``, ``chunk``, ``steps_per_chunk``, ``multiple``, ``mode``
  as :class:`~metaopt._src.population.PopulationKernel`) whose ``chunk`` streams the epoch's
  minibatches from the host; its ``data`` argument is ignored.

  ``max_steps`` cuts a chunk to that many minibatches (of the epoch's permutation) and
  ``eval_rows`` validates on the first rows only (both for measurements)."""

  mode = "vmap"

  def __init__(self, fns: TrialFns, data: Dataset, batch_size: int,
               shared_batches: bool = True, block_steps: int = 16, prefetch: int = 2,
               eval_batch: int = 1024, max_steps: int | None = None,
               eval_rows: int | None = None, mesh: Mesh | None = None):
    n_train = len(data.train)
    for name, v, lo in (("batch_size", batch_size, 1), ("block_steps", block_steps, 1),
                        ("prefetch", prefetch, 0), ("eval_batch", eval_batch, 1),
                        ("max_steps", 1 if max_steps is None else max_steps, 1),
                        ("eval_rows", 1 if eval_rows is None else eval_rows, 1)):
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
    if batch_size > n_train:
      raise ValueError(f"batch_size={batch_size}: must be in [1, {n_train}] (train split size)")
    self.fns, self.data = fns, data
    self.batch_size, self.shared = batch_size, shared_batches
    self.n_train = n_train
    self.steps_per_chunk = min(n_train // batch_size, max_steps or n_train)
    self.block_steps = min(block_steps, self.steps_per_chunk)
    self.eval_rows = min(eval_rows or len(data.valid), len(data.valid))
    self.prefetch, self.eval_batch = prefetch, min(eval_batch, self.eval_rows)
    self.x_dtype = np.dtype(np.float32)
    self.y_dtype = np.dtype(np.int32 if data.num_classes is not None else np.float32)
    self._perms = jax.jit(self._perms_fn, static_argnums=(1,))
    self.mesh, self.multiple = mesh, 1 if mesh is None else mesh.shape["pop"]
    if mesh is None:
      # built as the in-memory kernel's init and chunk are: the same numbers bit for bit
      self.init = pop.PopulationInit(fns.init)
      self._block = OptionsJit(self._block_fn, pop.chunk_compile_options(), donate_argnums=(0,))
      self._eval = OptionsJit(self._eval_fn, pop.chunk_compile_options())
      self._where = None
      return
    # trials over "pop"; a block's minibatches over "data" when the mesh has that axis
    # (gradients then averaged by the compiler's collectives), else replicated
    data_ax = "data" if "data" in mesh.axis_names else None
    ps, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(None, data_ax) if shared_batches else  # [steps, rows]
                          P("pop", None, data_ax))  # [trials, steps, rows]
    self._where = (batch, batch, rep)
    self.init = pop.PopulationInit(fns.init, in_shardings=(ps, ps), out_shardings=ps)
    self._block = OptionsJit(self._block_fn, pop.chunk_compile_options(),
                             in_shardings=(ps, ps, ps, batch, batch, rep),
                             out_shardings=(ps, ps), donate_argnums=(0,))
    # validation batches replicated: any eval_batch works, whatever the data axis
    self._eval = OptionsJit(self._eval_fn, pop.chunk_compile_options(),
                            in_shardings=(ps, ps, rep, rep), out_shardings=ps)
    self._pop_sharding = ps

  # ----------------------------------------------------------------- compiled pieces
  def _block_fn(self, states, h, alive, xb, yb, valid):
    """``block_steps`` train steps of every trial; steps with ``valid[i]`` off (the padding
    of the last block) leave the state as it was."""
    in_b = None if self.shared else 0
    train_step = pop.step_fn(self.fns)  # the in-memory kernel's step, so results match

    def trial(state, hh, live, xs, ys):
      def step(s, inp):
        x, y, ok = inp
        new, tel = train_step(s, (x, y), hh)
        keep = ok & live
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s)
        return new, tel
      return jax.lax.scan(step, state, (xs, ys, valid))

    return jax.vmap(trial, in_axes=(0, 0, 0, in_b, in_b))(states, h, alive, xb, yb)

  def _eval_fn(self, states, h, x, y):
    return jax.vmap(self.fns.evaluate, in_axes=(0, None, None, 0))(states, x, y, h)

  def _perms_fn(self, key, n):
    if self.shared:
      return jax.random.permutation(key, self.n_train)
    return jax.vmap(lambda k: jax.random.permutation(k, self.n_train))(jax.random.split(key, n))

  # ----------------------------------------------------------------- host side
  def _blocks(self, perm: np.ndarray) -> Iterator[tuple[Any, Any, Any]]:
    """Device-placed ``(x, y, valid)`` blocks of one epoch, in order."""
    bs, k, steps = self.batch_size, self.block_steps, self.steps_per_chunk
    tr = self.data.train
    for start in range(0, steps, k):
      n_steps = min(k, steps - start)
      cols = perm[..., start * bs:(start + n_steps) * bs]
      pad = (k - n_steps) * bs
      if pad:  # the last block is filled with the epoch's first rows; those steps are masked
        cols = np.concatenate([cols, perm[..., :pad]], axis=-1)
      flat = cols.reshape(-1)
      x = _cast(_take(tr.x, flat), self.x_dtype)
      y = _take(tr.y, flat).astype(self.y_dtype)
      lead = cols.shape[:-1]  # () shared, (n,) per trial
      x = x.reshape(*lead, k, bs, *x.shape[1:])
      y = y.reshape(*lead, k, bs)
      valid = np.arange(k) < n_steps
      yield jax.device_put((x, y, valid), self._where)

  def _prefetched(self, gen: Iterator[Any]) -> Iterator[Any]:
    if self.prefetch == 0:
      yield from gen
      return
    q: queue.Queue = queue.Queue(self.prefetch)
    done = object()
    err: list[BaseException] = []
    stop = threading.Event()

    def work():
      try:
        for item in gen:
          if stop.is_set():
            return
          q.put(item)
      except BaseException as e:  # noqa: BLE001 - re-raised on the consumer's thread
        err.append(e)
      finally:
        q.put(done)

    t = threading.Thread(target=work, name="metaopt-prefetch", daemon=True)
    t.start()
    try:
      while (item := q.get()) is not done:
        yield item
    finally:
      stop.set()
      while t.is_alive():  # unblock a producer waiting on a full queue
        try:
          q.get_nowait()
        except queue.Empty:
          t.join(0.01)
    if err:
      raise err[0]

  def evaluate(self, states: PyTree, h: Mapping[str, Any], split: str = "valid") -> dict:
    """Metrics of every trial on a split, in batches of ``eval_batch`` rows (means weighted
    by rows)."""
    s = getattr(self.data, split)
    n = self.eval_rows if split == "valid" else len(s)
    return evaluate_batched(self._eval, states, h, s, self.eval_batch, self.y_dtype, rows=n)

  def chunk(self, states: PyTree, h: Mapping[str, Any], alive: Any, key: jax.Array,
            data: Any = None) -> tuple[PyTree, dict]:
    """One epoch of every live trial, streamed; returns ``(states, epoch metrics)``."""
    del data
    n = int(np.shape(alive)[0])
    h = {k_: jnp.asarray(v) for k_, v in h.items()}
    alive = jnp.asarray(alive)
    if self.mesh is not None:  # states gathered on the host (compaction, PBT) come back
      states, h, alive = jax.device_put((states, h, alive), self._pop_sharding)
    perm = np.asarray(self._perms(key, n))
    tels = []
    for xb, yb, valid in self._prefetched(self._blocks(perm)):
      states, tel = self._block(states, h, alive, xb, yb, valid)
      tels.append((tel, valid))
    tel = _concat_valid(tels)
    ev = self.evaluate(states, h)
    metrics = jax.vmap(pop.epoch_metrics)(tel, ev)
    zero = lambda m: jnp.where(alive.reshape((-1,) + (1,) * (m.ndim - 1)), m, jnp.zeros_like(m))
    return states, jax.tree_util.tree_map(zero, metrics)


def batches(split: Any, eval_batch: int, y_dtype: Any, rows: int | None = None
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``(x, y)`` host batches of the first ``rows`` rows of a split (default all), in order,
  ``eval_batch`` rows each (the last may be smaller); inputs float32 (uint8 scaled)."""
  n = len(split) if rows is None else rows
  for start in range(0, n, eval_batch):
    idx = np.arange(start, min(n, start + eval_batch))
    yield _cast(_take(split.x, idx), np.dtype(np.float32)), \
        _take(split.y, idx).astype(y_dtype)


def evaluate_batched(fn: Callable, states: PyTree, h: Mapping[str, Any], split: Any,
                     eval_batch: int, y_dtype: Any, rows: int | None = None) -> dict:
  """Metrics of a population on a split, ``fn(states, h, x, y) -> {name: [n]}`` run on
  batches of ``eval_batch`` rows: each metric (a mean over rows: loss, accuracy, MSE) is the
  row-weighted mean of its batches' (float64 on the host, float32 returned), so host and
  device memory hold one batch, not the split. One batch gives ``fn``'s values exactly."""
  n = len(split) if rows is None else rows
  total: dict[str, np.ndarray] = {}
  for x, y in batches(split, eval_batch, y_dtype, n):
    m = jax.device_get(fn(states, h, jnp.asarray(x), jnp.asarray(y)))
    w = len(x) / n
    for k_, v in m.items():
      v = np.asarray(v, np.float64) * w
      total[k_] = v if k_ not in total else total[k_] + v
  return {k_: v.astype(np.float32) for k_, v in total.items()}


def _concat_valid(tels: list[tuple[dict, Any]]) -> dict:
  """Per-step telemetry of the epoch, ``[n, steps, ...]``, padding steps dropped."""
  keep = np.concatenate([np.asarray(v) for _, v in tels])
  out = {}
  for k in tels[0][0]:
    a = jnp.concatenate([t[k] for t, _ in tels], axis=1)
    out[k] = a[:, np.flatnonzero(keep)]
  return out


def make_streaming_kernel(fns: TrialFns, data: Dataset, batch_size: int,
                          shared_batches: bool = True, **kwargs: Any) -> StreamingKernel:
  """A :class:`StreamingKernel` (``block_steps``, ``prefetch`` and ``eval_batch`` in
  ``kwargs``)."""
  return StreamingKernel(fns, data, batch_size, shared_batches, **kwargs)


def shape_only(data: Dataset) -> dict[str, np.ndarray]:
  """The engine's ``data`` dict for a streamed dataset: arrays with the splits' shapes and
  dtypes that take no memory (for cost analysis, which reads shapes only)."""
  like = lambda a, dt: np.broadcast_to(np.zeros((), dt), a.shape)
  y_dt = np.int32 if data.num_classes is not None else np.float32
  return {"x_train": like(data.train.x, np.float32), "y_train": like(data.train.y, y_dt),
          "x_valid": like(data.valid.x, np.float32), "y_valid": like(data.valid.y, y_dt)}


StreamFn = Callable[..., StreamingKernel]
