"""Swarm-level chaos on a lab: a seeded nemesis, a driver of service changes, and the invariants.

Theory of operation. The nemesis runs episodes: one fault (kill the leader, kill a worker, cut a
manager or a worker off, restart a daemon gracefully), held for a while, then undone. Meanwhile
the driver (a thread) creates, scales, updates and removes services through any manager, as a
careful client does: it retries on "no leader" and connection errors, and a retried update keeps
its version, so a change is applied at most once. The driver keeps, per service name, the state
the cluster acknowledged last (a 2xx) plus the states of attempts whose outcome it never learnt
(a timeout, a dropped connection): the cluster must show one of those.

After every undo the driver is paused, and the checker measures how long the swarm takes to
converge: every service runs exactly its replicas, all of its current spec, all desired-running
tasks running (none stuck pending or assigned), no service+slot running twice, and every host's
runc containers are exactly the running tasks the manager places there (no container without a
task). Every message names the seed; SHOAL_CHAOS_SEED=N replays one.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.client import ApiResponseError, DaemonClient
from cli.lab import Lab

IMAGE = "busybox:latest"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
PREFIX = "chaos-"
NAMES = [f"{PREFIX}{i}" for i in range(4)]
CALL_TIMEOUT = 5.0          # one API call of the driver or the checker
OP_BUDGET = 20.0            # one driver operation, retries included
NO_SERVICE = None           # the state of a name whose service does not exist
SLOW_READS: list[str] = []  # the checker's reads that failed (and how long they took), newest last

# A service's state as the driver sees it: (replicas, env) or NO_SERVICE.
Shape = tuple[int, tuple[str, ...]]
State = Shape | None


def call(lab: Lab, node: str, method: str, path: str, body: Any = None, **params: Any) -> Any:
    async def go() -> Any:
        async with DaemonClient(lab.node(node).host, timeout=CALL_TIMEOUT) as c:
            return (await c.request(method, path, params=params or None, body=body))[1]

    async def bounded() -> Any:
        return await asyncio.wait_for(go(), CALL_TIMEOUT + 1)

    return asyncio.run(bounded())


def managers(lab: Lab) -> list[str]:
    return sorted(n for n in lab.nodes if n.startswith("manager-"))


def workers(lab: Lab) -> list[str]:
    return sorted(n for n in lab.nodes if n.startswith("worker-"))


def read(lab: Lab, path: str, **params: Any) -> Any:
    """A read from the first manager that answers (each tried once)."""
    last: Exception | None = None
    for m in managers(lab):
        asked = time.monotonic()
        SLOW_READS.clear()
        try:
            return call(lab, m, "GET", path, **params)
        except Exception as e:  # down, partitioned, no leader: the next one
            last = e
            SLOW_READS.append(f"GET {path} from {m} failed after {time.monotonic() - asked:.1f}s: {e!r}"[:200])
    raise AssertionError(f"no manager answered GET {path}: {last!r}")


def spec_for(name: str, replicas: int, env: tuple[str, ...]) -> dict[str, Any]:
    return {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SLEEPER, "Env": list(env),
                                           "StopGracePeriod": 2_000_000_000},
                         "RestartPolicy": {"Condition": "any", "Delay": 500_000_000}},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": {"Parallelism": 4, "Monitor": 500_000_000},
    }


def state_of(spec: dict[str, Any]) -> Shape:
    return (int(spec["Mode"]["Replicated"]["Replicas"]),
            tuple(spec["TaskTemplate"]["ContainerSpec"].get("Env") or ()))


def retryable(e: Exception) -> bool:
    """Errors after which the change may or may not have happened, and a retry is the answer."""
    if isinstance(e, ApiResponseError):
        if "out of sequence" in e.message:
            # A definite refusal (Docker answers it with a 500): the version moved, by an earlier
            # attempt of ours that did apply or by another writer. Retrying the same version can
            # only be refused again; the driver used to spin on it for its whole budget, which
            # the checker then counted as time to converge.
            return False
        return e.status >= 500 or "does not have a leader" in e.message
    return True  # connection refused or reset, timeout


@dataclass
class Ledger:
    """Per service name: the last acknowledged state and the states of unresolved attempts since."""
    acked: dict[str, State] = field(default_factory=lambda: dict.fromkeys(NAMES, NO_SERVICE))
    maybe: dict[str, list[State]] = field(default_factory=lambda: {n: [] for n in NAMES})
    acks: int = 0
    unknown: int = 0

    def ack(self, name: str, state: State) -> None:
        self.acked[name], self.maybe[name] = state, []
        self.acks += 1

    def allowed(self, name: str) -> list[State]:
        return [self.acked[name], *self.maybe[name]]


class Driver(threading.Thread):
    """Service changes through random managers until stopped; pausable between operations."""

    def __init__(self, lab: Lab, seed: int) -> None:
        super().__init__(name="chaos-driver", daemon=True)
        self.lab, self.seed, self.rng = lab, seed, random.Random(seed * 7919 + 1)
        self.ledger = Ledger()
        self.generation = 0
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.error: BaseException | None = None
        self.log: list[str] = []

    # -- control ------------------------------------------------------------------------------------
    def pause(self, timeout: float = OP_BUDGET + 10) -> None:
        self.paused.set()
        if not self.idle.wait(timeout):
            raise AssertionError(f"seed {self.seed}: the driver did not pause within {timeout:.0f}s")

    def resume(self) -> None:
        self.idle.clear()
        self.paused.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.pause()
        self.join(timeout=OP_BUDGET + 10)

    def run(self) -> None:
        try:
            for _ in range(100_000):  # bounded; in practice stopped long before
                if self.stopping.is_set() and self.paused.is_set():
                    break
                if self.paused.is_set():
                    self.idle.set()
                    self.stopping.wait(0.05)
                    continue
                self.one_change()
                self.stopping.wait(self.rng.uniform(0.05, 0.3))  # pacing: a schedule, not a wait
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.idle.set()

    # -- operations ---------------------------------------------------------------------------------
    def one_change(self) -> None:
        name = self.rng.choice(NAMES)
        via = self.rng.choice(managers(self.lab))
        known = self.ledger.acked[name]
        roll = self.rng.random()
        self.generation += 1
        env = (f"GEN={self.generation}",)
        if known is NO_SERVICE and not self.ledger.maybe[name]:
            self.create(name, self.rng.randint(1, 3), env)
        elif roll < 0.15:
            self.remove(name)
        elif roll < 0.55:
            self.update(name, via, scale=self.rng.randint(1, 3))
        else:
            self.update(name, via, env=env)

    def attempt(self, what: str, name: str, intended: State, do: Any) -> str:
        """Run `do(via)` until acknowledged or answered with a definite error: "acked", or the
        error's message. An attempt that failed in a way that may have applied adds `intended` to
        the name's unresolved states."""
        deadline = time.monotonic() + OP_BUDGET
        via = self.rng.choice(managers(self.lab))
        for _ in range(50):
            asked = time.monotonic()
            try:
                do(via)
                self.ledger.ack(name, intended)
                self.log.append(f"{what} {name} -> {intended} via {via}: acked in {time.monotonic() - asked:.1f}s")
                return "acked"
            except Exception as e:
                self.log.append(f"{what} {name} via {via}: {e!r} after {time.monotonic() - asked:.1f}s"[:240])
                if not retryable(e):
                    return str(getattr(e, "message", e))
                if intended not in self.ledger.maybe[name]:
                    self.ledger.maybe[name].append(intended)
                    self.ledger.unknown += 1
                if time.monotonic() > deadline:
                    self.log.append(f"{what} {name} -> {intended}: gave up ({e!r})")
                    return "gave up"
                via = self.rng.choice(managers(self.lab))
                self.stopping.wait(0.2)  # pacing between a careful client's retries
        return "gave up"

    def create(self, name: str, replicas: int, env: tuple[str, ...]) -> None:
        outcome = self.attempt("create", name, (replicas, env),
                               lambda v: call(self.lab, v, "POST", "/services/create", spec_for(name, replicas, env)))
        if outcome not in ("acked", "gave up") and "already exists" not in outcome and "conflict" not in outcome:
            self.log.append(f"create {name}: refused: {outcome}")

    def remove(self, name: str) -> None:
        outcome = self.attempt("remove", name, NO_SERVICE, lambda v: call(self.lab, v, "DELETE", f"/services/{name}"))
        if outcome not in ("acked", "gave up") and ("not found" in outcome or "no such" in outcome.lower()):
            # Gone already: an earlier unresolved remove (or create never applied). The cluster
            # says so; that is an observation, not an acknowledgement of our change.
            self.log.append(f"remove {name}: {outcome}")

    def update(self, name: str, via: str, scale: int | None = None, env: tuple[str, ...] | None = None) -> None:
        try:
            current = call(self.lab, via, "GET", f"/services/{name}")
        except Exception as e:
            self.log.append(f"update {name}: read failed: {e!r}")
            return
        spec = current["Spec"]
        if scale is not None:
            spec["Mode"]["Replicated"]["Replicas"] = scale
        if env is not None:
            spec["TaskTemplate"]["ContainerSpec"]["Env"] = list(env)
        version = current["Version"]["Index"]
        self.attempt("update", name, state_of(spec),
                     lambda v: call(self.lab, v, "POST", f"/services/{current['ID']}/update", spec, version=version))


