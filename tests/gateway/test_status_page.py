"""The gateway's status page against a real fleet of processes (services.local_fleet: Postgres catalog, a
Redis, two engines, a gateway): it lists both engines and the adapters each holds (checked against the
engines' own stats), the open wave, aliases, revisions and metrics; it is for admin keys only; every value
is escaped. Then headless Chromium opens it the way a browser would (the key in the query, kept in a cookie)
and takes a screenshot."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time

import httpx
import pytest

from mint import auth
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from mint.proto import engine_pb2, engine_pb2_grpc
from mint.sdk import SamplingParams
from mint.server import channel
from services.local_fleet import LocalFleet
from tests.conftest import assert_clean_logs, create_database, drop_database
from tests.engine.conftest import random_adapter

TINY = ModelConfig.from_name("tiny")
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    init_base(root / "tiny", arch="llama", preset="tiny", seed=5)
    url = create_database()
    fleet = None
    try:
        (root / "fleet").mkdir()
        fleet = LocalFleet(root / "fleet", url, root / "tiny", engines=2, heartbeat_s=0.5)
        fleet.wait_for_engines(2)
        fleet.wave_id = populate(fleet)  # the test's own note on the fleet object
        yield fleet
    finally:
        if fleet is not None:
            fleet.stop()
        drop_database(url)
    assert_clean_logs(fleet.workdir.glob("*.log"))


def populate(fleet: LocalFleet) -> str:
    """Two policies with metrics per revision, aliases, a wave over their revisions (spread over both
    engines), a sample from each; a third policy whose description, metric name and retraction reason are
    markup. Returns the wave's id."""
    catalog = fleet.client.catalog
    curves = {"support-bot": [(2.31, 0.12), (1.74, 0.31), (1.42, 0.46), (1.29, 0.52)], "summarizer": [(2.9, 0.05), (2.2, 0.21), (1.9, 0.33)]}
    refs = []
    for seed, (policy, points) in enumerate(curves.items()):
        catalog.create_policy(policy, "tiny", description=f"{policy.replace('-', ' ')} for acme")
        for i, (loss, reward) in enumerate(points):
            adapter = random_adapter(TINY, rank=4, seed=10 * seed + i, scale=0.5)
            catalog.publish(policy, adapter, metrics={"train/loss": loss, "eval/reward": reward}, source=f"trainer:demo/step-{100 * (i + 1)}")
            refs.append(f"acme/{policy}@{i + 1}")
    catalog.set_alias("support-bot", "prod", 3, reason="best eval reward so far")
    catalog.set_alias("summarizer", "prod", 2)
    catalog.create_policy("odd", "tiny", description=f"<script>alert('d')</script>{HOSTILE}")
    catalog.publish("odd", random_adapter(TINY, rank=2, seed=99, scale=0.5), metrics={HOSTILE: 1.0})
    catalog.publish("odd", random_adapter(TINY, rank=2, seed=98, scale=0.5))
    catalog.retract("odd@2", reason=f"</td><b>{HOSTILE}</b>")
    wave = fleet.client.activate_wave(refs, name="eval-sweep")
    deadline = time.monotonic() + 120
    while not wave.ready:
        assert time.monotonic() < deadline, f"the wave did not become resident: {wave}"
        time.sleep(0.2)
        wave = fleet.client.get_wave(wave.wave_id)
    for model in ("acme/support-bot@prod", "acme/summarizer@prod"):
        fleet.client.create_sampling_client(model).sample("hello", sampling_params=SamplingParams(max_tokens=4, seed=1))
    return wave.wave_id


def page(fleet: LocalFleet, path: str = "/status", **kwargs) -> httpx.Response:
    return httpx.get(f"{fleet.http_url}{path}", timeout=60, **kwargs)


def admin(fleet: LocalFleet) -> dict[str, str]:
    return {"authorization": f"Bearer {fleet.admin_key}"}


def device_shas(fleet: LocalFleet, address: str) -> set[str]:
    """The blobs of the adapters the engine itself says it holds in its slots."""
    ch = channel(address)
    try:
        stats = engine_pb2_grpc.EngineServiceStub(ch).GetStats(
            engine_pb2.GetStatsRequest(include_adapters=True), metadata=auth.call_metadata(fleet.service_key), timeout=30
        )
    finally:
        ch.close()
    return {a.sha256 for a in stats.adapters if a.tier == engine_pb2.TIER_DEVICE}


def section(text: str, element_id: str) -> str:
    match = re.search(rf'<section class="card" id="{re.escape(element_id)}">(.*?)</section>', text, re.S)
    assert match, f"no section {element_id!r} on the page"
    return match.group(1)


