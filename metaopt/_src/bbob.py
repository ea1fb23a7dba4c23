"""The 24 noiseless BBOB functions of COCO, in ``jnp``, with COCO's instances.

Hansen, Finck, Ros & Auger, "Real-Parameter Black-Box Optimization Benchmarking 2009: Noiseless
Functions Definitions", INRIA RR-6829; Hansen et al., "COCO: A platform for comparing continuous
optimizers in a black-box setting", Optim. Methods Softw. 2021.

Each instance's optimum ``xopt``, value ``fopt``, rotations and Gallagher peaks come from COCO's
legacy generator (``bbob2009_unif`` / ``bbob2009_gauss`` seeded by ``function + 10000 *
instance``, 3 for f4 and 17 for f18), computed once in NumPy float64; the functions follow
COCO's C code (``suite_bbob`` and its ``transform_*`` wrappers), including where it departs
from the 2009 report (f4's even-coordinate ``|xopt|``, f12's ``xopt`` seeded by
``seed + 1000000``, f20's ``4.2096874637``, f7's rounding of
``|z| > 0.5``). Values are checked against ``ioh`` (a C++ port of COCO) in the tests.

``bbob_function(fid, dim, instance)`` evaluates ``x[..., dim]`` on COCO's domain
``[-5, 5]^dim`` in the dtype of ``x`` (float64 under ``jax.enable_x64``);
``bbob_problem`` wraps it on the unit cube as a :class:`Problem` that every metaopt searcher
runs on. ``BBOB_GROUPS`` gives COCO's five function groups.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.benchmark_functions import Problem

BBOB_NAMES = {
    1: "sphere", 2: "ellipsoid", 3: "rastrigin", 4: "bueche_rastrigin", 5: "linear_slope",
    6: "attractive_sector", 7: "step_ellipsoid", 8: "rosenbrock", 9: "rosenbrock_rotated",
    10: "ellipsoid_rotated", 11: "discus", 12: "bent_cigar", 13: "sharp_ridge",
    14: "different_powers", 15: "rastrigin_rotated", 16: "weierstrass", 17: "schaffers10",
    18: "schaffers1000", 19: "griewank_rosenbrock", 20: "schwefel", 21: "gallagher101",
    22: "gallagher21", 23: "katsuura", 24: "lunacek_bi_rastrigin",
}
BBOB_GROUPS = {
    "separable": (1, 2, 3, 4, 5),
    "moderate": (6, 7, 8, 9),
    "ill-conditioned": (10, 11, 12, 13, 14),
    "multimodal": (15, 16, 17, 18, 19),
    "weak structure": (20, 21, 22, 23, 24),
}


# ------------------------------------------------------------------ COCO's legacy generator


def _unif(n: int, seed: int) -> np.ndarray:
  """``bbob2009_unif``: ``n`` uniforms from COCO's shuffled Park-Miller generator."""
  seed = max(abs(int(seed)), 1)
  akt = seed
  table = [0] * 32
  for i in range(39, -1, -1):
    tmp = akt // 127773
    akt = 16807 * (akt - tmp * 127773) - 2836 * tmp
    if akt < 0:
      akt += 2147483647
    if i < 32:
      table[i] = akt
  rand = table[0]
  out = np.empty(n)
  for i in range(n):
    tmp = akt // 127773
    akt = 16807 * (akt - tmp * 127773) - 2836 * tmp
    if akt < 0:
      akt += 2147483647
    j = rand // 67108865
    rand = table[j]
    table[j] = akt
    out[i] = rand / 2.147483647e9
    if out[i] == 0.0:
      out[i] = 1e-99
  return out


def _gauss(n: int, seed: int) -> np.ndarray:
  """``bbob2009_gauss``: Box-Muller on ``2 n`` uniforms."""
  u = _unif(2 * n, seed)
  g = np.sqrt(-2.0 * np.log(u[:n])) * np.cos(2.0 * math.pi * u[n:])
  return np.where(g == 0.0, 1e-99, g)


