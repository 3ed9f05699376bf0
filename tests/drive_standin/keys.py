"""Service-account keys for the stand-in: a freshly generated RSA key in a key file whose
``token_uri`` is the stand-in's token endpoint, so that google-auth's JWT grant is made
(and recorded) on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path


def new_private_key_pem() -> str:
    """A new 2048-bit RSA private key, PKCS#8 PEM (about 50 ms: make one per module or run)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def write_service_account_key(path: Path, token_uri: str, pem: str, email: str, *, mode: int = 0o600) -> Path:
    """A service-account key file at ``path`` (``mode``) for ``email``, granting at ``token_uri``."""
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "cvat-models", "private_key_id": "0123456789abcdef",
        "private_key": pem, "client_email": email, "client_id": "1234567890", "token_uri": token_uri,
    }))
    os.chmod(path, mode)
    return path
