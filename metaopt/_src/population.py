"""The population engine: N trials trained in one compiled kernel, a chunk per call.

A chunk is one epoch: a ``lax.scan`` over minibatches, then an evaluation on the valid
split, all inside the kernel, returning per-trial epoch telemetry. Trials whose ``alive``
flag is off (failed, pruned) keep their state unchanged. The kernel is ``jit(vmap(...))``
on accelerators and meshes; on one CPU device it loops over the live trials inside the
compiled chunk (``mode="loop"``, see :func:`make_kernel`), which is faster there and makes
stopped trials free.

With ``shared_batches=True`` (the default) every trial of the population sees the same
minibatch order in an epoch (common random numbers: comparisons between hyperparameters are
less noisy), and the first layer of all trials becomes one large matrix product, because
the shared input batch is not vmapped. Each trial still has its own initialisation seed.

Compute accounting: :func:`trial_epoch_flops` is XLA's cost analysis of the lowered
train step (times the steps of a chunk) plus the evaluation, per trial (one trial's own
step for a ``"loop"`` kernel, the population step divided per trial for ``"vmap"``);
:func:`compile_seconds` counts time JAX spent tracing and compiling, so the driver can keep
compilation out of the device-seconds it charges to trials.

Compile time: on small tasks one XLA compile costs as much as hundreds of trial-epochs, so
the engine compiles only the hot ``chunk`` with backend optimisation (LLVM -O1:
:data:`CHUNK_COMPILE`). Functions run a few times per round (the population ``init``, the
searcher's ``tell`` and ``observe``, ``decode``, gathers) go through :func:`fast_jit`, and the
searcher's ``ask`` through :class:`TieredJit`, which recompiles it optimised only when the
remaining calls pay for it.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metaopt._src.dots import canonical_dots
from metaopt._src.jit_options import OptionsJit
from metaopt.tasks import Dataset, TrialFns

PyTree = Any


class PopulationKernel(NamedTuple):
  """Compiled functions for one structural group."""

  init: Any     # (keys[n], h) -> states
  chunk: Any    # (states, h, alive, key, data) -> (states, metrics)
  steps_per_chunk: int
  multiple: int = 1  # population sizes must be multiples of this (the number of devices)
  mode: str = "vmap"  # "loop": stopped trials cost no compute, so there is no need to compact
  workers: int = 1  # threads (CPU cores) a chunk runs on at once (see make_kernel)


_compile: dict[int, float] = {}  # thread id -> seconds
_compile_lock = threading.Lock()


def _on_duration(event: str, duration: float, **_: Any) -> None:
  # JAX reports tracing, lowering and compilation on the thread that does them
  if event.startswith("/jax/core/compile/"):
    with _compile_lock:
      t = threading.get_ident()
      _compile[t] = _compile.get(t, 0.0) + duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
  """Seconds the calling thread has spent tracing, lowering and compiling JAX computations
  (work other threads compile meanwhile is theirs, so wall time minus this difference
  stays the caller's run time)."""
  return _compile.get(threading.get_ident(), 0.0)


# Skips XLA's backend (LLVM) optimisation passes. Measured on a 2-core CPU: the vmapped
# digits-MLP init compiles in 1.1 s instead of 5.7 s, the TPE ask in 2.4 s instead of 3.7 s
# (then 146 ms per call instead of 87 ms); the chunk would run 4.5x slower, so it never is.
FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0}


# The chunk's backend optimisation level: LLVM -O1 instead of XLA's default. Measured (CPU
# seconds, 2-core CPU under load, loop and vmap kernels): the MNIST-1D CNN's loop chunk
# (population 16) compiles in 3.6-4.2 s instead of 4.8-5.4 s, a width-128 digits MLP's vmapped
# chunk (32 trials) in 2.6 s instead of 3.0 s, each running as fast as before (same results:
# the convolutions and matrix products are library calls either way).
CHUNK_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 1}


def chunk_compile_options() -> dict[str, Any] | None:
  # measured on CPU only; GPU/TPU kernels keep XLA's default optimisation
  return CHUNK_COMPILE if jax.default_backend() == "cpu" else None


def fast_jit(fun, **kwargs):
  """``jax.jit`` without XLA backend optimisation, for functions called a few times per
  round whose compilation costs far more than their runs."""
  return OptionsJit(fun, FAST_COMPILE, **kwargs)


# The population ``init`` draws every trial's initial weights; at
# ``xla_backend_optimization_level`` 0 (:func:`fast_jit`) LLVM leaves the PRNG's elementwise
# loops scalar. Level 1 runs it 4.9-5.5x faster (digits MLP width 128, 32 trials: 79-91 ->
# 16-18 ms CPU; width 16: 5.6 -> 1.2-1.4 ms) for 0.13-0.32 s more compile (process time,
# 2-core CPU under load 22-26): about 0.02 us per element of the initial states (weights,
# optimizer state, masks) and call. A population whose initial states have at least this many
# elements is initialised by the level-1 build: at the bound about 40 ms saved per call, the
# extra compile repaid within 3-8 calls (rounds); smaller ones keep the cheaper compile.
INIT_OPT_MIN_ELEMENTS = 1 << 21
INIT_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 1}