def _rotation(seed: int, dim: int) -> np.ndarray:
  """``bbob2009_compute_rotation``: Gram-Schmidt on the columns of a Gaussian matrix."""
  b = _gauss(dim * dim, seed).reshape(dim, dim).T.copy()  # B[i][j] = g[j * dim + i]
  for i in range(dim):
    for j in range(i):
      b[:, i] -= np.dot(b[:, i], b[:, j]) * b[:, j]
    b[:, i] /= math.sqrt(np.dot(b[:, i], b[:, i]))
  return b


def _xopt(seed: int, dim: int) -> np.ndarray:
  x = 8.0 * np.floor(1e4 * _unif(dim, seed)) / 1e4 - 4.0
  return np.where(x == 0.0, -1e-5, x)


def _fopt(fid: int, instance: int) -> float:
  rseed = {4: 3, 18: 17}.get(fid, fid) + 10000 * instance
  g1, g2 = _gauss(1, rseed)[0], _gauss(1, rseed + 1)[0]
  return float(min(1000.0, max(-1000.0, math.floor(100.0 * 100.0 * g1 / g2 + 0.5) / 100.0)))


def _cond(alpha: float, dim: int) -> np.ndarray:
  """Diagonal of COCO's ``Lambda^alpha``: ``alpha^(0.5 i / (dim - 1))``."""
  return alpha ** (0.5 * np.arange(dim) / (dim - 1))


@functools.lru_cache(maxsize=512)
def bbob_instance(fid: int, dim: int, instance: int = 1) -> dict[str, np.ndarray]:
  """COCO's instance data of function ``fid``: ``xopt``, ``fopt`` and what the function uses.

  Arrays are NumPy float64 (``r1``/``r2``: rotations, ``m``: a composed affine map, plus
  Gallagher's peaks); ``xopt`` is the minimiser in ``[-5, 5]^dim``.
  """
  _check(fid, dim, instance)
  seed = {4: 3, 18: 17}.get(fid, fid) + 10000 * instance
  d = {"fopt": np.float64(_fopt(fid, instance))}
  if fid in (21, 22):
    return {**d, **_gallagher(seed, dim, 101 if fid == 21 else 21)}
  x = _xopt(seed + 1000000 if fid == 12 else seed, dim)  # COCO's f12 quirk
  r1 = _rotation(seed + 1000000, dim)
  r2 = _rotation(seed, dim)
  fac = max(1.0, math.sqrt(dim) / 8.0)
  if fid == 4:
    x[::2] = np.abs(x[::2])
  elif fid == 5:
    x = np.where(x < 0.0, -5.0, 5.0)
  elif fid == 8:
    x = 0.75 * x
  elif fid in (9, 19):
    m = fac * r2
    # z = m x + 0.5 is 1 at the optimum
    x = np.linalg.solve(m, np.full(dim, 0.5))
    d["m"] = m
  elif fid == 20:
    x = np.where(_unif(dim, seed) - 0.5 < 0.0, -0.5, 0.5) * 4.2096874637
  elif fid == 24:
    x = np.where(_gauss(dim, seed) < 0.0, -1.25, 1.25)
  if fid in (6, 13, 15):
    d["m"] = r1 @ np.diag(_cond(10.0, dim)) @ r2
  elif fid == 16:
    d["m"] = r1 @ np.diag(_cond(0.01, dim)) @ r2
  elif fid == 23:
    d["m"] = r1 @ np.diag(_cond(100.0, dim)) @ r2
  elif fid in (17, 18):
    d["m"] = np.diag(_cond(10.0 if fid == 17 else 1000.0, dim)) @ r2
  return {**d, "xopt": x, "r1": r1, "r2": r2}


