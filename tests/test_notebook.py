"""notebooks/quickstart.ipynb runs top to bottom (nbmake), as CI runs it."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs():
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "--nbmake", "--nbmake-timeout=300", "notebooks/quickstart.ipynb"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600,
                     env=os.environ.copy())
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
  assert "1 passed" in r.stdout
