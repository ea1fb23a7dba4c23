"""Provenance recorded with every study: the code version and the hardware it ran on."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import Any

import jax


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """The git commit of the metaopt checkout (``+dirty`` if modified), or the package version."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return rev + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    from importlib.metadata import version
    return f"metaopt-{version('metaopt')}"


def hardware() -> dict[str, Any]:
  """A description of the devices and host a search ran on."""
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind,
          "device_count": len(devs), "process_count": jax.process_count(),
          "host": platform.node(), "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "jax": jax.__version__}
