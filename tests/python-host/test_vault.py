"""The component under Python (wasmtime-py), with Python storage, keyring and audit,
against the real OAuth server the Rust tests use. `cargo test -p tokenvault-tests --test
other_hosts` runs this file with the environment below set; see README, Other hosts."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from tokenvault_host import Keyring, MemoryStorage, SqliteStorage, Vault, VaultError, record


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through `cargo test --test other_hosts`")
    return value


COMPONENT = required("TOKENVAULT_COMPONENT")
ISSUER = required("OAUTH_ISSUER")
BASIC_SECRET = required("OAUTH_BASIC_SECRET")
INTEROP_DIR = Path(required("TOKENVAULT_INTEROP_DIR"))


def key(user: str) -> object:
    return record(tenant="acme", user=user, provider="idp", name="default")


def server(path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{ISSUER}{path}", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def refreshes_seen() -> int:
    return server("/__test/stats")["refresh_ok"]


def register_provider(vault: Vault) -> None:
    vault.call(
        "providers",
        "put",
        None,
        record(
            name="idp",
            template=None,
            issuer=None,
            authorization_url=f"{ISSUER}/auth",
            token_url=f"{ISSUER}/token",
            revocation_url=None,
            device_authorization_url=None,
            client_id="vault-basic",
            client_secret=BASIC_SECRET,
            client_auth="client-secret-basic",
            scopes=["openid", "offline_access"],
            authorization_params=[],
            refresh_buffer_secs=None,
            api_base_url=None,
        ),
    )


def real_grant() -> object:
    """Tokens from a real authorization-code flow, as the component's `token-grant`."""
    g = server("/__test/grant", {"client_id": "vault-basic"})
    assert g.get("refresh_token"), "the server issues a refresh token"
    return record(
        access_token=g["access_token"],
        token_type=g["token_type"],
        expires_in=g["expires_in"],
        refresh_token=g["refresh_token"],
        scope=g.get("scope"),
    )


def test_store_get_list_remove_through_python_storage() -> None:
    storage = MemoryStorage()
    vault = Vault(COMPONENT, storage, Keyring.create())
    register_provider(vault)
    grant = real_grant()

    info = vault.call("tokens", "store", key("alice"), grant)
    assert (info.provider, info.has_refresh_token, info.status) == ("idp", True, "active")
    token = vault.call("tokens", "get", key("alice"))
    assert (token.access_token, token.refresh_token) == (grant.access_token, grant.refresh_token)
    assert [c.provider for c in vault.call("tokens", "list", "acme", "alice")] == ["idp"]

    # What Python storage holds is sealed: no value appears in any record.
    assert len(storage.records) >= 2
    for name, (value, _version) in storage.records.items():
        for secret in (grant.access_token, grant.refresh_token, BASIC_SECRET):
            assert secret.encode() not in value, f"{name} holds a value in the clear"

    receipt = vault.call("tokens", "remove", key("alice"))
    assert receipt.upstream.tag == "unsupported", "no revocation endpoint registered"
    with pytest.raises(VaultError) as missing:
        vault.call("tokens", "get", key("alice"))
    assert missing.value.kind == "not-found"
    assert [(e.action, e.outcome) for e in vault.audit] == [
        ("provider-put", "ok"),
        ("token-store", "ok"),
        ("token-get", "ok"),
        ("token-remove", "ok"),
        ("token-get", "not-found"),
    ]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_tenants_webhook_gets_its_events_committed_with_each_change(kind: str, tmp_path: Path) -> None:
    storage = MemoryStorage() if kind == "memory" else SqliteStorage(tmp_path / "events.db")
    vault = Vault(COMPONENT, storage, Keyring.create())
    register_provider(vault)
    config = record(url="https://hooks.example/in", events=[], rotate_secret=False)
    secret = vault.call("webhooks", "put", "acme", config)
    assert secret.startswith("whsec_")
    vault.call("tokens", "store", key("alice"), real_grant())
    vault.call("tokens", "remove", key("alice"))
    keys, _ = storage.list("outbox/", None, 100)
    events = [json.loads(storage.get(k)[0]) for k in keys]
    assert [e["type"] for e in events] == ["connection.created", "connection.removed"]
    assert events[1]["revocation"] == {"upstream": "unsupported"}


