"""Join tokens: `SWMTKN-1-<root CA digest>-<secret>`.

The digest part pins the swarm's root CA: a joiner checks the CA certificate a manager shows
against it before trusting anything (no trust on first use). The secret part tells a worker
token from a manager token. Both parts are base36: the digest is the SHA-256 of the CA
certificate's DER bytes as a 50-character number, the secret 25 random characters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "SWMTKN"
VERSION = "1"
DIGEST_LEN = 50
SECRET_LEN = 25
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class TokenError(ValueError):
    pass


def base36(value: int, width: int) -> str:
    out = []
    while value:
        value, rem = divmod(value, 36)
        out.append(_BASE36[rem])
    return "".join(reversed(out)).rjust(width, "0")


def ca_digest(ca_der: bytes) -> str:
    return base36(int.from_bytes(hashlib.sha256(ca_der).digest(), "big"), DIGEST_LEN)


def new_secret() -> str:
    return "".join(secrets.choice(_BASE36) for _ in range(SECRET_LEN))


@dataclass(frozen=True)
class JoinToken:
    digest: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}-{VERSION}-{self.digest}-{self.secret}"

    def matches_ca(self, ca_der: bytes) -> bool:
        return hmac.compare_digest(self.digest, ca_digest(ca_der))


def make_token(ca_der: bytes) -> str:
    return str(JoinToken(ca_digest(ca_der), new_secret()))


def parse_token(text: str) -> JoinToken:
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenError("invalid join token: expected SWMTKN-1-<digest>-<secret>")
    if parts[1] != VERSION:
        raise TokenError(f"invalid join token: unsupported version {parts[1]!r}")
    digest, secret = parts[2], parts[3]
    if len(digest) != DIGEST_LEN or any(c not in _BASE36 for c in digest):
        raise TokenError("invalid join token: malformed CA digest")
    if len(secret) != SECRET_LEN or any(c not in _BASE36 for c in secret):
        raise TokenError("invalid join token: malformed secret")
    return JoinToken(digest, secret)


