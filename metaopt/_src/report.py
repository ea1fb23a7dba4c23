"""Reports on a study: the JSON summary, PNG plots and one self-contained HTML page.

Plots: optimization history with best-so-far, learning curves per trial (pruned dashed,
failed red), parameter importance (the correlation ratio of each parameter's main effect:
the share of the objective's variance explained by binning that parameter alone), parallel
coordinates, PBT lineages (who copied whom at which epoch), hypergradient traces of gradient
HPO (hyperparameters and hypergradient norm per outer step), architecture weights over a NAS
search, the Pareto front of objective vs cost (live weights or FLOPs) and a table of the training
conditions the monitor saw.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections import Counter
from typing import Any

import numpy as np

from metaopt._src.types import Result, Trial

_COLORS = {"complete": "tab:blue", "failed": "tab:red", "pruned": "tab:gray",
           "infeasible": "tab:orange", "running": "tab:green"}


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _curve(t: Trial, key: str) -> list[float]:
  return [m.get(key) for m in t.metrics if m.get(key) is not None]


def objective_key(result: Result) -> str | None:
  """The per-epoch metric the objective was read from (``valid_<objective>``)."""
  for t in result.trials:
    if t.status == "complete" and t.objective is not None and t.metrics:
      for k, v in t.metrics[-1].items():
        if k.startswith("valid_") and isinstance(v, (int, float)) and np.isclose(v, t.objective):
          return k
  return None


def trial_compute(t: Trial) -> dict[str, float]:
  """A trial's recorded compute: FLOPs and device-seconds summed over its epochs."""
  return {"flops": float(sum(m.get("flops") or 0.0 for m in t.metrics)),
          "device_seconds": float(sum(m.get("device_s") or 0.0 for m in t.metrics))}


def compute_summary(result: Result) -> dict[str, Any]:
  """Total FLOPs and device-seconds of a study, per status and per trial."""
  per = {t.number: trial_compute(t) for t in result.trials}
  by_status: dict[str, dict[str, float]] = {}
  for t in result.trials:
    agg = by_status.setdefault(t.status, {"flops": 0.0, "device_seconds": 0.0, "trials": 0})
    agg["flops"] += per[t.number]["flops"]
    agg["device_seconds"] += per[t.number]["device_seconds"]
    agg["trials"] += 1
  total_f = sum(c["flops"] for c in per.values())
  total_s = sum(c["device_seconds"] for c in per.values())
  return {"total_flops": total_f, "total_device_seconds": total_s,
          "flops_per_trial": total_f / max(1, len(per)),
          "device_seconds_per_trial": total_s / max(1, len(per)),
          "by_status": by_status, "per_trial": per}


