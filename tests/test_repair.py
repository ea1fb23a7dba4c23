"""Repair actions, priorities, the repair loop (DREAM's Algorithm 1) and the white-box ->
black-box fallback, on real trainings where it matters."""

import json
import os
import sqlite3
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt.repair import (
    DEFAULT_ACTIONS,
    ROWS,
    Action,
    apply_actions,
    load_table,
    priorities,
    ranked_actions,
    repair,
    repair_space,
    reverts,
    space_default_actions,
    trial_conditions,
)
from metaopt.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = repair_space()
UNDO_ACTIONS = ("lr_end=0.01", "batch_size=32", "residual=False", "finetune_steps=1",
                "finetune_fraction=0.2", "finetune_lr=0.1", "finetune_lr*10",
                "finetune_freeze=False")


class ActionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_set_and_scale_actions_decode_to_their_values(self):
    start = SPACE.encode({"learning_rate": 1e-4, "activation": "sigmoid", "depth": 5})
    acts = (Action("learning_rate", 1e-2), Action("learning_rate", 10.0, "scale"),
            Action("activation", "tanh"), Action("depth", 2), Action("norm", True))
    fn = self.variant(lambda u: apply_actions(SPACE, acts, u))
    cand = fn(jnp.asarray(start, jnp.float32))
    got = SPACE.to_python_batch(jax.device_get(SPACE.decode(cand)))
    assert got[0]["learning_rate"] == pytest.approx(1e-2, rel=1e-4)
    assert got[1]["learning_rate"] == pytest.approx(1e-3, rel=1e-4)
    assert got[2]["activation"] == "tanh" and got[2]["depth"] == 5
    assert got[3]["depth"] == 2 and got[3]["activation"] == "sigmoid"
    assert got[4]["norm"] is True and got[4]["learning_rate"] == pytest.approx(1e-4, rel=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_compound_actions_set_every_parameter_they_name(self):
    start = SPACE.encode({"optimizer": "sgd", "learning_rate": 1e-6, "momentum": 0.0})
    acts = (Action("optimizer", "adamw", also={"learning_rate": 1e-3}),
            Action("optimizer", "sgd", also={"learning_rate": 1e-2, "momentum": 0.9}),
            Action("learning_rate", 100.0, "scale", also={"activation": "tanh"}))
    assert acts[1].name == "optimizer=sgd+learning_rate=0.01+momentum=0.9"
    cand = self.variant(lambda u: apply_actions(SPACE, acts, u))(jnp.asarray(start, jnp.float32))
    got = SPACE.to_python_batch(jax.device_get(SPACE.decode(cand)))
    assert got[0]["optimizer"] == "adamw" and "momentum" not in got[0]
    assert got[0]["learning_rate"] == pytest.approx(1e-3, rel=1e-4)
    assert got[1]["optimizer"] == "sgd" and got[1]["momentum"] == pytest.approx(0.9, rel=1e-5)
    assert got[1]["learning_rate"] == pytest.approx(1e-2, rel=1e-4)
    assert got[2]["learning_rate"] == pytest.approx(1e-4, rel=1e-4)
    assert got[2]["activation"] == "tanh" and got[2]["optimizer"] == "sgd"


def test_fine_tuning_settings_only_act_on_multi_step_training():
  from metaopt._src.repair import _changes
  sub = [a for a in DEFAULT_ACTIONS if a.name in ("finetune_fraction=0.4", "finetune_lr=0.01",
                                                   "finetune_freeze=True")]
  assert len(sub) == 3
  for steps, expect in ((1, False), (2, True)):
    u = jnp.asarray(SPACE.encode({"finetune_steps": steps}), jnp.float32)
    changed = np.asarray(_changes(SPACE, u, apply_actions(SPACE, sub, u)))
    assert changed.tolist() == [expect] * 3, steps


def test_every_parameter_an_action_moves_has_an_action_that_sets_it_back():
  defaults = SPACE.to_python(jax.device_get(SPACE.decode(jnp.asarray(SPACE.encode({})))))
  defaults.update({"momentum": 0.9, "lr_end": 0.01, "finetune_fraction": 0.2,
                   "finetune_lr": 0.1, "finetune_freeze": False})  # off by default (when=)
  undo = {(a.param, a.value) for a in DEFAULT_ACTIONS if a.kind == "set" and not a.also}
  moved = {p for a in DEFAULT_ACTIONS for p, _, _ in a.parts()}
  assert moved == set(SPACE.names)
  for p in moved:
    d = defaults[p]
    assert any(q == p and (v == d or (isinstance(v, float) and v == pytest.approx(d, rel=1e-3)))
               for q, v in undo), p
  for a in DEFAULT_ACTIONS:  # x10 and /10 undo each other where both are actions
    if a.kind == "scale" and a.param == "learning_rate":
      assert Action(a.param, 1.0 / a.value, "scale") in DEFAULT_ACTIONS


class UndoActionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_undo_actions_turn_fine_tuning_off_and_raise_its_rate(self):
    start = {"finetune_steps": 3, "finetune_fraction": 0.5, "finetune_lr": 0.01,
             "finetune_freeze": True, "residual": True, "batch_size": 128,
             "lr_schedule": "cosine", "lr_end": 0.1}
    names = ("finetune_steps=1", "finetune_lr=0.1", "finetune_lr*10", "finetune_fraction=0.2",
             "finetune_freeze=False", "residual=False", "batch_size=32", "lr_end=0.01")
    assert set(names) == set(UNDO_ACTIONS)
    by_name = {a.name: a for a in DEFAULT_ACTIONS}
    acts = tuple(by_name[n] for n in names)
    u = jnp.asarray(SPACE.encode(start), jnp.float32)
    got = SPACE.to_python_batch(jax.device_get(SPACE.decode(
        self.variant(lambda u: apply_actions(SPACE, acts, u))(u))))
    off = got[0]  # one stage: the fine-tuning settings switch off with it
    assert off["finetune_steps"] == 1 and "finetune_lr" not in off and off["residual"] is True
    assert got[1]["finetune_lr"] == pytest.approx(0.1, rel=1e-4)
    assert got[2]["finetune_lr"] == pytest.approx(0.1, rel=1e-4)
    assert got[3]["finetune_fraction"] == pytest.approx(0.2, rel=1e-4)
    assert got[4]["finetune_freeze"] is False and got[4]["finetune_steps"] == 3
    assert got[5]["residual"] is False and got[6]["batch_size"] == 32
    assert got[7]["lr_end"] == pytest.approx(0.01, rel=1e-4)
    for g in got[1:5]:  # each leaves the rest of the start alone
      assert g["finetune_steps"] == 3 and g["batch_size"] == 128


def test_unread_space_parameter_fails_before_compiling():
  task = get_task("digits_cnn")
  prog = metaopt.random_search(SPACE.dim)
  compiles = []

  def listen(name, *a, **k):
    if "backend_compile" in name:
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    with pytest.raises(ValueError, match=r"\['norm', 'width', 'depth', 'residual'\] are not "
                       r"read by task 'digits_cnn'.*it reads: .*init_scale"):
      metaopt.search(prog, task, space=SPACE, n_trials=2, population=2, progress=False)
  finally:  # only this listener: metaopt's own compile-time listeners stay registered
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []  # nothing compiled
  # the repair space of a task holds what it reads, and its default actions only those
  cnn = repair_space(task=task)
  assert set(SPACE.names) - set(cnn.names) == {"width", "depth", "norm", "residual"}
  assert repair_space(task=get_task("mnist1d_mlp")).names == SPACE.names
  acts = metaopt.repair.space_default_actions(cnn)
  assert 0 < len(acts) < len(DEFAULT_ACTIONS)
  assert all(p in cnn.names for a in acts for p, _, _ in a.parts())
  metaopt.tasks.check_reads(task, cnn.names)  # no error


def test_digits_cnn_reads_its_initializer_parameters():
  task = get_task("digits_cnn")
  fns = task.build({})
  key = jax.random.key(0)
  p0 = fns.init(key, {})["params"]["params"]
  p1 = fns.init(key, {"init_scale": jnp.float32(0.5), "bias_init": jnp.float32(-2.0)})
  p1 = p1["params"]["params"]
  for name in ("Conv_0", "Conv_1", "Dense_0"):
    np.testing.assert_allclose(p1[name]["kernel"], 0.5 * p0[name]["kernel"], rtol=1e-6)
  for name in ("Conv_0", "Conv_1"):  # hidden biases move, the head's does not
    np.testing.assert_allclose(p1[name]["bias"], p0[name]["bias"] - 2.0)
  np.testing.assert_array_equal(p1["Dense_0"]["bias"], p0["Dense_0"]["bias"])


def test_bad_actions_name_the_field_before_compiling():
  with pytest.raises(ValueError, match="'lr' is not a searched parameter.*learning_rate"):
    repair(metaopt.random_search(SPACE.dim), SPACE, actions=[Action("lr", 1e-3)], table=None)
  with pytest.raises(ValueError, match="kind='scale' needs a log-scale"):
    repair(metaopt.random_search(SPACE.dim), SPACE, actions=[Action("activation", 2, "scale")],
           table=None)
  with pytest.raises(ValueError, match="outside"):
    repair(metaopt.random_search(SPACE.dim), SPACE, actions=[Action("depth", 9)], table=None)
  with pytest.raises(ValueError, match="'lr' is not a searched parameter"):
    repair(metaopt.random_search(SPACE.dim), SPACE, table=None,
           actions=[Action("optimizer", "sgd", also={"lr": 0.1})])
  with pytest.raises(ValueError, match="a parameter twice"):
    repair(metaopt.random_search(SPACE.dim), SPACE, table=None,
           actions=[Action("learning_rate", 0.1, also={"learning_rate": 0.2})])


def test_opening_portfolio_covers_what_earlier_actions_left():
  from metaopt._src.repair import _greedy_portfolio
  # configs x actions: action 2 helps everyone a bit, 0 and 1 each fix one config fully
  gain = np.asarray([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6], [0.0, 0.0, 0.6]])
  assert _greedy_portfolio(gain) == [2, 0, 1]
  # a redundant copy of the first pick comes last: it covers nothing new
  gain = np.asarray([[1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
  assert _greedy_portfolio(gain) == [0, 2, 1]


def test_first_round_trains_the_start_beside_the_opening_portfolio():
  acts = tuple(a for a in DEFAULT_ACTIONS if a.param in ("learning_rate", "activation"))
  table = {**_table(acts, {}), "opening": [acts[4].name, acts[0].name, acts[1].name,
                                           acts[2].name]}
  # acts[0] sets the start's own learning rate: it changes nothing and is skipped
  start = {"learning_rate": acts[0].value, "activation": "sigmoid", "init_scale": 0.5}
  prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table,
                start=start, population=3)
  state, _ = prog.ask(prog.init(jax.random.key(0)), jax.random.key(1), 3)
  assert [int(a) for a in np.asarray(state["pending"])] == [-1, 4, 1]
  # undo="first": the actions that set the sigmoid back to ReLU (with and without the
  # standard initializer: two configurations here) come first, in the table's order
  prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table,
                start=start, population=3, undo="first")
  state, _ = prog.ask(prog.init(jax.random.key(0)), jax.random.key(1), 3)
  assert [int(a) for a in np.asarray(state["pending"])] == [-1, 4, 5]


class RevertTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_reverts_marks_actions_that_move_a_departed_setting_back(self):
    start = {"finetune_steps": 3, "finetune_lr": 0.01, "learning_rate": 1e-5,
             "activation": "sigmoid"}
    names = ("finetune_steps=1", "finetune_lr*10", "finetune_steps=2", "learning_rate*10",
             "learning_rate=0.01", "activation=relu", "activation=tanh", "learning_rate*0.1",
             "finetune_fraction=0.4", "norm=True", "finetune_lr=0.01")
    by_name = {a.name: a for a in DEFAULT_ACTIONS}
    acts = tuple(by_name[n] for n in names)
    fn = self.variant(lambda u: reverts(SPACE, u, apply_actions(SPACE, acts, u)))
    got = np.asarray(fn(jnp.asarray(SPACE.encode(start), jnp.float32))).tolist()
    # back (or nearer, on a log scale: 1e-2 is nearer 1e-3 than 1e-5 is) to the defaults;
    # another non-default choice, a move away, a default-valued parameter left at it, or
    # an action that changes nothing are not reverts
    assert got == [True, True, True, True, True, True, False, False, False, False, False]
    at_defaults = np.asarray(fn(jnp.asarray(SPACE.encode({}), jnp.float32)))
    assert not at_defaults.any()


def _opening(space, start, **kw):
  """Names of the opening round's trials after the start (no training): one action, or two
  joined by " & " for a combined slot."""
  prog = repair(metaopt.random_search(space.dim), space, start=start, population=4, **kw)
  state, _ = prog.ask(prog.init(jax.random.key(0)), jax.random.key(1), 4)
  acts = space_default_actions(space)
  return [" & ".join(acts[int(i)].name for i in (a, b) if i >= 0) for a, b in
          zip(np.asarray(state["pending"])[1:], np.asarray(state["pending2"])[1:],
              strict=True)]


def test_opening_round_tries_the_undo_of_a_departed_setting_by_trial_3():
  # a development fine-tuning fault on a corpus task, shipped table
  space = repair_space(task=get_task("digits_mlp"))
  start = {"finetune_steps": 3, "finetune_fraction": 0.4, "finetune_lr": 0.03}
  undo = ("finetune_steps=1", "finetune_lr*10", "finetune_lr=0.1", "finetune_steps=2",
          "finetune_fraction=0.2")
  off = _opening(space, start, undo="off")
  # the table alone (its rows mix every corpus model that changed the fine-tuning settings,
  # most of them broken by something else) trains no undo of fine-tuning in the opening
  assert not any(u in n for n in off for u in undo), off
  # "combine" (the default): trial 2 is the table's top action, trial 3 the same action
  # with the best undo of the start's departures; the rest of the round is the table's
  new = _opening(space, start)
  top, joint = new[0], new[1].split(" & ")
  assert top == off[0] and joint[0] == top and joint[1] == "finetune_steps=1", (new, off)
  assert new[2] == off[1], (new, off)
  # "first": the undo actions alone come first
  first = _opening(space, start, undo="first")
  assert first[0] == "finetune_steps=1" and first[1] in undo, first
  # a start at the defaults has nothing to undo: the table's opening whatever the mode
  assert _opening(space, {}) == _opening(space, {}, undo="off") == _opening(
      space, {}, undo="first")
  with pytest.raises(ValueError, match="undo='last' is unknown; allowed: off, first, combine"):
    repair(metaopt.random_search(space.dim), space, table=None, undo="last")


def _table(actions, rows):
  """A priority table with ``rows[name] = {action name: mean gain}``."""
  names = [a.name for a in actions]
  mean = [[rows.get(r, {}).get(a) for a in names] for r in ROWS]
  count = [[0 if g is None else 10 for g in row] for row in mean]
  return {"actions": names, "rows": list(ROWS), "mean_gain": mean, "count": count}


def test_priorities_follow_the_table_and_unknown_conditions_are_random():
  acts = DEFAULT_ACTIONS[:6]
  table = _table(acts, {"vanishing_gradients": {acts[3].name: 0.4, acts[1].name: 0.1,
                                                acts[0].name: -0.2}})
  prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table, ucb=0.0)
  state = prog.init(jax.random.key(0))
  vg = jnp.asarray([c == "vanishing_gradients" for c in metaopt.CONDITIONS])
  score = np.asarray(priorities(state, vg, jax.random.key(1), 0.0))
  assert np.argmax(score) == 3 and score[3] == pytest.approx(0.4)
  assert score[1] > score[2] > score[0]  # measured 0.1 > unmeasured (random, < 0) > -0.2
  # a condition the table never saw: every action random in [-1e-3, 0]
  dr = jnp.asarray([c == "dying_relu" for c in metaopt.CONDITIONS])
  s1 = np.asarray(priorities(state, dr, jax.random.key(1), 0.0))
  s2 = np.asarray(priorities(state, dr, jax.random.key(2), 0.0))
  assert np.all((s1 <= 0) & (s1 >= -1e-3)) and not np.allclose(s1, s2)


