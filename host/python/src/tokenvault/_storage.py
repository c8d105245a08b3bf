"""The vault's storage: versioned records with compare-and-swap, on the same layouts as the
Rust host's backends (the SQL and Lua come from its source, copied into the package's
``data/`` when it is built), so processes of every host can share one store.

Every backend has the same interface: ``get``, ``commit`` (all of a list of writes or none;
a backend supplies ``_commit``, and the shared ``commit`` wakes waiters after it),
``put``, ``delete``, ``list``, ``wait_for_change``, ``describe``, ``close``. A write whose
expected version does not hold raises ``StorageConflict``, a failing backend
``StorageUnavailable``. All are safe to use from several threads.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# How often a caller waiting for a record's change reads it (as the Rust host polls).
POLL_INTERVAL_SECONDS = 0.02
# Keys under this prefix (the audit trail) are never cached by the Rust hosts.
UNCACHED_PREFIX = "audit"
# The longest schema name: its notification channel must fit PostgreSQL's 63-byte names.
MAX_SCHEMA = 48
# The SQLSTATE postgres.sql's tokenvault_commit raises when a write's condition fails.
CONFLICT_SQLSTATE = "TV409"

T = TypeVar("T")


class StorageConflict(Exception):
    def __init__(self) -> None:
        super().__init__("version conflict")


class StorageUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Write:
    """One write of a commit: ``value`` None deletes; ``expected`` None creates only if absent."""

    key: str
    value: bytes | None
    expected: int | None


Entry = tuple[bytes, int]
Page = tuple[list[str], str | None]


def data_file(name: str) -> str:
    """A storage format file the package carries (copied from the Rust host when built)."""
    return resources.files("tokenvault").joinpath("data", name).read_text(encoding="utf-8")


def open_storage(url: str) -> Storage:
    """The store a storage URL names: ``memory:``, ``sqlite://PATH``, ``postgres://…``,
    ``redis://…`` (``rediss://`` for TLS)."""
    if not isinstance(url, str):
        raise TypeError("storage must be a storage URL")
    if url in ("memory:", "memory://"):
        return MemoryStorage()
    if url.startswith("sqlite://"):
        return SqliteStorage(url[len("sqlite://") :])
    if url.startswith(("postgres://", "postgresql://")):
        return PostgresStorage(url)
    if url.startswith(("redis://", "rediss://")):
        return RedisStorage(url)
    raise ValueError("storage: the URL must start with memory:, sqlite://, postgres:// or redis:// (rediss:// for TLS)")


def _page(keys: list[str], limit: int) -> Page:
    """A page of keys, and the cursor for the next when the page is full."""
    return keys, (keys[-1] if limit > 0 and len(keys) == limit else None)


class Storage:
    """What all backends share: waking this process's waiters on its own writes, polling
    for other processes'."""

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def get(self, key: str) -> Entry | None:
        raise NotImplementedError

    def commit(self, writes: list[Write]) -> list[int | None]:
        """All of ``writes`` or none: their new versions (None for a delete). This process's
        waiters are woken afterwards, whatever the outcome."""
        try:
            return self._commit(writes)
        finally:
            with self._changed:
                self._changed.notify_all()

    def _commit(self, writes: list[Write]) -> list[int | None]:
        raise NotImplementedError

    def list(self, prefix: str, cursor: str | None, limit: int) -> Page:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def put(self, key: str, value: bytes, expected: int | None) -> int:
        version = self.commit([Write(key, value, expected)])[0]
        assert version is not None
        return version

    def delete(self, key: str, expected: int) -> None:
        self.commit([Write(key, None, expected)])

    def wait_for_change(self, key: str, seen: int | None, timeout_ms: int) -> None:
        """Return once ``key``'s version is no longer ``seen``, or after ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            entry = self.get(key)
            if (entry and entry[1]) != seen:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with self._changed:
                self._changed.wait(min(POLL_INTERVAL_SECONDS, left))


class MemoryStorage(Storage):
    """Records in a dict: for tests and short-lived processes."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, Entry] = {}
        self._last = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        return self._records.get(key)

    def _commit(self, writes: list[Write]) -> list[int | None]:
        with self._lock:
            for w in writes:
                current = self._records.get(w.key)
                if (current and current[1]) != w.expected:
                    raise StorageConflict()
            versions: list[int | None] = []
            for w in writes:
                if w.value is None:
                    del self._records[w.key]
                    versions.append(None)
                else:
                    self._last += 1
                    self._records[w.key] = (bytes(w.value), self._last)
                    versions.append(self._last)
            return versions

    def list(self, prefix: str, cursor: str | None, limit: int) -> Page:
        with self._lock:
            keys = sorted(
                (k for k in self._records if k.startswith(prefix) and (cursor is None or k.encode() > cursor.encode())),
                key=str.encode,
            )
        return _page(keys[:limit], limit)

    def describe(self) -> str:
        return "memory"


