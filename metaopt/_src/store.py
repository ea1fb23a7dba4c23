"""The trial store: studies, trials, per-epoch metrics and searcher state in SQL.

Any SQLAlchemy URL works; the default is a SQLite file (WAL journal, so readers such as
``run.py report`` never block a running search). Every method that writes does so in one
transaction, so a process killed at any point leaves the store as it was before or after
that write, never in between.

Round protocol used by the driver (and by ``resume``):

* ``start_round``: the trials a round asked for (status ``running``) and the searcher state
  right after ``ask``, in one transaction.
* ``record_epoch``: each trial's metrics for one epoch (upserted, so re-running an epoch
  after a crash overwrites identical values) and the trials that failed or were pruned.
* ``end_round``: final statuses and objectives, and the searcher state after ``tell``.

Worker protocol (several processes sharing one study, see ``metaopt.worker``): a ``rounds``
row per round is a lease. ``claim_round`` atomically takes a stale round (its heartbeat older
than ``stale_after_s``) or asks a new one, ``heartbeat`` keeps the lease alive while training
and ``finish_round`` tells the searcher and closes the round, only while the lease is held.
Each of these transactions starts by writing the study row, which serializes them (a
``RESERVED`` lock on SQLite, a row lock on PostgreSQL), so no two workers read the same state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import random
import sqlite3
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from metaopt._src.types import Trial

_meta = sa.MetaData()

studies = sa.Table(
    "studies", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("direction", sa.String(10), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("code_version", sa.String(100)),
    sa.Column("data_version", sa.Text),
    sa.Column("hardware", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("searcher_state", sa.LargeBinary),
    sa.Column("state_round", sa.Integer, nullable=False, default=-1),
    sa.Column("state_phase", sa.String(10), nullable=False, default="init"),
)

trials = sa.Table(
    "trials", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("u", sa.Text),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("objective", sa.Float),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("failure_reason", sa.Text),
    sa.Column("checkpoint_path", sa.Text),
    sa.Column("last_epoch", sa.Integer),
    sa.Column("started_at", sa.DateTime),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("duration_s", sa.Float),
    sa.UniqueConstraint("study_id", "number", name="uq_trial_number"),
)

trial_epochs = sa.Table(
    "trial_epochs", _meta,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("metrics", sa.Text, nullable=False),
)

events = sa.Table(
    "events", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

# Several objectives (additive: stores written before these tables simply have no rows).
study_objectives = sa.Table(
    "study_objectives", _meta,
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("direction", sa.String(10), nullable=False),
)

trial_values = sa.Table(
    "trial_values", _meta,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("value", sa.Float),
)
_ADDITIVE = {"study_objectives", "trial_values"}  # tables a store opened to read may lack
_BUSY_S = 60.0  # how long a SQLite store waits for another process's lock


rounds = sa.Table(
    "rounds", _meta,
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(200), nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # running, done, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("searcher_state", sa.LargeBinary),  # right after this round's ask
)


@dataclasses.dataclass
class Claim:
  """A round leased to one worker: ``kind`` is ``new`` (just asked), ``retry`` (taken over
  from a worker whose heartbeat stopped) or ``give_up`` (too many attempts: finish it as
  failed)."""

  round: int
  kind: str
  attempts: int
  searcher_state: bytes | None
  trials: list[dict[str, Any]]


# UPDATEs of one row by id, their SET columns the keys of the parameters they run with
_SET_STUDY = studies.update().where(studies.c.id == sa.bindparam("b_id"))
_SET_TRIAL = trials.update().where(trials.c.id == sa.bindparam("b_id"))


def _now() -> dt.datetime:
  return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _clean(x: Any) -> Any:
  """JSON-safe: non-finite floats become None, numpy scalars become Python numbers."""
  if isinstance(x, Mapping):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if hasattr(x, "tolist"):
    return _clean(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _dumps(x: Any) -> str:
  return json.dumps(_clean(x), sort_keys=True)


@dataclasses.dataclass
class StudyRecord:
  """A study row (the Python-side :class:`metaopt.Study` and the population engine share it)."""

  id: int
  name: str
  direction: str
  config: dict[str, Any]
  seed: int
  code_version: str | None
  data_version: dict[str, Any] | None
  hardware: dict[str, Any] | None
  searcher_state: bytes | None
  state_round: int
  state_phase: str


class Store:
  """A SQL trial store at ``url`` (e.g. ``sqlite:///runs/study.db``, ``postgresql://...``)."""

  def __init__(self, url: str, create: bool = True, write: bool | None = None):
    """Opens (``create``: creating if needed) the store at ``url``.

    Args:
      url: SQLAlchemy URL.
      create: create the SQLite file, its directory and the tables if missing. With
        ``create=False`` (reading an existing study: report, resume, evaluate) a missing or
        foreign store raises and nothing is written; a SQLite file that cannot be written
        (e.g. immutable) is then opened read-only (``read_only``).
      write: open the store to write trials (default: ``create``). ``create=False,
        write=True`` (continuing a stored study: ``load_study``) refuses a missing or
        foreign store as ``create=False`` does and a read-only file as ``create=True``
        does, and adds the tables newer than the store.

    Raises:
      ValueError: one line naming the problem (malformed URL, unknown dialect or missing
        driver, a SQLite path that does not exist, is not SQLite, is read-only, or a server
        that cannot be reached), raised before anything is written.
    """
    write = create if write is None else write
    parsed, shown, self.read_only = _checked_url(url, create, write)
    self.url = url
    self._shown = shown
    self._absent: set[str] = set()
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
      path = parsed.database
      if path and path != ":memory:":
        if create:
          os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.read_only:  # no -wal / -shm files, no locks: nothing written beside it
          kwargs["creator"] = functools.partial(
              sqlite3.connect, f"file:{urllib.parse.quote(os.path.abspath(path))}?immutable=1",
              uri=True, check_same_thread=False)
      else:  # one shared connection, or every connection would see its own empty database
        kwargs["poolclass"] = sa.pool.StaticPool
      kwargs["connect_args"] = {"timeout": _BUSY_S, "check_same_thread": False}
    elif parsed.get_backend_name() == "postgresql":
      kwargs["connect_args"] = {"connect_timeout": 5}  # an unreachable server fails fast
    try:
      self.engine = sa.create_engine(url, **kwargs)
    except sa.exc.NoSuchModuleError:
      raise ValueError(f"store {shown!r}: unknown database dialect {parsed.drivername!r}; "
                       "use sqlite:///path/to/file.db or postgresql+psycopg://user@host/db") \
          from None
    except ImportError as e:
      raise ValueError(f"store {shown!r}: the driver for {parsed.drivername!r} is not "
                       f"installed ({e}); for PostgreSQL use postgresql+psycopg://") from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as e:  # e.g. ?timeout=x
      raise ValueError(f"store {shown!r}: {_one_line(e)}") from None
    if parsed.get_backend_name() == "sqlite" and not self.read_only:
      @sa.event.listens_for(self.engine, "connect")
      def _pragmas(conn, _):
        cur = conn.cursor()
        if write:  # persistent in the file: a store opened to read keeps what it has
          _journal_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
    # closed connections at exit: SQLite then removes its -wal and -shm files
    weakref.finalize(self, self.engine.dispose)
    try:
      with self.engine.connect():  # reachable, and a database: before anything is written
        pass
      if not create:
        missing = {t for t in _meta.tables if not sa.inspect(self.engine).has_table(t)}
        self._absent = missing & _ADDITIVE  # a store from before these tables: read as empty
        missing -= _ADDITIVE
        if missing:
          self.engine.dispose()
          raise ValueError(f"store {shown!r}: not a metaopt store (no table "
                           f"{', '.join(sorted(missing))})")
        if not write:
          return
        self._absent = set()  # created below
      for attempt in range(10):  # several processes may create the schema at once
        try:
          _meta.create_all(self.engine)
          break
        except sa.exc.DBAPIError:
          if attempt == 9:
            raise
          time.sleep(0.05 * (attempt + 1))
    except sa.exc.DBAPIError as e:
      self.engine.dispose()
      raise ValueError(f"store {shown!r}: cannot open ({_one_line(e.orig or e)})") from None

  def close(self) -> None:
    """Closes the store's connections (it may be opened again by its URL)."""
    self.engine.dispose()

  # ---------------------------------------------------------------- studies
  def create_study(self, name: str, *, direction: str, config: Mapping[str, Any], seed: int,
                   code_version: str | None = None, data_version: Mapping | None = None,
                   hardware: Mapping | None = None) -> StudyRecord:
    """Creates a study; raises ``ValueError`` if the name is taken."""
    if direction not in ("maximize", "minimize"):
      raise ValueError(f"direction={direction!r}: allowed values are 'maximize', 'minimize'")
    now = _now()
    with self.engine.begin() as c:
      if c.execute(sa.select(studies.c.id).where(studies.c.name == name)).first():
        raise ValueError(f"study {name!r} already exists in {self._shown}; use `resume` or a new "
                         "study name")
      c.execute(studies.insert().values(
          name=name, direction=direction, config=_dumps(config), seed=int(seed),
          code_version=code_version, data_version=_dumps(data_version),
          hardware=_dumps(hardware), created_at=now, updated_at=now, state_round=-1,
          state_phase="init"))
    return self.load_study(name)

  def study_names(self) -> list[str]:
    """The names of the studies in the store, oldest first."""
    with self.engine.connect() as c:
      return [r[0] for r in c.execute(sa.select(studies.c.name).order_by(studies.c.id))]

  def load_study(self, name: str | None = None) -> StudyRecord:
    """Loads a study by name, or the only study in the store when ``name`` is None."""
    with self.engine.connect() as c:
      q = sa.select(studies)
      if name is not None:
        q = q.where(studies.c.name == name)
      rows = c.execute(q).mappings().all()
    if not rows and name is None:
      raise ValueError(f"{self._shown} holds no study")
    if not rows:
      raise ValueError(f"study {name!r} not found in {self._shown}; studies: "
                       f"{self.study_names()}")
    if len(rows) > 1:
      raise ValueError(f"{self._shown} holds several studies {self.study_names()}; pass --study")
    r = rows[0]
    return StudyRecord(r["id"], r["name"], r["direction"], json.loads(r["config"]), r["seed"],
                 r["code_version"], json.loads(r["data_version"] or "null"),
                 json.loads(r["hardware"] or "null"), r["searcher_state"], r["state_round"],
                 r["state_phase"])

  def log_event(self, study_id: int, kind: str, message: str) -> None:
    """Records an event (``kind``: e.g. ``resume``, ``restore``, ``switch``) of a study."""
    with self.engine.begin() as c:
      c.execute(events.insert().values(study_id=study_id, at=_now(), kind=kind,
                                       message=message))

  def events(self, study_id: int) -> list[dict[str, Any]]:
    """A study's events in the order recorded, as dicts (``at``, ``kind``, ``message``)."""
    with self.engine.connect() as c:
      rows = c.execute(sa.select(events).where(events.c.study_id == study_id)
                       .order_by(events.c.id)).mappings().all()
    return [{"at": r["at"].isoformat(), "kind": r["kind"], "message": r["message"]}
            for r in rows]

  # ---------------------------------------------------------------- rounds
  def start_round(self, study_id: int, rnd: int, new_trials: Sequence[Mapping[str, Any]],
                  searcher_state: bytes, checkpoint_path: str | None = None) -> list[int]:
    """Inserts a round's trials as ``running`` with the post-``ask`` searcher state."""
    now = _now()
    with self.engine.begin() as c:
      ids = []
      for t in new_trials:  # statements with parameters: compiled once, cached
        res = c.execute(trials.insert(), {
            "study_id": study_id, "number": int(t["number"]), "round": rnd,
            "params": _dumps(t["params"]), "u": _dumps(t.get("u")), "status": "running",
            "seed": int(t["seed"]), "started_at": now, "checkpoint_path": checkpoint_path})
        ids.append(res.inserted_primary_key[0])
      c.execute(_SET_STUDY, {"b_id": study_id, "searcher_state": searcher_state,
                             "state_round": rnd, "state_phase": "asked", "updated_at": now})
    return ids

  def round_trials(self, study_id: int, rnd: int) -> list[dict[str, Any]]:
    """The stored rows of round ``rnd``'s trials, as dicts."""
    with self.engine.connect() as c:
      rows = c.execute(sa.select(trials).where(
          (trials.c.study_id == study_id) & (trials.c.round == rnd))
          .order_by(trials.c.number)).mappings().all()
    return [dict(r) for r in rows]

  def record_epoch(self, trial_ids: Sequence[int], epoch: int,
                   metrics: Sequence[Mapping[str, Any]],
                   stopped: Iterable[tuple[int, str, str | None, float | None]] = ()) -> None:
    """Upserts one epoch of metrics per trial, and marks ``(id, status, reason, objective)``
    trials that stopped (failed / pruned) at this epoch."""
    now = _now()
    with self.engine.begin() as c:
      c.execute(trial_epochs.delete().where(
          trial_epochs.c.trial_id.in_(list(trial_ids)) & (trial_epochs.c.epoch == epoch)))
      if trial_ids:
        c.execute(trial_epochs.insert(), [
            {"trial_id": int(i), "epoch": int(epoch), "metrics": _dumps(m)}
            for i, m in zip(trial_ids, metrics, strict=True)])
        c.execute(trials.update().where(trials.c.id.in_(list(trial_ids))).values(
            last_epoch=epoch))
      for tid, status, reason, obj in stopped:
        c.execute(trials.update().where(trials.c.id == int(tid)).values(
            status=status, failure_reason=reason, objective=_finite(obj), finished_at=now))

  def end_round(self, study_id: int, rnd: int,
                results: Sequence[tuple[int, str, float | None, str | None]],
                searcher_state: bytes, duration_s: float | None = None) -> None:
    """Final ``(id, status, objective, reason)`` per trial and the post-``tell`` state;
    ``duration_s`` (when given) as every trial's duration."""
    now = _now()
    took = {} if duration_s is None else {"duration_s": duration_s}
    with self.engine.begin() as c:
      for tid, status, obj, reason in results:
        c.execute(trials.update().where(trials.c.id == int(tid)).values(
            status=status, objective=_finite(obj), failure_reason=reason, finished_at=now,
            **took))
      c.execute(studies.update().where(studies.c.id == study_id).values(
          searcher_state=searcher_state, state_round=rnd, state_phase="told", updated_at=now))

  # ---------------------------------------------------------------- workers
  @staticmethod
  def _lock(c, study_id: int, now: dt.datetime) -> None:
    """Serializes worker transactions on a study: the first statement writes its row."""
    c.execute(studies.update().where(studies.c.id == study_id).values(updated_at=now))

  def claim_round(self, study_id: int, worker: str, n_rounds: int,
                  make_round: Callable[[bytes | None, int],
                                       tuple[bytes, Sequence[Mapping[str, Any]]]], *,
                  stale_after_s: float = 60.0, max_attempts: int = 3,
                  checkpoint_path: Callable[[int], str] | None = None
                  ) -> Claim | str:
    """Leases one round to ``worker`` in one serialized transaction.

    A running round whose heartbeat is older than ``stale_after_s`` is taken over first
    (``retry``, or ``give_up`` once it has had ``max_attempts``); otherwise the next new
    round is asked by ``make_round(searcher_state, round) -> (state_after_ask, trials)``,
    called inside the transaction, and its trials inserted as ``running``. Returns the
    :class:`Claim`, or ``"wait"`` (rounds in flight elsewhere) or ``"done"``.
    """
    now = _now()
    with self.engine.begin() as c:
      self._lock(c, study_id, now)
      rows = c.execute(sa.select(rounds).where(rounds.c.study_id == study_id)
                       .order_by(rounds.c.round)).mappings().all()
      cutoff = now - dt.timedelta(seconds=stale_after_s)
      for r in rows:
        if r["status"] == "running" and r["heartbeat_at"] < cutoff:
          attempts = r["attempts"] + 1
          kind = "give_up" if r["attempts"] >= max_attempts else "retry"
          c.execute(rounds.update().where((rounds.c.study_id == study_id)
                                          & (rounds.c.round == r["round"])).values(
              worker=worker, attempts=attempts, heartbeat_at=now))
          c.execute(events.insert().values(
              study_id=study_id, at=now, kind="worker_lost",
              message=f"round {r['round']}: worker {r['worker']} silent since "
                      f"{r['heartbeat_at'].isoformat()}; {kind} by {worker} "
                      f"(attempt {attempts})"))
          ts = c.execute(sa.select(trials).where(
              (trials.c.study_id == study_id) & (trials.c.round == r["round"]))
              .order_by(trials.c.number)).mappings().all()
          return Claim(r["round"], kind, attempts, r["searcher_state"], [dict(t) for t in ts])
      rnd = len(rows)
      if rnd >= n_rounds:
        return "wait" if any(r["status"] == "running" for r in rows) else "done"
      state = c.execute(sa.select(studies.c.searcher_state).where(
          studies.c.id == study_id)).scalar()
      new_state, new_trials = make_round(state, rnd)
      path = checkpoint_path(rnd) if checkpoint_path else None
      for t in new_trials:
        c.execute(trials.insert().values(
            study_id=study_id, number=int(t["number"]), round=rnd, params=_dumps(t["params"]),
            u=_dumps(t.get("u")), status="running", seed=int(t["seed"]), started_at=now,
            checkpoint_path=path))
      c.execute(rounds.insert().values(study_id=study_id, round=rnd, worker=worker,
                                       status="running", attempts=1, heartbeat_at=now,
                                       started_at=now, searcher_state=new_state))
      c.execute(studies.update().where(studies.c.id == study_id).values(
          searcher_state=new_state, state_round=rnd, state_phase="worker"))
      ts = c.execute(sa.select(trials).where(
          (trials.c.study_id == study_id) & (trials.c.round == rnd))
          .order_by(trials.c.number)).mappings().all()
    return Claim(rnd, "new", 1, new_state, [dict(t) for t in ts])

  def heartbeat(self, study_id: int, rnd: int, worker: str) -> bool:
    """Marks ``worker`` alive on round ``rnd``; False when it no longer holds the lease."""
    with self.engine.begin() as c:
      n = c.execute(rounds.update().where(
          (rounds.c.study_id == study_id) & (rounds.c.round == rnd)
          & (rounds.c.worker == worker) & (rounds.c.status == "running")).values(
          heartbeat_at=_now())).rowcount
    return n == 1

  def finish_round(self, study_id: int, rnd: int, worker: str,
                   results: Sequence[tuple[int, str, float | None, str | None]],
                   tell: Callable[[bytes | None], bytes], duration_s: float | None = None,
                   status: str = "done") -> bool:
    """Closes a leased round: final ``(id, status, objective, reason)`` per trial, and the
    study's searcher state replaced by ``tell(current state)`` (called inside the serialized
    transaction). Does nothing and returns False when ``worker`` lost the lease."""
    now = _now()
    with self.engine.begin() as c:
      self._lock(c, study_id, now)
      held = c.execute(sa.select(rounds.c.round).where(
          (rounds.c.study_id == study_id) & (rounds.c.round == rnd)
          & (rounds.c.worker == worker) & (rounds.c.status == "running"))).first()
      if held is None:
        return False
      state = c.execute(sa.select(studies.c.searcher_state).where(
          studies.c.id == study_id)).scalar()
      new_state = tell(state)
      for tid, st, obj, reason in results:
        c.execute(trials.update().where(trials.c.id == int(tid)).values(
            status=st, objective=_finite(obj), failure_reason=reason, finished_at=now,
            duration_s=duration_s))
      c.execute(rounds.update().where((rounds.c.study_id == study_id)
                                      & (rounds.c.round == rnd)).values(
          status=status, finished_at=now, heartbeat_at=now))
      c.execute(studies.update().where(studies.c.id == study_id).values(
          searcher_state=new_state))
    return True

  def rounds(self, study_id: int) -> list[dict[str, Any]]:
    """The worker leases of a study (empty for studies run by ``search``)."""
    with self.engine.connect() as c:
      rows = c.execute(sa.select(rounds).where(rounds.c.study_id == study_id)
                       .order_by(rounds.c.round)).mappings().all()
    return [{k: v for k, v in r.items() if k != "searcher_state"} for r in rows]

  # ---------------------------------------------------------------- single trials
  def finish_trials(self, study_id: int, results: Sequence[tuple[int, str, float | None,
                                                                  str | None, float | None]],
                    metrics: Mapping[int, Mapping[str, Any]] | None = None,
                    searcher_state: bytes | None = None, rnd: int | None = None) -> None:
    """Final ``(id, status, objective, reason, duration_s)`` of single trials (the
    :class:`metaopt.Study` ``tell``), their metrics as epoch 0, and, when a whole ask batch
    ``rnd`` is told, the searcher state after ``tell``; one transaction."""
    now = _now()
    with self.engine.begin() as c:
      for tid, status, obj, reason, duration in results:
        c.execute(_SET_TRIAL, {"b_id": int(tid), "status": status, "objective": _finite(obj),
                               "failure_reason": reason, "finished_at": now,
                               "duration_s": duration})
      for tid, m in (metrics or {}).items():
        c.execute(trial_epochs.delete().where(trial_epochs.c.trial_id == int(tid)))
        c.execute(trial_epochs.insert().values(trial_id=int(tid), epoch=0, metrics=_dumps(m)))
        c.execute(trials.update().where(trials.c.id == int(tid)).values(last_epoch=0))
      if searcher_state is not None:
        c.execute(_SET_STUDY, {"b_id": study_id, "searcher_state": searcher_state,
                               "state_round": rnd, "state_phase": "told", "updated_at": now})

  def update_config(self, study_id: int, config: Mapping[str, Any]) -> None:
    """Replaces a study's recorded config (e.g. to add the provenance of a warm start)."""
    with self.engine.begin() as c:
      c.execute(studies.update().where(studies.c.id == study_id).values(
          config=_dumps(config), updated_at=_now()))

  def trial_ids(self, study_id: int) -> dict[int, int]:
    """Trial number -> row id of every trial of a study."""
    with self.engine.connect() as c:
      rows = c.execute(sa.select(trials.c.number, trials.c.id).where(
          trials.c.study_id == study_id)).all()
    return {int(n): int(i) for n, i in rows}

  # ---------------------------------------------------------------- objectives
  def set_objectives(self, study_id: int, objectives: Sequence[tuple[str, str]]) -> None:
    """Declares a study's objectives ``[(name, direction), ...]`` (once, at creation)."""
    for name, d in objectives:
      if d not in ("maximize", "minimize"):
        raise ValueError(f"objectives: direction {d!r} of {name!r}: allowed values are "
                         "'maximize', 'minimize'")
    with self.engine.begin() as c:
      c.execute(study_objectives.delete().where(study_objectives.c.study_id == study_id))
      c.execute(study_objectives.insert(), [
          {"study_id": study_id, "idx": i, "name": str(n), "direction": d}
          for i, (n, d) in enumerate(objectives)])

  def objectives(self, study_id: int) -> list[tuple[str, str]]:
    """The declared objectives of a study; empty for a single-objective study."""
    if "study_objectives" in self._absent:
      return []
    with self.engine.connect() as c:
      rows = c.execute(sa.select(study_objectives).where(
          study_objectives.c.study_id == study_id).order_by(study_objectives.c.idx)).mappings()
      return [(r["name"], r["direction"]) for r in rows]

  def record_values(self, values: Mapping[int, Sequence[float | None]]) -> None:
    """Every objective value of trials ``{trial id: [v_0, ..., v_m-1]}`` (upserted)."""
    with self.engine.begin() as c:
      ids = [int(i) for i in values]
      if not ids:
        return
      c.execute(trial_values.delete().where(trial_values.c.trial_id.in_(ids)))
      c.execute(trial_values.insert(), [
          {"trial_id": int(i), "idx": j, "value": _finite(v)}
          for i, vs in values.items() for j, v in enumerate(vs)])

  # ---------------------------------------------------------------- reading
  def trials(self, study_id: int, with_metrics: bool = True) -> list[Trial]:
    """All trials of a study in number order, with their per-epoch metrics."""
    with self.engine.connect() as c:
      rows = c.execute(sa.select(trials).where(trials.c.study_id == study_id)
                       .order_by(trials.c.number)).mappings().all()
      per: dict[int, list[dict[str, Any]]] = {}
      if with_metrics and rows:
        ep = c.execute(sa.select(trial_epochs).join(trials).where(
            trials.c.study_id == study_id).order_by(trial_epochs.c.trial_id,
                                                    trial_epochs.c.epoch)).mappings()
        for r in ep:
          per.setdefault(r["trial_id"], []).append({"epoch": r["epoch"],
                                                    **json.loads(r["metrics"])})
      vals: dict[int, list[float | None]] = {}
      if rows and "trial_values" not in self._absent:
        for r in c.execute(sa.select(trial_values).join(trials).where(
            trials.c.study_id == study_id).order_by(trial_values.c.trial_id,
                                                    trial_values.c.idx)).mappings():
          vals.setdefault(r["trial_id"], []).append(r["value"])
    return [Trial(number=r["number"], params=json.loads(r["params"]), status=r["status"],
                  objective=r["objective"], seed=r["seed"], round=r["round"],
                  metrics=per.get(r["id"], []), failure_reason=r["failure_reason"],
                  checkpoint_path=r["checkpoint_path"], u=json.loads(r["u"] or "null"),
                  duration_s=r["duration_s"], values=vals.get(r["id"])) for r in rows]


def _journal_wal(cur: sqlite3.Cursor) -> None:
  """Puts a SQLite file in WAL mode. Switching a new file takes a write lock on top of a
  read lock, and SQLite does not wait for that lock (its busy timeout is skipped): when
  several processes open a new store at once (a multi-host search, workers) the ones that
  lose get "database is locked" at once. They retry here, for up to the busy timeout."""
  deadline, pause = time.monotonic() + _BUSY_S, 0.002
  while True:
    try:
      cur.execute("PRAGMA journal_mode=WAL")
      return
    except sqlite3.OperationalError as e:
      if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
        raise
    time.sleep(pause * (0.5 + random.random()))  # jittered: racing openers fall apart
    pause = min(2 * pause, 0.2)


def check_url(url: str) -> None:
  """Checks a store URL as :class:`Store` would before writing (malformed, unknown dialect,
  a SQLite URL with a host or ``uri=true``, a SQLite path that is a directory, not SQLite or
  read-only); one ``ValueError`` naming the problem. Opens and creates nothing."""
  _checked_url(url, create=True, write=True)


def _checked_url(url: str, create: bool, write: bool) -> tuple[sa.engine.URL, str, bool]:
  """``(parsed, shown, read_only)`` of a store URL checked before anything opens it:
  ``shown`` without the password, ``read_only`` for an existing SQLite file that cannot be
  written (see :func:`_check_sqlite_file`); one ``ValueError`` naming the problem."""
  if not isinstance(url, str) or "://" not in url:
    raise ValueError(f"store={url!r}: must be an SQLAlchemy URL such as "
                     "'sqlite:///runs/quickstart.db' or 'postgresql://user@host/db'")
  parsed = _parse_url(url)
  shown = parsed.render_as_string(hide_password=True)
  read_only = False
  if parsed.get_backend_name() == "sqlite":
    if parsed.query.get("uri") not in (None, "false", "0"):
      raise ValueError(f"store={url!r}: SQLite URI filenames (uri=true) are not supported; "
                       "name the file: sqlite:///path/to/file.db")
    path = parsed.database
    if path and path != ":memory:":
      read_only = _check_sqlite_file(shown, path, create, write)
  return parsed, shown, read_only


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split("\n[SQL:")[0].split())


