"""Grid search over the unit cube: cell midpoints in lexicographic order.

Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012, is the usual
baseline it loses to in more than a few dimensions; it stays useful for small categorical
spaces and for exhaustive sweeps.

Coordinate ``j`` is cut into ``levels[j]`` equal cells and takes their midpoints
``(i + 0.5) / levels[j]``, so a categorical index coordinate with ``k`` choices (decoded as
``floor(u * k)`` by ``spaces.Choice``) visits every choice exactly once with ``levels[j] = k``.
Points are enumerated like ``itertools.product`` (the last coordinate varies fastest); the
``i``-th point asked overall is grid point ``i mod prod(levels)``, so after the grid is
exhausted it starts over (repeats), and ``state["count"]`` tells how far it got.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from metaopt._src.searchers import _check_dim
from metaopt._src.types import Searcher

_INT32_MAX = 2**31 - 1


def grid(dim: int, levels: int | Sequence[int] = 5) -> Searcher:
  """Grid search over ``[0, 1]^dim`` with ``levels`` cell midpoints per coordinate.

  Args:
    dim: dimension of the unit cube.
    levels: points per coordinate, one integer for all or one per coordinate (>= 1).

  Returns:
    A :class:`Searcher` whose ``ask`` returns the next grid points in order, wrapping around
    after ``prod(levels)`` points; ``tell`` is a no-op.

  Examples:
    >>> s = grid(2, levels=[2, 3])
    >>> state, u = s.ask(s.init(None), None, 6)
    >>> [[round(float(v), 3) for v in row] for row in u[:3]]
    [[0.25, 0.167], [0.25, 0.5], [0.25, 0.833]]
  """
  _check_dim(dim)
  lv = [levels] * dim if isinstance(levels, (int, np.integer)) and not isinstance(
      levels, bool) else levels
  if (isinstance(lv, (str, bytes)) or not isinstance(lv, Sequence) or len(lv) != dim
      or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in lv)):
    raise ValueError(f"levels={levels!r}: must be an integer >= 1 or {dim} of them")
  total = int(np.prod([int(v) for v in lv], dtype=object))
  # Mixed-radix strides (last coordinate fastest); a stride beyond int32 means "digit 0".
  strides = [int(np.prod([int(v) for v in lv[j + 1:]], dtype=object)) for j in range(dim)]
  big = np.asarray([s > _INT32_MAX for s in strides])
  stride_arr = jnp.asarray(np.where(big, 1, [min(s, _INT32_MAX) for s in strides]), jnp.int32)
  lv_arr = jnp.asarray(lv, jnp.int32)

  def init(key):
    del key
    return {"count": jnp.zeros((), jnp.int32)}

  def ask(state, key, n):
    del key
    idx = state["count"] + jnp.arange(n, dtype=jnp.int32)
    if total <= _INT32_MAX:
      idx = idx % total
    digits = (idx[:, None] // stride_arr[None, :]) % lv_arr[None, :]
    digits = jnp.where(jnp.asarray(big)[None, :], 0, digits)
    u = (digits.astype(jnp.float32) + 0.5) / lv_arr.astype(jnp.float32)
    return {"count": state["count"] + n}, u

  def tell(state, u, y, status):
    del u, y, status
    return state

  return Searcher(init, ask, tell)
