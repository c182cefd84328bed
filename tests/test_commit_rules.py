"""Commit ordering: which pending batches a STATE covers, which states wait for the end of the
run, what a reset forgets. Pure functions (workers/localsync/commits.py), tested without a
connector, a staging store or a destination."""

from __future__ import annotations

from typing import Any

from workers.connectors.protocol import is_stream_state_key, state_key, stream_state_key
from workers.localsync.commits import (
    covered_streams,
    covers_every_stream,
    forgotten_by_reset,
    held_until_the_end,
    plan_commit,
)

# Three streams of a run, by stream id: their own state keys.
KEYS = {
    "users": "stream::users",
    "shop.orders": "stream:shop:orders",
    "products": "stream::products",
}


def stream_state(name: str, cursor: str, namespace: str | None = None) -> dict[str, Any]:
    descriptor = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "type": "STREAM",
        "stream": {"stream_descriptor": descriptor, "stream_state": {"updated_at": cursor}},
    }


GLOBAL = {"type": "GLOBAL", "global": {"shared_state": {"lsn": 7}, "stream_states": []}}
LEGACY = {"type": "LEGACY", "data": {"users": {"updated_at": "x"}}}


def pending(*states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """States as the engine keeps them between commits: by key, the latest one winning."""
    return {state_key(s): s for s in states}


# -- state keys -------------------------------------------------------------------------------


def test_state_keys_name_a_stream_or_the_global_or_legacy_state() -> None:
    assert state_key(stream_state("users", "a")) == "stream::users"
    assert state_key(stream_state("orders", "a", "shop")) == "stream:shop:orders"
    assert stream_state_key("orders", "shop") == "stream:shop:orders"
    assert stream_state_key("users", None) == state_key(stream_state("users", "a"))
    assert state_key(GLOBAL) == "global"
    assert state_key(LEGACY) == "legacy"
    assert state_key({"data": {}}) == "legacy"  # a bare legacy state has no type
    assert is_stream_state_key("stream::users")
    assert not is_stream_state_key("global") and not is_stream_state_key("legacy")


# -- which streams a commit loads -------------------------------------------------------------


def test_a_stream_state_covers_its_own_stream_only() -> None:
    assert covered_streams(KEYS, {"stream::users"}, final=False) == ["users"]
    assert covered_streams(KEYS, {"stream:shop:orders", "stream::users"}, final=False) == [
        "users",
        "shop.orders",
    ]


def test_a_global_or_legacy_state_covers_every_stream() -> None:
    assert covers_every_stream(["stream::users", "global"])
    assert covers_every_stream(["legacy"])
    assert not covers_every_stream(["stream::users", "stream::products"])
    assert not covers_every_stream([])
    for key in ("global", "legacy"):
        assert covered_streams(KEYS, {key}, final=False) == list(KEYS)


def test_the_final_commit_covers_every_stream_even_without_a_state() -> None:
    assert covered_streams(KEYS, set(), final=True) == list(KEYS)
    assert covered_streams(KEYS, set(), final=False) == []


def test_a_state_of_a_stream_outside_the_run_covers_no_stream() -> None:
    assert covered_streams(KEYS, {"stream::other"}, final=False) == []


# -- which states wait for the end ------------------------------------------------------------


def test_a_replaced_streams_state_waits_for_its_table() -> None:
    replaced = {"products"}
    assert held_until_the_end("stream::products", KEYS, replaced)
    assert not held_until_the_end("stream::users", KEYS, replaced)
    # A GLOBAL state covers streams that append too: it is committed as it comes.
    assert not held_until_the_end("global", KEYS, replaced)


def test_global_and_legacy_state_wait_only_when_every_stream_is_replaced() -> None:
    every = set(KEYS)
    assert held_until_the_end("global", KEYS, every)
    assert held_until_the_end("legacy", KEYS, every)
    assert not held_until_the_end("global", KEYS, set())


# -- what a reset forgets ---------------------------------------------------------------------


def test_a_reset_forgets_its_streams_states_that_it_did_not_emit_again() -> None:
    before = ["stream::users", "stream:shop:orders", "stream::elsewhere"]
    emitted = {"stream::users"}  # replaced by the new one, not deleted
    assert forgotten_by_reset(before, emitted, KEYS, ran_all=False) == ["stream:shop:orders"]


def test_a_reset_of_some_streams_keeps_global_and_legacy_state() -> None:
    before = ["global", "legacy", "stream::products"]
    assert forgotten_by_reset(before, set(), KEYS, ran_all=False) == ["stream::products"]
    assert forgotten_by_reset(before, set(), KEYS, ran_all=True) == [
        "global",
        "legacy",
        "stream::products",
    ]
    assert forgotten_by_reset(before, {"global"}, KEYS, ran_all=True) == [
        "legacy",
        "stream::products",
    ]


# -- one commit, all rules together -----------------------------------------------------------


def test_an_intermediate_commit_loads_the_covered_streams_with_their_states() -> None:
    users = stream_state("users", "2024-01-02")
    plan = plan_commit(pending(users), {}, KEYS, set(), final=False)
    assert plan.streams == ["users"]
    assert plan.states == [users]
    assert plan.held == {} and plan.forget == [] and plan.replace == []


def test_a_replaced_streams_state_is_held_then_committed_last_by_the_final_commit() -> None:
    products_1 = stream_state("products", "1")
    products_2 = stream_state("products", "2")
    users = stream_state("users", "u")
    first = plan_commit(pending(products_1, users), {}, KEYS, {"products"}, final=False)
    # The batches are loaded (into the run-scoped table); the state waits for the swap.
    assert first.streams == ["users", "products"]
    assert first.states == [users]
    assert first.held == {"stream::products": products_1}
    assert first.replace == []

    second = plan_commit(pending(products_2), first.held, KEYS, {"products"}, final=False)
    assert second.states == [] and second.held == {"stream::products": products_2}

    orders = stream_state("orders", "o", "shop")
    last = plan_commit(pending(orders), second.held, KEYS, {"products"}, final=True)
    assert last.streams == list(KEYS)
    assert last.states == [orders, products_2]  # pending ones first, then the held ones
    assert last.replace == ["products"]
    assert last.forget == []  # not a reset


def test_a_reset_of_every_stream_holds_the_global_state_and_forgets_the_rest() -> None:
    before = [GLOBAL, stream_state("users", "old"), stream_state("products", "old")]
    new_global = {"type": "GLOBAL", "global": {"shared_state": {"lsn": 9}, "stream_states": []}}
    every = set(KEYS)
    middle = plan_commit(pending(new_global), {}, KEYS, every, final=False)
    assert middle.streams == list(KEYS) and middle.states == []
    assert middle.held == {"global": new_global}
    users = stream_state("users", "new")
    last = plan_commit(
        pending(users),
        middle.held,
        KEYS,
        every,
        final=True,
        reset=True,
        before=before,
        ran_all=True,
    )
    # Every stream is replaced: every state was held, and is committed in the order held.
    assert last.held == {"global": new_global, "stream::users": users}
    assert last.states == [new_global, users]
    assert last.forget == ["stream::products"]  # users and global were emitted again
    assert last.replace == list(KEYS)


def test_a_reset_of_some_streams_forgets_only_their_state() -> None:
    keys = {"users": KEYS["users"]}  # the run syncs users only
    before = [GLOBAL, stream_state("users", "old"), stream_state("products", "old")]
    last = plan_commit({}, {}, keys, {"users"}, final=True, reset=True, before=before)
    assert last.forget == ["stream::users"]
    assert last.states == [] and last.replace == ["users"]


def test_only_the_final_commit_of_a_reset_forgets() -> None:
    before = [stream_state("users", "old")]
    plan = plan_commit({}, {}, KEYS, set(KEYS), final=False, reset=True, before=before)
    assert plan.forget == [] and plan.streams == []


def test_planning_a_commit_changes_none_of_its_inputs() -> None:
    products = stream_state("products", "1")
    states = pending(products, GLOBAL)
    held = {"stream::users": stream_state("users", "u")}
    replaced = {"users", "products"}
    snapshot = (dict(states), dict(held), dict(KEYS), set(replaced))
    plan_commit(states, held, KEYS, replaced, final=True, reset=True, before=[GLOBAL])
    assert (states, held, KEYS, replaced) == snapshot
