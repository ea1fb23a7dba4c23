"""Searched switches (activation) grouped as structure vs one all-branches kernel (issue 24)."""

import numpy as np
import pytest

import metaopt
from metaopt._src import population as pop
from metaopt._src.evaluators import BRANCHES, SWITCHED
from metaopt.spaces import Choice, Float, Space
from metaopt.tasks import get_task

SPACE = Space({"learning_rate": Float(1e-3, 1e-1, log=True),
               "activation": Choice(["relu", "tanh"])})


@pytest.fixture(scope="module")
def task():
  return get_task("digits_mlp", max_width=16)


# The grouped search below is the same search (space, task, batch, population, epochs, seed) in
# both tests comparing it, so its kernels are compiled once for this file (compile_cache).
def _search(task, group, program=None, epochs=3, n=4):
  ev = metaopt.TaskEvaluator(task, batch_size=128, kernel_mode="vmap", group_switches=group)
  res = metaopt.search(program or metaopt.random_search(SPACE.dim), ev, space=SPACE,
                       n_trials=n, population=n, epochs=epochs, seed=3, progress=False,
                       compaction="never")
  return ev, res


def _by_number(res):
  return {t.number: (t.params["activation"], t.objective, t.status) for t in res.trials}


def test_grouped_and_all_branches_kernels_give_the_same_trials(task):
  """4 trials, 3 epochs: a kernel per activation value (grouped) and one kernel with the
  switch over both give the same trials; a grouped kernel counts fewer FLOPs."""
  ev_g, grouped = _search(task, "always")
  ev_b, branches = _search(task, "never")
  # grouped: one kernel per activation value, each with the index fixed; never: one kernel
  g_structs = [dict(k) for k in ev_g._kernels]
  assert sorted(s["activation"] for s in g_structs) == [0, 1]
  assert all(s[SWITCHED] == ("activation",) for s in g_structs)
  # (its switch over the 2 activations the space allows: see evaluators._branches)
  assert [dict(k) for k in ev_b._kernels] == [{"depth": 2, "optimizer": "adamw", BRANCHES: 2}]
  g, b = _by_number(grouped), _by_number(branches)
  assert g.keys() == b.keys() and len(g) == 4
  assert {a for a, _, _ in g.values()} == {"relu", "tanh"}
  for k in g:
    assert g[k][0] == b[k][0] and g[k][2] == b[k][2] == "complete"
    np.testing.assert_allclose(g[k][1], b[k][1], atol=1e-6)
  # a grouped kernel's FLOPs count its one branch: fewer than the all-branches kernel's
  flops = lambda res: {t.number: t.metrics[-1]["flops"] for t in res.trials}
  fg, fb = flops(grouped), flops(branches)
  assert all(fg[k] < fb[k] for k in fg)


def test_vmap_groups_run_at_once_give_the_same_trials(task, monkeypatch):
  """The activation groups' kernels run at once on two threads (``population.run_parallel``)
  give the trials of one thread bit for bit (moved here from tests/test_kernel_threads.py: the
  grouped search above, its kernels already compiled)."""
  calls = []
  real = pop.run_parallel

  def spy(fns, workers=None):
    calls.append((len(fns), workers))
    return real(fns, workers)
  monkeypatch.setattr(pop, "run_parallel", spy)

  def run(workers):
    monkeypatch.setattr(pop, "default_workers", lambda: workers)
    _, res = _search(task, "always")
    return {t.number: [m["valid_loss"] for m in t.metrics] for t in res.trials}

  one = run(1)
  calls.clear()
  two = run(2)
  # the groups' inits at once, then epochs 2 and 3: both activation groups at once
  assert calls == [(2, None)] * 3
  assert one.keys() == two.keys() and len(one) == 4
  for k in one:
    assert len(one[k]) == 3
    np.testing.assert_array_equal(one[k], two[k])


def test_auto_rule_groups_vmapped_populations_with_enough_trials_per_value():
  m = pop.SWITCH_GROUP_MIN
  assert pop.group_switches("auto", "vmap", 4 * m, 4)         # m trials per value
  assert not pop.group_switches("auto", "vmap", 4 * m - 1, 4)  # fewer
  assert not pop.group_switches("auto", "vmap", 4 * m, 4, multiple=2)  # per device
  assert pop.group_switches("auto", "vmap", 3, 1)             # one value: one kernel anyway
  assert not pop.group_switches("auto", "loop", 64 * m, 4)    # loop runs one branch already
  assert pop.group_switches("always", "loop", 2, 2)
  assert not pop.group_switches("never", "vmap", 64 * m, 1)
  with pytest.raises(ValueError, match="group_switches='sometimes'"):
    pop.group_switches("sometimes", "vmap", 8, 1)


def test_evaluator_applies_the_auto_rule(task):
  from metaopt._src.evaluators import TrialBatch
  m = pop.SWITCH_GROUP_MIN

  def batch(n, values):
    params = [{"learning_rate": 0.01, "activation": values[i % len(values)]} for i in range(n)]
    return TrialBatch(0, list(range(n)), list(range(n)), np.arange(n), np.zeros((n, 2)), {},
                      params, np.ones(n, bool), None, 1, SPACE)

  vmap = metaopt.TaskEvaluator(task, kernel_mode="vmap")
  loop = metaopt.TaskEvaluator(task, kernel_mode="loop")
  assert vmap.switches(batch(2 * m, ["relu", "tanh"])) == ["activation"]
  assert vmap.switches(batch(2 * m - 1, ["relu", "tanh"])) == []
  assert loop.switches(batch(64 * m, ["relu", "tanh"])) == []
  layout, structs = vmap.structures(batch(2 * m, ["relu", "tanh"]))
  assert sorted(len(v) for v in layout.values()) == [m, m]
  assert sorted(s["activation"] for s in structs.values()) == [0, 1]
  with pytest.raises(ValueError, match="group_switches"):
    metaopt.TaskEvaluator(task, group_switches="yes")
  with pytest.raises(ValueError, match="kernel_mode"):
    metaopt.TaskEvaluator(task, kernel_mode="scan")


@pytest.mark.slow  # ~30 s: two 3-epoch PBT searches
def test_pbt_across_switch_groups_merges_them_and_matches_all_branches(task):
  """PBT copies and moves trials across activation groups: the evaluator merges the groups
  back into one traced-switch kernel, and every trial ends as in the all-branches run."""
  prog = lambda: metaopt.pbt(SPACE.dim, interval=1, quantile=0.5, perturb=0.3)
  ev_g, grouped = _search(task, "always", prog(), epochs=3, n=8)
  _, branches = _search(task, "never", prog(), epochs=3, n=8)
  assert any(SWITCHED not in dict(k) for k in ev_g._kernels)  # the merged kernel was built
  g, b = _by_number(grouped), _by_number(branches)
  for k in g:
    assert g[k][0] == b[k][0] and g[k][2] == b[k][2]
    np.testing.assert_allclose(g[k][1], b[k][1], atol=1e-6)
