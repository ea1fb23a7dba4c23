"""Runs a gradient-HPO config and prints a JSON summary.

    python -m metaopt.hypergrad --config configs/hypergrad_unrolled.py [--config.outer_steps=5]
"""

import json

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/hypergrad_<name>.py",
                                          lock_config=True)


def main(argv: list[str]) -> None:
  del argv
  from metaopt.hypergrad.hpo import run_config

  if _CONFIG.value is None:
    raise app.UsageError("needs --config configs/hypergrad_<name>.py")
  print(json.dumps(run_config(_CONFIG.value), indent=2))


if __name__ == "__main__":
  app.run(main)
