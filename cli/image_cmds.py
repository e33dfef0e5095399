"""`shoal image …`: load, pull, ls, inspect, tag, rm, save, prune — via the daemon's Engine API."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
from rich.table import Table

from cli.client import DaemonClient
from cli.common import FilterQuery, console, fail, filter_option, with_client, with_filter


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1000
    raise AssertionError("unreachable")


def human_ago(unix: int) -> str:
    delta = max(0, int(time.time()) - unix)
    for seconds, name in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"),
                          (86400, "day"), (3600, "hour"), (60, "minute")):
        if delta >= seconds:
            n = delta // seconds
            return f"{n} {name}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago"


def _split_repo_tag(target: str) -> tuple[str, str]:
    slash = target.rfind("/")
    colon = target.rfind(":")
    if colon > slash:
        return target[:colon], target[colon + 1:]
    return target, ""


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"stream": line + "\n"}
            if isinstance(doc, dict):
                out.append(doc)
    return out


@click.group("image")
def image() -> None:
    """Manage images on the node."""


@image.command("ls")
@filter_option("-f", "--filter", help="Filter: reference=, dangling=true|false, label=, before=, since=.")
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.option("--no-trunc", is_flag=True, help="Full image IDs.")
@click.option("--digests", is_flag=True, help="Show digests.")
@click.pass_context
def ls(ctx: click.Context, filters: FilterQuery | None, quiet: bool, no_trunc: bool, digests: bool) -> None:
    """List images."""

    async def go(c: DaemonClient) -> Any:
        return await c.get("/images/json", filters=filters)

    images = with_client(ctx, go)

    def ident(image_id: str) -> str:
        return image_id if no_trunc else image_id.removeprefix("sha256:")[:12]

    if quiet:
        seen: set[str] = set()
        for img in images:
            if img["Id"] not in seen:
                seen.add(img["Id"])
                console.print(ident(img["Id"]))
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    columns = ["REPOSITORY", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "CREATED", "SIZE"]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for img in images:
        digest = (img.get("RepoDigests") or ["<none>@<none>"])[0].rpartition("@")[2]
        tags = img.get("RepoTags") or ["<none>:<none>"]
        for tag in tags:
            repo, name = _split_repo_tag(tag)
            row = [repo, name or "<none>", *([digest] if digests else []), ident(img["Id"]),
                   human_ago(int(img.get("Created", 0))), human_size(int(img.get("Size", 0)))]
            table.add_row(*row)
    console.print(table)


@image.command("pull")
@click.argument("ref")
@click.option("--platform", default=None, help="os/arch[/variant] to pull (default: the node's).")
@click.option("-q", "--quiet", is_flag=True, help="Only print the image name.")
@click.pass_context
def pull(ctx: click.Context, ref: str, platform: str | None, quiet: bool) -> None:
    """Pull an image from a registry."""

    async def go(c: DaemonClient) -> str | None:
        buffer = b""
        error: str | None = None
        async for chunk in c.stream("POST", "/images/create", params={"fromImage": ref,
                                                                      "platform": platform}):
            buffer += chunk
            *lines, rest = buffer.split(b"\n")
            buffer = rest
            for event in _json_lines(b"\n".join(lines).decode(errors="replace")):
                if event.get("error"):
                    error = str(event["error"])
                elif not quiet and event.get("status") and event["status"] != "Downloading":
                    prefix = f"{event['id']}: " if event.get("id") else ""
                    console.print(f"{prefix}{event['status']}", markup=False)
        return error

    error = with_client(ctx, go)
    if error:
        fail(f"Error response from daemon: {error}")
    if quiet:
        console.print(ref, markup=False)


@image.command("load")
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False),
              help="Archive to read (docker save or OCI layout tar); default stdin.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def load(ctx: click.Context, input_path: str | None, quiet: bool) -> None:
    """Load images from a docker-save or OCI image-layout archive."""
    if input_path:
        try:
            data = Path(input_path).read_bytes()
        except OSError as e:
            fail(f"cannot read {input_path}: {e.strerror}")
    else:
        if sys.stdin.isatty():
            fail("requested load from stdin, but stdin is empty (use -i FILE)")
        data = sys.stdin.buffer.read()

    async def go(c: DaemonClient) -> Any:
        return (await c.request("POST", "/images/load", data=data,
                                headers={"Content-Type": "application/x-tar"}))[1]

    body = with_client(ctx, go)
    events = _json_lines(body if isinstance(body, str) else json.dumps(body) if body else "")
    for event in events:
        if event.get("error"):
            fail(str(event["error"]))
        if not quiet and event.get("stream"):
            console.print(str(event["stream"]).rstrip("\n"), markup=False)


@image.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Show details of images as JSON."""

    async def go(c: DaemonClient) -> list[Any]:
        return [await c.get(f"/images/{quote(name, safe='/:@')}/json") for name in names]

    console.print_json(json.dumps(with_client(ctx, go)))


@image.command("tag")
@click.argument("source")
@click.argument("target")
@click.pass_context
def tag(ctx: click.Context, source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    repo, name = _split_repo_tag(target)

    async def go(c: DaemonClient) -> Any:
        return await c.post(f"/images/{quote(source, safe='/:@')}/tag", repo=repo, tag=name or None)

    with_client(ctx, go)


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove even if tagged several times.")
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove images (untag; delete when the last tag goes)."""

    async def go(c: DaemonClient) -> list[Any]:
        out: list[Any] = []
        for name in names:
            out += await c.delete(f"/images/{quote(name, safe='/:@')}", force=force or None) or []
        return out

    for item in with_client(ctx, go):
        for key in ("Untagged", "Deleted"):
            if key in item:
                console.print(f"{key}: {item[key]}", markup=False)


@image.command("save")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write the archive to.")
@click.pass_context
def save(ctx: click.Context, names: tuple[str, ...], output: str) -> None:
    """Save images to a tar archive (docker-save and OCI layout in one)."""
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")

    async def go(c: DaemonClient) -> None:
        path = "/images/get?" + urlencode([("names", n) for n in names])
        with open(partial, "wb") as f:  # noqa: ASYNC230 - a CLI process; nothing else on the loop
            async for chunk in c.stream("GET", path):
                f.write(chunk)

    try:
        with_client(ctx, go)
    except BaseException:  # including the SystemExit of a reported error: no partial file left
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


@image.command("prune")
@click.option("-a", "--all", "all_images", is_flag=True, help="Remove all unused images, not just dangling.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@filter_option("--filter", help="Filter: label=KEY[=VALUE].")
@click.pass_context
def prune(ctx: click.Context, all_images: bool, force: bool, filters: FilterQuery | None) -> None:
    """Remove unused images."""
    if not force:
        what = "all images without at least one task using them" if all_images else "all dangling images"
        if not click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?"):
            return
    query = with_filter(filters, "dangling", "false") if all_images else filters

    async def go(c: DaemonClient) -> Any:
        return await c.post("/images/prune", filters=query)

    body = with_client(ctx, go) or {}
    deleted = body.get("ImagesDeleted") or []
    if deleted:
        console.print("Deleted Images:")
        for item in deleted:
            for key in ("Untagged", "Deleted"):
                if key in item:
                    console.print(f"{key.lower()}: {item[key]}", markup=False)
        console.print()
    console.print(f"Total reclaimed space: {human_size(int(body.get('SpaceReclaimed', 0)))}")
