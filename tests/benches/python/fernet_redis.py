"""The approach tokenvault replaces, for the benchmarks: a Python service keeping each
token as Fernet-encrypted JSON in Redis (cryptography + redis-py). Stores one token, then
times `get` + decrypt + parse, one call after another (and, for reference, the Redis
`GET` alone), and prints the per-call times in nanoseconds as JSON on stdout.

    python fernet_redis.py REDIS_URL ITERATIONS
"""

import json
import secrets
import sys
import time

import redis
from cryptography.fernet import Fernet


def main() -> None:
    url, iterations = sys.argv[1], int(sys.argv[2])
    client = redis.Redis.from_url(url)
    fernet = Fernet(Fernet.generate_key())
    key = f"fernet-bench:{secrets.token_hex(8)}:acme:floor:idp:default"
    token = {
        "access_token": secrets.token_urlsafe(32),
        "token_type": "Bearer",
        "expires_at": int(time.time()) + 3600,
        "scope": "openid offline_access",
        "refresh_token": secrets.token_urlsafe(32),
    }
    client.set(key, fernet.encrypt(json.dumps(token).encode()))
    try:
        full, get_only = [], []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            got = json.loads(fernet.decrypt(client.get(key)))
            full.append(time.perf_counter_ns() - start)
            assert got["access_token"] == token["access_token"]
            start = time.perf_counter_ns()
            client.get(key)
            get_only.append(time.perf_counter_ns() - start)
        print(json.dumps({"get_decrypt_parse": full, "get_only": get_only}))
    finally:
        client.delete(key)


if __name__ == "__main__":
    main()
