"""Images built in-process from the host's static busybox (busybox-static), for the lab's demo
service, benchmarks and tests.

`build_busybox_image(tmpdir)` makes a two-layer image:
  layer 1: /bin/busybox plus applet symlinks (/bin/sh, /bin/sleep, ...), /etc/passwd with root,
           app (1000) and nobody, /tmp (1777), /home/app (1000:1000), and files layer 2 removes;
  layer 2: a whiteout (/etc/removed.txt), an opaque dir (/opaque), a hardlink pair under /data
           (0640, 1000:1000), a setuid file, relative and absolute symlinks, /etc/platform.
Everything is deterministic (fixed mtimes, gzip mtime 0), so the same options give the same
image ID. The image can be written as a docker-save archive or an OCI layout archive, imported
into an ImageStore, or pushed to a registry (including a multi-platform index).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/usr/bin/busybox")
MTIME = 1_700_000_000
APPLETS = (
    "sh", "ash", "sleep", "echo", "cat", "ls", "true", "false", "env", "id", "hostname", "pwd",
    "ps", "kill", "mkdir", "rm", "touch", "wget", "nc", "grep", "head", "tail", "test", "[", "stat",
    "date", "whoami", "uname", "seq", "yes", "dd", "printf", "ip", "mount", "cp", "mv", "ln",
    "chmod", "chown", "find", "tee", "wc", "sed", "awk", "top", "free", "readlink", "umask",
    "nslookup", "httpd", "timeout", "dmesg", "df", "du", "sync",
)
PASSWD = ("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TarBuilder:
    """Deterministic tar writing: entries in call order, fixed mtimes."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = MTIME
        return info

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def hardlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        self.tar.addfile(info)

    def finish(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


@functools.lru_cache(maxsize=4)
def base_layer() -> bytes:
    """Layer 1 (uncompressed tar)."""
    t = TarBuilder()
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("proc", 0o555),
                    ("sys", 0o555), ("dev", 0o755), ("home", 0o755), ("var", 0o755), ("usr", 0o755),
                    ("usr/bin", 0o755), ("opaque", 0o755)):
        t.dir(d, mode)
    t.dir("home/app", 0o750, 1000, 1000)
    t.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in APPLETS:
        t.symlink(f"bin/{applet}", "busybox")
    t.file("etc/passwd", PASSWD.encode())
    t.file("etc/group", GROUP.encode())
    t.file("etc/removed.txt", b"layer 2 whites this out\n")
    t.file("opaque/old.txt", b"hidden by the opaque dir above\n")
    t.dir("opaque/olddir")
    return t.finish()


@functools.lru_cache(maxsize=8)
def app_layer(platform: str, extra: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """Layer 2 (uncompressed tar): whiteouts, hardlinks, modes, symlinks, the platform marker."""
    t = TarBuilder()
    t.file("etc/.wh.removed.txt", b"")
    t.file("etc/platform", platform.encode() + b"\n")
    t.dir("opaque")
    t.file("opaque/.wh..wh..opq", b"")
    t.file("opaque/new.txt", b"only this survives in /opaque\n")
    t.dir("data", 0o755, 1000, 1000)
    t.file("data/file.txt", b"hard linked\n", 0o640, 1000, 1000)
    t.hardlink("data/hardlink.txt", "data/file.txt")
    t.file("data/setuid", b"#!/bin/sh\necho setuid\n", 0o4755, 0, 0)
    t.symlink("bin/relative-link", "busybox")
    t.symlink("usr/bin/abs-link", "/bin/busybox")
    for name, data in extra:
        t.file(name, data, 0o755)
    return t.finish()


@dataclass
class BuiltImage:
    config: bytes
    layer_tars: list[bytes]               # uncompressed (diff IDs are their digests)
    layer_blobs: list[bytes]              # gzip-compressed (what registries and OCI layouts hold)
    manifest: bytes = b""
    platform: tuple[str, str, str] = ("linux", "amd64", "")
    archives: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.config_digest, "size": len(self.config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)}
                       for b in self.layer_blobs],
        }).encode()

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    image_id = config_digest

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def diff_ids(self) -> list[str]:
        return [sha256(t) for t in self.layer_tars]

    def descriptor(self) -> dict[str, Any]:
        os_name, arch, variant = self.platform
        plat = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
        return {"mediaType": OCI_MANIFEST, "digest": self.manifest_digest, "size": len(self.manifest),
                "platform": plat}

    def blobs(self) -> dict[str, bytes]:
        out = {self.config_digest: self.config, self.manifest_digest: self.manifest}
        out.update({sha256(b): b for b in self.layer_blobs})
        return out


