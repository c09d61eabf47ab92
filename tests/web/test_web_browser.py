"""Real Chromium (Debian's, driven by Playwright) against `lmpref serve` on loopback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmpref
from lmpref import store
from web_store_fixtures import CHROMIUM, _free_port, record, skip_or_fail, wait_for_port

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVE = (
    "import argparse, sys\n"
    "from lmpref.cli.web import register\n"
    "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
    "args = p.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`lmpref serve` in a subprocess on a store with an admin, a labeler and a few tasks."""
    db = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'labels.db'}"
    factory = store.open_store(db)
    with store.transaction(factory) as session:
        tokens = {
            name: store.create_labeler(session, name=name, role=role)[1]
            for name, role in (("boss", "admin"), ("ann", "labeler"))
        }
        records = [record(i) for i in range(8)]
        # A sample that copies the query, for the highlighting check.
        records[0]["responses"][1] = "He wrote that the quick brown fox jumps over it."
        store.enqueue(session, run="demo", records=records)
    port = _free_port()
    src = str(Path(next(iter(lmpref.__path__))).parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--min-seconds",
            "0",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        wait_for_port(port, timeout=180)  # a loaded machine can take a minute to import the app
        yield f"http://127.0.0.1:{port}", tokens, factory
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _login(browser, base, token):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(base + "/compare")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    return page


def _labels(factory):
    with store.transaction(factory) as session:
        return list(store.export_records(session, run="demo", include_fast=True))


def test_label_with_the_keyboard_see_copying_and_pull_the_cord(live, browser, tmp_path):
    base, tokens, factory = live
    page = _login(browser, base, tokens["ann"])
    page.wait_for_url("**/compare")

    # Copy highlighting: off by default, `c` turns it on; the copied share is shown.
    mark = page.locator("mark.copied").first
    assert mark.inner_text() == "the quick brown fox jumps over"
    assert mark.evaluate("m => getComputedStyle(m).backgroundColor") == "rgba(0, 0, 0, 0)"
    page.keyboard.press("c")
    assert mark.evaluate("m => getComputedStyle(m).backgroundColor") == "rgb(255, 216, 107)"
    assert page.locator(".copied-pct", has_text="60% copied").count() == 1
    # Both sides: the context marks where the copy came from, and names the sample.
    source = page.locator("#context mark.source").first
    assert source.inner_text() == "the quick brown fox jumps over"
    copier = page.locator(".sample", has_text="He wrote that").get_attribute("id").split("-")[1]
    assert source.get_attribute("data-samples") == copier
    assert source.evaluate("m => getComputedStyle(m).backgroundColor") == "rgb(255, 216, 107)"
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(shots / "compare.png"), full_page=True)

    # Key 2 chooses the sample shown second.
    second = page.locator("#sample-2 .sample-text").inner_text()
    with page.expect_navigation():
        page.keyboard.press("2")
    assert "Saved." in page.content()
    (label,) = _labels(factory)
    assert label["responses"][label["best"]] == second

    with page.expect_navigation():
        page.keyboard.press("t")
    assert _labels(factory)[-1]["tie"] is True
    with page.expect_navigation():
        page.keyboard.press("s")
    assert "Skipped." in page.content()
    page.keyboard.press("f")
    assert page.evaluate("document.activeElement.id") == "flag"
    page.keyboard.type("the query is garbled")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert len(_labels(factory)) == 2  # a bare flag is not a training label

    # A double click stores one label and shows no error.
    before = len(_labels(factory))
    with page.expect_navigation():
        page.locator("#sample-1 button.choose").dblclick()
    assert "Error" not in page.title()
    assert len(_labels(factory)) == before + 1

    # The Andon cord, from the labeler's page.
    page.click("#andon summary")
    page.fill("#andon-reason", "samples praise violence")
    with page.expect_navigation():
        page.click("#andon-submit")
    assert "training will stop" in page.content()
    with store.transaction(factory) as session:
        assert store.must_stop(session, run="demo")

    # The admin sees it and clears it.
    admin = _login(browser, base, tokens["boss"])
    admin.wait_for_url("**/admin")
    assert admin.locator("#training-stopped").is_visible()
    assert "samples praise violence" in admin.locator("#andon-status").inner_text()
    assert admin.locator("#quality tbody tr", has_text="ann").count() == 1
    with admin.expect_navigation():
        admin.click("button.clear-andon")
    assert admin.locator("#training-running").is_visible()
    with store.transaction(factory) as session:
        assert not store.must_stop(session, run="demo")


