"""Embeds the tokenvault component in Python with wasmtime-py's component API.

Storage, keyring and audit are Python objects; standard WASI comes from wasmtime-py
(``Linker.add_wasip2``) with nothing granted: no environment, arguments, stdin or
preopened directories.

Outgoing HTTP is all or nothing: wasmtime-py has no per-request hook, so it cannot check
origins as the Rust and Node hosts do. ``allow_http=True`` links wasmtime's
``wasi:http`` and lets the component reach any address; ``allow_http=False`` (the
default) answers every request with ``HTTP-request-denied`` before it leaves.

    vault = Vault("tokenvault.wasm", MemoryStorage(), Keyring.create())
    vault.call("tokens", "get", {"tenant": "acme", "user": "alice", "provider": "github", "name": "default"})
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from wasmtime import Engine, Store, WasiConfig
from wasmtime.component import Component, Linker, Record, ResultType, Variant, VariantType

PACKAGE = "tokenvault:vault"
VERSION = "0.1.0"
WASI_HTTP_HANDLER = "wasi:http/outgoing-handler@0.2.12"
# How often a caller waiting for another's refresh reads the record (wait-for-change).
WAIT_POLL_SECONDS = 0.01


class VaultError(Exception):
    """An export's ``error`` result: ``kind`` is its case, ``detail`` its payload."""

    def __init__(self, kind: str, detail: Any):
        super().__init__(f"{kind}: {getattr(detail, 'message', detail)}")
        self.kind = kind
        self.detail = detail


# wasmtime-py represents a variant (and a result) without a tag when Python types tell
# its cases apart, and as ``Variant(tag, payload)`` when they do not. These two helpers
# read and build values of either shape from the component's own types.
def _tagged(ty: Any) -> bool:
    return ty._tagged()


def _lower(ty: Any, tag: str, payload: Any = None) -> Any:
    """A value of variant or result type ``ty`` for case ``tag``."""
    return Variant(tag, payload) if _tagged(ty) else payload


def _unwrap(ty: ResultType, value: Any) -> Any:
    """The ok payload of a result, or raise its error as a ``VaultError``."""
    if _tagged(ty):
        if value.tag == "ok":
            return value.payload
        error = value.payload
    else:
        err_classes: set[type] = set()
        ty.err.add_classes(err_classes)
        if not isinstance(value, tuple(err_classes)):
            return value
        error = value
    raise VaultError(error.tag, _pythonic(error.payload))


def record(**fields: Any) -> SimpleNamespace:
    """A WIT record, its fields in snake_case, to pass to `Vault.call`."""
    return SimpleNamespace(**fields)


def _component(value: Any) -> Any:
    """A value for the component: records as wasmtime-py's `Record`, whose attributes are
    named as in WIT (kebab-case)."""
    if isinstance(value, SimpleNamespace):
        converted = Record()
        for name, v in vars(value).items():
            setattr(converted, name.replace("_", "-"), _component(v))
        return converted
    if isinstance(value, list):
        return [_component(v) for v in value]
    if isinstance(value, Variant):
        return Variant(value.tag, _component(value.payload))
    return value


def _pythonic(value: Any) -> Any:
    """A value from the component, its records with snake_case attributes."""
    if isinstance(value, Record):
        return SimpleNamespace(**{name.replace("-", "_"): _pythonic(v) for name, v in vars(value).items()})
    if isinstance(value, list):
        return [_pythonic(v) for v in value]
    if isinstance(value, Variant):
        return Variant(value.tag, _pythonic(value.payload))
    return value


class Storage(Protocol):
    """What the component's `storage` import needs; `put` returns None on a conflict."""

    def get(self, key: str) -> tuple[bytes, int] | None: ...
    def put(self, key: str, value: bytes, expected: int | None) -> int | None: ...
    def delete(self, key: str, expected: int) -> bool: ...
    def list(self, prefix: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]: ...
    def commit(self, writes: list[tuple[str, tuple[Any, ...]]]) -> list[int | None] | None: ...


def _expected(kind: str, args: tuple[Any, ...]) -> int | None:
    """The version a commit's write expects: `("put", (key, value, expected))`, `("delete", (key, expected))`."""
    return args[2] if kind == "put" else args[1]