# On the CPU both init builds also compile with XLA's older (non-MLIR) fusion emitters (the
# searcher's functions do too, ``loop.SEARCHER_COMPILE_CPU``). Measured (process CPU, digits
# MLP, 16 and 128 trials, 2-core CPU under load 5-7): the fast build compiles in 0.44-0.52 s
# instead of 0.80-0.99 s and runs 5-10% longer (71 instead of 65 ms at 16 trials); the level-1
# build in 0.91-1.08 s instead of 1.34-1.66 s, as fast and bit for bit the same states. The
# fast build's initial weights differ from the newer emitters' in the last bits (their
# truncated normal's transcendental functions round differently); they already differed from
# the level-1 build's, which draws the same weights with either emitter.
INIT_CPU: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


def init_compile_options(optimized: bool) -> dict[str, Any]:
  """XLA options of the population ``init``'s fast (``optimized=False``: :data:`FAST_COMPILE`)
  or level-1 (:data:`INIT_COMPILE`) build, on the CPU with :data:`INIT_CPU`."""
  base = INIT_COMPILE if optimized else FAST_COMPILE
  return {**base, **INIT_CPU} if jax.default_backend() == "cpu" else dict(base)


class PopulationInit:
  """Jitted ``vmap(init)``: a build without backend optimisation for small populations, a
  level-1 build (:data:`INIT_COMPILE`; options: :func:`init_compile_options`) once the
  initial states reach :data:`INIT_OPT_MIN_ELEMENTS` elements; the choice depends on shapes
  only, so it is made once per population size.
  With ``workers > 1`` the level-1 build's population is split over that many threads
  (parts of ``ceil(n / workers)`` trials, each trial initialised as in one call)."""

  def __init__(self, init: Callable, workers: int = 1, **jit_kwargs: Any):
    self._fast = OptionsJit(jax.vmap(init), init_compile_options(False), **jit_kwargs)
    self._opt = OptionsJit(jax.vmap(init), init_compile_options(True), **jit_kwargs)
    self._builds = {False: _Chunk(self._fast), True: _Chunk(self._opt)}
    self._big: dict[Any, bool] = {}
    self.eval_shape = self._fast.eval_shape  # (keys, h) -> shapes of the states
    self._sharded = bool(jit_kwargs)
    self.workers = 1 if jit_kwargs else workers  # (sharded builds are not split)

  def __call__(self, keys: jax.Array, h: Any) -> Any:
    return self.bind(keys, h)()

  def bind(self, keys: jax.Array, h: Any) -> Callable[[], Any]:
    """This init's call on ``(keys, h)``, compiled now on the calling thread: the returned
    function runs it, on any thread (see :func:`run_parallel`), and compiles nothing."""
    leaves, tree = jax.tree_util.tree_flatten(h)
    sig = (keys.shape, tree, tuple(jnp.shape(v) for v in leaves))
    if sig not in self._big:
      out = self.eval_shape(keys, h)
      size = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(out))
      self._big[sig] = size >= INIT_OPT_MIN_ELEMENTS
    big = self._big[sig]
    if self._sharded:  # the jitted call places its arguments on the mesh
      jitted = self._opt if big else self._fast
      return lambda: jitted(keys, h)
    if not big or self.workers == 1 or keys.shape[0] < 2:
      exe = self._builds[big].executable(keys, h)
      return lambda: exe(keys, h)
    n = keys.shape[0]
    m = -(-n // self.workers)
    rows = np.arange(self.workers * m).reshape(self.workers, m)
    idx = rows % n  # short parts padded with trial 0, 1, ...
    parts = [(_rows(keys, i), _rows(h, i)) for i in idx]
    exe = self._builds[True].executable(*parts[0])
    return lambda: _run_parts(exe, parts[0], parts.__getitem__, idx, rows < n, self.workers)


def _sub_jaxprs(params: Mapping[str, Any]) -> list:
  out = []
  for v in params.values():
    for j in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(j, jax.extend.core.ClosedJaxpr):
        out.append(j.jaxpr)
      elif isinstance(j, jax.extend.core.Jaxpr):
        out.append(j)
  return out


def jaxpr_cost(jaxpr: Any) -> tuple[float, int]:
  """``(work, equations)`` of a jaxpr: a rough count of arithmetic operations per call
  (matrix products ``2 m n k``, Cholesky ``n^3 / 3`` per matrix, triangular solves ``n^2``
  per right-hand side, anything else one per output element), loops counted by their trip
  counts (``while`` loops once), a ``cond`` / ``switch`` by the mean of its branches; and the
  number of equations, nested ones included (what XLA compiles). Both depend on shapes only."""
  work, eqns = 0.0, 0
  for e in jaxpr.eqns:
    eqns += 1
    name = e.primitive.name
    size = lambda v: float(np.prod(getattr(v.aval, "shape", ()), dtype=np.float64))  # noqa: E731
    subs = [jaxpr_cost(j) for j in _sub_jaxprs(e.params)]
    eqns += sum(c[1] for c in subs)
    if name == "scan":
      work += e.params["length"] * sum(c[0] for c in subs)
    elif name == "cond":
      work += sum(c[0] for c in subs) / max(len(subs), 1)
    elif subs:
      work += sum(c[0] for c in subs)
    elif name == "dot_general":
      (contract, _), _ = e.params["dimension_numbers"]
      k = np.prod([e.invars[0].aval.shape[i] for i in contract], dtype=np.float64)
      work += 2.0 * size(e.outvars[0]) * k
    elif name == "cholesky":
      work += size(e.invars[0]) * e.invars[0].aval.shape[-1] / 3.0
    elif name == "triangular_solve":
      work += size(e.invars[1]) * e.invars[0].aval.shape[-1]
    else:
      work += sum(size(v) for v in e.outvars)
  return work, eqns


# The optimised build of :class:`TieredJit` (the searcher's ``ask``) keeps XLA's default
# backend optimisation; on the CPU it uses XLA's older (non-MLIR) fusion emitters, which
# compile it in 0.5-0.75 of the CPU time at about the same run time (``gp_bo(5).ask``, 20
# observations, batch 10: XLA compile 14.1-17.5 -> 7.3-9.9 s CPU, run 3.76 -> 3.10 s CPU per
# call single-threaded; ``tpe(5).ask`` at 50 observations: 5.9-7.0 -> 3.4-5.0 s, run 57 -> 59-61
# ms single-threaded, 46.1 -> 46.4 ms multi-threaded; process CPU on 2 cores under load 6-16,
# BENCHMARKS.md). Its proposals differ from the newer emitters' in the last bits, as the fast
# build's already do (``tests/test_engine_compiles.py``).
OPT_COMPILE_CPU: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


def opt_compile_options() -> dict[str, Any] | None:
  """XLA options of :class:`TieredJit`'s optimised build on this backend."""
  return dict(OPT_COMPILE_CPU) if jax.default_backend() == "cpu" else None


class TieredJit:
  """A jitted function compiled by :func:`fast_jit`, or with full optimisation when the
  calls left pay for the longer compile: ``calls_left * run_s * (1 - 1 / SPEEDUP) >
  COMPILE_RATIO * compile_s``, where ``run_s = work / WORK_RATE`` and ``compile_s =
  equations * COMPILE_S_PER_EQN`` come from :func:`jaxpr_cost` of the traced function.

  The choice is made per call from the arguments' shapes and ``calls_left`` only, never from
  timings or from what the process compiled before, so a search makes the same choices (and
  the same proposals, bit for bit) in every run and process. (A search long enough for the
  optimised build falls back to the fast one for its last calls, when too few remain to
  repay an optimised compile; that costs one fast compile more.) The constants are measured
  on a 2-core CPU (TPE and
  GP-BO ``ask``: optimised code 1.7-2.9x faster; level-0 runs at ~1e9 work units per second,
  level-0 compile 1.2-2.2 ms per equation). The optimised compile took 1.5-2.0x the fast
  one with XLA's default emitters and 1.0-1.5x with :data:`OPT_COMPILE_CPU` (``gp_bo(5)``
  at 20 observations 1.02, ``tpe(5)`` at 50 1.46, process CPU under load 7-16, 2026-12-07),
  hence ``COMPILE_RATIO`` 1.5 (was 2.0).

  Call as ``f(*args, calls_left=k)``, ``k`` counting this call.
  """

  SPEEDUP = 2.0
  COMPILE_RATIO = 1.5
  WORK_RATE = 1e9
  COMPILE_S_PER_EQN = 1.5e-3

  def __init__(self, fun, **jit_kwargs):
    self._fast = fast_jit(fun, **jit_kwargs)
    self._opt = OptionsJit(fun, opt_compile_options(), **jit_kwargs)
    self._static = set(np.atleast_1d(jit_kwargs.get("static_argnums", ())).tolist())
    self._cost: dict[Any, tuple[float, int]] = {}
    self.optimized = False  # the build the last call used

  def _sig(self, args) -> Any:
    leaves, tree = jax.tree_util.tree_flatten(
        [a for i, a in enumerate(args) if i not in self._static])
    return (tree, tuple((jnp.shape(v), str(getattr(v, "dtype", type(v)))) for v in leaves),
            tuple(a for i, a in enumerate(args) if i in self._static))

  def cost(self, *args) -> tuple[float, int]:
    """:func:`jaxpr_cost` of the function at these arguments (traced once per shape)."""
    sig = self._sig(args)
    if sig not in self._cost:
      self._cost[sig] = jaxpr_cost(self._fast.trace(*args).jaxpr.jaxpr)
    return self._cost[sig]

  def pays(self, work: float, eqns: int, calls_left: int) -> bool:
    """Whether ``calls_left`` calls of this cost repay the optimised compile."""
    run_s, compile_s = work / self.WORK_RATE, eqns * self.COMPILE_S_PER_EQN
    return bool(calls_left * run_s * (1 - 1 / self.SPEEDUP) > self.COMPILE_RATIO * compile_s)

  def build(self, optimized: bool) -> OptionsJit:
    """The optimised build (``optimized=True``) or the fast one, as the calls use them."""
    return self._opt if optimized else self._fast

  def __call__(self, *args, calls_left: int = 1):
    opt = self.pays(*self.cost(*args), calls_left)
    self.optimized = opt
    return self.build(opt)(*args)


def _cost_flops(jitted, *args) -> float:
  # the lowered (unoptimised) HLO's cost: within a few percent of the compiled program's,
  # without compiling it (a 3-4 s XLA compile for a small MLP's vmapped train step)
  cost = jitted.lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def shapes(tree: PyTree) -> PyTree:
  """``tree`` with every leaf replaced by its ``jax.ShapeDtypeStruct`` (no data kept)."""
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def trial_epoch_flops(fns: TrialFns, states: PyTree, h: Mapping[str, Any],
                      data: Mapping[str, jax.Array], batch_size: int,
                      per_trial: bool = False) -> float:
  """FLOPs one trial spends per chunk (epoch): XLA's cost analysis of the lowered
  population train step times the steps per chunk, plus the valid-split evaluation, divided
  by the population size. (The cost analysis of a whole ``lax.scan`` counts its body once,
  so the step is analysed on its own.) ``per_trial``: the cost of one trial's own step and
  evaluation instead, what a ``"loop"`` kernel runs for each trial (``vmap``'s batching
  counts 13-16% more on the MNIST-1D CNN and the digits MLP), and cheaper to trace."""
  n = jax.tree_util.tree_leaves(h)[0].shape[0]
  steps = data["x_train"].shape[0] // batch_size
  batch = tuple(jax.ShapeDtypeStruct((batch_size, *data[k].shape[1:]), data[k].dtype)
                for k in ("x_train", "y_train"))
  st, hh = shapes(states), shapes(dict(h))
  if per_trial:
    one = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), t)
    st, hh, n = one(st), one(hh), 1
    train_step, evaluate = jax.jit(fns.train_step), jax.jit(fns.evaluate)
  else:
    train_step = jax.jit(jax.vmap(fns.train_step, in_axes=(0, None, 0)))
    evaluate = jax.jit(jax.vmap(fns.evaluate, in_axes=(0, None, None, 0)))
  step = _cost_flops(train_step, st, batch, hh)
  ev = _cost_flops(evaluate, st, shapes(data["x_valid"]), shapes(data["y_valid"]), hh)
  return (steps * step + ev) / n


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """A 1-D mesh with axis ``"pop"`` over ``devices`` (default: all local devices), or None
  for a single device. Trials are independent, so the population axis shards with no
  communication; data and minibatch order are replicated."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices: must name at least one device")
  if len(devices) == 1:
    return None
  return Mesh(np.asarray(devices), ("pop",), axis_types=(AxisType.Auto,))


def epoch_metrics(tel: Mapping[str, jax.Array], evaluation: Mapping[str, jax.Array]) -> dict:
  """Reduces per-step telemetry of one trial's epoch and adds ``valid_*`` metrics."""
  out = {}
  for k, v in tel.items():
    if k.startswith("nonfinite"):
      out[k] = jnp.any(v)
    elif k == "loss":
      out["train_loss"] = jnp.mean(v)
      out["train_loss_last"] = v[-1]
    else:
      out[k] = jnp.mean(v, axis=0)
  for k, v in evaluation.items():
    out[f"valid_{k}"] = v
  return out


