"""The status page in a real headless Chromium, in the situations on-call meets: all optimal, mid-heal, held
back by max_unhealthy, escalated (a human is needed), a silence, a hung machine. Each is asserted on the DOM
(what a user reads, without a click) and kept as a screenshot among the test artifacts; every request the
page made went through a recording proxy, and none left loopback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import Chromium, Page
from conftest import free_port

from .fleet import DETECT, Healer, fleet_config, kill_demos, post_json, set_fault
from .helpers import StartDaemon, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    b = Chromium()
    yield b
    b.close()


@pytest.fixture
def healer(tmp_path: Path, start_daemon: StartDaemon) -> Iterator[Healer]:
    config = fleet_config(tmp_path, free_port())
    h = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    h.wait_fleet_up()
    yield h
    h.daemon.stop()
    kill_demos(str(tmp_path))


def text(dom: str) -> str:
    """What a reader sees: tags stripped, whitespace folded, entities as characters."""
    body = re.sub(r"<script.*?</script>|<style.*?</style>|<title>.*?</title>", " ", dom, flags=re.S)
    plain = re.sub(r"<[^>]+>", " ", body)
    plain = plain.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    return re.sub(r"\s+", " ", plain)


def outside_details(dom: str) -> str:
    """The page's text without what is folded away (visible without a click)."""
    return text(re.sub(r"<details.*?</details>", " ", dom, flags=re.S))


def machine_row(dom: str, machine: str) -> str:
    m = re.search(rf'<tr class="machine" data-machine="{re.escape(machine)}".*?</tr>', dom, re.S)
    assert m, f"no row for {machine} in the page"
    return text(m.group(0))


def look(browser: Chromium, healer: Healer, name: str, **kw: Any) -> Page:
    page = browser.open(healer.url + "/", name, **kw)
    assert page.requests, "the page made no request through the proxy"
    for url in page.requests:
        assert re.match(r"http://127\.0\.0\.1:\d+/", url), f"a request of the page left loopback: {url}"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.dom), "an external URL in the page"
    return page


def test_all_optimal(browser: Chromium, healer: Healer) -> None:
    healer.wait(lambda: healer.daemon.get("/api/v1/history?service=web")[0] == 200, 5, "history")
    page = look(browser, healer, "01-all-optimal", refresh=True)
    seen = outside_details(page.dom)
    assert "web optimal since" in seen, seen[:800]
    # uptime as the history API has it (the fleet was down while its first machines started)
    shown = re.search(r"uptime 1h (\d+\.\d\d)% 24h (\d+\.\d\d)% 7d (\d+\.\d\d)%", seen)
    assert shown, seen[:800]
    assert 0 < float(shown.group(1)) <= 100
    assert "Open incidents none" in seen and "Quarantined machines none" in seen and "Silences none" in seen
    folded = re.search(r"<details>\s*<summary>(.*?)</summary>(.*?)</details>", page.dom, re.S)
    assert folded and text(folded.group(1)).strip() == "3 healthy machines", page.dom[-3000:]
    assert folded.group(2).count('<tr class="machine"') == 3  # listed only inside the fold
    assert page.dom.count('class="bar"') == 1 and page.dom.count("<span class=") >= 60  # the hour's bar
    # the page refreshes its main part in place (no reload): fetched, swapped in, still the whole page
    assert any(u.endswith("/?part=main") for u in page.requests), page.requests
    assert page.refreshed != page.dom and "web optimal since" in outside_details(page.refreshed)
    assert page.refreshed.count('id="main"') == 1 and page.refreshed.count("<h1>healerd</h1>") == 1
    dark = look(browser, healer, "01-all-optimal-dark", dark=True)
    assert "web optimal since" in outside_details(dark.dom)


def test_mid_heal_shows_the_incident_and_its_current_step(browser: Chromium, healer: Healer) -> None:
    members = healer.wait_fleet_up()
    victim = sorted(members)[0]
    set_fault(members[victim], "down")
    healer.wait(
        lambda: any(i["state"] == "remediating" and i["machine"] == victim for i in healer.incidents()),
        DETECT + 5,
        "the remediation to start",
    )
    page = look(browser, healer, "02-mid-heal")
    seen = outside_details(page.dom)
    row = re.search(r'<tr class="incident" data-state="(remediating|remediated|resolved)">.*?</tr>', page.dom, re.S)
    assert row, seen[:2000]
    assert victim in text(row.group(0))
    assert re.search(r"step \d: [a-z_.]+ \((running|succeeded)\)|remediated", text(row.group(0))), text(row.group(0))
    assert re.search(rf"{victim}.*down", machine_row(page.dom, victim)) or "quarantined" in machine_row(
        page.dom, victim
    )