class LoopStateTest(chex.TestCase):
  """Algorithm 1's bookkeeping on hand-made results (no training)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_applied_and_tried_actions_are_skipped_and_gains_update_priorities(self):
    acts = tuple(a for a in DEFAULT_ACTIONS if a.param in ("learning_rate", "activation"))
    prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=None,
                  start={"learning_rate": 1e-6, "activation": "sigmoid"}, population=3,
                  ucb=0.0)
    ask = self.variant(prog.ask, static_argnums=2)
    tell = self.variant(prog.tell)
    state = prog.init(jax.random.key(0))
    state, u = ask(state, jax.random.key(1), 3)
    assert SPACE.to_python(jax.device_get(SPACE.decode(u[0])))["learning_rate"] == \
        pytest.approx(1e-6, rel=1e-4)
    opening = [int(a) for a in np.asarray(state["pending"])]
    assert opening[0] == -1 and min(opening[1:]) >= 0  # the start, then 2 actions on it
    done = jnp.zeros(3, jnp.int32)
    state = tell(state, u, jnp.asarray([1.0, 5.0, 5.0]), done)  # the start is the best
    assert float(np.sum(state["obs_n"])) == 0  # the start was not measured before: no credit
    state, u1 = ask(state, jax.random.key(2), 3)
    first = [int(a) for a in np.asarray(state["pending"])]
    assert all(a >= 0 for a in first) and len(set(first)) == 3
    assert not set(first) & set(opening[1:])  # tried on the start already: skipped
    state = tell(state, u1, jnp.asarray([2.0, 3.0, 1.5]), done)  # all worse than the start
    # each gain (1 - y) / 1, clipped to [-1, 1], was credited to the "none" row
    none = ROWS.index("none")
    np.testing.assert_allclose(np.asarray(state["obs_sum"])[none, first], [-1.0, -1.0, -0.5])
    np.testing.assert_allclose(np.asarray(state["obs_n"])[none, first], [1, 1, 1])
    state, u2 = ask(state, jax.random.key(3), 3)
    second = [int(a) for a in np.asarray(state["pending"])]
    assert not set(second) & set(first + opening)  # tried from this best model: skipped
    state = tell(state, u2, jnp.asarray([0.5, 3.0, 3.0]), done)  # second[0] repairs it
    assert float(state["best_y"]) == 0.5 and bool(state["best_applied"][second[0]])
    state, _ = ask(state, jax.random.key(4), 3)
    third = [int(a) for a in np.asarray(state["pending"])]
    assert second[0] not in third  # already applied to the best model: skipped
    # no action repeats a value the best model already has
    best = SPACE.to_python(jax.device_get(SPACE.decode(state["best_u"])))
    for a in third:
      if acts[a].kind == "set":
        assert best[acts[a].param] != acts[a].value


def test_shipped_table_has_provenance_and_every_condition():
  table = load_table()
  prov = table["provenance"]
  assert prov["command"].startswith("python -m metaopt.repair build-table")
  assert prov["runs"] > 100 and prov["code_version"]
  assert table["rows"][:len(ROWS)] == list(ROWS)
  names = {a.name for a in DEFAULT_ACTIONS}
  assert set(table["actions"]) <= names
  # every action has a column (an action added after a build would score at random until
  # the table is rebuilt with the same command); the undo actions are measured
  assert names - set(table["actions"]) <= set(UNDO_ACTIONS)
  assert sorted(table["opening"]) == sorted(table["actions"])  # a portfolio of every action
  seen = [r for r in ROWS if any(c > 0 for c in table["count"][ROWS.index(r)])]
  assert "none" in seen and len(seen) >= 3, seen
  top = ranked_actions(table, seen[0])
  assert top and all(top[i][1] >= top[i + 1][1] for i in range(len(top) - 1))


def test_architecture_family_detector_and_the_table_it_selects():
  assert metaopt.architecture_family(get_task("digits_mlp"), {"width": 32}) == "mlp"
  assert metaopt.architecture_family(get_task("wine_mlp"), {"residual": True}) == \
      "residual_mlp"
  assert metaopt.architecture_family(get_task("digits_cnn")) == "cnn"
  assert metaopt.architecture_family(get_task("logreg")) == "linear"
  table = load_table()
  assert "mlp" in table["families"] and "cnn" not in table["families"]  # measured on MLPs
  key = jax.random.key(0)
  prior = lambda fam: np.asarray(  # noqa: E731
      repair(metaopt.random_search(SPACE.dim), SPACE, family=fam).init(key)["prior_n"])
  assert prior("mlp").sum() > 0 and np.array_equal(prior(None), prior("mlp"))
  # another family: the table's gains don't transfer, every action starts unknown
  assert prior("cnn").sum() == 0 and prior("linear").sum() == 0
  with pytest.raises(ValueError, match="family='transformer' is unknown; allowed: mlp"):
    repair(metaopt.random_search(SPACE.dim), SPACE, family="transformer")


# slow (~25 s in CI: two rounds of wine-MLP trainings in the repair space); by default the
# corpus draws (test_corpus_configs_are_faulty_variants_of_the_defaults, test_corpus_draws_...),
# the table's shrinkage (test_sparse_table_cells_are_shrunk_towards_the_actions_overall_gain),
# the shipped table (test_shipped_table_has_provenance_and_every_condition) and the repair
# space trained through metaopt.search (test_repair_loop_reaches_the_target_and_stops)
@pytest.mark.slow
def test_build_table_measures_gains_on_real_runs(tmp_path):
  acts = (Action("learning_rate", 1e-2), Action("learning_rate", 1e-7))
  table = metaopt.repair.build_table(["wine_mlp"], n_configs=2, epochs=2, population=8,
                                     actions=acts, seed=3, store=f"sqlite:///{tmp_path}/c.db",
                                     progress=False)
  assert table["actions"] == [a.name for a in acts] and table["families"] == ["mlp"]
  counts = np.asarray(table["count"])
  con = sqlite3.connect(f"{tmp_path}/c.db")
  (n,) = con.execute("select count(*) from trials where status = 'complete'").fetchone()
  children = n - 2  # the 2 corpus configs, then every action that changes one of them
  assert 2 <= children <= 4
  # every child's gain lands in each of its parent's condition rows ("none" if healthy)
  assert counts.max(0).sum() <= children <= counts.sum()
  gains = [g for row in table["mean_gain"] for g in row if g is not None]
  assert all(-1.0 <= g <= 1.0 for g in gains)


def test_corpus_configs_are_faulty_variants_of_the_defaults():
  from metaopt._src.repair import _mutant
  rng = np.random.default_rng(0)
  decode = jax.jit(SPACE.decode)  # 41 eager decodes cost ~5 s of CPU
  default = SPACE.to_python(jax.device_get(decode(jnp.asarray(SPACE.encode({}), jnp.float32))))
  n_changed = []
  for _ in range(40):
    h = SPACE.to_python(jax.device_get(decode(jnp.asarray(_mutant(SPACE, rng, 2)))))
    n_changed.append(sum(h.get(k) != v for k, v in default.items()))
  # 1 or 2 parameters drawn; one may switch others on (e.g. sgd brings its momentum)
  assert min(n_changed) >= 1 and max(n_changed) <= 2 + 4
  assert np.mean(np.asarray(n_changed) <= 2) > 0.7


def test_corpus_draws_fine_tuning_faults_with_fine_tuning_switched_on():
  from metaopt._src.repair import _mutant

  def mutants(seed, n=120):
    rng = np.random.default_rng(seed)
    return np.stack([_mutant(SPACE, rng, 1) for _ in range(n)])

  hs = SPACE.to_python_batch(jax.device_get(SPACE.decode(jnp.asarray(mutants(0)))))
  on = [h for h in hs if h["finetune_steps"] > 1]
  # one mutation each: a fine-tuning rate / share / frozen body off its default can only come
  # from a draw of that parameter, which must have switched fine-tuning on with it
  assert any(h["finetune_lr"] < 0.05 for h in on)
  assert any(abs(h["finetune_fraction"] - 0.2) > 0.05 for h in on)
  assert any(h["finetune_freeze"] for h in on)
  # a momentum draw brings plain SGD's parent (the optimizer) with it
  assert any(h["optimizer"] == "sgd" and abs(h["momentum"] - 0.9) > 0.05 for h in hs)
  np.testing.assert_array_equal(mutants(0), mutants(0))  # deterministic per seed
  assert not np.array_equal(mutants(0), mutants(1))


def test_trial_conditions_aggregate_like_the_searcher():
  epochs = [{"conditions": []}, {"conditions": ["slow_convergence"]},
            {"conditions": ["slow_convergence", "dying_relu"]}, {"conditions": []}]
  assert trial_conditions(epochs) == ["slow_convergence", "dying_relu"]
  assert trial_conditions(epochs[:1] + epochs[3:] + epochs[1:2]) == ["slow_convergence"]
  assert trial_conditions([{"conditions": []}] * 2 + [{"conditions": ["slow_convergence"]}]
                          * 1 + [{"conditions": []}] * 2) == []


def test_repair_loop_reaches_the_target_and_stops(tmp_path):
  task = get_task("wine_mlp")
  start = {"optimizer": "sgd", "learning_rate": 1e-6, "momentum": 0.0}
  prog = repair(metaopt.random_search(SPACE.dim), SPACE, start=start, population=2)
  store = metaopt.Store(f"sqlite:///{tmp_path}/r.db")
  res = metaopt.search(prog, task, space=SPACE, n_trials=20, population=2, epochs=6,
                       batch_size=16, seed=0, store=store, study="rep", progress=False,
                       target=0.9)
  assert res.trials[0].params["learning_rate"] == pytest.approx(1e-6, rel=1e-4)
  assert res.trials[0].objective < 0.9
  assert "slow_convergence" in trial_conditions(res.trials[0].metrics)
  assert res.best.objective >= 0.9
  assert len(res.trials) < 20  # stopped at the target, not at the budget
  kinds = [e["kind"] for e in store.events(store.load_study("rep").id)]
  assert "target" in kinds


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "run.py", *args, "--quiet"], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


# slow (~45 s on CI, a run.py process): by default the repair loop runs through
# metaopt.search in test_repair_loop_reaches_the_target_and_stops, its rounds in
# test_first_round_trains_the_start_beside_the_opening_portfolio and
# test_a_round_never_trains_two_actions_that_make_the_same_configuration, and the config's
# parsing in tests/test_store_errors.py
@pytest.mark.slow
def test_repair_config_runs_from_the_cli_and_records_each_repair(tmp_path):
  url = f"sqlite:///{tmp_path}/rd.db"
  r = _cli("run", "--config", "configs/repair_digits.py", "--config.task_name=wine_mlp",
           "--config.n_trials=6", "--config.population=3", "--config.epochs=3",
           "--config.target=0.99", "--store", url)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["family"] == "mlp" and out["table_used"] is True
  # round 0: the start and 2 random proposals; round 1: 3 actions on the best of those
  assert out["n_trials"] == 6 and len(out["repairs"]) == 1
  step = out["repairs"][0]
  assert step["parent"] in (0, 1, 2) and [t["trial"] for t in step["trials"]] == [3, 4, 5]
  footprints = [{p for p, _, _ in a.parts()} for a in DEFAULT_ACTIONS]
  for t in step["trials"]:  # one action each: its parameter, or a compound action's few
    assert t["changes"] and any(set(t["changes"]) <= fp for fp in footprints), t["changes"]
  con = sqlite3.connect(f"{tmp_path}/rd.db")
  msgs = [m for (m,) in con.execute("select message from events where kind = 'repair'")]
  assert msgs and msgs[0].startswith(f"round 1: repaired trial #{step['parent']}")
  # a bad searcher in this config gives one line and exit 2: tests/test_store_errors.py


# slow (~35 s on CI, two run.py processes), as is the same untrusted white-box run falling
# back to repair through the CLI (tests/test_cli.py::test_repair_wraps_a_white_box_program_...);
# by default only the untrustworthiness checks that trigger the switch run
# (tests/test_hypergrad.py::test_monitor_flags_nonfinite_exploding_and_growth)
@pytest.mark.slow
def test_untrusted_white_box_falls_back_to_black_box_end_to_end(tmp_path):
  url = f"sqlite:///{tmp_path}/fb.db"
  r = _cli("run", "--config", "configs/hypergrad_implicit.py", "--config.outer_steps=2",
           "--config.population=2", "--config.inner_steps=20", "--config.estimator.maxiter=1",
           "--store", url)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  fb = out["fallback"]
  assert fb["searcher"] == "tpe" and fb["observations"] == 4 and fb["space"] == ["l2"]
  con = sqlite3.connect(f"{tmp_path}/fb.db")
  (switch,) = con.execute("select message from events where kind = 'switch'").fetchone()
  assert "white-box -> tpe" in switch and "untrustworthy" in switch
  rows = con.execute("select round, status, objective from trials where round > 0").fetchall()
  assert len(rows) == 16 and all(s == "complete" for _, s, _ in rows)
  assert min(o for *_, o in rows) == pytest.approx(fb["best"]["val_loss"], rel=1e-6)
  # the black-box stage improves on (or matches) what the untrusted white-box run reached
  assert fb["best"]["val_loss"] <= min(out["val_loss_final"]) + 1e-6
  # and the report shows the switch
  rep = _cli("report", "--store", url, "--out", str(tmp_path / "rep"), "--format", "json")
  assert rep.returncode == 0, rep.stderr[-2000:]
  page = (tmp_path / "rep" / "report.html").read_text()
  assert "white-box -&gt; tpe" in page and "switch" in page


def test_sparse_table_cells_are_shrunk_towards_the_actions_overall_gain():
  from metaopt._src.repair import _SHRINK, _prior
  acts = DEFAULT_ACTIONS[:2]
  table = _table(acts, {"slow_convergence": {acts[0].name: 0.9, acts[1].name: 0.5},
                        "none": {acts[0].name: 0.1}})
  table["count"][ROWS.index("slow_convergence")][0] = 1  # 0.9 measured on one run only
  mean, _ = _prior(table, acts, 5.0)
  pooled = (1 * 0.9 + 10 * 0.1) / 11
  sc = ROWS.index("slow_convergence")
  assert mean[sc, 0] == pytest.approx((0.9 + _SHRINK * pooled) / (1 + _SHRINK), rel=1e-5)
  assert mean[sc, 1] == pytest.approx(0.5)  # the action's only row: nothing to shrink to
  assert mean[sc, 0] < mean[sc, 1]  # one lucky run no longer outranks ten measured ones


def test_a_round_never_trains_two_actions_that_make_the_same_configuration():
  acts = (Action("learning_rate", 0.01),
          Action("optimizer", "sgd", also={"learning_rate": 0.01, "momentum": 0.9}),
          Action("learning_rate", 1e-3))
  table = {**_table(acts, {}), "opening": [a.name for a in acts]}
  # on SGD at momentum 0.9 the compound action only sets the learning rate to 0.01, too
  start = {"optimizer": "sgd", "momentum": 0.9, "learning_rate": 10.0}
  prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table,
                start=start, population=3)
  state, u = prog.ask(prog.init(jax.random.key(0)), jax.random.key(1), 3)
  assert [int(a) for a in np.asarray(state["pending"])] == [-1, 0, 2]
  assert np.asarray(state["tried"]).tolist() == [True, True, True]  # its twin counts as tried
  got = SPACE.to_python_batch(jax.device_get(SPACE.decode(u)))
  assert [round(g["learning_rate"], 4) for g in got] == [10.0, 0.01, 0.001]


def test_bad_corpus_settings_name_the_field_before_training():
  with pytest.raises(ValueError, match=r"mutations=-1: must be an integer >= 0"):
    metaopt.repair.build_table(["wine_mlp"], n_configs=2, mutations=-1, progress=False)
  with pytest.raises(ValueError, match=r"broken_fraction=0: must be in \(0, 1\]"):
    metaopt.repair.build_table(["wine_mlp"], n_configs=2, broken_fraction=0, progress=False)


def test_a_combined_slot_trains_the_top_action_with_the_next_on_other_parameters():
  acts = (Action("learning_rate", 0.01), Action("activation", "relu"),
          Action("learning_rate", 1e-3), Action("init_scale", 1.0))
  table = {**_table(acts, {}), "opening": [acts[i].name for i in (0, 2, 1, 3)]}
  start = {"learning_rate": 10.0, "activation": "sigmoid", "init_scale": 5.0}
  got = {}
  for combine in (0, 1):
    prog = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table,
                  start=start, population=4, combine=combine, undo="off")
    state, u = prog.ask(prog.init(jax.random.key(0)), jax.random.key(1), 4)
    got[combine] = (np.asarray(state["pending"]).tolist(), np.asarray(state["pending2"]).tolist(),
                    SPACE.to_python_batch(jax.device_get(SPACE.decode(u))), state, u)
  assert got[0][:2] == ([-1, 0, 2, 1], [-1, -1, -1, -1])
  # the last slot: the top action (lr 0.01) with the best one on another parameter (relu)
  pending, pending2, params, state, u = got[1]
  assert (pending, pending2) == ([-1, 0, 2, 0], [-1, -1, -1, 1])
  assert params[3]["activation"] == "relu" and params[3]["init_scale"] == pytest.approx(5.0)
  assert params[3]["learning_rate"] == pytest.approx(0.01, rel=1e-4)
  assert not bool(state["tried"][1])  # relu alone was not trained yet
  # the combined trial wins: both its actions count as applied to the new best model
  state = prog.tell(state, u, jnp.asarray([0.9, 0.5, 0.6, 0.1]), jnp.zeros(4, jnp.int32))
  assert np.asarray(state["best_applied"]).tolist() == [True, True, False, False]
  # undo="combine" (the default): relu undoes the start's sigmoid, so the opening trains the
  # combined slot right after the top action
  prog2 = repair(metaopt.random_search(SPACE.dim), SPACE, actions=acts, table=table,
                 start=start, population=4)
  state2, u2 = prog2.ask(prog2.init(jax.random.key(0)), jax.random.key(1), 4)
  assert np.asarray(state2["pending"]).tolist() == [-1, 0, 0, 2]
  assert np.asarray(state2["pending2"]).tolist() == [-1, -1, 1, -1]
  np.testing.assert_array_equal(np.asarray(u2), np.asarray(u)[[0, 1, 3, 2]])
  with pytest.raises(ValueError, match="combine=-1: must be an integer >= 0"):
    repair(metaopt.random_search(SPACE.dim), SPACE, table=None, combine=-1)
