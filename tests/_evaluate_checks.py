"""The checks the CLI and the in-process tests share on ``evaluate --ensemble``'s result."""

import json

import pytest


def check_ensemble(ens: dict, configs: list[dict], events: list[tuple[str, str]]) -> None:
  """The ensemble of the top 2 configs x 2 seeds: its members are exactly the individual
  models, it is no worse than their mean by 2 points, and the store's events are
  ``ensemble`` (with its test accuracy) then ``evaluate``."""
  assert len(ens["members"]) == 4
  for c in configs:
    mine = [m["test_accuracy"] for m in ens["members"] if m["number"] == c["number"]]
    assert mine == pytest.approx(c["per_seed"], abs=1e-6)
  assert 0.0 < ens["test_accuracy"] <= 1.0
  assert ens["test_accuracy"] >= ens["mean_individual_test_accuracy"] - 0.02
  assert [k for k, _ in events] == ["ensemble", "evaluate"]
  assert json.loads(events[0][1])["test_accuracy"] == ens["test_accuracy"]
