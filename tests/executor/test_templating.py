"""The Go-template subset of templated secrets and configs, as Docker documents it (pure)."""

from __future__ import annotations

import pytest

from worker.executor.templating import TemplateContext, TemplateError, render

CTX = TemplateContext(service_id="svc1", service_name="web", service_labels={"tier": "front", "a": "1"},
                      node_id="node1", node_hostname="host-a", node_os="linux", node_arch="x86_64",
                      task_id="task1", task_name="web.2.task1", task_slot="2", env=["GREETING=hi", "EMPTY="])
FILES = {"secret": {"db_pass": b"hunter2"}, "config": {"/etc/app.conf": b"port=80"}}


def expand(text: str) -> str:
    return render(text.encode(), CTX, secret=FILES["secret"].get, config=FILES["config"].get).decode()


def test_the_documented_placeholders() -> None:
    assert expand("{{.Service.ID}} {{.Service.Name}} {{.Service.Labels}}") == "svc1 web map[a:1 tier:front]"
    assert expand("{{.Node.ID}} {{.Node.Hostname}} {{.Node.Platform.OS}} {{.Node.Platform.Architecture}}") == \
        "node1 host-a linux x86_64"
    assert expand("{{.Task.ID}} {{ .Task.Name }} {{.Task.Slot}}") == "task1 web.2.task1 2"
    assert expand('{{env "GREETING"}}-{{env "NOPE"}}-{{env "EMPTY"}}') == "hi--"
    assert expand('pw={{secret "db_pass"}} conf={{config "/etc/app.conf"}}') == "pw=hunter2 conf=port=80"
    assert expand('{{index .Service.Labels "tier"}}|{{.Service.Labels.a}}|{{index .Service.Labels "x"}}') == "front|1|"


def test_trimming_comments_and_plain_text() -> None:
    assert expand("a  {{- .Task.Slot -}}  \n b{{/* note */}}") == "a2b"
    assert render(b"no actions \xff at all", CTX) == b"no actions \xff at all"


@pytest.mark.parametrize(("text", "message"), [
    ("{{.Service.Nope}}", "template: expansion:1: executing at <.Service.Nope>: can't evaluate field Nope "
                          "in type template.Service"),
    ("line1\n{{ nope }}", 'template: expansion:2: function "nope" not defined'),
    ('{{secret "missing"}}', "error calling secret: secret target missing not found"),
    ("{{if .Task.ID}}x{{end}}", "{{if}} is not supported"),
    ("{{.Task.ID | printf}}", "pipelines are not supported"),
    ("text {{.Task.ID", "template: expansion:1: unclosed action"),
    ("{{env}}", "wrong number of args for env"),
])
def test_errors_name_the_template_and_line(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        expand(text)
    assert message in str(err.value)
