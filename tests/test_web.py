"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) on the real stack
(tests/cloud_stack.py: Mosquitto, PostgreSQL, `emsbms cloud serve`, `emsbms simulate`, `emsbms run`).

The tests run in file order and build on each other (the config test adds pylon_lv, whose odd channel the
escaping test looks for). Each page's screenshot is saved under docs/web/ with EMSBMS_SCREENSHOTS=1.
Without chromium the module skips, unless EMSBMS_REQUIRE_CHROMIUM=1 (CI), where it fails; likewise
Mosquitto and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from emsbms.cloud.pgserver import PgServer
from emsbms.uplink.broker import BrokerUser
from tests.cloud_fixtures import pg, require_postgres  # noqa: F401
from tests.cloud_stack import Stack, start_stack
from tests.conftest import wait
from tests.test_uplink_mqtt import Watcher, require_mosquitto

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "web"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ODD = "<script>window.pwned=1<script><img src=x onerror=window.pwned=2>"  # a channel name from a user profile
LIMIT = 30_000  # ms a page may take to show what the stack already holds (a slow machine waits, never fails)

try:
    import playwright.sync_api as playwright
except ImportError:  # the dev extra is not installed
    playwright = None  # type: ignore[assignment]


def require_chromium() -> None:
    missing = ("/usr/bin/chromium (Debian package chromium)" if not CHROMIUM.exists()
               else "the Python package playwright (the dev extra)" if playwright is None else None)
    if missing is not None:
        if os.environ.get("EMSBMS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"EMSBMS_REQUIRE_CHROMIUM=1 but {missing} is missing")
        pytest.skip(f"{missing} is missing")


@pytest.fixture(scope="module")
def stack(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    require_chromium()
    require_mosquitto()
    require_postgres()
    with start_stack(pg, tmp_path_factory.mktemp("web")) as s:
        assert wait(lambda: s.get("/sites")["sites"][0]["online"], 60)
        assert wait(lambda: s.get("/sites/plant-1/channels").get("acme_hv/CommState", {}).get("value") == "OK", 60)
        yield s


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, stack: Stack, csp: bool) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=not csp)
    p = context.new_page()
    p.set_default_timeout(LIMIT)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(stack.url + "/")
    yield p
    context.close()
    assert errors == []


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A page without its CSP: Playwright's wait_for_function evaluates strings, and the escaping test must hold
    without that safety net (test_the_pages_carry_the_security_headers checks the header itself)."""
    yield from open_page(browser, stack, csp=False)


@pytest.fixture
def strict_page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A page under its own Content-Security-Policy, as a user's browser runs it."""
    yield from open_page(browser, stack, csp=True)


def sign_in(page: Any, stack: Stack, org: str = "acme", token: str | None = None) -> None:
    page.fill("#org", org)
    page.fill("#token", token if token is not None else stack.tokens[org])
    page.click("#sign-in-form button")


def shot(page: Any, name: str) -> None:
    """The page's screenshot; into docs/web/ only with EMSBMS_SCREENSHOTS=1 (a test run leaves the tree alone)."""
    png = page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"  # a real PNG came back from the browser
    if os.environ.get("EMSBMS_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / f"{name}.png").write_bytes(png)


def test_sign_in_refuses_a_wrong_token_and_shows_the_fleet(strict_page: Any, stack: Stack) -> None:
    page = strict_page
    shot(page, "sign-in")
    sign_in(page, stack, token="not-the-token")
    refused = page.locator("#sign-in-error")
    refused.filter(has_text="Sign-in refused").wait_for()
    assert refused.text_content() == "Sign-in refused: org: no organisation 'acme' with this token"
    assert page.locator("#sign-in").is_visible()
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page, stack)
    row = page.locator('tr[data-site="plant-1"]')
    row.wait_for()
    cells = row.locator("td").all_text_contents()
    assert cells[0] == "online"
    assert cells[2] == "FAULT 0, WARNING 0, INFO 0"
    assert cells[3] == "no desired configuration"
    assert stack.tokens["acme"] not in page.url
    assert json.loads(page.evaluate("sessionStorage.getItem('emsbms.session')")) == {
        "org": "acme", "token": stack.tokens["acme"]}
    shot(page, "fleet")


