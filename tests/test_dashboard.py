"""The operator dashboard, in a real headless Chromium against a real uvicorn and Redis.

Breakers are tripped from another process, as in a fleet, and the page must show the
change within the 2 s an operator would tolerate. Chromium is Debian's (installed by
scripts/ensure-servers.sh): a machine without it fails these tests, never skips them.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import prometheus_client
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.testclient import TestClient

import redisbreaker.serve.app
from redisbreaker import SharedBreaker
from redisbreaker.config import client_from_url
from redisbreaker.fleet import Fleet
from redisbreaker.serve import create_app
from redisbreaker.state import State

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
TOKEN = "s3cret-token"
SHOWN = 2000  # ms: how soon a change made anywhere must be on the page
Serve = Callable[[Starlette], str]

TRIP = """
import sys
from redisbreaker import SharedBreaker
from redisbreaker.config import client_from_url

breaker = SharedBreaker("payments", client=client_from_url(sys.argv[1]), fail_max=1)

def charge() -> None:
    raise ValueError("payments down")

try:
    breaker.call(charge)
except ValueError:
    pass
print(breaker.snapshot().state.value)
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.fail(f"could not start {CHROMIUM} (see scripts/ensure-servers.sh): {exc}")
        yield launched
        launched.close()


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Fleet]:
    client = client_from_url(redis_url)
    yield Fleet(client)
    client.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Serve an app under uvicorn for the test; returns its base URL."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serving(app))


@pytest.fixture
def page(browser: Browser, serve: Serve) -> Iterator[Page]:
    """A fresh page that fails the test on any script error or CSP violation. It needs
    ``serve`` so that it closes first: an open event stream would hold the server."""
    context = browser.new_context()
    fresh = context.new_page()
    problems: list[str] = []
    fresh.on("pageerror", lambda exc: problems.append(str(exc)))
    fresh.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield fresh
    context.close()
    refused = "the server responded with a status of 401"  # what a wrong token provokes
    assert [p for p in problems if refused not in p] == []


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def trip_elsewhere(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TRIP, redis_url], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "open", done.stderr


def trip_here(fleet: Fleet, name: str = "payments") -> None:
    breaker = SharedBreaker(name, client=fleet.client, prefix=fleet.prefix, fail_max=1)

    def charge() -> None:
        raise ValueError(f"{name} down")

    with pytest.raises(ValueError, match="down"):
        breaker.call(charge)


def row(name: str, state: str) -> str:
    return f'tr[data-name="{name}"][data-scope="cluster"][data-state="{state}"]'


# -- in the browser --------------------------------------------------------------------


def test_page_follows_a_breaker_tripped_by_another_process(
    fleet: Fleet, redis_url: str, serve: Serve, page: Page
) -> None:
    page.goto(serve(create_app(fleet)))
    expect(page.locator("#link")).to_have_text("live", timeout=5000)
    expect(page.locator("#mode")).to_have_text("read-only")

    trip_elsewhere(redis_url)
    page.wait_for_selector(row("payments", "open"), timeout=SHOWN)
    shown = page.locator(row("payments", "open"))
    expect(shown.locator(".badge")).to_have_text("open")
    expect(shown).to_contain_text("ValueError: payments down")
    event = page.locator('#events li[data-kind="breaker"]').first
    expect(event).to_contain_text("payments", timeout=SHOWN)
    # The countdown moves on the page's own clock, between server updates.
    retry = shown.locator(".retry")
    first = retry.inner_text()
    assert first.endswith("s"), first
    expect(retry).not_to_have_text(first, timeout=SHOWN)

    # Read-only: no control anywhere on the page.
    assert page.locator("button[data-action]").count() == 0
    expect(page.locator("#pause-button")).to_be_hidden()

    fleet.handle("payments").reset(reason="test")
    page.wait_for_selector(row("payments", "closed"), timeout=SHOWN)
    expect(page.locator(row("payments", "closed"))).to_contain_text("reset by")


