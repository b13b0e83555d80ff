"""The web UI at /ui against a running server holding the demo's kind of data: its JSON routes,
and every page opened in headless Chromium (Selenium), its content checked in the DOM, a
promote and a roll back clicked, confirmed, and the server seen to follow. Screenshots are
kept under build/ui-artifacts (or $LOOPSERVE_UI_ARTIFACTS); the run prints where."""

import os
import time
from pathlib import Path

import msgspec
import pytest

from conftest import RunningServer
from helpers_ui import TOKEN, build_store, drive, headless_chromium, server_config
from loopserve.server.main import build_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARTIFACTS = Path(os.environ.get("LOOPSERVE_UI_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "ui-artifacts"))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("ui")
    ids = build_store(work / "store", work)
    server = RunningServer(build_app(server_config(work / "store")))
    try:
        assert drive(server) == 0
        yield server, ids
    finally:
        server.stop()


def get(server, path, headers=None):
    status, _, body = server.request("GET", path, headers=headers)
    return status, msgspec.json.decode(body) if body else None


def wait_for(predicate, timeout=60.0, what="condition"):  # generous: Chromium on a loaded machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_json_routes_answer_what_the_pages_read(demo_server):
    server, ids = demo_server
    status, models = get(server, "/ui/api/models")
    fraud = models["models"][0]
    assert status == 200 and fraud["follows_registry"] and [v["version"] for v in fraud["versions"]] == [1, 2]
    assert {v["version"]: round(v["weight"], 2) for v in fraud["versions"]} == {1: 0.7, 2: 0.3}
    assert sum(v["requests"] for v in fraud["versions"]) == 300 and fraud["versions"][0]["p99_ms"] > 0

    # Drift data: the histogram needs the management token, as the drift report.
    assert get(server, "/ui/api/models/fraud/histogram?feature=amount&version=1")[0] == 401
    status, hist = get(server, "/ui/api/models/fraud/histogram?feature=amount&version=1", AUTH)
    assert status == 200 and len(hist["bins"]) == len(hist["reference"]) == len(hist["current"])
    assert abs(sum(hist["reference"]) - 1) < 1e-9 and hist["window"]["rows"] > 0

    status, registry = get(server, "/ui/api/registry")
    versions = registry["models"][0]["versions"]
    assert [v["parent_version"] for v in versions] == [None, 1] and versions[1]["run_id"] == ids["runs"][1]
    assert versions[1]["data_snapshot"] and [e["alias"] for e in registry["models"][0]["alias_history"]] == [
        "production", "canary"]

    status, runs = get(server, "/ui/api/runs")
    assert sorted(r["id"] for r in runs["runs"]) == sorted(ids["runs"])
    status, run = get(server, f"/ui/api/runs/{ids['runs'][1]}")
    assert status == 200 and len(run["curves"]["loss"]) == 6 and run["params"]["lr"] == 0.001

    status, pipeline = get(server, "/ui/api/pipeline")
    (record,) = pipeline["runs"]
    assert record["id"] == ids["pipeline_run"] and [s["step"] for s in record["steps"]][-1] == "compare"
    assert record["trigger"]["reasons"][0].startswith("drift in the last 2 windows")


def test_bad_requests_get_clear_refusals(demo_server):
    server, _ = demo_server
    cases = [("GET", "/ui/api/runs?limit=lots", 400, "limit"), ("GET", "/ui/api/runs/ffffffff", 404, "no run"),
             ("GET", "/ui/api/models/fraud/histogram", 400, "feature"),
             ("GET", "/ui/api/models/fraud/histogram?feature=nope", 400, "monitors"),
             ("GET", "/ui/api/models/nope/histogram?feature=amount", 404, "nope"),
             ("POST", "/ui/api/models/fraud/promote", 401, "Bearer")]
    for method, path, expected, says in cases:
        headers = AUTH if "histogram" in path else None
        status, _, body = server.request(method, path, b'{"version": 2}', headers)
        assert status == expected and says in msgspec.json.decode(body)["error"], (path, status, body)
    status, _, body = server.request("POST", "/ui/api/models/fraud/promote", b'{"version": "two"}', AUTH)
    assert status == 400 and "expected" in msgspec.json.decode(body)["error"]
    status, headers, _ = server.request("GET", "/ui")
    assert status == 308 and headers["location"] == "/ui/"
    status, _, page = server.request("GET", "/ui/")
    assert status == 200 and b"vendor/uplot/uPlot.iife.min.js" in page and b"https://" not in page
    status, _, script = server.request("GET", "/ui/vendor/uplot/uPlot.iife.min.js")
    assert status == 200 and len(script) > 40_000


# -- in the browser -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(request):
    session = headless_chromium()
    if isinstance(session, str):
        pytest.skip(session)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield session
    finally:
        session.quit()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"UI screenshots: {ARTIFACTS}")


def open_page(browser, server, page):
    browser.get(f"http://{server.url}/ui/#{page}")
    wait_for(lambda: browser.execute_script(
        f"return document.body.dataset.page === '{page}' && !!document.body.dataset.updated"), what=f"page {page}")


def text(browser, css):
    # Read in one script: the pages re-render as they poll, so a held element may go stale.
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText).join('\\n')", css)