def plot_history(result: Result, path: str) -> str:
  """Objective per trial (colored by status) with the best-so-far line; returns ``path``."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  for status, color in _COLORS.items():
    ts = [t for t in result.trials if t.status == status and t.objective is not None]
    if ts:
      ax.scatter([t.number for t in ts], [t.objective for t in ts], s=14, c=color,
                 label=f"{status} ({len(ts)})", alpha=0.8)
  failed = [t for t in result.trials if t.status == "failed"]
  if failed:
    ax.scatter([], [], c=_COLORS["failed"], marker="x", label=f"failed ({len(failed)})")
  done = sorted((t.number, t.objective) for t in result.trials
                if t.status == "complete" and t.objective is not None)
  if done:
    xs, ys = zip(*done, strict=True)
    best = np.maximum.accumulate(ys) if result.direction == "maximize" else \
        np.minimum.accumulate(ys)
    ax.step(xs, best, where="post", c="k", lw=1.2, label="best so far")
  ax.set_xlabel("trial")
  ax.set_ylabel("objective (valid)")
  ax.set_title(f"{result.study}: {len(result.trials)} trials ({result.direction})")
  ax.legend(fontsize=8, loc="best")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_learning_curves(result: Result, path: str) -> str:
  """Valid objective per epoch for every trial; pruned dashed, failed red, best thick."""
  plt = _plt()
  key = objective_key(result) or "valid_accuracy"
  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  best = result.best
  for t in result.trials:
    ys = _curve(t, key)
    if not ys:
      continue
    style = {"complete": dict(c="tab:blue", alpha=0.35, lw=0.8),
             "pruned": dict(c="tab:gray", alpha=0.5, lw=0.8, ls="--"),
             "failed": dict(c="tab:red", alpha=0.7, lw=0.8)}.get(t.status, dict(c="k", lw=0.5))
    ax.plot(range(len(ys)), ys, **style)
  if best is not None:
    ys = _curve(best, key)
    ax.plot(range(len(ys)), ys, c="k", lw=2.0, label=f"best (#{best.number})")
    ax.legend(fontsize=8)
  ax.set_xlabel("epoch")
  ax.set_ylabel(key)
  ax.set_title("learning curves (pruned: dashed grey, failed: red)")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def param_importance(result: Result, bins: int = 5) -> dict[str, float]:
  """Share of the objective's variance explained by each parameter's binned main effect."""
  done = [t for t in result.trials if t.status == "complete" and t.objective is not None]
  if len(done) < 4:
    return {}
  y = np.asarray([t.objective for t in done], np.float64)
  total = y.var()
  out = {}
  names = sorted({k for t in done for k in t.params})
  for n in names:
    vals = [t.params.get(n) for t in done]
    if len({repr(v) for v in vals}) < 2:
      continue
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
      x = np.asarray(vals, np.float64)
      edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
      groups = np.searchsorted(edges, x, side="right")
    else:
      keys = sorted({repr(v) for v in vals})
      groups = np.asarray([keys.index(repr(v)) for v in vals])
    between = sum((groups == g).sum() * (y[groups == g].mean() - y.mean()) ** 2
                  for g in np.unique(groups)) / len(y)
    out[n] = float(between / total) if total > 0 else 0.0
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def plot_importance(result: Result, path: str) -> str | None:
  imp = param_importance(result)
  if not imp:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(imp)), dpi=110)
  names = list(imp)[::-1]
  ax.barh(names, [imp[n] for n in names], color="tab:purple")
  ax.set_xlabel("share of objective variance (main effect)")
  ax.set_title("parameter importance")
  ax.set_xlim(0, 1)
  return _save(fig, path)


def _axis_ticks(p: Any) -> list[tuple[float, str]]:
  """``(unit-cube position, label)`` of a few real values of parameter ``p`` on its axis: powers
  of ten for a log scale, category names for a choice."""
  kind = type(p).__name__
  if kind == "Choice":
    return [(float(p.encode(i)), str(c)) for i, c in enumerate(p.choices)]
  if kind not in ("Float", "Int"):
    return []
  lo, hi = float(p.lo), float(p.hi)
  if getattr(p, "log", False) and lo > 0:
    vals = [10.0 ** k for k in range(math.ceil(math.log10(lo) - 1e-9),
                                     math.floor(math.log10(hi) + 1e-9) + 1)]
    if len(vals) < 3:  # under two decades: a few geometrically spaced values
      vals = list(np.geomspace(lo, hi, 4))
      if kind == "Int":
        vals = sorted({int(round(v)) for v in vals})
  else:
    vals = list(np.linspace(lo, hi, 5))
    if kind == "Int":
      vals = sorted({int(round(v)) for v in vals})
  return [(float(p.encode(v)), f"{v:.3g}") for v in vals]


def plot_parallel(result: Result, path: str, coords: list[str] | None = None,
                  space: Any = None) -> str | None:
  """Parallel coordinates of complete trials, colored by objective. With the ``space``, each
  axis is labelled in the parameter's own values (log axes for log parameters, category names);
  else ``coords`` names the unit-cube coordinates."""
  done = [t for t in result.trials if t.status == "complete" and t.u and t.objective is not None]
  if len(done) < 2:
    return None
  plt = _plt()
  u = np.asarray([t.u for t in done])
  params = None
  if space is not None and len(getattr(space, "names", [])) == u.shape[1]:
    coords = list(space.names)
    params = [space.params[n] for n in coords]
  names = coords if coords and len(coords) == u.shape[1] else \
      [f"u{i}" for i in range(u.shape[1])]
  y = np.asarray([t.objective for t in done])
  order = np.argsort(y if result.direction == "maximize" else -y)
  fig, ax = plt.subplots(figsize=(max(7, 1.6 * u.shape[1]), 4.2), dpi=110)
  cmap = plt.get_cmap("viridis")
  span = np.ptp(y) or 1.0
  for i in order:
    ax.plot(range(u.shape[1]), u[i], c=cmap((y[i] - y.min()) / span), alpha=0.6, lw=0.9)
  ax.set_xticks(range(u.shape[1]))
  ax.set_xticklabels(names, rotation=20 if params is None else 0, fontsize=8)
  if params is None:
    ax.set_ylabel("unit-cube coordinate")
  else:
    ax.set_yticks([])
    for j, p in enumerate(params):
      ax.axvline(j, c="0.6", lw=0.8, zorder=0)
      for pos, label in _axis_ticks(p):
        ax.plot([j - 0.03, j], [pos, pos], c="0.3", lw=0.8)
        ax.text(j + 0.04, pos, label, fontsize=7, va="center", ha="left", color="0.15",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(-0.2, u.shape[1] - 0.6)
  ax.set_title("parallel coordinates (yellow = better)" if result.direction == "maximize"
               else "parallel coordinates (yellow = worse)")
  return _save(fig, path)


def plot_lineage(result: Result, path: str) -> str | None:
  """PBT lineage: an arrow from donor to receiver at every exploit step."""
  edges = [(m["epoch"], m["parent"], t.number) for t in result.trials for m in t.metrics
           if "parent" in m]
  if not edges:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  for e, src, dst in edges:
    ax.annotate("", xy=(e + 1, dst), xytext=(e, src),
                arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.5, lw=0.8))
  ax.set_xlim(-0.5, max(e for e, _, _ in edges) + 1.5)
  ax.set_ylim(-0.5, max(max(s, d) for _, s, d in edges) + 0.5)
  ax.set_xlabel("epoch")
  ax.set_ylabel("trial")
  ax.set_title(f"PBT lineage ({len(edges)} exploit steps)")
  return _save(fig, path)


def plot_hypergrad(result: Result, path: str, max_hparams: int = 6) -> str | None:
  """Gradient-HPO traces: each hyperparameter per outer step (one line per member) and the
  hypergradient norm per outer step (log scale)."""
  ts = [t for t in result.trials if any(m.get("hypergrad_norm") for m in t.metrics)]
  if not ts:  # no program here took a hypergradient step
    return None
  names = sorted({k for t in ts for m in t.metrics for k in m
                  if k.startswith("hparams.") or k in ("learning_rate", "weight_decay")})
  shown = names[:max_hparams]
  plt = _plt()
  cols = len(shown) + 1
  fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.2), dpi=110, squeeze=False)
  for t in ts:
    color = _COLORS.get(t.status, "k")
    for ax, name in zip(axes[0], shown, strict=False):
      ax.plot(_curve(t, name), c=color, alpha=0.6, lw=0.9)
    norms = [max(float(v), 1e-30) for v in _curve(t, "hypergrad_norm")]
    axes[0, -1].plot(norms, c=color, alpha=0.6, lw=0.9)
  for ax, name in zip(axes[0], shown, strict=False):
    ax.set_title(name.removeprefix("hparams."), fontsize=9)
    ax.set_xlabel("outer step")
  axes[0, -1].set_yscale("log")
  axes[0, -1].set_title("hypergradient norm", fontsize=9)
  axes[0, -1].set_xlabel("outer step")
  more = f" (first {len(shown)} of {len(names)})" if len(names) > len(shown) else ""
  fig.suptitle(f"hypergradient traces{more}", fontsize=10)
  return _save(fig, path)


def arch_weights_history(result: Result) -> dict[str, Any] | None:
  """Architecture weights of a NAS search over its epochs: ``{"ops": names, "cells":
  {cell: array[epochs, edges, ops]}}`` from the search trial's ``arch_weights``."""
  for t in result.trials:
    hist = [m["arch_weights"] for m in t.metrics if isinstance(m.get("arch_weights"), dict)]
    if hist:
      cells = {c: np.asarray([h[c] for h in hist], np.float64) for c in hist[0]}
      n_ops = next(iter(cells.values())).shape[-1]
      ops = t.params.get("ops") if isinstance(t.params.get("ops"), list) else None
      return {"ops": ops if ops and len(ops) == n_ops else [f"op{k}" for k in range(n_ops)],
              "cells": cells}
  return None


