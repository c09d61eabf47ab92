"""The admin's review: critiques and corrections per run (listed and downloadable), tasks people
disagree on, and one task's every answer with the ones against the majority marked."""

import json
import re

from web_helpers import bearer, enqueue, login

from lmpref import store


def _answer(client, token, **body):
    h = bearer(token)
    task = client.get("/api/tasks/next", headers=h).json()
    order = {s["text"]: s["position"] for s in task["samples"]}
    if "text" in body:  # choose by text, so answers compare across shuffled orders
        body = {"best": order[body.pop("text")], **body}
    assert client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json=body).status_code == 201
    return task["task_id"]


def _three_answers(app, client, tokens):
    with store.transaction(app.state.sessions) as session:
        tokens["cat"] = store.create_labeler(session, name="cat")[1]
    enqueue(app, redundancy=3)
    chosen = "Response 0 to query 0."
    task_id = _answer(client, tokens["ann"], text=chosen, critique="0 is the most fluent")
    assert _answer(client, tokens["bob"], text=chosen) == task_id
    assert _answer(client, tokens["cat"], text="Response 3 to query 0.", correction="Response 0, shorter.") == task_id
    return task_id


def test_disagreement_is_listed_and_the_task_view_marks_the_minority(app, client, tokens):
    task_id = _three_answers(app, client, tokens)
    login(client, tokens["boss"])
    admin = client.get("/admin?run=r").text
    assert re.search(rf'<a href="/admin/tasks/{task_id}">{task_id}</a></td><td>3</td><td>2</td>', admin)
    page = client.get(f"/admin/tasks/{task_id}").text
    assert 'id="disagreement"' in page and "majority" in page
    rows = re.findall(r'<tr class="([^"]*)">\s*<td>(\w+)</td>', page)
    assert {name: cls.strip() for cls, name in rows} == {"ann": "", "bob": "", "cat": "minority"}
    assert client.get("/admin/tasks/9999").status_code == 404


def test_critiques_and_corrections_listed_and_exported_per_run(app, client, tokens):
    task_id = _three_answers(app, client, tokens)
    login(client, tokens["boss"])
    admin = client.get("/admin?run=r").text
    table = admin.split('id="critiques-table"')[1].split("</table>")[0]
    assert "0 is the most fluent" in table and "Response 0, shorter." in table and "bob" not in table
    r = client.get("/admin/export?run=r&format=critiques")
    assert r.status_code == 200 and 'filename="r-critiques.jsonl"' in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["labeler"], x["task_id"]) for x in rows] == [("ann", task_id), ("cat", task_id)]
    assert rows[0]["answer"] == "Response 0 to query 0." and rows[1]["correction"] == "Response 0, shorter."
    # The same rows from the API, and every format downloads.
    api = client.get("/api/runs/r/labels?format=critiques", headers=bearer(tokens["boss"])).json()
    assert api == rows
    for fmt in store.FORMATS:
        assert client.get(f"/admin/export?run=r&format={fmt}").status_code == 200
    assert client.get("/admin/export?run=r&format=csv").status_code == 422
    assert client.get("/admin/export?run=nope").status_code == 404


def test_labelers_cannot_review(app, client, tokens):
    task_id = _three_answers(app, client, tokens)
    login(client, tokens["ann"])
    assert client.get(f"/admin/tasks/{task_id}").status_code == 403
    assert client.get("/admin/export?run=r").status_code == 403