# -- the checker ---------------------------------------------------------------------------------------

def runc_running(lab: Lab, node: str) -> set[str]:
    root = Path(lab.node(node).data_dir) / "run" / "runc"
    proc = subprocess.run(["runc", "--root", str(root), "list", "--format", "json"], capture_output=True,
                          text=True, timeout=15)
    if proc.returncode != 0:
        raise AssertionError(f"runc list on {node}: {proc.stderr.strip()}")
    return {c["id"] for c in json.loads(proc.stdout or "null") or [] if c.get("status") in ("running", "paused")}


def problems(lab: Lab) -> list[str]:
    """What keeps the swarm from being converged right now (empty: converged)."""
    services = [s for s in read(lab, "/services") if s["Spec"]["Name"].startswith(PREFIX)]
    tasks = read(lab, "/tasks")
    hosts = {n["ID"]: n["Description"]["Hostname"] for n in read(lab, "/nodes")}
    found: list[str] = []
    by_service = {s["ID"]: s for s in services}
    expected_containers: dict[str, set[str]] = {n: set() for n in lab.nodes}
    for s in services:
        name, (replicas, env) = s["Spec"]["Name"], state_of(s["Spec"])
        mine = [t for t in tasks if t["ServiceID"] == s["ID"] and t["DesiredState"] == "running"]
        if len(mine) != replicas:
            found.append(f"{name}: {len(mine)} tasks desired running, {replicas} replicas")
        for t in mine:
            if t["Status"]["State"] != "running":
                found.append(f"{name}: task {t['ID'][:12]} slot {t.get('Slot')} is {t['Status']['State']}")
            if tuple(t["Spec"]["ContainerSpec"].get("Env") or ()) != env:
                found.append(f"{name}: task {t['ID'][:12]} runs an old spec")
    slots: dict[tuple[str, Any], list[str]] = {}
    for t in tasks:
        if t["Status"]["State"] == "running":
            if t["ServiceID"] in by_service:
                slots.setdefault((t["ServiceID"], t.get("Slot")), []).append(t["ID"][:12])
            if t["DesiredState"] == "running" and t["ServiceID"] in by_service:
                expected_containers.setdefault(hosts.get(t["NodeID"], "?"), set()).add(t["ID"])
    for (sid, slot), ids in slots.items():
        if len(ids) > 1:
            found.append(f"{by_service[sid]['Spec']['Name']} slot {slot} runs twice: {ids}")
    for node in lab.nodes:
        actual = runc_running(lab, node)
        expected = expected_containers.get(node, set())
        if actual - expected:
            found.append(f"{node}: containers without a running task: {sorted(c[:12] for c in actual - expected)}")
        if expected - actual:
            found.append(f"{node}: running tasks without a container: {sorted(c[:12] for c in expected - actual)}")
    return found