def plot_arch_weights(result: Result, path: str) -> str | None:
  """Softmax architecture weights per edge over a NAS search (one panel per edge, a line per
  candidate op)."""
  hist = arch_weights_history(result)
  if hist is None:
    return None
  plt = _plt()
  cells, ops = hist["cells"], hist["ops"]
  n_edges = max(w.shape[1] for w in cells.values())
  cols = min(n_edges, 7)
  rows_per = -(-n_edges // cols)
  fig, axes = plt.subplots(rows_per * len(cells), cols, squeeze=False, dpi=110, sharey=True,
                           figsize=(2.1 * cols, 1.9 * rows_per * len(cells) + 0.6))
  cmap = plt.get_cmap("tab10")
  for ci, (cell, w) in enumerate(cells.items()):
    for e in range(rows_per * cols):
      ax = axes[ci * rows_per + e // cols, e % cols]
      if e >= w.shape[1]:
        ax.axis("off")
        continue
      for k in range(w.shape[2]):
        ax.plot(range(1, w.shape[0] + 1), w[:, e, k], c=cmap(k % 10), lw=1.0,
                label=ops[k] if ci == 0 and e == 0 else None)
      ax.set_title(f"{cell} edge {e}", fontsize=8)
      ax.tick_params(labelsize=7)
  fig.legend(loc="lower center", ncol=min(len(ops), 8), fontsize=7)
  fig.suptitle("architecture weights (softmax) per epoch", fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 0.97))
  return _save(fig, path, tight=False)


def trial_costs(result: Result, costs: tuple[str, dict[int, float]] | None = None
                ) -> tuple[str, dict[int, float]]:
  """``(name, {trial number: cost})`` of the complete trials: ``costs`` when given, else the
  recorded FLOPs (device-seconds when FLOPs were not recorded)."""
  if costs is not None:
    return costs
  done = [t for t in result.trials if t.status == "complete" and t.objective is not None]
  comp = {t.number: trial_compute(t) for t in done}
  key = "flops" if done and all(c["flops"] > 0 for c in comp.values()) else "device_seconds"
  return key, {n: c[key] for n, c in comp.items()}


def pareto_front(result: Result, costs: tuple[str, dict[int, float]] | None = None
                 ) -> list[dict[str, Any]]:
  """Complete trials no other complete trial beats on both the objective and its cost,
  cheapest first. ``costs`` is ``(name, {trial number: cost})``, e.g. live weights; by
  default the recorded FLOPs (device-seconds when FLOPs were not recorded)."""
  key, table = trial_costs(result, costs)
  done = [t for t in result.trials
          if t.status == "complete" and t.objective is not None and t.number in table]
  sign = -1.0 if result.direction == "maximize" else 1.0
  pts = [(float(table[t.number]), sign * t.objective, t) for t in done]
  front = [(c, y, t) for c, y, t in pts
           if not any(c2 <= c and y2 <= y and (c2 < c or y2 < y) for c2, y2, _ in pts)]
  return [{"number": t.number, "objective": t.objective, "cost": c, "cost_key": key}
          for c, _, t in sorted(front, key=lambda p: (p[0], p[1], p[2].number))]


def plot_pareto(result: Result, path: str,
                costs: tuple[str, dict[int, float]] | None = None) -> str | None:
  """Objective vs cost per complete trial, the Pareto front drawn as a staircase."""
  front = pareto_front(result, costs)
  if len([t for t in result.trials if t.status == "complete"]) < 2 or not front:
    return None
  key, table = trial_costs(result, costs)
  scale, unit = 1.0, key
  if costs is None:
    scale, unit = (1e9, "GFLOPs") if key == "flops" else (1.0, "device-seconds")
  pts = [(table[t.number] / scale, t.objective) for t in result.trials
         if t.status == "complete" and t.objective is not None and t.number in table]
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  ax.scatter(*zip(*pts, strict=True), s=14, c="tab:blue", alpha=0.5, label="complete")
  fx = [p["cost"] / scale for p in front]
  fy = [p["objective"] for p in front]
  ax.step(fx, fy, where="post", c="tab:red", lw=1.2)
  ax.scatter(fx, fy, s=28, c="tab:red", label=f"Pareto front ({len(front)})")
  ax.set_xlabel(f"cost per trial ({unit})")
  ax.set_ylabel("objective (valid)")
  if costs is not None and key == "live weights":
    ax.set_xscale("log")
  ax.set_title(f"objective ({result.direction}) vs cost (minimize)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def _save(fig, path: str, tight: bool = True) -> str:
  if tight:
    fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  _plt().close(fig)
  return path


def _img(path: str | None) -> str:
  if not path:
    return ""
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  return f'<img src="data:image/png;base64,{data}" alt="{html.escape(os.path.basename(path))}">'


def write_report(result: Result, out: str, extra: dict[str, Any] | None = None,
                 coords: list[str] | None = None,
                 events: list[dict[str, Any]] | None = None,
                 costs: tuple[str, dict[int, float]] | None = None,
                 space: Any = None) -> dict[str, str]:
  """Writes the PNG plots and ``report.html`` (images embedded) to ``out``; returns paths.

  ``costs`` (``(name, {trial number: cost})``) is the x axis of the Pareto front; FLOPs by
  default.

  ``events`` (``Store.events``) are listed in the page: program switches (white-box ->
  black-box fallback), repairs, targets reached, resumes."""
  os.makedirs(out, exist_ok=True)
  paths = {
      "history": plot_history(result, os.path.join(out, "history.png")),
      "learning_curves": plot_learning_curves(result, os.path.join(out, "learning_curves.png")),
      "importance": plot_importance(result, os.path.join(out, "importance.png")),
      "parallel": plot_parallel(result, os.path.join(out, "parallel.png"), coords,
                                space),
      "lineage": plot_lineage(result, os.path.join(out, "lineage.png")),
      "hypergrad": plot_hypergrad(result, os.path.join(out, "hypergrad.png")),
      "arch_weights": plot_arch_weights(result, os.path.join(out, "arch_weights.png")),
      "pareto": plot_pareto(result, os.path.join(out, "pareto.png"), costs),
  }
  s = result.summary()
  conds = Counter(c for t in result.trials for m in t.metrics for c in m.get("conditions", []))
  reasons = Counter(t.failure_reason.split(" at epoch")[0].split(" after epoch")[0]
                    for t in result.trials if t.failure_reason)
  top = sorted([t for t in result.trials if t.objective is not None],
               key=lambda t: -t.objective if result.direction == "maximize" else t.objective)
  comp = compute_summary(result)
  per = comp["per_trial"]
  rows = "".join(
      f"<tr><td>{t.number}</td><td>{t.status}</td><td>{t.objective:.4f}</td>"
      f"<td>{len(t.metrics)}</td><td>{per[t.number]['flops'] / 1e9:.3f}</td>"
      f"<td>{per[t.number]['device_seconds']:.3f}</td>"
      f"<td>{html.escape(str(t.params))}</td></tr>" for t in top[:20])
  comp_rows = "".join(
      f"<tr><td>{html.escape(k)}</td><td>{int(v['trials'])}</td><td>{v['flops'] / 1e9:.3f}</td>"
      f"<td>{v['device_seconds']:.3f}</td></tr>" for k, v in sorted(comp["by_status"].items()))
  extra_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in (extra or {}).items())
  best = s["best"]
  page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>metaopt report: {html.escape(result.study)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}}
