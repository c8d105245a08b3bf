"""The Python side of the `python` bench suite: a warm `get` through the `tokenvault` package
(host/python, run from its source folder, its data/ filled by `build.py --data-only`) on
Redis, against the approach it replaces: a Python service keeping each token as
Fernet-encrypted JSON in Redis (cryptography + redis-py), and, for reference, the Redis `GET`
alone. Times the calls one after another and prints the per-call times in nanoseconds as
JSON on stdout.

    python get.py REDIS_URL ITERATIONS
"""

import base64
import json
import secrets
import sys
import time
from pathlib import Path

import redis
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "host" / "python" / "src"))
from tokenvault import ConnectionKey, open_vault  # noqa: E402


def timed(iterations: int, call) -> list[int]:
    times = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return times


def main() -> None:
    url, iterations = sys.argv[1], int(sys.argv[2])
    token = {
        "access_token": secrets.token_urlsafe(32),
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "openid offline_access",
        "refresh_token": secrets.token_urlsafe(32),
    }

    # The hand-written alternative.
    client = redis.Redis.from_url(url)
    fernet = Fernet(Fernet.generate_key())
    hand_key = f"fernet-bench:{secrets.token_hex(8)}:acme:floor:idp:default"
    client.set(hand_key, fernet.encrypt(json.dumps(token).encode()))

    def hand_get() -> None:
        got = json.loads(fernet.decrypt(client.get(hand_key)))
        assert got["access_token"] == token["access_token"]

    # tokenvault, its audit trail in the same Redis.
    namespace = f"python-bench-{secrets.token_hex(4)}"
    vault = open_vault(f"{url}?namespace={namespace}", master_key=base64.b64encode(secrets.token_bytes(32)).decode())
    key = ConnectionKey("acme", "floor", "idp")
    vault.providers.put({"name": "idp", "token_url": "http://127.0.0.1:9/token", "client_id": "bench", "client_secret": "bench-secret"})
    vault.store(key, token)

    def tokenvault_get() -> None:
        assert vault.get(key).access_token == token["access_token"]

    try:
        full = timed(iterations, hand_get)
        get_only = timed(iterations, lambda: client.get(hand_key))
        package = timed(iterations, tokenvault_get)
        print(json.dumps({"get_decrypt_parse": full, "get_only": get_only, "tokenvault_get": package}))
    finally:
        client.delete(hand_key)
        for found in client.scan_iter(f"{namespace}:*"):
            client.delete(found)
        vault.close()


if __name__ == "__main__":
    main()
