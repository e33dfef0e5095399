"""The state tables of model/update_state.py and model/node_state.py, and their writers.

Each table is checked against the moves written out here from swarmkit (orchestrator/update,
controlapi, dispatcher, raft membership), then every pair of states is tried on a real object:
a legal move lands, an illegal one raises and leaves the object exactly as it was.
"""

from __future__ import annotations

import copy
import itertools
import logging

import pytest

from bench.support.swarm_sim import make_node
from manager.dispatcher import Dispatcher
from manager.orchestrator import UpdateSupervisor, rollback_service, update_service_spec
from manager.store import Store
from manager.swarm.membership import ReachabilityMonitor
from model import (
    NODE_MOVES,
    REACHABILITY_MOVES,
    UPDATE_MOVES,
    IllegalNodeTransition,
    IllegalTransition,
    IllegalUpdateTransition,
    Node,
    NodeState,
    Reachability,
    Service,
    UpdateState,
    new_id,
)

U = UpdateState
N = NodeState
R = Reachability

# -- UpdateStatus.State ---------------------------------------------------------------------------

UPDATE_STATES: list[UpdateState | None] = [None, *UpdateState]

# None = no UpdateStatus. Every state may be cleared by a new spec and manually rolled back.
EXPECTED_UPDATE_MOVES = {
    (None, U.UPDATING),                    # the updater starts a rollout
    (U.UPDATING, U.PAUSED),                # failure action pause
    (U.UPDATING, U.COMPLETED),             # every slot done
    (U.UPDATING, U.ROLLBACK_STARTED),      # failure action rollback
    (U.ROLLBACK_STARTED, U.ROLLBACK_PAUSED),     # a rollback is never rolled back
    (U.ROLLBACK_STARTED, U.ROLLBACK_COMPLETED),
    (U.COMPLETED, U.UPDATING),             # shoal: slots dirty again after the update ended
    (U.ROLLBACK_COMPLETED, U.UPDATING),
    *((s, U.ROLLBACK_STARTED) for s in UPDATE_STATES),  # `service update --rollback`
    *((s, None) for s in UPDATE_STATES),                # a new spec
}


def service_in(state: UpdateState | None) -> Service:
    status = None if state is None else {"State": state.value, "StartedAt": "t0", "Message": "m"}
    return Service(id=new_id(), spec={"Name": "web"}, previous_spec={"Name": "web"}, update_status=status)


def test_update_table_is_swarmkits() -> None:
    assert set(UPDATE_MOVES) == set(UPDATE_STATES)
    assert {(a, b) for a, targets in UPDATE_MOVES.items() for b in targets} == EXPECTED_UPDATE_MOVES


@pytest.mark.parametrize(("current", "new"), list(itertools.product(UPDATE_STATES, UPDATE_STATES)))
def test_every_update_move_is_applied_or_refused_leaving_the_service_unchanged(
        current: UpdateState | None, new: UpdateState | None) -> None:
    service = service_in(current)
    before = copy.deepcopy(service)

    def move() -> None:
        if new is None:
            service.clear_update_status()
        else:
            service.set_update_status(new, "moved", started_at="t1", completed_at="t2")

    if (current, new) in EXPECTED_UPDATE_MOVES:
        move()
        assert service.update_state is new
        if new is not None:
            assert service.update_status == {"State": new.value, "StartedAt": "t1", "CompletedAt": "t2",
                                             "Message": "moved"}
            assert service.to_api()["UpdateStatus"]["State"] == new.value
    else:
        with pytest.raises(IllegalUpdateTransition, match="update state cannot move"):
            move()
        assert service == before


def test_update_status_without_completed_at_and_unknown_spellings() -> None:
    service = service_in(None)
    service.set_update_status(U.UPDATING, "update in progress", started_at="t0")
    assert service.update_status == {"State": "updating", "StartedAt": "t0", "Message": "update in progress"}
    assert U.from_api("rollback_paused") is U.ROLLBACK_PAUSED
    with pytest.raises(ValueError, match="unknown update state 'bogus'"):
        U.from_api("bogus")
    service.update_status = {"State": "bogus"}
    with pytest.raises(ValueError, match="bogus"):
        service.set_update_status(U.PAUSED, "x", started_at="t")
    assert service.update_status == {"State": "bogus"}