def clear(lab: Lab, seed: int) -> None:
    """Remove the services of an earlier run, so that a seed starts from an empty swarm."""
    for s in read(lab, "/services"):
        if s["Spec"]["Name"].startswith(PREFIX):
            call(lab, "manager-1", "DELETE", f"/services/{s['ID']}")
    _, left, _ = wait_converged(lab, time.monotonic(), 60)
    assert not left, f"seed {seed}: the services of an earlier run did not go: {left}"


def check_acknowledged(lab: Lab, ledger: Ledger, seed: int) -> None:
    """Every acknowledged change is present: each name's service is in an allowed state."""
    services = {s["Spec"]["Name"]: s for s in read(lab, "/services")}
    for name in NAMES:
        actual = state_of(services[name]["Spec"]) if name in services else NO_SERVICE
        allowed = ledger.allowed(name)
        assert actual in allowed, (f"seed {seed}: {name} is {actual}, but the last acknowledged change left it "
                                   f"{ledger.acked[name]} (unresolved attempts since: {ledger.maybe[name]})")


def wait_converged(lab: Lab, start: float, give_up: float) -> tuple[float, list[str], list[str]]:
    """Seconds from `start` (a time.monotonic()) until converged, or until `give_up` seconds, with
    what was still wrong then, and a trail of what was wrong along the way ("at 1.2s: ...", at
    each change, first problem only)."""
    last: list[str] = ["never read"]
    trail: list[str] = []
    for _ in range(10_000):
        if time.monotonic() - start > give_up:
            break
        asked = time.monotonic()
        SLOW_READS.clear()
        try:
            now = problems(lab)
        except Exception as e:  # a manager between states
            now = [f"read failed: {e!r}"]
        if time.monotonic() - asked > 1.5:  # the check itself was slow: say so, it is part of the time
            trail.append(f"at {asked - start:.1f}s: the check took {time.monotonic() - asked:.1f}s "
                         f"({'; '.join(SLOW_READS) or 'no read failed'})")
        if now and now != last:
            more = f" (+{len(now) - 1} more)" if len(now) > 1 else ""
            trail.append(f"at {time.monotonic() - start:.1f}s: {now[0]}{more}")
        last = now
        if not last:
            return time.monotonic() - start, [], trail
        time.sleep(0.25)  # polling interval of this wait
    return time.monotonic() - start, last, trail