def test_a_second_organisation_sees_none_of_the_first_sites(page: Any, stack: Stack) -> None:
    sign_in(page, stack, org="other")
    page.locator('tr[data-site="plant-9"]').wait_for()
    assert page.locator("tbody tr").count() == 1
    assert "plant-1" not in page.locator("#page").text_content()
    # the first's site by hash: refused by the API, nothing of it shown
    page.goto(stack.url + "/#/site/plant-1")
    page.locator("#page .error").wait_for()
    assert page.locator("#page .error").text_content() == "site: no site 'plant-1' in this organisation"
    assert page.locator("[data-address]").count() == 0


def test_the_live_stream_needs_the_header_and_names_its_refusals(stack: Stack) -> None:
    url = f"{stack.url}/api/v1/orgs/acme/sites/plant-1/live"
    assert httpx.get(url, params={"token": stack.tokens["acme"]}).status_code == 401  # never a token in the URL
    r = httpx.get(url, headers=stack.auth("other"))
    assert (r.status_code, r.json()["error"]) == (404, "org: no organisation 'acme' with this token")
    with httpx.stream("GET", url, headers=stack.auth(), timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = [next(lines) for _ in range(6)]
    assert first[:2] == ["retry: 2000", ""]
    assert first[2] == "event: channels"
    readings = json.loads(first[3].removeprefix("data: "))  # the first event: every reading, shaped like /channels
    assert {"acme_hv/CommState", "acme_hv/Voltage", "can0/State"} <= set(readings), sorted(readings)
    assert set(readings["acme_hv/Voltage"]) == {"value", "unit", "timestamp_us", "quality"}
    assert readings["acme_hv/Voltage"]["unit"] == "V"


def test_the_pages_carry_the_security_headers(stack: Stack) -> None:
    for path in ("/", "/js/api.js", "/vendor/uPlot.iife.min.js"):
        r = httpx.get(stack.url + path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self';"), path
        assert (r.headers["x-content-type-options"], r.headers["referrer-policy"]) == ("nosniff", "no-referrer")
        assert "set-cookie" not in r.headers
    assert httpx.get(stack.url + "/js/api.js").headers["content-type"].startswith("text/javascript")


def test_a_live_value_changes_on_the_page_without_reloading(page: Any, stack: Stack) -> None:
    sign_in(page, stack)
    page.locator('tr[data-site="plant-1"]').wait_for()
    page.goto(stack.url + "/#/site/plant-1")
    page.locator("[data-live]", has_text="Live: updates arrive without reloading.").wait_for()
    cell = page.locator('[data-address="acme_hv/Current"]')
    page.wait_for_function("document.querySelector('[data-address=\"acme_hv/Current\"]').textContent.endsWith(' A')")
    before = cell.text_content()
    page.evaluate("window.sameDocument = true")
    page.wait_for_function(f"document.querySelector('[data-address=\"acme_hv/Current\"]').textContent !== {before!r}")
    after = cell.text_content()
    assert page.evaluate("window.sameDocument") is True  # not reloaded
    shown = float(after.removesuffix(" A"))
    sent = stack.sent("acme_hv/Current")
    assert any(abs(v - shown) <= 0.0051 for _, v in sent), (after, sent[-5:])
    for address in ("acme_hv/CommState", "can0/State"):  # text channels: the page follows the API's latest

        def same(address: str = address) -> bool:
            value = stack.get("/sites/plant-1/channels")[address]["value"]
            return bool(page.locator(f'[data-address="{address}"]').text_content() == value)
        assert wait(same, 30), address
    shot(page, "site")


def command_row(page: Any, stack: Stack, value: str) -> list[str]:
    page.goto(stack.url + "/#/commands/plant-1")
    page.select_option("#cmd-device", "acme_hv")
    page.select_option("#cmd-channel", "acme_hv/SetChargeCurrent")
    page.fill("#cmd-value", value)
    page.click("form.controls button[type=submit]")
    status = page.locator("#cmd-results tr").first.locator(".cmd-status")
    page.wait_for_function("!['sending…', ''].includes(document.querySelector('#cmd-results tr .cmd-status')"
                           ".textContent)")
    return [status.text_content(), *page.locator("#cmd-results tr").first.locator("td").all_text_contents()[3:]]


def test_a_command_from_the_form_is_acked_and_one_out_of_range_refused(page: Any, stack: Stack) -> None:
    sign_in(page, stack)
    page.locator('tr[data-site="plant-1"]').wait_for()
    page.goto(stack.url + "/#/commands/plant-1")
    page.select_option("#cmd-channel", "acme_hv/SetChargeCurrent")
    assert page.locator("#cmd-limits").text_content().startswith("Unit: A · limits: 0 … 200 A")
    status, detail, rtt = command_row(page, stack, "42.5")
    assert (status, detail) == ("acked", "echo ACME_Status.ChargeCurrentRequestEcho = 42.5")
    assert rtt.endswith(" ms") and float(rtt.removesuffix(" ms")) > 0
    assert wait(lambda: 42.5 in stack.listener.seen(), 10), stack.listener.seen()

    status, detail, rtt = command_row(page, stack, "250")
    assert (status, detail, rtt) == ("rejected", "acme_hv/SetChargeCurrent = 250.0 A is above the maximum 200.0 A",
                                     rtt)
    assert 250.0 not in stack.listener.seen()
    shot(page, "commands")


def test_the_plot_draws_the_series_with_upplot(strict_page: Any, stack: Stack) -> None:
    page = strict_page
    sign_in(page, stack)
    page.locator('tr[data-site="plant-1"]').wait_for()
    page.goto(stack.url + "/#/plot/plant-1")
    page.locator(".chart .uplot canvas").wait_for()
    points = int(page.locator(".chart").get_attribute("data-points"))
    assert points > 0
    assert "acme_hv/" in page.locator(".chart .u-legend").text_content()
    shot(page, "plot")


class FakeEdge(Watcher):
    """A test client acting as site plant-2's edge for alarms and overrides: it acks `alarms/.../Ack` commands and
    cancels overrides (`core/overrides/<address>/Cancel`), reporting them in `core/OverrideList`."""

    def __init__(self, stack: Stack, login: dict[str, str]) -> None:
        self.session = time.time_ns() // 1000
        self.seq = 0
        self.acked = threading.Event()
        self.telemetry_seq = 0
        self.overrides: list[dict[str, Any]] = []
        super().__init__(stack.broker, BrokerUser(login["username"], login["password"], ()), ["ems/acme/plant-2/cmd"])

    def alarm(self, acked: bool) -> None:
        self.seq += 1
        now = time.time_ns() // 1000
        entry = {"id": "hot/pack_2", "rule": "hot", "device": "pack_2", "state": "active",
                 "previous": "active" if acked else "pending", "severity": "FAULT", "acked": acked, "value": 61.5,
                 "timestamp_us": now, "text": "pack_2 temperature 61.5 °C > 60"}
        self.client.publish("ems/acme/plant-2/alarms", json.dumps(
            {"historical": False, "session": self.session, "seq": self.seq, "timestamp_us": now,
             "alarms": [entry]}), qos=1)

    def report(self) -> None:
        self.telemetry_seq += 1
        now = time.time_ns() // 1000
        sample = {"address": "core/OverrideList", "value": json.dumps(self.overrides), "timestamp_us": now,
                  "quality": "ok"}
        self.client.publish("ems/acme/plant-2/telemetry", json.dumps(
            {"historical": False, "session": self.session, "seq": self.telemetry_seq, "timestamp_us": now,
             "refresh": False, "samples": [sample]}), qos=1)

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        super()._message(client, userdata, message)
        cmd = json.loads(message.payload)
        if cmd.get("address", "").startswith("core/overrides/"):
            target = cmd["address"].removeprefix("core/overrides/").removesuffix("/Cancel")
            self.overrides = [o for o in self.overrides if o["address"] != target]
            self.report()
            client.publish("ems/acme/plant-2/cmd/result", json.dumps(
                {"id": cmd["id"], "status": "acked", "detail": f"override of {target} cancelled", "took_us": 120,
                 "address": cmd["address"], "value": cmd["value"]}), qos=1)
        if cmd.get("address") == "alarms/hot/pack_2/Ack":
            self.alarm(acked=True)
            client.publish("ems/acme/plant-2/cmd/result", json.dumps(
                {"id": cmd["id"], "status": "acked", "detail": "hot/pack_2: active, acked", "took_us": 150,
                 "address": cmd["address"], "value": cmd["value"]}), qos=1)
            self.acked.set()


def test_an_alarm_is_acknowledged_and_an_override_cancelled(page: Any, stack: Stack) -> None:
    r = stack.http.post("/acme/sites", headers=stack.auth(), json={"site": "plant-2"})
    assert r.status_code == 200, r.text
    edge = FakeEdge(stack, r.json())  # with the site's own edge credentials
    try:
        edge.client.publish("ems/acme/plant-2/state", json.dumps(
            {"state": "online", "bdSeq": 0, "timestamp_us": time.time_ns() // 1000}), qos=1, retain=True)
        edge.alarm(acked=False)
        assert edge.granted == [1]
        assert wait(lambda: len(stack.get("/sites/plant-2/alarms")["active"]) == 1
                    and stack.get("/sites")["sites"][1]["online"], 30), (stack.get("/sites"),
                                                                          stack.get("/sites/plant-2/alarms"))
        sign_in(page, stack)
        row = page.locator('tr[data-site="plant-2"]')
        row.wait_for()
        assert row.locator("td").all_text_contents()[2] == "FAULT 1, WARNING 0, INFO 0"
        page.goto(stack.url + "/#/alarms/plant-2")
        alarm = page.locator('tr[data-alarm="hot/pack_2"]')
        alarm.wait_for()
        assert alarm.locator("td").all_text_contents()[:5] == ["pack_2", "FAULT", "active", "no", "61.5"]
        shot(page, "alarms")
        page.get_by_role("button", name="Acknowledge hot/pack_2").click()
        page.locator("#alarm-result", has_text="Acknowledge hot/pack_2: acked").wait_for()
        assert page.locator("#alarm-result").text_content().startswith(
            "Acknowledge hot/pack_2: acked — hot/pack_2: active, acked (")
        assert edge.acked.is_set()
        page.wait_for_function("document.querySelector('tr[data-alarm=\"hot/pack_2\"] td:nth-child(5)')"
                               ".textContent === 'yes'")
        assert page.get_by_role("button", name="Acknowledge hot/pack_2").count() == 0

        # an override the edge reports, cancelled from the Commands page
        expires = time.time_ns() // 1000 + 600_000_000
        edge.overrides = [{"address": "pack_2/SetChargeCurrent", "value": 40.0, "expires_us": expires,
                           "source": "cloud"}]
        edge.report()
        assert wait(lambda: len(stack.get("/sites/plant-2/overrides")["overrides"]) == 1, 30)
        page.goto(stack.url + "/#/commands/plant-2")
        held = page.locator('tr[data-override="pack_2/SetChargeCurrent"]')
        held.wait_for()
        assert held.locator("td").all_text_contents()[:2] == ["40", "cloud"]
        shot(page, "overrides")
        page.get_by_role("button", name="Cancel the override of pack_2/SetChargeCurrent").click()
        page.locator("#override-result", has_text="Cancel pack_2/SetChargeCurrent: acked").wait_for()
        assert page.locator("#override-result").text_content() == (
            "Cancel pack_2/SetChargeCurrent: acked — override of pack_2/SetChargeCurrent cancelled")
        page.locator("#overrides", has_text="No active overrides.").wait_for()
        assert edge.overrides == []
    finally:
        edge.close()


def test_a_profile_uploaded_and_applied_on_the_edge(page: Any, stack: Stack) -> None:
    body = {"buses": [stack.buses["can0"], stack.buses["can4"]],
            "devices": [{"name": "acme_hv", "bus": "can0", "profile": "acme-hv"},
                        {"name": "pylon_lv", "bus": "can4", "profile": "pylon-lv"}]}
    r = stack.http.put("/acme/sites/plant-1/config", headers=stack.auth(), json=body)
    assert (r.status_code, r.json()) == (200, {"version": 1}), r.text
    sign_in(page, stack)
    page.locator('tr[data-site="plant-1"]').wait_for()
    page.goto(stack.url + "/#/config/plant-1")
    page.locator("#sync-state", has_text="Version 1: applied").wait_for()

    doc = json.loads((ROOT / "profiles" / "pylon-lv.json").read_text(encoding="utf-8"))
    dbc = (ROOT / "dbc" / "pylon_lv.dbc").read_bytes()
    bad = {**doc, "version": "one"}
    page.set_input_files("#profile-file", files=[{"name": "bad.json", "mimeType": "application/json",
                                                  "buffer": json.dumps(bad).encode()}])
    page.set_input_files("#source-files", files=[{"name": "pylon_lv.dbc", "mimeType": "text/plain", "buffer": dbc}])
    page.click("#upload-h + form button")
    page.locator("#upload-result", has_text="Refused").wait_for()
    assert page.locator("#upload-result").text_content() == (
        "Refused: profile: profile pylon-lv: version: String should match pattern '^\\d+(\\.\\d+){0,2}$'; found 'one'")

    doc["version"] = "1.3.0"
    doc["channels"][ODD] = {"message": "PYLON_SocSoh", "signal": "SoCHighRes", "unit": "%"}
    page.set_input_files("#profile-file", files=[{"name": "pylon-lv.json", "mimeType": "application/json",
                                                  "buffer": json.dumps(doc).encode()}])
    page.click("#upload-h + form button")
    page.locator("#upload-result", has_text="Stored").wait_for()
    assert page.locator("#upload-result").text_content().startswith("Stored pylon-lv 1.3.0 (hash ")

    page.select_option("#assign-device", "pylon_lv")
    assert page.input_value("#assign-profile") == "pylon-lv"
    page.fill("#assign-version", "1.3.0")
    page.click("#assign-h + form button")
    page.locator("#sync-state", has_text="Version 2: applied").wait_for(timeout=60_000)
    assert page.locator("#sync-state").text_content().startswith("Version 2: applied — version 2 applied")
    assert wait(lambda: any(d["name"] == "pylon_lv" and d["version"] == "1.3.0"
                            for d in stack.get("/sites/plant-1/devices")["devices"]), 30)
    shot(page, "config")


def test_a_channel_name_with_markup_is_shown_as_text(page: Any, stack: Stack) -> None:
    address = f"pylon_lv/{ODD}"
    assert wait(lambda: stack.get("/sites/plant-1/channels").get(address, {}).get("quality") == "ok", 60)
    sign_in(page, stack)
    page.locator('tr[data-site="plant-1"]').wait_for()
    page.goto(stack.url + "/#/site/plant-1")
    cell = page.locator(f"[data-address={json.dumps(address)}]")
    cell.wait_for(state="attached")
    names = page.locator('article[aria-label="Device pylon_lv"] details th[scope=row]').all_text_contents()
    assert ODD in names
    assert page.evaluate("window.pwned") is None
    assert page.locator("#page img, #page script").count() == 0


def test_the_pages_fit_a_phone(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  bypass_csp=True)
    try:
        p = context.new_page()
        p.set_default_timeout(LIMIT)
        p.goto(stack.url + "/")
        sign_in(p, stack)
        p.locator('tr[data-site="plant-1"]').wait_for()
        p.goto(stack.url + "/#/site/plant-1")
        p.locator('[data-address="acme_hv/Soc"]').wait_for()
        p.wait_for_function("document.querySelector('[data-address=\"acme_hv/Soc\"]').textContent.endsWith(' %')")
        # nothing wider than the screen: the page does not scroll sideways
        assert p.evaluate("document.documentElement.scrollWidth") <= 390
        shot(p, "site-phone")
    finally:
        context.close()