def _parse_url(url: str) -> sa.engine.URL:
  """The parsed URL; ValueError (one line) for a malformed one or a SQLite URL with a host
  (``sqlite://tmp/x.db``: a relative path needs three slashes, an absolute one four)."""
  try:
    parsed = sa.engine.make_url(url)
  except (sa.exc.ArgumentError, ValueError) as e:
    raise ValueError(f"store={url!r}: not an SQLAlchemy URL ({_one_line(e)})") from None
  url = parsed.render_as_string(hide_password=True)
  try:
    parsed.get_dialect()
  except sa.exc.NoSuchModuleError:
    raise ValueError(f"store={url!r}: unknown database dialect {parsed.drivername!r}; use "
                     "sqlite:///path/to/file.db or postgresql+psycopg://user@host/db") from None
  except ImportError:
    pass  # a known dialect whose driver is missing: create_engine says which
  if parsed.get_backend_name() == "sqlite" and (parsed.host or parsed.port or parsed.username):
    raise ValueError(f"store={url!r}: a SQLite URL has no host; write "
                     f"sqlite:///{parsed.host}/{parsed.database} (relative path) or "
                     f"sqlite:////{parsed.host}/{parsed.database} (absolute path)")
  return parsed


def _check_sqlite_file(url: str, path: str, create: bool, write: bool) -> bool:
  """Checks a SQLite store's path before anything opens it; returns whether the file
  exists and cannot be written. ValueError for a missing file (unless ``create``), a
  directory, a file that is not SQLite, or a read-only file the store would write."""
  if not os.path.exists(path):
    if not create:
      raise ValueError(f"store {url!r}: no such file {os.path.abspath(path)}")
    return False
  if os.path.isdir(path):
    raise ValueError(f"store {url!r}: {os.path.abspath(path)} is a directory, not a SQLite file")
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except OSError as e:
    raise ValueError(f"store {url!r}: cannot read {os.path.abspath(path)} ({e.strerror})") \
        from None
  if head and head != b"SQLite format 3\x00":
    raise ValueError(f"store {url!r}: {os.path.abspath(path)} is not a SQLite database")
  read_only = not os.access(path, os.W_OK) or not os.access(
      os.path.dirname(os.path.abspath(path)), os.W_OK)
  if read_only and write:
    raise ValueError(f"store {url!r}: {os.path.abspath(path)} is read-only; a search "
                     "records its trials there")
  if read_only and not head:
    raise ValueError(f"store {url!r}: {os.path.abspath(path)} is empty and read-only")
  return read_only


def _finite(x: float | None) -> float | None:
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None