def test_refresh_reaches_the_real_token_endpoint_when_http_is_allowed() -> None:
    vault = Vault(COMPONENT, MemoryStorage(), Keyring.create(), allow_http=True)
    register_provider(vault)
    grant = real_grant()
    vault.call("tokens", "store", key("bob"), grant)

    before = refreshes_seen()
    refreshed = vault.call("tokens", "refresh", key("bob"))
    assert refreshes_seen() == before + 1, "one refresh grant reached the server"
    assert refreshed.access_token != grant.access_token
    assert refreshed.refresh_token != grant.refresh_token, "the server rotates refresh tokens"
    assert refreshed.expires_at > time.time()
    assert vault.call("tokens", "get", key("bob")).access_token == refreshed.access_token


def test_deny_all_http_refuses_every_request_before_it_leaves() -> None:
    vault = Vault(COMPONENT, MemoryStorage(), Keyring.create())  # allow_http=False: the default
    register_provider(vault)
    grant = real_grant()
    vault.call("tokens", "store", key("carol"), grant)

    before = refreshes_seen()
    with pytest.raises(VaultError) as denied:
        vault.call("tokens", "refresh", key("carol"))
    assert denied.value.kind == "egress-denied", denied.value
    assert vault.denied_requests == 1
    assert refreshes_seen() == before, "nothing reached the server"
    assert vault.call("tokens", "get", key("carol")).access_token == grant.access_token, "the token is intact"


def test_reads_a_record_the_rust_host_wrote() -> None:
    plan = json.loads((INTEROP_DIR / "plan.json").read_text())
    wrote = plan["rust_wrote"]
    storage = SqliteStorage(INTEROP_DIR / "rust.db")
    vault = Vault(COMPONENT, storage, Keyring.open(storage, INTEROP_DIR / "master.key"))
    token = vault.call("tokens", "get", record(**wrote["key"]))
    assert (token.access_token, token.refresh_token) == (wrote["access_token"], wrote["refresh_token"])


def test_a_foreign_keyring_cannot_open_the_rust_hosts_record() -> None:
    plan = json.loads((INTEROP_DIR / "plan.json").read_text())
    vault = Vault(COMPONENT, SqliteStorage(INTEROP_DIR / "rust.db"), Keyring.create())
    with pytest.raises(VaultError) as refused:
        vault.call("tokens", "get", record(**plan["rust_wrote"]["key"]))
    assert refused.value.kind == "integrity"


class RacingStorage(MemoryStorage):
    """Another writer creates the token record just before the component's first write
    (a put, or a commit with the token's due-index entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.raced = False

    def race(self, key: str) -> None:
        if key.startswith("tok/") and not self.raced:
            self.raced = True
            assert super().put(key, b"another writer's record", None) is not None

    def put(self, key: str, value: bytes, expected: int | None) -> int | None:
        self.race(key)
        return super().put(key, value, expected)

    def commit(self, writes: list[tuple[str, tuple]]) -> list[int | None] | None:
        for _kind, args in writes:
            self.race(args[0])
        return super().commit(writes)


def test_a_version_conflict_reaches_the_component_which_retries() -> None:
    storage = RacingStorage()
    vault = Vault(COMPONENT, storage, Keyring.create())
    register_provider(vault)
    grant = real_grant()
    vault.call("tokens", "store", key("dora"), grant)
    assert storage.raced
    assert vault.call("tokens", "get", key("dora")).access_token == grant.access_token


class GivingUpHolder(MemoryStorage):
    """Another process holds `lease_key`, then gives up without a result: its lease
    vanishes on the third read, while the component waits in wait-for-change."""

    def __init__(self, lease_key: str) -> None:
        super().__init__()
        self.lease_key = lease_key
        lease = {"holder": "another-process", "expires_at_ms": int(time.time() * 1000) + 40_000}
        self.lease_version = self.put(lease_key, json.dumps(lease).encode(), None)
        self.lease_reads = 0

    def get(self, key: str) -> tuple[bytes, int] | None:
        if key == self.lease_key:
            self.lease_reads += 1
            if self.lease_reads == 3:
                self.delete(key, self.lease_version)
        return super().get(key)


def test_a_refresh_waits_on_another_holders_lease_and_takes_it_once_released() -> None:
    storage = GivingUpHolder("lease/acme/erin/idp/default")
    vault = Vault(COMPONENT, storage, Keyring.create(), allow_http=True)
    register_provider(vault)
    grant = real_grant()
    vault.call("tokens", "store", key("erin"), grant)
    before = refreshes_seen()
    refreshed = vault.call("tokens", "refresh", key("erin"))
    assert storage.lease_reads > 3, "the caller waited on the lease, then took it"
    assert refreshes_seen() == before + 1, "it refreshed once itself"
    assert refreshed.access_token != grant.access_token
    assert storage.records.get(storage.lease_key) is None, "and released its own lease"
