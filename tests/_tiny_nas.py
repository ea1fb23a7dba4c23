"""A shipped NAS config shrunk to a tiny digits supernet (shared by the NAS tests)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_nas_config(path, **over):
  """``path``'s ``get_config()`` (relative to the repository) as a dict on digits with a
  one-cell, 4-feature supernet; ``over`` replaces fields (dicts are merged one level)."""
  spec = importlib.util.spec_from_file_location("cfg", REPO / path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config().to_dict()
  cfg.update(dataset="digits", model=dict(features=4, n_cells=1, stages=1, stem_stride=1,
                                          partial_k=1))
  for k, v in over.items():
    cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
  return cfg