class MemoryStorage:
    """Versioned records in a dict; versions are never reused for a key."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[bytes, int]] = {}
        self.last_version = 0

    def get(self, key: str) -> tuple[bytes, int] | None:
        return self.records.get(key)

    def put(self, key: str, value: bytes, expected: int | None) -> int | None:
        """The new version, or None on a version conflict."""
        current = self.records.get(key)
        if (current is not None) if expected is None else (current is None or current[1] != expected):
            return None
        self.last_version += 1
        self.records[key] = (bytes(value), self.last_version)
        return self.last_version

    def delete(self, key: str, expected: int) -> bool:
        current = self.records.get(key)
        if current is None or current[1] != expected:
            return False
        del self.records[key]
        return True

    def commit(self, writes: list[tuple[str, tuple[Any, ...]]]) -> list[int | None] | None:
        """All of `writes` or none: their new versions, or None on a version conflict."""
        for kind, args in writes:
            current = self.records.get(args[0])
            if (current and current[1]) != _expected(kind, args):
                return None
        versions: list[int | None] = []
        for kind, args in writes:
            if kind == "put":
                self.last_version += 1
                self.records[args[0]] = (bytes(args[1]), self.last_version)
                versions.append(self.last_version)
            else:
                del self.records[args[0]]
                versions.append(None)
        return versions

    def list(self, prefix: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        keys = sorted(
            (k for k in self.records if k.startswith(prefix) and (cursor is None or k.encode() > cursor.encode())),
            key=str.encode,
        )[:limit]
        return keys, (keys[-1] if len(keys) == limit else None)


class SqliteStorage:
    """The Rust host's SQLite file (its schema, its version counter), with the standard
    library's sqlite3: either host reads what the other wrote."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.executescript(SQLITE_SCHEMA)

    def get(self, key: str) -> tuple[bytes, int] | None:
        row = self.db.execute("SELECT value, version FROM tokenvault_records WHERE key = ?", (key,)).fetchone()
        return row and (bytes(row[0]), row[1])

    def put(self, key: str, value: bytes, expected: int | None) -> int | None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = self.db.execute(
                "UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last"
            ).fetchone()
            if expected is None:
                sql = "INSERT INTO tokenvault_records (key, value, version) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
                changed = self.db.execute(sql, (key, bytes(value), version)).rowcount
            else:
                sql = "UPDATE tokenvault_records SET value = ?2, version = ?3 WHERE key = ?1 AND version = ?4"
                changed = self.db.execute(sql, (key, bytes(value), version, expected)).rowcount
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT" if changed == 1 else "ROLLBACK")
        return version if changed == 1 else None

    def delete(self, key: str, expected: int) -> bool:
        sql = "DELETE FROM tokenvault_records WHERE key = ? AND version = ?"
        return self.db.execute(sql, (key, expected)).rowcount == 1

    def commit(self, writes: list[tuple[str, tuple[Any, ...]]]) -> list[int | None] | None:
        """All of `writes` or none, in one transaction; None on a version conflict."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for kind, args in writes:
                row = self.db.execute("SELECT version FROM tokenvault_records WHERE key = ?", (args[0],)).fetchone()
                if (row and row[0]) != _expected(kind, args):
                    self.db.execute("ROLLBACK")
                    return None
            versions: list[int | None] = []
            for kind, args in writes:
                if kind == "delete":
                    self.db.execute("DELETE FROM tokenvault_records WHERE key = ?", (args[0],))
                    versions.append(None)
                    continue
                (version,) = self.db.execute(
                    "UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last"
                ).fetchone()
                self.db.execute(
                    "INSERT INTO tokenvault_records (key, value, version) VALUES (?1, ?2, ?3) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
                    (args[0], bytes(args[1]), version),
                )
                versions.append(version)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return versions

    def list(self, prefix: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        rows = self.db.execute(
            "SELECT key FROM tokenvault_records WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 "
            "AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3",
            (prefix, cursor, limit),
        ).fetchall()
        keys = [row[0] for row in rows]
        return keys, (keys[-1] if len(keys) == limit else None)


# The Rust host's SQLite format, one file for all three hosts.
SQLITE_SCHEMA = (Path(__file__).parent / "../../host/lib/src/storage/sqlite.sql").read_text()


KEYRING_KEY = "keyring"
"""The record under which the Rust host keeps the keyring in storage."""


@dataclass
class Keyring:
    """The data keys records are sealed with, by id, and the active one."""

    active: str
    keys: dict[str, bytes]

    @classmethod
    def open(cls, storage: "Storage", master_key_path: str | os.PathLike) -> "Keyring":
        """The Rust host's keyring as it keeps it in storage: ``{"format": 1, "master_key",
        "active", "keys": [{"id", "wrapped"}]}``, each live data key wrapped (AES-256-GCM-SIV:
        a 12-byte nonce, then ciphertext, bound to "tokenvault keyring", the format byte and
        the key's id) by the master key in ``master_key_path`` (base64 of 32 bytes)."""
        master = base64.b64decode(Path(master_key_path).read_text().strip())
        if len(master) != 32:
            raise ValueError(f"{master_key_path}: not a master key")
        entry = storage.get(KEYRING_KEY)
        if entry is None:
            raise ValueError("the storage holds no keyring")
        record = json.loads(entry[0])
        if record["format"] != 1:
            raise ValueError(f"unknown keyring format {record['format']}")
        cipher = AESGCMSIV(master)
        keys = {}
        for key in record["keys"]:
            if key.get("wrapped"):  # none once retired
                wrapped = base64.b64decode(key["wrapped"])
                aad = b"tokenvault keyring" + bytes([record["format"]]) + key["id"].encode()
                keys[key["id"]] = cipher.decrypt(wrapped[:12], wrapped[12:], aad)
        return cls(record["active"], keys)

    @classmethod
    def create(cls) -> "Keyring":
        key_id = f"k-{secrets.token_hex(4)}"
        return cls(key_id, {key_id: secrets.token_bytes(32)})



@dataclass
class Vault:
    """One instance of the component in one store, with these capabilities."""

    component_path: str | os.PathLike
    storage: Storage
    keyring: Keyring
    allow_http: bool = False
    audit: list[SimpleNamespace] = field(default_factory=list)
    denied_requests: int = 0

    def __post_init__(self) -> None:
        engine = Engine()
        component = Component.from_file(engine, str(self.component_path))
        imports = component.type.imports(engine)
        linker = Linker(engine)
        linker.add_wasip2()
        linker.add_wasi_http()
        if not self.allow_http:
            self._deny_http(linker, imports[WASI_HTTP_HANDLER].ty)
        with linker.root() as root:
            for interface, functions in self._capabilities().items():
                name = f"{PACKAGE}/{interface}@{VERSION}"
                types = imports[name].ty.exports(engine)
                with root.add_instance(name) as instance:
                    for function, implementation in functions.items():
                        instance.add_func(function, self._host_function(types[function].ty, implementation))
        self.store = Store(engine)
        self.store.set_wasi(WasiConfig())  # nothing inherited: no env, args, stdin, files
        self.store.set_wasi_http()
        self.instance = linker.instantiate(self.store, component)

    def call(self, interface: str, function: str, *args: Any) -> Any:
        """Call an export, e.g. ``call("tokens", "get", key)``; its error raises VaultError."""
        index = self.instance.get_export_index(self.store, f"{PACKAGE}/{interface}@{VERSION}")
        func = self.instance.get_func(self.store, self.instance.get_export_index(self.store, function, index))
        if func is None:
            raise AttributeError(f"the component exports no {interface}.{function}")
        result = func(self.store, *(_component(arg) for arg in args))
        result_type = func.type(self.store).result
        return _pythonic(_unwrap(result_type, result) if isinstance(result_type, ResultType) else result)

    def _deny_http(self, linker: Linker, handler_type: Any) -> None:
        handle_type = handler_type.exports(linker.engine)["handle"].ty

        def handle(store: Store, request: Any, options: Any) -> Any:
            self.denied_requests += 1
            request.drop(store)
            if options is not None:
                options.drop(store)
            return _lower(handle_type.result, "err", Variant("HTTP-request-denied"))

        linker.allow_shadowing = True
        with linker.root() as root, root.add_instance(WASI_HTTP_HANDLER) as instance:
            instance.add_func("handle", handle)

    @staticmethod
    def _host_function(func_type: Any, implementation: Callable[..., tuple[str, Any]]) -> Callable[..., Any]:
        """Adapt ``implementation`` to the import's type. It returns ``("ok", payload)``, or
        ``("err", payload)`` where a variant error is given as its case name."""
        result_type = func_type.result

        def call(_store: Store, *args: Any) -> Any:
            outcome = implementation(*(_pythonic(arg) for arg in args))
            if outcome is None:
                return None
            tag, payload = outcome
            if tag == "err" and isinstance(result_type.err, VariantType):
                payload = _lower(result_type.err, payload)
            return _lower(result_type, tag, _component(payload))

        return call

    def _capabilities(self) -> dict[str, dict[str, Callable[..., Any]]]:
        storage, keyring = self.storage, self.keyring
        conflict = ("err", "conflict")

        def get(key: str) -> tuple[str, Any]:
            entry = storage.get(key)
            return "ok", entry and record(value=entry[0], version=entry[1])

        def put(key: str, value: bytes, expected: int | None) -> tuple[str, Any]:
            version = storage.put(key, value, expected)
            return conflict if version is None else ("ok", version)

        def delete(key: str, expected: int) -> tuple[str, Any]:
            return ("ok", None) if storage.delete(key, expected) else conflict

        def list_keys(prefix: str, cursor: str | None, limit: int) -> tuple[str, Any]:
            keys, next_cursor = storage.list(prefix, cursor, limit)
            return "ok", record(keys=keys, cursor=next_cursor)

        def commit(writes: list[Any]) -> tuple[str, Any]:
            versions = storage.commit([(write.tag, tuple(write.payload)) for write in writes])
            return conflict if versions is None else ("ok", versions)

        def version_of(key: str) -> int | None:
            entry = storage.get(key)
            return None if entry is None else entry[1]

        def wait_for_change(key: str, seen: int | None, timeout_ms: int) -> tuple[str, Any]:
            # Imports are called synchronously, so nothing in this thread writes meanwhile:
            # read the record every 10 ms for other threads' and processes' writes.
            deadline = time.monotonic() + timeout_ms / 1000
            while version_of(key) == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(WAIT_POLL_SECONDS, left))
            return "ok", None

        return {
            "storage": {
                "get": get,
                "put": put,
                "delete": delete,
                "list": list_keys,
                "commit": commit,
                "wait-for-change": wait_for_change,
            },
            "keyring": {
                "active-key": lambda: ("ok", record(id=keyring.active, material=keyring.keys[keyring.active])),
                "key-by-id": lambda key_id: ("ok", keyring.keys.get(key_id)),
            },
            "audit": {"emit": lambda event: self.audit.append(event)},
        }