def test_held_back_by_max_unhealthy_says_why_without_a_click(browser: Chromium, healer: Healer) -> None:
    members = healer.wait_fleet_up()
    a, b = sorted(members)[:2]
    set_fault(members[a], "down")
    set_fault(members[b], "down")
    healer.wait(
        lambda: (
            [i for i in healer.incidents() if i["details"].get("suppressed") == "max_unhealthy"]
            and all(healer.machines()[m]["condition"] == "down" for m in (a, b))
        ),
        DETECT + 5,
        "remediation held back by max_unhealthy, both machines hard down",
    )
    page = look(browser, healer, "03-held-back-max-unhealthy")
    seen = outside_details(page.dom)
    assert "held back: too much of the service fails at once (max_unhealthy)" in seen, seen[:2000]
    held = re.findall(r'<p class="(?:human|held) held-reason"[^>]*>(.*?)</p>', page.dom, re.S)
    assert held, "the held-back reason is not highlighted"
    # the reason once, then the gate's figures and what healerd does meanwhile
    assert "2 machines unhealthy at once" in text(held[0]) and "nothing is remediated" in text(held[0]), held
    for machine in (a, b):
        assert "down" in machine_row(page.dom, machine)


def test_escalated_says_a_human_is_needed(browser: Chromium, healer: Healer) -> None:
    def bad_known_good(config: dict[str, Any]) -> None:
        config["images"]["demo-web"]["known_good"] = "v2-broken"
        # a new machine's failures count once it passed a check, or 2 s after its launch (the broken one never does)
        config["services"]["web"]["remediation"]["boot_timeout"] = "2s"

    members = healer.wait_fleet_up()
    healer.reload(bad_known_good)
    victim = sorted(members)[0]
    set_fault(members[victim], "down")
    healer.wait(lambda: any(i["state"] == "failed" for i in healer.incidents()), DETECT + 20, "the incident to fail")
    page = look(browser, healer, "04-escalated")
    seen = outside_details(page.dom)
    assert "remediation failed — a human is needed" in seen, seen[:2000]
    assert re.search(r'class="human held-reason"[^>]*>[^<]*' + re.escape(victim), page.dom)
    assert "⚠" in page.dom.split("<title>")[1].split("</title>")[0]  # the tab says it too
    assert "Quarantined machines none" not in seen  # the failed replacement is kept, with its bundle link


def test_a_silence_is_shown_with_who_why_and_until(browser: Chromium, healer: Healer) -> None:
    out = run_cli(
        "silence",
        "add",
        "--service",
        "web",
        "--for",
        "2h",
        "--comment",
        "kernel upgrade",
        "--by",
        "alice",
        "--url",
        healer.url,
    )
    assert out.returncode == 0, out.stderr
    page = look(browser, healer, "05-silence")
    seen = outside_details(page.dom)
    assert re.search(r"silenced until \d{4}-\d\d-\d\d \d\d:\d\d: kernel upgrade — alice", seen), seen[:2000]
    assert re.search(r"Silences target until who why web \S+ \S+ \(2\.0h left\) alice kernel upgrade", seen), seen
    status = run_cli("status", "--url", healer.url)
    assert "silenced web until" in status.stdout and "kernel upgrade" in status.stdout, status.stdout
    listed = run_cli("silence", "list", "--url", healer.url)
    sid = listed.stdout.split()[0]
    assert run_cli("silence", "rm", sid, "--url", healer.url).returncode == 0
    assert "Silences none" in outside_details(look(browser, healer, "05-silence-removed").dom)


def test_a_hung_machine_reads_down_and_critical_not_ok(browser: Chromium, healer: Healer) -> None:
    members = healer.wait_fleet_up()
    # observe: the hung machine stays where it is (alerted on, not replaced) while the page is read
    status, _ = post_json(healer.url + "/api/v1/mode", {"mode": "observe"})
    assert status == 200
    victim = sorted(members)[0]
    set_fault(members[victim], "hang")
    healer.wait(lambda: healer.machines()[victim]["condition"] == "down", DETECT + 5, "the hung machine to be down")
    page = look(browser, healer, "06-hung-machine")
    row = machine_row(page.dom, victim)
    assert re.search(r"✖ down in_service", row), row
    assert "health: CRITICAL" in row and "no answer within" in row, row
    assert "health: OK" not in row
    seen = outside_details(page.dom)
    assert "mode observe: healerd alerts only" in seen, seen[:2000]  # why nothing is happening
