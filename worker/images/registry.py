"""Pulling from an OCI distribution registry (`/v2/` API) over HTTP(S) with aiohttp.

Flow: GET the manifest by tag or digest with every supported media type accepted; a manifest
list / OCI index is narrowed to the node's platform and that manifest fetched by digest. The
config and layer blobs are then streamed into the blob store, each verified against its
descriptor digest (the blob store rejects a mismatch, so nothing unverified is kept). Layers
download concurrently, at most `MAX_PARALLEL_BLOBS` at a time, each under a per-digest lock so
two pulls sharing a layer download it once.

Authentication is driven by the registry's 401 challenge: `Basic` answers with the given
credentials; `Bearer realm=…,service=…,scope=…` fetches a token from the realm (with basic
credentials when given) and retries. Tokens are cached per client (one pull).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker.images.blobs import BlobStore, KeyedLocks, sha256_digest
from worker.images.errors import DigestMismatch, ImageError, RegistryError
from worker.images.manifest import (
    ACCEPT_ALL,
    INDEX_TYPES,
    ImportPlan,
    LayerDescriptor,
    Platform,
    media_type_of,
    parse_image_manifest,
    pick_manifest,
)
from worker.images.reference import Reference

Progress = Callable[[dict[str, Any]], Awaitable[None]]
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_PARALLEL_BLOBS = 3
CHUNK = 256 * 1024
PROGRESS_EVERY = 512 * 1024


@dataclass(frozen=True)
class RegistryAuth:
    username: str = ""
    password: str = ""
    registry_token: str = ""     # a bearer token to send as is

    @classmethod
    def from_header(cls, value: str | None) -> RegistryAuth | None:
        """Decode an `X-Registry-Auth` header (base64url JSON); empty → None."""
        if not value or not value.strip():
            return None
        text = value.strip()
        try:
            doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error) as e:
            raise ImageError(f"invalid X-Registry-Auth header: {e}") from e
        if not isinstance(doc, dict):
            return None
        auth = cls(username=str(doc.get("username") or ""), password=str(doc.get("password") or ""),
                   registry_token=str(doc.get("registrytoken") or doc.get("identitytoken") or ""))
        return auth if (auth.username or auth.registry_token) else None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` → ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v1 if v1 or not v2 else v2
              for k, v1, v2 in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', rest)}
    return scheme.lower(), params


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _registry_error_text(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}"
                         for e in errors) or body[:200].decode(errors="replace")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


class RegistryClient:
    """One pull's worth of registry conversation. Use as `async with`."""

    def __init__(self, auth: RegistryAuth | None = None, *, insecure: bool = False) -> None:
        self._auth = auth
        self._insecure = insecure
        self._session: aiohttp.ClientSession | None = None
        self._authz: dict[str, str] = {}

    async def __aenter__(self) -> RegistryClient:
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=120)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _base(self, ref: Reference) -> str:
        host = ref.registry_host
        scheme = "http" if self._insecure or _is_loopback(host) else "https"
        return f"{scheme}://{host}/v2/{ref.path}"

    async def _get(self, ref: Reference, url: str, accept: tuple[str, ...] = ()) -> aiohttp.ClientResponse:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside `async with`")
        host = ref.registry_host
        scope = f"repository:{ref.path}:pull"
        for attempt in range(2):
            headers = {"Accept": ", ".join(accept)} if accept else {}
            if host in self._authz:
                headers["Authorization"] = self._authz[host]
            elif self._auth and self._auth.registry_token:
                headers["Authorization"] = f"Bearer {self._auth.registry_token}"
            try:
                resp = await self._session.get(url, headers=headers)
            except aiohttp.ClientError as e:
                raise RegistryError(f"cannot reach registry {host}: {e}") from e
            if resp.status != 401 or attempt == 1:
                if resp.status == 401:
                    resp.release()
                    raise RegistryError(f"pull access denied for {ref.familiar_name}: unauthorized "
                                        "(wrong credentials, or the repository needs a login)", 401)
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            self._authz[host] = await self._authorize(ref, challenge, scope)
        raise AssertionError("unreachable")

    async def _authorize(self, ref: Reference, challenge: str, scope: str) -> str:
        assert self._session is not None
        scheme, params = parse_challenge(challenge)
        auth = self._auth
        if scheme == "basic":
            if not auth or not auth.username:
                raise RegistryError(f"pull access denied for {ref.familiar_name}: registry "
                                    f"{ref.registry_host} requires a login", 401)
            return _basic(auth.username, auth.password)
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"registry {ref.registry_host} sent an unsupported auth challenge "
                                f"{challenge!r}", 401)
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": _basic(auth.username, auth.password)} if auth and auth.username else {}
        try:
            async with self._session.get(params["realm"], params=query, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RegistryError(f"pull access denied for {ref.familiar_name}: token server "
                                        f"answered HTTP {resp.status}: {_registry_error_text(body)}", 401)
        except aiohttp.ClientError as e:
            raise RegistryError(f"cannot reach token server {params['realm']}: {e}") from e
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(f"token server {params['realm']} returned no token")
        return f"Bearer {token}"

    async def fetch_manifest(self, ref: Reference, tag_or_digest: str) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of a manifest or index, digest-verified."""
        url = f"{self._base(ref)}/manifests/{tag_or_digest}"
        async with await self._get(ref, url, ACCEPT_ALL) as resp:
            if resp.status == 404:
                raise RegistryError(f"manifest for {ref.familiar()} not found: "
                                    f"{_registry_error_text(await resp.read())}", 404)
            if resp.status != 200:
                raise RegistryError(f"registry {ref.registry_host} answered HTTP {resp.status} for "
                                    f"manifest {tag_or_digest}: {_registry_error_text(await resp.read())}")
            raw = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(raw) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"manifest {tag_or_digest} is larger than {MAX_MANIFEST_BYTES} bytes")
            content_type = resp.headers.get("Content-Type", "")
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = sha256_digest(raw)
        expected = tag_or_digest if tag_or_digest.startswith("sha256:") else header_digest
        if expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(f"manifest {tag_or_digest}", expected, digest)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise RegistryError(f"manifest {tag_or_digest} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise RegistryError(f"manifest {tag_or_digest} is not a JSON object")
        return raw, media_type_of(doc, content_type), digest

    async def fetch_blob(self, ref: Reference, desc: LayerDescriptor, blobs: BlobStore,
                         locks: KeyedLocks, progress: Progress | None) -> None:
        """Stream one blob into the store, verified; skipped when already present."""
        sid = desc.digest.removeprefix("sha256:")[:12]
        async with locks.hold("blob:" + desc.digest):
            if blobs.has(desc.digest):
                if progress:
                    await progress({"status": "Already exists", "id": sid})
                return
            url = f"{self._base(ref)}/blobs/{desc.digest}"
            async with await self._get(ref, url) as resp:
                if resp.status != 200:
                    raise RegistryError(f"registry {ref.registry_host} answered HTTP {resp.status} for "
                                        f"blob {desc.digest}: {_registry_error_text(await resp.read())}",
                                        404 if resp.status == 404 else 500)
                with blobs.writer(desc.digest, f"blob {sid}") as writer:
                    reported = 0
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        writer.write(chunk)
                        if progress and writer.size - reported >= PROGRESS_EVERY:
                            reported = writer.size
                            await progress({"status": "Downloading", "id": sid, "progressDetail": {
                                "current": writer.size, "total": desc.size}})
                    if progress:
                        await progress({"status": "Verifying Checksum", "id": sid})
                    await asyncio.to_thread(writer.commit)
            if progress:
                await progress({"status": "Download complete", "id": sid})

    async def pull(self, ref: Reference, blobs: BlobStore, locks: KeyedLocks, platform: Platform,
                   progress: Progress | None = None) -> ImportPlan:
        """Fetch everything `ref` needs into `blobs`; returns the plan for the store."""
        wanted = ref.digest or ref.tag or "latest"
        raw, media_type, digest = await self.fetch_manifest(ref, wanted)
        if progress:  # only once the manifest exists, so "not found" is still a plain error
            await progress({"status": f"Pulling from {ref.familiar_name}", "id": ref.tag or wanted})
        top_digest = digest
        if media_type in INDEX_TYPES:
            chosen = pick_manifest(json.loads(raw), platform)
            raw, media_type, digest = await self.fetch_manifest(ref, str(chosen["digest"]))
            if digest != chosen["digest"]:
                raise DigestMismatch("platform manifest", str(chosen["digest"]), digest)
        config_desc, layers = parse_image_manifest(raw, media_type)
        blobs.put_bytes(raw, digest, "manifest")
        config = LayerDescriptor(str(config_desc["digest"]), str(config_desc.get("mediaType", "")),
                                 int(config_desc.get("size", 0)))
        await self.fetch_blob(ref, config, blobs, locks, None)
        if progress:
            for layer in layers:
                await progress({"status": "Pulling fs layer", "id": layer.digest.removeprefix("sha256:")[:12]})
        limit = asyncio.Semaphore(MAX_PARALLEL_BLOBS)

        async def one(layer: LayerDescriptor) -> None:
            async with limit:
                await self.fetch_blob(ref, layer, blobs, locks, progress)

        try:
            async with asyncio.TaskGroup() as group:
                for layer in layers:
                    group.create_task(one(layer))
        except* ImageError as eg:
            raise eg.exceptions[0] from None
        tags = [ref] if ref.tag and not ref.digest else []
        return ImportPlan(config_digest=config.digest, layers=layers, manifest_digest=digest,
                          manifest_media_type=media_type, tags=tags,
                          repo_digests=[ref.name_only().with_digest(top_digest)])
