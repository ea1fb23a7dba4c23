"""Black-box suite: metaopt's searchers vs Optuna 5 on the 24 noiseless BBOB functions (COCO).

Seeds (benchmarks/_protocol.py): seed ``s`` runs BBOB instance ``1 + s % 15``.
  DEV_SEEDS[:5] = 0..4 (instances 1-5): for choosing defaults (``--dev``).
  REPORT_SEEDS[:5] = 1000..1004 (instances 11-15): the reported runs (held out: no default
  was chosen on them).
  ``--seeds N`` runs the first N of the list (1000..1000+N-1; N = 10 adds instances 1-5);
  ``--seed_range A-B`` runs diagnostic seeds A..B (e.g. 10-14 = instances 11-15), neither dev
  nor report (give them their own ``--cache``).
One default configuration per searcher for every function (``ours`` below, the library
defaults); nothing is tuned per function.

Problems: BBOB f1-f24 (metaopt.bbob_problem: COCO's definitions and instances, checked against
ioh in tests/test_bbob.py) on ``[-5, 5]^d`` mapped to the unit cube, d in {2, 5, 10, 20}; plus
``mixed`` (two categoricals, two floats; metaopt/_src/benchmark_functions.py) and ``conditional``
(an HPO-like space: optimizer in {sgd, adam, rmsprop}, log learning rate, momentum only for sgd,
1 - beta2 only for adam, log weight decay, 1-4 layers; minimum 0). Budgets ``20 d`` and ``100 d``
evaluations, asked in batches of ``--batch`` (1 = sequential, 10 = how metaopt's engine runs);
Optuna is driven the same way through ask/tell (a batch is asked before any of it is told).
Regret = best f - fopt. Targets are COCO's: regret <= 10^k for k = 2, 1.8, ..., -8 (51).

  ours:   tpe(d), gp_bo(d, levels), cma_es(d, popsize=batch if batch > 1), random_search(d)
  Optuna: TPESampler() ("tpe_default"), TPESampler(multivariate=True, constant_liar=True)
          ("tpe"), GPSampler(deterministic_objective=True) ("gp"), CmaEsSampler(popsize=batch
          if batch > 1) ("cma_es"), RandomSampler ("random"); in-memory storage. On ``mixed``
          and ``conditional`` Optuna gets categorical / int / conditional (define-by-run)
          parameters as its users write them; metaopt sees index coordinates on the cube.
  optional: nevergrad NGOpt ("ngopt") when nevergrad imports; Open-Source Vizier's default
          GP-bandit designer ("vizier", ``VizierGPBandit``) when ``google-vizier[jax]`` imports
          (batches through ``suggest(count=batch)`` / ``update``); both as references, unscored.
Pairs scored (``suite_cells_at_or_below_optuna: K/N``): metaopt tpe vs Optuna tpe, gp vs gp,
cma_es vs cma_es; a cell (function x d x searcher, at the largest batch run) counts when
metaopt's median regret over seeds is at or below Optuna's (regrets below 1e-8, COCO's final
target, count as equal); each cell also gets a paired Wilcoxon signed-rank p (same seed = same
instance on both sides).

Optuna's results do not depend on metaopt's code: they are cached in ``--cache`` (default
runs/blackbox_suite, git-ignored) keyed by sampler, problem, seed, budget, batch and Optuna's
version, so a second run only re-runs metaopt. metaopt is always re-run.

    python benchmarks/blackbox_suite.py --quick     # 8 functions x d 2/5/10, 5 seeds, batch 10,
                                                    # max(40, 10 d) evaluations; prints the
                                                    # K/N line and gp_ask_compile_seconds
    python benchmarks/blackbox_suite.py --out BENCH.md --plot ecdf.png   # the full suite
    python benchmarks/blackbox_suite.py --functions 1,2 --dims 5 --budget 20 --batch 1 \
        --raw b1.json --no_compile_figure            # one part of a full run
    python benchmarks/blackbox_suite.py --combine b1.json,b10.json --out R.md --plot ecdf.png
                                                    # tables, missing cells, batch 1 vs 10 and
                                                    # ECDFs per budget and batch from the parts
    python benchmarks/blackbox_suite.py --gp_compile_only  # only gp_ask_compile_seconds (first
                                                       # model ask, one bucket, the engine's
                                                       # optimised build; a plain jax.jit, the
                                                       # fast build, later buckets, all buckets)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _protocol  # noqa: E402 - benchmarks/ is on sys.path
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _paths import results_path  # noqa: E402

from metaopt._src import benchmark_functions as bf  # noqa: E402
from metaopt._src.bbob import BBOB_GROUPS, BBOB_NAMES, bbob_problem  # noqa: E402
from metaopt._src.evolution import cma_es  # noqa: E402
from metaopt._src.gp import gp_bo  # noqa: E402
from metaopt._src.searchers import random_search  # noqa: E402
from metaopt._src.tpe import tpe  # noqa: E402

N_SEEDS = 5  # seeds per cell unless --seeds says otherwise
REPORT_SEEDS = _protocol.seeds("report", N_SEEDS)
DEV_SEEDS = _protocol.seeds("dev", N_SEEDS)
QUICK_FUNCTIONS = (2, 3, 8, 10, 13, 15, 20, 21)  # at least one per group, fixed
QUICK_DIMS = (2, 5, 10)
TARGETS = 10.0 ** np.linspace(2, -8, 51)
SOLVED = 1e-8
PAIRS = ("tpe", "gp", "cma_es")
OURS = ("tpe", "gp", "cma_es", "random")
PEERS = ("tpe", "tpe_default", "gp", "cma_es", "random")
PEER_LIBS = {"ngopt": "nevergrad", "vizier": "vizier"}  # peers from other libraries


def instance_of(seed: int) -> int:
  return 1 + seed % 15


def suite_seeds(dev: bool = False, n: int | None = None, seed_range: str | None = None
                ) -> tuple[int, ...]:
  """The seeds of a run: the first ``n`` (default 5) report seeds, or dev seeds with ``dev``;
  ``seed_range`` "A-B": the diagnostic seeds A..B (neither dev nor report; seed ``s`` is
  instance ``1 + s % 15``), which may not include a report seed; "A-B,C-D": both ranges."""
  if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
    raise ValueError(f"seeds={n!r}: must be a positive integer")
  if seed_range is None:
    return _protocol.seeds("dev" if dev else "report", N_SEEDS if n is None else n)
  if "," in seed_range:
    return tuple(s for part in seed_range.split(",") for s in suite_seeds(dev, n, part))
  try:
    a, b = (int(x) for x in seed_range.split("-"))
  except ValueError:
    raise ValueError(f"seed_range={seed_range!r}: must be 'A-B' with integers 0 <= A <= B"
                     ) from None
  if not 0 <= a <= b:
    raise ValueError(f"seed_range={seed_range!r}: must be 'A-B' with integers 0 <= A <= B")
  if dev or n is not None:
    raise ValueError("seed_range: not with --dev or --seeds (the range is the seed list)")
  lo, hi = _protocol.REPORT_SEEDS[0], _protocol.REPORT_SEEDS[-1]
  if a <= hi and b >= lo:
    raise ValueError(f"seed_range={seed_range!r}: must not include report seeds {lo}-{hi}")
  return tuple(range(a, b + 1))


# ------------------------------------------------------------------ problems

COND_LEVELS = (3, 0, 0, 0, 0, 4)


def conditional(u: jax.Array) -> jax.Array:
  """HPO-like conditional space on ``[0, 1]^6``; minimum 0 (adam, lr 1e-3, 1 - beta2 1e-3,
  weight decay 1e-4, 3 layers). Coordinates: optimizer index (3 choices), log10 lr in [-5, 0],
  momentum in [0, 0.99] (used by sgd only), log10(1 - beta2) in [-4, -1] (adam only), log10
  weight decay in [-6, -1], layers index (4 choices, 1-4). The best learning rate of sgd moves
  with its momentum."""
  opt = jnp.clip(jnp.floor(u[..., 0] * 3), 0, 2)
  lr = -5.0 + 5.0 * u[..., 1]
  mom = 0.99 * u[..., 2]
  b2 = -4.0 + 3.0 * u[..., 3]
  wd = -6.0 + 5.0 * u[..., 4]
  layers = jnp.clip(jnp.floor(u[..., 5] * 4), 0, 3)
  sgd = 0.05 + jnp.square(lr + 1.5 + 3.0 * (mom - 0.9)) + 2.0 * jnp.square(mom - 0.9)
  adam = jnp.square(lr + 3.0) + 0.3 * jnp.square(b2 + 3.0)
  rms = 0.1 + 1.5 * jnp.square(lr + 3.5)
  base = jnp.where(opt == 0, sgd, jnp.where(opt == 1, adam, rms))
  return (base + 0.05 * jnp.square(wd + 4.0)
          + jnp.asarray([0.3, 0.1, 0.0, 0.05])[layers.astype(jnp.int32)])


def problem(name: str, dim: int, seed: int):
  """``(fn on the cube, minimum, levels)`` of a suite problem for a seed."""
  if name == "mixed":
    return bf.mixed, 0.0, bf.MIXED_LEVELS
  if name == "conditional":
    return conditional, 0.0, COND_LEVELS
  p = bbob_problem(int(name[1:]), dim, instance_of(seed))
  return p.fn, p.minimum, None


def group_of(name: str) -> str:
  if name in ("mixed", "conditional"):
    return "mixed / conditional"
  fid = int(name[1:])
  return next(g for g, fs in BBOB_GROUPS.items() if fid in fs)


# ------------------------------------------------------------------ metaopt side

_COMPILED = {}


OURS_KWARGS: dict[str, dict] = {}  # --ours_kwargs: non-default settings, for development runs


def ours(name: str, dim: int, batch: int, levels):
  key = (name, dim, batch, levels)
  if key not in _COMPILED:
    kw = OURS_KWARGS.get(name, {})
    s = {"tpe": lambda: tpe(dim, **kw), "gp": lambda: gp_bo(dim, levels=levels, **kw),
         "cma_es": lambda: (cma_es(dim, popsize=batch, **kw) if batch > 1
                            else cma_es(dim, **kw)),
         "random": lambda: random_search(dim)}[name]()
    ask = jax.jit(s.ask, static_argnums=2)
    if s.ask_static is not None:  # GP-BO: each bucket compiled when the data reaches it
      one = jax.jit(s.ask, static_argnums=(2, 3))
      ask = lambda st, k, n, one=one, s=s: one(st, k, n, s.ask_static(st))  # noqa: E731
    _COMPILED[key] = (s, ask, jax.jit(s.tell))
  return _COMPILED[key]


def run_ours(name, pname, dim, seed, budget, batch):
  fn, fmin, levels = problem(pname, dim, seed)
  s, ask, tell = ours(name, dim, batch, levels)
  fn = jax.jit(fn)
  state = s.init(jax.random.key(seed))
  best, traj = np.inf, []
  for r in range(budget // batch):
    state, u = ask(state, jax.random.fold_in(jax.random.key(seed + 10_000), r), batch)
    y = fn(u)
    state = tell(state, u, y, jnp.zeros(batch, jnp.int32))
    best = min(best, float(jnp.min(y)))
    traj.append(best - fmin)
  return traj


# ------------------------------------------------------------------ peers


def optuna_sampler(name: str, seed: int, batch: int):
  import optuna

  s = optuna.samplers
  if name == "tpe":
    return s.TPESampler(multivariate=True, constant_liar=True, seed=seed)
  if name == "tpe_default":
    return s.TPESampler(seed=seed)
  if name == "gp":
    return s.GPSampler(seed=seed, deterministic_objective=True)
  if name == "cma_es":
    return s.CmaEsSampler(seed=seed, popsize=batch if batch > 1 else None,
                          warn_independent_sampling=False)
  return s.RandomSampler(seed=seed)


def _optuna_point(trial, pname: str, dim: int):
  """Suggests a point the way an Optuna user writes the space; returns it on the cube."""
  if pname == "conditional":
    opt = trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop"])
    lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
    mom = trial.suggest_float("momentum", 0.0, 0.99) if opt == "sgd" else 0.5
    b2 = trial.suggest_float("one_minus_beta2", 1e-4, 1e-1, log=True) if opt == "adam" else 0.01
    wd = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    layers = trial.suggest_int("layers", 1, 4)
    return [(["sgd", "adam", "rmsprop"].index(opt) + 0.5) / 3, (math.log10(lr) + 5) / 5,
            mom / 0.99, (math.log10(b2) + 4) / 3, (math.log10(wd) + 6) / 5, (layers - 0.5) / 4]
  if pname == "mixed":
    return [(trial.suggest_categorical("a", [0, 1, 2]) + 0.5) / 3,
            (trial.suggest_categorical("b", [0, 1, 2, 3]) + 0.5) / 4,
            trial.suggest_float("x0", 0, 1), trial.suggest_float("x1", 0, 1)]
  return [trial.suggest_float(f"x{j}", 0.0, 1.0) for j in range(dim)]


def run_optuna(name, pname, dim, seed, budget, batch):
  import optuna

  fn, fmin, _ = problem(pname, dim, seed)
  fn = jax.jit(fn)
  study = optuna.create_study(sampler=optuna_sampler(name, seed, batch))
  best, traj = np.inf, []
  for _ in range(budget // batch):
    trials = [study.ask() for _ in range(batch)]
    u = np.asarray([_optuna_point(t, pname, dim) for t in trials], np.float32)
    y = np.asarray(fn(jnp.asarray(u)), np.float64)
    for t, v in zip(trials, y, strict=True):
      study.tell(t, float(v))
    best = min(best, float(y.min()))
    traj.append(best - fmin)
  return traj


def run_ngopt(pname, dim, seed, budget, batch):
  import nevergrad as ng

  fn, fmin, _ = problem(pname, dim, seed)
  fn = jax.jit(fn)
  param = ng.p.Array(shape=(dim,), lower=0.0, upper=1.0)
  param.random_state = np.random.RandomState(seed)
  opt = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=batch)
  best, traj = np.inf, []
  for _ in range(budget // batch):
    cands = [opt.ask() for _ in range(batch)]
    y = np.asarray(fn(jnp.asarray(np.stack([c.value for c in cands]), jnp.float32)))
    for c, v in zip(cands, y, strict=True):
      opt.tell(c, float(v))
    best = min(best, float(y.min()))
    traj.append(best - fmin)
  return traj


def run_vizier(pname, dim, seed, budget, batch):
  from vizier import pyvizier as vz
  from vizier._src.algorithms.core import abstractions
  from vizier._src.algorithms.designers import gp_bandit

  fn, fmin, _ = problem(pname, dim, seed)
  fn = jax.jit(fn)
  prob = vz.ProblemStatement()
  for j in range(dim):
    prob.search_space.root.add_float_param(f"x{j}", 0.0, 1.0)
  prob.metric_information.append(
      vz.MetricInformation("y", goal=vz.ObjectiveMetricGoal.MINIMIZE))
  designer = gp_bandit.VizierGPBandit(prob, rng=jax.random.PRNGKey(seed))
  best, traj, tid = np.inf, [], 0
  for _ in range(budget // batch):
    sugg = designer.suggest(count=batch)
    u = np.asarray([[s.parameters[f"x{j}"].value for j in range(dim)] for s in sugg], np.float32)
    y = np.asarray(fn(jnp.asarray(u)), np.float64)
    done = []
    for s, v in zip(sugg, y, strict=True):
      tid += 1
      done.append(s.to_trial(tid).complete(vz.Measurement({"y": float(v)})))
    designer.update(abstractions.CompletedTrials(done), abstractions.ActiveTrials())
    best = min(best, float(y.min()))
    traj.append(best - fmin)
  return traj


# ------------------------------------------------------------------ running and caching


def _cache_key(lib, name, pname, dim, seed, budget, batch):
  import optuna

  raw = f"{lib}|{name}|{pname}|{dim}|{seed}|{budget}|{batch}|optuna-{optuna.__version__}|v1"
  return hashlib.sha1(raw.encode()).hexdigest()


def run_cell(lib, name, pname, dim, seeds, budget, batch, cache):
  """Trajectories (best regret after each batch) of one searcher on one problem, per seed."""
  out = []
  for seed in seeds:
    path = None
    if lib != "metaopt" and cache:
      path = os.path.join(cache, _cache_key(lib, name, pname, dim, seed, budget, batch) + ".json")
      if os.path.exists(path):
        with open(path) as f:
          out.append({**json.load(f), "batch": batch, "budget": budget})
        continue
    t, c = time.perf_counter(), time.process_time()
    if lib == "metaopt":
      traj = run_ours(name, pname, dim, seed, budget, batch)
    elif lib == "nevergrad":
      traj = run_ngopt(pname, dim, seed, budget, batch)
    elif lib == "vizier":
      traj = run_vizier(pname, dim, seed, budget, batch)
    else:
      traj = run_optuna(name, pname, dim, seed, budget, batch)
    rec = {"traj": traj, "seconds": time.perf_counter() - t,
           "cpu_seconds": time.process_time() - c}
    if path:
      os.makedirs(cache, exist_ok=True)
      with open(path, "w") as f:
        json.dump(rec, f)
    out.append({**rec, "batch": batch, "budget": budget})
  return out


def gp_compile_seconds(dim: int = 5, batch: int = 10, build: str = "engine",
                       n_obs: int = 20, buckets: str = "one") -> tuple[float, float]:
  """Compile time (trace, lower and XLA compile) of ``gp_bo(dim).ask`` (default settings, a
  batch of ``batch``, ``n_obs`` observations: past the startup design), measured in a fresh
  process so no cache is warm: (wall, process CPU) s. ``buckets="one"``: ``ask(state, key,
  n, ask_static(state))``, only the bucket of observation counts that holds ``n_obs`` (64
  rows for 20, 128 for 100, 256 for 200; what the engine and this suite compile, each bucket
  when the data first reaches it); ``"all"``: ``ask(state, key, n)``, every bucket in a
  ``lax.switch`` (what a user's own ``jax.jit`` of ``ask`` compiles, once). ``build``:
  ``"engine"``, the engine's optimised build (``population.TieredJit.build(True)``, with the
  XLA options the library gives it on this backend: what the engine compiles while enough
  asks remain to repay it, as at the first model ask of a suite run); ``"fast"``, its fast
  build (``TieredJit.build(False)``, used when few asks remain); ``"plain"``, a user's own
  ``jax.jit(ask)`` with XLA's default options. Exits with an error if the engine would not
  choose its optimised build for the first model ask of a suite-sized search (``dim``,
  ``batch``, 100 ``dim`` evaluations). On a loaded machine the CPU seconds are the figure to
  trust."""
  if build not in ("engine", "fast", "plain"):
    raise ValueError(f"build={build!r}: must be 'engine', 'fast' or 'plain'")
  args, static = ("st, jax.random.key(2), {batch}, s.ask_static(st)", "(2, 3)") \
      if buckets == "one" else ("st, jax.random.key(2), {batch}", "2")
  # a suite-sized search: 100 dim evaluations in asks of ``batch``; the first is the Sobol
  # design's, so the first model ask has all the others left, itself included
  calls_left = 100 * dim // batch - 1
  code = f"""
