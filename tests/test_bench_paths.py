"""A benchmark's ``--quick`` run never writes a file git tracks: the path logic of
benchmarks/_paths.py, and every script that writes a table routes it through it. (The
benchmarks themselves are far too long to run in tests.)"""

import ast
import importlib.util
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _paths():
  spec = importlib.util.spec_from_file_location("_paths", os.path.join(BENCH, "_paths.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tracked(path: str) -> bool:
  rel = os.path.relpath(path, ROOT)
  r = subprocess.run(["git", "ls-files", "--error-unmatch", rel], cwd=ROOT,
                     capture_output=True)
  return r.returncode == 0


def _ignored(path: str) -> bool:
  r = subprocess.run(["git", "check-ignore", "-q", os.path.relpath(path, ROOT)], cwd=ROOT)
  return r.returncode == 0


@pytest.mark.parametrize("name", ["results_nas.md", "results_scaling.md", "results_repair.md",
                                  "results_hypergrad_vs_blackbox.md"])
def test_quick_runs_write_to_an_ignored_place(name):
  p = _paths()
  committed = os.path.join(BENCH, name)
  if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
    pytest.skip("not a git checkout")
  assert _tracked(committed)
  assert p.results_path(committed, quick=False) == committed  # a full run updates it
  quick = p.results_path(committed, quick=True)
  assert quick == os.path.join(ROOT, "runs", "benchmarks", name)
  assert not _tracked(quick) and _ignored(quick)
  for path in (os.path.join(ROOT, "BENCHMARKS.md"), os.path.join(ROOT, "README.md")):
    assert _ignored(p.results_path(path, quick=True))


def test_explicit_paths_outside_the_repository_are_kept(tmp_path):
  p = _paths()
  mine = str(tmp_path / "table.md")
  assert p.results_path(mine, quick=True) == mine
  under_runs = os.path.join(ROOT, "runs", "x", "t.md")
  assert p.results_path(under_runs, quick=True) == under_runs
  assert p.results_path(None, quick=True) is None and p.results_path("", quick=False) is None


def _writes(tree: ast.AST) -> int:
  """Calls that write a file: ``open(..., "w"/"a")`` and ``.write_text``."""
  n = 0
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes"):
      n += 1
    mode = node.args[1] if len(node.args) > 1 else None
    if isinstance(f, ast.Name) and f.id == "open" and isinstance(mode, ast.Constant) \
        and str(mode.value)[:1] in "wa":
      n += 1
  return n


def test_every_benchmark_that_writes_a_table_uses_results_path():
  for name in sorted(os.listdir(BENCH)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    src = open(os.path.join(BENCH, name)).read()
    calls = {n.func.id for n in ast.walk(ast.parse(src))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    if "--quick" in src and _writes(ast.parse(src)) and "results_path" not in calls:
      # only temporary files (tempfile) may be written without it
      assert "mkdtemp" in src and "results_" not in src, name


def test_no_benchmark_script_shadows_an_installed_package():
  """The scripts put benchmarks/ first on sys.path, so a script named like a package the
  library imports (``mnist1d.py`` hid the ``mnist1d`` data generator) breaks every run that
  needs that package."""
  import importlib.machinery
  import sys

  # PathFinder, not importlib.util.find_spec: the latter answers from sys.modules, where
  # another test in this process may already have imported a benchmark script
  path = [q for q in sys.path if os.path.abspath(q or os.curdir) != BENCH]
  clashes = [name for name in sorted(os.listdir(BENCH)) if name.endswith(".py") and (
      name[:-3] in sys.builtin_module_names
      or importlib.machinery.PathFinder.find_spec(name[:-3], path) is not None)]
  assert clashes == [], clashes
