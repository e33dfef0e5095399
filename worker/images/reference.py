"""Image references: `[registry[:port]/]repo/path[:tag][@sha256:hex]`.

Normalisation follows the familiar Docker rules: a first component that contains a `.` or a
`:`, or is `localhost`, is a registry host; otherwise the registry is `docker.io`, and a
single-component repository on docker.io lives under `library/`. A reference with neither tag
nor digest means `:latest`. `Reference.full()` is the canonical key the store indexes by;
`Reference.familiar()` is what users see (`busybox:latest`, not
`docker.io/library/busybox:latest`). Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from worker.images.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?$"
                     r"|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`domain/path`, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        return self.path.removeprefix(OFFICIAL_PREFIX)

    def full(self) -> str:
        return _join(self.name, self.tag, self.digest)

    def familiar(self) -> str:
        return _join(self.familiar_name, self.tag, self.digest)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, tag=None, digest=digest)

    def name_only(self) -> Reference:
        return replace(self, tag=None, digest=None)

    @property
    def registry_host(self) -> str:
        """The host:port to talk the distribution API to."""
        return DOCKER_HUB_REGISTRY if self.domain == DEFAULT_DOMAIN else self.domain

    def __str__(self) -> str:
        return self.familiar()


def _join(name: str, tag: str | None, digest: str | None) -> str:
    out = name
    if tag:
        out += f":{tag}"
    if digest:
        out += f"@{digest}"
    return out


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise `text`; `default_tag` adds `:latest` when neither tag nor digest."""
    raw = text.strip()
    if not raw:
        raise InvalidReference("invalid reference format: empty reference")
    if raw != text or any(c.isspace() for c in raw):
        raise InvalidReference(f"invalid reference format: {text!r} contains whitespace")
    digest: str | None = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"invalid reference format: bad digest {digest!r} in {text!r}")
    tag: str | None = None
    slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > slash:
        raw, tag = raw[:colon], raw[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {text!r}")
    if not raw:
        raise InvalidReference(f"invalid reference format: no repository name in {text!r}")
    parts = raw.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path_parts = first, parts[1:]
        if not _DOMAIN.match(domain):
            raise InvalidReference(f"invalid reference format: bad registry host {domain!r} in {text!r}")
    else:
        domain, path_parts = DEFAULT_DOMAIN, parts
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    for part in path_parts:
        if not _COMPONENT.match(part):
            if part != part.lower():
                raise InvalidReference(
                    f"invalid reference format: repository name ({raw}) must be lowercase")
            raise InvalidReference(f"invalid reference format: bad name component {part!r} in {text!r}")
    path = "/".join(path_parts)
    if domain == DEFAULT_DOMAIN and len(path_parts) == 1:
        path = OFFICIAL_PREFIX + path
    if len(domain) + 1 + len(path) > 255:
        raise InvalidReference(f"invalid reference format: repository name too long in {text!r}")
    if default_tag and tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def is_image_id(text: str) -> bool:
    """A full `sha256:<64 hex>` or bare 64-hex image ID."""
    return bool(_SHA256.match(text)) or bool(re.fullmatch(r"[a-f0-9]{64}", text))


def looks_like_id_prefix(text: str) -> bool:
    bare = text.removeprefix("sha256:")
    return bool(re.fullmatch(r"[a-f0-9]{4,64}", bare))


def is_sha256_digest(text: str) -> bool:
    return bool(_SHA256.match(text))
