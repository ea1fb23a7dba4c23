"""Hyperparameter search spaces and their unit-cube encodings.

A :class:`Space` maps a flat dict of named hyperparameters to and from a point in
``[0, 1]^d``. Every black-box searcher only ever sees the unit cube, so every searcher
works on every space. Each parameter takes exactly one coordinate (``Fixed`` takes none);
a categorical is encoded as the index of its choice, ``floor(u * k)``.

``decode`` is pure ``jnp``: it is jittable and vmappable, and a batch ``u[n, d]`` becomes a
dict of arrays of shape ``(n,)``. Choices decode to ``int32`` indices (strings cannot be
traced); :meth:`Space.to_python` turns a decoded point into plain Python values.

Parameters marked ``structural=True`` change array shapes (depth, optimizer family). The
population engine groups trials by them, one compiled kernel per group. A task may instead
*mask* a shape-changing parameter up to its upper bound (the digits MLP does this for
``width``), in which case the parameter is left non-structural and stays a traced value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

Condition = Mapping[str, Sequence[Any]]


def _check_name(name: Any) -> None:
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"parameter name {name!r}: must be a Python identifier string")


def _check_flags(param: Any, *fields: str) -> None:
  """A flag such as ``log`` or ``structural`` must be True or False: ``log="no"`` would
  otherwise search on a log scale (a non-empty string is truthy)."""
  for field in fields:
    v = getattr(param, field)
    if not isinstance(v, (bool, np.bool_)):
      raise ValueError(f"parameter {param.name!r}: {field}={v!r} must be True or False")


def _check_condition(name: str, when: Condition | None) -> dict[str, tuple[Any, ...]] | None:
  if when is None:
    return None
  if not isinstance(when, Mapping) or not when:
    raise ValueError(f"parameter {name!r}: 'when' must be a non-empty dict "
                     "{parent_name: [allowed values]}")
  out = {}
  for parent, values in when.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"parameter {name!r}: 'when[{parent!r}]' must be a non-empty list of "
                       "parent values")
    out[parent] = tuple(values)
  return out


@dataclasses.dataclass(frozen=True)
class Float:
  """A real number in ``[lo, hi]``, uniform on a linear or log scale."""

  lo: float
  hi: float
  log: bool = False
  default: float | None = None
  when: Condition | None = None
  name: str = ""
  dim: int = dataclasses.field(default=1, init=False)
  structural: bool = dataclasses.field(default=False, init=False)

  def validate(self) -> None:
    n = self.name
    for field in ("lo", "hi"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"parameter {n!r}: {field}={v!r} must be a finite number")
    _check_flags(self, "log")
    if not self.lo < self.hi:
      raise ValueError(f"parameter {n!r}: needs lo < hi, got lo={self.lo}, hi={self.hi}")
    if self.log and self.lo <= 0:
      raise ValueError(f"parameter {n!r}: log=True needs lo > 0, got lo={self.lo}")
    if self.default is not None and not self.lo <= self.default <= self.hi:
      raise ValueError(f"parameter {n!r}: default={self.default} outside [{self.lo}, {self.hi}]")

  def _bounds(self) -> tuple[float, float]:
    return (math.log(self.lo), math.log(self.hi)) if self.log else (self.lo, self.hi)

  def decode(self, u: jnp.ndarray) -> jnp.ndarray:
    a, b = self._bounds()
    x = a + jnp.clip(u, 0.0, 1.0) * (b - a)
    x = jnp.exp(x) if self.log else x
    return jnp.clip(x, self.lo, self.hi)

  def encode(self, x: Any) -> np.ndarray:
    a, b = self._bounds()
    x = np.asarray(x, np.float64)
    x = np.log(x) if self.log else x
    return np.clip((x - a) / (b - a), 0.0, 1.0)

  def fallback(self) -> float:
    if self.default is not None:
      return float(self.default)
    a, b = self._bounds()
    m = 0.5 * (a + b)
    return float(math.exp(m) if self.log else m)

  def to_python(self, x: Any) -> float:
    return clean_float(x)

  def from_python(self, v: Any) -> Any:
    return v


def clean_float(x: Any) -> float:
  """A decoded value as a Python float; float32 values become the shortest decimal that
  rounds back to the same float32 (``0.9``, not ``0.8999999761581421``), so a value that
  is printed, stored and typed back in trains with exactly the same float32."""
  a = np.asarray(x)
  if a.dtype == np.float32:
    return float(str(np.float32(a)))
  return float(a)


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in ``[lo, hi]`` (inclusive), uniform on a linear or log scale."""

  lo: int
  hi: int
  log: bool = False
  default: int | None = None
  structural: bool = False
  when: Condition | None = None
  name: str = ""
  dim: int = dataclasses.field(default=1, init=False)

  def validate(self) -> None:
    n = self.name
    for field in ("lo", "hi"):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"parameter {n!r}: {field}={v!r} must be an integer")
    _check_flags(self, "log", "structural")
    if not self.lo <= self.hi:
      raise ValueError(f"parameter {n!r}: needs lo <= hi, got lo={self.lo}, hi={self.hi}")
    if self.log and self.lo <= 0:
      raise ValueError(f"parameter {n!r}: log=True needs lo > 0, got lo={self.lo}")
    if self.default is not None and not self.lo <= self.default <= self.hi:
      raise ValueError(f"parameter {n!r}: default={self.default} outside [{self.lo}, {self.hi}]")

  def _bounds(self) -> tuple[float, float]:
    # Each integer owns an equal share of the (log-)interval [lo - 0.5, hi + 0.5].
    a, b = self.lo - 0.5, self.hi + 0.5
    if self.log:
      return math.log(max(a, 0.5 * self.lo)), math.log(b)
    return a, b

  def decode(self, u: jnp.ndarray) -> jnp.ndarray:
    a, b = self._bounds()
    x = a + jnp.clip(u, 0.0, 1.0) * (b - a)
    x = jnp.exp(x) if self.log else x
    return jnp.clip(jnp.round(x), self.lo, self.hi).astype(jnp.int32)

  def encode(self, x: Any) -> np.ndarray:
    a, b = self._bounds()
    x = np.asarray(x, np.float64)
    if self.log:
      lo_edge = math.exp(a)
      left = np.log(np.maximum(x - 0.5, lo_edge))
      right = np.log(x + 0.5)
      x = 0.5 * (left + right)
    return np.clip((x - a) / (b - a), 0.0, 1.0)

  def fallback(self) -> int:
    return int(self.default if self.default is not None else (self.lo + self.hi) // 2)

  def to_python(self, x: Any) -> int:
    return int(x)

  def from_python(self, v: Any) -> Any:
    return v


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a list of values; decodes to the ``int32`` index of the choice."""

  choices: Sequence[Any]
  default: Any = None
  structural: bool = False
  when: Condition | None = None
  name: str = ""
  dim: int = dataclasses.field(default=1, init=False)

  def validate(self) -> None:
    n = self.name
    if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Sequence):
      raise ValueError(f"parameter {n!r}: choices must be a list, got {self.choices!r}")
    if len(self.choices) == 0:
      raise ValueError(f"parameter {n!r}: choices must not be empty")
    _check_flags(self, "structural")
    if len(set(map(repr, self.choices))) != len(self.choices):
      raise ValueError(f"parameter {n!r}: choices must be distinct, got {list(self.choices)}")
    if self.default is not None and self.default not in self.choices:
      raise ValueError(f"parameter {n!r}: default={self.default!r} is not one of "
                       f"{list(self.choices)}")

  def decode(self, u: jnp.ndarray) -> jnp.ndarray:
    k = len(self.choices)
    return jnp.clip(jnp.floor(jnp.clip(u, 0.0, 1.0) * k), 0, k - 1).astype(jnp.int32)

  def encode(self, x: Any) -> np.ndarray:
    return (np.asarray(x, np.float64) + 0.5) / len(self.choices)

  def fallback(self) -> int:
    return 0 if self.default is None else list(self.choices).index(self.default)

  def to_python(self, x: Any) -> Any:
    return self.choices[int(x)]

  def from_python(self, v: Any) -> int:
    if v not in self.choices:
      raise ValueError(f"parameter {self.name!r}: {v!r} is not one of {list(self.choices)}")
    return list(self.choices).index(v)


@dataclasses.dataclass(frozen=True)
class Fixed:
  """A constant; takes no coordinate in the unit cube."""

  value: Any
  structural: bool = False
  when: Condition | None = None
  name: str = ""
  dim: int = dataclasses.field(default=0, init=False)

  def validate(self) -> None:
    if not isinstance(self.value, (bool, int, float, np.number)):
      raise ValueError(f"parameter {self.name!r}: Fixed value={self.value!r} must be a number "
                       "or bool (only numeric values decode to arrays)")

  def decode(self, u: jnp.ndarray) -> jnp.ndarray:
    if isinstance(self.value, (bool, int, float, np.number)):
      return jnp.full(u.shape[:-1] if u.ndim else (), self.value)
    raise TypeError(f"parameter {self.name!r}: only numeric Fixed values decode to arrays")

  def fallback(self) -> Any:
    return self.value

  def to_python(self, x: Any) -> Any:
    return self.value

  def from_python(self, v: Any) -> Any:
    return v


Param = Float | Int | Choice | Fixed
_KINDS = (Float, Int, Choice, Fixed)


class Space:
  """A named set of hyperparameters with a unit-cube encoding.

  Args:
    params: mapping from name to ``Float``/``Int``/``Choice``/``Fixed``. A parameter with
      ``when={"parent": [values]}`` is active only when the (``Choice``/``Int``) parent takes
      one of those values; when inactive it decodes to its default and ``active`` is False.

  Examples:
    >>> s = Space({"lr": Float(1e-4, 1e-1, log=True), "act": Choice(["relu", "tanh"])})
    >>> s.dim
    2
    >>> h = s.decode(jnp.array([0.5, 0.9]))
    >>> s.to_python(h)["act"]
    'tanh'
  """

  def __init__(self, params: Mapping[str, Param]):
    if not isinstance(params, Mapping) or not params:
      raise ValueError("space: params must be a non-empty dict {name: Float|Int|Choice|Fixed}")
    built: dict[str, Param] = {}
    for name, p in params.items():
      _check_name(name)
      if not isinstance(p, _KINDS):
        raise ValueError(f"parameter {name!r}: expected one of Float, Int, Choice, Fixed; "
                         f"got {type(p).__name__}")
      when = _check_condition(name, p.when)
      p = dataclasses.replace(p, name=name, when=when)
      p.validate()
      built[name] = p
    for name, p in built.items():
      for parent, values in (p.when or {}).items():
        if parent not in built:
          raise ValueError(f"parameter {name!r}: condition parent {parent!r} is not in the "
                           f"space; known: {sorted(built)}")
        if parent == name:
          raise ValueError(f"parameter {name!r}: cannot be conditioned on itself")
        q = built[parent]
        if not isinstance(q, (Choice, Int)):
          raise ValueError(f"parameter {name!r}: condition parent {parent!r} must be a Choice "
                           "or Int")
        for v in values:
          if isinstance(q, Choice) and v not in q.choices:
            raise ValueError(f"parameter {name!r}: condition value {v!r} is not one of "
                             f"{parent!r}'s choices {list(q.choices)}")
          if isinstance(q, Int) and not q.lo <= v <= q.hi:
            raise ValueError(f"parameter {name!r}: condition value {v!r} outside {parent!r}'s "
                             f"range [{q.lo}, {q.hi}]")
    self.params: dict[str, Param] = built
    self._order = self._topological_order()
    self.names = [n for n, p in built.items() if p.dim]
    self.dim = len(self.names)

  def _topological_order(self) -> list[str]:
    order, seen, visiting = [], set(), set()

    def visit(n: str) -> None:
      if n in seen:
        return
      if n in visiting:
        raise ValueError(f"parameter {n!r}: conditions form a cycle")
      visiting.add(n)
      for parent in self.params[n].when or {}:
        visit(parent)
      visiting.discard(n)
      seen.add(n)
      order.append(n)

    for n in self.params:
      visit(n)
    return order

  @property
  def structural(self) -> list[str]:
    """Names of parameters that change array shapes (the engine groups trials by them)."""
    return [n for n, p in self.params.items() if p.structural]

  def __repr__(self) -> str:
    return f"Space({self.params!r})"

  def __contains__(self, name: str) -> bool:
    return name in self.params

  # ------------------------------------------------------------------ decode / encode
  def decode(self, u: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Maps ``u[..., d]`` in the unit cube to a dict of arrays of shape ``u.shape[:-1]``."""
    u = jnp.asarray(u, jnp.float32)
    if u.shape[-1:] != (self.dim,):
      raise ValueError(f"space: expected points with last axis {self.dim} "
                       f"({self.names}), got shape {u.shape}")
    raw = {}
    for i, n in enumerate(self.names):
      raw[n] = self.params[n].decode(u[..., i])
    for n, p in self.params.items():
      if not p.dim:
        raw[n] = p.decode(u)
    active = self.active(raw)
    out = {}
    for n, p in self.params.items():
      if p.when:
        fb = p.from_python(p.fallback())
        out[n] = jnp.where(active[n], raw[n], jnp.asarray(fb, raw[n].dtype))
      else:
        out[n] = raw[n]
    return out

  def active(self, h: Mapping[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Boolean arrays: which parameters are active at the decoded point(s) ``h`` (numpy
    arrays when ``h`` holds only numpy values, so host code dispatches nothing to JAX)."""
    xp = np if all(isinstance(v, (np.ndarray, np.generic)) for v in h.values()) else jnp
    shape = np.shape(next(iter(h.values())))
    act: dict[str, jnp.ndarray] = {}
    for n in self._order:
      p = self.params[n]
      a = xp.ones(shape, bool)
      for parent, values in (p.when or {}).items():
        q = self.params[parent]
        codes = [q.from_python(v) for v in values]
        hit = xp.isin(xp.asarray(h[parent]), xp.asarray(codes))
        a = a & act[parent] & hit
      act[n] = a
    return act

  def encode(self, values: Mapping[str, Any]) -> np.ndarray:
    """Maps Python values (one point) to the unit cube; inverse of ``to_python(decode(u))``."""
    unknown = set(values) - set(self.params)
    if unknown:
      raise ValueError(f"space: unknown parameter(s) {sorted(unknown)}; known: "
                       f"{sorted(self.params)}")
    u = np.empty(self.dim, np.float64)
    for i, n in enumerate(self.names):
      p = self.params[n]
      v = values.get(n, p.fallback() if not isinstance(p, Choice) else p.to_python(p.fallback()))
      u[i] = p.encode(p.from_python(v))
    return u

  def to_python(self, h: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded point (scalars) to plain Python values; inactive parameters are dropped."""
    act = {k: bool(v) for k, v in self.active({k: np.asarray(v) for k, v in h.items()}).items()}
    return {n: p.to_python(np.asarray(h[n])) for n, p in self.params.items() if act[n]}

  def to_python_batch(self, h: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A batch of decoded points (arrays of shape ``(n,)``) to a list of dicts."""
    h = {k: np.asarray(v) for k, v in h.items()}
    n = len(next(iter(h.values())))
    return [self.to_python({k: v[i] for k, v in h.items()}) for i in range(n)]

  def subspace(self, names: Sequence[str]) -> Space:
    """The space of the given parameters only (their conditions must be included too)."""
    unknown = [n for n in names if n not in self.params]
    if unknown:
      raise ValueError(f"space: unknown parameter(s) {unknown}; known: {sorted(self.params)}")
    return Space({n: self.params[n] for n in names})

  def index(self, names: Sequence[str]) -> list[int]:
    """Unit-cube coordinates of the named parameters."""
    bad = [n for n in names if n not in self.names]
    if bad:
      raise ValueError(f"space: {bad} have no unit-cube coordinate; coordinates: {self.names}")
    return [self.names.index(n) for n in names]


_SPEC_KINDS = {"float": Float, "int": Int, "choice": Choice, "fixed": Fixed}


def from_spec(spec: Mapping[str, Mapping[str, Any]]) -> Space:
  """A space from plain dicts, e.g. ``{"lr": {"type": "float", "lo": 1e-4, "hi": 1, "log":
  True}}`` (the form configs use). Unknown types or fields raise one ``ValueError``."""
  if not isinstance(spec, Mapping) or not spec:
    raise ValueError("space: must be a non-empty dict {name: {'type': ..., ...}}")
  params = {}
  for name, p in spec.items():
    if not isinstance(p, Mapping):
      raise ValueError(f"space.{name}: must be a dict with a 'type' field")
    p = dict(p)
    kind = p.pop("type", None)
    if kind not in _SPEC_KINDS:
      raise ValueError(f"space.{name}.type={kind!r}: allowed values are "
                       f"{', '.join(_SPEC_KINDS)}")
    cls = _SPEC_KINDS[kind]
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "name"]
    unknown = sorted(set(p) - set(fields))
    if unknown:
      raise ValueError(f"space.{name}: unknown field(s) {unknown} for type {kind!r}; "
                       f"allowed: {fields}")
    try:
      if "choices" in p and not isinstance(p["choices"], (str, bytes)):
        p["choices"] = list(p["choices"])  # a string stays one, for Choice to refuse
      params[name] = cls(**p)
    except (TypeError, AttributeError) as e:  # e.g. choices=None, bounds of the wrong type
      raise ValueError(f"space.{name}: bad field value(s) {p}: {e}") from None
  return Space(params)


def to_spec(space: Space) -> dict[str, dict[str, Any]]:
  """The inverse of :func:`from_spec`."""
  names = {v: k for k, v in _SPEC_KINDS.items()}
  out = {}
  for n, p in space.params.items():
    d = {"type": names[type(p)]}
    for f in dataclasses.fields(p):
      if f.init and f.name != "name":
        v = getattr(p, f.name)
        if v is not None and v != f.default:
          if f.name == "when":
            v = {k: list(vs) for k, vs in v.items()}
          d[f.name] = list(v) if isinstance(v, (tuple, list)) else v
    out[n] = d
  return out
