"""The keyring, as the Rust host keeps it: data keys in the vault's storage (the record
``keyring``), each wrapped by the master key only hosts hold. A host reads the keyring again
when its copy is older than two seconds, or when a record names a key it lacks, so another
host's rotation reaches it within seconds. No message here quotes key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from ._storage import Storage, StorageConflict

KEYRING_KEY = "keyring"
MASTER_KEY_ENV = "TOKENVAULT_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
FORMAT = 1
RELOAD_AFTER_SECONDS = 2.0
MISS_RELOAD_GAP_SECONDS = 0.1


class ConfigError(Exception):
    pass


class IntegrityError(Exception):
    pass


class MasterKey:
    def __init__(self, material: bytes) -> None:
        self.material = material
        digest = hashlib.sha256(b"tokenvault master key id\0" + material).hexdigest()
        self.id = f"m-{digest[:16]}"

    @classmethod
    def from_base64(cls, text: str, what: str) -> MasterKey:
        """Base64 of 32 bytes; ``what`` names where the text came from (never the text)."""
        try:
            material = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            material = b""
        if len(material) != 32:
            raise ConfigError(f"{what} is not a master key (base64 of 32 bytes)")
        return cls(material)

    @classmethod
    def read_file(cls, path: str) -> MasterKey:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read the master key file {path}: {e.strerror}") from None
        return cls.from_base64(text, f"the master key file {path}")

    def wrap(self, key_id: str, data_key: bytes) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + AESGCMSIV(self.material).encrypt(nonce, data_key, _wrap_context(key_id))).decode()

    def unwrap(self, key_id: str, wrapped: str) -> bytes | None:
        try:
            raw = base64.b64decode(wrapped)
            key = AESGCMSIV(self.material).decrypt(raw[:12], raw[12:], _wrap_context(key_id))
        except (InvalidTag, ValueError, binascii.Error):
            return None
        return key if len(key) == 32 else None


def _wrap_context(key_id: str) -> bytes:
    """A wrapped key is bound to its id and the record's format."""
    return b"tokenvault keyring" + bytes([FORMAT]) + key_id.encode()


@dataclass
class MasterKeySource:
    """How to load the master key, and (over an embedded store) how to make one."""

    load: Callable[[], MasterKey]
    create: Callable[[], MasterKey] | None = None


