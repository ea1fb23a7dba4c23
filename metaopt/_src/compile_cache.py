"""An in-process cache of compiled functions, so a search run again compiles nothing.

A notebook re-runs ``metaopt.search`` with a freshly built program and task: new closures,
so ``jax.jit``'s own cache (keyed by function identity) misses and every kernel, ``ask``,
``tell`` and ``observe`` is traced and compiled again. Here a jitted function is kept under
a :func:`fingerprint` of what it computes: a function by its code, the values it closes
over, its defaults and the globals it names (functions recursively, modules by name);
numbers, strings, containers, dataclasses, plain objects (their attributes) and arrays by
value; datasets by their checksum; anything else (classes, objects from JAX and the like) by
identity
(kept alive by the cache, so an id is never reused). Equal fingerprints mean the same
computation, so the cached jitted function (and the executables JAX keeps inside it for each
argument shape) serves the new search.

The cache is bounded: every entry keeps its compiled executables (code pages mapped into the
process) alive, and a process that keeps too many runs into the kernel's limit on memory
mappings (``vm.max_map_count``, 65530 by default on Linux), where LLVM cannot map the code
of the next compile and XLA aborts or crashes. So at most :data:`MAX_ENTRIES` functions are
kept (least recently used go first), and whenever the process holds more than
:data:`MAX_MAP_FRACTION` of the mapping limit the older half of the entries is dropped.
:func:`clear` (``metaopt.clear_compile_cache``) forgets them all; :func:`info` says what
is held.

Like ``jax.jit``, a cached function keeps what it read at trace time from a module's
attributes (``config.SCALE`` where ``config`` is a module): change such a value and call
:func:`clear` before searching again.

:func:`compiles` counts XLA compilations on the calling thread (JAX monitoring events), and
:func:`compile_profile` gives seconds per function, for ``--profile`` output.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import hashlib
import threading
import types
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import numpy as np

# functions from these packages are named, not fingerprinted (they do not change in-process);
# the values their closures hold (optax.adam(1e-3)'s learning rate) are fingerprinted
_STABLE = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "chex", "builtins",
           "functools", "math", "operator", "typing", "collections", "einops")
_MAX_HASHED_BYTES = 256 << 20
MAX_ENTRIES = 32  # cached functions (each with its executables, one per argument shape)
MAX_MAP_FRACTION = 0.25  # of vm.max_map_count: above it the older half of the entries goes

_cache: collections.OrderedDict[Hashable, tuple[Any, list]] = collections.OrderedDict()
_lock = threading.Lock()
STATS = {"hits": 0, "misses": 0, "evicted": 0}


_MISSING = object()


class _Unhashable(Exception):
  pass


def _code(code: types.CodeType, seen: dict, keep: list, globs: dict) -> tuple:
  consts = tuple(_code(c, seen, keep, globs) if isinstance(c, types.CodeType)
                 else _fp(c, seen, keep) for c in code.co_consts)
  # every name the code uses (attribute names too: jnp.nan vs jnp.inf), with the values of
  # those that are globals
  names = tuple((n, _fp(globs[n], seen, keep)) if n in globs else (n,) for n in code.co_names)
  return ("code", code.co_code, code.co_name, code.co_varnames, code.co_freevars, consts, names)


def _function(f: types.FunctionType, seen: dict, keep: list) -> tuple:
  mod = getattr(f, "__module__", None) or ""
  stable = mod.split(".")[0] in _STABLE
  if stable and not f.__closure__:
    return ("stable", mod, f.__qualname__)
  if id(f) in seen:  # recursion (a function naming itself): its place in the walk
    return ("rec", seen[id(f)])
  seen[id(f)] = len(seen)
  cells = tuple(_fp(c.cell_contents, seen, keep) if _filled(c) else ("empty",)
                for c in (f.__closure__ or ()))
  if stable:  # a closure a library made (optax.adam(lr).update): its name and what it holds
    return ("stable", mod, f.__qualname__, cells, _fp(f.__defaults__, seen, keep))
  return ("fn", _code(f.__code__, seen, keep, f.__globals__), cells,
          _fp(f.__defaults__, seen, keep), _fp(f.__kwdefaults__, seen, keep))


def _filled(cell) -> bool:
  try:
    cell.cell_contents  # noqa: B018
    return True
  except ValueError:
    return False


def _array(x: Any) -> tuple:
  a = np.asarray(x)
  if a.nbytes > _MAX_HASHED_BYTES or a.dtype == object:
    raise _Unhashable
  return ("arr", a.shape, str(a.dtype), hashlib.blake2b(a.tobytes(), digest_size=16).digest())


def _fp(x: Any, seen: dict, keep: list) -> Hashable:
  if isinstance(x, (float, complex)):  # repr: 0.0 and -0.0 differ, nan equals nan
    return (type(x).__name__, repr(x))
  if x is None or isinstance(x, (bool, int, str, bytes)):
    return (type(x).__name__, x)
  if isinstance(x, types.ModuleType):
    return ("module", x.__name__)
  if isinstance(x, types.FunctionType):
    return _function(x, seen, keep)
  if isinstance(x, types.MethodType):
    return ("method", _fp(x.__func__, seen, keep), _fp(x.__self__, seen, keep))
  if isinstance(x, functools.partial):
    return ("partial", _fp(x.func, seen, keep), _fp(x.args, seen, keep),
            _fp(x.keywords, seen, keep))
  if isinstance(x, (np.ndarray, np.generic)) or (
      isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)):
    return _array(x)
  if isinstance(x, (tuple, list, frozenset, set)) and not hasattr(x, "_fields"):
    items = sorted(map(repr, x)) if isinstance(x, (set, frozenset)) else x
    return (type(x).__name__, tuple(_fp(v, seen, keep) for v in items))
  if isinstance(x, Mapping) and type(x) in (dict, types.MappingProxyType,
                                           collections.OrderedDict):
    return ("dict", tuple(sorted(((repr(k), _fp(v, seen, keep)) for k, v in x.items()))))
  if isinstance(x, type) or isinstance(x, types.BuiltinFunctionType):
    keep.append(x)  # named by identity: kept alive with the entry, so the id stays its own
    return ("id", id(x))
  if id(x) in seen:
    return ("rec", seen[id(x)])
  seen[id(x)] = len(seen)
  if _is_dataset(x):  # its checksum names its arrays (hashing them again would cost)
    return ("dataset", x.name, x.checksum, tuple(np.shape(s.x) for s in (x.train, x.valid)))
  if hasattr(x, "_fields"):  # NamedTuple
    return ("namedtuple", _fp(type(x), seen, keep), tuple(_fp(v, seen, keep) for v in x))
  if dataclasses.is_dataclass(x):
    return ("dataclass", _fp(type(x), seen, keep), tuple(
        (f.name, _fp(getattr(x, f.name, None), seen, keep)) for f in dataclasses.fields(x)))
  mod = type(x).__module__ or ""
  if hasattr(x, "__dict__") and mod.split(".")[0] not in _STABLE:  # e.g. a Space
    return ("object", _fp(type(x), seen, keep), _fp(dict(vars(x)), seen, keep))
  keep.append(x)
  return ("id", id(x))


def _is_dataset(x: Any) -> bool:
  from metaopt.tasks import Dataset

  return isinstance(x, Dataset) and isinstance(x.checksum, str) and bool(x.checksum)


def fingerprint(*parts: Any) -> tuple[Hashable, list] | None:
  """``(key, referents)``: a hashable key equal for equal computations (see the module
  docstring), and the objects it names by identity (to keep alive with the entry); None
  when some part cannot be fingerprinted (a huge array): then nothing is cached."""
  keep: list = []
  try:
    return tuple(_fp(p, {}, keep) for p in parts), keep
  except (_Unhashable, RecursionError):
    return None


def cached(build: Callable[[], Any], *parts: Any) -> Any:
  """The value built by ``build()`` for the computation ``parts`` describe (see
  :func:`fingerprint`), built once per process while it stays cached (see the module
  docstring for the bounds)."""
  fp = fingerprint(*parts)
  if fp is None:
    return build()
  key, keep = fp
  with _lock:
    if key in _cache:
      STATS["hits"] += 1
      _cache.move_to_end(key)
      value = _cache[key][0]
    else:
      value = _MISSING
  if value is _MISSING:
    value = build()
    with _lock:
      STATS["misses"] += 1
      value = _cache.setdefault(key, (value, keep))[0]
      while len(_cache) > MAX_ENTRIES:
        _cache.popitem(last=False)
        STATS["evicted"] += 1
  _check_mappings()
  return value


def _map_count() -> int | None:
  try:
    with open("/proc/self/maps", "rb") as f:
      return f.read().count(b"\n")
  except OSError:  # not Linux
    return None


def map_limit() -> int | None:
  """The kernel's limit on a process's memory mappings (``vm.max_map_count``), or None
  where there is none to read."""
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


def _check_mappings() -> None:
  """Drops the older half of the entries (their executables' code pages with them) while the
  process holds more than ``MAX_MAP_FRACTION`` of the mapping limit."""
  limit, n = map_limit(), _map_count()
  if limit is None or n is None or n <= MAX_MAP_FRACTION * limit:
    return
  with _lock:
    drop = (len(_cache) + 1) // 2
    for _ in range(drop):
      _cache.popitem(last=False)
      STATS["evicted"] += 1
  if drop:
    gc.collect()  # jitted functions in reference cycles free their executables now


def clear(keep: str | None = None) -> None:
  """Forgets every cached compiled function (the next search compiles again) and frees
  their executables unless something else still holds them; with ``keep``, all but those
  cached under that name (the first of :func:`cached`'s ``parts``, e.g. ``"task-kernel"``)."""
  name = None if keep is None else _fp(keep, {}, [])
  with _lock:
    for key in [k for k in _cache if name is None or k[0] != name]:
      del _cache[key]
  gc.collect()


def info() -> dict[str, Any]:
  """What the cache holds: ``entries`` (and the bound ``max_entries``), ``hits``,
  ``misses`` and ``evicted`` so far, and the process's memory ``mappings`` against the
  kernel's ``map_limit`` (None where unknown)."""
  with _lock:
    n = len(_cache)
  return {"entries": n, "max_entries": MAX_ENTRIES, **STATS, "mappings": _map_count(),
          "map_limit": map_limit()}


# --------------------------------------------------------------------------- monitoring
_COMPILE = "/jax/core/compile/backend_compile_duration"
_by_thread: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
_seconds: dict[int, dict[str, float]] = collections.defaultdict(
    lambda: collections.defaultdict(float))


def _listen(event: str, duration: float, **kw: Any) -> None:
  if not event.startswith("/jax/core/compile/"):
    return
  t = threading.get_ident()
  name = str(kw.get("fun_name", "?"))
  name = name[4:-1] if name.startswith("jit(") else name
  _seconds[t][name] += duration
  if event == _COMPILE:
    _by_thread[t][name] += 1


jax.monitoring.register_event_duration_secs_listener(_listen)


def compiles() -> collections.Counter:
  """XLA compilations so far on the calling thread, per function name (a copy)."""
  return collections.Counter(_by_thread[threading.get_ident()])


def compile_profile(thread: int | None = None) -> dict[str, float]:
  """Seconds spent tracing, lowering and compiling so far, per function name, on
  ``thread`` (default: the calling thread); a copy."""
  return dict(_seconds[threading.get_ident() if thread is None else thread])


def snapshot() -> dict[int, tuple[dict[str, float], dict[str, int]]]:
  """Compile seconds and XLA compilations per function so far, per thread (copies), for
  :func:`profile_text`."""
  return {t: (dict(_seconds[t]), dict(_by_thread[t])) for t in list(_seconds)}


def profile_text(before: Mapping[int, tuple[Mapping[str, float], Mapping[str, int]]],
                 wall_s: float) -> str:
  """Compile seconds (tracing, lowering, XLA) and XLA compilations per function since
  ``before`` (an earlier :func:`snapshot`), most expensive first, as lines for
  ``--profile``; functions traced or compiled on other threads than the caller's (the FLOPs
  accounting, traced while the chunk compiles) are marked ``(background)``."""
  me, rows = threading.get_ident(), []
  for t, (seconds, count) in snapshot().items():
    s0, c0 = before.get(t, ({}, {}))
    for name, v in seconds.items():
      if v - s0.get(name, 0.0) >= 0.005:
        label = name if t == me else f"{name} (background)"
        rows.append((v - s0.get(name, 0.0), count.get(name, 0) - c0.get(name, 0), label))
  rows.sort(reverse=True)
  main = sum(r[0] for r in rows if not r[2].endswith("(background)"))
  lines = [f"# compile: {main:.2f} s on the calling thread of {wall_s:.1f} s wall, "
           f"{sum(r[0] for r in rows) - main:.2f} s on other threads; "
           f"{sum(r[1] for r in rows)} XLA compilations (in-process cache: {STATS['hits']} "
           f"hits, {STATS['misses']} misses)"]
  lines += [f"#   {name:44s} {sec:7.2f} s  x{n}" for sec, n, name in rows]
  return "\n".join(lines)