def test_labelers_cannot_open_the_admin_page(live, browser):
    base, tokens, _ = live
    page = _login(browser, base, tokens["ann"])
    page.wait_for_url("**/compare")
    response = page.goto(base + "/admin")
    assert response.status == 403


def test_rate_accuracy_with_the_keyboard(live, browser):
    base, tokens, factory = live
    doc = "The council voted on Monday to close the old bridge for repairs."
    with store.transaction(factory) as session:
        store.enqueue(
            session,
            run="rate",
            records=[
                record(
                    i,
                    k=1,
                    kind="accuracy",
                    doc_id=f"doc{i}",
                    policy="ppo",
                    query=doc,
                    responses=[f"The council voted on Monday to close bridge {i}."],
                )
                for i in range(3)
            ],
        )
    page = _login(browser, base, tokens["ann"])
    page.wait_for_url("**/compare")
    page.goto(base + "/compare?run=rate")
    # The document and the one summary, with its copied words marked; no "best" buttons.
    assert page.locator("#context").inner_text() == doc
    assert page.locator(".sample").count() == 1 and page.locator("button.choose").count() == 0
    assert page.locator("mark.copied").first.inner_text() == "The council voted on Monday to close"
    for key in ("a", "i", "u"):
        with page.expect_navigation():
            page.keyboard.press(key)
        assert "Saved." in page.content()
    with store.transaction(factory) as session:
        rows = list(store.export_records(session, run="rate", fmt="ratings", include_fast=True))
    assert [(r["doc_id"], r["rating"], r["labeler"]) for r in rows] == [
        ("doc0", "accurate", "ann"),
        ("doc1", "inaccurate", "ann"),
        ("doc2", "unsure", "ann"),
    ]


def test_api_docs_render_offline_under_the_csp(live, browser, tmp_path):
    """/docs loads Swagger UI from this server only (the browser may reach nothing else) and
    renders the operations; /redoc leads there. Any CSP violation would leave the page blank."""
    pytest.importorskip("swagger_ui", reason="swagger-ui-py is not installed")
    base, tokens, factory = live
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(base)
            else (outside.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    violations = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(base + "/redoc")
    assert page.url == base + "/docs"
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/tasks/next" in " ".join(paths) and len(paths) >= 17
    assert violations == [] and outside == []
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(shots / "docs.png"))
    context.close()


def test_keyboard_path_through_notes_undo_and_switching_shortcuts_off(live, browser, tmp_path):
    base, tokens, factory = live
    with store.transaction(factory) as session:
        store.enqueue(session, run="keys", records=[record(50 + i) for i in range(3)])
    page = _login(browser, base, tokens["ann"])
    page.wait_for_url("**/compare")
    page.goto(base + "/compare?run=keys")
    assert page.locator("h1").count() == 1
    assert page.locator("#sample-2 button.choose").get_attribute("aria-keyshortcuts") == "2"
    assert page.locator("#tie-button").get_attribute("aria-keyshortcuts") == "t"

    # n opens the critique field, Esc leaves it with the text kept, and keys work again.
    page.keyboard.press("n")
    assert page.evaluate("document.activeElement.id") == "critique"
    page.keyboard.type("sample two 1s best")  # the digits go into the field, not to the form
    assert page.url.endswith("/compare?run=keys")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.tagName") == "BODY"
    with page.expect_navigation():
        page.keyboard.press("2")
    assert "Saved." in page.content()
    with store.transaction(factory) as session:
        (row,) = store.export_records(session, run="keys", include_fast=True)
    assert row["critique"] == "sample two 1s best"
    with store.transaction(factory) as session:
        ann = store.get_labeler(session, name="ann")
        assert page.locator("#mine-today").inner_text() == str(store.my_progress(session, labeler=ann).today)

    # Undo the label just given: the task comes back.
    with page.expect_navigation():
        page.click("#undo-button")
    assert "Label undone" in page.content()
    with store.transaction(factory) as session:
        assert list(store.export_records(session, run="keys", include_fast=True)) == []

    # Shortcuts off: keys do nothing, aria-keyshortcuts is withdrawn, and it stays off on reload.
    page.click("#keys-toggle")
    page.keyboard.press("2")
    page.wait_for_timeout(300)
    assert page.locator("#sample-2 button.choose").get_attribute("aria-keyshortcuts") is None
    page.reload()
    assert not page.locator("#keys-toggle").is_checked()
    page.keyboard.press("t")
    page.wait_for_timeout(300)
    with store.transaction(factory) as session:
        assert list(store.export_records(session, run="keys", include_fast=True)) == []
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(shots / "compare-shortcuts-off.png"), full_page=True)
    page.goto(base + "/history")
    assert page.locator("h1", has_text="My labels").count() == 1
    page.screenshot(path=str(shots / "history.png"), full_page=True)


