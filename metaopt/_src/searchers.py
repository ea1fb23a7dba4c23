"""First black-box searchers: random search and scrambled Sobol / Halton sequences.

Sobol: Joe & Kuo direction numbers (taken from ``scipy.stats.qmc``), generated in ``jnp``
by XOR of direction numbers over the bits of the point index, with a random digital shift
for scrambling, so ``ask`` is jittable and the n-th point is the same however the sequence
is cut into batches. Halton: radical inverses in the first ``d`` primes with a random shift
modulo 1 (Cranley-Patterson rotation).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import Searcher

_BITS = 30


def _check_dim(dim: int) -> None:
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
    raise ValueError(f"dim={dim!r}: must be a positive integer (the space's dimension)")


def random_search(dim: int) -> Searcher:
  """Uniform random search on ``[0, 1]^dim``.

  Examples:
    >>> s = random_search(2)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 4)
    >>> u.shape
    (4, 2)
  """
  _check_dim(dim)

  def init(key):
    del key
    return {"count": jnp.zeros((), jnp.int32)}

  def ask(state, key, n):
    u = jax.random.uniform(key, (n, dim))
    return {"count": state["count"] + n}, u

  def tell(state, u, y, status):
    del u, y, status
    return state

  return Searcher(init, ask, tell)


@functools.cache
def _sobol_directions(dim: int) -> np.ndarray:
  """Direction numbers ``V[dim, bits]`` such that point i = XOR of V[:, b] over bits b of i."""
  from scipy.stats import qmc

  eng = qmc.Sobol(dim, scramble=False, bits=_BITS)
  sv = getattr(eng, "_sv", None)  # scipy's own direction numbers: checked, not trusted
  if isinstance(sv, np.ndarray) and sv.shape == (dim, _BITS):
    v = sv.astype(np.uint32)
    k = np.arange(256, dtype=np.uint32)
    gray = k ^ (k >> 1)  # scipy's k-th point is X(gray(k))
    bits = (gray[:, None] >> np.arange(_BITS, dtype=np.uint32)) & 1
    x = np.bitwise_xor.reduce(np.where(bits[:, None, :] == 1, v[None], np.uint32(0)), axis=2)
    if np.array_equal(x / 2.0**_BITS, eng.random(256)):
      return v
  return _sobol_directions_from_points(dim)


def _sobol_directions_from_points(dim: int) -> np.ndarray:
  """:func:`_sobol_directions` read off scipy's points at indices ``2^b`` (slow: ~1 s)."""
  from scipy.stats import qmc

  v = np.zeros((dim, _BITS), np.uint32)
  prev = np.zeros(dim, np.uint32)
  for b in range(_BITS):
    eng = qmc.Sobol(dim, scramble=False, bits=_BITS)
    if b:
      eng.fast_forward(2**b)
    else:
      eng.fast_forward(1)
    # scipy orders points by Gray code: its k-th point is X(gray(k)), gray(2^b) = 2^b ^ 2^(b-1).
    p = np.round(eng.random(1)[0] * 2.0**_BITS).astype(np.uint64).astype(np.uint32)
    v[:, b] = p ^ prev
    prev = v[:, b]
  return v


def _sobol_points(v: jax.Array, idx: jax.Array) -> jax.Array:
  bits = (idx[:, None] >> jnp.arange(_BITS, dtype=jnp.uint32)[None, :]) & 1  # [n, B]
  terms = jnp.where(bits[:, None, :] == 1, v[None, :, :], jnp.uint32(0))  # [n, d, B]
  return jax.lax.reduce(terms, jnp.uint32(0), jax.lax.bitwise_xor, (2,))


def sobol(dim: int, scramble: bool = True) -> Searcher:
  """Sobol quasi-random sequence with optional random digital-shift scrambling.

  The first ``2^m`` points of each batch-aligned run are a (t, m, d)-net, so batches that
  are powers of two cover the cube evenly.
  """
  _check_dim(dim)
  v = jax.device_put(_sobol_directions(dim).astype(np.uint32))  # jnp.asarray would compile a copy

  def init(key):
    shift = (jax.random.bits(key, (dim,), jnp.uint32) >> (32 - _BITS)) if scramble else \
        jnp.zeros((dim,), jnp.uint32)
    return {"count": jnp.zeros((), jnp.int32), "shift": shift}

  def ask(state, key, n):
    del key
    idx = (state["count"] + jnp.arange(n)).astype(jnp.uint32)
    x = _sobol_points(v, idx) ^ state["shift"][None, :]
    # Keep 24 bits so the float32 midpoint is exact and strictly inside (0, 1).
    u = ((x >> (_BITS - 24)).astype(jnp.float32) + 0.5) / 2.0**24
    return {**state, "count": state["count"] + n}, u

  def tell(state, u, y, status):
    del u, y, status
    return state

  return Searcher(init, ask, tell)


def _primes(k: int) -> list[int]:
  out, c = [], 2
  while len(out) < k:
    if all(c % p for p in out if p * p <= c):
      out.append(c)
    c += 1
  return out


def halton(dim: int, scramble: bool = True) -> Searcher:
  """Halton sequence (radical inverses in the first ``dim`` primes), randomly rotated."""
  _check_dim(dim)
  bases = jnp.asarray(_primes(dim), jnp.float32)
  digits = 32

  def init(key):
    shift = jax.random.uniform(key, (dim,)) if scramble else jnp.zeros((dim,))
    return {"count": jnp.zeros((), jnp.int32), "shift": shift}

  def ask(state, key, n):
    del key
    idx = (state["count"] + 1 + jnp.arange(n)).astype(jnp.float32)[:, None]  # skip 0

    def body(carry, _):
      rem, f, r = carry
      digit = jnp.mod(rem, bases)
      f = f / bases
      return (jnp.floor(rem / bases), f, r + f * digit), None

    init_c = (jnp.broadcast_to(idx, (n, dim)), jnp.ones((n, dim)), jnp.zeros((n, dim)))
    (_, _, r), _ = jax.lax.scan(body, init_c, None, length=digits)
    u = jnp.mod(r + state["shift"][None, :], 1.0)
    return {**state, "count": state["count"] + n}, u

  def tell(state, u, y, status):
    del u, y, status
    return state

  return Searcher(init, ask, tell)


def points(u: np.ndarray | jax.Array) -> Searcher:
  """Proposes the given points ``u[m, dim]`` in order (cycling after the last): a fixed
  design, a starting configuration, or a corpus to train.

  Examples:
    >>> s = points(np.asarray([[0.1, 0.2], [0.3, 0.4]]))
    >>> state, x = s.ask(s.init(jax.random.key(0)), jax.random.key(1), 3)
    >>> x.tolist()[2] == x.tolist()[0]
    True
  """
  table = jnp.asarray(u, jnp.float32)
  if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
    raise ValueError(f"points: u must have shape (m, dim) with m, dim >= 1, got "
                     f"{tuple(table.shape)}")
  if not bool(jnp.all((table >= 0) & (table <= 1))):
    raise ValueError("points: every coordinate of u must lie in [0, 1]")

  def init(key):
    del key
    return {"count": jnp.zeros((), jnp.int32)}

  def ask(state, key, n):
    del key
    idx = (state["count"] + jnp.arange(n)) % table.shape[0]
    return {"count": state["count"] + n}, table[idx]

  def tell(state, u, y, status):
    del u, y, status
    return state

  return Searcher(init, ask, tell)
