"""run.py end to end in real subprocesses: run, report, bad input, kill -9 and resume."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from _evaluate_checks import check_ensemble
from cli_batch import run_batch, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = """
from metaopt.configs import quickstart

def get_config():
  c = quickstart.get_config()
  c.name = "small"
  c.task_name = "{task}"
  c.n_trials = {n_trials}
  c.population = {population}
  c.epochs = {epochs}
  c.batch_size = 64
  c.checkpoint_every_s = 0.0
  c.store = "sqlite:///{db}"
  return c
"""


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "run.py", *args, "--quiet"], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def _config(tmp_path, name="small.py", **kw):
  kw = {"n_trials": 8, "population": 8, "epochs": 2, "db": f"{tmp_path}/s.db",
        "task": "digits_mlp", **kw}
  path = tmp_path / name
  path.write_text(SMALL.format(**kw))
  return str(path), f"sqlite:///{kw['db']}"


def test_run_then_report_json_and_png(tmp_path):
  cfg, url = _config(tmp_path)
  # a new key of a nested dict field (the task factory's max_width) from the command line
  r = _cli("run", "--config", cfg, "--config.seed=3", "--config.task.max_width=32")
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["n_trials"] == 8 and out["n_complete"] == 8
  # resume, the JSON report and the text report (written beside the store by default): each
  # run.py in its own forked process of one cli_batch.py process (none of them trains)
  before = snapshot(str(tmp_path))
  resumed, r, text = run_batch(ROOT, [
      ["resume", "--store", url, "--quiet"],
      ["report", "--store", url, "--format", "json", "--out", str(tmp_path / "rep"), "--quiet"],
      ["report", "--store", url, "--quiet"]], timeout_s=120)
  # resuming the finished study prints its summary and writes nothing; nor do the reports,
  # outside their own folders
  assert resumed["rc"] == 0, resumed["stderr"][-2000:]
  assert json.loads(resumed["stdout"]) == out
  assert {p: h for p, h in snapshot(str(tmp_path)).items()
          if not p.startswith(("rep", "report_small"))} == before
  assert r["rc"] == 0, r["stderr"][-2000:]
  rep = json.loads(r["stdout"])
  assert {"n_trials", "n_complete", "n_failed", "best"} <= set(rep)
  assert rep["n_trials"] == 8 and rep["n_failed"] == 0
  assert set(rep["best"]["params"]) == {"learning_rate", "weight_decay", "width", "activation"}
  assert 0.0 < rep["best"]["objective"] <= 1.0
  with open(rep["plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  page = open(rep["html"]).read()
  assert page.count("data:image/png;base64,") >= 3  # self-contained: plots embedded
  assert set(rep["plots"]) >= {"history", "learning_curves", "importance", "parallel", "html"}
  assert set(rep["importance"]) <= {"learning_rate", "weight_decay", "width", "activation"}
  assert all(0.0 <= v <= 1.0 for v in rep["importance"].values())
  con = sqlite3.connect(f"{tmp_path}/s.db")
  # compute accounting: every trial-epoch's FLOPs and device-seconds, totalled by the report
  epochs = [json.loads(m) for (m,) in con.execute("select metrics from trial_epochs")]
  assert len(epochs) == 16
  assert all(m["flops"] > 1e6 and m["device_s"] > 0.0 for m in epochs)
  # every digits MLP trial of one kernel costs the same FLOPs per epoch (masked width)
  assert len({m["flops"] for m in epochs}) == 1
  assert rep["compute"]["total_flops"] == pytest.approx(sum(m["flops"] for m in epochs))
  assert rep["compute"]["total_device_seconds"] == pytest.approx(
      sum(m["device_s"] for m in epochs))
  assert 'id="compute"' in page and f"{rep['compute']['total_flops'] / 1e9:.3f} GFLOPs" in page
  # Pareto front of accuracy vs live weights (digits MLP, 2 hidden layers of `width`),
  # checked by brute force on what the store holds
  size = {n: 64 * w + w + w * w + w + 10 * w + 10 for n, w in (
      (n, json.loads(p)["width"]) for n, p in con.execute(
          "select number, params from trials where status = 'complete'"))}
  acc = dict(con.execute("select number, objective from trials where status = 'complete'"))
  beats = lambda a, b: (size[a] <= size[b] and acc[a] >= acc[b]  # noqa: E731
                        and (size[a] < size[b] or acc[a] > acc[b]))
  front = [p["number"] for p in rep["pareto_front"]]
  assert front and {p["cost_key"] for p in rep["pareto_front"]} == {"live weights"}
  assert set(front) == {a for a in acc if not any(beats(b, a) for b in acc)}
  assert [p["cost"] for p in rep["pareto_front"]] == sorted(size[a] for a in front)
  assert "pareto" in rep["plots"]
  assert con.execute("select seed from studies").fetchone()[0] == 3
  assert json.loads(con.execute("select config from studies").fetchone()[0])["task"] == {
      "max_width": 32}
  assert max(json.loads(p)["width"] for (p,) in con.execute("select params from trials")) <= 32
  assert text["rc"] == 0, text["stderr"][-2000:]
  assert os.path.isfile(tmp_path / "report_small" / "report.html")
  # retrain the best two from scratch with two fresh seeds each; test split used once; the
  # ensemble of those four models
  r = _cli("evaluate", "--store", url, "--top_k", "2", "--seeds", "2", "--ensemble")
  assert r.returncode == 0, r.stderr[-2000:]
  ev = json.loads(r.stdout)
  assert [c["number"] for c in ev["configs"]] == [rep["best"]["number"],
                                                   ev["configs"][1]["number"]]
  for c in ev["configs"]:
    assert len(c["per_seed"]) == 2 and 0.0 <= c["test_accuracy"] <= 1.0
  check_ensemble(ev["ensemble"], ev["configs"],
                 con.execute("select kind, message from events order by id").fetchall())


BAD_CONFIGS = [
    ("--config.searcher_name=tpe2", "searcher_name='tpe2' is unknown; allowed: random, sobol"),
    ("--config.task_name=mnist_mlp", "task_name='mnist_mlp' is unknown; allowed: digits_mlp"),
    ("--config.n_trials=0", "n_trials=0: must be an integer >= 1"),
    ("--config.pruner_name=hyper", "pruner_name='hyper' is unknown; allowed: none, median"),
    ("--config.n_trails=5", "unknown field n_trails in --config (did you mean n_trials?); "
                            "allowed fields: batch_size, "),
]


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
  """``(folder, {name: result})`` of the CLI runs that fail or print help without training:
  every ``run.py ... --quiet`` in its own forked process of one ``cli_batch.py`` process
  (the imports paid once), each bad config in its own folder."""
  root = tmp_path_factory.mktemp("cli_errors")
  runs = {}
  for i, (override, _) in enumerate(BAD_CONFIGS):
    (root / f"bad{i}").mkdir()
    runs[f"bad{i}"] = ["run", "--config", _config(root / f"bad{i}")[0], override]
  (root / "space").mkdir()
  cfg, _ = _config(root / "space")
  with open(cfg, "a") as f:
    f.write("\n_orig = get_config\n"
            "def get_config():\n"
            "  c = _orig()\n"
            "  c.space = {'learning_rate': {'type': 'float', 'lo': 0.0, 'hi': 1.0, 'log': True}}\n"
            "  return c\n")
  runs["space"] = ["run", "--config", cfg]
  runs["help"] = ["run", "--help", "--config", "metaopt:quickstart"]
  (root / "missing").mkdir()
  runs["missing"] = ["report", "--store", f"sqlite:///{root}/missing/none/missing.db"]
  results = run_batch(ROOT, [[*a, "--quiet"] for a in runs.values()], timeout_s=60)
  return root, dict(zip(runs, results, strict=True))


@pytest.mark.parametrize("i", range(len(BAD_CONFIGS)), ids=[o for o, _ in BAD_CONFIGS])
def test_bad_config_gives_one_clear_error(error_runs, i):
  root, runs = error_runs
  message, r = BAD_CONFIGS[i][1], runs[f"bad{i}"]
  assert r["rc"] != 0 and r["rc"] != "timeout"  # within 60 s
  assert message in r["stderr"], r["stderr"][-1500:]
  assert "Traceback" not in r["stderr"]
  assert not os.path.exists(root / f"bad{i}" / "s.db")  # nothing was started


def test_bad_space_in_config(error_runs):
  r = error_runs[1]["space"]
  assert r["rc"] == 2
  assert "parameter 'learning_rate': log=True needs lo > 0" in r["stderr"]
  assert "Traceback" not in r["stderr"]


def _count(db, where):
  try:
    con = sqlite3.connect(db, timeout=30)
    n = con.execute(f"select count(*) from trials where {where}").fetchone()[0]
    con.close()
    return n
  except sqlite3.Error:
    return 0


def _steps(round_dir):
  """Checkpoint steps orbax has finished writing (renamed from their temporary names)."""
  try:
    return sorted(int(d) for d in os.listdir(round_dir) if d.isdigit())
  except OSError:
    return []


def _restored(db):
  """``{round: (epoch restored, message)}`` from the store's ``restore`` events."""
  con = sqlite3.connect(db)
  rows = con.execute("select message from events where kind = 'restore'").fetchall()
  con.close()
  out = {}
  for (m,) in rows:
    rnd, epoch = m.split(":")[0].split()[1], m.split("restored epoch ")[1].split()[0]
    out[int(rnd)] = (int(epoch), m)
  return out


