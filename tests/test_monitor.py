"""Condition detectors fire on constructed pathological runs and stay quiet on a healthy one.

Real digits MLPs trained by the population engine; one trial per pathology (DREAM's
constructed cases): a deep sigmoid net with tiny initial weights (vanishing gradients),
learning rate 10 with SGD on a regression MLP (exploding gradients / non-finite weights),
ReLU with strongly negative initial biases (dying ReLU), learning rate 1e-7 (slow
convergence).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt._src import population as pop
from metaopt.tasks import get_task

# slow (~22 s in CI, the fixture's three population kernels compiled). By default: the
# detectors' thresholds on constructed metrics (tests/test_search.py::
# test_detect_conditions_thresholds) and the telemetry they read, recorded by every task's
# kernel (tests/test_tasks.py::test_task_trains_and_reports_telemetry)
pytestmark = pytest.mark.slow

CASES = {  # name -> (task, structure, hyperparameters)
    "healthy": ("digits_mlp", {"depth": 2}, {"learning_rate": 3e-3, "activation": 0}),
    "vanishing_gradients": ("digits_mlp", {"depth": 6},
                            {"learning_rate": 1e-3, "activation": 4, "init_scale": 0.05}),
    "exploding_gradients": ("synthetic_regression", {"depth": 2, "optimizer": "sgd"},
                            {"learning_rate": 10.0, "activation": 1, "momentum": 0.9}),
    "dying_relu": ("digits_mlp", {"depth": 2},
                   {"learning_rate": 1e-3, "activation": 0, "bias_init": -5.0}),
    "slow_convergence": ("digits_mlp", {"depth": 2}, {"learning_rate": 1e-7, "activation": 0}),
}


# hyperparameters a case leaves out, at the task's defaults (cases of one task and structure
# train side by side as one population: one compilation per task and structure)
DEFAULTS = {"width": 64, "weight_decay": 0.0, "init_scale": 1.0, "bias_init": 0.0}


@pytest.fixture(scope="module")
def conditions():
  groups: dict = {}
  for name, (task_name, structure, hp) in CASES.items():
    groups.setdefault((task_name, tuple(sorted(structure.items()))), []).append((name, hp))
  out = {}
  for (task_name, structure), cases in groups.items():
    task = get_task(task_name)
    data = pop.data_arrays(task.data)
    obj = f"valid_{task.objective}"
    sign = 1.0 if task.direction == "maximize" else -1.0
    n = len(cases)
    kern = pop.make_kernel(task.build(dict(structure)), len(task.data.train), 64)
    keys = set(DEFAULTS).union(*(hp for _, hp in cases))
    h = {k: jnp.asarray([{**DEFAULTS, **hp}[k] for _, hp in cases]) for k in keys}
    # every trial starts from the same key, as it would alone
    states = kern.init(jnp.concatenate([jax.random.split(jax.random.key(0), 1)] * n), h)
    prev = None
    seen: list[set[str]] = [set() for _ in cases]
    for e in range(3):
      states, m = kern.chunk(states, h, jnp.ones(n, bool), jax.random.key(e), data)
      acc = sign * np.asarray(m[obj], np.float64)
      metrics = {k: v for k, v in m.items() if np.ndim(v) == 1}
      metrics["objective_delta"] = jnp.asarray(np.full(n, np.nan) if prev is None
                                               else acc - prev)
      cond = metaopt.detect_conditions(metrics)
      for i in range(n):
        seen[i] |= {c for c, v in cond.items() if bool(v[i])}
      prev = acc
    out.update({name: s for (name, _), s in zip(cases, seen, strict=True)})
  return out


def test_healthy_run_is_quiet(conditions):
  assert conditions["healthy"] == set()


@pytest.mark.parametrize("name", [c for c in CASES if c != "healthy"])
def test_detector_fires_on_constructed_case(conditions, name):
  assert name in conditions[name], conditions[name]


def test_exploding_run_also_has_non_finite_weights(conditions):
  assert "nonfinite_weights" in conditions["exploding_gradients"]