def shot(browser, name):
    # The whole page, not only the window: make the window as tall as the document first.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, height + 40))
    time.sleep(0.2)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    browser.set_window_size(1400, 1000)


def test_every_page_shows_the_servers_data(demo_server, browser):
    server, ids = demo_server
    open_page(browser, server, "models")
    rows = text(browser, "[data-model=fraud] tbody tr")
    assert "v1" in rows and "70.0%" in rows and "30.0%" in rows
    # requests/s needs two reads of the counters: the page polls every 2 s.
    wait_for(lambda: "…" not in text(browser, "[data-model=fraud] tbody tr"), what="requests/s")
    assert browser.find_elements("css selector", "[data-chart=rps] canvas")
    shot(browser, "models")

    # The drift report needs the management token on a server that sets one: the page reads it
    # from the tab's token box.
    browser.execute_script("document.getElementById('token').value = arguments[0]", TOKEN)
    open_page(browser, server, "drift")
    wait_for(lambda: browser.find_elements("css selector", "[data-chart=histogram] canvas"), what="histogram")
    assert browser.find_element("css selector", "[data-chart=drift]").get_attribute("data-series") == "8"
    verdicts = text(browser, "[data-table=verdicts]")
    assert "drift" in verdicts and "amount" in verdicts and "ks" in verdicts
    assert browser.find_element("css selector", "[data-kpi=alert]").text == "drift"
    shot(browser, "drift")

    open_page(browser, server, "accuracy")
    accuracy = text(browser, "[data-table=accuracy] tbody")
    assert "v1" in accuracy and "v2" in accuracy and "%" in accuracy
    assert browser.find_element("css selector", "[data-chart=accuracy]").get_attribute("data-series") == "2"
    shot(browser, "accuracy")

    open_page(browser, server, "registry")
    lineage = text(browser, "[data-lineage='2']")
    assert f"run {ids['runs'][1][:8]}" in lineage and "snapshot" in lineage and "parent v1" in lineage
    history = text(browser, "[data-alias-move]")
    assert "production" in history and "canary" in history and "first model" in history
    assert text(browser, "[data-answer=alias-at]") == "v1"  # production now
    browser.execute_script("""const input = document.querySelector("[data-model=fraud] input[type=datetime-local]");
        input.value = "2020-01-01T00:00:00"; input.dispatchEvent(new Event("change"));""")
    assert text(browser, "[data-answer=alias-at]") == "not set yet"
    shot(browser, "registry")

    open_page(browser, server, "runs")
    wait_for(lambda: browser.find_elements("css selector", "[data-chart='curve-loss'] canvas"), what="curves")
    differing = {e.get_attribute("data-key") for e in browser.find_elements("css selector", "tr.diff")}
    assert {"lr", "epochs", "loss", "val_auc"} <= differing and "hidden" not in differing
    shot(browser, "runs")

    open_page(browser, server, "pipeline")
    card = text(browser, f"[data-pipeline-run='{ids['pipeline_run']}']")
    assert "drift in the last 2 windows" in card and "collect" in card and "compare" in card and "5200" in card
    assert "last verdicts no drift, drift, drift" in card and "over 400 labels (latest complete window)" in card
    shot(browser, "pipeline")