def data_arrays(data: Dataset) -> dict[str, jax.Array]:
  """Train and valid splits as device arrays (the test split never enters a search)."""
  # device_put, not jnp.asarray: the latter compiles a conversion per array shape; a lazy
  # array (a source or memmap view with ``__array__``) is read into host memory first
  def host(v: Any) -> Any:
    return v if isinstance(v, (np.ndarray, jax.Array)) else np.asarray(v)
  return jax.device_put({"x_train": host(data.train.x), "y_train": host(data.train.y),
                         "x_valid": host(data.valid.x), "y_valid": host(data.valid.y)})


KERNEL_MODES = ("vmap", "loop")
SWITCH_GROUPINGS = ("auto", "always", "never")
# "auto" groups a switch when the vmapped population has at least this many trials per value
# on average (per device). Measured on the digits MLP (benchmarks/population_vs_sequential.py
# --quick, searched activation, 4 values, 2-core CPU under load): at 8 trials per value the 4
# one-branch kernels together run 1.4x (width 16) and 2.4x (width 128) faster than the
# all-branches kernel. Smaller groups were not measured: the bound keeps every grouped kernel
# a batch of at least 8 trials and each extra compile shared by as many.
SWITCH_GROUP_MIN = 8

# With shared minibatches the chunk gathers the epoch's batches once, before the trials train
# (a copy of the train split), when that copy has at most this many bytes; past it, each
# step gathers its own batch.
PREGATHER_MAX_BYTES = 256 << 20

