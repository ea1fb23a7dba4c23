"""Multi-fidelity pruners and PBT: exact rung arithmetic, engine integration, PBT vs fixed."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt import Checkpointer
from metaopt._src import population as pop
from metaopt.spaces import Float, Space
from metaopt.tasks import Dataset, Split, Task, TrialFns, get_task


def test_rungs():
  assert metaopt.rungs(9, 1, 3) == [0, 2]
  assert metaopt.rungs(27, 1, 3) == [0, 2, 8]
  assert metaopt.rungs(8, 2, 2) == [1, 3]
  assert metaopt.rungs(4, 4, 2) == []


def test_successive_halving_keeps_exactly_the_top_fraction():
  p = metaopt.successive_halving(n_epochs=9, min_epochs=1, eta=3)
  values = jnp.asarray(np.random.default_rng(0).permutation(27).astype(np.float32))
  alive = jnp.ones(27, bool)
  st, keep = jax.jit(p.prune)(p.init(), values, jnp.asarray(0), alive)
  assert set(np.flatnonzero(keep)) == set(np.argsort(np.asarray(values))[:9])
  _, keep1 = p.prune(st, values, jnp.asarray(1), keep)   # not a rung
  assert bool(jnp.all(keep1 == True))  # noqa: E712
  _, keep2 = p.prune(st, values, jnp.asarray(2), keep)   # rung: 9 -> 3
  assert int(jnp.sum(keep2 & keep)) == 3
  assert set(np.flatnonzero(keep2 & keep)) == set(np.argsort(np.asarray(values))[:3])
  with pytest.raises(ValueError, match="eta=1: must be a number > 1"):
    metaopt.successive_halving(9, eta=1)


def test_hyperband_cycles_brackets_over_rounds():
  p = metaopt.hyperband(n_epochs=9, min_epochs=1, eta=3)
  values = jnp.arange(9.0)
  alive = jnp.ones(9, bool)
  st = p.init()
  first_rungs = []
  for _ in range(4):  # rounds
    pruned_at = None
    for e in range(9):
      st, keep = p.prune(st, values, jnp.asarray(e), alive)
      if pruned_at is None and not bool(jnp.all(keep)):
        pruned_at = e
    first_rungs.append(pruned_at)
  assert first_rungs == [0, 2, None, 0]  # brackets s=2 (rung 1), s=1 (rung 3), s=0, s=2


def test_asha_uses_history_across_rounds():
  p = metaopt.asha(n_epochs=3, min_epochs=1, eta=2)
  st = p.init()
  good = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  st, keep = p.prune(st, good, jnp.asarray(0), jnp.ones(4, bool))
  assert np.asarray(keep).tolist() == [True, True, False, False]  # top half of 4
  bad = jnp.asarray([0.25, 0.9, 0.95, 0.99])
  st, keep = p.prune(st, bad, jnp.asarray(0), jnp.ones(4, bool))
  # top half of all 8 values at this rung: <= 0.3 -> only 0.25 of the new round survives
  assert np.asarray(keep).tolist() == [True, False, False, False]


def test_curve_pruner_stops_a_hopeless_curve():
  p = metaopt.curve_pruner(n_epochs=6, min_points=3)
  st = p.init()
  hist = jnp.full((2, 6), jnp.nan)
  finished = jnp.asarray([[1.0, 0.6, 0.4, 0.3, 0.25, 0.2], [1.0] * 6])
  st, _ = p.prune(st, finished, jnp.asarray(5), jnp.asarray([True, False]))
  assert float(st["best_final"]) == pytest.approx(0.2)
  hist = hist.at[0, :3].set(jnp.asarray([1.0, 0.5, 0.3])).at[1, :3].set(
      jnp.asarray([2.0, 1.9, 1.85]))
  _, keep = p.prune(st, hist, jnp.asarray(2), jnp.ones(2, bool))
  assert np.asarray(keep).tolist() == [True, False]


# Slow (~20 s in CI: three population kernels); successive halving with compaction in the
# engine stays default in test_search.py::test_resume_restores_a_compacted_population.
@pytest.mark.slow
def test_successive_halving_in_the_engine_compacts_and_records_rungs(tmp_path):
  task = get_task("digits_mlp")
  prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                              metaopt.successive_halving(n_epochs=5, min_epochs=1, eta=3))
  res = metaopt.search(prog, task, n_trials=9, population=9, epochs=5, batch_size=128,
                       store=f"sqlite:///{tmp_path}/s.db", study="sh", progress=False,
                       compaction="always")  # "auto" keeps a kernel whose shrinking won't pay
  done = [t for t in res.trials if t.status == "complete"]
  pruned = [t for t in res.trials if t.status == "pruned"]
  assert len(done) == 1 and len(pruned) == 8
  assert sorted(len(t.metrics) for t in pruned) == [1] * 6 + [3] * 2  # rungs after epochs 0, 2
  for t in pruned:
    assert t.failure_reason == f"pruned after epoch {len(t.metrics) - 1}"
  # the survivors of rung 0 were the best 3 of 9 after epoch 0
  after0 = sorted(((t.metrics[0]["valid_accuracy"], t.number) for t in res.trials),
                  reverse=True)
  assert {n for _, n in after0[:3]} == {t.number for t in res.trials if len(t.metrics) >= 3}
  # the population kernel really shrank: the last checkpoint holds only the survivor
  meta = Checkpointer(os.path.join(str(tmp_path), "s.db.ckpt", "sh", "round_00000")).meta()
  assert sum(len(v) for v in meta["layout"].values()) == 1


# --------------------------------------------------------------------------- PBT
def noisy_quadratic(dim: int = 16, noise: float = 1.0) -> Task:
  """SGD on 0.5 * sum(c_i w_i^2) with noisy gradients: a large learning rate makes fast
  progress early but a high noise floor late, so the best learning rate falls over time."""
  rng = np.random.default_rng(0)
  curv = jnp.asarray(np.logspace(-1, 0, dim), jnp.float32)
  x = rng.standard_normal((4096, dim)).astype(np.float32)
  split = Split(x, np.zeros(4096, np.float32))
  small = Split(x[:8], np.zeros(8, np.float32))
  data = Dataset("noisy_quadratic", "none", "0", "0", None, split, small, small)

  def build(structure):
    del structure

    def init(key, h):
      del h
      return {"w": jnp.full((dim,), 5.0), "key": jax.random.key_data(key)}

    def train_step(state, batch, h):
      del batch  # the gradient noise comes from the trial's own key
      key, sub = jax.random.split(jax.random.wrap_key_data(state["key"]))
      w = state["w"]
      g = curv * w + noise * jax.random.normal(sub, (dim,))
      w = w - h["learning_rate"] * g
      loss = 0.5 * jnp.sum(curv * w * w)
      tel = {"loss": loss, "grad_norm_first": jnp.linalg.norm(g),
             "grad_norm_last": jnp.linalg.norm(g), "zero_grad_frac": jnp.zeros(()),
             "nonfinite_loss": ~jnp.isfinite(loss), "nonfinite_grads": ~jnp.isfinite(g).all(),
             "nonfinite_params": ~jnp.isfinite(w).all()}
      return {"w": w, "key": jax.random.key_data(key)}, tel

    def evaluate(state, x, y, h):
      del x, y, h
      return {"loss": 0.5 * jnp.sum(curv * state["w"] ** 2)}

    return TrialFns(init, train_step, evaluate)

  space = Space({"learning_rate": Float(1e-3, 1.5, log=True)})
  return Task("noisy_quadratic", data, space, build, "loss", "minimize")


def test_pbt_beats_a_fixed_schedule(tmp_path):
  task = noisy_quadratic()
  kw = dict(n_trials=16, population=16, epochs=32, batch_size=256, seed=0, progress=False)
  fixed = metaopt.search(metaopt.random_search(1), task, store=f"sqlite:///{tmp_path}/f.db",
                         **kw)
  prog = metaopt.pbt(1, interval=2, quantile=0.25, perturb=0.1, resample_prob=0.0)
  res = metaopt.search(prog, task, store=f"sqlite:///{tmp_path}/p.db", **kw)
  assert res.count("complete") == 16
  assert res.best.objective < 0.7 * fixed.best.objective
  # lineage and the hyperparameter schedule are recorded
  parents = [m["parent"] for t in res.trials for m in t.metrics if "parent" in m]
  assert parents and all(0 <= p < 16 for p in parents)
  for t in res.trials:
    for m in t.metrics:
      if "next_params" in m:  # an explore step changed this trial's learning rate
        assert "exploited" in m["conditions"] and "parent" in m
        assert 1e-3 <= m["next_params"]["learning_rate"] <= 1.5


def test_pbt_exploit_copies_weights_exactly():
  task = noisy_quadratic(noise=0.0)
  prog = metaopt.pbt(1, interval=1, quantile=0.5, perturb=0.0, resample_prob=0.0)
  res = metaopt.search(prog, task, n_trials=4, population=4, epochs=2, batch_size=256,
                       progress=False)
  # with no noise and no perturbation, a copied trial continues exactly as its donor:
  # after the exploit at epoch 0, both have identical losses at epoch 1.
  by_number = {t.number: t for t in res.trials}
  copied = [t for t in res.trials if "parent" in t.metrics[0]]
  assert len(copied) == 2
  for t in copied:
    donor = by_number[t.metrics[0]["parent"]]
    assert t.metrics[1]["valid_loss"] == pytest.approx(donor.metrics[1]["valid_loss"])


def test_pbt_arguments():
  with pytest.raises(ValueError, match="quantile=0.7"):
    metaopt.pbt(2, quantile=0.7)
  with pytest.raises(ValueError, match="frozen=\\[5\\]"):
    metaopt.pbt(2, frozen=[5])


# --------------------------------------------------------------------------- complete_top_k
def test_complete_top_k_trains_the_best_pruned_trials_to_the_full_budget(tmp_path):
  """ASHA stops most trials early; ``complete_top_k=4`` then trains those of the 4 best
  (most epochs first, then the objective) that are not complete, from their own trial seed
  and without pruning, as new complete trials. The quadratic's noise comes from the trial's
  key, not the data, so a completion repeats its source's epochs exactly before going on."""
  task, epochs = noisy_quadratic(), 9
  prog = metaopt.with_pruning(metaopt.random_search(1),
                              metaopt.asha(epochs, min_epochs=1, eta=3))  # rungs 1, 3
  url = f"sqlite:///{tmp_path}/c.db"
  kw = dict(n_trials=12, population=4, epochs=epochs, batch_size=512, seed=3, progress=False,
            store=url, study="c", complete_top_k=4)
  res = metaopt.search(prog, task, **kw)
  search = [t for t in res.trials if t.number < 12]
  extra = [t for t in res.trials if t.number >= 12]
  assert len(search) == 12 and search[0].status in ("complete", "pruned")
  ranked = sorted((t for t in search if t.status in ("complete", "pruned")),
                  key=lambda t: (-len(t.metrics), t.objective))
  top = ranked[:4]
  todo = [t for t in top if t.status == "pruned"]
  assert todo and len(extra) == len(todo)  # ASHA pruned some of the best; nothing else ran
  pairs = [{"source": s.number, "number": 12 + i} for i, s in enumerate(todo)]
  assert res.info["complete_top"] == pairs
  st = metaopt.Store(url)
  ev = [e for e in st.events(st.load_study("c").id) if e["kind"] == "complete_top"]
  assert len(ev) == 1 and json.loads(ev[0]["message"]) == {"k": 4, "epochs": epochs,
                                                           "trials": pairs}
  for src, new in zip(todo, extra, strict=True):
    assert new.status == "complete" and len(new.metrics) == epochs
    assert new.params == src.params and new.seed == src.seed and new.round >= 3
    assert "conditions" not in new.metrics[-1]  # no observer ran: nothing could prune it
    got = [m["valid_loss"] for m in new.metrics[:len(src.metrics)]]
    assert got == pytest.approx([m["valid_loss"] for m in src.metrics], rel=1e-6)
    assert new.objective == pytest.approx(new.metrics[-1]["valid_loss"])
  # the k best now all have a full-budget result, and Result.best counts the completions
  full = {t.number for t in top if t.status == "complete"} | {t.number for t in todo}
  assert len(full) == 4
  assert res.best.objective == min(t.objective for t in res.trials if t.status == "complete")
  # the same call again resumes a finished study: nothing runs, nothing is added
  again = metaopt.search(prog, task, **kw)
  assert [t.number for t in again.trials] == [t.number for t in res.trials]
  assert again.info["complete_top"] == pairs


