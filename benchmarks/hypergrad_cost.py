"""Cost of hypergradients relative to plain training, memory vs unroll length, implicit vs jaxopt.

MLP 64-128-128-10 on digits (8x8 flattened), SGD + momentum + weight decay, batch 128,
hyperparameters {learning_rate, momentum, weight_decay}:

* time of one hypergradient / time of one inner training run of the same T steps, for
  T = 100 and 1000 and each method: reverse (``unrolled``), reverse + per-step remat,
  reverse + sqrt(T) remat, forward-mode (3 hyperparameters), truncated reverse (last T/10);
* peak temporary memory (XLA compiled memory analysis) vs T, with and without remat;
* implicit hypergradient (CG) vs jaxopt's ``custom_root`` implicit differentiation on ridge
  regression: time ratio and agreement with the closed form.

    python benchmarks/hypergrad_cost.py [--quick] [--threads 1|0] [--markdown out.md]

Prints ``hypergrad_memory_growth_T1000_over_T100: X`` (sqrt remat; target <= 3.5),
``implicit_over_jaxopt: X`` (default implicit, true-residual check; target <= 1.0),
``implicit_over_jaxopt_stats: X`` (``stats=True``: also the training loss and inner-gradient
norm), ``implicit_over_jaxopt_check_false: X`` (without the check jaxopt does not make),
``implicit_true_residual_f64`` (both sides' CG solutions, equal-accuracy check),
``implicit_per_product_us`` (one Hessian-vector product of each side) and,
last, ``hypergrad_over_train_T100: X`` (reverse-mode, default backward; target <= 3). Both
sides of every ratio are timed in the same run with the same repeats: the best of interleaved
rounds (each round times every entry once), robust to load spikes from other processes but
not to sustained load (the load average is printed). Compile seconds are printed separately
and excluded from the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _single_thread_xla() -> None:
  """``--threads 1`` (default) pins XLA CPU to one intra-op thread before jax is imported:
  the 128-wide matmuls gain nothing from two threads, and on a shared machine a two-thread
  kernel waits for whichever thread was descheduled, which makes timings much noisier.
  ``--threads 0`` keeps XLA's default."""
  argv = " ".join(sys.argv[1:]).replace("--threads=", "--threads ").split()
  threads = argv[argv.index("--threads") + 1] if "--threads" in argv else "1"
  if threads == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()


_single_thread_xla()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _paths import results_path  # noqa: E402 - benchmarks/ is on sys.path

from metaopt import hypergrad  # noqa: E402
from metaopt.hypergrad import problems  # noqa: E402
from metaopt.hypergrad.unrolled import run_inner  # noqa: E402