# -- the nemesis --------------------------------------------------------------------------------------

def find_leader(lab: Lab) -> str:
    try:
        for n in read(lab, "/nodes"):
            if (n.get("ManagerStatus") or {}).get("Leader"):
                return str(n["Description"]["Hostname"])
    except AssertionError:
        pass
    return ""


@dataclass
class Nemesis:
    lab: Lab
    seed: int
    rng: random.Random = field(init=False)
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def episode(self) -> str:
        """Inject one fault, hold it, undo it; returns what was done."""
        lab, rng = self.lab, self.rng
        kind = rng.choice(["kill-leader", "kill-worker", "partition-manager", "partition-worker", "restart"])
        hold = rng.uniform(2.0, 6.0)
        if kind == "kill-leader":
            victim = find_leader(lab) or rng.choice(managers(lab))
            lab.kill(victim)
            time.sleep(hold)  # the fault's duration: a schedule
            lab.start(victim)
        elif kind == "kill-worker":
            victim = rng.choice(workers(lab))
            lab.kill(victim)
            time.sleep(hold)
            lab.start(victim)
        elif kind.startswith("partition"):
            victim = rng.choice(managers(lab) if kind == "partition-manager" else workers(lab))
            others = [n for n in lab.nodes if n != victim]
            cut = others if rng.random() < 0.5 else [n for n in others if n.startswith("manager-")]
            for other in cut:
                lab.partition(victim, other)
            time.sleep(hold)
            lab.heal()
        else:
            victim = rng.choice(sorted(lab.nodes))
            lab.restart(victim)
            time.sleep(hold / 2)  # the driver goes on before the checks pause it
        what = f"restart {victim}" if kind == "restart" else f"{kind} {victim} for {hold:.1f}s"
        self.history.append(what)
        return what