@pytest.mark.parametrize("k", [-1, 13, True, 1.5, "2"])
def test_bad_complete_top_k_fails_before_compiling(k):
  st = metaopt.Store("sqlite://")
  c0 = pop.compile_seconds()
  with pytest.raises(ValueError, match=r"complete_top_k=.*integer from 0 \(none\) to "
                                       r"n_trials \(12\)"):
    metaopt.search(metaopt.random_search(1), noisy_quadratic(), n_trials=12, population=4,
                   epochs=3, store=st, progress=False, complete_top_k=k)
  assert pop.compile_seconds() - c0 == 0.0 and st.study_names() == []


# --------------------------------------------------------------------------- pruned-aware TPE
def test_tpe_pruned_rank_is_told_each_trials_epochs_by_the_engine():
  """Under ASHA, ``search`` tells ``tpe(pruned="rank")`` every pruned trial with its last
  value and the epochs it trained (as the store records them), and every complete trial above
  every step: the final state's history rows are the trials in order. With ``n_startup=4``
  the rounds after the first ask from the model, which ranks them so."""
  from metaopt._src.tpe import COMPLETE_STEP

  task, epochs = noisy_quadratic(), 9
  prog = metaopt.with_pruning(metaopt.tpe(1, n_startup=4, capacity=64, pruned="rank"),
                              metaopt.asha(epochs, min_epochs=1, eta=3))  # rungs 1, 3
  res = metaopt.search(prog, task, n_trials=12, population=4, epochs=epochs, batch_size=512,
                       seed=3, progress=False)
  ts = sorted(res.trials, key=lambda t: t.number)
  assert {t.status for t in ts} == {"complete", "pruned"}
  h = res.state["search"]
  assert int(h["count"]) == len(ts) == int(np.sum(np.asarray(h["valid"])))
  want = [COMPLETE_STEP if t.status == "complete" else len(t.metrics) for t in ts]
  assert {1, 3} <= set(want)  # pruned at both rungs
  assert np.asarray(h["step"])[:len(ts)].tolist() == want
  np.testing.assert_allclose(np.asarray(h["y"])[:len(ts)], [t.objective for t in ts], rtol=1e-6)
  # the default ignores them: only the complete trials are observations
  plain = metaopt.search(metaopt.with_pruning(metaopt.tpe(1, n_startup=4, capacity=64),
                                              metaopt.asha(epochs, min_epochs=1, eta=3)),
                         task, n_trials=4, population=4, epochs=epochs, batch_size=512,
                         seed=3, progress=False)
  done = sum(t.status == "complete" for t in plain.trials)
  assert "step" not in plain.state["search"] and int(plain.state["search"]["count"]) == done < 4