import time, jax, jax.numpy as jnp
from metaopt import gp_bo
from metaopt._src.population import TieredJit
s = gp_bo({dim})
st = s.init(jax.random.key(0))
u = jax.random.uniform(jax.random.key(1), ({n_obs}, {dim}))
st = s.tell(st, u, jnp.sum(u ** 2, 1), jnp.zeros({n_obs}, jnp.int32))
tiered = TieredJit(s.ask, static_argnums={static})
f = (jax.jit(s.ask, static_argnums={static}) if {build!r} == "plain"
     else tiered.build({build!r} == "engine"))
t, c = time.perf_counter(), time.process_time()
f.lower({args.format(batch=batch)}).compile()
print(time.perf_counter() - t, time.process_time() - c)
if {build!r} == "engine" and not tiered.pays(*tiered.cost({args.format(batch=batch)}),
                                             {calls_left}):
  raise SystemExit("the engine would not choose its optimised build with {calls_left} asks left")
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root}
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  if res.returncode:
    raise RuntimeError(f"gp_compile_seconds({build=}, {n_obs=}, {buckets=}): {res.stderr}")
  wall, cpu = res.stdout.strip().splitlines()[-1].split()
  return float(wall), float(cpu)


def print_gp_compile() -> tuple[float, float]:
  """Prints the first model ``ask``'s compile as the engine builds it (optimised, one bucket:
  the headline), a user's plain ``jax.jit`` of the same program, the engine's fast build,
  each later bucket's engine compile and the all-bucket program a user's ``jit`` builds;
  returns the headline (wall, CPU)."""
  load0 = os.getloadavg()[0]
  gp_s, gp_cpu = gp_compile_seconds()
  print(f"gp_ask_compile_seconds: {gp_s:.2f}  (first model ask, the 64-row bucket, the "
        "engine's optimised build)")
  print(f"gp_ask_compile_cpu_seconds: {gp_cpu:.2f}")
  w, c = gp_compile_seconds(build="plain")
  print(f"gp_ask_plain_jit_compile_seconds: {w:.2f} (CPU {c:.2f})  (the same program, a "
        "user's jax.jit with XLA's default options)")
  w, c = gp_compile_seconds(build="fast")
  print(f"gp_ask_engine_fast_compile_seconds: {w:.2f} (CPU {c:.2f})  (the engine's fast "
        "build, used when few asks remain)")
  for n_obs, rows in ((100, 128), (200, 256)):  # compiled when the data first reaches them
    w, c = gp_compile_seconds(n_obs=n_obs)
    print(f"gp_ask_compile_seconds_bucket{rows}: {w:.2f} (CPU {c:.2f})  (later, once)")
  w, c = gp_compile_seconds(build="plain", buckets="all")
  print(f"gp_ask_compile_seconds_all_buckets: {w:.2f} (CPU {c:.2f})  (a user's jit of "
        "ask(state, key, n): every bucket in one program)")
  print(f"load average (1 min) before / after: {load0:.1f} / {os.getloadavg()[0]:.1f}")
  return gp_s, gp_cpu


