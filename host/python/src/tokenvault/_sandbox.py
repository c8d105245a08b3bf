"""The tokenvault component in wasmtime-py, with this process supplying its storage, keyring
and audit trail, and the sandbox the Rust host gives it: a memory cap and a deadline per call,
no environment, files or sockets, and requests only to allowed origins.

wasmtime-py has no per-request hook in its ``wasi:http``, so egress goes through a second,
small component (``egress.wasm``, from ``host/python/egress``): it exports the outgoing
handler the tokenvault component imports, asks this host whether the request's origin is
allowed, clamps its timeouts, and only then hands it to wasmtime's handler.

Calls run on the caller's thread, each in a fresh instance, except ``tokens.get``, which
reuses one instance per tenant on each thread (as the Rust host's sessions do).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from wasmtime import Config, Engine, Store, WasiConfig, WasmtimeError
from wasmtime.component import Component, Func, Linker, Record, ResultType, Variant, VariantType

from ._keys import ConfigError, IntegrityError
from ._storage import Storage, StorageConflict, Write
from ._trail import AuditUnavailable, Trail, audit_record

PACKAGE = "tokenvault:vault"
VERSION = "0.1.0"
HANDLER = "wasi:http/outgoing-handler@0.2.12"
POLICY = "tokenvault:egress/policy@0.1.0"
# How often the deadline's clock ticks; a call stops within a tick of its deadline.
TICK_SECONDS = 0.01
# Tenants whose `get` instance a thread keeps.
REUSED_INSTANCES = 16
NS_PER_MS = 1_000_000


class CallError(Exception):
    """A call that failed: ``kind`` as the CLI names it, ``detail`` the component's payload."""

    def __init__(self, kind: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail


def origin(url: str) -> str:
    """``scheme://host:port`` with the port spelled out, as the Rust host compares origins."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http or https URL")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


def parse_origins(allowed: Any) -> frozenset[str]:
    """``allowed_origins`` checked up front, so a typo fails ``open_vault`` rather than every call."""
    if isinstance(allowed, str) or not hasattr(allowed, "__iter__"):
        raise TypeError("allowed_origins must be a list of origins such as https://github.com")
    origins = set()
    for given in allowed:
        try:
            if not isinstance(given, str):
                raise ValueError
            parts = urlsplit(given)
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError
            origins.add(origin(given))
        except ValueError:
            raise ValueError(f"allowed_origins: {given!r} is not an origin such as https://github.com") from None
    return frozenset(origins)


def _lower(ty: Any, tag: str, payload: Any = None) -> Any:
    """A value of variant or result type ``ty`` for case ``tag``: wasmtime-py wants a
    ``Variant`` only where Python types cannot tell the cases apart (its ``_tagged``)."""
    return Variant(tag, payload) if ty._tagged() else payload


def to_wit(value: Any) -> Any:
    """A value for the component: namespaces and dataclasses as ``Record`` (kebab-case fields)."""
    if isinstance(value, SimpleNamespace) or hasattr(value, "__dataclass_fields__"):
        converted = Record()
        for name, v in vars(value).items():
            setattr(converted, name.replace("_", "-"), to_wit(v))
        return converted
    if isinstance(value, list):
        return [to_wit(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_wit(v) for v in value)
    return value


def from_wit(value: Any) -> Any:
    """A value from the component: records as namespaces with snake_case fields."""
    if isinstance(value, Record):
        return SimpleNamespace(**{name.replace("-", "_"): from_wit(v) for name, v in vars(value).items()})
    if isinstance(value, list):
        return [from_wit(v) for v in value]
    if isinstance(value, tuple):
        return tuple(from_wit(v) for v in value)
    if isinstance(value, Variant):
        return Variant(value.tag, from_wit(value.payload))
    return value


@dataclass
class Settings:
    storage: Storage
    keys: Any  # _keys.Keys
    trail: Trail
    actor: str | None
    allowed_origins: frozenset[str]
    memory_bytes: int
    deadline_ms: int
    connect_timeout_ms: int
    response_timeout_ms: int


@dataclass
class _Session:
    """One store with an instance of each component."""

    store: Store
    instance: Any
    filter_handle: Func
    # An export's function, its result type, and whether wasmtime-py tags that result.
    funcs: dict[tuple[str, str], tuple[Func, Any, bool]] = field(default_factory=dict)


@dataclass
class _Call:
    session: _Session
    # When the call must be over (time.monotonic()): waits in imports end by then too.
    deadline: float
    audit_error: str | None = None


class Sandbox:
    def __init__(self, component_path: str, egress_path: str, settings: Settings, cache_dir: str | None) -> None:
        self.settings = settings
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.component = _load_component(self.engine, component_path, cache_dir)
        self.egress = _load_component(self.engine, egress_path, cache_dir)
        self._local = threading.local()
        self._imports = self.component.type.imports(self.engine)
        self._linker = self._product_linker()
        self._egress_linker = self._filter_linker()
        self._deadline_ticks = math.ceil(settings.deadline_ms / 1000 / TICK_SECONDS) + 1
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="tokenvault-deadline", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stopped.set()
        self._ticker.join()

    # -- calls ---------------------------------------------------------------------------

    def call(self, interface: str, function: str, *args: Any, reuse_for: str | None = None) -> Any:
        """Call an export; its ``error`` result raises ``CallError``, as does a stopped call."""
        cache = self._reused() if reuse_for is not None else None
        session = cache.pop(reuse_for, None) if cache is not None and reuse_for is not None else None
        if session is None:
            session = self._instantiate()
        started = time.monotonic()
        call = _Call(session, started + self.settings.deadline_ms / 1000)
        self._local.call = call
        session.store.set_epoch_deadline(self._deadline_ticks)
        try:
            func, result_type, tagged = self._func(session, interface, function)
            result = func(session.store, *(to_wit(a) for a in args))
        except WasmtimeError as e:
            # A trapped instance is never used again (it is not put back in the cache).
            if time.monotonic() - started >= self.settings.deadline_ms / 1000:
                raise CallError("sandbox", f"the call ran past its deadline of {self.settings.deadline_ms} ms") from None
            # wasmtime's message is a backtrace, then the cause on its last line.
            lines = str(e).strip().splitlines()
            reason = lines[-1].strip() if lines else type(e).__name__
            limit = self.settings.memory_bytes / 2**20
            raise CallError("sandbox", f"the call was stopped (its memory cap is {limit:.0f} MiB): {reason}") from None
        finally:
            self._local.call = None
        if cache is not None and reuse_for is not None:
            cache[reuse_for] = session
            while len(cache) > REUSED_INSTANCES:
                cache.popitem(last=False)
        # Nothing is handed out unaudited: a call whose event was not written fails.
        if call.audit_error is not None:
            raise CallError("storage", call.audit_error)
        if isinstance(result_type, ResultType):
            if tagged:
                if result.tag == "err":
                    raise _error(result.payload)
                result = result.payload
            elif isinstance(result, Variant) and isinstance(result_type.err, VariantType):
                raise _error(result)
        return from_wit(result)

    def _reused(self) -> OrderedDict[str, _Session]:
        cache = getattr(self._local, "sessions", None)
        if cache is None:
            cache = self._local.sessions = OrderedDict()
        return cache

    def _instantiate(self) -> _Session:
        store = Store(self.engine)
        store.set_wasi(WasiConfig())  # nothing inherited: no environment, arguments, stdio or files
        store.set_wasi_http()
        store.set_limits(memory_size=self.settings.memory_bytes)
        store.set_epoch_deadline(self._deadline_ticks)
        try:
            egress = self._egress_linker.instantiate(store, self.egress)
            handler = egress.get_export_index(store, HANDLER)
            index = handler and egress.get_export_index(store, "handle", handler)
            handle = egress.get_func(store, index) if index is not None else None
            instance = self._linker.instantiate(store, self.component)
        except WasmtimeError as e:
            raise CallError("sandbox", f"the component could not be instantiated: {e}") from None
        if handle is None:
            raise CallError("config", "the egress component exports no outgoing handler")
        return _Session(store, instance, handle)

    def _func(self, session: _Session, interface: str, function: str) -> tuple[Func, Any, bool]:
        found = session.funcs.get((interface, function))
        if found is None:
            store, instance = session.store, session.instance
            exported = instance.get_export_index(store, f"{PACKAGE}/{interface}@{VERSION}")
            index = exported and instance.get_export_index(store, function, exported)
            func = instance.get_func(store, index) if index is not None else None
            if func is None:
                raise CallError("config", f"the component exports no {interface}.{function}")
            result_type = func.type(store).result
            tagged = isinstance(result_type, ResultType) and result_type._tagged()
            found = session.funcs[(interface, function)] = (func, result_type, tagged)
        return found

    # -- imports -------------------------------------------------------------------------

    def _filter_linker(self) -> Linker:
        settings = self.settings

        def allowed(_store: Any, scheme: str, authority: str) -> bool:
            try:
                return origin(f"{scheme}://{authority}") in settings.allowed_origins
            except ValueError:
                return False

        def timeouts(_store: Any) -> Record:
            limits = Record()
            for name, ms in [
                ("connect", settings.connect_timeout_ms),
                ("first-byte", settings.response_timeout_ms),
                ("between-bytes", settings.response_timeout_ms),
            ]:
                setattr(limits, name, ms * NS_PER_MS)
            return limits

        linker = Linker(self.engine)
        linker.add_wasip2()
        linker.add_wasi_http()
        with linker.root() as root, root.add_instance(POLICY) as policy:
            policy.add_func("allowed", allowed)
            policy.add_func("timeouts", timeouts)
        return linker

    def _product_linker(self) -> Linker:
        linker = Linker(self.engine)
        linker.add_wasip2()
        linker.add_wasi_http()

        def handle(store: Any, request: Any, options: Any) -> Any:
            # Through the egress component of the same store, which forwards what it allows.
            return self._local.call.session.filter_handle(store, request, options)

        linker.allow_shadowing = True
        with linker.root() as root:
            with root.add_instance(HANDLER) as handler:
                handler.add_func("handle", handle)
            for interface, functions in self._capabilities().items():
                name = f"{PACKAGE}/{interface}@{VERSION}"
                imported = self._imports.get(name)
                if imported is None:
                    continue
                types: Any = imported.ty.exports(self.engine)  # type: ignore[union-attr]
                with root.add_instance(name) as instance:
                    for function, implementation in functions.items():
                        if function in types:  # a build of the component may import fewer
                            instance.add_func(function, _host_function(types[function].ty, implementation))
        return linker

    def _capabilities(self) -> dict[str, dict[str, Callable[..., Any]]]:
        settings = self.settings
        storage, keys = settings.storage, settings.keys

        def entry(key: str) -> Any:
            found = storage.get(key)
            return found and SimpleNamespace(value=found[0], version=found[1])

        def put(key: str, value: bytes, expected: int | None) -> int:
            return storage.put(key, value, expected)

        def list_keys(prefix: str, cursor: str | None, limit: int) -> Any:
            keys_found, next_cursor = storage.list(prefix, cursor, limit)
            return SimpleNamespace(keys=keys_found, cursor=next_cursor)

        def commit(writes: list[Variant]) -> list[int | None]:
            # A put's payload is (key, value, expected), a delete's (key, expected).
            payloads: list[Any] = [w.payload for w in writes]
            return storage.commit(
                [
                    Write(p[0], bytes(p[1]), p[2]) if w.tag == "put" else Write(p[0], None, p[1])
                    for w, p in zip(writes, payloads)
                ]
            )

        def active_key() -> Any:
            key_id, material = keys.active()
            return SimpleNamespace(id=key_id, material=material)

        def wait_for_change(key: str, seen: int | None, timeout_ms: int) -> None:
            # Cut short at the call's deadline, as the Rust host does.
            left_ms = int((self._local.call.deadline - time.monotonic()) * 1000)
            storage.wait_for_change(key, seen, max(0, min(timeout_ms, left_ms)))

        def emit(event: Any) -> None:
            call = self._local.call
            try:
                settings.trail.record(audit_record(event, settings.actor))
            except AuditUnavailable as e:
                call.audit_error = str(e)
            except Exception as e:  # noqa: BLE001 (emit has no error case: the call fails instead)
                call.audit_error = f"the audit trail: {e}"

        return {
            "storage": {
                "get": entry,
                "put": put,
                "delete": storage.delete,
                "list": list_keys,
                "commit": commit,
                "wait-for-change": wait_for_change,
            },
            "keyring": {"active-key": active_key, "key-by-id": keys.by_id},
            "audit": {"emit": emit},
        }


def _load_component(engine: Engine, path: str, cache_dir: str | None) -> Component:
    """Compile a component, or load it precompiled from ``cache_dir`` (as the Rust host does)
    when neither it nor wasmtime changed: a start then takes milliseconds, not seconds."""
    try:
        with open(path, "rb") as f:
            wasm = f.read()
    except OSError as e:
        raise ConfigError(f"the component {path}: {e.strerror}") from None
    cached = None
    if cache_dir is not None:
        name = f"{hashlib.sha256(wasm).hexdigest()[:16]}-wasmtime-py-{metadata.version('wasmtime')}.cwasm"
        cached = os.path.join(cache_dir, name)
        if os.path.exists(cached):
            try:
                # The file is one this host wrote into the vault's data directory for this
                # exact component and wasmtime (both are in its name); wasmtime also refuses
                # one compiled under other settings. One that fails is compiled again.
                return Component.deserialize_file(engine, cached)
            except WasmtimeError:
                pass
    try:
        component = Component(engine, wasm)
    except WasmtimeError as e:
        raise ConfigError(f"the component {path} does not compile: {e}") from None
    if cached is not None:
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            partial = f"{cached}.tmp{os.getpid()}"
            with open(partial, "wb") as f:
                f.write(component.serialize())
            os.replace(partial, cached)
        except OSError:
            pass  # the next start compiles again
    return component


def _host_function(func_type: Any, implementation: Callable[..., Any]) -> Callable[..., Any]:
    """Adapt ``implementation`` to the import's type: its return value is the ``ok`` case;
    a storage conflict, a failing backend or keyring become the ``err`` case."""
    result_type = func_type.result

    def call(_store: Any, *args: Any) -> Any:
        try:
            value = implementation(*(from_wit(arg) for arg in args))
        except StorageConflict:
            return _lower(result_type, "err", _lower(result_type.err, "conflict"))
        except (ConfigError, IntegrityError) as e:  # the keyring's failures: a string
            return _lower(result_type, "err", str(e))
        except Exception as e:
            message = str(e) or type(e).__name__
            if isinstance(result_type, ResultType) and isinstance(result_type.err, VariantType):
                return _lower(result_type, "err", _lower(result_type.err, "unavailable", message))
            return _lower(result_type, "err", message)
        if not returns:
            return None
        return Variant("ok", to_wit(value)) if tagged else to_wit(value)

    # Worked out once: wasmtime-py's `_tagged` builds sets of classes on every use.
    returns = isinstance(result_type, ResultType)
    tagged = returns and result_type._tagged()
    return call


def _error(error: Variant) -> CallError:
    """The component's ``error`` variant as a ``CallError``."""
    payload = from_wit(error.payload)
    if isinstance(payload, SimpleNamespace):
        return CallError(error.tag, payload.message, payload)
    return CallError(error.tag, str(payload))