class SqliteStorage(Storage):
    """One SQLite file, shared with other processes (of any host) as the Rust host shares
    it: WAL, writes in ``BEGIN IMMEDIATE`` transactions, versions from one counter row. Each
    thread has a connection of its own."""

    def __init__(self, path: str) -> None:
        super().__init__()
        if not path:
            raise StorageUnavailable("sqlite: the URL names no file (sqlite://PATH)")
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # Made private before SQLite opens it: SQLite gives the log and its index its mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            setup = sqlite3.connect(path, timeout=10, isolation_level=None)
            try:
                setup.execute("PRAGMA journal_mode = WAL")
                setup.executescript(data_file("sqlite.sql"))
            finally:
                setup.close()
        except (OSError, sqlite3.Error) as e:
            raise StorageUnavailable(f"sqlite: {path}: {e}") from None

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _run(self, f: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return f(self._db())
        except sqlite3.Error as e:
            raise StorageUnavailable(f"sqlite: {e}") from None

    def get(self, key: str) -> Entry | None:
        row = self._run(
            lambda db: db.execute("SELECT value, version FROM tokenvault_records WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else (bytes(row[0]), row[1])

    def _commit(self, writes: list[Write]) -> list[int | None]:
        def write_all(db: sqlite3.Connection) -> list[int | None]:
            # BEGIN IMMEDIATE: the file's write lock first, so two processes never deadlock upgrading.
            db.execute("BEGIN IMMEDIATE")
            try:
                versions = [self._apply(db, w) for w in writes]
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return versions

        return self._run(write_all)

    @staticmethod
    def _apply(db: sqlite3.Connection, w: Write) -> int | None:
        version = None
        if w.value is None:
            changed = db.execute("DELETE FROM tokenvault_records WHERE key = ? AND version = ?", (w.key, w.expected)).rowcount
        else:
            (version,) = db.execute(
                "UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last"
            ).fetchone()
            if w.expected is None:
                sql = "INSERT INTO tokenvault_records (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING"
                changed = db.execute(sql, (w.key, w.value, version)).rowcount
            else:
                sql = "UPDATE tokenvault_records SET value = ?, version = ? WHERE key = ? AND version = ?"
                changed = db.execute(sql, (w.value, version, w.key, w.expected)).rowcount
        if changed != 1:
            raise StorageConflict()
        return version

    def list(self, prefix: str, cursor: str | None, limit: int) -> Page:
        rows = self._run(
            lambda db: db.execute(
                "SELECT key FROM tokenvault_records WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 "
                "AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3",
                (prefix, cursor, limit),
            ).fetchall()
        )
        return _page([row[0] for row in rows], limit)

    def describe(self) -> str:
        return f"sqlite ({self.path})"

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()


def _split_params(url: str, *names: str) -> tuple[str, dict[str, str]]:
    """Take ``names`` out of a URL's query: the URL without them, and their values."""
    parts = urlsplit(url)
    kept, taken = [], {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in names:
            taken[k] = v
        else:
            kept.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(kept))), taken


class PostgresStorage(Storage):
    """PostgreSQL, on the Rust host's table, sequence and change trigger (psycopg, with a pool)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StorageUnavailable("postgres: install tokenvault[postgres] (psycopg) for PostgreSQL storage") from None
        conninfo, params = _split_params(url, "schema", "cache", "sslmode", "sslrootcert")
        schema = params.get("schema", "public")
        if not (0 < len(schema) <= MAX_SCHEMA and all(c.islower() or c.isdigit() or c == "_" for c in schema)):
            raise StorageUnavailable(f"postgres: schema must be 1 to {MAX_SCHEMA} lowercase letters, digits and _")
        tls: dict[str, str] = {}
        sslmode = params.get("sslmode")
        if sslmode in ("require", "verify-full"):
            # As the Rust host: TLS with the server's certificate and name verified.
            tls = {"sslmode": "verify-full", "sslrootcert": params.get("sslrootcert", "system")}
        elif sslmode not in (None, "disable"):
            raise StorageUnavailable(
                f"postgres: sslmode={sslmode} is not supported: use require (TLS, the server's certificate and name verified) or disable"
            )
        self.schema = schema
        self.host = urlsplit(url).hostname or "localhost"
        connection: dict[str, Any] = {"autocommit": True, "connect_timeout": 5, **tls}
        table = f'"{schema}".tokenvault_records'
        self._sql = {
            "get": f"SELECT value, version FROM {table} WHERE key = %s",
            "list": f"SELECT key FROM {table} WHERE key >= %(p)s AND starts_with(key, %(p)s) AND (%(c)s::text IS NULL OR key > %(c)s) ORDER BY key LIMIT %(l)s",
            "commit": f'SELECT "{schema}".tokenvault_commit(%s::text[], %s::bytea[], %s::bigint[])',
        }
        # The schema is made on a connection of its own, which also fails fast on a bad URL.
        ddl = data_file("postgres.sql").replace("{schema}", schema).replace("{channel}", f"tokenvault_{schema}")
        try:
            with psycopg.connect(conninfo, **connection) as db:
                db.execute(ddl.replace("{uncached}", UNCACHED_PREFIX).encode())
        except psycopg.Error as e:
            raise StorageUnavailable(f"postgres: {self._reason(e)}") from None
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=8, kwargs=connection, open=True)

    @staticmethod
    def _reason(e: BaseException) -> str:
        """What failed: the SQLSTATE, else libpq's first line (which never quotes a password)."""
        sqlstate = getattr(e, "sqlstate", None)
        if sqlstate:
            return f"SQLSTATE {sqlstate}"
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__

    def _run(self, f: Callable[[Any], T]) -> T:
        try:
            with self._pool.connection() as db:
                return f(db)
        except StorageConflict:
            raise
        except Exception as e:
            if getattr(e, "sqlstate", None) == CONFLICT_SQLSTATE:  # tokenvault_commit's refusal
                raise StorageConflict() from None
            raise StorageUnavailable(f"postgres: {self._reason(e)}") from None

    def get(self, key: str) -> Entry | None:
        row = self._run(lambda db: db.execute(self._sql["get"], (key,)).fetchone())
        return None if row is None else (bytes(row[0]), int(row[1]))

    def _commit(self, writes: list[Write]) -> list[int | None]:
        # One statement: postgres.sql's tokenvault_commit, which raises TV409 on a conflict.
        arrays = ([w.key for w in writes], [w.value for w in writes], [w.expected for w in writes])

        (versions,) = self._run(lambda db: db.execute(self._sql["commit"], arrays).fetchone())
        return [None if v is None else int(v) for v in versions]

    def list(self, prefix: str, cursor: str | None, limit: int) -> Page:
        rows = self._run(lambda db: db.execute(self._sql["list"], {"p": prefix, "c": cursor, "l": limit}).fetchall())
        return _page([row[0] for row in rows], limit)

    def describe(self) -> str:
        return f"postgres (host {self.host}, schema {self.schema})"

    def close(self) -> None:
        self._pool.close()


class RedisStorage(Storage):
    """Redis, on the Rust host's layout and commit script (redis-py)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import redis
        except ImportError:
            raise StorageUnavailable("redis: install tokenvault[redis] (redis-py) for Redis storage") from None
        self._errors = (redis.RedisError,)
        rest, params = _split_params(url, "namespace", "cache", "sslrootcert")
        namespace = params.get("namespace", "tokenvault")
        if not namespace or any(c.isspace() for c in namespace):
            raise StorageUnavailable("redis: namespace must be a non-empty word")
        rootcert = params.get("sslrootcert")
        if rootcert and not rest.startswith("rediss://"):
            raise StorageUnavailable("redis: sslrootcert needs a rediss:// URL")
        options: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 5}
        if rootcert:
            options["ssl_ca_certs"] = rootcert
        self.namespace = namespace
        self._client = redis.Redis.from_url(rest, **options)
        self._commit_script = self._client.register_script(data_file("redis-commit.lua"))
        self._run(lambda c: c.ping())

    def _record(self, key: str) -> str:
        return f"{self.namespace}:r:{key}"

    def _run(self, f: Callable[[Any], T]) -> T:
        try:
            return f(self._client)
        except self._errors as e:
            raise StorageUnavailable(f"redis: {type(e).__name__}") from None

    def get(self, key: str) -> Entry | None:
        value, version = self._run(lambda c: c.hmget(self._record(key), "d", "v"))
        return None if value is None or version is None else (bytes(value), int(version))

    def _commit(self, writes: list[Write]) -> list[int | None]:
        keys = [f"{self.namespace}:version", f"{self.namespace}:index", *(self._record(w.key) for w in writes)]
        args: list[Any] = []
        for w in writes:
            args += ["d" if w.value is None else "p", "" if w.expected is None else str(w.expected), w.value or b"", w.key]
        versions = self._run(lambda c: self._commit_script(keys=keys, args=args, client=c))
        if versions is None:
            raise StorageConflict()
        return [None if w.value is None else int(v) for w, v in zip(writes, versions)]

    def list(self, prefix: str, cursor: str | None, limit: int) -> Page:
        low = f"[{prefix}" if cursor is None else f"({cursor}"
        high = f"({prefix}".encode() + b"\xff"
        found = self._run(lambda c: c.zrangebylex(f"{self.namespace}:index", low, high, start=0, num=limit))
        return _page([k.decode() for k in found if k.decode().startswith(prefix)], limit)

    def describe(self) -> str:
        return f"redis (namespace {self.namespace})"

    def close(self) -> None:
        self._client.close()
