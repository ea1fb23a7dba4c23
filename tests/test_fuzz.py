"""Bad input fuzzing: any config or space spec gives one clear ValueError (or a working
search program), never an error from inside a compiled kernel, and a bad run attempt leaves
an existing store exactly as it was; store URLs and run.py argument lists give one message,
never a traceback, and write nothing but the store they name."""

import math
import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metaopt
from metaopt import tasks
from metaopt._src import config as config_lib
from metaopt._src import registry
from metaopt.configs import quickstart
from metaopt.spaces import from_spec

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                              st.integers(), max_size=2))
number = st.one_of(st.floats(-10, 10), st.integers(-5, 5), st.just(0.0), st.just(1e-4),
                   st.just(float("nan")), st.just(float("inf")))


@st.composite
def param_specs(draw):
  kind = draw(st.sampled_from(["float", "int", "choice", "fixed", "bool", "uniform", None]))
  spec = {} if kind is None else {"type": kind}
  if kind in ("float", "int"):
    spec["lo"], spec["hi"] = draw(number), draw(number)
    if draw(st.booleans()):
      spec["log"] = draw(st.one_of(st.booleans(), junk))
  elif kind == "choice":
    spec["choices"] = draw(st.one_of(st.lists(st.sampled_from(["a", "b", 1, 2.5, None]),
                                              max_size=4), junk))
  elif kind == "fixed":
    spec["value"] = draw(junk)
  if draw(st.integers(0, 4)) == 0:
    spec[draw(st.sampled_from(["when", "structural", "step", "default", "x"]))] = draw(junk)
  return spec


space_specs = st.one_of(
    st.dictionaries(st.sampled_from(["lr", "wd", "width", "act", "depth"]), param_specs(),
                    max_size=4),
    junk)


@SETTINGS
@given(spec=space_specs, seed=st.integers(0, 2**16))
def test_space_specs_build_a_working_space_or_raise_one_value_error(spec, seed):
  try:
    space = from_spec(spec)
  except ValueError as e:
    assert str(e) and "\n" not in str(e).strip()
    return
  # a space that was accepted encodes and decodes under jit without error
  u = jax.random.uniform(jax.random.key(seed), (5, space.dim))
  h = jax.jit(space.decode)(u)
  params = space.to_python_batch(jax.device_get(h))
  assert len(params) == 5
  for name, p in space.params.items():
    lo, hi = getattr(p, "lo", None), getattr(p, "hi", None)
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
      vals = np.asarray(h[name], np.float64)
      assert np.all(vals >= lo - 1e-4 * max(1.0, abs(lo)))
      assert np.all(vals <= hi + 1e-4 * max(1.0, abs(hi)))


BASE = quickstart.get_config().to_dict()
FIELDS = sorted(config_lib.FIELDS)


def _options(factory):
  import inspect
  return [p for p in inspect.signature(factory).parameters if p not in ("dim", "n_epochs")]


@st.composite
def bad_configs(draw):
  cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
  cfg.update(n_trials=8, population=4, epochs=3)
  for _ in range(draw(st.integers(1, 3))):
    field = draw(st.sampled_from(FIELDS + ["unknown_field"]))
    if field in ("searcher", "pruner"):
      name = draw(st.sampled_from(sorted(registry.SEARCHERS) if field == "searcher"
                                  else sorted(registry.PRUNERS)))
      factory = (registry.SEARCHERS if field == "searcher" else registry.PRUNERS)[name]
      cfg[f"{field}_name"] = name
      keys = st.sampled_from(_options(factory) + ["bogus"])
      cfg[field] = draw(st.dictionaries(keys, junk, min_size=1, max_size=2))
    elif field == "space":
      cfg[field] = draw(space_specs)
    elif field in ("task_name", "searcher_name", "pruner_name"):
      cfg[field] = draw(st.one_of(junk, st.sampled_from(["digits_mlp", "tpe", "asha",
                                                         "none", "random"])))
    else:
      cfg[field] = draw(junk)
  return cfg


@SETTINGS
@given(cfg=bad_configs())
def test_configs_give_a_working_program_or_one_value_error(cfg):
  if cfg.get("searcher_name") == "sobol":  # sobol's table is slow to build; same validation
    cfg["searcher_name"] = "halton"
    cfg["searcher"] = {k: v for k, v in cfg["searcher"].items() if k in ("dim", "scramble")} \
        if isinstance(cfg.get("searcher"), dict) else cfg.get("searcher")
  try:
    program, task, space, kwargs = config_lib.build(cfg)
  except ValueError as e:
    assert str(e)
    return
  # accepted: the program's functions run compiled, with the config's sizes
  n = min(kwargs["population"], kwargs["n_trials"])
  key = jax.random.key(0)
  state = jax.jit(program.init)(key)
  state, u = jax.jit(program.ask, static_argnums=2)(state, key, n)
  assert u.shape == (n, space.dim)
  jax.jit(program.tell)(state, u, jnp.zeros(n), jnp.zeros(n, jnp.int32))
  assert isinstance(task, tasks.Task)


