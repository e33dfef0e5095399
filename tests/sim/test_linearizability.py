"""The checker itself, on histories whose verdict is known."""

from __future__ import annotations

import pytest

from tests.sim.linearizability import Op, check_history, check_register


def put(client: int, value: str, call: float, ret: float | None, key: str = "k") -> Op:
    return Op(client, key, "put", value, call, ret)


def get(client: int, value: str | None, call: float, ret: float, key: str = "k") -> Op:
    return Op(client, key, "get", value, call, ret)


def test_sequential_history() -> None:
    assert check_register([get(1, None, 0, 1), put(1, "a", 2, 3), get(1, "a", 4, 5), put(1, "b", 6, 7),
                           get(2, "b", 8, 9)])


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    assert not check_register([put(1, "a", 0, 1), put(1, "b", 2, 3), get(2, "a", 4, 5)])


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    assert not check_register([put(1, "a", 0, 1), get(2, "zzz", 2, 3)])


def test_concurrent_write_may_be_seen_or_not() -> None:
    # put(b) overlaps both reads: the first may miss it, the second may see it.
    assert check_register([put(1, "a", 0, 1), put(2, "b", 2, 10), get(3, "a", 3, 4), get(3, "b", 5, 6)])


def test_reads_cannot_go_back_in_time() -> None:
    # Once a read saw b, a later read (strictly after) must not see the older a again.
    assert not check_register([put(1, "a", 0, 1), put(2, "b", 2, 10), get(3, "b", 3, 4), get(3, "a", 5, 6)])


def test_concurrent_writes_order_must_be_consistent_for_all_readers() -> None:
    # Both writes finish before any read: all readers must agree on which one came last.
    writes = [put(1, "a", 0, 10), put(2, "b", 0, 10)]
    assert check_register([*writes, get(3, "a", 11, 12), get(4, "a", 13, 14)])
    assert check_register([*writes, get(3, "b", 11, 12), get(4, "b", 13, 14)])
    assert not check_register([*writes, get(3, "a", 11, 12), get(4, "b", 13, 14)])


def test_unknown_outcome_write_may_have_happened() -> None:
    # A timed-out put(b) explains a later read of b ...
    assert check_register([put(1, "a", 0, 1), put(2, "b", 2, None), get(3, "b", 5, 6)])
    # ... or may never have happened at all.
    assert check_register([put(1, "a", 0, 1), put(2, "b", 2, None), get(3, "a", 5, 6)])


def test_unknown_outcome_write_cannot_take_effect_before_its_call() -> None:
    assert not check_register([put(1, "a", 0, 1), get(3, "b", 2, 3), put(2, "b", 5, None)])


def test_unknown_write_once_seen_cannot_be_unseen() -> None:
    assert not check_register([put(1, "a", 0, 1), put(2, "b", 2, None), get(3, "b", 5, 6), get(3, "a", 7, 8)])


def test_history_is_checked_per_key() -> None:
    ok = [put(1, "a", 0, 1, key="x"), put(2, "b", 0, 1, key="y"), get(3, "a", 2, 3, key="x"),
          get(3, "b", 4, 5, key="y")]
    assert check_history(ok).ok
    bad = [*ok, get(4, "a", 6, 7, key="y")]
    result = check_history(bad)
    assert not result.ok and result.key == "y"
    assert "not linearizable" in result.describe()


def test_bad_operations_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        Op(1, "k", "get", "a", 0, None)
    with pytest.raises(ValueError, match="before it is called"):
        Op(1, "k", "put", "a", 5, 1)


def test_many_concurrent_operations_stay_tractable() -> None:
    # 8 clients, 200 operations, heavy overlap; values unique; a valid serial schedule exists.
    ops = []
    current = None
    for n in range(200):
        call, ret = n, n + 8          # every op overlaps the next seven
        if n % 3:
            ops.append(get(n % 8, current, call, ret))
        else:
            current = f"v{n}"
            ops.append(put(n % 8, current, call, ret))
    assert check_register(ops)