def test_admin_writes_guidelines_and_the_labeler_sees_them(live, browser, tmp_path):
    base, tokens, factory = live
    with store.transaction(factory) as session:
        store.enqueue(session, run="guided", records=[record(80 + i) for i in range(2)])
    admin = _login(browser, base, tokens["boss"])
    admin.wait_for_url("**/admin")
    admin.goto(base + "/admin?run=guided")
    admin.fill("#guidelines-text", "Pick the most factual continuation.\nTies only when truly equal.")
    with admin.expect_navigation():
        admin.click("#guidelines-save")
    assert "Guidelines saved." in admin.content()
    page = _login(browser, base, tokens["ann"])
    page.wait_for_url("**/compare")
    page.goto(base + "/compare?run=guided")
    panel = page.locator("#guidelines")
    assert panel.is_visible() and "Ties only when truly equal." in panel.inner_text()
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(shots / "compare-guidelines.png"), full_page=True)


def test_admin_adds_an_account_and_the_token_works(live, browser, tmp_path):
    base, tokens, factory = live
    admin = _login(browser, base, tokens["boss"])
    admin.wait_for_url("**/admin")
    admin.fill("#new-name", "carol")
    with admin.expect_navigation():
        admin.click("#add-labeler-button")
    token = admin.locator("#new-token").inner_text()
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    admin.goto(base + "/admin#accounts")
    assert admin.locator("#account-carol").is_visible()
    admin.screenshot(path=str(shots / "admin.png"), full_page=True)
    page = _login(browser, base, token)
    page.wait_for_url("**/compare")
    assert "carol" in page.locator(".who").inner_text()


def test_admin_reviews_a_disputed_task(live, browser, tmp_path):
    base, tokens, factory = live
    with store.transaction(factory) as session:
        store.enqueue(session, run="review", records=[record(90)], redundancy=2)
        for name, best in (("ann", 0), ("boss", 1)):
            who = store.get_labeler(session, name=name)
            served = store.next_task(session, labeler=who, run="review")
            store.save_label(
                session,
                labeler=who,
                task_id=served.task.id,
                best=best,
                critique="too vague" if name == "boss" else None,
            )
        task_id = served.task.id
    admin = _login(browser, base, tokens["boss"])
    admin.wait_for_url("**/admin")
    admin.goto(base + "/admin?run=review")
    assert "too vague" in admin.locator("#critiques-table").inner_text()
    with admin.expect_navigation():
        admin.locator("#disputed-table a", has_text=str(task_id)).click()
    assert admin.locator("#disagreement").is_visible()
    assert admin.locator("#answers tbody tr").count() == 2
    shots = Path(os.environ.get("LMPREF_SCREENSHOT_DIR", tmp_path))
    admin.screenshot(path=str(shots / "admin-task.png"), full_page=True)


def test_login_csrf_from_another_port_is_refused(live, browser, tmp_path):
    """The attack of issue 16: a page on another port of the same host plants the login cookie
    (cookies do not isolate ports) and posts the attacker's token; the victim must not end up
    logged in as the attacker."""
    import functools
    import http.server
    import threading

    base, tokens, factory = live
    host_port = _free_port()
    (tmp_path / "attack.html").write_text(
        f'<form id="f" method="post" action="{base}/login">'
        f'<input name="token" value="{tokens["boss"]}"><input name="csrf" value="planted"></form>'
        '<script>document.getElementById("f").submit()</script>'
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", host_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = browser.new_context()
        # What the attacker's server would do with Set-Cookie: the double-submit cookie, planted.
        context.add_cookies([{"name": "lmpref_login", "value": "planted", "url": base}])
        page = context.new_page()
        with page.expect_response(lambda r: r.url == base + "/login" and r.request.method == "POST") as posted:
            page.goto(f"http://127.0.0.1:{host_port}/attack.html")
        assert posted.value.status == 403
        assert "lmpref_session" not in [c["name"] for c in context.cookies()]
        context.close()
    finally:
        server.shutdown()