def _dump(db):
  con = sqlite3.connect(db)
  try:
    return {t: con.execute(f"select * from {t} order by 1, 2").fetchall()
            for (t,) in con.execute("select name from sqlite_master where type = 'table'")}
  finally:
    con.close()


@pytest.fixture(scope="module")
def stored_study(tmp_path_factory):
  db = str(tmp_path_factory.mktemp("fuzz") / "s.db")
  cfg = {**BASE, "name": "kept", "n_trials": 4, "population": 4, "epochs": 1,
         "batch_size": 128, "store": f"sqlite:///{db}", "checkpoint_every_s": 0.0}
  program, task, space, kwargs = config_lib.build(cfg)
  metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]), config=cfg,
                 progress=False, **kwargs)
  return cfg, db, _dump(db)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutation=bad_configs(), same_name=st.booleans())
def test_a_bad_run_attempt_leaves_the_store_unchanged(stored_study, mutation, same_name):
  """What `run.py run` does with a config, against a store holding a finished study: a bad
  config fails with one ValueError before anything is written."""
  cfg, db, before = stored_study
  bad = {**mutation, "store": cfg["store"], "name": "kept" if same_name else "other",
         "n_trials": cfg["n_trials"] if same_name else mutation["n_trials"]}
  if bad.get("searcher_name") == "sobol":
    bad["searcher_name"] = "random"
  try:
    cfg_ok = config_lib.validate(bad)
    program, task, space, kwargs = config_lib.build(cfg_ok)
    if cfg_ok["name"] != "kept":  # a valid config for a new study would simply run
      return
    metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]),
                   config=cfg_ok, progress=False, **kwargs)
  except ValueError:
    pass
  after = _dump(db)
  if bad == {**cfg, "store": cfg["store"]}:
    return
  # the kept study's trials, epochs and state are untouched (a resume only adds an event)
  for table in ("trials", "trial_epochs"):
    assert after[table] == before[table]
  keep = [c for c in range(len(before["studies"][0])) if c != 9]  # updated_at
  assert [[r[c] for c in keep] for r in after["studies"]] == \
      [[r[c] for c in keep] for r in before["studies"]]


def test_changed_config_for_an_existing_study_is_refused_before_writing(stored_study):
  cfg, db, before = stored_study
  bad = {**cfg, "batch_size": 64}
  program, task, space, kwargs = config_lib.build(bad)
  with pytest.raises(ValueError, match=r"exists with a different config \(fields \['batch_size"):
    metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]), config=bad,
                   progress=False, **kwargs)
  after = _dump(db)
  assert after["trials"] == before["trials"] and after["events"] == before["events"]


# ------------------------------------------------------------ store URLs and CLI arguments
_SEGMENT = st.text(alphabet="abx.-_ %?=&:#@é", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))


@st.composite
def store_urls(draw):
  """URLs near the ones people type: known and unknown dialects, 0 to 4 slashes, hosts
  (only a local port that refuses), odd path characters and query strings. Paths are
  relative (or inside the test's directory), so a store that opens lands there."""
  scheme = draw(st.sampled_from(["sqlite", "sqlite+pysqlite", "SQLite", "foo", "",
                                 "postgresql+psycopg", "postgresql", "mysql", "sqlite+foo"]))
  sep = draw(st.sampled_from([":", ":/", "://", ":///", "://tmp/", "://{refused}/",
                              "://u:pw@{refused}/", ":////{box}/"]))
  path = "/".join(draw(st.lists(_SEGMENT, max_size=3)))
  query = draw(st.sampled_from(["", "?mode=ro", "?timeout=x", "?uri=true", "?foo=1",
                                "?check_same_thread=0", "#frag"]))
  return scheme + sep + path + query


def _refused_port():
  import socket
  s = socket.socket()
  s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
  return s


def _new_paths(before, after):
  return sorted(set(after) - set(before))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(url=store_urls(), create=st.booleans())
def test_store_urls_open_or_raise_one_value_error_and_write_only_the_store(url, create):
  import os
  import tempfile

  from cli_batch import snapshot
  box = tempfile.mkdtemp(prefix="metaopt-fuzz-")
  refused = _refused_port()
  url = url.format(refused=f"127.0.0.1:{refused.getsockname()[1]}", box=box.lstrip("/"))
  here = os.getcwd()
  os.chdir(box)
  try:
    before = snapshot(box)
    try:
      metaopt.Store(url, create=create).close()
      opened = True
    except ValueError as e:
      assert str(e).strip() and "\n" not in str(e).strip() and "Traceback" not in str(e)
      opened = False
    new = _new_paths(before, snapshot(box))
    if not (opened and create):
      assert new == [] and snapshot(box) == before, (url, new)
    else:  # only the named SQLite file (and the directories on its path) appeared
      import sqlalchemy as sa
      db = sa.engine.make_url(url).database
      rel = os.path.relpath(os.path.join(box, db), box) if db not in (None, "", ":memory:") \
          else None
      allowed = set() if rel is None else {rel}
      while rel and os.path.dirname(rel):
        rel = os.path.dirname(rel)
        allowed.add(rel)
      assert set(new) <= allowed, (url, new)
  finally:
    os.chdir(here)
    refused.close()
    import shutil
    shutil.rmtree(box, ignore_errors=True)