def _gallagher(seed: int, dim: int, peaks: int) -> dict[str, np.ndarray]:
  """Gallagher's peaks (COCO ``f_gallagher``): rotation, centres, scales and heights."""
  b, c, cond0 = (10.0, 5.0, math.sqrt(1000.0)) if peaks == 101 else (9.8, 4.9, 1000.0)
  rot = _rotation(seed, dim)
  order = np.argsort(_unif(peaks - 1, seed), kind="stable")
  cond = np.concatenate([[cond0], 1000.0 ** (order / (peaks - 2))])
  heights = np.concatenate([[10.0], 1.1 + 8.0 * np.arange(peaks - 1) / (peaks - 2)])
  scales = np.empty((peaks, dim))
  for i in range(peaks):
    perm = np.argsort(_unif(dim, seed + 1000 * i), kind="stable")
    scales[i] = cond[i] ** (perm / (dim - 1) - 0.5)
  r = _unif(dim * peaks, seed).reshape(peaks, dim)
  local = (b * r - c) @ rot.T  # [peaks, dim], rotated centres
  local[0] *= 0.8
  return {"xopt": 0.8 * (b * r[0] - c), "rot": rot, "local": local, "scales": scales,
          "heights": heights}


def _check(fid, dim, instance) -> None:
  if isinstance(fid, bool) or not isinstance(fid, (int, np.integer)) or not 1 <= fid <= 24:
    raise ValueError(f"fid={fid!r}: must be an integer in 1..24")
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 2 <= dim <= 40:
    raise ValueError(f"dim={dim!r}: must be an integer in 2..40")
  if (isinstance(instance, bool) or not isinstance(instance, (int, np.integer))
      or not 1 <= instance <= 100000):
    raise ValueError(f"instance={instance!r}: must be an integer in 1..100000")


# ------------------------------------------------------------------ COCO's transformations


def _tosz(x):
  """Oscillation ``T_osz`` (elementwise; 0 stays 0)."""
  nz = x != 0
  lx = jnp.log(jnp.where(nz, jnp.abs(x), 1.0))
  pos = x > 0
  c1, c2 = jnp.where(pos, 10.0, 5.5), jnp.where(pos, 7.9, 3.1)
  return jnp.where(nz, jnp.sign(x) * jnp.exp(lx + 0.049 * (jnp.sin(c1 * lx) + jnp.sin(c2 * lx))),
                   0.0)


def _tasy(x, beta: float):
  """Asymmetry ``T_asy^beta``: ``x_i^(1 + beta i / (d - 1) sqrt(x_i))`` where positive."""
  dim = x.shape[-1]
  e = 1.0 + beta * (np.arange(dim) / (dim - 1)) * jnp.sqrt(jnp.maximum(x, 0.0))
  xp = jnp.where(x > 0, x, 1.0)
  return jnp.where(x > 0, xp**e, x)


def _penalty(x):
  return jnp.sum(jnp.square(jnp.maximum(jnp.abs(x) - 5.0, 0.0)), axis=-1)


def _mv(m, x):
  """``m @ x`` over the last axis of ``x[..., d]``."""
  return jnp.einsum("ij,...j->...i", m, x)


def _rastrigin(z):
  dim = z.shape[-1]
  return 10.0 * (dim - jnp.sum(jnp.cos(2.0 * math.pi * z), axis=-1)) + jnp.sum(z * z, axis=-1)


def _rosen(z):
  a, b = z[..., :-1], z[..., 1:]
  return 100.0 * jnp.sum(jnp.square(a * a - b), axis=-1) + jnp.sum(jnp.square(1.0 - a), axis=-1)


def _ellipsoid(z):
  dim = z.shape[-1]
  return jnp.sum(1e6 ** (np.arange(dim) / (dim - 1)) * z * z, axis=-1)


def _schaffers(z):
  t = z[..., :-1] ** 2 + z[..., 1:] ** 2
  s = jnp.sum(t**0.25 * (1.0 + jnp.sin(50.0 * t**0.1) ** 2), axis=-1)
  return jnp.square(s / (z.shape[-1] - 1))