# On CPU the kernels train with :func:`metaopt._src.dots.canonical_dots` applied to the train
# step: weight gradients as products XLA sends to YNNPACK instead of Eigen. Measured (CPU
# process time, 2-core CPU under load, A/B interleaved in one process): digits MLP width 128,
# `loop` kernel, 8 trials, 0.334 -> 0.299 ms per trial-step (median of 7; min 0.324 ->
# 0.264). Results equal up to float rounding.
CANONICAL_DOTS = True


def step_fn(fns: TrialFns) -> Callable:
  """The train step the kernels run: ``fns.train_step``, on CPU (with
  :data:`CANONICAL_DOTS`) with its weight-gradient products in the fast layout."""
  if CANONICAL_DOTS and jax.default_backend() == "cpu":
    return canonical_dots(fns.train_step)
  return fns.train_step


def fix_hparams(fns: TrialFns, values: Mapping[str, int]) -> TrialFns:
  """``fns`` with the hyperparameters ``values`` fixed to Python constants: a switch index
  (e.g. ``activation``) then picks its branch when traced, so a vmapped population computes
  that branch only instead of every branch followed by a select."""
  fixed = dict(values)
  if not fixed:
    return fns
  f = lambda h: {**h, **fixed}
  return TrialFns(lambda key, h: fns.init(key, f(h)),
                  lambda state, batch, h: fns.train_step(state, batch, f(h)),
                  lambda state, x, y, h: fns.evaluate(state, x, y, f(h)))


