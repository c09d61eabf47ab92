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


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/andon", "GET, POST"),
        ("/api/labelers", "GET, POST"),
        ("/api/me", "GET"),
        ("/api/tasks/1/label", "POST"),
    ],
)
def test_options_names_every_method_of_a_path(client, path, allow):
    r = client.options(path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert client.request("DELETE", path).headers["allow"] == allow


def test_docs_page_has_no_inline_script_and_its_own_csp(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "cdn" not in r.text.lower()
    assert "<script>" not in r.text  # only <script src=...> from this server
    assert "'unsafe-inline'" in r.headers["content-security-policy"].split("style-src")[1].split(";")[0]
    assert "script-src" not in r.headers["content-security-policy"]  # scripts stay 'self' only
    assert client.get("/login").headers["content-security-policy"].startswith("default-src 'self'; frame-ancestors")
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "/docs"
