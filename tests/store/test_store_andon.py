import pytest

from lmpref import store
from web_store_fixtures import record


@pytest.fixture
def runs(session):
    for name in ("a", "b"):
        store.enqueue(session, run=name, records=[record(0)])
    return session


def test_a_run_pull_stops_that_run_only(runs):
    session = runs
    ann, _ = store.create_labeler(session, name="ann")
    event = store.pull_andon(session, reason="samples are toxic", run="a", labeler=ann)
    assert store.must_stop(session, run="a") and not store.must_stop(session, run="b")
    assert [e.id for e in store.open_andon_events(session)] == [event.id]
    store.clear_andon(session, event_id=event.id, note="fixed the prompt")
    assert not store.must_stop(session, run="a")
    assert event.clear_note == "fixed the prompt" and event.cleared_at is not None


def test_a_global_pull_stops_every_run(runs):
    session = runs
    store.pull_andon(session, reason="stop everything")
    assert store.must_stop(session, run="a") and store.must_stop(session, run="b")


def test_andon_errors(runs):
    session = runs
    with pytest.raises(store.Invalid):
        store.pull_andon(session, reason="  ")
    with pytest.raises(store.Invalid):
        store.pull_andon(session, reason="x" * 2001)
    with pytest.raises(store.NotFound):
        store.pull_andon(session, reason="why", run="nope")
    event = store.pull_andon(session, reason="why")
    store.clear_andon(session, event_id=event.id)
    with pytest.raises(store.Conflict):
        store.clear_andon(session, event_id=event.id)
    with pytest.raises(store.NotFound):
        store.clear_andon(session, event_id=999)
    assert [e.id for e in store.recent_andon_events(session)] == [event.id]
