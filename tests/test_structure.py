"""Structural rules of the code base, checked by reading its syntax trees (no imports).

* no function in ``metaopt/`` is longer than 100 lines, not counting the functions nested
  inside it (an optax-style factory may hold its closures);
* no package imports another package's private ``_src`` modules (``metaopt`` uses what
  ``tasks``, ``spaces`` and ``hypergrad`` export), and ``run.py`` imports only public names.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("metaopt", "tasks", "spaces", "hypergrad")
MAX_LINES = 100


def _functions(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def own_lines(fn: ast.AST) -> int:
  """Lines of ``fn`` that are not inside a function nested in it."""
  lines = set(range(fn.lineno, fn.end_lineno + 1))
  for inner in _functions(fn):
    if inner is not fn:
      lines -= set(range(inner.lineno, inner.end_lineno + 1))
  return len(lines)


def _package_name(module: str) -> str:
  """``metaopt.tasks._src.x`` -> ``tasks._src.x``: the folders beside metaopt/ import as
  metaopt.<name>, but each is its own package for these rules."""
  parts = module.split(".")
  if len(parts) > 1 and parts[0] == "metaopt" and parts[1] in PACKAGES + ("configs",):
    return ".".join(parts[1:])
  return module


def _imports(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.lineno, _package_name(node.module), [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        yield node.lineno, _package_name(a.name), []


def _parse(path: pathlib.Path) -> ast.AST:
  return ast.parse(path.read_text(), filename=str(path))


def test_no_function_in_metaopt_is_longer_than_100_lines():
  long = [f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name} ({own_lines(fn)} lines)"
          for p in sorted((ROOT / "metaopt").rglob("*.py"))
          for fn in _functions(_parse(p)) if own_lines(fn) > MAX_LINES]
  assert not long, long


def test_the_length_rule_counts_only_a_functions_own_lines():
  src = "def outer():\n" + "  x = 1\n" * 5 + "  def inner():\n" + "    y = 2\n" * 50 + \
      "  return inner\n"
  outer = next(_functions(ast.parse(src)))
  assert own_lines(outer) == 1 + 5 + 1


def test_no_package_imports_another_packages_private_modules():
  bad = []
  for pkg in PACKAGES:
    for p in sorted((ROOT / pkg).rglob("*.py")):
      for line, module, _ in _imports(_parse(p)):
        parts = module.split(".")
        if "_src" in parts and parts[0] != pkg:
          bad.append(f"{p.relative_to(ROOT)}:{line} imports {module}")
        if pkg != "hypergrad" and parts[0] == "hypergrad" and len(parts) > 1:
          bad.append(f"{p.relative_to(ROOT)}:{line} imports hypergrad internals {module}")
  assert not bad, bad


def test_run_py_imports_only_public_names():
  bad = [f"run.py:{line} {module} {names}" for line, module, names in
         _imports(_parse(ROOT / "run.py"))
         if "_src" in module.split(".") or any(n.startswith("_") for n in names)]
  assert not bad, bad