def test_reset_button_with_the_token_closes_the_breaker(
    fleet: Fleet, serve: Serve, page: Page
) -> None:
    trip_here(fleet)
    page.goto(serve(create_app(fleet, allow_control=True, token=TOKEN)))
    page.wait_for_selector(row("payments", "open"), timeout=5000)
    expect(page.locator("#mode")).to_have_text("control on")

    page.locator(f'{row("payments", "open")} button[data-action="reset"]').click()
    expect(page.locator("#ask")).to_be_visible()
    page.fill("#ask-reason", "fixed upstream")
    page.fill("#ask-token", "wrong")
    page.click("#ask-ok")
    expect(page.locator("#ask-error")).to_contain_text("Authorization")
    assert fleet.breaker("payments").state is State.OPEN

    page.fill("#ask-token", TOKEN)
    page.click("#ask-ok")
    expect(page.locator("#ask")).to_be_hidden()
    page.wait_for_selector(row("payments", "closed"), timeout=SHOWN)
    info = fleet.breaker("payments")
    assert (info.state, info.reason.rule) == (State.CLOSED, "operator")
    assert info.reason.text.endswith(": fixed upstream")
    # The token is asked for once per browser session.
    assert page.evaluate("sessionStorage.getItem('redisbreaker.token')") == TOKEN

    trip_here(fleet)
    page.wait_for_selector(row("payments", "open"), timeout=SHOWN)
    page.locator(f'{row("payments", "open")} button[data-action="force-open"]').click()
    expect(page.locator("#ask-token-row")).to_be_hidden()
    page.click("#ask-ok")
    page.wait_for_selector(row("payments", "forced_open"), timeout=SHOWN)


def test_pause_and_resume_from_the_page(fleet: Fleet, serve: Serve, page: Page) -> None:
    page.goto(serve(create_app(fleet, allow_control=True, token=TOKEN)))
    expect(page.locator("#link")).to_have_text("live", timeout=5000)
    page.click("#pause-button")
    page.select_option("#ask-scope", "queue")
    page.fill("#ask-key", "emails")
    page.fill("#ask-reason", "smtp maintenance")
    page.fill("#ask-token", TOKEN)
    page.click("#ask-ok")
    paused = 'tr[data-name="pause"][data-scope="queue"][data-key="emails"]'
    page.wait_for_selector(f'{paused}[data-state="forced_open"]', timeout=SHOWN)

    page.locator(f'{paused} button[data-action="resume"]').click()
    page.click("#ask-ok")
    page.wait_for_selector(f'{paused}[data-state="closed"]', timeout=SHOWN)


# -- the event stream --------------------------------------------------------------------


def test_event_stream_pushes_a_transition_at_once(
    fleet: Fleet, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream sends the state on connect, then a change as soon as it is published
    (the periodic update is pushed out of reach, so only the push can be seen)."""
    monkeypatch.setattr(redisbreaker.serve.app, "PERIOD", 30.0)
    app = create_app(fleet)
    with urllib.request.urlopen(f"{serve(app)}/events", timeout=5) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")

        def next_state() -> dict[str, Any]:
            for raw in stream:
                line = raw.decode()
                if line.startswith("data: ") and "breakers" in line:
                    data: dict[str, Any] = json.loads(line.removeprefix("data: "))
                    return data
            raise AssertionError("the stream ended")

        first = next_state()
        assert first["breakers"] == [] and first["control"] is False
        assert app.state.feed.connected.wait(5)
        started = time.monotonic()
        trip_here(fleet)
        pushed = next_state()
        assert time.monotonic() - started < 2
        assert [(b["name"], b["state"]) for b in pushed["breakers"]] == [("payments", "open")]


RUN = """
import sys
from redisbreaker.config import client_from_url
from redisbreaker.fleet import Fleet
from redisbreaker.serve import run

run(Fleet(client_from_url(sys.argv[1])), port=int(sys.argv[2]))
"""


def test_run_serves_on_loopback_and_stops_at_once_with_a_page_open(redis_url: str) -> None:
    """Ctrl-C ends the open event streams first: no wait for the graceful-shutdown
    timeout (2 s), no cancelled-task traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", RUN, redis_url, str(port)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.05)
        with stream:
            assert any(line.startswith(b"data: ") for line in stream)
            started = time.monotonic()
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=10) == 0
            assert time.monotonic() - started < 1.5
    finally:
        server.kill()
        _, errors = server.communicate()
    assert f"running on http://127.0.0.1:{port}" in errors
    assert "Traceback" not in errors, errors


