"""A user's journey through the white-box, NAS, PBT and learned-optimizer APIs: its defects.

Each test reproduces one thing a user of the installed wheel ran into (README,
docs/architecture.md and the docstrings followed as written, with their own Flax model, optax
optimizer and data) and fails on the code before its fix.
"""

from __future__ import annotations

import ast
import doctest
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folders that install under metaopt.* (setup.py's package_dir): a docstring example
# importing them by their folder name runs in a checkout and fails from the wheel
_INSTALLED_AS = ("hypergrad", "tasks", "spaces", "configs")


def _package_sources():
  for top in ("metaopt",) + _INSTALLED_AS:
    for base, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          yield os.path.join(base, f)


def test_docstring_examples_import_what_the_wheel_installs():
  """`help(metaopt.hypergrad.unrolled)`'s example began `from hypergrad.inner import ...`:
  from the installed wheel (no top-level `hypergrad`) it raised ModuleNotFoundError, and
  `doctest.testmod(metaopt.hypergrad.unrolled)` failed 4 of 6 examples there."""
  parser = doctest.DocTestParser()
  bad = []
  for path in _package_sources():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                               ast.AsyncFunctionDef)):
        continue
      doc = ast.get_docstring(node, clean=False)
      if not doc or ">>>" not in doc:
        continue
      for ex in parser.get_examples(doc):
        m = re.match(r"\s*(?:from|import)\s+(\w+)", ex.source)
        if m and m.group(1) in _INSTALLED_AS:
          bad.append(f"{os.path.relpath(path, ROOT)}: {ex.source.strip()}")
  assert not bad, "\n".join(bad)
