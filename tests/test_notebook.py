"""notebooks/quickstart.ipynb runs top to bottom (nbmake), as CI runs it.

Slow: CI runs the notebook after `make test` anyway (`make test-wheel`, tests/install/wheel.sh,
from the installed wheel); `make test-slow` runs it from the source tree."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs():
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "--nbmake", "--nbmake-timeout=300", "notebooks/quickstart.ipynb"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600,
                     env=os.environ.copy())
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
  assert "1 passed" in r.stdout
