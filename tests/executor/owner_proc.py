"""A stand-in for `shoal daemon` in the live-restore test: it owns an Executor, starts two
containers, prints their ids and pids as one JSON line, then waits until it is SIGKILLed.

usage: python -m tests.executor.owner_proc DATA_DIR LAYER_DIR CONTROL_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from worker.executor import ContainerConfig, Executor, MountSpec


async def main(data_dir: Path, layer: Path, control: Path) -> None:
    executor = Executor(data_dir)
    await executor.start_up()
    configs = [
        ContainerConfig(id="restore-runner", name="runner", lower_dirs=[layer],
                        args=["sh", "-c", "echo running; exec sleep 300"]),
        ContainerConfig(id="restore-exiter", name="exiter", lower_dirs=[layer],
                        args=["sh", "-c", "echo waiting; while [ ! -e /ctl/go ]; do sleep 0.05; "
                                          "done; echo leaving; exit 7"],
                        mounts=[MountSpec(type="bind", source=str(control), target="/ctl")]),
    ]
    pids = {}
    for config in configs:
        ctl = executor.controller(config)
        await ctl.prepare()
        await ctl.start()
        pids[config.id] = (await ctl.state()).pid
    print(json.dumps({"pids": pids}), flush=True)
    await asyncio.Event().wait()     # until killed


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
