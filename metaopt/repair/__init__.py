"""Feedback-driven repair: actions, the priority table and the repair loop (DREAM, extended).

    program = metaopt.repair.repair(metaopt.random_search(space.dim), space, start=broken)
    metaopt.search(program, task, space=space, n_trials=16, population=4, epochs=6,
                   target=0.9)

``python -m metaopt.repair build-table`` regenerates the shipped priority table.
"""

from metaopt._src.repair import (
    DEFAULT_ACTIONS,
    ROWS,
    TABLE_PATH,
    Action,
    aggregate,
    apply_actions,
    build_table,
    load_table,
    priorities,
    ranked_actions,
    repair,
    repair_space,
    reverts,
    space_actions,
    space_default_actions,
    table_applies,
    trial_conditions,
)
from metaopt._src.repair_run import run_config

__all__ = [
    "DEFAULT_ACTIONS", "ROWS", "TABLE_PATH", "Action", "aggregate", "apply_actions",
    "build_table", "load_table", "priorities", "ranked_actions", "repair", "repair_space",
    "reverts", "run_config", "space_actions", "space_default_actions", "table_applies",
    "trial_conditions",
]
