"""``sqlite:///path.db``: the default store, one file, shared safely by the processes of one machine.

Durability: WAL journal, ``synchronous=NORMAL`` by default. A write that returned is in the
database file's write-ahead log, so it survives the writing process being killed at any
moment (SIGKILL is tested). An operating-system crash or power cut may lose the last
transactions before a checkpoint; ``?synchronous=full`` fsyncs every commit and survives
those too, at about a fifth of the single-write rate (see docs/benchmarks.md).

Concurrency: each write is one ``BEGIN IMMEDIATE`` transaction, so processes serialise on the
file lock (waiting up to ``busy_timeout`` seconds); work is claimed with one
``UPDATE … RETURNING``. Calls run on the caller's thread: SQLite answers in microseconds and a
thread hop would cost more than the work. Another process's commits are noticed through
``PRAGMA data_version`` by the watchdog thread, which wakes `wait_for_rollouts` callers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic_core import from_json, to_json

from agl.core.errors import AglError, InvalidInput, StoreUnavailable
from agl.core.ids import sequence_clock
from agl.core.store.base import Page, StoreStatistics
from agl.core.store.lifecycle import DEFAULT_MAX_SPAN_BYTES, LifecycleStore, StoredSpan
from agl.core.store.query import check_filter, check_id, check_query, check_rollout_filters
from agl.core.store.sqlite_schema import MIGRATIONS
from agl.core.types import Attempt, ResourcesUpdate, Rollout, RolloutConfig, Span, Worker
from agl.core.types.rollouts import ATTEMPT_STATUSES, ROLLOUT_STATUSES
from agl.core.types.spans import MAX_INT64
from agl.core.types.workers import WORKER_STATUSES

Synchronous = Literal["normal", "full"]

_ROLLOUT_COLUMNS = "rollout_id, status, mode, resources_id, start_time, end_time, input, config, metadata"
_ATTEMPT_COLUMNS = (
    "rollout_id, attempt_id, sequence_id, status, worker_id, start_time, end_time, last_heartbeat_time, metadata"
)
BACKSTOP_CHECKPOINT_PAGES = 10_000
CHECKPOINT_NOW_ROWS = 256
"""A transaction writing this many rows wakes the checkpoint at once (see `_transaction`)."""
MMAP_BYTES = 256 * 1024 * 1024
_NEXT_QUEUE_SEQ = "(SELECT coalesce(max(queue_seq), 0) + 1 FROM rollouts WHERE queue_seq IS NOT NULL)"


_UPSERT_SPAN = (
    "INSERT INTO spans (rollout_id, attempt_id, span_id, sequence_id, name, start_time, end_time, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, attempt_id, span_id)"
    " DO UPDATE SET sequence_id = excluded.sequence_id, name = excluded.name,"
    " start_time = excluded.start_time, end_time = excluded.end_time, data = excluded.data"
)


def _json_text(value: Any) -> str:
    return to_json(value).decode()


def _rollout(row: tuple[Any, ...]) -> Rollout:
    return Rollout(
        rollout_id=row[0],
        status=row[1],
        mode=row[2],
        resources_id=row[3],
        start_time=row[4],
        end_time=row[5],
        input=from_json(row[6]),
        config=RolloutConfig.model_validate_json(row[7]),
        metadata=from_json(row[8]),
    )


def _attempt(row: tuple[Any, ...]) -> Attempt:
    return Attempt(
        rollout_id=row[0],
        attempt_id=row[1],
        sequence_id=row[2],
        status=row[3],
        worker_id=row[4],
        start_time=row[5],
        end_time=row[6],
        last_heartbeat_time=row[7],
        metadata=from_json(row[8]),
    )


class SqliteLightningStore(LifecycleStore):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 30.0,
        clock: Callable[[], float] | None = None,
        watchdog_interval: float | None = 1.0,
        max_span_bytes: int = DEFAULT_MAX_SPAN_BYTES,
        read_only: bool = False,
    ) -> None:
        """``read_only`` opens the file as SQLite's ``mode=ro`` (inspection): nothing is written,
        not even the schema, so a read-only copy can be read; every write is refused, and no
        watchdog runs (it would write)."""
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        super().__init__(
            watchdog_interval=None if read_only else watchdog_interval, max_span_bytes=max_span_bytes, **kwargs
        )
        if synchronous not in ("normal", "full"):
            raise InvalidInput(f"invalid synchronous {synchronous!r}; expected 'normal' or 'full'")
        self.path = Path(path)
        self._file = self.path.absolute()  # the watchdog connects later, maybe after a chdir
        self._lock = threading.RLock()
        self._closed = False
        self._depth = 0
        self._data_version = 0
        self._checkpoint_conn: sqlite3.Connection | None = None
        if read_only:
            self._conn = self._connect_read_only(busy_timeout)
        else:
            self._conn = self._connect(synchronous, busy_timeout)
            try:
                self._migrate()
                # The baseline for noticing other processes' commits (`_changed_elsewhere`): taken
                # at the first tick with a waiter instead, it hid a commit made just before that tick.
                self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            except BaseException:
                self._conn.close()  # the caller never gets the store, so nobody else could close it
                raise
        self._start_watchdog()

    # --- connection and transactions ------------------------------------------------------
    def _connect(self, synchronous: Synchronous, busy_timeout: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(f"store at {self.path}: cannot create its folder ({error.strerror})") from None
        with _unavailable_on_failure(self.path):  # a folder in its place, a file that is not a database
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            with _unavailable_on_failure(self.path):
                self._refuse_foreign_tables(conn)
                # WAL is a property of the file: set once, outside any transaction, and checked.
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise AglError(f"cannot put {self.path} in WAL mode (journal_mode is {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # Checkpoints (copying the WAL into the database file) halve write throughput when a
            # writer runs them inline. The watchdog thread runs them in the background on its own
            # connection; SQLite's automatic checkpoint stays as a backstop at a larger WAL size.
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            # Reads through a memory map skip a copy per page (about 10% on span queries).
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _refuse_foreign_tables(self, conn: sqlite3.Connection) -> None:
        """Another application's database (a mistyped path) must not be switched to WAL and
        given agl's tables; an empty file, or one another process is making a store, is ours."""
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if tables and "agl_migrations" not in tables:
            raise StoreUnavailable(
                f"store at {self.path}: not an agl store (it holds other tables: {', '.join(sorted(tables)[:5])})"
            )

    def _connect_read_only(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            return self._open_read_only(busy_timeout, immutable=False)
        except sqlite3.Error as error:
            # Reading a WAL database takes a -shm file beside it, which a read-only folder cannot
            # hold. No -wal file there means no process has the store open for writing, so the
            # file cannot change while we read it.
            if error.sqlite_errorname != "SQLITE_READONLY_DIRECTORY" or Path(f"{self.path}-wal").exists():
                raise _unavailable(self.path, error) from None
        try:
            return self._open_read_only(busy_timeout, immutable=True)
        except sqlite3.Error as error:
            raise _unavailable(self.path, error) from None

    def _open_read_only(self, busy_timeout: float, *, immutable: bool) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}?mode=ro{'&immutable=1' if immutable else ''}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            ours = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agl_migrations'").fetchone()
            applied = {row[0] for row in conn.execute("SELECT name FROM agl_migrations")} if ours else None
            self._check_schema(applied, upgrading=False)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, applied: set[str] | None, *, upgrading: bool) -> None:
        """Refuse a schema this code would misread: a newer agl's migrations may have changed
        what rows mean, and a read-only store cannot bring an older one up to date."""
        if applied is None:
            raise StoreUnavailable(f"store at {self.path}: not an agl store (no agl_migrations table)")
        unknown = sorted(applied - {name for name, _ in MIGRATIONS})
        if unknown:
            raise StoreUnavailable(
                f"store at {self.path}: written by a newer agl (unknown migrations: {', '.join(unknown)});"
                " upgrade agl to open it"
            )
        missing = [name for name, _ in MIGRATIONS if name not in applied]
        if missing and not upgrading:
            raise StoreUnavailable(
                f"store at {self.path}: written by an older agl (migrations not applied: {', '.join(missing)});"
                " open it once for writing to upgrade it"
            )

    def _migrate(self) -> None:
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS agl_migrations (name TEXT PRIMARY KEY, applied_time REAL NOT NULL)"
            )
            applied = {row[0] for row in self._conn.execute("SELECT name FROM agl_migrations")}
            self._check_schema(applied, upgrading=True)
            for name, script in MIGRATIONS:
                if name in applied:
                    continue
                for statement in _statements(script):
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO agl_migrations VALUES (?, ?)", (name, time.time()))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` at the outermost level (savepoints inside); rollback on any error."""
        with self._lock:
            self._check_open()
            outermost = self._depth == 0
            rows_before = self._conn.total_changes
            with _unavailable_on_failure(self.path):
                self._conn.execute("BEGIN IMMEDIATE" if outermost else "SAVEPOINT nested")
            self._depth += 1
            try:
                with _unavailable_on_failure(self.path):
                    yield
            except BaseException:
                self._undo(outermost)
                raise
            else:
                try:
                    self._conn.execute("COMMIT" if outermost else "RELEASE nested")
                except sqlite3.Error as error:  # a full disk: the log could not take the pages
                    self._undo(outermost)
                    raise _unavailable(self.path, error) from None
                if outermost and self._conn.total_changes - rows_before >= CHECKPOINT_NOW_ROWS:
                    self._checkpoint_soon()
            finally:
                self._depth -= 1

    def _undo(self, outermost: bool) -> None:
        """Roll back what the failed section wrote. After some errors (a full disk, an I/O error)
        SQLite has already rolled the whole transaction back, and a second rollback would fail
        and hide the reason."""
        if not self._conn.in_transaction:
            return
        self._conn.execute("ROLLBACK" if outermost else "ROLLBACK TO nested")
        if not outermost:
            self._conn.execute("RELEASE nested")

    def _check_open(self) -> None:
        if self._closed:
            raise AglError(f"the store at {self.path} is closed")

    @contextmanager
    def _read(self) -> Iterator[None]:
        """A deferred transaction: one consistent snapshot without taking the write lock."""
        with self._lock:
            self._check_open()
            if self._depth:
                yield
                return
            with _unavailable_on_failure(self.path):
                self._conn.execute("BEGIN")
            self._depth += 1
            try:
                with _unavailable_on_failure(self.path):
                    yield
            finally:
                self._depth -= 1
                self._end_read()

    def _end_read(self) -> None:
        """End the snapshot. After some errors (a damaged page, an I/O error) SQLite has ended it
        already, and a COMMIT would fail and hide the reason."""
        if self._conn.in_transaction:
            with _unavailable_on_failure(self.path):
                self._conn.execute("COMMIT")

    def _changed_elsewhere(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    def _checkpoint_soon(self) -> None:
        """Have the watchdog checkpoint a large write now, before the next write begins.

        Why: SQLite starts the write-ahead log over only when a write begins after a checkpoint
        that copied all of it. Under a stream of batches (OTLP ingest: ~2.5 MB a request), a
        checkpoint on the watchdog's 0.1 s period always finds new frames behind it, so the log
        grew to the backstop (~40 MB) and that checkpoint ran inside a request (~40 ms). Copying
        one batch takes a few ms off the GIL, while the next request is still being decoded.
        """
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.wake()

    def _watchdog_tick(self) -> None:
        super()._watchdog_tick()
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)
        # PASSIVE never blocks writers or readers; it copies what it can and returns.
        self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        self._stop_watchdog()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._checkpoint_conn is not None:
                    self._checkpoint_conn.close()

    # --- rollouts -------------------------------------------------------------------------
    def _get_rollout(self, rollout_id: str) -> Rollout | None:
        row = self._conn.execute(
            f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        ).fetchone()
        return None if row is None else _rollout(row)

    def _rollout_values(self, rollout: Rollout) -> tuple[Any, ...]:
        return (
            rollout.status,
            rollout.mode,
            rollout.resources_id,
            rollout.start_time,
            rollout.end_time,
            _json_text(rollout.input),
            rollout.config.model_dump_json(),
            _json_text(rollout.metadata),
            rollout.rollout_id,
        )

    def _insert_rollouts(self, rollouts: Sequence[Rollout], queued: bool) -> None:
        if not rollouts:
            return
        last = self._conn.execute("SELECT coalesce(max(queue_seq), 0) FROM rollouts WHERE queue_seq IS NOT NULL")
        first_seq = last.fetchone()[0] + 1
        self._conn.executemany(
            "INSERT INTO rollouts (status, mode, resources_id, start_time, end_time, input, config, metadata,"
            " rollout_id, queue_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*self._rollout_values(r), first_seq + i if queued else None) for i, r in enumerate(rollouts)],
        )

    def _save_rollout(self, rollout: Rollout, queued: bool | None) -> None:
        queue_seq = {True: _NEXT_QUEUE_SEQ, False: "NULL", None: "queue_seq"}[queued]
        self._conn.execute(
            "UPDATE rollouts SET status = ?, mode = ?, resources_id = ?, start_time = ?, end_time = ?,"
            f" input = ?, config = ?, metadata = ?, queue_seq = {queue_seq} WHERE rollout_id = ?",
            self._rollout_values(rollout),
        )

    def _next_queued(self) -> Rollout | None:
        row = self._conn.execute(
            f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts"
            " WHERE queue_seq = (SELECT min(queue_seq) FROM rollouts WHERE queue_seq IS NOT NULL)"
        ).fetchone()
        return None if row is None else _rollout(row)

    # --- attempts -------------------------------------------------------------------------
    def _get_attempt(self, attempt_id: str) -> Attempt | None:
        row = self._conn.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE attempt_id = ?", (attempt_id,)
        ).fetchone()
        return None if row is None else _attempt(row)

    def _latest_attempt(self, rollout_id: str) -> Attempt | None:
        row = self._conn.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        ).fetchone()
        return None if row is None else _attempt(row)

    def _insert_attempt(self, attempt: Attempt) -> None:
        self._conn.execute(
            f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attempt.rollout_id,
                attempt.attempt_id,
                attempt.sequence_id,
                attempt.status,
                attempt.worker_id,
                attempt.start_time,
                attempt.end_time,
                attempt.last_heartbeat_time,
                _json_text(attempt.metadata),
            ),
        )

    def _save_attempt(self, attempt: Attempt) -> None:
        self._conn.execute(
            "UPDATE attempts SET status = ?, worker_id = ?, end_time = ?, last_heartbeat_time = ?, metadata = ?"
            " WHERE attempt_id = ?",
            (
                attempt.status,
                attempt.worker_id,
                attempt.end_time,
                attempt.last_heartbeat_time,
                _json_text(attempt.metadata),
                attempt.attempt_id,
            ),
        )

    def _active_attempts(self) -> list[tuple[Attempt, RolloutConfig]]:
        columns = ", ".join(f"a.{c.strip()}" for c in _ATTEMPT_COLUMNS.split(","))
        rows = self._conn.execute(
            f"SELECT {columns}, r.config FROM attempts a JOIN rollouts r ON r.rollout_id = a.rollout_id"
            " WHERE a.status IN ('preparing', 'running')"
        ).fetchall()
        return [(_attempt(row), RolloutConfig.model_validate_json(row[-1])) for row in rows]

    def _record_activity(self, attempt_id: str, heartbeat: float | None, next_sequence_id: int) -> None:
        self._conn.execute(
            "UPDATE attempts SET next_span_seq = max(next_span_seq, ?),"
            " last_heartbeat_time = coalesce(?, last_heartbeat_time) WHERE attempt_id = ?",
            (next_sequence_id, heartbeat, attempt_id),
        )

    def _reserve_span_sequence_id(self, attempt_id: str, now: float) -> int:
        row = self._conn.execute(
            "UPDATE attempts SET next_span_seq = min(max(next_span_seq, ?), ?) + 1 WHERE attempt_id = ?"
            " RETURNING next_span_seq - 1",
            (sequence_clock(now), MAX_INT64 - 1, attempt_id),
        ).fetchone()
        return int(row[0])

    # --- spans ----------------------------------------------------------------------------
    def _save_spans(self, spans: Sequence[tuple[Span, bytes]]) -> None:
        self._conn.executemany(
            _UPSERT_SPAN,
            [
                (s.rollout_id, s.attempt_id, s.span_id, s.sequence_id, s.name, s.start_time, s.end_time, data)
                for s, data in spans
            ],
        )

    def _save_span_documents(self, spans: Sequence[tuple[dict[str, Any], bytes]]) -> None:
        """Rows straight from the documents: no `Span` model is built (the OTLP ingest path)."""
        self._conn.executemany(
            _UPSERT_SPAN,
            [
                (
                    d["rollout_id"],
                    d["attempt_id"],
                    d["span_id"],
                    d["sequence_id"],
                    d["name"],
                    d["start_time"],
                    d["end_time"],
                    data,
                )
                for d, data in spans
            ],
        )

    # --- resources and workers ------------------------------------------------------------
    def _get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        row = self._conn.execute("SELECT data FROM resources WHERE resources_id = ?", (resources_id,)).fetchone()
        return None if row is None else ResourcesUpdate.model_validate_json(row[0])

    def _latest_resources(self) -> ResourcesUpdate | None:
        row = self._conn.execute("SELECT data FROM resources ORDER BY update_seq DESC LIMIT 1").fetchone()
        return None if row is None else ResourcesUpdate.model_validate_json(row[0])

    def _save_resources(self, update: ResourcesUpdate) -> None:
        self._conn.execute(
            "INSERT INTO resources (resources_id, update_seq, version, create_time, update_time, data)"
            " VALUES (?, (SELECT coalesce(max(update_seq), 0) + 1 FROM resources), ?, ?, ?, ?)"
            " ON CONFLICT (resources_id) DO UPDATE SET update_seq = excluded.update_seq,"
            " version = excluded.version, update_time = excluded.update_time, data = excluded.data",
            (
                update.resources_id,
                update.version,
                update.create_time,
                update.update_time,
                update.model_dump_json(),
            ),
        )

    def _get_worker(self, worker_id: str) -> Worker | None:
        row = self._conn.execute("SELECT data FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        return None if row is None else Worker.model_validate_json(row[0])

    def _save_worker(self, worker: Worker) -> None:
        self._conn.execute(
            "INSERT INTO workers (worker_id, status, last_heartbeat_time, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (worker_id) DO UPDATE SET status = excluded.status,"
            " last_heartbeat_time = excluded.last_heartbeat_time, data = excluded.data",
            (worker.worker_id, worker.status, worker.last_heartbeat_time, worker.model_dump_json()),
        )

    def _statistics(self) -> StoreStatistics:
        rollouts = Counter(dict(self._conn.execute("SELECT status, count(*) FROM rollouts GROUP BY status")))
        attempts = Counter(dict(self._conn.execute("SELECT status, count(*) FROM attempts GROUP BY status")))
        return StoreStatistics(
            rollouts_by_status={s: rollouts[s] for s in ROLLOUT_STATUSES if rollouts[s]},
            attempts_by_status={s: attempts[s] for s in ATTEMPT_STATUSES if attempts[s]},
            spans=self._conn.execute("SELECT count(*) FROM spans").fetchone()[0],
            resources=self._conn.execute("SELECT count(*) FROM resources").fetchone()[0],
            workers=self._conn.execute("SELECT count(*) FROM workers").fetchone()[0],
        )

    # --- queries --------------------------------------------------------------------------
    def _page(
        self,
        select: str,
        table: str,
        where: list[str],
        params: list[Any],
        sort_by: str,
        sort_order: str,
        limit: int | None,
        offset: int,
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run a filtered, sorted, paginated query; ``sort_by`` was checked against a whitelist."""
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if sort_order == "desc" else "ASC"
        order = f"ORDER BY {sort_by} {direction}, rowid {direction}"
        select_page = f"SELECT {select} FROM {table}{condition} {order} LIMIT ? OFFSET ?"
        page_params = [*params, -1 if limit is None else limit, offset]
        if limit is None and offset == 0:
            with self._lock:  # one statement is a consistent snapshot on its own
                self._check_open()
                try:
                    rows = self._conn.execute(select_page, page_params).fetchall()
                except sqlite3.Error as error:
                    raise _unavailable(self.path, error) from None
            return rows, len(rows)
        with self._read():
            rows = self._conn.execute(select_page, page_params).fetchall()
            if offset == 0 and len(rows) < limit:  # type: ignore[operator]
                return rows, len(rows)
            total = self._conn.execute(f"SELECT count(*) FROM {table}{condition}", params).fetchone()[0]
        return rows, total

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[str] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        mode: str | None = None,
        resources_id: str | None = None,
        sort_by: str = "start_time",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Rollout]:
        check_query("rollouts", sort_by, sort_order, limit, offset)
        check_rollout_filters(status_in, rollout_id_in, mode, resources_id)
        where: list[str] = []
        params: list[Any] = []
        if status_in is not None:
            where.append("status IN (SELECT value FROM json_each(?))")
            params.append(_json_text(list(status_in)))
        if rollout_id_in is not None:
            where.append("rollout_id IN (SELECT value FROM json_each(?))")
            params.append(_json_text(list(rollout_id_in)))
        if mode is not None:
            where.append("mode = ?")
            params.append(mode)
        if resources_id is not None:
            where.append("resources_id = ?")
            params.append(resources_id)
        rows, total = self._page(_ROLLOUT_COLUMNS, "rollouts", where, params, sort_by, sort_order, limit, offset)
        return Page(items=[_rollout(row) for row in rows], total=total, offset=offset, limit=limit)

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        status_in: Sequence[str] | None = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Attempt]:
        check_query("attempts", sort_by, sort_order, limit, offset)
        check_id("rollout_id", rollout_id)
        check_filter("status_in", status_in, ATTEMPT_STATUSES)
        where, params = ["rollout_id = ?"], [rollout_id]
        if status_in is not None:
            where.append("status IN (SELECT value FROM json_each(?))")
            params.append(_json_text(list(status_in)))
        rows, total = self._page(_ATTEMPT_COLUMNS, "attempts", where, params, sort_by, sort_order, limit, offset)
        return Page(items=[_attempt(row) for row in rows], total=total, offset=offset, limit=limit)

    def _span_page(
        self,
        rollout_id: str,
        attempt_id: str | None,
        name: str | None,
        sort_by: str,
        sort_order: str,
        limit: int | None,
        offset: int,
    ) -> Page[StoredSpan]:
        where, params = ["rollout_id = ?"], [rollout_id]
        if attempt_id is not None:
            where.append("attempt_id = ?")
            params.append(attempt_id)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        rows, total = self._page("data", "spans", where, params, sort_by, sort_order, limit, offset)
        return Page(items=[(None, row[0]) for row in rows], total=total, offset=offset, limit=limit)

    async def query_resources(
        self, *, sort_by: str = "update_time", sort_order: str = "asc", limit: int | None = None, offset: int = 0
    ) -> Page[ResourcesUpdate]:
        check_query("resources", sort_by, sort_order, limit, offset)
        rows, total = self._page("data", "resources", [], [], sort_by, sort_order, limit, offset)
        return Page(
            items=[ResourcesUpdate.model_validate_json(row[0]) for row in rows], total=total, offset=offset, limit=limit
        )

    async def query_workers(
        self,
        *,
        status_in: Sequence[str] | None = None,
        sort_by: str = "worker_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Worker]:
        check_query("workers", sort_by, sort_order, limit, offset)
        check_filter("status_in", status_in, WORKER_STATUSES)
        where: list[str] = []
        params: list[Any] = []
        if status_in is not None:
            where.append("status IN (SELECT value FROM json_each(?))")
            params.append(_json_text(list(status_in)))
        rows, total = self._page("data", "workers", where, params, sort_by, sort_order, limit, offset)
        return Page(items=[Worker.model_validate_json(row[0]) for row in rows], total=total, offset=offset, limit=limit)


@contextmanager
def _unavailable_on_failure(path: Path) -> Iterator[None]:
    """The file failing under us (locked past busy_timeout, disk full, not a database) is
    `StoreUnavailable`; constraint violations are bugs and stay as they are."""
    try:
        yield
    except sqlite3.Error as error:
        raise _unavailable(path, error) from None


def _unavailable(path: Path, error: sqlite3.Error) -> Exception:
    """What to raise for ``error`` (see `_unavailable_on_failure`)."""
    if type(error) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return StoreUnavailable(f"store at {path}: {error}")
    return error


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise AglError(f"incomplete statement in migration: {pending.strip()[:80]!r}")