def _best_times(fns: dict, args: tuple, rounds: int) -> dict:
  """Best-of-``rounds`` wall seconds of each compiled call, measured interleaved round by
  round so that load from other processes on a shared machine hits every entry alike."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(rounds):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def _temp_mb(compiled) -> float:
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def mlp_rows(steps: list[int], rounds: dict[int, int], quick: bool) -> tuple[list[dict], dict]:
  p = problems.mlp("digits", widths=(128, 128), batch_size=128)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  h = p.hparams
  w0 = p.init_params(jax.random.key(0))
  rows, memory = [], {}
  for t in steps:
    xs = p.sample(jax.random.key(1), t)
    train = jax.jit(lambda hh, w, x: inner.params(run_inner(inner, hh, w, x)[0]))
    methods = {
        "reverse": hypergrad.unrolled(inner, p.val_loss),
        "reverse (autodiff)": hypergrad.unrolled(inner, p.val_loss, backward="autodiff"),
        "reverse+remat(step)": hypergrad.unrolled(inner, p.val_loss, remat="step"),
        "reverse+remat(sqrt)": hypergrad.unrolled(inner, p.val_loss, remat="sqrt"),
        "reverse+remat(sqrt) (autodiff)": hypergrad.unrolled(inner, p.val_loss, remat="sqrt",
                                                             backward="autodiff"),
        "forward (3 hparams)": hypergrad.forward(inner, p.val_loss),
        "truncated K=T/10": hypergrad.unrolled(inner, p.val_loss, truncate=t // 10),
    }
    t0 = time.perf_counter()
    compiled = {"train": train.lower(h, w0, xs).compile()}
    compile_s = {"train": time.perf_counter() - t0}
    for name, fn in methods.items():
      t0 = time.perf_counter()
      compiled[name] = jax.jit(fn).lower(h, w0, xs).compile()
      compile_s[name] = time.perf_counter() - t0
      memory[(name, t)] = _temp_mb(compiled[name])
    timed = {k: v for k, v in compiled.items()
             if not (quick and t > 100 and k.startswith("forward"))}
    secs = _best_times(timed, (h, w0, xs), rounds[t])
    t_train = secs["train"]
    ref = None
    for name in methods:
      res = compiled[name](h, w0, xs)
      g = np.asarray(ravel_pytree(res.grad)[0])
      ref = g if ref is None else ref
      agree = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
      sec = secs.get(name, float("nan"))
      rows.append({"T": t, "method": name, "seconds": sec, "train_seconds": t_train,
                   "compile_seconds": compile_s[name], "train_compile_seconds": compile_s["train"],
                   "ratio": sec / t_train, "temp_mb": memory[(name, t)],
                   "rel_diff_vs_reverse": agree,
                   "amplification": float(res.diagnostics.amplification),
                   "trustworthy": bool(res.diagnostics.trustworthy)})
      print(f"T={t:5d} {name:31s} {sec * 1e3:9.1f} ms  train {t_train * 1e3:8.1f} ms  "
            f"ratio {sec / t_train:5.2f}  temp {memory[(name, t)]:7.1f} MiB  "
            f"rel.diff {agree:.1e}  compile {compile_s[name]:.1f}s (train "
            f"{compile_s['train']:.1f}s)", flush=True)
  return rows, memory


def _ridge_products(train_loss, lam, w_star):
  """The two sides' Hessian-vector products on ridge, built as each library builds them:
  ours is the tangent of one ``jax.linearize`` of ``w -> (dL/dw, dL/dλ)`` (what
  ``hypergrad.implicit`` iterates on), jaxopt's is the pullback of one ``jax.vjp`` of its
  optimality function ``dL/dw`` (``jaxopt.implicit_diff.root_vjp``). Neither recomputes the
  primal per product."""
  grads = lambda w: jax.grad(train_loss, argnums=(0, 1))(w, lam, None)
  _, lin = jax.linearize(grads, w_star)
  _, pullback = jax.vjp(lambda w: jax.grad(train_loss)(w, lam, None), w_star)
  return (lambda v: lin(v)[0]), (lambda u: pullback(u)[0])


def per_product_seconds(train_loss, lam, w_star, rounds: int, k: int = 100) -> dict:
  """Seconds per Hessian-vector product of each side: a jitted loop of ``k`` products
  (the next product's input is the last one's output, scaled), best of interleaved rounds."""
  ours, theirs = _ridge_products(train_loss, lam, w_star)

  def loop(mv):
    return jax.jit(lambda v: jax.lax.fori_loop(0, k, lambda _, u: mv(u) * 1e-3, v))

  fns = {"ours": loop(ours).lower(w_star).compile(),
         "jaxopt": loop(theirs).lower(w_star).compile()}
  return {name: t / k for name, t in _best_times(fns, (w_star,), rounds).items()}


def true_residuals(train_loss, lam, w_star, b, tol: float, maxiter: int) -> dict:
  """Each side's CG solution of ``H v = ∂_w V`` (the system both hypergradients solve, same
  tolerance and cap) and its true relative residual ``||H v − b|| / ||b||`` evaluated in
  float64 from the float32 solution, plus the products each used. Outside the timing."""
  ours_mv, theirs_mv = _ridge_products(train_loss, lam, w_star)
  ours = hypergrad.cg_solve(ours_mv, b, maxiter=maxiter, tol=tol)
  out = {"ours": (np.asarray(ours.x), int(ours.iterations), float(ours.residual_norm),
                  bool(ours.converged))}
  try:
    from jaxopt import linear_solve

    calls = []

    def counted(u):
      jax.debug.callback(lambda: calls.append(1))
      return theirs_mv(u)

    v = jax.block_until_ready(linear_solve.solve_cg(counted, b, maxiter=maxiter, tol=tol))
    # jax.scipy.sparse.linalg.cg (jaxopt's solve_cg) first forms r0 = b - A x0 with x0 = 0,
    # a product XLA folds away in the compiled program: count loop iterations only
    out["jaxopt"] = (np.asarray(v), len(calls) - 1, float("nan"), None)
  except Exception as e:  # noqa: BLE001
    print(f"jaxopt: not usable ({e!r}); no true residual for it")
  with jax.enable_x64(True):  # the float32 data, exactly, in float64 arithmetic
    l64, w64 = jnp.asarray(lam, jnp.float64), jnp.asarray(w_star, jnp.float64)
    h64 = np.asarray(jax.hessian(lambda w: train_loss(w, l64, None))(w64), np.float64)
  b64 = np.asarray(b, np.float64)
  return {name: {"true_residual": float(np.linalg.norm(h64 @ v.astype(np.float64) - b64)
                                        / np.linalg.norm(b64)),
                 "iterations": its, "own_check_f32": own, "converged": ok}
          for name, (v, its, own, ok) in out.items()}


def ridge_problem() -> tuple:
  """The implicit rows' ridge problem: ``(train_loss, val_loss, lam, w_star, (x, y, xv,
  yv))``."""
  rng = np.random.default_rng(0)
  n, d = 2000, 200
  w_true = jnp.asarray(rng.normal(size=d), jnp.float32)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = x @ w_true + 2.0 * jnp.asarray(rng.normal(size=n), jnp.float32)
  xv = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  yv = xv @ w_true + 2.0 * jnp.asarray(rng.normal(size=n), jnp.float32)
  lam = jnp.asarray(50.0)
  train_loss = lambda w, h, b: 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * h * jnp.sum(w * w)
  val_loss = lambda w, h: problems.ridge_val_loss(w, xv, yv)
  w_star = jax.block_until_ready(problems.ridge_solution(x, y, lam))
  return train_loss, val_loss, lam, w_star, (x, y, xv, yv)


def implicit_rows(rounds: int) -> list[dict]:
  """Our implicit CG hypergradient vs jaxopt ``custom_root`` + ``solve_cg`` on ridge.

  Both are given the inner solution ``w*`` (closed form, computed once outside the timing)
  and differentiate ``V(w*(λ))`` with the same linear solver (CG, tol 1e-6, at most 500
  iterations); jaxopt's ``custom_root`` solver simply returns the given ``w*``.
  """
  train_loss, val_loss, lam, w_star, (x, y, xv, yv) = ridge_problem()

  ours_fn = hypergrad.implicit(train_loss, val_loss, solver="cg", maxiter=500, tol=1e-6)
  lean_fn = hypergrad.implicit(train_loss, val_loss, solver="cg", maxiter=500, tol=1e-6,
                               check=False)
  stats_fn = hypergrad.implicit(train_loss, val_loss, solver="cg", maxiter=500, tol=1e-6,
                                stats=True)
  fns = {"ours": jax.jit(lambda h, w: ours_fn(h, w, None)),
         "ours_check_false": jax.jit(lambda h, w: lean_fn(h, w, None)),
         "ours_stats": jax.jit(lambda h, w: stats_fn(h, w, None))}
  with jax.enable_x64(True):
    x64 = [jnp.asarray(a, jnp.float64) for a in (x, y, xv, yv)]
    exact = float(problems.ridge_hypergrad(*x64, jnp.asarray(50.0, jnp.float64)))
  try:
    from jaxopt import implicit_diff, linear_solve

    @implicit_diff.custom_root(
        jax.grad(lambda w, h: train_loss(w, h, None)),
        solve=lambda mv, b: linear_solve.solve_cg(mv, b, maxiter=500, tol=1e-6))
    def ridge_solver(init, h):
      del h
      return init  # the given solution

    fns["jaxopt"] = jax.jit(jax.value_and_grad(lambda h, w: val_loss(ridge_solver(w, h), h)))
  except Exception as e:  # noqa: BLE001
    print(f"jaxopt: not usable with jax {jax.__version__} ({e!r}); skipping its row")
  compile_s = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    fns[name] = fn.lower(lam, w_star).compile()
    compile_s[name] = time.perf_counter() - t0
  secs = _best_times(fns, (lam, w_star), rounds)
  per_product = per_product_seconds(train_loss, lam, w_star, rounds)
  b = jax.grad(val_loss)(w_star, lam)
  accuracy = true_residuals(train_loss, lam, w_star, b, tol=1e-6, maxiter=500)
  rows = []
  for name, label in (("ours", "hypergrad.implicit (cg)"),
                      ("ours_check_false", "hypergrad.implicit (cg, check=False)"),
                      ("ours_stats", "hypergrad.implicit (cg, stats=True)")):
    r = fns[name](lam, w_star)
    rows.append({"method": label, "seconds": secs[name], "grad": float(r.grad),
                 "rel_err_vs_closed_form": abs(float(r.grad) - exact) / abs(exact),
                 "iterations": int(r.diagnostics.iterations), "compile": compile_s[name]})
  if "jaxopt" in fns:
    _, g = fns["jaxopt"](lam, w_star)
    rows.append({"method": "jaxopt 0.8.5 custom_root (solve_cg)", "seconds": secs["jaxopt"],
                 "grad": float(g), "rel_err_vs_closed_form": abs(float(g) - exact) / abs(exact),
                 "iterations": -1, "compile": compile_s["jaxopt"]})
    for i, (name, label) in enumerate((("ours", "ratio ours / jaxopt"),
                                       ("ours_check_false", "ratio ours (check=False) / jaxopt"),
                                       ("ours_stats", "ratio ours (stats=True) / jaxopt"))):
      rows.append({"method": label, "seconds": secs[name] / secs["jaxopt"],
                   "grad": abs(rows[i]["grad"] - float(g)) / abs(float(g)),
                   "rel_err_vs_closed_form": float("nan"), "iterations": -1, "compile": 0.0})
  for name, acc in accuracy.items():
    rows.append({"method": f"solve {name}", "seconds": per_product.get(name, float("nan")),
                 "grad": acc["true_residual"], "rel_err_vs_closed_form": acc["own_check_f32"],
                 "iterations": acc["iterations"], "compile": 0.0,
                 "converged": acc["converged"]})
  return rows


def markdown(rows: list[dict], irows: list[dict], memory: dict, steps: list[int],
             command: str, growth: float) -> str:
  out = [f"Command: `{command}`", "",
         f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
         f"jax {jax.__version__}, backend {jax.default_backend()}, "
         f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}. Times: best of interleaved rounds; "
         f"load average (1 min) {os.getloadavg()[0]:.1f} when the tables were written.",
         "",
         "### MLP 64-128-128-10 on digits, SGD + momentum, batch 128", "",
         "| T | method | hypergrad (ms) | train (ms) | ratio | temp MiB | rel. diff vs reverse |",
         "|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['T']} | {r['method']} | {r['seconds'] * 1e3:.1f} | "
               f"{r['train_seconds'] * 1e3:.1f} | {r['ratio']:.2f} | {r['temp_mb']:.1f} | "
               f"{r['rel_diff_vs_reverse']:.1e} |")
  out += ["", "### Peak temporary memory (MiB) vs T", "",
          "| method | " + " | ".join(f"T={t}" for t in steps) + " | growth |",
          "|---|" + "---|" * (len(steps) + 1)]
  for name in dict.fromkeys(k[0] for k in memory):
    vals = [memory[(name, t)] for t in steps]
    out.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals)
               + f" | {vals[-1] / vals[0]:.2f} |")
  out += ["", f"`hypergrad_memory_growth_T1000_over_T100: {growth:.2f}` (sqrt remat)", "",
          "### Implicit hypergradient on ridge (n=2000, d=200, float32), given w*", "",
          "| method | time (ms) | hypergradient | rel. err vs closed form | CG iters | "
          "compile (s) |", "|---|---|---|---|---|---|"]
  for r in irows:
    if r["method"].startswith("solve"):
      continue
    if r["method"].startswith("ratio"):
      out.append(f"| {r['method']} | {r['seconds']:.2f}x | rel. diff {r['grad']:.1e} | | | |")
    else:
      out.append(f"| {r['method']} | {r['seconds'] * 1e3:.2f} | {r['grad']:.6g} | "
                 f"{r['rel_err_vs_closed_form']:.1e} | "
                 f"{r['iterations'] if r['iterations'] >= 0 else '-'} | {r['compile']:.2f} |")
  solves = [r for r in irows if r["method"].startswith("solve")]
  if solves:
    out += ["", "Equal accuracy: each side's CG solution of `H v = dV/dw` (tol 1e-6, the system "
            "both solve), true relative residual evaluated in float64 from the float32 solution; "
            "per-product time from a jitted loop of 100 products.", "",
            "| side | CG products | true residual (f64) | our float32 check | per product (us) |",
            "|---|---|---|---|---|"]
    for r in solves:
      own = r["rel_err_vs_closed_form"]
      out.append(f"| {r['method'][6:]} | {r['iterations']} | {r['grad']:.2e} | "
                 f"{'-' if own != own else f'{own:.2e}'} | {r['seconds'] * 1e6:.1f} |")
  return "\n".join(out) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer rounds, no T=1000 forward")
  parser.add_argument("--markdown", default="", help="also write the tables to this file")
  parser.add_argument("--threads", default="1", choices=["0", "1"],
                      help="1: one XLA CPU intra-op thread (default); 0: XLA's default")
  args = parser.parse_args()
  rounds = 3 if args.quick else 7
  steps = [100, 1000]
  load = os.getloadavg()
  rows, memory = mlp_rows(steps, {100: 5 * rounds, 1000: rounds}, args.quick)
  irows = implicit_rows(rounds * 5)
  for r in irows:
    if r["method"].startswith("solve"):
      print(f"implicit: {r['method']:32s} {r['iterations']} products, true residual (f64) "
            f"{r['grad']:.3e}, {r['seconds'] * 1e6:.1f} us per product")
    else:
      print(f"implicit: {r['method']:32s} {r['seconds']:.4g} grad/diff {r['grad']:.6g}")
  growth = memory[("reverse+remat(sqrt)", 1000)] / memory[("reverse+remat(sqrt)", 100)]
  plain = memory[("reverse", 1000)] / memory[("reverse", 100)]
  print(f"hypergrad_memory_growth_T1000_over_T100_no_remat: {plain:.2f}")
  args.markdown = results_path(args.markdown, args.quick)
  if args.markdown:
    cmd = "python benchmarks/hypergrad_cost.py" + (" --quick" if args.quick else "") + (
        " --threads 0" if args.threads == "0" else "")
    with open(args.markdown, "w") as f:
      f.write(markdown(rows, irows, memory, steps, cmd, growth))
  row = next(r for r in rows if r["T"] == 100 and r["method"] == "reverse")
  print(f"hypergrad_memory_growth_T1000_over_T100: {growth:.2f}")
  print(f"load average (1 min) at the start {load[0]:.1f}, at the end {os.getloadavg()[0]:.1f}")
  solves = {r["method"][6:]: r for r in irows if r["method"].startswith("solve")}
  if len(solves) == 2:
    ours, theirs = solves["ours"], solves["jaxopt"]
    print(f"implicit_true_residual_f64: ours {ours['grad']:.3g} ({ours['iterations']} CG "
          f"products), jaxopt {theirs['grad']:.3g} ({theirs['iterations']}); tol 1e-6, our "
          f"float32 check read {ours['rel_err_vs_closed_form']:.3g} (converged: "
          f"{ours['converged']})")
    print(f"implicit_per_product_us: ours {ours['seconds'] * 1e6:.1f}, "
          f"jaxopt {theirs['seconds'] * 1e6:.1f}")
  ratios = {r["method"]: r["seconds"] for r in irows if r["method"].startswith("ratio")}
  if "ratio ours / jaxopt" in ratios:
    print(f"implicit_over_jaxopt_check_false: {ratios['ratio ours (check=False) / jaxopt']:.2f}")
    print(f"implicit_over_jaxopt_stats: {ratios['ratio ours (stats=True) / jaxopt']:.2f}")
    print(f"implicit_over_jaxopt: {ratios['ratio ours / jaxopt']:.2f}")
  print(f"hypergrad_over_train_T100: {row['ratio']:.2f}")


if __name__ == "__main__":
  main()