def _raw(fid: int, p: dict, x):
  """``f(x) - fopt`` of BBOB function ``fid`` for the instance arrays ``p``."""
  dim = x.shape[-1]
  idx = np.arange(dim)
  if fid in (21, 22):
    tx = _mv(p["rot"], x)
    sq = jnp.sum(p["scales"] * jnp.square(tx[..., None, :] - p["local"]), axis=-1)
    f = 10.0 - jnp.max(p["heights"] * jnp.exp(-0.5 / dim * sq), axis=-1)
    return jnp.square(_tosz(f)) + _penalty(x)
  xo = p["xopt"]
  if fid == 1:
    return jnp.sum(jnp.square(x - xo), axis=-1)
  if fid == 2:
    return _ellipsoid(_tosz(x - xo))
  if fid == 3:
    return _rastrigin(_cond(10.0, dim) * _tasy(_tosz(x - xo), 0.2))
  if fid == 4:
    z = _tosz(x - xo)
    fac = 10.0 ** (0.5 * idx / (dim - 1))
    z = jnp.where((z > 0) & (idx % 2 == 0), 10.0 * fac, fac) * z
    return _rastrigin(z) + 100.0 * _penalty(x)
  if fid == 5:
    s = jnp.sign(xo) * 10.0 ** (idx / (dim - 1))
    z = jnp.where(x * xo < 25.0, x, xo)
    return jnp.sum(5.0 * jnp.abs(s) - s * z, axis=-1)
  if fid == 6:
    z = _mv(p["m"], x - xo)
    f = jnp.sum(jnp.where(z * xo > 0, 1e4, 1.0) * z * z, axis=-1)
    return _tosz(f) ** 0.9
  if fid == 7:
    zh = _cond(10.0, dim) * _mv(p["r2"], x - xo)
    zt = jnp.where(jnp.abs(zh) > 0.5, jnp.floor(zh + 0.5), jnp.floor(10.0 * zh + 0.5) / 10.0)
    z = _mv(p["r1"], zt)
    f = jnp.sum(100.0 ** (idx / (dim - 1)) * z * z, axis=-1)
    return 0.1 * jnp.maximum(jnp.abs(zh[..., 0]) * 1e-4, f) + _penalty(x)
  if fid == 8:
    return _rosen(max(1.0, math.sqrt(dim) / 8.0) * (x - xo) + 1.0)
  if fid == 9:
    return _rosen(_mv(p["m"], x) + 0.5)
  if fid == 10:
    return _ellipsoid(_tosz(_mv(p["r1"], x - xo)))
  if fid == 11:
    z = _tosz(_mv(p["r1"], x - xo))
    return 1e6 * z[..., 0] ** 2 + jnp.sum(z[..., 1:] ** 2, axis=-1)
  if fid == 12:
    z = _mv(p["r1"], _tasy(_mv(p["r1"], x - xo), 0.5))
    return z[..., 0] ** 2 + 1e6 * jnp.sum(z[..., 1:] ** 2, axis=-1)
  if fid == 13:
    z = _mv(p["m"], x - xo)
    return z[..., 0] ** 2 + 100.0 * jnp.sqrt(jnp.sum(z[..., 1:] ** 2, axis=-1))
  if fid == 14:
    z = _mv(p["r1"], x - xo)
    return jnp.sqrt(jnp.sum(jnp.abs(z) ** (2.0 + 4.0 * idx / (dim - 1)), axis=-1))
  if fid == 15:
    z = _mv(p["m"], _tasy(_tosz(_mv(p["r1"], x - xo)), 0.2))
    return _rastrigin(z)
  if fid == 16:
    z = _mv(p["m"], _tosz(_mv(p["r1"], x - xo)))
    k = np.arange(12)
    ak, bk = 0.5**k, 3.0**k
    f0 = float(np.sum(ak * np.cos(math.pi * bk)))
    s = jnp.sum(ak * jnp.cos(2.0 * math.pi * bk * (z[..., None] + 0.5)), axis=(-1, -2))
    return 10.0 * (s / dim - f0) ** 3 + 10.0 / dim * _penalty(x)
  if fid in (17, 18):
    z = _mv(p["m"], _tasy(_mv(p["r1"], x - xo), 0.5))
    return _schaffers(z) + 10.0 * _penalty(x)
  if fid == 19:
    z = _mv(p["m"], x) + 0.5
    a, b = z[..., :-1], z[..., 1:]
    s = 100.0 * jnp.square(a * a - b) + jnp.square(1.0 - a)
    return 10.0 + 10.0 * jnp.sum(s / 4000.0 - jnp.cos(s), axis=-1) / (dim - 1)
  if fid == 20:
    sign = np.sign(xo)
    two = 2.0 * np.abs(xo)
    xh = 2.0 * sign * x
    zh = jnp.concatenate([xh[..., :1], xh[..., 1:] + 0.25 * (xh[..., :-1] - two[:-1])], -1)
    z = 100.0 * (_cond(10.0, dim) * (zh - two) + two)
    pen = jnp.sum(jnp.square(jnp.maximum(jnp.abs(z) - 500.0, 0.0)), axis=-1)
    s = jnp.sum(z * jnp.sin(jnp.sqrt(jnp.abs(z))), axis=-1)
    return 0.01 * (pen + 418.9828872724339 - s / dim)
  if fid == 23:
    z = _mv(p["m"], x - xo)
    t = 2.0 ** np.arange(1, 33)
    tz = t * z[..., None]
    s = jnp.sum(jnp.abs(tz - jnp.floor(tz + 0.5)) / t, axis=-1)
    prod = jnp.prod((1.0 + (idx + 1) * s) ** (10.0 / dim**1.2), axis=-1)
    return 10.0 / dim**2 * (prod - 1.0) + _penalty(x)
  # fid == 24, Lunacek bi-Rastrigin
  mu0, dd = 2.5, 1.0
  s = 1.0 - 0.5 / (math.sqrt(dim + 20) - 4.1)
  mu1 = -math.sqrt((mu0 * mu0 - dd) / s)
  xh = 2.0 * np.sign(xo) * x
  z = _mv(p["r1"], _cond(100.0, dim) * _mv(p["r2"], xh - mu0))
  s1 = jnp.sum(jnp.square(xh - mu0), axis=-1)
  s2 = jnp.sum(jnp.square(xh - mu1), axis=-1)
  s3 = jnp.sum(jnp.cos(2.0 * math.pi * z), axis=-1)
  return jnp.minimum(s1, dd * dim + s * s2) + 10.0 * (dim - s3) + 1e4 * _penalty(x)