# ------------------------------------------------------------------ reporting


def _final(recs):
  return np.asarray([r["traj"][-1] for r in recs])


def _wilcoxon(a, b):
  from scipy.stats import wilcoxon

  a, b = np.maximum(a, SOLVED), np.maximum(b, SOLVED)
  if np.allclose(a, b):
    return 1.0
  try:
    return float(wilcoxon(np.log10(a), np.log10(b)).pvalue)
  except ValueError:
    return float("nan")


def at_or_below(ours_final, peer_final) -> bool:
  m, o = np.median(ours_final), np.median(peer_final)
  return bool(m <= o * (1 + 1e-9) or (m <= SOLVED and o <= SOLVED))


def ecdf_curve(recs, batch, dim):
  """Fraction of (run, target) pairs reached after each batch, x = evaluations / d."""
  hits = np.mean([[np.mean(np.asarray(r["traj"][i]) <= TARGETS) for i in range(len(r["traj"]))]
                  for r in recs], axis=0)
  return (np.arange(1, len(hits) + 1) * batch) / dim, hits


def report(results, batch, seeds, budget_label, wall):
  """Markdown: per-cell pairs, per-group medians, and ECDF finals."""
  lines = []
  cells = sorted({(p, d) for (_, _, p, d) in results})
  lines += [f"Batch {batch}; seeds {list(seeds)} (instances "
            f"{sorted({instance_of(s) for s in seeds})}); budget {budget_label}; median final "
            "regret over seeds [25%-75%]; p: paired Wilcoxon signed-rank (two-sided) on "
            "log10 regret.", "",
            "| problem | d | searcher | metaopt | Optuna | at or below | p |",
            "|---|---|---|---|---|---|---|"]
  k = n = 0
  for pname, dim in cells:
    for name in PAIRS:
      a, b = results.get(("metaopt", name, pname, dim)), results.get(("optuna", name, pname, dim))
      if a is None or b is None:
        continue
      fa, fb = _final(a), _final(b)
      ok = at_or_below(fa, fb)
      k, n = k + ok, n + 1
      lines.append(f"| {pname} | {dim} | {name} | {np.median(fa):.3g} [{np.quantile(fa, .25):.2g}"
                   f"-{np.quantile(fa, .75):.2g}] | {np.median(fb):.3g} [{np.quantile(fb, .25):.2g}"
                   f"-{np.quantile(fb, .75):.2g}] | {'yes' if ok else 'no'} | "
                   f"{_wilcoxon(fa, fb):.2f} |")
  # per group: median over functions and seeds of log10 regret, and the ECDF's final value
  groups = sorted({group_of(p) for p, _ in cells}, key=lambda g: list(BBOB_GROUPS).index(g)
                  if g in BBOB_GROUPS else 99)
  dims = sorted({d for _, d in cells})
  searchers = sorted({(lib, name) for (lib, name, _, _) in results})
  lines += ["", "Per group: median log10 regret over functions x seeds [25%-75%]; "
            "targets reached (fraction of COCO's 51 targets 1e2..1e-8, averaged over runs).", "",
            "| group | d | " + " | ".join(f"{lib} {name}" for lib, name in searchers) + " |",
            "|---|---|" + "---|" * len(searchers)]
  for g in groups:
    for dim in dims:
      row = []
      for lib, name in searchers:
        recs = [r for (l2, n2, p, d), rs in results.items() if l2 == lib and n2 == name
                and d == dim and group_of(p) == g for r in rs]
        if not recs:
          row.append("-")
          continue
        lf = np.log10(np.maximum(_final(recs), SOLVED))
        frac = np.mean([np.mean(r["traj"][-1] <= TARGETS) for r in recs])
        row.append(f"{np.median(lf):.2f} [{np.quantile(lf, .25):.1f}..{np.quantile(lf, .75):.1f}]"
                   f" / {frac:.2f}")
      if any(c != "-" for c in row):
        lines.append(f"| {g} | {dim} | " + " | ".join(row) + " |")
  lines += ["", f"suite_cells_at_or_below_optuna: {k}/{n}"]
  if wall is not None:
    lines.append(f"Wall time {wall:.0f} s ({os.cpu_count()} CPU cores, jax {jax.__version__}).")
  return "\n".join(lines), k, n


