"""Driving `worker.exec.do` by hand in tests: a task in a given state, and one step applied."""

from __future__ import annotations

from model import Task, TaskState, TaskStatus, new_id
from worker.exec import Controller, Step, do


def task_in(state: TaskState, desired: TaskState = TaskState.RUNNING, task_id: str = "") -> Task:
    t = Task(id=task_id or new_id(), service_id="svc", slot=1, node_id="n1", spec={}, service_name="web")
    t.status = TaskStatus(state, "", "as given")
    t.desired_state = desired
    return t


async def step(task: Task, ctl: Controller) -> Step:
    """One `do`, its status made the task's (as the runner does)."""
    result = await do(task, ctl)
    task.status = result.status
    return result
