"""Credentials made at test time: a CA and a server certificate for TLS (made by
``support.certificates``), an RSA key with its JWKS, and JWTs signed by it (or by another key).
Nothing here is ever committed: every file is written under a pytest temporary folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from support.certificates import TestCA

ISSUER = "https://issuer.test.invalid"
AUDIENCE = "inference-service"
SCOPE = "inference"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


def make_tls_files(folder: Path) -> TlsFiles:
    """Write a CA certificate, and a server certificate and key it signed, into ``folder`` (the
    one certificate factory: ``support.certificates.TestCA``)."""
    ca = TestCA(folder)
    server = ca.issue("server", hosts=("localhost", "127.0.0.1"))
    server.key_file.chmod(0o600)
    return TlsFiles(ca_cert=ca.ca_file, server_cert=server.cert_file, server_key=server.key_file)


class TokenIssuer:
    """An RSA signing key, its JWKS file, and tokens signed by it."""

    def __init__(self, folder: Path, *, issuer: str = ISSUER, key_id: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.issuer = issuer
        self.key_id = key_id or uuid.uuid4().hex[:12]
        self._key = _rsa_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.key_id, "alg": "RS256", "use": "sig"})
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def __repr__(self) -> str:  # never the key
        return f"TokenIssuer(issuer={self.issuer!r}, key_id={self.key_id!r})"

    def token(
        self,
        *,
        audience: str | None = AUDIENCE,
        scope: str | None = SCOPE,
        lifetime_s: float | None = 300.0,
        issuer: str | None = None,
        **claims: Any,
    ) -> str:
        """A JWT (RS256) for ``audience`` with ``scope``; a negative lifetime makes it expired,
        none leaves ``exp`` out."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": "test-client",
            "iat": now,
            **claims,
        }
        if lifetime_s is not None:
            payload["exp"] = now + int(lifetime_s)
        if audience is not None:
            payload["aud"] = audience
        if scope is not None:
            payload["scope"] = scope
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.key_id})


READ_SCOPE = "inference.read"
"""The default scope that reading stored invocations needs (``envoy_jwt_read_scope``)."""
DELETE_SCOPE = "inference.delete"
"""The default scope that erasing an invocation needs (``envoy_jwt_delete_scope``)."""