def test_illegal_moves_share_one_base() -> None:
    assert issubclass(IllegalUpdateTransition, IllegalTransition)
    assert issubclass(IllegalNodeTransition, IllegalTransition)
    assert issubclass(IllegalTransition, ValueError)


def test_api_helpers_move_through_the_table() -> None:
    paused = service_in(U.PAUSED)
    rolled = rollback_service(paused, 0.0)
    assert rolled.update_state is U.ROLLBACK_STARTED and paused.update_state is U.PAUSED
    assert rolled.update_status is not None and rolled.update_status["Message"] == "manually requested rollback"
    cleared = update_service_spec(rolled, {"Name": "web", "Labels": {"a": "b"}}, 0.0)
    assert cleared.update_status is None and cleared.previous_spec == rolled.spec


async def test_updater_refuses_an_illegal_move_and_writes_nothing() -> None:
    """The updater's writes are checked against the stored service: a move the table refuses is a
    bug, so the whole transaction is dropped (the orchestrator loop logs it and retries later)."""
    store = Store()
    service = service_in(U.PAUSED)
    await store.update(lambda tx: tx.create(service))
    stored = store.view(lambda tx: tx.get("services", service.id))
    with pytest.raises(IllegalUpdateTransition, match="from paused to completed"):
        await store.update(lambda tx: UpdateSupervisor()._finish(tx, service, 5.0, rollback=False))
    after = store.view(lambda tx: tx.get("services", service.id))
    assert after.version == stored.version and after.update_status == stored.update_status


# -- a node's Status.State ------------------------------------------------------------------------

EXPECTED_NODE_MOVES = {
    *((s, N.READY) for s in NodeState),    # a session opens (re-registering when ready already)
    (N.READY, N.DOWN), (N.UNKNOWN, N.DOWN),               # heartbeat failure
    (N.READY, N.DISCONNECTED),                            # the session stream ended
    (N.READY, N.UNKNOWN), (N.UNKNOWN, N.UNKNOWN), (N.DISCONNECTED, N.UNKNOWN),  # a new leader
}


def node_in(state: NodeState) -> Node:
    return Node(id=new_id(), spec={"Role": "worker", "Availability": "active"},
                status={"State": state.value, "Message": "before", "Addr": "10.0.0.1"})


def test_node_table_is_swarmkits() -> None:
    assert set(NODE_MOVES) == set(NodeState)
    assert {(a, b) for a, targets in NODE_MOVES.items() for b in targets} == EXPECTED_NODE_MOVES
    assert NODE_MOVES[N.DOWN] == {N.READY}  # a down node is never resurrected but by registering


@pytest.mark.parametrize(("current", "new"), list(itertools.product(NodeState, NodeState)))
def test_every_node_move_is_applied_or_refused_leaving_the_node_unchanged(current: NodeState,
                                                                         new: NodeState) -> None:
    node = node_in(current)
    before = copy.deepcopy(node)
    if (current, new) in EXPECTED_NODE_MOVES:
        node.set_state(new, "moved")
        assert node.state is new and node.status == {"State": new.value, "Message": "moved", "Addr": "10.0.0.1"}
        node.set_state(N.READY, addr="10.0.0.2")
        assert node.status == {"State": "ready", "Message": "", "Addr": "10.0.0.2"}
    else:
        with pytest.raises(IllegalNodeTransition, match="node state cannot move"):
            node.set_state(new, "moved", addr="10.9.9.9")
        assert node == before


def test_node_state_reads_as_the_api_spelling() -> None:
    node = node_in(N.DOWN)
    assert node.state == "down" and node.state is N.DOWN
    assert Node(id=new_id()).state is N.UNKNOWN
    node.status = {"State": "sleepy"}
    with pytest.raises(ValueError, match="unknown node state 'sleepy'"):
        _ = node.state


# -- a manager's Reachability ---------------------------------------------------------------------

EXPECTED_REACHABILITY_MOVES = {
    (R.UNKNOWN, R.REACHABLE), (R.UNKNOWN, R.UNREACHABLE),
    (R.REACHABLE, R.REACHABLE), (R.REACHABLE, R.UNREACHABLE),
    (R.UNREACHABLE, R.UNREACHABLE), (R.UNREACHABLE, R.REACHABLE),
}


