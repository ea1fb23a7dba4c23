"""Runs ``run.py`` on many argument lists, each in its own forked process, paying for the
imports (absl, SQLAlchemy, JAX, metaopt) once. For CLI runs that never train: error paths,
help, reports, the resume of a finished study (a forked JAX process must not compile).

    python tests/cli_batch.py RUNS.json  ->  JSON list of {"rc", "stdout", "stderr", "s"}

``RUNS.json`` holds ``{"cwd": dir, "runs": [[arg, ...], ...], "timeout_s": 30}``.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_batch(cwd: str, runs: list[list[str]], timeout_s: float = 30) -> list[dict]:
  """``run.py *args`` for every ``args`` in ``runs``, in ``cwd``; their results."""
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"cwd": cwd, "runs": runs, "timeout_s": timeout_s}, f)
  try:
    p = subprocess.run([sys.executable, __file__, f.name], capture_output=True, text=True,
                       timeout=120 + timeout_s * len(runs), env=os.environ.copy())
  finally:
    os.unlink(f.name)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout)


def snapshot(root: str) -> dict[str, str]:
  """Every path under ``root`` with the SHA-256 of its bytes (``dir`` for directories)."""
  out = {}
  for d, dirs, files in os.walk(root):
    for x in dirs:
      out[os.path.relpath(os.path.join(d, x), root)] = "dir"
    for x in files:
      p = os.path.join(d, x)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _child(args: list[str], out: str, err: str) -> None:
  import run
  o, e = os.open(out, os.O_WRONLY), os.open(err, os.O_WRONLY)
  os.dup2(o, 1)
  os.dup2(e, 2)
  sys.argv = [os.path.join(ROOT, "run.py"), *args]
  code = 0
  try:
    run.console_main(sys.argv)  # what `python run.py ...` runs
  except SystemExit as x:
    code = x.code if isinstance(x.code, int) else (0 if x.code is None else 1)
  except BaseException:  # noqa: BLE001 - reported like an uncaught exception
    import traceback
    traceback.print_exc()
    code = 1
  import atexit
  atexit._run_exitfuncs()  # what the interpreter does at exit (os._exit skips it)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def main() -> None:
  sys.path.insert(0, ROOT)
  import metaopt  # noqa: F401 - imported once, before the forks
  import run  # noqa: F401
  spec = json.load(open(sys.argv[1]))
  os.chdir(spec["cwd"])
  results = []
  tmp = tempfile.mkdtemp()  # not TemporaryDirectory: a child's exit handlers would remove it
  try:
    for i, args in enumerate(spec["runs"]):
      out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
      open(out, "w").close()
      open(err, "w").close()
      t = time.time()
      pid = os.fork()
      if pid == 0:
        _child(args, out, err)
      deadline = t + spec.get("timeout_s", 30)
      while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
          rc = os.waitstatus_to_exitcode(status)
          break
        if time.time() > deadline:
          os.kill(pid, signal.SIGKILL)
          os.waitpid(pid, 0)
          rc = "timeout"
          break
        time.sleep(0.01)
      results.append({"args": args, "rc": rc, "stdout": open(out).read(),
                      "stderr": open(err).read(), "s": time.time() - t})
  finally:
    shutil.rmtree(tmp)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
