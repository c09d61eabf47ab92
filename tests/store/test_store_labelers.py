import pytest
from sqlalchemy import select

from lmpref import store
from lmpref.store.labelers import hash_token
from lmpref.store.models import Labeler


def test_token_is_random_and_only_its_hash_is_stored(session):
    ann, token = store.create_labeler(session, name="ann")
    _, other = store.create_labeler(session, name="bob")
    assert token != other and len(token) >= 40
    stored = session.scalars(select(Labeler.token_hash)).all()
    assert token not in stored and hash_token(token) in stored
    assert store.authenticate(session, token=token) is ann
    assert store.authenticate(session, token=token + "x") is None
    assert store.authenticate(session, token="") is None


def test_rotate_and_disable_stop_old_tokens(session):
    _, token = store.create_labeler(session, name="ann", role="admin")
    new = store.rotate_token(session, name="ann")
    assert store.authenticate(session, token=token) is None
    assert store.authenticate(session, token=new).role == "admin"
    store.set_active(session, name="ann", active=False)
    assert store.authenticate(session, token=new) is None


@pytest.mark.parametrize(
    ("name", "role", "error"),
    [
        ("", "labeler", store.Invalid),
        ("has space", "labeler", store.Invalid),
        ("x" * 65, "labeler", store.Invalid),
        ("ann", "root", store.Invalid),
    ],
)
def test_bad_labelers_are_refused(session, name, role, error):
    with pytest.raises(error):
        store.create_labeler(session, name=name, role=role)


def test_names_are_unique(session):
    store.create_labeler(session, name="ann")
    with pytest.raises(store.Conflict):
        store.create_labeler(session, name="ann")


def test_server_secret_is_stable(session):
    assert store.server_secret(session) == store.server_secret(session)
