"""Templated secrets and configs (`Templating: {"Name": "golang"}`): the subset of Go's
text/template that Docker documents for them, rendered on the worker when the file is injected.

Theory of operation: the payload is split into text and actions (`{{ ... }}`, with `{{-`/`-}}`
trimming the whitespace beside them and `{{/* ... */}}` comments). An action is one pipeline
of a single command: a field chain on the context (`.Service.ID`, `.Service.Name`,
`.Service.Labels`, `.Node.ID`, `.Node.Hostname`, `.Node.Platform.OS`,
`.Node.Platform.Architecture`, `.Task.ID`, `.Task.Name`, `.Task.Slot`), or a function with
string arguments: `env "VAR"` (the task's own ContainerSpec.Env, not the node's), `secret
"target"` and `config "target"` (the data of the task's secret or config whose file target is
that name, as swarmkit looks them up), `index .Service.Labels "key"`. Values print as Go prints
them (a map as `map[k:v ...]` sorted by key, nothing for a missing map key). Anything else
(unknown fields or functions, control structures, unterminated actions) is a `TemplateError`
naming the template and the line, so the task fails with it instead of running with a
half-made file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.executor.spec import ConfigError

DRIVER = "golang"


class TemplateError(ConfigError):
    pass


@dataclass(frozen=True)
class TemplateContext:
    service_id: str = ""
    service_name: str = ""
    service_labels: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    node_hostname: str = ""
    node_os: str = "linux"
    node_arch: str = ""
    task_id: str = ""
    task_name: str = ""
    task_slot: str = ""
    env: list[str] = field(default_factory=list)

    def root(self) -> dict[str, Any]:
        return {
            "Service": {"ID": self.service_id, "Name": self.service_name, "Labels": dict(self.service_labels)},
            "Node": {"ID": self.node_id, "Hostname": self.node_hostname,
                     "Platform": {"Architecture": self.node_arch, "OS": self.node_os}},
            "Task": {"ID": self.task_id, "Name": self.task_name, "Slot": self.task_slot},
        }


Getter = Callable[[str], bytes | None]       # a secret's or config's data by its file target

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\.[A-Za-z0-9_.]*)|([A-Za-z_][A-Za-z0-9_]*)|(\S))')
_TYPES = {"": "template.Context", "Service": "template.Service", "Node": "template.Node",
          "Platform": "template.Platform", "Task": "template.Task"}


def render(payload: bytes, ctx: TemplateContext, *, name: str = "expansion", secret: Getter | None = None,
           config: Getter | None = None) -> bytes:
    """The payload expanded; TemplateError for what the subset cannot do."""
    if b"{{" not in payload:
        return payload
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise TemplateError(f"template: {name}: the payload is not UTF-8 text") from None
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(text):
        before = text[pos:m.start()]
        if m.group(1):
            before = before.rstrip()
        out.append(before)
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
        line = text.count("\n", 0, m.start()) + 1
        out.append(_action(m.group(2).strip(), ctx, secret, config, f"template: {name}:{line}"))
    tail = text[pos:]
    if "{{" in tail:
        line = text.count("\n", 0, pos + tail.index("{{")) + 1
        raise TemplateError(f"template: {name}:{line}: unclosed action")
    out.append(tail)
    return "".join(out).encode()


def _action(body: str, ctx: TemplateContext, secret: Getter | None, config: Getter | None, where: str) -> str:
    if body.startswith("/*"):
        if not body.endswith("*/"):
            raise TemplateError(f"{where}: unclosed comment")
        return ""
    tokens = _tokens(body, where)
    if not tokens:
        raise TemplateError(f"{where}: missing value for command")
    kind, head = tokens[0]
    args = tokens[1:]
    if kind == "field":
        if args:
            raise TemplateError(f"{where}: can't give argument to non-function {head}")
        return _print(_field(ctx.root(), head, where))
    if kind != "ident":
        raise TemplateError(f"{where}: unexpected {head!r} in command")
    if head in ("if", "range", "with", "else", "end", "define", "template", "block", "break", "continue"):
        raise TemplateError(f"{where}: {{{{{head}}}}} is not supported in secret and config templates")
    values = [_field(ctx.root(), text, where) if k == "field" else _string(k, text, where) for k, text in args]
    if head == "env":
        variable = _one_string(head, values, where)
        for entry in ctx.env:
            key, eq, value = entry.partition("=")
            if eq and key == variable:
                return value
        return ""
    if head in ("secret", "config"):
        target = _one_string(head, values, where)
        getter = secret if head == "secret" else config
        data = getter(target) if getter is not None else None
        if data is None:
            raise TemplateError(f"{where}: error calling {head}: {head} target {target} not found")
        return data.decode(errors="replace")
    if head == "index":
        if len(values) < 2 or not isinstance(values[0], dict):
            raise TemplateError(f"{where}: error calling index: index of a map needs a map and a key")
        found: Any = values[0]
        for key in values[1:]:
            if not isinstance(found, dict):
                raise TemplateError(f"{where}: error calling index: can't index item of type string")
            found = found.get(str(key), "")
        return _print(found)
    raise TemplateError(f'{where}: function "{head}" not defined')


def _tokens(body: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        quoted, raw, dotted, ident, other = m.groups()
        if quoted is not None:
            out.append(("string", quoted))
        elif raw is not None:
            out.append(("raw", raw))
        elif dotted is not None:
            out.append(("field", dotted))
        elif ident is not None:
            out.append(("ident", ident))
        elif other is not None:
            if other == "|":
                raise TemplateError(f"{where}: pipelines are not supported in secret and config templates")
            raise TemplateError(f"{where}: unexpected {other!r} in command")
    return out


def _string(kind: str, text: str, where: str) -> str:
    if kind == "string":
        try:
            return str(json.loads(text))
        except ValueError:
            raise TemplateError(f"{where}: bad string literal {text}") from None
    if kind == "raw":
        return text[1:-1]
    raise TemplateError(f"{where}: unexpected {text!r}: expected a string")


def _one_string(func: str, values: list[Any], where: str) -> str:
    if len(values) != 1 or not isinstance(values[0], str):
        raise TemplateError(f"{where}: wrong number of args for {func}: want 1 string")
    return values[0]


def _field(root: dict[str, Any], chain: str, where: str) -> Any:
    value: Any = root
    path = ""
    for part in chain.strip(".").split(".") if chain != "." else []:
        if not isinstance(value, dict) or part not in value or path.endswith("Labels"):
            if isinstance(value, dict) and path.endswith("Labels"):
                value = value.get(part, "")          # a map key: missing prints nothing
                path += "." + part
                continue
            kind = _TYPES.get(path.rsplit(".", 1)[-1], "string")
            raise TemplateError(f"{where}: executing at <{chain}>: can't evaluate field {part} in type {kind}")
        value = value[part]
        path += "." + part
    return value


def _print(value: Any) -> str:
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_print(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)
