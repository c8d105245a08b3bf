"""``open_vault`` and ``Vault``: the methods of the Rust host's ``Vault`` in snake_case."""

from __future__ import annotations

import builtins
import getpass
import os
from collections.abc import Mapping
from dataclasses import asdict, fields
from importlib import resources
from types import SimpleNamespace
from typing import Any, Union

from ._keys import ConfigError, IntegrityError, Keys, master_key_source
from ._sandbox import CallError, Sandbox, Settings, parse_origins
from ._storage import Storage, StorageUnavailable, open_storage
from ._trail import Trail
from ._types import (
    AuthorizationRequest,
    Connected,
    ConnectionInfo,
    ConnectionKey,
    ConnectLink,
    ProviderConfig,
    ProviderFailure,
    ProviderInfo,
    RemovalReceipt,
    TemplateRef,
    TokenSet,
    TokenvaultError,
)

KeyLike = Union[ConnectionKey, Mapping[str, str]]  # noqa: UP007 (a runtime alias)


def _component_file(name: str) -> str:
    return str(resources.files("tokenvault").joinpath("data", name))


def open_vault(
    storage: str | None = None,
    *,
    data_dir: str | None = None,
    allowed_origins: Any = (),
    memory_limit_mib: int = 64,
    call_deadline_ms: int = 30_000,
    connect_timeout_ms: int = 5_000,
    response_timeout_ms: int = 15_000,
    master_key: str | None = None,
    master_key_file: str | None = None,
    actor: str | None = None,
    component: str | None = None,
) -> Vault:
    """Open a vault.

    ``storage``: ``sqlite://PATH`` (default ``DATA_DIR/vault.db``), ``postgres://…``,
    ``redis://…`` (``rediss://`` for TLS) or ``memory:``. The master key: ``master_key``
    (base64), ``TOKENVAULT_MASTER_KEY``, ``master_key_file``, or ``DATA_DIR/master.key``
    (made on first use over SQLite or memory). The compiled component is kept in
    ``DATA_DIR/cache`` for the next start. ``allowed_origins``: where the component may
    send requests (``https://github.com``); any other origin is refused before a connection
    opens. ``component``: another build of the component, for tests.
    """
    origins = parse_origins(allowed_origins)
    limits = {
        "memory_limit_mib": memory_limit_mib,
        "call_deadline_ms": call_deadline_ms,
        "connect_timeout_ms": connect_timeout_ms,
        "response_timeout_ms": response_timeout_ms,
    }
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer")
    if storage is None and data_dir is None:
        raise ValueError("give storage (a storage URL) or data_dir")
    url = storage if storage is not None else f"sqlite://{os.path.join(data_dir or '', 'vault.db')}"
    try:
        opened = open_storage(url)
    except StorageUnavailable as e:
        raise TokenvaultError("storage", str(e)) from None
    try:
        embedded = url.startswith(("sqlite:", "memory:"))
        keys = Keys.open(opened, master_key_source(master_key, master_key_file, data_dir, embedded))
        settings = Settings(
            storage=opened,
            keys=keys,
            trail=Trail(opened),
            actor=actor if actor is not None else f"python:{getpass.getuser()}",
            allowed_origins=origins,
            memory_bytes=memory_limit_mib * 2**20,
            deadline_ms=call_deadline_ms,
            connect_timeout_ms=connect_timeout_ms,
            response_timeout_ms=response_timeout_ms,
        )
        cache_dir = os.path.join(data_dir, "cache") if data_dir is not None else None
        component_path = component or _component_file("tokenvault.wasm")
        sandbox = Sandbox(component_path, _component_file("egress.wasm"), settings, cache_dir)
    except BaseException as e:
        opened.close()
        if isinstance(e, ConfigError):
            raise TokenvaultError("config", str(e)) from None
        if isinstance(e, IntegrityError):
            raise TokenvaultError("integrity", str(e)) from None
        if isinstance(e, StorageUnavailable):
            raise TokenvaultError("storage", str(e)) from None
        raise
    return Vault(sandbox, opened)


