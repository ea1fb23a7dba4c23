"""The repository keeps spaces/, tasks/, hypergrad/ and configs/ at its top level; installed they
are metaopt.spaces, metaopt.tasks, metaopt.hypergrad and metaopt.configs (setup.py's
package_dir). In a source checkout (the folder holding this package, those folders and setup.py)
they are found through one more entry on metaopt's ``__path__``."""

import os

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPPED = ("spaces", "tasks", "hypergrad", "configs")

if not os.path.isdir(os.path.join(metaopt.__path__[0], "tasks")) and all(
    os.path.isfile(os.path.join(ROOT, d, "__init__.py")) for d in MAPPED) and os.path.isfile(
        os.path.join(ROOT, "setup.py")) and ROOT not in metaopt.__path__:
  metaopt.__path__.append(ROOT)