def test_the_page_lists_both_engines_and_the_adapters_each_holds(fleet):
    engines = fleet.client.engines()
    assert len(engines) == 2
    revisions = {r.sha256: r.address for p in ("support-bot", "summarizer", "odd") for r in fleet.client.catalog.list_revisions(p)}
    shares = {s.engine_id: s.resident for s in fleet.client.get_wave(fleet.wave_id).engines}
    assert set(shares) == {e.engine_id for e in engines} and all(shares.values()), f"the wave should fill both engines: {shares}"
    # The page reads the scheduler, which hears of residency on the engines' next report: look until it
    # shows what the engines hold in their slots (GetStats) and as many adapters as the wave put there.
    deadline = time.monotonic() + 30
    while True:
        response = page(fleet, params={"tenant": "acme"}, headers=admin(fleet))
        assert response.status_code == 200, response.text
        in_slots = {e.engine_id: {revisions[s] for s in device_shas(fleet, e.address)} for e in engines}
        listed = {e.engine_id: set(re.findall(r"<td>(acme/[\w-]+@\d+)</td>", section(response.text, f"engine-{e.engine_id}"))) for e in engines}
        if all(listed[e] >= in_slots[e] and len(listed[e]) >= shares[e] for e in listed):
            break
        assert time.monotonic() < deadline, f"the page lists {listed}; the engines hold {in_slots} in slots, the wave {shares}"
        time.sleep(0.5)
    assert set().union(*listed.values()) >= {f"acme/support-bot@{n}" for n in (1, 2, 3, 4)} | {f"acme/summarizer@{n}" for n in (1, 2, 3)}
    for engine in engines:
        text = section(response.text, f"engine-{engine.engine_id}")
        assert engine.address in text and "base tiny" in text
        assert f"resident adapters ({len(listed[engine.engine_id])})" in text
        assert re.search(r"<td>host</td><td>[1-9][\d.]* (KiB|MiB)</td>", text), "the host tier's bytes in use"


def test_the_page_shows_the_wave_aliases_revisions_metrics_and_audit_events(fleet):
    text = page(fleet, params={"tenant": "acme"}, headers=admin(fleet)).text
    assert re.search(r"<td>eval-sweep <span class=\"muted\">ready</span></td><td>acme</td><td>tiny</td>", text)
    assert "<td>7 / 7</td>" in text
    bot = section(text, "policy-acme/support-bot")
    assert "prod → 3" in bot and "latest → 4" in bot
    assert "<code>train/loss=1.29</code>" in bot and "<code>eval/reward=0.52</code>" in bot
    assert bot.count("<polyline") == 2  # one plot per metric
    assert "support bot for acme" in bot
    assert "set_alias" in text and "publish" in text and "acme/support-bot@3" in text
    detail = page(fleet, "/status/policies/acme/support-bot", headers=admin(fleet))
    assert detail.status_code == 200 and "best eval reward so far" in detail.text


def test_every_value_is_escaped(fleet):
    text = page(fleet, params={"tenant": "acme"}, headers=admin(fleet)).text
    odd = section(text, "policy-acme/odd")
    assert HOSTILE not in text and "<script>" not in text and "<b><img" not in text
    assert html.escape(HOSTILE, quote=True) in odd  # the metric name, in its plot and its revision row
    assert "&lt;script&gt;alert(&#39;d&#39;)&lt;/script&gt;" in odd
    assert "retracted: &lt;/td&gt;&lt;b&gt;" in odd
    detail = page(fleet, "/status/policies/acme/odd", headers=admin(fleet)).text
    assert HOSTILE not in detail and "<script>" not in detail


def test_admin_keys_only(fleet):
    none = page(fleet)
    assert none.status_code == 401 and 'action="/status/login"' in none.text
    member = page(fleet, headers={"authorization": f"Bearer {fleet.member_key}"})
    assert member.status_code == 403 and "for admin keys" in member.text and "member key of tenant acme" in member.text
    assert page(fleet, params={"key": fleet.member_key}).status_code == 403
    assert page(fleet, headers={"authorization": "Bearer mint_nope_nope"}).status_code == 401
    assert page(fleet, "/status/policies/acme/support-bot", headers={"authorization": f"Bearer {fleet.member_key}"}).status_code == 403


def test_a_browser_signs_in_once_and_then_carries_a_cookie(fleet):
    with httpx.Client(base_url=fleet.http_url, timeout=60) as browser:
        assert browser.post("/status/login", data={"key": fleet.member_key}).status_code == 403
        signed_in = browser.post("/status/login", data={"key": fleet.admin_key})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/status"
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/status" in cookie
        assert browser.get("/status").status_code == 200
        assert browser.get("/status/policies/acme/summarizer").status_code == 200
    assert page(fleet, params={"key": fleet.admin_key}).headers["cache-control"] == "no-store"


def test_headless_chromium_opens_the_page_and_takes_a_screenshot(fleet, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    shot = tmp_path / "status.png"
    url = f"{fleet.http_url}/status?tenant=acme&key={fleet.admin_key}"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,1600", url],
        check=True, timeout=120, capture_output=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
