"""Credentials made at test time: a CA and a server certificate for TLS, an RSA key with its
JWKS, and JWTs signed by it (or by another key). Nothing here is ever committed: every file is
written under a pytest temporary folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://issuer.test.invalid"
AUDIENCE = "inference-service"
SCOPE = "inference"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


def make_tls_files(folder: Path) -> TlsFiles:
    """Write a CA certificate, and a server certificate and key it signed, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _rsa_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("inference-service test CA"))
        .issuer_name(_name("inference-service test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = _rsa_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


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
