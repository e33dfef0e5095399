"""Templated configs and secrets (`Templating: {"Name": "golang"}`): the dispatcher sends the
driver with the data, the node renders the file for each task (the task, the node, the task's
env and its other secrets and configs by target), and a bad template fails the task with a
clear error naming the config."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from manager.dispatcher.assignments import dependency_data
from manager.store import Store
from model import Config, Secret, new_id
from tests.unit.test_secret_delivery import b64, config_ref, make_secret, secret_ref, task_on
from worker.agent.dependencies import Dependencies
from worker.executor.templating import TemplateError

GOLANG = {"Name": "golang"}


def templated(name: str, text: str, kind: type[Config] | type[Secret] = Config) -> Any:
    return kind(id=new_id(), spec={"Name": name, "Labels": {}, "Data": b64(text), "Templating": GOLANG})


async def test_the_dispatcher_sends_the_driver_with_a_templated_config() -> None:
    plain, tpl = make_secret("pw", "x"), templated("app.conf", "{{.Task.Name}}")
    task = task_on("n1", secrets=[secret_ref(plain)], configs=[config_ref(tpl)])
    store = Store()
    await store.update(lambda tx: [tx.create(o) for o in (plain, tpl)])
    sent = store.view(lambda tx: dependency_data(tx, [task]))
    assert sent == {"secrets": {plain.id: plain.spec["Data"]},
                    "configs": {tpl.id: {"Data": tpl.spec["Data"], "Templating": GOLANG}}}


def test_a_templated_config_is_rendered_for_its_task() -> None:
    deps = Dependencies("host-a")
    pw = make_secret("db_pass", "hunter2")
    tpl = templated("app.conf", 'svc={{.Service.Name}} task={{.Task.Name}} slot={{.Task.Slot}} '
                                'node={{.Node.ID}}@{{.Node.Hostname}} os={{.Node.Platform.OS}} '
                                'env={{env "MODE"}} pw={{secret "db_pass"}} tier={{index .Service.Labels "tier"}}')
    secret_tpl = templated("token", "{{.Task.ID}}", Secret)
    deps.add({pw.id: pw.spec["Data"], secret_tpl.id: {"Data": secret_tpl.spec["Data"], "Templating": GOLANG}},
             {tpl.id: {"Data": tpl.spec["Data"], "Templating": GOLANG}})
    task = task_on("node1", secrets=[secret_ref(pw), secret_ref(secret_tpl)], configs=[config_ref(tpl)])
    task.spec["ContainerSpec"]["Env"] = ["MODE=prod"]
    task.labels = {"tier": "front"}
    files = {f.target: f.data for f in deps.files_for(task)}
    assert files["/app.conf"] == (f"svc=web task=web.1.{task.id} slot=1 node=node1@host-a os=linux "
                                  "env=prod pw=hunter2 tier=front").encode()
    assert files["/run/secrets/token"] == task.id.encode()
    assert files["/run/secrets/db_pass"] == b"hunter2"


def test_a_bad_template_or_driver_fails_the_task_naming_the_config() -> None:
    deps = Dependencies("host-a")
    bad = templated("broken.conf", "{{.Service.Nope}}")
    deps.add(None, {bad.id: {"Data": bad.spec["Data"], "Templating": GOLANG}})
    with pytest.raises(TemplateError, match=r"config broken\.conf: template: expansion:1: .*can.t evaluate field Nope"):
        deps.files_for(task_on("n", configs=[config_ref(bad)]))
    odd = templated("odd.conf", "x")
    deps.add(None, {odd.id: {"Data": odd.spec["Data"], "Templating": {"Name": "jinja"}}})
    with pytest.raises(TemplateError, match=r"config odd\.conf: unknown template driver .jinja."):
        deps.files_for(task_on("n", configs=[config_ref(odd)]))
    # The same data sent again without templating is plain again.
    deps.add(None, {bad.id: bad.spec["Data"]})
    assert deps.files_for(task_on("n", configs=[config_ref(bad)]))[0].data == base64.b64decode(bad.spec["Data"])
