"""The ``tokenvault`` Python package as a user gets it: ``cargo test -p tokenvault-tests
--test packages`` builds the wheel, installs it into a new virtualenv, copies this file
there and runs it with the environment below, against the real OAuth server of the Rust
tests."""

from __future__ import annotations

import base64
import json
import os
import resource
import secrets
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import tokenvault
from tokenvault import ConnectionKey, TokenvaultError, open_vault


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through `cargo test --test packages`")
    return value


ISSUER = required("OAUTH_ISSUER")
BASIC_SECRET = required("OAUTH_BASIC_SECRET")
# Storage URLs naming a schema and a namespace of this run's own.
POSTGRES = required("TOKENVAULT_TEST_POSTGRES_STORAGE")
REDIS = required("TOKENVAULT_TEST_REDIS_STORAGE")
SANDBOX_COMPONENT = required("TOKENVAULT_SANDBOX_COMPONENT")
SHARED = Path(required("TOKENVAULT_SHARED_DIR"))
# The Rust host's data directory: `rust.db`, its `master.key`, and `plan.json`.
INTEROP = Path(required("TOKENVAULT_INTEROP_DIR"))
# The Rust host's CLI.
CLI = required("TOKENVAULT_CLI")

# Every value this run handed out or made up: none may appear where a value must not.
CANARIES = [BASIC_SECRET]
# What the package showed where no value may be: checked again, last, against every secret
# the OAuth server issued.
SHOWN: list[str] = []

PROVIDER = dict(
    name="idp",
    authorization_url=f"{ISSUER}/auth",
    token_url=f"{ISSUER}/token",
    revocation_url=f"{ISSUER}/token/revocation",
    client_id="vault-basic",
    client_secret=BASIC_SECRET,
    client_auth="client-secret-basic",
    scopes=["openid", "offline_access"],
    authorization_params={"prompt": "consent"},
)


def key(user: str) -> ConnectionKey:
    return ConnectionKey(tenant="acme", user=user, provider="idp")


