"""tokenvault for Python: OAuth token custody in a WebAssembly sandbox.

    from tokenvault import open_vault
    vault = open_vault(data_dir="./vault", allowed_origins=["https://github.com"])

The tokenvault component (inside this package) runs in wasmtime with a memory cap and a
deadline per call; this process supplies its storage (SQLite, PostgreSQL, Redis or memory,
on the Rust host's layouts), its keyring and its audit trail. See the package's README.
"""

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
from ._vault import Providers, Vault, open_vault

__all__ = [
    "AuthorizationRequest",
    "ConnectLink",
    "Connected",
    "ConnectionInfo",
    "ConnectionKey",
    "ProviderConfig",
    "ProviderFailure",
    "ProviderInfo",
    "Providers",
    "RemovalReceipt",
    "TemplateRef",
    "TokenSet",
    "TokenvaultError",
    "Vault",
    "open_vault",
]