def click_and_answer(browser, css, answer):
    browser.find_element("css selector", css).click()
    wait_for(lambda: browser.execute_script("return document.getElementById('confirm').open"), what="confirmation")
    browser.find_element("id", f"confirm-{answer}").click()


def weights(server):
    return {k: round(v, 2) for k, v in get(server, "/v2/models/fraud/traffic")[1]["weights"].items()}


def test_promote_and_roll_back_are_confirmed_then_the_server_follows(demo_server, browser):
    server, _ = demo_server
    open_page(browser, server, "models")
    browser.execute_script("document.getElementById('token').value = ''")
    click_and_answer(browser, "[data-action=promote][data-version='2']", "ok")
    wait_for(lambda: "401" in text(browser, "#status"), what="the refusal without a token")
    assert weights(server) == {"1": 0.7, "2": 0.3}

    browser.find_element("id", "token").send_keys(TOKEN)
    click_and_answer(browser, "[data-action=promote][data-version='2']", "cancel")
    # The dialog's close event, and so the page's answer to it, comes after the click returns.
    wait_for(lambda: "cancelled" in text(browser, "#status"), what="the cancellation")
    assert weights(server) == {"1": 0.7, "2": 0.3}

    click_and_answer(browser, "[data-action=promote][data-version='2']", "ok")
    wait_for(lambda: weights(server) == {"2": 1.0}, what="the server to serve v2 alone")
    wait_for(lambda: "100.0%" in text(browser, "[data-model=fraud] tbody tr[data-version='2']"), what="v2 at 100%")
    shot(browser, "models-after-promote")
    history = get(server, "/ui/api/registry")[1]["models"][0]["alias_history"]
    assert history[-1]["actor"] == "loopserve ui" and history[-1]["version"] == 2

    click_and_answer(browser, "[data-action=rollback]", "ok")
    wait_for(lambda: weights(server) == {"1": 1.0}, what="the server to roll back to v1")
    history = get(server, "/ui/api/registry")[1]["models"][0]["alias_history"]
    # The promote cleared the canary (one version serving): the roll back moves production alone.
    assert [(e["alias"], e["action"], e["version"]) for e in history[-3:]] == [
        ("production", "set", 2), ("canary", "delete", 2), ("production", "rollback", 1)]


def test_the_ui_through_two_front_end_processes(tmp_path):
    """workers: 2: the front ends forward /ui to the engine, and the models route reads the
    latency the front ends measured."""
    build_store(tmp_path / "store", tmp_path)
    server = RunningServer(build_app(server_config(tmp_path / "store")), workers=2)
    try:
        assert drive(server, requests=40, shift_after=20) == 0
        status, models = get(server, "/ui/api/models")
        versions = models["models"][0]["versions"]
        assert status == 200 and sum(v["requests"] for v in versions) == 40
        assert all(v["p99_ms"] for v in versions if v["requests"])
        status, _, page = server.request("GET", "/ui/")
        assert status == 200 and b"js/app.js" in page
        status, _, script = server.request("GET", "/ui/js/pages/drift.js")
        assert status == 200 and b"export default" in script
        status, registry = get(server, "/ui/api/registry")
        assert status == 200 and len(registry["models"][0]["versions"]) == 2
    finally:
        server.stop()