def load_raw(paths) -> dict:
  """``{(budget per d, batch): {(lib, name, problem, d): records}}`` from ``--raw`` files
  (records carry their ``batch`` and ``budget``; later files add cells, never replace)."""
  groups: dict = {}
  for path in paths:
    with open(path) as f:
      raw = json.load(f)
    for key, recs in raw.items():
      lib, name, pname, dim = key.split("|")
      dim = int(dim)
      if not recs or "batch" not in recs[0]:
        raise ValueError(f"combine: {path} has no batch/budget per record (made before them)")
      gkey = (recs[0]["budget"] // dim, recs[0]["batch"])
      groups.setdefault(gkey, {}).setdefault((lib, name, pname, dim), recs)
  return groups


def missing_cells(results) -> list[str]:
  """Lines naming, per searcher and d, the problems that other searchers ran and it did not."""
  out = []
  dims = sorted({d for (_, _, _, d) in results})
  for lib, name in sorted({(lib, n) for (lib, n, _, _) in results}):
    for dim in dims:
      want = sorted({p for (_, _, p, d) in results if d == dim}, key=_problem_order)
      miss = [p for p in want if (lib, name, p, dim) not in results]
      if miss:
        what = "all problems" if len(miss) == len(want) else ", ".join(miss)
        out.append(f"- {lib} {name}, d = {dim}: not run on {what} ({len(miss)}/{len(want)})")
  return out


def pair_counts(results) -> str:
  """``K/N`` of the scored pairs per searcher and d (cells where both sides ran)."""
  parts = []
  for name in PAIRS:
    for dim in sorted({d for (_, _, _, d) in results}):
      cells = [p for (lib, n, p, d) in results if (lib, n, d) == ("metaopt", name, dim)
               and ("optuna", name, p, dim) in results]
      k = sum(at_or_below(_final(results[("metaopt", name, p, dim)]),
                          _final(results[("optuna", name, p, dim)])) for p in cells)
      if cells:
        parts.append(f"{name} d={dim} {k}/{len(cells)}")
  return "At or below Optuna by searcher and d: " + ", ".join(parts) + "."


def _problem_order(p: str):
  return (0, int(p[1:])) if p[0] == "f" else (1, p)


def batch_costs(b1, b10) -> list[str]:
  """Markdown rows: per searcher and d, on the problems run at both batches, the median
  log10 final regret and the targets reached at batch 1 and at batch 10."""
  lines = ["| searcher | d | problems | median log10 regret, batch 1 | batch 10 | "
           "targets reached, batch 1 | batch 10 | problems where batch 10 is at or below |",
           "|---|---|---|---|---|---|---|---|"]
  keys = sorted({(lib, name, dim) for (lib, name, p, dim) in set(b1) & set(b10)})
  for lib, name, dim in keys:
    probs = sorted({p for (l2, n2, p, d) in set(b1) & set(b10)
                    if (l2, n2, d) == (lib, name, dim)}, key=_problem_order)
    cols, finals = [], []
    for res in (b1, b10):
      recs = [r for p in probs for r in res[(lib, name, p, dim)]]
      lf = np.log10(np.maximum(_final(recs), SOLVED))
      finals.append([np.median(_final(res[(lib, name, p, dim)])) for p in probs])
      cols.append((np.median(lf), np.mean([np.mean(r["traj"][-1] <= TARGETS) for r in recs])))
    better = sum(at_or_below([b], [a]) for a, b in zip(*finals, strict=True))
    lines.append(f"| {lib} {name} | {dim} | {len(probs)} | {cols[0][0]:.2f} | {cols[1][0]:.2f} | "
                 f"{cols[0][1]:.2f} | {cols[1][1]:.2f} | {better}/{len(probs)} |")
  return lines


def combine_report(paths, plot=None, seeds=REPORT_SEEDS) -> str:
  """The full-suite markdown from ``--raw`` files: per budget and batch the per-cell and
  per-group tables and the cells not run, then batch 1 against batch 10; ECDF plots (one per
  budget and batch) next to ``plot``."""
  groups = load_raw(paths)
  lines = []
  for (bud, batch), results in sorted(groups.items()):
    text, _, _ = report(results, batch, seeds, f"{bud} d evaluations", None)
    text = text.replace("suite_cells_at_or_below_optuna:", "Cells at or below Optuna (all d):")
    lines += [f"### Budget {bud} d, batch {batch}", "", text, "", pair_counts(results), ""]
    miss = missing_cells(results)
    lines += (["Not run (missing cells):", ""] + miss if miss else ["Every cell ran."]) + [""]
    if plot:
      root, ext = os.path.splitext(plot)
      plot_ecdf(results, batch, f"{root}_{bud}d_b{batch}{ext or '.png'}")
  for bud in sorted({b for b, _ in groups}):
    if (bud, 1) in groups and (bud, 10) in groups:
      lines += [f"### Cost of batching: batch 1 against batch 10, budget {bud} d", "",
                *batch_costs(groups[(bud, 1)], groups[(bud, 10)]), ""]
  return "\n".join(lines)


ECDF_COLORS = {"tpe": "tab:blue", "tpe_default": "tab:cyan", "gp": "tab:green",
               "cma_es": "tab:red", "random": "tab:gray", "ngopt": "tab:purple",
               "vizier": "tab:olive"}


def plot_ecdf(results, batch, path):
  """One panel per d (BBOB problems only): fixed colour per searcher, metaopt solid, peers
  dashed; y up to the largest fraction reached."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter

  dims = sorted({d for (_, _, p, d) in results if p not in ("mixed", "conditional")})
  fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.6), squeeze=False)
  top, handles = 0.0, {}
  for ax, dim in zip(axes[0], dims, strict=True):
    for lib, name in sorted({(lib, n) for (lib, n, _, d) in results if d == dim}):
      recs = [r for (l2, n2, p, d), rs in results.items() if (l2, n2, d) == (lib, name, dim)
              and p not in ("mixed", "conditional") for r in rs]
      if not recs:
        continue
      x, h = ecdf_curve(recs, batch, dim)
      top = max(top, float(h.max()))
      handles[f"{lib} {name}"], = ax.plot(x, h, ls="-" if lib == "metaopt" else "--",
                                          color=ECDF_COLORS.get(name, "k"))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"BBOB, d = {dim}, batch {batch}")
    ax.set_xlabel("evaluations / d")
    ax.set_ylabel("fraction of (run, target) pairs")
  for ax in axes[0]:
    ax.set_ylim(0, min(1.0, top + 0.05))
  axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def check_names(ours_names: list[str], peers: list[str]) -> None:
  """Raises one ValueError naming the flag and its allowed values for an unknown searcher."""
  for flag, names, allowed in (("--ours", ours_names, OURS),
                               ("--peers", peers, PEERS + tuple(PEER_LIBS))):
    bad = [n for n in names if n not in allowed]
    if bad:
      raise ValueError(f"{flag}: unknown {', '.join(bad)}; allowed: {', '.join(allowed)} "
                       "(comma-separated), or none")


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="the fixed subset (see the docstring)")
  ap.add_argument("--dev", action="store_true", help="development seeds instead of REPORT_SEEDS")
  ap.add_argument("--functions", default=None,
                  help="comma-separated: BBOB ids (1-24), mixed, conditional")
  ap.add_argument("--dims", default=None, help="comma-separated; default 2,5,10,20")
  ap.add_argument("--budget", default=None, help="evaluations per d (e.g. 20 or 100)")
  ap.add_argument("--batch", type=int, default=10)
  ap.add_argument("--seeds", type=int, default=None,
                  help=f"how many seeds of the list (default {N_SEEDS}; beyond the list: the "
                  "seeds after its first)")
  ap.add_argument("--seed_range", default=None,
                  help="A-B[,C-D..]: diagnostic seeds A..B (and C..D) instead (neither dev "
                  "nor report)")
  ap.add_argument("--ours", default=None,
                  help="comma-separated; default " + ",".join(OURS) + "; none: peers only")
  ap.add_argument("--peers", default=None,
                  help="comma-separated Optuna samplers (and ngopt, vizier)")
  ap.add_argument("--cache", default="runs/blackbox_suite", help="'' disables the Optuna cache")
  ap.add_argument("--out", default=None, help="write the markdown report here")
  ap.add_argument("--plot", default=None, help="write the ECDF plot here (png)")
  ap.add_argument("--raw", default=None,
                  help="write all trajectories here (JSON; rewritten after every cell)")
  ap.add_argument("--ours_kwargs", default=None,
                  help="JSON of non-default settings per searcher, e.g. "
                  "'{\"tpe\": {\"gamma\": 0.2}}' (development runs only)")
  ap.add_argument("--gp_compile_only", action="store_true",
                  help="only measure gp_ask_compile_seconds (fresh processes; a few minutes)")
  ap.add_argument("--no_compile_figure", action="store_true",
                  help="skip the gp_ask_compile_seconds measurement after the run")
  ap.add_argument("--combine", default=None,
                  help="comma-separated --raw files of earlier runs: write the full-suite "
                  "report (--out, --plot) from them instead of running")
  return ap


def main() -> None:
  ap = _parser()
  args = ap.parse_args()
  if args.gp_compile_only:
    print_gp_compile()
    return
  if args.combine:
    text = combine_report(args.combine.split(","), args.plot)
    print(text)
    if args.out:
      with open(args.out, "w") as f:
        f.write(text + "\n")
    return
  if args.ours_kwargs:
    OURS_KWARGS.update(json.loads(args.ours_kwargs))
  import optuna

  optuna.logging.set_verbosity(optuna.logging.ERROR)
  warnings.filterwarnings("ignore")
  seeds = suite_seeds(args.dev, args.seeds, args.seed_range)
  if args.quick:
    funcs = [f"f{f}" for f in QUICK_FUNCTIONS]
    dims, ours_names, peers = QUICK_DIMS, PAIRS, PAIRS
  else:
    funcs = [f"f{f}" for f in range(1, 25)] + ["mixed", "conditional"]
    dims, ours_names, peers = (2, 5, 10, 20), OURS, PEERS
  if args.functions:
    funcs = [f if f in ("mixed", "conditional") else f"f{int(f)}"
             for f in args.functions.split(",")]
  dims = [int(d) for d in args.dims.split(",")] if args.dims else list(dims)
  ours_names = args.ours.split(",") if args.ours else list(ours_names)
  peers = args.peers.split(",") if args.peers else list(peers)
  ours_names, peers = [n for n in ours_names if n != "none"], [n for n in peers if n != "none"]
  try:
    check_names(ours_names, peers)
  except ValueError as e:
    ap.error(str(e))

  def budget_of(dim):
    if args.budget:
      return int(args.budget) * dim
    return max(40, 10 * dim) if args.quick else 100 * dim

  raw_path = results_path(args.raw, quick=args.quick)
  t0 = time.perf_counter()
  results = run_suite(funcs, dims, ours_names, peers, seeds, budget_of, args.batch, args.cache,
                      raw_path)
  wall = time.perf_counter() - t0
  label = "max(40, 10 d)" if args.quick and not args.budget else (
      f"{args.budget} d" if args.budget else "100 d")
  text, k, n = report(results, args.batch, seeds, label + " evaluations", wall)
  print("\n" + text)
  gp_s, gp_cpu = (print_gp_compile() if "gp" in ours_names and not args.no_compile_figure
                  else (float("nan"),) * 2)
  out_path = results_path(args.out, quick=args.quick)  # a quick run writes no tracked file
  if out_path:
    with open(out_path, "w") as f:
      f.write(text + f"\n\ngp_ask_compile_seconds: {gp_s:.2f} (CPU {gp_cpu:.2f})\n")
  plot_path = results_path(args.plot, quick=args.quick)
  if plot_path:
    plot_ecdf(results, args.batch, plot_path)


def run_suite(funcs, dims, ours_names, peers, seeds, budget_of, batch, cache, raw_path=None):
  """Runs every (searcher, problem, d) cell; ``{(lib, name, problem, d): records}``. With
  ``raw_path`` all trajectories so far are rewritten there after each cell."""
  results = {}
  for pname in funcs:
    pdims = [len(bf.MIXED_LEVELS)] if pname == "mixed" else (
        [len(COND_LEVELS)] if pname == "conditional" else dims)
    for dim in pdims:
      budget = budget_of(dim)
      budget -= budget % batch
      jobs = [("metaopt", n) for n in ours_names]
      jobs += [(PEER_LIBS.get(n, "optuna"), n) for n in peers]
      for lib, name in jobs:
        if lib != "optuna" and lib != "metaopt":
          try:
            __import__(lib)
          except ImportError:
            print(f"{lib} not installed: {name} skipped", flush=True)
            continue
        recs = run_cell(lib, name, pname, dim, seeds, budget, batch, cache)
        results[(lib, name, pname, dim)] = recs
        fin = _final(recs)
        label = BBOB_NAMES.get(int(pname[1:]), "") if pname[0] == "f" else ""
        print(f"{pname:11s} {label:20s} d={dim:2d} {lib:8s} {name:11s} median regret "
              f"{np.median(fin):.3g}  ({np.mean([r['seconds'] for r in recs]):.1f} s/run)",
              flush=True)
        if raw_path:
          with open(raw_path, "w") as f:
            json.dump({"|".join(map(str, k2)): v for k2, v in results.items()}, f)
  return results


if __name__ == "__main__":
  main()
