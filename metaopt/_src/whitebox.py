"""Runs a white-box (gradient-based HPO) config and records it in the trial store.

Each member of the population is a trial; each outer step is recorded as one "epoch" of
its history (validation and training loss, hypergradient norm, the hyperparameters in
effect and the pathology flags). When the diagnostics say a member's hypergradients cannot
be trusted, the store gets a ``fallback`` event naming the step and the reason, so a driver
can hand the space and history to a black-box searcher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from metaopt._src.driver import code_version, hardware
from metaopt._src.store import Store


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  if hasattr(tree, "_asdict"):
    return _flat(tree._asdict(), prefix)
  return {prefix[:-1]: tree}


def run_whitebox(config: Mapping[str, Any], store: Store) -> dict[str, Any]:
  """Runs ``hypergrad.run_config(config)`` recording every outer step in ``store``."""
  import hypergrad

  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  n = int(cfg["population"])
  rec = store.create_study(cfg["name"], direction="minimize", config=cfg, seed=cfg["seed"],
                           code_version=code_version(),
                           data_version={"problem": cfg["problem_name"],
                                         **dict(cfg.get("problem", {}))},
                           hardware=hardware())
  ids = store.start_round(rec.id, 0, [
      {"number": i, "params": {"init": dict(cfg.get("init", {})), "member": i},
       "seed": int(cfg["seed"])} for i in range(n)], b"")
  fallback_reported: set[int] = set()
  last: dict[int, float] = {}

  def on_step(step: int, tel: dict) -> None:
    flat = _flat({k: v for k, v in tel.items() if k in ("val_loss", "train_loss",
                                                         "hypergrad_norm", "hparams",
                                                         "applied", "pathologies")})
    rows = []
    for i in range(n):
      rows.append({k: np.asarray(v)[i] for k, v in flat.items() if np.ndim(v) >= 1})
      last[i] = float(np.asarray(tel["val_loss"])[i])
      fb = flat.get("pathologies.fallback")
      if fb is not None and bool(np.asarray(fb)[i]) and i not in fallback_reported:
        fallback_reported.add(i)
        why = [k.split(".")[-1] for k, v in flat.items()
               if k.startswith("pathologies.") and k != "pathologies.fallback"
               and np.ndim(v) >= 1 and bool(np.asarray(v)[i])]
        store.log_event(rec.id, "fallback", f"member {i} at outer step {step}: "
                        f"hypergradient untrustworthy ({', '.join(why) or 'unknown'})")
    store.record_epoch(ids, step, rows)

  summary = hypergrad.run_config(cfg, on_step=on_step)
  results = []
  for i, tid in enumerate(ids):
    v = last.get(i)
    ok = v is not None and math.isfinite(v)
    results.append((tid, "complete" if ok else "failed", v if ok else None,
                    None if ok else "non-finite validation loss"))
  store.end_round(rec.id, 0, results, b"", duration_s=summary.get("seconds"))
  summary["store"] = store.url
  summary["fallback_members"] = sorted(fallback_reported)
  return summary
