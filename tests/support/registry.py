"""A real OCI registry for tests: Debian's `docker-registry` on loopback.

`RegistryProcess` writes a config (listening on 127.0.0.1:0, storage in a temp dir, logs to a
file), starts `/usr/bin/docker-registry serve CONFIG`, learns the bound port from the
"listening on" log line, waits for `/v2/` to answer, and stops the process by its PID. Variants:
`htpasswd` basic auth (bcrypt hashes from libcrypt via the stdlib `crypt` module), and token
auth against `TokenServer`, an in-test aiohttp realm that checks basic credentials and issues
RS256 JWTs whose x5c certificate is the registry's trusted root.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BIN = Path("/usr/bin/docker-registry")
TOKEN_SERVICE = "shoal-test-registry"
TOKEN_ISSUER = "shoal-test-issuer"

requires_registry = pytest.mark.skipif(not REGISTRY_BIN.exists(), reason="docker-registry not installed")


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt does bcrypt ($2b$); the `bcrypt` module is not installed
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("libcrypt here cannot make bcrypt hashes for htpasswd")
    return hashed


class RegistryProcess:
    def __init__(self, workdir: Path, auth: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": "127.0.0.1:0", "secret": secrets.token_hex(16)},
        }
        if auth:
            config["auth"] = auth
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 15.0) -> RegistryProcess:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(self.config_path)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.host:
            text = self.log_path.read_text(errors="replace")
            match = re.search(r"listening on (127\.0\.0\.1:\d+)", text)
            if match:
                self.host = match.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not start:\n{text[-2000:]}")
            time.sleep(0.02)
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # 401 from an auth-protected registry is an answer
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("docker-registry never answered /v2/") from None
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def running_registry(workdir: Path, auth: dict[str, Any] | None = None) -> Iterator[RegistryProcess]:
    registry = RegistryProcess(workdir, auth).start()
    try:
        yield registry
    finally:
        registry.stop()


def htpasswd_auth(workdir: Path, users: dict[str, str]) -> dict[str, Any]:
    path = workdir / "htpasswd"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in users.items()))
    return {"htpasswd": {"realm": "shoal-test", "path": str(path)}}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """An auth realm: `GET /token?service=&scope=` with basic auth → `{"token": JWT}`."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.users = users
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal test token issuer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1))
                     .not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        workdir.mkdir(parents=True, exist_ok=True)
        self.bundle = workdir / "token-root.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.realm = ""

    def registry_auth(self) -> dict[str, Any]:
        return {"token": {"realm": self.realm, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
                          "rootcertbundle": str(self.bundle)}}

    def issue(self, subject: str, scope: str) -> str:
        access = []
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE, "exp": now + 300,
                  "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return web.json_response({"details": "credentials required"}, status=401)
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if self.users.get(user) != password:
            return web.json_response({"details": "bad credentials"}, status=401)
        return web.json_response({"token": self.issue(user, request.query.get("scope", ""))})

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.realm = f"http://127.0.0.1:{port}/token"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def token_registry(workdir: Path, users: dict[str, str]) -> AsyncIterator[
        tuple[RegistryProcess, TokenServer]]:
    tokens = await TokenServer(workdir / "token", users).start()
    try:
        with running_registry(workdir / "registry", tokens.registry_auth()) as registry:
            yield registry, tokens
    finally:
        await tokens.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A plain (no auth) registry shared by a test module."""
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