def master_key_source(
    master_key: str | None, master_key_file: str | None, data_dir: str | None, embedded: bool
) -> MasterKeySource:
    """``master_key`` (base64), else ``TOKENVAULT_MASTER_KEY``, else ``master_key_file``, else
    ``DATA_DIR/master.key``, which is made on first use over an embedded store (SQLite or
    memory) only: hosts sharing a store must all be given one key."""
    if master_key:
        return MasterKeySource(lambda: MasterKey.from_base64(master_key, "master_key"))
    from_env = os.environ.get(MASTER_KEY_ENV)
    if from_env:
        return MasterKeySource(lambda: MasterKey.from_base64(from_env, MASTER_KEY_ENV))
    if master_key_file:
        return MasterKeySource(lambda: MasterKey.read_file(master_key_file))
    if not data_dir:
        raise ConfigError(f"no master key: give master_key, master_key_file or data_dir, or set {MASTER_KEY_ENV}")
    path = os.path.join(data_dir, MASTER_KEY_FILE)

    def load() -> MasterKey:
        if not os.path.exists(path):
            raise ConfigError(
                f"the vault's keyring is wrapped by a master key, but {path} is missing and neither {MASTER_KEY_ENV} "
                "nor master_key_file is set: restore that file, or give the key"
            )
        return MasterKey.read_file(path)

    def create() -> MasterKey:
        if not embedded:
            raise ConfigError(
                f"a shared store needs the same master key on every host: set {MASTER_KEY_ENV} (base64 of 32 bytes) "
                "or master_key_file (`tokenvault master-key new FILE` makes one)"
            )
        if os.path.exists(path):
            return MasterKey.read_file(path)
        key = MasterKey(secrets.token_bytes(32))
        os.makedirs(data_dir, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return MasterKey.read_file(path)  # another process made it first
        except OSError as e:
            raise ConfigError(f"cannot write the master key file {path}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key.material).decode() + "\n")
        return key

    return MasterKeySource(load, create)


@dataclass(frozen=True)
class _Keyring:
    version: int
    active: str
    keys: dict[str, bytes]


def _open_record(value: bytes, version: int, master: MasterKey) -> _Keyring:
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IntegrityError("the keyring record in storage is not one this host can read")
    if record.get("master_key") != master.id:
        raise ConfigError(
            f"the master key {master.id} does not open this vault's keyring: its keys are wrapped by {record.get('master_key')}"
        )
    keys = {}
    for entry in record["keys"]:
        if not entry.get("wrapped"):
            continue  # retired
        key = master.unwrap(entry["id"], entry["wrapped"])
        if key is None:
            raise IntegrityError(
                f"data key {entry['id']!r} in the keyring does not unwrap under master key {master.id}: the keyring was altered"
            )
        keys[entry["id"]] = key
    if record["active"] not in keys:
        raise IntegrityError(f"the keyring's active key {record['active']!r} is not in it")
    return _Keyring(version, record["active"], keys)


class Keys:
    """The keyring of one vault, as this host sees it."""

    def __init__(self, storage: Storage, master: MasterKey, keyring: _Keyring) -> None:
        self._storage = storage
        self._master = master
        self._keyring = keyring
        self._checked = time.monotonic()
        self._last_miss_reload = 0.0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, storage: Storage, source: MasterKeySource) -> Keys:
        """Open the keyring in ``storage``, making it (with one new key) on a store that has
        none and holds no records at all: a store with records but no keyring lost it, and a
        new key could not open them."""
        for _ in range(3):
            entry = storage.get(KEYRING_KEY)
            if entry is not None:
                master = source.load()
                return cls(storage, master, _open_record(entry[0], entry[1], master))
            if storage.list("", None, 1)[0]:
                raise ConfigError(
                    "the vault's keyring is missing, but the storage holds records; a new key could not open the "
                    "sealed ones, so none is made. Restore the keyring record"
                )
            master = (source.create or source.load)()
            key_id = f"k-{secrets.token_hex(4)}"
            data_key = secrets.token_bytes(32)
            record = {
                "format": FORMAT,
                "master_key": master.id,
                "active": key_id,
                "keys": [{"id": key_id, "created_at_ms": int(time.time() * 1000), "wrapped": master.wrap(key_id, data_key)}],
            }
            try:
                version = storage.put(KEYRING_KEY, json.dumps(record).encode(), None)
            except StorageConflict:
                continue  # another host made it first: open theirs
            return cls(storage, master, _Keyring(version, key_id, {key_id: data_key}))
        raise ConfigError("the keyring record kept changing while it was being made")

    def _reload(self) -> _Keyring:
        entry = self._storage.get(KEYRING_KEY)
        if entry is None:
            raise IntegrityError("the keyring record is gone from storage")
        with self._lock:
            if entry[1] != self._keyring.version:
                self._keyring = _open_record(entry[0], entry[1], self._master)
            self._checked = time.monotonic()
            return self._keyring

    def _current(self) -> _Keyring:
        return self._keyring if time.monotonic() - self._checked < RELOAD_AFTER_SECONDS else self._reload()

    def active(self) -> tuple[str, bytes]:
        """The key new records are sealed with: its id and material."""
        keyring = self._current()
        return keyring.active, keyring.keys[keyring.active]

    def by_id(self, key_id: str) -> bytes | None:
        """A key by id (reading the keyring again when this copy lacks it), or None."""
        keyring = self._current()
        if key_id not in keyring.keys and time.monotonic() - self._last_miss_reload >= MISS_RELOAD_GAP_SECONDS:
            self._last_miss_reload = time.monotonic()
            keyring = self._reload()
        return keyring.keys.get(key_id)
