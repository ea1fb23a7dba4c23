"""metaopt command line from a source checkout (installed: the ``metaopt`` command).

    python run.py run --config configs/quickstart.py [--config.seed=3] [--worker]
    python run.py report --store sqlite:///runs/quickstart.db

Same commands and flags as ``metaopt``; see ``python run.py --help``.
"""

from metaopt.cli import console_main

if __name__ == "__main__":
  console_main()
