"""CMA-ES on the black-box suite's cells, development seeds only: variants of ``cma_es`` options
against Optuna's ``CmaEsSampler`` and against each other (paired).

Cells: BBOB functions x d, batch 10 (``cma_es(d, popsize=10, **variant)``), budget max(40, 10 d)
as ``blackbox_suite.py --quick``, seeds DEV_SEEDS (0-9, instances 1-10). Optuna's runs come from
(and go to) the suite's cache (``--cache``), so they are the suite's own runs.

  python benchmarks/cma_suite_dev.py --variants '{"base": {}, "x": {"sigma0": 0.2}}'
  python benchmarks/cma_suite_dev.py --variants '{"x": {"sigma0": {"2": 0.2, "5": 0.1, "10": 0.1}}}'
  python benchmarks/cma_suite_dev.py --fill   # Optuna side only
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blackbox_suite as bs  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402
from _protocol import DEV_SEEDS, paired  # noqa: E402

from metaopt._src import bbob, evolution  # noqa: E402
from metaopt._src.evolution import cma_es  # noqa: E402


def _params_class(base_cls, mu=None, d_std_mult=1.0, c_mean=1.0, c_cov_mult=1.0):
  """A development-only CMA-ES class: ``mu`` parents (weights ``log(mu + 1/2) - log i``, the
  learning rates recomputed from their ``mu_eff`` by evosax's own formulas, Hansen's), the
  step-size damping times ``d_std_mult``, the mean's learning rate ``c_mean``, the covariance
  learning rates ``c_1`` and ``c_mu`` times ``c_cov_mult`` (``c_1 + c_mu`` capped below 1, the
  negative weights' bound recomputed from them)."""

  class _Dev(base_cls):
    @property
    def num_elites(self):
      return mu if mu else max(1, int(self.elite_ratio * self.population_size))

    @property
    def _default_params(self):
      lam = self.population_size
      m = self.num_elites
      saved = self.population_size
      try:  # evosax's weights: log((lam + 1) / 2) - log i; with mu: lam' = 2 mu
        self.population_size = 2 * m
        wp = jnp.log((self.population_size + 1) / 2) - jnp.log(jnp.arange(1, lam + 1))
      finally:
        self.population_size = saved
      p = super()._default_params
      if mu is None and c_cov_mult == 1.0:
        wp = None
      if wp is not None:
        mu_eff = jnp.sum(wp[:m]) ** 2 / jnp.sum(wp[:m] ** 2)
        mu_eff_minus = jnp.sum(wp[m:]) ** 2 / jnp.sum(wp[m:] ** 2)
        d, dd = self.num_dims, self.max_num_dims_sq
        c_c = (4 + mu_eff / d) / (d + 4 + 2 * mu_eff / d)
        c_1 = 2 / ((dd + 1.3) ** 2 + mu_eff)
        c_mu = jnp.minimum(1 - c_1 - 1e-8, 2 * (mu_eff + 1 / mu_eff - 2)
                           / ((dd + 2) ** 2 + 2 * mu_eff / 2))
        c_1 = jnp.minimum(c_1 * c_cov_mult, 0.45)
        c_mu = jnp.minimum(c_mu * c_cov_mult, 0.95 - c_1)
        min_alpha = jnp.minimum(jnp.minimum(1 + c_1 / c_mu, 1 + 2 * mu_eff_minus / (mu_eff + 2)),
                                (1 - c_1 - c_mu) / (d * c_mu))
        pos = jnp.sum(wp * (wp > 0))
        neg = jnp.sum(jnp.abs(wp * (wp < 0)))
        w = jnp.where(wp >= 0, wp / pos, min_alpha * wp / neg)
        c_std = (mu_eff + 2) / (d + mu_eff + 5)
        d_std = 1 + 2 * jnp.maximum(0, jnp.sqrt((mu_eff - 1) / (d + 1)) - 1) + c_std
        p = p.replace(weights=w, mu_eff=mu_eff, c_c=c_c, c_1=c_1, c_mu=c_mu, c_std=c_std,
                      d_std=d_std)
      return p.replace(d_std=p.d_std * d_std_mult, c_mean=c_mean)

  return _Dev


def _sep_class():
  """A development-only separable CMA-ES (Ros & Hansen 2008, as the ``cmaes`` package's
  ``SepCMA``): evosax's ``Sep_CMA_ES`` (diagonal covariance, positive weights only) with the
  rank-mu learning rate times ``(d + 2) / 3`` (capped below ``1 - c_1``)."""
  from evosax.algorithms import Sep_CMA_ES

  class _Sep(Sep_CMA_ES):
    @property
    def _default_params(self):
      p = super()._default_params
      return p.replace(c_mu=jnp.minimum(1 - p.c_1 - 1e-8, p.c_mu * (self.num_dims + 2) / 3))

  return _Sep


def _cma(dim, popsize, kw):
  """cma_es with a variant's options; ``_params`` (a dict of :func:`_params_class`'s keywords)
  swaps in the development class (its ``c_mean`` is passed as ``cma_es``'s option)."""
  kw = dict(kw)
  extra = dict(kw.pop("_params", None) or {})
  if "c_mean" in extra:  # cma_es's own option (it sets the parameter after the class)
    kw["c_mean"] = extra.pop("c_mean")
  if not extra:
    return cma_es(dim, popsize=popsize, **kw)
  orig = evolution._cma_class
  if extra.pop("sep", False):  # {"sep": true}: the separable development class
    evolution._cma_class = lambda sampling: _sep_class()
  else:
    evolution._cma_class = lambda sampling: _params_class(orig(sampling), **extra)
  try:
    return cma_es(dim, popsize=popsize, **kw)
  finally:
    evolution._cma_class = orig


class _TracedNp:
  """numpy for bbob._raw, with jnp's sign and abs: f20 and f24 take them of the instance's
  xopt, which is traced here (one program over instances)."""
  sign, abs = staticmethod(jnp.sign), staticmethod(jnp.abs)

  def __getattr__(self, name):
    return getattr(np, name)


def run_fast(fids, dim, seeds, kw, batch=10, budget=None, traj=False):
  """Final regrets [fid, seed] (with ``traj``: best regret after each batch, [fid, seed, batch])
  of cma_es(dim, popsize=batch, **kw), the suite's keys and budget (default max(40, 10 d)),
  every (function, seed) in one jitted vmap (the function picked by lax.switch)."""
  budget = budget or max(40, 10 * dim)
  insts = {f: [bbob.bbob_instance(f, dim, bs.instance_of(s)) for s in seeds] for f in fids}
  stacks = [{k: jnp.asarray(np.stack([i[k] for i in insts[f]]), jnp.float32)
             for k in insts[f][0] if k != "fopt"} for f in fids]
  fopt = np.asarray([[i["fopt"] for i in insts[f]] for f in fids])

  def branch(j, f):
    def go(si, x):
      arrs = {k: v[si] for k, v in stacks[j].items()}
      return bbob._raw(f, arrs, x) + jnp.asarray(fopt[j], jnp.float32)[si]
    return go

  branches = [branch(j, f) for j, f in enumerate(fids)]
  s = _cma(dim, batch, kw)

  def one(fj, si, seed):
    def body(c, r):
      st, best = c
      st, u = s.ask(st, jax.random.fold_in(jax.random.key(seed + 10_000), r), batch)
      y = jax.lax.switch(fj, branches, si, 10.0 * u - 5.0)
      best = jnp.minimum(best, y.min())
      return (s.tell(st, u, y, jnp.zeros(batch, jnp.int32)), best), best
    (_, best), bests = jax.lax.scan(body, (s.init(jax.random.key(seed)), jnp.inf),
                                    jnp.arange(budget // batch))
    return bests if traj else best

  fj, si = np.meshgrid(np.arange(len(fids)), np.arange(len(seeds)), indexing="ij")
  sd = np.asarray(seeds)[si]
  bbob.np = _TracedNp()
  try:
    best = jax.jit(jax.vmap(one))(jnp.asarray(fj.ravel()), jnp.asarray(si.ravel()),
                                  jnp.asarray(sd.ravel()))
  finally:
    bbob.np = np
  if traj:
    return np.asarray(best, np.float64).reshape(fj.shape + (-1,)) - fopt[..., None]
  return np.asarray(best, np.float64).reshape(fj.shape) - fopt


def _at(kw: dict, d: int) -> dict:
  """A variant's options at dimension d: a value given as {"2": .., "5": ..} is taken per d."""
  per_d = lambda v: isinstance(v, dict) and all(str(k).isdigit() for k in v)  # noqa: E731
  return {k: v[str(d)] if per_d(v) else v for k, v in kw.items()}


def block_cells(ours, peer, block: int | None) -> tuple[int, int]:
  """(cells at or below the peer, cells) of one function x d: the suite's median rule on each
  block of ``block`` consecutive seeds (``None``: all seeds one cell)."""
  ours, peer = np.asarray(ours), np.asarray(peer)
  n = block or ours.size
  if ours.size % n:
    raise ValueError(f"--block={block}: must divide the number of seeds ({ours.size})")
  k = sum(bs.at_or_below(ours[i:i + n], peer[i:i + n]) for i in range(0, ours.size, n))
  return k, ours.size // n


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--functions", default=",".join(str(f) for f in range(1, 25)))
  ap.add_argument("--dims", default="2,5,10")
  ap.add_argument("--seeds", type=int, default=len(DEV_SEEDS))
  ap.add_argument("--seed_range", default=None,
                  help="A-B[,C-D..]: diagnostic seeds (blackbox_suite.suite_seeds; never report "
                  "seeds)")
  ap.add_argument("--budget", type=int, default=None,
                  help="evaluations per d (default: the quick suite's max(40, 10 d))")
  ap.add_argument("--cache", default="/work/bbcache_dev")
  ap.add_argument("--variants", default='{"base": {}}')
  ap.add_argument("--fill", action="store_true", help="only run / cache Optuna's side")
  ap.add_argument("--slow", action="store_true", help="the suite's loop, not run_fast")
  ap.add_argument("--raw", default=None, help="JSON of final regrets per variant and cell")
  ap.add_argument("--block", type=int, default=None,
                  help="count cells on blocks of this many consecutive seeds (the suite's 5)")
  a = ap.parse_args()
  import warnings

  import optuna

  optuna.logging.set_verbosity(optuna.logging.ERROR)
  warnings.filterwarnings("ignore")
  seeds = (list(DEV_SEEDS[: a.seeds]) if a.seed_range is None
           else list(bs.suite_seeds(seed_range=a.seed_range)))
  variants = json.loads(a.variants)
  funcs = [f"f{int(f)}" for f in a.functions.split(",")]
  dims = [int(d) for d in a.dims.split(",")]
  batch = 10
  fin = {"optuna": {}}
  for v in variants:
    fin[v] = {}
  fast = {}
  if not a.fill:
    for v, kw in variants.items():
      for d in dims:
        fast[(v, d)] = run_fast([int(p[1:]) for p in funcs], d, seeds, _at(kw, d),
                                budget=a.budget and a.budget * d)
  for d in dims:
    budget = a.budget * d if a.budget else max(40, 10 * d)
    for p in funcs:
      cell = f"{p}/d{d}"
      fin["optuna"][cell] = bs._final(bs.run_cell("optuna", "cma_es", p, d, seeds, budget, batch,
                                                   a.cache)).tolist()
      if a.fill:
        print(cell, "optuna", np.median(fin["optuna"][cell]), flush=True)
        continue
      row = [f"{cell:8s} optuna {np.median(fin['optuna'][cell]):9.3g}"]
      for v, kw in variants.items():
        if a.slow:  # the suite's own loop (a check of run_fast)
          bs.OURS_KWARGS["cma_es"] = _at(kw, d)
          bs._COMPILED.pop(("cma_es", d, batch, None), None)
          fin[v][cell] = bs._final(bs.run_cell("metaopt", "cma_es", p, d, seeds, budget, batch,
                                               "")).tolist()
        else:
          fin[v][cell] = fast[(v, d)][funcs.index(p)].tolist()
        ok = bs.at_or_below(np.asarray(fin[v][cell]), np.asarray(fin["optuna"][cell]))
        row.append(f"{v} {np.median(fin[v][cell]):9.3g}{'*' if ok else ' '}")
      print("  ".join(row), flush=True)
  if a.fill:
    return
  if a.raw:  # a development run: never over a tracked file
    with open(results_path(a.raw, quick=True), "w") as f:
      json.dump(fin, f)
  names = list(variants)
  for v in names:
    for d in dims + [None]:
      cells = [c for c in fin[v] if d is None or c.endswith(f"/d{d}")]
      kn = [block_cells(fin[v][c], fin["optuna"][c], a.block) for c in cells]
      line = (f"{v:10s} d={d or 'all':>3} at_or_below_optuna {sum(k for k, _ in kn)}/"
              f"{sum(n for _, n in kn)}")
      if v != names[0]:
        lo = lambda x: np.log10(np.maximum(np.asarray(x), bs.SOLVED))  # noqa: E731
        ours = np.concatenate([lo(fin[v][c]) for c in cells])
        base = np.concatenate([lo(fin[names[0]][c]) for c in cells])
        line += f"  vs {names[0]} (log10 regret, paired): {paired(ours, base, rtol=1e-9)}"
        line += f"  mean diff {np.mean(ours - base):+.3f}"
      print(line, flush=True)


if __name__ == "__main__":
  main()