img{{max-width:49%;vertical-align:top}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}</style></head><body>
<h1>{html.escape(result.study)}</h1>
<p>{s['n_trials']} trials: {s['n_complete']} complete, {s['n_pruned']} pruned,
{s['n_failed']} failed ({result.direction}).
Best: {'-' if best is None else f"#{best['number']} objective {best['objective']:.4f}"}.</p>
<table>{extra_rows}</table>
<h2>Search</h2>{_img(paths['history'])}{_img(paths['learning_curves'])}
{_img(paths['importance'])}{_img(paths['parallel'])}{_img(paths['lineage'])}
{_img(paths['pareto'])}{_img(paths['hypergrad'])}{_img(paths['arch_weights'])}
<h2>Best trials</h2><table><tr><th>#</th><th>status</th><th>objective</th><th>epochs</th>
<th>GFLOPs</th><th>device-s</th><th>params</th></tr>{rows}</table>
<h2>Compute</h2><p id="compute">Total {comp['total_flops'] / 1e9:.3f} GFLOPs,
{comp['total_device_seconds']:.3f} device-seconds (XLA cost analysis of the population
kernels, and their wall time with compilation excluded, per trial).</p>
<table><tr><th>status</th><th>trials</th><th>GFLOPs</th><th>device-s</th></tr>{comp_rows}
</table>
<h2>Training conditions (trial-epochs)</h2><table>{''.join(
    f'<tr><td>{html.escape(k)}</td><td>{v}</td></tr>' for k, v in conds.most_common())}</table>
