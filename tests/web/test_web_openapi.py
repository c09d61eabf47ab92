"""The OpenAPI document lists every status the server can answer, and OPTIONS names every
method a path serves."""

import pytest


def test_every_operation_documents_400_413_and_422(client):
    paths = client.get("/openapi.json").json()["paths"]
    operations = [(path, method, op) for path, item in paths.items() for method, op in item.items()]
    assert len(operations) >= 17
    for path, method, op in operations:
        assert {"400", "401", "413", "422"} <= set(op["responses"]), (method, path)


def test_a_body_over_the_limit_is_a_documented_413(client, tokens):
    r = client.post("/api/andon", content=b"x" * 2_000_001, headers={"Authorization": f"Bearer {tokens['ann']}"})
    assert r.status_code == 413
    assert "413" in client.get("/openapi.json").json()["paths"]["/api/andon"]["post"]["responses"]


@pytest.mark.parametrize(("path", "allow"), [
    ("/api/andon", "GET, POST"),
    ("/api/labelers", "GET, POST"),
    ("/api/me", "GET"),
    ("/api/tasks/1/label", "POST"),
])
def test_options_names_every_method_of_a_path(client, path, allow):
    r = client.options(path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert client.request("DELETE", path).headers["allow"] == allow