_CFG_FILES = ["nothere.py", "syntax.py", "raises.py", "configs/quickstart.py", ""]
_NOT_CREATABLE = ["foo://x/y.db", "sqlite://tmp/a/x.db", "sqlite:///junk.db", "sqlite:///keep",
                  "postgresql+psycopg://u@{refused}/db", "sqlite:///x.db?uri=true", "", "x.db"]
_CREATABLE = ["sqlite:///missing/x.db", "sqlite:///new.db", "sqlite:///keep/y.db"]


@st.composite
def cli_args(draw):
  """Argument lists for run.py that can never train: a command (or junk), flags with odd
  values, stores that do not exist or are not stores, configs that do not load or carry a
  bad override."""
  args = [draw(st.sampled_from(["run", "resume", "report", "evaluate", "bogus", "--", ""]))]
  for _ in range(draw(st.integers(0, 4))):
    kind = draw(st.sampled_from(["store", "study", "format", "top_k", "flag", "text",
                                 "config"]))
    if kind == "store":
      args.append(f"--store={draw(st.sampled_from(_NOT_CREATABLE + _CREATABLE))}")
    elif kind == "study":
      args.append(f"--study={draw(st.text(max_size=4))}")
    elif kind == "format":
      args.append(f"--format={draw(st.sampled_from(['json', 'text', 'xml', '']))}")
    elif kind == "top_k":
      args.append(f"--top_k={draw(st.sampled_from(['0', '-1', 'x', '3', '']))}")
    elif kind == "flag":
      args.append(draw(st.sampled_from(["--bogus", "--quiet", "--noquiet", "--worker",
                                        "--config.", "--config.epochs", "-x", "--"])))
    elif kind == "text":
      args.append(draw(st.text(alphabet="ab-=. /\\'\"é", max_size=6)))
    else:  # a config file, and, for one that loads, always one bad override
      path = draw(st.sampled_from(_CFG_FILES))
      args.append(f"--config={path}")
      if path == "configs/quickstart.py":
        args.append(draw(st.sampled_from([
            "--config.bogus=1", "--config.n_trials=0", "--config.epochs=x",
            "--config.searcher_name=nope",
            f"--config.store={draw(st.sampled_from(_NOT_CREATABLE))}"])))
  return args


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(cli_args(), min_size=24, max_size=24))
def test_cli_arguments_give_a_message_not_a_traceback_and_write_nothing(runs):
  """No argument list makes run.py print a traceback, and none writes a file (the stores
  named do not exist, are not stores, or are on a path that a read may not create)."""
  import os
  import shutil
  import socket
  import tempfile

  from cli_batch import ROOT, run_batch, snapshot
  box = tempfile.mkdtemp(prefix="metaopt-fuzz-cli-")
  refused = socket.socket()
  refused.bind(("127.0.0.1", 0))
  port = f"127.0.0.1:{refused.getsockname()[1]}"
  try:
    os.makedirs(os.path.join(box, "keep"))
    os.symlink(os.path.join(ROOT, "configs"), os.path.join(box, "configs"))
    with open(os.path.join(box, "junk.db"), "wb") as f:
      f.write(b"not a database\n" * 40)
    with open(os.path.join(box, "syntax.py"), "w") as f:
      f.write("def get_config(:\n")
    with open(os.path.join(box, "raises.py"), "w") as f:
      f.write("def get_config():\n  raise ValueError('boom')\n")
    runs = [[a.replace("{refused}", port) for a in r] for r in runs]
    before = snapshot(box)
    results = run_batch(box, runs, timeout_s=20)
    assert snapshot(box) == before, runs
  finally:
    refused.close()
    shutil.rmtree(box, ignore_errors=True)
  for r in results:
    assert r["rc"] in (0, 2), r  # 1: an uncaught exception
    assert "Traceback" not in r["stderr"], r
    if r["rc"] == 2:
      assert r["stderr"].strip().startswith("error: ") or "FATAL Flags parsing error" in \
          r["stderr"] or "USAGE" in r["stderr"], r


def test_running_a_finished_study_again_writes_nothing(stored_study):
  cfg, db, before = stored_study
  program, task, space, kwargs = config_lib.build(cfg)
  res = metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]),
                       config=cfg, progress=False, **kwargs)
  assert len(res.trials) == cfg["n_trials"]
  assert _dump(db) == before  # not even a resume event