# -- the JSON API ------------------------------------------------------------------------


def test_api_state_lists_breakers_workers_transactions_and_events(fleet: Fleet) -> None:
    app = create_app(fleet)
    with TestClient(app) as client:
        assert app.state.feed.connected.wait(5)
        trip_here(fleet, "payments")
        trip_here(fleet, "search")
        fleet.handle("search").reset(reason="test")
        deadline = time.monotonic() + 5
        while True:
            state = client.get("/api/state").json()
            if len(state["events"]) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert set(state) == {
        "breakers", "workers", "transactions", "dead_letters", "events", "control", "server_ms"
    }  # fmt: skip
    assert [(b["name"], b["scope"], b["state"]) for b in state["breakers"]] == [
        ("payments", "cluster", "open"), ("search", "cluster", "closed"),
    ]  # fmt: skip
    assert state["breakers"][0]["reason_detail"]["error"] == "ValueError: payments down"
    assert [(e["name"], e["old"], e["new"]) for e in state["events"]] == [
        ("search", "open", "closed"), ("search", "closed", "open"), ("payments", "closed", "open"),
    ]  # fmt: skip
    assert state["workers"] == [] and state["transactions"] == [] and state["dead_letters"] == []
    assert state["control"] is False
    assert abs(state["server_ms"] - time.time() * 1000) < 5000


