"""`lmpref.io.read_json_object`: the one tolerant reader of a model's optional sidecar JSON."""

from lmpref.io import read_json_object


def test_read_json_object_gives_the_object_or_nothing(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"n_train": 175}', encoding="utf-8")
    assert read_json_object(good) == {"n_train": 175}
    assert read_json_object(tmp_path / "absent.json") == {}
    cases = {"list.json": b"[1, 2]", "broken.json": b"{not json", "latin1.json": b'{"a": "\xe9"}'}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        assert read_json_object(tmp_path / name) == {}, name