# slow (~46 s on CI: three run.py processes of 24 trials); by default, a worker killed -9
# mid-round is taken over from its newest checkpoint and the study ends as an uninterrupted
# run (tests/test_scale.py::test_workers_share_a_study_and_take_over_a_killed_one), and a
# resume restores the newest readable step, not epoch 0
# (tests/test_scale.py::test_resume_skips_a_damaged_newest_checkpoint)
@pytest.mark.slow
def test_kill_9_then_resume_loses_nothing(tmp_path):
  """kill -9 of `run.py run` mid-round after two checkpoints of the round; `run.py resume`
  restores the newest one (recorded as a ``restore`` event), so it retrains at most the
  epochs trained since that checkpoint, and ends bit-identical to an uninterrupted run."""
  db = f"{tmp_path}/k.db"
  kw = dict(n_trials=24, population=8, epochs=6, task="digits_mlp")
  cfg, url = _config(tmp_path, db=db, **kw)
  round_dir = f"{db}.ckpt/small/round_00001"
  err = open(tmp_path / "stderr.txt", "w+")  # a file, not a pipe that could fill and block
  proc = subprocess.Popen([sys.executable, "run.py", "run", "--config", cfg, "--quiet"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
  deadline = time.time() + 600
  # kill -9 in the middle of round 1's training, once two of its epochs are checkpointed
  while (not _steps(round_dir) or _steps(round_dir)[-1] < 2) and time.time() < deadline:
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
    time.sleep(0.01)
  assert proc.poll() is None, "the search finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  newest = _steps(round_dir)[-1]  # the newest checkpoint when it died
  con = sqlite3.connect(db)
  before = dict(con.execute("select number, objective from trials where status='complete'"))
  trained = con.execute("select max(last_epoch) + 1 from trials where round = 1").fetchone()[0]
  con.close()
  assert len(before) == 8  # killed during round 1
  assert trained >= newest >= 2
  r = _cli("resume", "--store", url)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "unreadable" not in r.stderr, r.stderr[-2000:]
  epoch, msg = _restored(db)[1]
  assert epoch == newest, msg  # resumed from the newest checkpoint, not from epoch 0
  assert trained - epoch <= trained - newest  # retrained only what followed it
  con = sqlite3.connect(db)
  rows = con.execute("select number, status, objective from trials order by number").fetchall()
  assert [n for n, _, _ in rows] == list(range(24))  # none lost, none duplicated
  after = {n: o for n, s, o in rows if s == "complete"}
  assert len(after) == 24
  for n, obj in before.items():
    assert after[n] == obj  # completed trials are untouched
  # and the resumed search equals an uninterrupted one with the same seed, bit for bit
  cfg2, _ = _config(tmp_path, name="ref.py", db=f"{tmp_path}/ref.db", **kw)
  r = _cli("run", "--config", cfg2)
  assert r.returncode == 0, r.stderr[-2000:]
  ref = sqlite3.connect(f"{tmp_path}/ref.db").execute(
      "select number, params, objective from trials order by number").fetchall()
  got = con.execute("select number, params, objective from trials order by number").fetchall()
  assert ref == got


# slow (~21 s in CI: two run.py processes, one compiling unrolled hypergradients); by default
# the gradient-HPO config runs in process (tests/test_hypergrad.py::test_configs_run[online])
# and run.py runs and reports a study in test_run_then_report_json_and_png
@pytest.mark.slow
def test_gradient_hpo_config_records_every_outer_step(tmp_path):
  url = f"sqlite:///{tmp_path}/hg.db"
  r = _cli("run", "--config", "configs/hypergrad_unrolled.py", "--config.outer_steps=3",
           "--config.population=2", "--config.inner_steps=20", "--store", url)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["method"] == "unrolled" and out["population"] == 2
  con = sqlite3.connect(f"{tmp_path}/hg.db")
  rows = con.execute("select t.number, e.epoch, e.metrics from trial_epochs e join trials t "
                     "on t.id = e.trial_id order by t.number, e.epoch").fetchall()
  assert [(n, e) for n, e, _ in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
  m = json.loads(rows[-1][2])
  assert {"val_loss", "train_loss", "hypergrad_norm", "hparams.learning_rate"} <= set(m)
  assert m["val_loss"] == pytest.approx(out["val_loss_final"][1], rel=1e-5)
  final = con.execute("select status, objective from trials order by number").fetchall()
  assert [s for s, _ in final] == ["complete", "complete"]
  r = _cli("report", "--store", url, "--format", "json", "--out", str(tmp_path / "rep"))
  assert r.returncode == 0, r.stderr[-2000:]
  plots = json.loads(r.stdout)["plots"]
  assert "hypergrad" in plots and "arch_weights" not in plots
  with open(plots["hypergrad"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert 'alt="hypergrad.png"' in open(plots["html"]).read()


# slow (~28 s in CI: two run.py processes, one compiling implicit hypergradients and a repair
# population); by default the untrustworthiness checks that trigger the switch
# (tests/test_hypergrad.py::test_monitor_flags_nonfinite_exploding_and_growth) and the repair
# loop through metaopt.search (tests/test_repair.py::test_repair_loop_reaches_the_target_...)
@pytest.mark.slow
def test_repair_wraps_a_white_box_program_that_falls_back(tmp_path):
  """Each member's untrusted hypergradient is recorded as a ``fallback`` event; then
  fallback=repair: the best point of the white-box history is repaired, one action per
  trial (l2 x10 / x3 / /3 / /10), in one population. (The default fallback, TPE, runs end to
  end in tests/test_repair.py, also a slow test.)"""
  url = f"sqlite:///{tmp_path}/hg.db"
  r = _cli("run", "--config", "configs/hypergrad_implicit.py", "--config.outer_steps=2",
           "--config.population=2", "--config.inner_steps=5", "--config.estimator.maxiter=1",
           "--config.fallback=repair", "--config.fallback_trials=4",
           "--config.fallback_population=4", "--store", url)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["fallback"]["searcher"] == "repair" and out["fallback_members"] == [0, 1]
  con = sqlite3.connect(f"{tmp_path}/hg.db")
  msgs = [m for (m,) in con.execute("select message from events where kind = 'fallback'")]
  assert len(msgs) == 2 and all("untrustworthy" in m for m in msgs)
  (switch,) = [m for (m,) in con.execute("select message from events where kind = 'switch'")]
  assert "white-box -> repair" in switch
  hist = [json.loads(m) for (m,) in con.execute(
      "select e.metrics from trial_epochs e join trials t on t.id = e.trial_id "
      "where t.number < 2")]
  best = min(hist, key=lambda m: m["val_loss"])
  best_l2 = float(np.clip(np.mean(best["hparams.l2"]), 1e-4, 1.0))  # the fallback space
  repaired = sorted(json.loads(p)["l2"] for (p,) in con.execute(
      "select params from trials where number >= 2"))
  assert repaired == pytest.approx(sorted(best_l2 * f for f in (0.1, 1 / 3, 3.0, 10.0)),
                                   rel=1e-3)
  # the report shows the switch
  r = _cli("report", "--store", url, "--out", str(tmp_path / "rep"), "--format", "json")
  assert r.returncode == 0, r.stderr[-2000:]
  page = (tmp_path / "rep" / "report.html").read_text()
  assert "white-box -&gt; repair" in page and "switch" in page


def test_help_lists_the_config_fields_and_exits_0(error_runs):
  r = error_runs[1]["help"]
  assert r["rc"] == 0, r["stderr"][-1500:]
  assert "n_trials = 128" in r["stdout"] and "task_name = 'digits_mlp'" in r["stdout"]
  assert "bundled configs (--config metaopt:NAME)" in r["stdout"] and "quickstart" in r["stdout"]


def test_report_on_a_missing_store_is_one_line_and_creates_nothing(error_runs):
  root, runs = error_runs
  r = runs["missing"]
  assert r["rc"] == 2
  assert r["stderr"].strip().count("\n") == 0 and "no such file" in r["stderr"]
  assert list((root / "missing").iterdir()) == []


def test_parallel_axes_are_labelled_in_parameter_values():
  from metaopt._src.report import _axis_ticks
  from metaopt.spaces import Choice, Float
  ticks = _axis_ticks(Float(1e-4, 1e-1, log=True))
  assert [t[1] for t in ticks] == ["0.0001", "0.001", "0.01", "0.1"]
  np.testing.assert_allclose([t[0] for t in ticks], [0, 1 / 3, 2 / 3, 1], atol=1e-9)  # log axis
  assert _axis_ticks(Choice(["relu", "tanh"])) == [(0.25, "relu"), (0.75, "tanh")]
