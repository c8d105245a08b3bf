"""What the vault's methods take and return. Field names are the component's (WIT) names in
snake_case. Values that are secrets (tokens, client secrets, link codes) are left out of
``repr``, so logging one of these never logs a value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ClientAuth = Literal["client-secret-basic", "client-secret-post"]


class TokenvaultError(Exception):
    """A failed call. ``kind`` is one the tokenvault CLI names: ``not-found``,
    ``invalid-input``, ``reconnect-required``, ``provider-error``, ``storage``, ``integrity``,
    ``egress-denied``, ``sandbox`` (the call hit its memory cap or deadline, or trapped) or
    ``config``. For ``provider-error``, ``detail`` is the ``ProviderFailure``."""

    def __init__(self, kind: str, message: str, detail: ProviderFailure | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class ConnectionKey:
    """One stored connection: a tenant's user's connection to a provider, ``name`` telling
    several apart."""

    tenant: str
    user: str
    provider: str
    name: str = "default"


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    token_type: str
    expires_at: int | None
    """Unix seconds; None when the provider gave no lifetime."""
    scope: str | None
    refresh_token: str | None = field(repr=False)


@dataclass(frozen=True)
class ConnectionInfo:
    """What ``list`` shows of a connection: metadata only, never a value."""

    provider: str
    name: str
    kind: Literal["user", "client"]
    scopes: list[str]
    expires_at: int | None
    has_refresh_token: bool
    status: Literal["active", "reconnect-required"]
    updated_at: int


@dataclass(frozen=True)
class TemplateRef:
    """A built-in provider template: github, google, microsoft, slack, discord or gitlab."""

    name: str
    tenant: str | None = None


@dataclass
class ProviderConfig:
    """A provider to register. Endpoints come from a template, the issuer's metadata, or are
    given; a given one overrides the others."""

    name: str
    client_id: str
    template: TemplateRef | None = None
    issuer: str | None = None
    authorization_url: str | None = None
    token_url: str | None = None
    revocation_url: str | None = None
    device_authorization_url: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_auth: ClientAuth | None = None
    scopes: list[str] = field(default_factory=list)
    authorization_params: dict[str, str] | list[tuple[str, str]] = field(default_factory=list)
    refresh_buffer_secs: int | None = None
    api_base_url: str | None = None


@dataclass(frozen=True)
class ProviderInfo:
    """A registered provider, without its secret. ``tenant`` None: the vault's own."""

    name: str
    tenant: str | None
    template: str | None
    issuer: str | None
    authorization_url: str | None
    token_url: str
    revocation_url: str | None
    device_authorization_url: str | None
    client_id: str
    has_client_secret: bool
    client_auth: ClientAuth
    scopes: list[str]
    authorization_params: list[tuple[str, str]]
    refresh_buffer_secs: int
    api_base_url: str | None
    updated_at: int


@dataclass(frozen=True)
class ProviderFailure:
    status: int | None
    code: str | None
    """The OAuth error code (RFC 6749 section 5.2), when the provider sent one."""
    message: str
    timed_out: bool


@dataclass(frozen=True)
class ConnectLink:
    """A one-time code that starts connecting the user's account: show it only to them."""

    code: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True)
class RemovalReceipt:
    """A removed connection, and what became of its tokens at the provider: ``revoked``,
    ``unsupported`` (no revocation endpoint) or ``failed`` (``error`` says why)."""

    provider: str
    name: str
    upstream: Literal["revoked", "unsupported", "failed"]
    error: TokenvaultError | None = None


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the user's browser, the ``state`` the provider will send back, and
    when the flow expires (Unix seconds)."""

    url: str
    state: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True)
class Connected:
    key: ConnectionKey
    info: ConnectionInfo
