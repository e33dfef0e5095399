"""Reference parsing and normalisation, and platform selection from an index."""

from __future__ import annotations

import pytest

from worker.images.errors import ImageError, InvalidReference
from worker.images.manifest import Platform, pick_manifest
from worker.images.reference import parse_reference


@pytest.mark.parametrize(("text", "full", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("docker.io/library/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("index.docker.io/user/app:2", "docker.io/user/app:2", "user/app:2"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
    ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64,
     "busybox@sha256:" + "a" * 64),
    ("reg.example:5000/x:v1@sha256:" + "b" * 64, "reg.example:5000/x:v1@sha256:" + "b" * 64,
     "reg.example:5000/x:v1@sha256:" + "b" * 64),
])
def test_parse_and_normalise(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert ref.full() == full
    assert ref.familiar() == familiar


@pytest.mark.parametrize("bad", ["", "Busybox", "busybox:", "bad tag:x y", "a//b", "busybox@sha256:xyz",
                                 ":latest", "busybox:-x"])
def test_bad_references_are_rejected_with_a_message(bad: str) -> None:
    with pytest.raises(InvalidReference, match="invalid reference format"):
        parse_reference(bad)


def test_registry_host_of_docker_hub() -> None:
    assert parse_reference("busybox").registry_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").registry_host == "127.0.0.1:5000"


INDEX = {"manifests": [
    {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:amd64", "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
]}


def test_pick_manifest_by_platform_and_variant() -> None:
    assert pick_manifest(INDEX, Platform("linux", "amd64"))["digest"] == "sha256:amd64"
    assert pick_manifest(INDEX, Platform.parse("linux/arm64"))["digest"] == "sha256:arm64"
    assert pick_manifest(INDEX, Platform.parse("linux/arm/v7"))["digest"] == "sha256:arm"
    with pytest.raises(ImageError, match=r"no matching manifest for linux/arm/v6 .*offered"):
        pick_manifest(INDEX, Platform.parse("linux/arm/v6"))
    with pytest.raises(ImageError, match="no matching manifest for linux/s390x"):
        pick_manifest(INDEX, Platform.parse("linux/s390x"))