def group_switches(policy: str, mode: str, n: int, values: int, multiple: int = 1) -> bool:
  """Whether a searched switch (``values`` distinct values among ``n`` trials) is grouped as
  structure: one kernel per value, each computing only its branch.

  ``"always"`` / ``"never"`` decide alone. ``"auto"`` groups when the kernel mode is
  ``"vmap"`` (a ``"loop"`` kernel runs each trial alone, where ``lax.switch`` already runs
  only the trial's branch) and either every trial has the same value (one kernel either
  way) or the trials per value, per device, average at least :data:`SWITCH_GROUP_MIN`
  (``n / values / multiple >= SWITCH_GROUP_MIN``)."""
  if policy not in SWITCH_GROUPINGS:
    raise ValueError(f"group_switches={policy!r}: must be one of {', '.join(SWITCH_GROUPINGS)}")
  if policy != "auto":
    return policy == "always"
  return mode == "vmap" and (values == 1 or n / values / max(1, multiple) >= SWITCH_GROUP_MIN)


def default_workers() -> int:
  """CPU cores this process may run on, on the CPU backend (1 elsewhere): the threads a
  ``"loop"`` kernel's chunk splits its population over."""
  if jax.default_backend() != "cpu":
    return 1
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return max(1, os.cpu_count() or 1)


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_pool = threading.local()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
  global _pool
  _pool = None


if hasattr(os, "register_at_fork"):
  os.register_at_fork(after_in_child=_forget_pool)


def run_parallel(calls: Sequence[Callable[[], Any]], workers: int | None = None) -> list:
  """The results of ``calls``, run at most ``workers`` (default :func:`default_workers`) at a
  time: on the calling thread and on a shared thread pool, each thread taking the next call
  when it is done with one. Compiled JAX computations release the GIL, so on a multi-core
  CPU they run on separate cores. The first exception raised is raised again once every
  call has returned. A call made from the pool itself runs its ``calls`` one after another
  (no nested waiting)."""
  workers = default_workers() if workers is None else workers
  if workers <= 1 or len(calls) <= 1 or getattr(_in_pool, "on", False):
    return [c() for c in calls]
  global _pool
  with _pool_lock:
    if _pool is None or _pool._max_workers < workers - 1:
      _pool = concurrent.futures.ThreadPoolExecutor(workers - 1,
                                                    thread_name_prefix="metaopt-kernel")
    pool = _pool
  out: list = [None] * len(calls)
  errors: list = []
  todo = iter(range(len(calls)))
  lock = threading.Lock()

  def work(nested: bool) -> None:
    _in_pool.on = nested
    try:
      while True:
        with lock:
          i = next(todo, None)
        if i is None:
          return
        try:
          out[i] = calls[i]()
        except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
          errors.append((i, e))
    finally:
      _in_pool.on = False

  futs = [pool.submit(work, True) for _ in range(min(workers, len(calls)) - 1)]
  work(False)
  concurrent.futures.wait(futs)
  if errors:
    raise min(errors, key=lambda x: x[0])[1]
  return out