def _key(key: KeyLike) -> ConnectionKey:
    """A ``ConnectionKey``, or a mapping of its fields (``name`` "default" when not given)."""
    if isinstance(key, ConnectionKey):
        found = key
    elif isinstance(key, Mapping):
        try:
            found = ConnectionKey(**key)
        except TypeError:
            raise TypeError("a key is {tenant, user, provider, name}") from None
    else:
        raise TypeError("a key is a ConnectionKey or a mapping {tenant, user, provider, name}")
    for f in fields(found):
        if not isinstance(getattr(found, f.name), str):
            raise TypeError(f"key.{f.name} must be a string")
    return found


def _grant(grant: Mapping[str, Any]) -> SimpleNamespace:
    """A provider's token response as it arrives (RFC 6749 section 5.1), as the component's token-grant."""
    if not isinstance(grant, Mapping) or not isinstance(grant.get("access_token"), str):
        raise TypeError("a grant needs access_token (RFC 6749 section 5.1)")

    def optional(name: str, kind: type) -> Any:
        value = grant.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise TypeError(f"grant[{name!r}] must be a {kind.__name__}")
        return value

    expires_in = optional("expires_in", (int, float))  # type: ignore[arg-type]
    return SimpleNamespace(
        access_token=grant["access_token"],
        token_type=optional("token_type", str) or "Bearer",
        expires_in=None if expires_in is None else max(0, int(expires_in)),
        refresh_token=optional("refresh_token", str),
        scope=optional("scope", str),
    )


def _provider_config(config: ProviderConfig | Mapping[str, Any]) -> SimpleNamespace:
    if isinstance(config, Mapping):
        try:
            config = ProviderConfig(**config)
        except TypeError as e:
            raise TypeError(f"a provider config: {e}") from None
    if not isinstance(config, ProviderConfig):
        raise TypeError("a provider config is a ProviderConfig or a mapping of its fields")
    if not isinstance(config.name, str) or not isinstance(config.client_id, str):
        raise TypeError("a provider config needs name and client_id")
    template = config.template
    if isinstance(template, Mapping):
        template = TemplateRef(**template)
    params = config.authorization_params
    return SimpleNamespace(
        **{
            **asdict(config),
            "template": template and SimpleNamespace(name=template.name, tenant=template.tenant),
            "scopes": list(config.scopes),
            "authorization_params": [tuple(p) for p in (params.items() if isinstance(params, Mapping) else params)],
        }
    )


def _token(value: SimpleNamespace) -> TokenSet:
    return TokenSet(**vars(value))


def _info(value: SimpleNamespace) -> ConnectionInfo:
    return ConnectionInfo(**vars(value))


def _failure(error: CallError) -> TokenvaultError:
    detail = error.detail
    failure = ProviderFailure(**vars(detail)) if isinstance(detail, SimpleNamespace) else None
    return TokenvaultError(error.kind, error.message, failure)


def _receipt(value: SimpleNamespace) -> RemovalReceipt:
    upstream = value.upstream
    if upstream.tag == "failed":
        error = upstream.payload
        payload = error.payload
        message = payload.message if isinstance(payload, SimpleNamespace) else str(payload)
        failure = _failure(CallError(error.tag, message, payload))
        return RemovalReceipt(value.provider, value.name, "failed", failure)
    return RemovalReceipt(value.provider, value.name, upstream.tag)