def bbob_function(fid: int, dim: int, instance: int = 1) -> Callable[[jax.Array], jax.Array]:
  """BBOB function ``fid`` (1..24), instance ``instance``, on ``x[..., dim]`` in ``[-5, 5]``.

  Computes in the dtype of ``x`` (float32 by default; float64 under ``jax.enable_x64``),
  jittable and vmappable. The minimum is ``bbob_instance(fid, dim, instance)["fopt"]``.

  Examples:
    >>> f = bbob_function(1, 3, instance=1)
    >>> x = bbob_instance(1, 3, 1)["xopt"]
    >>> round(float(f(jnp.asarray(x))), 2)  # fopt of f1, instance 1
    79.48
  """
  p = bbob_instance(fid, dim, instance)

  def fn(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    arrs = {k: np.asarray(v, x.dtype) for k, v in p.items() if k != "fopt"}
    return _raw(fid, arrs, x) + np.asarray(p["fopt"], x.dtype)

  fn.__name__ = f"bbob_f{fid}_{BBOB_NAMES[fid]}"
  return fn


def bbob_problem(fid: int, dim: int, instance: int = 1) -> Problem:
  """BBOB function ``fid`` on the unit cube (``x = 10 u - 5``) as a :class:`Problem`."""
  f = bbob_function(fid, dim, instance)
  p = bbob_instance(fid, dim, instance)

  def fn(u: jax.Array) -> jax.Array:
    u = jnp.asarray(u)
    return f(10.0 * u - 5.0)

  fn.__name__ = f.__name__
  return Problem(fn, dim, float(p["fopt"]))