def build_busybox_image(tmpdir: Path | None = None, *, arch: str = "amd64", variant: str = "",
                        cmd: list[str] | None = None, entrypoint: list[str] | None = None,
                        env: list[str] | None = None, workdir: str = "/home/app", user: str = "",
                        labels: dict[str, str] | None = None, healthcheck: dict[str, Any] | None = None,
                        stop_signal: str = "SIGTERM", exposed_ports: dict[str, Any] | None = None,
                        extra_files: dict[str, bytes] | None = None) -> BuiltImage:
    """A busybox image; config fields as given. `tmpdir` is where `write_*` put archives by default."""
    platform = "/".join(p for p in ("linux", arch, variant) if p)
    tars = [base_layer(), app_layer(platform, tuple(sorted((extra_files or {}).items())))]
    config = {
        "architecture": arch, "os": "linux", **({"variant": variant} if variant else {}),
        "created": "2024-01-02T03:04:05.123456789Z", "author": "shoal tests",
        "config": {
            "Env": env if env is not None else
            ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
            "Cmd": cmd if cmd is not None else ["sh", "-c", "echo hello from busybox"],
            "Entrypoint": entrypoint, "WorkingDir": workdir, "User": user,
            "Labels": labels if labels is not None else {"org.shoal.test": "busybox"},
            "Healthcheck": healthcheck if healthcheck is not None else
            {"Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000, "Timeout": 1_000_000_000,
             "Retries": 3, "StartPeriod": 0},
            "StopSignal": stop_signal,
            "ExposedPorts": exposed_ports if exposed_ports is not None else {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "busybox base"},
                    {"created": "2024-01-02T03:04:05Z", "created_by": "app layer"}],
    }
    image = BuiltImage(config=json.dumps(config, sort_keys=True).encode(), layer_tars=tars,
                       layer_blobs=[_gzip_cached(t) for t in tars], platform=("linux", arch, variant))
    if tmpdir is not None:
        image.archives["dir"] = Path(tmpdir)
    return image


@functools.lru_cache(maxsize=16)
def _gzip_cached(data: bytes) -> bytes:
    return gzip_bytes(data)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def write_docker_save(image: BuiltImage, path: Path, tags: list[str]) -> Path:
    """The classic `docker save` layout: <config-hex>.json, <layer>/layer.tar, manifest.json."""
    with tarfile.open(path, "w") as tf:
        _add(tf, image.config_digest.removeprefix("sha256:") + ".json", image.config)
        layer_names = []
        for tar in image.layer_tars:
            name = sha256(tar).removeprefix("sha256:") + "/layer.tar"
            _add(tf, name, tar)
            layer_names.append(name)
        _add(tf, "manifest.json", json.dumps([{"Config": image.config_digest.removeprefix("sha256:")
                                               + ".json", "RepoTags": tags, "Layers": layer_names}]).encode())
        repos: dict[str, dict[str, str]] = {}
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            repos.setdefault(repo, {})[t] = layer_names[-1].split("/")[0]
        _add(tf, "repositories", json.dumps(repos).encode())
    return path


def write_oci_layout(images: list[BuiltImage], path: Path, ref_name: str | None) -> Path:
    """An OCI image-layout archive. Several images → one multi-platform index entry."""
    with tarfile.open(path, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        blobs: dict[str, bytes] = {}
        for image in images:
            blobs.update(image.blobs())
        annotations = {"io.containerd.image.name": ref_name,
                       "org.opencontainers.image.ref.name": ref_name.rsplit(":", 1)[-1]} if ref_name else {}
        if len(images) == 1:
            top = {**images[0].descriptor(), "annotations": annotations}
            top.pop("platform")
        else:
            nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                 "manifests": [i.descriptor() for i in images]}).encode()
            blobs[sha256(nested)] = nested
            top = {"mediaType": OCI_INDEX, "digest": sha256(nested), "size": len(nested),
                   "annotations": annotations}
        for digest, data in blobs.items():
            _add(tf, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
        _add(tf, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": [top]}).encode())
    return path