<h2>Why trials stopped</h2><table>{''.join(
    f'<tr><td>{html.escape(k)}</td><td>{v}</td></tr>' for k, v in reasons.most_common())}</table>
<h2>Events</h2><table id="events"><tr><th>when</th><th>kind</th><th>what</th></tr>{''.join(
    f"<tr><td>{html.escape(str(e['at']))}</td><td>{html.escape(str(e['kind']))}</td>"
    f"<td>{html.escape(str(e['message']))}</td></tr>" for e in events or [])}</table>
</body></html>"""
  paths["html"] = os.path.join(out, "report.html")
  with open(paths["html"], "w") as f:
    f.write(page)
  return {k: v for k, v in paths.items() if v}


def _study_task(cfg: dict) -> tuple[Any, Any]:
  """``(task, space)`` of a study, built once from its config; None where it does not say."""
  from metaopt.spaces import from_spec
  from metaopt.tasks import get_task
  try:
    task = get_task(cfg["task_name"], **cfg.get("task", {}))
  except (KeyError, TypeError, ValueError):
    task = None
  try:
    spec = cfg.get("space") or {}
    order = cfg.get("space_order") or list(spec)  # the store's JSON sorts keys
    space = from_spec({n: spec[n] for n in order}) if spec else getattr(task, "space", None)
  except (KeyError, TypeError, ValueError):
    space = None
  return task, space


def _live_weights(task: Any, space: Any, trials: list) -> tuple[str, dict[int, float]] | None:
  """Live weights of every complete trial's model, when the study's config names a task."""
  if task is None:
    return None
  from metaopt._src.constraints import param_counter
  try:
    count = param_counter(task, space)
    return "live weights", {t.number: float(count(t.params)) for t in trials
                            if t.status == "complete" and t.objective is not None}
  except (KeyError, TypeError, ValueError):
    return None


def _sqlite_file(url: str) -> str | None:
  """The file of a ``sqlite:///PATH`` store URL (None for other stores and in-memory ones)."""
  if not url.startswith("sqlite:///"):
    return None
  path = url[len("sqlite:///"):].split("?")[0]
  return None if path in ("", ":memory:") else path


