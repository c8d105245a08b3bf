"""A Python host in a process of its own, for the multi-process single-flight test
(tests/src/lib.rs, single_flight_across_processes), with the protocol of the Rust host's
``vault_worker``: opens the vault, reads the connection once, says ``ready``, waits for a
line on stdin, fires GETS concurrent ``get``s (one thread each) and prints each outcome on a
line (the access token, or ``error KIND``).

    python race.py DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from tokenvault import ConnectionKey, TokenvaultError, open_vault

data_dir, storage, origin, tenant, user, provider, gets = sys.argv[1:]
vault = open_vault(
    storage, data_dir=data_dir, master_key_file=os.path.join(data_dir, "master.key"), allowed_origins=[origin]
)
key = ConnectionKey(tenant, user, provider)
vault.get(key)
print("ready", flush=True)
sys.stdin.readline()


def get(_: int) -> str:
    try:
        return vault.get(key).access_token
    except TokenvaultError as e:
        return f"error {e.kind}"


with ThreadPoolExecutor(max_workers=int(gets)) as pool:
    outcomes = list(pool.map(get, range(int(gets))))
print("\n".join(outcomes), flush=True)
vault.close()
