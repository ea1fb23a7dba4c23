"""Every shipped config validates and builds (before anything compiles)."""

import glob
import importlib.util
import os

import pytest

import metaopt
from metaopt._src import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


ALL_CONFIGS = [p for p in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
               if not os.path.basename(p).startswith("_")]
# search configs; gradient-HPO configs and those with a ``program`` field (NAS, learned
# optimizers, repair) are run by their own packages and tested there
RUN_CONFIGS = [p for p in ALL_CONFIGS if not os.path.basename(p).startswith("hypergrad")
               and "program" not in _load(p)]


@pytest.mark.parametrize("path", [p for p in ALL_CONFIGS if "program" in _load(p)],
                         ids=os.path.basename)
def test_program_configs_name_a_known_program(path):
  cfg = _load(path)
  assert cfg.program in metaopt.PROGRAMS and cfg.name and isinstance(cfg.seed, int)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_config_names_its_program_with_one_key_and_validates(path):
  cfg = _load(path)
  name = metaopt.program_of(cfg)
  assert name == ("whitebox" if os.path.basename(path).startswith("hypergrad")
                  else cfg.get("program", "search"))
  if os.path.basename(path) == "lopt_apply.py":  # needs a meta-trained optimizer on disk
    with pytest.raises(ValueError, match="meta_params"):
      metaopt.validate_config(cfg)
  else:
    metaopt.validate_config(cfg)  # the program module's own validate
  with pytest.raises(ValueError, match="program"):
    metaopt.validate_config({**cfg.to_dict(), "program": "annealing"})


NAS_CONFIGS = [p for p in ALL_CONFIGS if _load(p).get("program") == "nas"]


@pytest.mark.parametrize("path", NAS_CONFIGS, ids=os.path.basename)
def test_nas_configs_validate_with_the_settings_their_names_promise(path):
  from metaopt import nas

  conf = nas.parse_config(_load(path))
  name = os.path.basename(path)
  s = conf.settings
  assert s.method == ("gdas" if name.startswith("gdas") else "darts")
  assert s.order == (2 if name.startswith("darts2") else 1)
  assert s.hpo == ("hypergrad" if "hpo" in name else "none")
  assert conf.safeguard.enabled and conf.fallback["searcher"] != "none"


def test_every_nas_method_has_a_config():
  names = {os.path.basename(p) for p in NAS_CONFIGS}
  assert {"darts_shapes.py", "darts2_shapes.py", "gdas_shapes.py",
          "darts_hpo_shapes.py"} <= names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=os.path.basename)
def test_config_builds(path):
  cfg = _load(path)
  program, task, space, kwargs = config_lib.build(cfg)
  assert isinstance(program, metaopt.Searcher)
  assert kwargs["study"] == cfg.name and kwargs["n_trials"] >= kwargs["population"] >= 1
  assert space.dim >= 1
  if cfg.pruner_name != "none":
    assert program.observe is not None


def test_every_searcher_family_has_a_config():
  names = {(_load(p).searcher_name, _load(p).pruner_name) for p in RUN_CONFIGS}
  searchers = {s for s, _ in names}
  pruners = {p for _, p in names}
  assert {"random", "sobol", "halton", "pbt", "tpe", "gp", "evolution", "cma_es"} <= searchers
  assert {"median", "sh", "asha", "hyperband"} <= pruners