def server(path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{ISSUER}{path}", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def refreshes_seen() -> int:
    return server("/__test/stats")["refresh_ok"]


def real_grant() -> dict[str, Any]:
    """A real token response from the test server, as a provider sends it."""
    grant = server("/__test/grant", {"client_id": "vault-basic"})
    assert grant.get("refresh_token"), "the server issues a refresh token"
    CANARIES.extend([grant["access_token"], grant["refresh_token"]])
    return grant


def assert_clean(shown: Any, what: str) -> None:
    """No canary in what the package showed (its repr, for objects)."""
    text = shown if isinstance(shown, str) else repr(shown)
    SHOWN.append(text)
    for canary in CANARIES:
        assert canary not in text, f"{what} holds a value"


def failure(call: Any, *args: Any, **kwargs: Any) -> TokenvaultError:
    with pytest.raises(TokenvaultError) as raised:
        call(*args, **kwargs)
    assert_clean(str(raised.value), "an error")
    return raised.value


def test_store_get_refresh_list_remove_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    with open_vault(data_dir=str(tmp_path), allowed_origins=[ISSUER]) as vault:
        assert_clean(vault.providers.put(PROVIDER), "the provider")
        grant = real_grant()

        info = vault.store(key("alice"), grant)
        assert_clean(info, "store")
        assert (info.provider, info.has_refresh_token, info.status) == ("idp", True, "active")
        assert isinstance(info.updated_at, int)

        token = vault.get(key("alice"))
        assert token.access_token == grant["access_token"]
        assert token.refresh_token == grant["refresh_token"]
        assert_clean(repr(token), "a token's repr")

        before = refreshes_seen()
        refreshed = vault.refresh(key("alice"))
        assert refreshes_seen() == before + 1, "one refresh reached the server"
        CANARIES.extend([refreshed.access_token, refreshed.refresh_token])
        assert refreshed.refresh_token != grant["refresh_token"], "the server rotates refresh tokens"
        assert refreshed.expires_at > time.time()
        # The rotated refresh token was kept: it works, and `get` returns what it gave.
        again = vault.refresh(key("alice"))
        CANARIES.extend([again.access_token, again.refresh_token])
        assert vault.get(key("alice")).access_token == again.access_token

        listed = vault.list("acme", "alice")
        assert [(c.provider, c.name) for c in listed] == [("idp", "default")]
        assert_clean(listed, "list")
        assert_clean(vault.providers.list(), "the provider list")

        linked = vault.get_or_link(key("alice"))
        assert isinstance(linked, tokenvault.TokenSet) and linked.access_token == again.access_token

        receipt = vault.remove(key("alice"))
        assert_clean(receipt, "the removal receipt")
        assert receipt.upstream == "revoked", receipt
        assert failure(vault.get, key("alice")).kind == "not-found"
        link = vault.get_or_link(key("alice"))
        assert isinstance(link, tokenvault.ConnectLink) and link.expires_at > time.time()
        assert link.code not in repr(link)

        vault.store(key("alice"), real_grant())
        receipts = vault.revoke_all("acme", "alice")
        assert [(r.provider, r.upstream) for r in receipts] == [("idp", "revoked")], receipts
        assert vault.list("acme", "alice") == []

    # What the files hold is sealed: no value in the database, its log, or anything else there.
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert_clean(path.read_bytes().decode("latin-1"), path.name)


def test_a_token_is_not_handed_out_when_its_audit_entry_cannot_be_written(tmp_path: Path) -> None:
    with open_vault(data_dir=str(tmp_path)) as vault:
        vault.providers.put(PROVIDER)
        vault.store(key("ines"), real_grant())
    # The trail's head record, garbled: no entry can be appended after it.
    with sqlite3.connect(tmp_path / "vault.db") as db:
        db.execute("UPDATE tokenvault_records SET value = x'7b' WHERE key = 'audit-head'")
    with open_vault(data_dir=str(tmp_path)) as vault:
        refused = failure(vault.get, key("ines"))
        assert refused.kind == "storage", refused
        assert "audit trail" in refused.message


def test_a_connect_flow_begin_the_user_at_the_provider_complete(tmp_path: Path) -> None:
    with open_vault("memory:", data_dir=str(tmp_path), allowed_origins=[ISSUER]) as vault:
        vault.providers.put(PROVIDER)
        # A flow belongs to the browser that started it (a secret in its cookie, say).
        browser, other_browser = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

        def authorized(user: str, browser: str) -> str:
            started = vault.begin(key(user), "http://127.0.0.1/callback", browser=browser)
            assert started.url.startswith(f"{ISSUER}/auth?"), started.url
            assert "code_challenge_method=S256" in started.url
            location = server("/__test/authorize", {"url": started.url})["location"]
            return urllib.parse.urlsplit(location).query

        assert failure(vault.complete, authorized("bob", browser), other_browser).kind == "invalid-input"
        query = authorized("bob", browser)
        connected = vault.complete(query, browser)
        assert_clean(connected, "complete")
        assert connected.key == key("bob")
        assert connected.info.has_refresh_token
        token = vault.get(key("bob"))
        CANARIES.extend([token.access_token, token.refresh_token])
        # A flow completes once.
        assert failure(vault.complete, query, browser).kind == "invalid-input"


def test_a_request_to_an_origin_not_allowed_is_refused_before_it_leaves(tmp_path: Path) -> None:
    with open_vault("memory:", data_dir=str(tmp_path), allowed_origins=["https://github.com"]) as vault:
        vault.providers.put(PROVIDER)
        grant = real_grant()
        vault.store(key("carol"), grant)
        before = refreshes_seen()
        denied = failure(vault.refresh, key("carol"))
        assert denied.kind == "egress-denied", denied
        assert refreshes_seen() == before, "nothing reached the server"
        assert vault.get(key("carol")).access_token == grant["access_token"], "the stored token is intact"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_memory_cap_and_the_deadline_stop_a_call_and_the_vault_goes_on(tmp_path: Path) -> None:
    options: dict[str, Any] = {"data_dir": str(tmp_path), "component": SANDBOX_COMPONENT, "memory_limit_mib": 32}
    with open_vault("memory:", call_deadline_ms=5_000, **options) as vault:
        peak = peak_rss_mib()
        hog = failure(vault.get, ConnectionKey("t", "hog", "p"))
        assert hog.kind == "sandbox", hog
        assert "memory cap is 32 MiB" in hog.message
        # It ran out at the cap: without one it grows to Wasm's 4 GiB before anything stops it.
        assert peak_rss_mib() - peak < 256, f"the process grew by {peak_rss_mib() - peak:.0f} MiB"
    with open_vault("memory:", call_deadline_ms=1_000, **options) as vault:
        started = time.monotonic()
        spin = failure(vault.get, ConnectionKey("t", "spin", "p"))
        assert spin.kind == "sandbox", spin
        assert "deadline of 1000 ms" in spin.message
        assert time.monotonic() - started < 10, "stopped near its deadline"
        vault.store(ConnectionKey("t", "u", "p"), {"access_token": "after"})
        assert vault.get(ConnectionKey("t", "u", "p")).access_token == "after"


def test_instances_are_never_shared_between_tenants(tmp_path: Path) -> None:
    # `remember` reports the marks earlier calls left in its instance's memory, then leaves
    # one naming its tenant. One thread, so every call could reuse the same instance.
    with open_vault("memory:", data_dir=str(tmp_path), component=SANDBOX_COMPONENT) as vault:

        def remember(tenant: str) -> str:
            return vault.get(ConnectionKey(tenant, "remember", "p")).access_token

        assert remember("acme") == "residue: []"
        assert remember("acme") == "residue: [acme]", "a tenant keeps its instance for get"
        assert remember("globex") == "residue: []", "another tenant's instance is fresh"
        assert remember("acme") == "residue: [acme,acme]"


def test_bad_input_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sqlite://"):
        open_vault("mysql://x")
    zero_key = base64.b64encode(bytes(32)).decode()
    assert failure(open_vault, "postgres://nobody@127.0.0.1:1/none", master_key=zero_key).kind == "storage"
    with pytest.raises(ValueError, match="not an origin"):
        open_vault(data_dir=str(tmp_path), allowed_origins=["github.com"])
    with pytest.raises(ValueError, match="memory_limit_mib"):
        open_vault(data_dir=str(tmp_path), memory_limit_mib=0)
    # A shared store needs the master key every host is given.
    missing = failure(lambda: open_vault(POSTGRES, data_dir=str(tmp_path)))
    assert missing.kind == "config" and "TOKENVAULT_MASTER_KEY" in missing.message, missing
    assert failure(open_vault, "memory:").kind == "config"  # no data_dir, no key
    with pytest.raises(TokenvaultError, match="not a master key"):
        open_vault("memory:", master_key="short")
    with open_vault("memory:", data_dir=str(tmp_path)) as vault:
        with pytest.raises(TypeError):
            vault.get({"tenant": "acme"})
        with pytest.raises(TypeError):
            vault.store(key("x"), {"token": "no"})
        with pytest.raises(TypeError):
            vault.providers.put({"name": "x", "client_id": "y", "clientSecret": "camel"})
        assert failure(vault.get, key("nobody")).kind == "not-found"
    with pytest.raises(TokenvaultError, match="closed"):
        vault.get(key("x"))


@pytest.mark.parametrize("storage", [POSTGRES, REDIS], ids=["postgres", "redis"])
def test_store_get_and_refresh_on_shared_storage_with_the_master_key_given(storage: str) -> None:
    master_key = (SHARED / "master.key").read_text().strip()
    with open_vault(storage, master_key=master_key, allowed_origins=[ISSUER]) as vault:
        assert_clean(vault.describe(), "describe")
        vault.providers.put(PROVIDER)
        grant = real_grant()
        vault.store(key("dave"), grant)
        assert vault.get(key("dave")).access_token == grant["access_token"]
        refreshed = vault.refresh(key("dave"))
        CANARIES.extend([refreshed.access_token, refreshed.refresh_token])
        assert vault.get(key("dave")).refresh_token == refreshed.refresh_token
        assert vault.remove(key("dave")).upstream == "revoked"


def test_one_sqlite_file_with_the_rust_host_each_reads_what_the_other_stored() -> None:
    # The Rust host wrote a connection into `rust.db`; this host opens the same file with the
    # same master key, reads it, and stores one for the Rust host to read back.
    plan = json.loads((INTEROP / "plan.json").read_text())
    rust = plan["rust_wrote"]
    CANARIES.extend([rust["access_token"], rust["refresh_token"]])
    with open_vault(f"sqlite://{INTEROP / 'rust.db'}", master_key_file=str(INTEROP / "master.key")) as vault:
        token = vault.get(rust["key"])
        assert (token.access_token, token.refresh_token) == (rust["access_token"], rust["refresh_token"])
        other = plan["other_writes"]
        grant = {"access_token": other["access_token"], "expires_in": 3600, "refresh_token": other["refresh_token"]}
        vault.store(other["key"], grant)
        assert [c.provider for c in vault.list(other["key"]["tenant"], other["key"]["user"])] == ["idp"]


def test_a_key_rotation_by_the_rust_host_reaches_an_open_vault(tmp_path: Path) -> None:
    def cli(*args: str) -> Any:
        done = subprocess.run([CLI, "--data-dir", str(tmp_path), *args], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    with open_vault(data_dir=str(tmp_path)) as vault:
        vault.providers.put(PROVIDER)
        vault.store(key("kim"), {"access_token": "sealed-before"})
        rotated = cli("keys", "rotate")
        vault.store(key("lou"), {"access_token": "sealed-at-once"})  # under either key: both are live
        time.sleep(2.5)  # this host reads the keyring again after two seconds
        vault.store(key("max"), {"access_token": "sealed-after"})
        counts = {k["id"]: k.get("records") for k in cli("keys", "ls")}
        assert counts[rotated["id"]] >= 1, f"nothing was sealed with the new key: {counts}"
        moved = cli("keys", "reencrypt")
        assert moved["failed"] == 0, moved
        counts = {k["id"]: k.get("records") for k in cli("keys", "ls")}
        assert [n for i, n in counts.items() if i != rotated["id"]] == [0], counts
        for user, token in [("kim", "sealed-before"), ("lou", "sealed-at-once"), ("max", "sealed-after")]:
            assert vault.get(key(user)).access_token == token


def test_the_package_is_typed_and_keeps_values_out_of_reprs() -> None:
    assert (Path(tokenvault.__file__).parent / "py.typed").exists()
    secret = tokenvault.ProviderConfig(name="x", client_id="y", client_secret="hidden-secret")
    assert "hidden-secret" not in repr(secret)
    assert "hidden-secret" in asdict(secret).values()


# Last: nothing shown above holds any value the OAuth server handed out (tokens,
# authorization codes), including those this file never saw itself.
def test_no_output_or_error_holds_a_value_the_provider_issued() -> None:
    issued = server("/__test/issued")
    assert len(issued) > 10, f"the server issued {len(issued)} values"
    assert len(SHOWN) >= 10, f"{len(SHOWN)} outputs recorded"
    everything = "\n".join(SHOWN)
    for value in issued:
        assert value not in everything, "an output holds an issued value"