def manager_in(reachability: Reachability) -> Node:
    node = node_in(N.READY)
    node.manager_status = {"RaftID": 7, "Addr": "10.0.0.1:2377", "Reachability": reachability.value}
    return node


def test_reachability_table() -> None:
    assert set(REACHABILITY_MOVES) == set(Reachability)
    assert {(a, b) for a, targets in REACHABILITY_MOVES.items() for b in targets} == EXPECTED_REACHABILITY_MOVES


@pytest.mark.parametrize(("current", "new"), list(itertools.product(Reachability, Reachability)))
def test_every_reachability_move_is_applied_or_refused_leaving_the_node_unchanged(
        current: Reachability, new: Reachability) -> None:
    for move in ("set_reachability", "set_manager_status"):
        node = manager_in(current)
        before = copy.deepcopy(node)

        def apply(node: Node = node, move: str = move) -> None:
            if move == "set_reachability":
                node.set_reachability(new)
            else:
                node.set_manager_status(8, "10.0.0.2:2377", new)

        if (current, new) in EXPECTED_REACHABILITY_MOVES:
            apply()
            assert node.reachability is new and node.manager_status is not None
            assert node.manager_status["Reachability"] == new.value
            assert node.manager_status["RaftID"] == (7 if move == "set_reachability" else 8)
        else:
            with pytest.raises(IllegalNodeTransition, match="reachability cannot move"):
                apply()
            assert node == before


def test_a_worker_has_no_reachability_to_move() -> None:
    worker = node_in(N.READY)
    assert worker.reachability is None
    with pytest.raises(ValueError, match="no manager status"):
        worker.set_reachability(R.REACHABLE)
    assert worker.manager_status is None
    worker.set_manager_status(3, "10.0.0.1:2377", R.REACHABLE)  # a new manager status is no move
    assert worker.manager_status == {"RaftID": 3, "Addr": "10.0.0.1:2377", "Reachability": "reachable"}


# -- the writers ----------------------------------------------------------------------------------


async def test_dispatcher_registers_from_any_state_and_refuses_an_illegal_down(caplog) -> None:
    store = Store()
    down, disconnected = make_node("down", state="down"), make_node("gone", state="disconnected")
    await store.update(lambda tx: [tx.create(down), tx.create(disconnected)])
    dispatcher = Dispatcher(store)

    def get(node: Node) -> Node:
        return store.view(lambda tx: tx.get("nodes", node.id))

    await dispatcher._register(down.id, {"Hostname": "down"}, "10.0.0.9")
    assert get(down).status == {"State": "ready", "Message": "", "Addr": "10.0.0.9"}
    version = get(down).version
    await dispatcher._register(down.id, {"Hostname": "down"}, "")  # nothing new: no write
    assert get(down).version == version

    await dispatcher._set_node_state(down.id, N.DOWN, "heartbeat failure")
    assert get(down).state is N.DOWN and get(down).status["Message"] == "heartbeat failure"
    version = get(down).version
    await dispatcher._set_node_state(down.id, N.DOWN, "heartbeat failure")  # already down: no write
    assert get(down).version == version

    # disconnected -> down is no move swarmkit makes: a bug, logged with its traceback, no write.
    before = get(disconnected)
    with caplog.at_level(logging.ERROR, logger="shoal.dispatcher"):
        await dispatcher._set_node_state(disconnected.id, N.DOWN, "heartbeat failure")
    after = get(disconnected)
    assert after.version == before.version and after.status == before.status
    assert any(r.exc_info and r.exc_info[0] is IllegalNodeTransition for r in caplog.records)


async def test_reachability_monitor_writes_through_the_table() -> None:
    store = Store()
    manager, worker = manager_in(R.UNKNOWN), node_in(N.READY)
    await store.update(lambda tx: [tx.create(manager), tx.create(worker)])
    monitor = ReachabilityMonitor(store, raft=None)  # type: ignore[arg-type]  # _write needs no Raft
    await monitor._write({manager.id: R.UNREACHABLE, worker.id: R.REACHABLE})
    assert store.view(lambda tx: tx.get("nodes", manager.id)).reachability is R.UNREACHABLE
    assert store.view(lambda tx: tx.get("nodes", worker.id)).manager_status is None  # workers are skipped
    await monitor._write({manager.id: R.REACHABLE})
    assert store.view(lambda tx: tx.get("nodes", manager.id)).reachability is R.REACHABLE