def test_page_and_assets_are_served_with_a_strict_policy(fleet: Fleet) -> None:
    client = TestClient(create_app(fleet))
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "static/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200
    missing = client.get("/static/secrets.txt")
    assert (missing.status_code, missing.json()) == (404, {"error": "no file 'secrets.txt'"})
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def control_client(fleet: Fleet, **options: Any) -> TestClient:
    return TestClient(create_app(fleet, **options), raise_server_exceptions=False)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_control_needs_the_token(fleet: Fleet) -> None:
    trip_here(fleet)
    client = control_client(fleet, allow_control=True, token=TOKEN)
    body = {"name": "payments", "reason": "test"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        refused = client.post("/api/breakers/reset", json=body, headers=headers)
        assert refused.status_code == 401 and "error" in refused.json()
        assert refused.headers["www-authenticate"] == "Bearer"
    assert fleet.breaker("payments").state is State.OPEN

    done = client.post("/api/breakers/reset", json=body, headers=AUTH)
    assert done.status_code == 200
    assert (done.json()["name"], done.json()["state"]) == ("payments", "closed")
    assert done.json()["reason"].endswith(": test")
    assert client.get("/api/state").json()["control"] is True


@pytest.mark.parametrize("options", [{}, {"token": TOKEN}, {"allow_control": True}])
def test_control_is_off_unless_allowed_with_a_token(fleet: Fleet, options: Any) -> None:
    trip_here(fleet)
    client = control_client(fleet, **options)
    for path in ("/api/breakers/reset", "/api/pause", "/api/resume"):
        refused = client.post(path, json={"name": "payments"}, headers=AUTH)
        assert refused.status_code == 403 and "control is off" in refused.json()["error"]
    assert fleet.breaker("payments").state is State.OPEN
    assert client.get("/api/state").json()["control"] is False


def test_every_breaker_action(fleet: Fleet) -> None:
    trip_here(fleet)
    client = control_client(fleet, allow_control=True, token=TOKEN)

    def act(action: str, **body: Any) -> dict[str, Any]:
        answer = client.post(f"/api/breakers/{action}", json={"name": "payments", **body},
                             headers=AUTH)  # fmt: skip
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    assert act("force-open")["state"] == "forced_open"
    assert act("disable", reason="load test")["reason"].endswith(": load test")
    opened = act("open", seconds=60)
    assert opened["state"] == "open" and 55 < opened["retry_after"] <= 60
    assert act("reset", scope="cluster", key="")["state"] == "closed"


def test_pause_and_resume_make_the_manual_pause_breaker(fleet: Fleet) -> None:
    client = control_client(fleet, allow_control=True, token=TOKEN)
    where = {"scope": "queue", "key": "emails"}
    paused = client.post("/api/pause", json={**where, "reason": "smtp down"}, headers=AUTH)
    assert paused.status_code == 200, paused.text
    assert (paused.json()["name"], paused.json()["state"], paused.json()["scope_key"]) == (
        "pause", "forced_open", "emails",
    )  # fmt: skip
    timed = client.post("/api/pause", json={"scope": "cluster", "seconds": 30}, headers=AUTH)
    assert timed.json()["state"] == "open" and timed.json()["retry_after"] > 25
    resumed = client.post("/api/resume", json=where, headers=AUTH)
    assert resumed.json()["state"] == "closed"
    assert fleet.breaker("pause", "queue", "emails").state is State.CLOSED


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/breakers/explode", {"name": "payments"}, 404, "no action 'explode'"),
        ("/api/breakers/reset", {"name": "nobody"}, 404, "no breaker 'nobody'"),
        ("/api/breakers/reset", {}, 400, "name is required"),
        ("/api/breakers/reset", ["payments"], 400, "JSON object"),
        ("/api/breakers/reset", {"name": 3}, 400, "name must be a string"),
        ("/api/breakers/open", {"name": "payments"}, 400, "seconds is required"),
        ("/api/breakers/open", {"name": "payments", "seconds": -1}, 400, "seconds"),
        ("/api/breakers/reset", {"name": "payments", "key": "x"}, 400, "cluster scope has no"),
        ("/api/pause", {"scope": "galaxy", "key": "x"}, 400, "scope must be one of"),
        ("/api/pause", {"scope": "worker"}, 400, "needs a key"),
        ("/api/resume", {"scope": "queue", "key": "never"}, 404, "no breaker 'pause'"),
    ],
)
def test_bad_requests_answer_json_errors(
    fleet: Fleet, path: str, body: Any, status: int, error: str
) -> None:
    trip_here(fleet)
    client = control_client(fleet, allow_control=True, token=TOKEN)
    answer = client.post(path, json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert error in answer.json()["error"]


def test_malformed_json_and_wrong_method_answer_json(fleet: Fleet) -> None:
    client = control_client(fleet, allow_control=True, token=TOKEN)
    broken = client.post("/api/pause", content=b"{nope", headers=AUTH)
    assert (broken.status_code, broken.json()) == (400, {"error": "the body must be JSON"})
    wrong = client.get("/api/pause")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "Method Not Allowed"})


def test_redis_down_answers_503_not_a_traceback() -> None:
    fleet = Fleet(client_from_url("redis://127.0.0.1:1/0"))
    client = control_client(fleet, allow_control=True, token=TOKEN)
    state = client.get("/api/state")
    assert state.status_code == 503 and "error" in state.json()
    reset = client.post("/api/breakers/reset", json={"name": "x"}, headers=AUTH)
    assert reset.status_code == 503 and "error" in reset.json()


def test_metrics_app_is_mounted(fleet: Fleet) -> None:
    client = TestClient(create_app(fleet, metrics_app=prometheus_client.make_asgi_app()))
    for path in ("/metrics", "/metrics/"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 200 and "python_info" in answer.text
    assert TestClient(create_app(fleet)).get("/metrics").status_code == 404
