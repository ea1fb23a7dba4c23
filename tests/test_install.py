"""Installing metaopt: the wheel carries its data, configs and command; its dependency ranges
keep an environment's newer compatible jax (pip's real resolver, offline)."""

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("dist")
  cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), ROOT]
  # with this environment's setuptools; where it cannot build wheels, pip's isolated build
  r = subprocess.run(cmd[:-1] + ["--no-build-isolation", ROOT], capture_output=True, text=True,
                     timeout=300)
  if r.returncode != 0:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  (path,) = out.glob("metaopt-*.whl")
  return path


def _requires(whl) -> list[Requirement]:
  with zipfile.ZipFile(whl) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
  return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
          if line.startswith("Requires-Dist:")]


def test_wheel_carries_data_configs_and_the_command(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert {"metaopt/_src/data/repair_table.json", "metaopt/_src/nas/data/nb201_mini.json",
          "metaopt/cli.py", "metaopt/configs/quickstart.py", "metaopt/tasks/__init__.py",
          "metaopt/spaces/__init__.py", "metaopt/hypergrad/__init__.py"} <= names
  # nothing installs as a top-level tasks / spaces / configs / hypergrad package
  assert not {n.split("/")[0] for n in names} & {"tasks", "spaces", "configs", "hypergrad"}
  assert "metaopt = metaopt.cli:console_main" in entry


def test_ranges_cover_jax_0_10_to_0_12_and_every_extra(wheel):
  reqs = _requires(wheel)
  base = {r.name: r for r in reqs if r.marker is None}
  for v in ("0.10.0", "0.10.2", "0.11.0", "0.11.3", "0.12.0", "0.12.4"):
    assert base["jax"].specifier.contains(v) and base["jaxlib"].specifier.contains(v), v
  assert not base["jax"].specifier.contains("0.9.2")
  assert not any("==" in str(base[n].specifier) for n in CORE)  # ranges, not pins
  extras = {m.group(1) for r in reqs if r.marker for m in [re.search(r'extra == "(\w+)"',
                                                                        str(r.marker))] if m}
  assert {"cuda12", "cuda13", "tpu", "bench", "test"} <= extras
  for extra in ("cuda12", "cuda13", "tpu"):
    (r,) = [r for r in reqs if r.marker and f'"{extra}"' in str(r.marker)]
    assert r.name == "jax" and extra in r.extras and r.specifier.contains("0.12.0")


def test_constraints_pin_what_the_ranges_allow(wheel):
  pins = {}
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    for line in f:
      if "==" in line and not line.startswith("#"):
        name, v = line.strip().split("==")
        pins[name.lower().replace("_", "-")] = v
  for r in _requires(wheel):
    if r.marker is None:
      assert r.name.lower() in pins, r.name
      assert r.specifier.contains(pins[r.name.lower()]), (r, pins[r.name.lower()])


def test_install_keeps_a_newer_compatible_jax(wheel, tmp_path):
  """pip's resolver (offline: no index, only our wheel) on an environment that has every
  dependency at its installed version but jax/jaxlib 0.12.0 (as on an accelerator image):
  it installs metaopt alone and changes nothing else."""
  env = tmp_path / "env"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
  site = next((env / "lib").glob("python3*/site-packages"))
  for d in md.distributions():
    name, version = d.metadata["Name"], d.version
    if not name or name.lower() == "metaopt":
      continue
    text = d.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {name}\n"
    if name.lower() in ("jax", "jaxlib"):
      version = "0.12.0"
      text = re.sub(r"(?m)^Version: .*$", "Version: 0.12.0", text)
      # jax 0.12's own requirements: jaxlib of its version
      text = re.sub(r"(?m)^Requires-Dist: jaxlib\b.*$", "Requires-Dist: jaxlib==0.12.0", text)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(text)
  report = tmp_path / "report.json"
  r = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"),
                      "install", "--dry-run", "--no-index", "--find-links",
                      str(wheel.parent), "--report", str(report), "-q", "metaopt"],
                     capture_output=True, text=True, timeout=300, cwd=tmp_path,
                     env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert r.returncode == 0, r.stderr[-3000:]
  installs = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]]
  assert installs == ["metaopt"]


def test_pip_check_passes():
  r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stdout[-3000:]