class Providers:
    """The provider registry: the vault's, or with ``tenant=`` a tenant's own (which its
    connections use before the vault's of the same name)."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    def put(self, config: ProviderConfig | Mapping[str, Any], *, tenant: str | None = None) -> ProviderInfo:
        return _provider_info(self._vault._call("providers", "put", tenant, _provider_config(config)))

    def get(self, name: str, *, tenant: str | None = None) -> ProviderInfo:
        return _provider_info(self._vault._call("providers", "get", tenant, name))

    def list(self, *, tenant: str | None = None) -> builtins.list[ProviderInfo]:
        return [_provider_info(p) for p in self._vault._call("providers", "list", tenant)]

    def remove(self, name: str, *, tenant: str | None = None) -> None:
        self._vault._call("providers", "remove", tenant, name)


def _provider_info(value: SimpleNamespace) -> ProviderInfo:
    return ProviderInfo(**{**vars(value), "authorization_params": [tuple(p) for p in value.authorization_params]})


class Vault:
    """A vault: methods mirror the Rust host's ``Vault``. Safe to share between threads;
    close it when done (or use it in a ``with`` block)."""

    def __init__(self, sandbox: Sandbox, storage: Storage) -> None:
        self._sandbox = sandbox
        self._storage = storage
        self._closed = False
        self.providers = Providers(self)

    def _call(self, interface: str, function: str, *args: Any, reuse_for: str | None = None) -> Any:
        if self._closed:
            raise TokenvaultError("config", "the vault is closed")
        try:
            return self._sandbox.call(interface, function, *args, reuse_for=reuse_for)
        except CallError as e:
            raise _failure(e) from None

    def store(self, key: KeyLike, grant: Mapping[str, Any]) -> ConnectionInfo:
        """Keep a provider's token response (``access_token``, ``token_type``, ``expires_in``,
        ``refresh_token``, ``scope``) for ``key``."""
        return _info(self._call("tokens", "store", _key(key), _grant(grant)))

    def get(self, key: KeyLike) -> TokenSet:
        """A token fresh enough to use, refreshed first when about to expire."""
        found = _key(key)
        return _token(self._call("tokens", "get", found, reuse_for=found.tenant))

    def refresh(self, key: KeyLike) -> TokenSet:
        """Refresh now, whatever the expiry."""
        return _token(self._call("tokens", "refresh", _key(key)))

    def get_or_link(self, key: KeyLike, scopes: builtins.list[str] | None = None) -> TokenSet | ConnectLink:
        """A token, or a ``ConnectLink`` when the account must be connected (again)."""
        found = self._call("tokens", "get-or-link", _key(key), scopes)
        return _token(found.payload) if found.tag == "token" else ConnectLink(**vars(found.payload))

    def list(self, tenant: str, user: str) -> builtins.list[ConnectionInfo]:
        """A user's connections: metadata only."""
        return [_info(c) for c in self._call("tokens", "list", tenant, user)]

    def remove(self, key: KeyLike) -> RemovalReceipt:
        """Revoke at the provider (RFC 7009) and delete; the receipt says what the provider did."""
        return _receipt(self._call("tokens", "remove", _key(key)))

    def revoke_all(self, tenant: str, user: str) -> builtins.list[RemovalReceipt]:
        return [_receipt(r) for r in self._call("tokens", "revoke-all", tenant, user)]

    def begin(
        self, key: KeyLike, redirect_uri: str, scopes: builtins.list[str] | None = None, browser: str | None = None
    ) -> AuthorizationRequest:
        """Start connecting ``key``; send the user's browser to the result's ``url``.
        ``browser``: a value bound to the user's browser (a cookie's), which ``complete`` must
        be given again."""
        return AuthorizationRequest(**vars(self._call("connect", "begin", _key(key), redirect_uri, scopes, browser)))

    def complete(self, callback_query: str, browser: str | None = None) -> Connected:
        """Finish a flow with the query string the provider sent to the redirect URI."""
        done = self._call("connect", "complete", str(callback_query).lstrip("?"), browser)
        return Connected(ConnectionKey(**vars(done.key)), _info(done.info))

    def describe(self) -> str:
        """What the vault's storage is, for logs (never a credential)."""
        return self._storage.describe()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sandbox.close()
            self._storage.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