def _part_layout(alive: np.ndarray, parts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """How a ``"loop"`` chunk splits ``n`` trials over ``parts`` threads: ``idx`` (parts, m)
  trial indices per part (live trials dealt round-robin, so the parts' live counts differ
  by at most one; ``m = ceil(n / parts)``, short parts padded with a stopped copy of trial
  0), each part's ``alive``, and ``valid``: which rows are trials, not padding. With every
  trial live the parts are contiguous blocks instead (the same longest part), which the
  host split and merge copy as slices."""
  n = alive.shape[0]
  m = -(-n // parts)
  order = np.concatenate([np.flatnonzero(alive), np.flatnonzero(~alive)])
  flat = np.full(parts * m, -1, np.int64)
  flat[:n] = order
  if alive.all():
    idx = flat.reshape(parts, m)  # part p: trials p * m, ..., p * m + m - 1
  else:
    idx = flat.reshape(m, parts).T  # part p: order[p], order[p + parts], ...
  part_alive = np.where(idx >= 0, alive[np.maximum(idx, 0)], False)
  return np.maximum(idx, 0), part_alive, idx >= 0


def _leaf_sig(a: Any) -> tuple:
  # an argument's shape, canonical dtype and weak type: what picks a compiled executable
  dtype = getattr(a, "dtype", None)
  if dtype is None or not hasattr(a, "shape"):  # Python scalars
    return jnp.shape(a), jnp.result_type(a), False
  return (a.shape, jax.dtypes.canonicalize_dtype(dtype, allow_extended_dtype=True),
          getattr(a, "weak_type", False))


class _Chunk:
  """A jitted chunk that keeps, per argument shapes, the executable compiled on the thread
  of its first call: later calls from other threads (see :func:`run_parallel`) run that
  executable, whatever their thread's JAX configuration, and compile nothing there."""

  def __init__(self, jitted: Any):
    self._jit, self._exe, self._lock = jitted, {}, threading.Lock()

  def lower(self, *args: Any) -> Any:
    return self._jit.lower(*args)

  def executable(self, *args: Any) -> Any:
    """The compiled executable for these arguments' shapes (compiled on first use)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    sig = (tree, tuple(map(_leaf_sig, leaves)))
    with self._lock:
      exe = self._exe.get(sig)
      if exe is None:
        exe = self._exe[sig] = self._jit.lower(*args).compile()
    return exe

  def __call__(self, *args: Any) -> Any:
    return self.executable(*args)(*args)


def _rows(tree: PyTree, i: np.ndarray) -> PyTree:
  """Rows ``i`` of every leaf, gathered on the host (a copy, nothing compiled); PRNG key
  leaves by JAX."""
  sel = _rows_index(i)

  def take(a):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return a[jnp.asarray(i)]
    return np.asarray(a)[sel]
  return jax.tree_util.tree_map(take, tree)


def _rows_index(i: np.ndarray) -> slice | np.ndarray:
  # consecutive rows as a slice: a view to read, one block copy to write
  i = np.asarray(i)
  if i.size and np.array_equal(i, np.arange(i[0], i[0] + i.size)):
    return slice(int(i[0]), int(i[0]) + i.size)
  return i


def _has_keys(tree: PyTree) -> bool:
  return any(jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key)
             for a in jax.tree_util.tree_leaves(tree))


def _run_parts(exe: Any, first: tuple, part_args: Callable[[int], tuple], idx: np.ndarray,
               valid: np.ndarray, workers: int) -> PyTree:
  """``exe`` run on every part at once (:func:`run_parallel`): part 0 on ``first``, part
  ``p`` on ``part_args(p)``, built on the part's thread; each thread then writes its valid
  rows into the output, row ``idx[p, r]`` from row ``r``, so split and merge copies run on
  the cores too. Returns one tree of device arrays."""
  info = exe.out_info
  if _has_keys(info):  # PRNG key leaves are put together by JAX
    outs = run_parallel([lambda a=a: jax.block_until_ready(exe(*a)) for a in
                         [first] + [part_args(p) for p in range(1, len(idx))]], workers)
    return _cat_rows(outs, idx, valid)
  leaves, tree = jax.tree_util.tree_flatten(info)
  n = int(valid.sum())
  bufs = [np.empty((n, *a.shape[1:]), a.dtype) for a in leaves]

  def work(p: int) -> None:
    res = jax.tree_util.tree_leaves(exe(*(first if p == 0 else part_args(p))))
    v = valid[p]
    sel = _rows_index(idx[p][v])
    for b, x in zip(bufs, res, strict=True):
      x = np.asarray(x)  # waits for the part
      b[sel] = x if v.all() else x[v]

  run_parallel([lambda p=p: work(p) for p in range(len(idx))], workers)
  return jax.device_put(jax.tree_util.tree_unflatten(tree, bufs))


def _cat_rows(trees: Sequence[PyTree], idx: np.ndarray, valid: np.ndarray) -> PyTree:
  """One tree whose row ``idx[p, r]`` is row ``r`` of ``trees[p]`` where ``valid[p, r]``
  (put together on the host, one copy), as device arrays."""
  def cat(*a):
    if jax.dtypes.issubdtype(a[0].dtype, jax.dtypes.prng_key):
      return jnp.concatenate(a)[jnp.asarray(np.argsort(idx[valid], kind="stable"))]
    out = np.empty((int(valid.sum()), *a[0].shape[1:]), a[0].dtype)
    for p, x in enumerate(a):
      out[idx[p][valid[p]]] = np.asarray(x)[valid[p]]
    return out
  return jax.device_put(jax.tree_util.tree_map(cat, *trees))


class _PartedChunk:
  """A ``"loop"`` chunk over ``workers`` threads: the population is split into parts of
  ``ceil(n / workers)`` trials (see :func:`_part_layout`), each part trained by the same
  compiled loop chunk on its own thread, and the results put back in order. Every trial runs
  the same computation on the same minibatches as in one loop, so results are bit for bit
  those of the unsplit chunk. Executables are compiled on the calling thread (its compile
  accounting and JAX configuration), then run on the pool."""

  def __init__(self, core: Callable, workers: int, shared_batches: bool):
    self.workers, self.shared = workers, shared_batches
    self._core = _Chunk(OptionsJit(core, chunk_compile_options(), donate_argnums=(0,)))

  def _args(self, states, h, alive, key, data, part_n):
    # the arguments of one part's core call, as shapes (for lowering)
    sds = lambda a: jax.ShapeDtypeStruct((part_n, *a.shape[1:]), a.dtype)  # noqa: E731
    tkeys = None if self.shared else jax.ShapeDtypeStruct((part_n,), key.dtype)
    return (jax.tree_util.tree_map(sds, states), jax.tree_util.tree_map(sds, h),
            jax.ShapeDtypeStruct((part_n,), jnp.bool_), key, data, tkeys)

  def lower(self, states, h, alive, key, data):
    """The lowered part computation for a population shaped like these arguments."""
    n = alive.shape[0]
    return self._core.lower(*self._args(states, h, alive, key, data, -(-n // self.workers)))

  def __call__(self, states, h, alive, key, data):
    alive = np.asarray(alive, bool)
    idx, part_alive, valid = _part_layout(alive, self.workers)
    # split and merge on the host: copies of the states, no compile (the gathers compiled
    # would cost ~15% of the chunk's compile, which small searches pay in full)
    # (each part's copies on its own thread, see _run_parts)
    tkeys = None if self.shared else jax.random.split(key, alive.shape[0])
    tk = [None if tkeys is None else tkeys[jnp.asarray(i)] for i in idx]  # (JAX, here)
    here = _has_keys((states, h))
    pre = [(_rows(states, i), _rows(h, i)) if here else None for i in idx]

    def part_args(p):
      st, hp = pre[p] if here else (_rows(states, idx[p]), _rows(h, idx[p]))
      return st, hp, part_alive[p], key, data, tk[p]
    first = part_args(0)
    exe = self._core.executable(*first)
    return _run_parts(exe, first, part_args, idx, valid, self.workers)


def default_mode(mesh: Mesh | None = None) -> str:
  """``"loop"`` on a single CPU device, else ``"vmap"`` (see :func:`make_kernel`)."""
  return "loop" if mesh is None and jax.default_backend() == "cpu" else "vmap"


def make_kernel(fns: TrialFns, n_train: int, batch_size: int,
                shared_batches: bool = True, mesh: Mesh | None = None,
                mode: str | None = None, workers: int | None = None) -> PopulationKernel:
  """Builds the jitted population ``init`` and ``chunk`` for one structural group.

  ``mode="vmap"`` trains the population as ``vmap`` of one trial's chunk: every slot
  computes, stopped trials on frozen states. ``mode="loop"`` runs the live trials one after
  another in a ``lax.fori_loop`` inside the same compiled chunk, so stopped trials cost
  nothing and a shrinking population needs no smaller kernel (no new compile). The default
  (:func:`default_mode`) is ``"loop"`` on one CPU device: there XLA gains nothing from
  vmapping small models (digits MLP, 32 trials: 152 ms per chunk looped vs 204 ms vmapped,
  38 vs 185 ms with 8 of them alive; the same compile time), and ``"vmap"`` on accelerators
  and meshes. Both give every trial the same computation, minibatches and metrics; a
  stopped trial's metrics are zeros in ``"loop"`` mode.

  A ``"loop"`` chunk on the CPU splits the population over ``workers`` threads (default
  :func:`default_workers`, the cores this process may use), one part per core, live
  trials dealt round-robin: every trial computes exactly what it would in one loop (same
  results, bit for bit), both cores busy (see :class:`_PartedChunk`).

  With a ``mesh`` (see :func:`population_mesh`) the population axis of states,
  hyperparameters and metrics is sharded over its devices; population sizes must then be
  multiples of the device count (``PopulationKernel.multiple``). Only ``"vmap"`` shards.
  """
  if batch_size < 1 or batch_size > n_train:
    raise ValueError(f"batch_size={batch_size}: must be in [1, {n_train}] (train split size)")
  mode = default_mode(mesh) if mode is None else mode
  if mode not in KERNEL_MODES or (mode == "loop" and mesh is not None):
    raise ValueError(f"mode={mode!r}: must be one of {', '.join(KERNEL_MODES)} "
                     "('vmap' with a mesh)")
  if workers is None:
    workers = default_workers() if mode == "loop" else 1
  if not isinstance(workers, (int, np.integer)) or workers < 1 or (workers > 1 and
                                                                    mode != "loop"):
    raise ValueError(f"workers={workers!r}: must be an integer >= 1 (1 unless mode='loop')")
  workers = int(workers)
  steps = n_train // batch_size
  train_step = step_fn(fns)

  def epoch_batches(perm, data):
    # shared minibatches: the epoch's batches in one gather per array, (steps, batch, ...),
    # for every trial, instead of a gather per trial and step (None past PREGATHER_MAX_BYTES)
    size = sum(steps * batch_size * math.prod(data[k].shape[1:]) * data[k].dtype.itemsize
               for k in ("x_train", "y_train"))
    if size > PREGATHER_MAX_BYTES:
      return None
    idx = perm[:steps * batch_size].reshape(steps, batch_size)
    return data["x_train"][idx], data["y_train"][idx]

  def trial_chunk(state, h, alive, perm, data, batches=None):
    if batches is None:
      def step(s, i):
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        batch = (data["x_train"][idx], data["y_train"][idx])
        return train_step(s, batch, h)
      new, tel = jax.lax.scan(step, state, jnp.arange(steps))
    else:
      new, tel = jax.lax.scan(lambda s, b: train_step(s, b, h), state, batches)
    ev = fns.evaluate(new, data["x_valid"], data["y_valid"], h)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, state)
    return new, epoch_metrics(tel, ev)

  def chunk(states, h, alive, key, data):
    n = alive.shape[0]
    if shared_batches:
      perm = jax.random.permutation(key, n_train)
      batches = epoch_batches(perm, data)
      return jax.vmap(trial_chunk, in_axes=(0, 0, 0, None, None, None))(
          states, h, alive, perm, data, batches)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_train))(jax.random.split(key, n))
    return jax.vmap(trial_chunk, in_axes=(0, 0, 0, 0, None))(states, h, alive, perms, data)

  def loop_chunk(states, h, alive, key, data, tkeys=None):
    # tkeys: each trial's key for its own minibatch order (default: split from key)
    n = alive.shape[0]
    # a trial's rows read and written as dynamic slices (``i`` is in range): no gather or
    # scatter, nor their negative-index handling, per state leaf and metric (a smaller
    # program, ~25% less MLIR on the digits MLP, and the same values bit for bit)
    one = lambda tree, i: jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)
    batches = None
    if shared_batches:
      perm = jax.random.permutation(key, n_train)
      perm_of = lambda i: perm
      batches = epoch_batches(perm, data)
    else:
      keys = jax.random.split(key, n) if tkeys is None else tkeys
      perm_of = lambda i: jax.random.permutation(keys[i], n_train)
    # one trace of the trial's chunk serves both its output shapes and the loop body
    args = lambda i: (one(states, i), one(h, i), jnp.asarray(True), perm_of(i), data, batches)
    traced, shapes = jax.make_jaxpr(trial_chunk, return_shape=True)(*args(0))
    trial_fn = jax.extend.core.jaxpr_as_fun(traced)
    out_tree = jax.tree_util.tree_structure(shapes)
    metrics = jax.tree_util.tree_map(lambda a: jnp.zeros((n, *a.shape), a.dtype), shapes[1])
    order = jnp.argsort(~alive, stable=True)  # live trials first

    def body(j, carry):
      states, metrics = carry
      i = order[j]
      new, m = jax.tree_util.tree_unflatten(
          out_tree, trial_fn(*jax.tree_util.tree_leaves(args(i))))
      put = lambda tree, x: jax.tree_util.tree_map(
          lambda a, b: jax.lax.dynamic_update_index_in_dim(a, b, i, 0), tree, x)
      return put(states, new), put(metrics, m)

    return jax.lax.fori_loop(0, jnp.sum(alive), body, (states, metrics))

  if mesh is None:
    init = PopulationInit(fns.init, workers)
    if mode == "loop" and workers > 1:
      return PopulationKernel(init, _PartedChunk(loop_chunk, workers, shared_batches), steps,
                              1, mode, workers)
    fn = loop_chunk if mode == "loop" else chunk
    chunk_j = _Chunk(OptionsJit(fn, chunk_compile_options(), donate_argnums=(0,)))
    return PopulationKernel(init, chunk_j, steps, 1, mode)
  pop, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
  init = PopulationInit(fns.init, in_shardings=(pop, pop), out_shardings=pop)
  chunk_j = OptionsJit(chunk, chunk_compile_options(), in_shardings=(pop, pop, pop, rep, rep),
                       out_shardings=(pop, pop), donate_argnums=(0,))

  def chunk_sharded(states, h, alive, key, data):
    # states gathered on the host side (compaction, exploit) come back replicated
    return chunk_j(jax.device_put(states, pop), h, alive, key, data)

  return PopulationKernel(init, chunk_sharded, steps, mesh.size)
