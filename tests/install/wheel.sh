#!/usr/bin/env bash
# `make test-wheel`: builds the wheel, installs it (with the exact versions of constraints.txt)
# into a fresh virtual environment OUTSIDE the repository, and there -- in a working directory
# that holds a user's own tasks.py and configs.py -- runs the bundled quickstart (shortened by
# flags: 16 trials x 3 epochs), its report, a report on a missing store, the README's repair
# example (shortened), metaopt.nas.load_table() and the Colab notebook (nbmake).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/metaopt-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "wheel test in $WORK"

"$PY" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/pip" install -q --upgrade pip
# build from the repository's files only (not a stale build/ folder or local venvs)
mkdir "$WORK/src"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -co --exclude-standard -z \
    | tar cf - --null -T - --ignore-failed-read 2>/dev/null) \
    | tar xf - -C "$WORK/src"
else
  (cd "$REPO" && tar cf - --exclude=./.venv --exclude=./.venv-latest --exclude=./build \
    --exclude=./runs .) | tar xf - -C "$WORK/src"
fi
test -f "$WORK/src/pyproject.toml" && test -f "$WORK/src/tasks/__init__.py"
"$BIN/pip" wheel -q --no-deps -w "$WORK/dist" "$WORK/src" 2> "$WORK/build.log" \
  || { cat "$WORK/build.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/metaopt-*.whl)
# this wheel (not a metaopt from an index), the exact versions of constraints.txt; the pip
# cache filled by `make` keeps the install fast
"$BIN/pip" install -q -c "$REPO/constraints.txt" "${WHEEL}[test]"

mkdir -p "$WORK/user"
cd "$WORK/user"
cp "$REPO/notebooks/quickstart.ipynb" .
cat > tasks.py <<'PY'
"""A user's own tasks.py: importing it instead of metaopt.tasks would fail loudly."""
raise ImportError("the user's tasks.py was imported instead of metaopt.tasks")
PY
cat > configs.py <<'PY'
"""A user's own configs.py: importing it instead of metaopt.configs would fail loudly."""
raise ImportError("the user's configs.py was imported instead of metaopt.configs")
PY
export METAOPT_DATA_DIR="$WORK/data"

"$BIN/python" - "$REPO" <<'PY'
import os, sys
import metaopt
from metaopt import configs, hypergrad, spaces, tasks  # noqa: F401
repo = os.path.realpath(sys.argv[1])
for m in (metaopt, tasks, spaces, hypergrad, configs):
  assert not os.path.realpath(m.__file__).startswith(repo), m.__file__
assert "tasks" not in sys.modules and "configs" not in sys.modules
assert not any(os.path.realpath(p or ".").startswith(repo) for p in sys.path), sys.path
print("imports: metaopt from", os.path.dirname(metaopt.__file__))
PY

"$BIN/metaopt" run --help > help.txt
grep -q "n_trials = 128" help.txt && grep -q "task_name" help.txt
"$BIN/metaopt" run --config metaopt:quickstart --config.n_trials=16 --config.population=8 \
  --config.epochs=3 --config.store=sqlite:///runs/quickstart.db --quiet > run.json
"$BIN/python" -c "import json; s = json.load(open('run.json')); assert s['n_complete'] == 16, s"
"$BIN/metaopt" report --store sqlite:///runs/quickstart.db
test -s runs/report_quickstart/report.html
if "$BIN/metaopt" report --store sqlite:///runs/missing.db 2> missing.txt; then
  echo "report on a missing store succeeded" >&2; exit 1
fi
test "$(wc -l < missing.txt)" = 1 && test ! -e runs/missing.db

"$BIN/python" - <<'PY'
import metaopt
from metaopt import tasks
from metaopt.repair import repair, repair_space

# the README's repair example, shortened (4 trials of 1 epoch)
space = repair_space()
broken = {"optimizer": "sgd", "learning_rate": 10.0, "momentum": 0.9}
program = repair(metaopt.random_search(space.dim), space, start=broken, population=4)
result = metaopt.search(program, tasks.get_task("wine_mlp"), space=space, n_trials=4,
                        population=4, epochs=1, target=0.93, progress=False)
assert len(result.trials) == 4 and result.trials[0].params["learning_rate"] == 10.0
table = metaopt.nas.load_table()
assert len(table) > 0
print(f"repair: ok; NAS table: {len(table)} rows from the installed package")
PY

"$BIN/python" -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 quickstart.ipynb
echo "wheel test: passed"