def study_report(store: Any, study: str | None = None, out: str | None = None
                 ) -> tuple[dict[str, Any], Result]:
  """Writes a stored study's report (plots, HTML) to ``out`` (default ``report_<study>``
  beside the store's SQLite file, ``runs/report_<study>`` for a server store); returns the
  JSON summary and the study's :class:`Result`."""
  rec = store.load_study(study)
  result = Result(rec.name, rec.direction, store.trials(rec.id),
                  objectives=store.objectives(rec.id) or None)
  out = out or os.path.join(os.path.dirname(_sqlite_file(store.url) or "runs/x"),
                            f"report_{rec.name}")
  summary = result.summary()
  task, space = _study_task(rec.config)
  costs = _live_weights(task, space, result.trials)
  paths = write_report(result, out, {"code version": rec.code_version,
                                     "data version": rec.data_version,
                                     "hardware": rec.hardware, "seed": rec.seed},
                       coords=None if space is None else space.names,
                       events=store.events(rec.id), costs=costs, space=space)
  summary.update(plot=paths["history"], html=paths["html"], plots=paths,
                 importance=param_importance(result), pareto_front=pareto_front(result, costs))
  comp = compute_summary(result)
  summary["compute"] = {k: v for k, v in comp.items() if k != "per_trial"}
  summary.update(events=store.events(rec.id), data_version=rec.data_version,
                 code_version=rec.code_version)
  return summary, result


def report_text(summary: dict[str, Any], result: Result) -> str:
  """The report as the CLI prints it: counts, the best trial, a multi-objective study's
  Pareto front and hypervolume, the ten best trials, compute."""
  d = result.direction
  lines = [f"study {result.study}: {summary['n_trials']} trials, {summary['n_complete']} "
           f"complete, {summary['n_failed']} failed, {summary['n_pruned']} pruned ({d})"]
  b = summary["best"]
  if b:
    lines.append(f"best trial #{b['number']}: objective {b['objective']:.4f} "
                 f"params {b['params']}")
  if result.objectives:
    names = ", ".join(f"{n} ({d})" for n, d in result.objectives)
    lines.append(f"objectives: {names}; Pareto front of {len(summary['objectives_front'])} "
                 f"trials, hypervolume {summary['hypervolume']:.6g} "
                 f"(reference {summary['reference_point']})")
    lines += [f"  #{p['number']}: {p['values']}" for p in summary["objectives_front"]]
  order = sorted(result.trials, key=lambda t: (
      t.objective is None, -(t.objective or 0) if d == "maximize" else (t.objective or 0)))
  for t in order[:10]:
    obj = "-" if t.objective is None else f"{t.objective:.4f}"
    lines.append(f"  #{t.number:<4d} {t.status:<9s} {obj:>8s}  {t.failure_reason or ''} "
                 f"{t.params}")
  c = summary["compute"]
  lines.append(f"compute: {c['total_flops'] / 1e9:.2f} GFLOPs, "
               f"{c['total_device_seconds']:.2f} device-seconds")
  lines.append(f"report: {summary['html']}")
  return "\n".join(lines)
