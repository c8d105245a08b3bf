"""The audit trail, appended as the Rust host appends it: one hash chain in the vault's
storage, shared by every host on the store, which ``tokenvault audit verify`` checks.

Each entry is ``HASH\\nJSON``, JSON holding its position, the previous entry's hash and the
event; HASH is the hex SHA-256 of the JSON bytes. An append's entries are one row, joined by
``\\n``, at ``audit/{2^64-1 - last}`` (20 digits, so listing reads newest first), and the row
is listed under each of its tenants as an empty record. The head record (``audit-head``) names
the last entry; an append is one commit that moves the head with compare-and-swap and creates
the row. Events recorded while another thread appends go together in the next append.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from ._storage import Storage, StorageConflict, Write

HEAD_KEY = "audit-head"
GENESIS = "0" * 64
MAX_SEQ = 2**64 - 1
BATCH = 256
ATTEMPTS = 100


class AuditUnavailable(Exception):
    pass


def _entry_key(seq: int) -> str:
    return f"audit/{MAX_SEQ - seq:020d}"


def _tenant_key(tenant: str, seq: int) -> str:
    escaped = tenant.replace("%", "%25").replace("/", "%2F")
    return f"audit-tenant/{escaped}/{MAX_SEQ - seq:020d}"


def audit_record(event: Any, actor: str | None) -> dict[str, Any]:
    """The component's event as the trail keeps it: identifiers and an outcome, and who asked."""
    record: dict[str, Any] = {"at_ms": event.at, "action": event.action, "outcome": event.outcome}
    for field in ("tenant", "user", "provider", "name"):
        value = getattr(event, field)
        if value is not None:
            record[field] = value
    if actor:
        record["actor"] = actor
    return record


class _Pending:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.done = False
        self.error: AuditUnavailable | None = None


class Trail:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._pending: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._append_lock = threading.Lock()
        # The head as this host last wrote it, and its version.
        self._head: tuple[dict[str, Any], int | None] | None = None

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record``; returns once it is in storage, raises ``AuditUnavailable``."""
        mine = _Pending(record)
        with self._queue_lock:
            self._pending.append(mine)
        with self._append_lock:
            # Whoever held the lock may have appended this one with its own.
            while not mine.done:
                with self._queue_lock:
                    batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                try:
                    self._append([p.record for p in batch])
                except AuditUnavailable as e:
                    for p in batch:
                        p.error = e
                for p in batch:
                    p.done = True
        if mine.error is not None:
            raise mine.error

    def _load_head(self) -> tuple[dict[str, Any], int | None]:
        entry = self._storage.get(HEAD_KEY)
        if entry is None:
            return {"last": 0, "hash": GENESIS, "first": 1, "first_prev": GENESIS}, None
        try:
            head = json.loads(entry[0])
            if not isinstance(head, dict) or not isinstance(head.get("last"), int):
                raise ValueError
        except ValueError:
            raise AuditUnavailable("the audit trail: its head record cannot be read") from None
        return head, entry[1]

    def _append(self, records: list[dict[str, Any]]) -> None:
        for _ in range(ATTEMPTS):
            try:
                head, version = self._head or self._load_head()
            except AuditUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 (the backend's failure, whatever it is)
                raise AuditUnavailable(f"the audit trail: {e}") from None
            self._head = None
            following = dict(head)
            entries = []
            tenants: dict[str, None] = {}
            for record in records:
                following["last"] += 1
                seq = following["last"]
                body = json.dumps({"seq": seq, "prev": following["hash"], **record}, separators=(",", ":")).encode()
                digest = hashlib.sha256(body).hexdigest()
                entries.append(digest.encode() + b"\n" + body)
                if "tenant" in record:
                    tenants[record["tenant"]] = None
                following["hash"] = digest
            last = following["last"]
            writes = [
                Write(HEAD_KEY, json.dumps(following, separators=(",", ":")).encode(), version),
                Write(_entry_key(last), b"\n".join(entries), None),
                *(Write(_tenant_key(tenant, last), b"", None) for tenant in tenants),
            ]
            try:
                head_version = self._storage.commit(writes)[0]
            except StorageConflict:
                continue  # another host appended: take its head
            except Exception as e:
                raise AuditUnavailable(f"the audit trail: {e}") from None
            self._head = (following, head_version)
            return
        raise AuditUnavailable("the audit trail: its head kept moving under other hosts' appends")
