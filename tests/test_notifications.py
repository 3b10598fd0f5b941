"""The process's LISTEN connection (shared.notifications) against the stack's PostgreSQL.

Its main channel is always listened on; its follow channel only while someone subscribed,
so a process without subscribers does not read (and pay for) notices only a waiter needs.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pg8000.dbapi
import pytest

from dev.stack import LocalStack
from shared.db import Database, connect_kwargs_from_url
from shared.notifications import Listener
from tests.conftest import unique, wait_for


@pytest.fixture
def channels() -> tuple[str, str]:
    return unique("main").replace("-", "_"), unique("follow").replace("-", "_")


@pytest.fixture
def heard(
    stack: LocalStack, channels: tuple[str, str]
) -> Iterator[tuple[Listener, list[tuple[str, uuid.UUID]]]]:
    """A started listener on fresh channels, and every notice it dispatched (kind, key);
    stopped after the test, before the stack's PostgreSQL is."""
    kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
    dispatched: list[tuple[str, uuid.UUID]] = []
    main, follow = channels
    listener = Listener(
        lambda: pg8000.dbapi.connect(**kwargs),
        main,
        lambda kind, key: dispatched.append((kind, key)),
        follow_channel=follow,
    )
    listener.start()
    assert listener.listening.wait(20)
    yield listener, dispatched
    listener.stop()


def notify(db: Database, channel: str, kind: str, key: uuid.UUID) -> None:
    db.write("SELECT pg_notify(:channel, :payload)", channel=channel, payload=f"{kind} {key} 0")


def test_the_follow_channel_is_heard_only_while_someone_subscribed(
    db: Database,
    channels: tuple[str, str],
    heard: tuple[Listener, list[tuple[str, uuid.UUID]]],
) -> None:
    listener, dispatched = heard
    main, follow = channels
    key = uuid.uuid4()

    # Nobody subscribed: a follow notice is not read; a main one is.
    assert not listener.following.is_set()
    notify(db, follow, "p", key)
    notify(db, main, "s", key)
    wait_for(lambda: ("s", key) in dispatched)
    assert ("p", key) not in dispatched

    # A subscriber: the follow channel is listened on before subscribe returns.
    wake = listener.subscribe(key)
    assert listener.following.is_set()
    notify(db, follow, "p", key)
    assert wake.wait(20)
    assert ("p", key) in dispatched

    # The last subscriber gone: the next wake-up stops listening to it.
    listener.unsubscribe(key, wake)
    notify(db, main, "e", key)
    wait_for(lambda: ("e", key) in dispatched and not listener.following.is_set())
    dispatched.clear()
    notify(db, follow, "p", key)
    notify(db, main, "s", key)
    wait_for(lambda: ("s", key) in dispatched)
    assert ("p", key) not in dispatched


def test_many_subscribers_at_once_all_hear_the_follow_channel(
    db: Database,
    channels: tuple[str, str],
    heard: tuple[Listener, list[tuple[str, uuid.UUID]]],
) -> None:
    listener, _ = heard
    _, follow = channels
    keys = [uuid.uuid4() for _ in range(8)]
    wakes: dict[uuid.UUID, threading.Event] = {}

    def subscribe(key: uuid.UUID) -> None:
        wakes[key] = listener.subscribe(key)

    threads = [threading.Thread(target=subscribe, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in keys:
        notify(db, follow, "p", key)
    assert all(wakes[key].wait(20) for key in keys)


def test_a_stopped_listener_closes_its_connection_quietly_and_hears_nothing_more(
    stack: LocalStack,
    db: Database,
    channels: tuple[str, str],
    heard: tuple[Listener, list[tuple[str, uuid.UUID]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, witnessed = heard  # a live listener on the same channels, to know a notice went out
    kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
    name = unique("listener")
    dispatched: list[tuple[str, uuid.UUID]] = []
    main, follow = channels
    listener = Listener(
        lambda: pg8000.dbapi.connect(**kwargs, application_name=name),
        main,
        lambda kind, key: dispatched.append((kind, key)),
        follow_channel=follow,
        thread_name=name,
    )

    def sessions() -> int:
        row = db.fetch_one(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = :name", name=name
        )
        assert row is not None
        return int(row["n"])

    try:
        listener.start()
        assert listener.listening.wait(20)
        assert sessions() == 1
        woken = listener.subscribe(uuid.uuid4())
    finally:
        listener.stop()
    assert woken.is_set()  # its subscribers learn at once that it heard nothing more
    assert name not in {thread.name for thread in threading.enumerate()}
    assert not listener.listening.is_set()
    wait_for(lambda: sessions() == 0)
    listener.start()  # a stopped listener stays stopped
    assert name not in {thread.name for thread in threading.enumerate()}
    key = uuid.uuid4()
    notify(db, main, "s", key)
    wait_for(lambda: ("s", key) in witnessed)
    assert dispatched == []
    assert not [r for r in caplog.records if r.name == "raven.notifications"]
