"""The browser journeys: what a person sees in Chromium while real devices and a real Celery
worker change statuses underneath.

Locators use the hooks the dashboard issue (#5) prescribes: `data-uuid` on device rows,
`data-status` on badges, `data-status-count` on counts, `data-fleet` on fleet rows. Waits are for
conditions (Playwright's expect with a timeout), never for a fixed time.
"""

from __future__ import annotations

import csv
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import REGISTER_CONCURRENCY, make_fleet, make_org_with_user, make_user
from tests.e2e.harness import FAST_POLL_INTERVAL, SWEEP_INTERVAL, SimDevice, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis]

# Labels exactly as docs/design.md, Statuses writes them.
LABELS = {
    "online": "Online",
    "online-vpn-only": "Online (VPN Only)",
    "online-heartbeat-only": "Online (Heartbeat Only)",
    "offline": "Offline",
    "configuring": "Configuring",
    "updating": "Updating",
    "post-provisioning": "Post Provisioning",
    "inactive": "Inactive",
    "frozen": "Frozen",
}
# A device that stops fetching turns Offline after its deadline (interval x 1.5), then the sweep
# (every SWEEP_INTERVAL s) stores it, then the page's next htmx refresh (every 10 s) shows it.
PAGE_REFRESH = 10
LIVE_TIMEOUT_MS = int((FAST_POLL_INTERVAL * 1.5 + SWEEP_INTERVAL + PAGE_REFRESH + 8) * 1000)


# --- Page helpers ----------------------------------------------------------------------------------


def row(page: Page, device: SimDevice):
    return page.locator(f"[data-uuid='{device.uuid}']")


def badge(page: Page, device: SimDevice):
    return row(page, device).locator("[data-status]").first


def count(page: Page, slug: str):
    return page.locator(f"[data-status-count='{slug}']").first


def expect_badge(page: Page, device: SimDevice, slug: str, timeout: int | None = None) -> None:
    expect(badge(page, device)).to_have_attribute("data-status", slug, timeout=timeout)
    expect(badge(page, device)).to_contain_text(LABELS[slug])


def count_value(page: Page, slug: str) -> int:
    if page.locator(f"[data-status-count='{slug}']").count() == 0:
        return 0
    return int(re.sub(r"\D", "", count(page, slug).inner_text()) or 0)


def expect_count(page: Page, slug: str, n: int, timeout: int | None = None) -> None:
    expect(count(page, slug)).to_have_text(re.compile(rf"^\D*{n}\D*$"), timeout=timeout)


def row_uuids(page: Page) -> list[str]:
    return page.locator("tbody [data-uuid]").evaluate_all("rows => rows.map(r => r.dataset.uuid)")


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def mark_document(page: Page) -> None:
    """Tag the live document: if the page were reloaded, the tag would be gone."""
    page.evaluate("window.__e2eNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__e2eNoReload === true"), "the page was reloaded; it must update in place"


def assert_no_console_errors(page: Page, allow: str | None = None) -> None:
    """Script errors and CSP violations show up in the console; a journey must produce none."""
    errors = [e for e in page.console_errors if not (allow and re.search(allow, e))]
    # The browser asks every site for /favicon.ico on its own; the Django admin's pages declare
    # no icon, so that request 404s there. Not something the pages did.
    errors = [e for e in errors if not e.endswith("/favicon.ico]")]
    assert not errors, errors


def sweep_after(*, seconds_from_now: float) -> None:
    """Wait until the Celery sweep has completed a run that started after now + seconds.

    The sweep records each successful run in TaskRun("sweep"), with the time it evaluated
    ("now") in its details.
    """
    from datetime import datetime, timedelta

    from django.utils import timezone

    from devices.models import TaskRun

    moment = timezone.now() + timedelta(seconds=seconds_from_now)

    def swept() -> bool:
        run = TaskRun.objects.filter(name="sweep").first()
        evaluated = (run.details or {}).get("now") if run else None
        return bool(evaluated) and datetime.fromisoformat(evaluated) > moment

    wait_until(swept, timeout=seconds_from_now + 20, what="a sweep after the would-be deadline")


def online(world, fleet: str = "steady") -> SimDevice:
    """Fetches (heartbeat) and holds a tunnel: Online."""
    device = world.register(fleet)
    device.fetch()
    world.tunnel.connect(device)
    return device


def heartbeat_only(world, fleet: str = "steady") -> SimDevice:
    device = world.register(fleet)
    device.fetch()
    return device


def vpn_only(world) -> SimDevice:
    device = world.register("steady")
    world.tunnel.connect(device)
    return device


def offline(world) -> SimDevice:
    """Had a tunnel once, never fetched, tunnel gone: Offline at once (no deadline to wait for)."""
    device = world.register("steady")
    world.tunnel.connect(device)
    world.tunnel.disconnect(device)
    return device


# --- 1. Log in; correct badges; another organization's devices absent -------------------------------


def test_j1_login_badges_and_scoping(world, page: Page, login, shot):
    expected = {
        "online": online(world),
        "online-heartbeat-only": heartbeat_only(world),
        "online-vpn-only": vpn_only(world),
        "offline": offline(world),
        "configuring": world.register("steady"),
    }
    post = world.register("steady")
    post.report(provisioning_state="Post-Provisioning", provisioning_progress=40)
    expected["post-provisioning"] = post

    other_org, _ = make_org_with_user("contoso", "mallory")
    _, other_key = make_fleet(other_org, "robots")
    intruder = SimDevice.register(world.base_url, other_key)
    intruder.fetch()

    login()
    expect(page).to_have_url(re.compile(r"/devices/"))
    for slug, device in expected.items():
        expect_badge(page, device, slug)
    # Label, an icon whose shape differs per status, the footnote markers of the two partial
    # states, and the progress bar of a provisioning device.
    expect(badge(page, expected["online-heartbeat-only"])).to_contain_text("²")
    expect(badge(page, expected["online-vpn-only"])).to_contain_text("¹")
    shapes = {slug: badge(page, device).locator("svg").first.inner_html() for slug, device in expected.items()}
    assert len(set(shapes.values())) == len(shapes), shapes
    expect(badge(page, post).locator("progress")).to_have_attribute("value", "40")
    for slug in expected:
        expect_count(page, slug, 1)
    expect(page.locator("tbody [data-uuid]")).to_have_count(len(expected))

    # Contoso's device is nowhere: not in the table, not by name, not by search, not by URL.
    expect(row(page, intruder)).to_have_count(0)
    assert intruder.uuid[:7] not in page.content()
    page.goto(f"{world.base_url}/devices/?q={intruder.uuid[:10]}")
    expect(page.locator("tbody [data-uuid]")).to_have_count(0)
    for url in ("/devices/?fleet=robots", f"/devices/{intruder.uuid}/"):
        response = page.goto(world.base_url + url)
        assert response is not None and response.status == 404, (url, response and response.status)
        expect(row(page, intruder)).to_have_count(0)
    page.goto(f"{world.base_url}/devices/")
    expect_badge(page, expected["online"], "online")
    shot()
    # Only the two deliberate 404s above may show up in the console.
    assert_no_console_errors(page, allow=rf"status of 404 .*/devices/(\?fleet=robots|{intruder.uuid}/)\]$")


# --- 2. Filter by a count, sort by last seen, page forward, back restores the view ----------------


def test_j2_filter_sort_page_and_back(world, page: Page, login, shot):
    from devices.queries import PAGE_SIZE

    # Heartbeat Only devices, one page and a bit: three make contact one after the other (the
    # oldest "last seen"), then a page's worth at once; other statuses the filter must drop.
    early = world.register_many(3)
    for device in early:
        device.fetch()
    recent = world.provision_many(PAGE_SIZE)
    fetch_all(recent)
    others = [online(world), world.register("steady")]

    login()
    expect_count(page, "online-heartbeat-only", PAGE_SIZE + 3)
    count(page, "online-heartbeat-only").click()
    expect_url(page, r"[?&]status=online-heartbeat-only(&|$)")
    rows = page.locator("tbody [data-uuid]")
    expect(rows).to_have_count(PAGE_SIZE)
    expect(page.locator("tbody [data-uuid] [data-status]:not([data-status='online-heartbeat-only'])")).to_have_count(0)
    for device in others:
        expect(row(page, device)).to_have_count(0)

    # Sort by last seen with the column header; the URL carries the sort and keeps the filter.
    header = page.locator("thead").get_by_role("link", name=re.compile("last seen", re.I))
    header.click()
    expect_url(page, r"[?&]sort=-?last_seen(&|$)")
    if query(page)["sort"] == ["last_seen"]:  # ascending first: the three oldest lead
        expect(rows.first).to_have_attribute("data-uuid", early[0].uuid)
        assert row_uuids(page)[:3] == [d.uuid for d in early]
        header.click()
        expect_url(page, r"[?&]sort=-last_seen(&|$)")
    assert query(page)["status"] == ["online-heartbeat-only"]
    expect(rows).to_have_count(PAGE_SIZE)
    first_page = row_uuids(page)
    assert set(first_page) == {d.uuid for d in recent}
    seen = column_times(page, "last seen")
    assert seen == sorted(seen, reverse=True) and all(seen), seen
    sorted_url = page.url

    # Page forward: the rest, oldest last, still filtered and sorted.
    page.get_by_role("link", name=re.compile(r"^next", re.I)).click()
    expect_url(page, r"[?&]page=2(&|$)")
    expect(rows).to_have_count(3)
    assert row_uuids(page) == [d.uuid for d in reversed(early)]
    assert query(page)["status"] == ["online-heartbeat-only"] and query(page)["sort"] == ["-last_seen"]
    shot("page-2")

    # Back: the first page of the same filtered, sorted view.
    page.go_back()
    expect(page).to_have_url(sorted_url)
    expect(rows).to_have_count(PAGE_SIZE)
    assert row_uuids(page) == first_page
    shot()
    assert_no_console_errors(page)


def fetch_all(devices: list[SimDevice]) -> None:
    with ThreadPoolExecutor(max_workers=REGISTER_CONCURRENCY) as pool:
        list(pool.map(lambda d: d.fetch(), devices))


def expect_url(page: Page, pattern: str) -> None:
    """The URL changed to match, and the new document is parsed (plain links load whole pages)."""
    expect(page).to_have_url(re.compile(pattern))
    page.wait_for_load_state("domcontentloaded")


def column_times(page: Page, header: str) -> list[str | None]:
    """The machine-readable times (<time datetime>) of one column of the devices table, top down."""
    return page.locator("table:has(tbody [data-uuid])").first.evaluate(
        """(table, header) => {
            const i = [...table.tHead.rows[0].cells].findIndex(c => c.textContent.trim().toLowerCase().startsWith(header));
            return [...table.tBodies[0].rows].map(r => r.cells[i]?.querySelector('time')?.getAttribute('datetime') ?? null);
        }""",
        header,
    )


# --- 3. A device stops fetching: Offline without a reload, and the counts follow -----------------


def test_j3_silent_device_turns_offline_live(world, page: Page, login, shot):
    fading = world.register("fast")
    fading.start_polling(every=1)
    steady = heartbeat_only(world)  # a control: 10-minute window, must not change

    login()
    expect_badge(page, fading, "online-heartbeat-only")
    expect_count(page, "online-heartbeat-only", 2)
    assert count_value(page, "offline") == 0
    mark_document(page)

    fading.stop_polling()  # power cut: no more fetches
    expect_badge(page, fading, "offline", timeout=LIVE_TIMEOUT_MS)
    expect_count(page, "offline", 1)
    expect_count(page, "online-heartbeat-only", 1)
    expect_badge(page, steady, "online-heartbeat-only")
    assert_not_reloaded(page)
    shot()
    assert_no_console_errors(page)


# --- 4. The tunnel drops while the device keeps fetching: Heartbeat Only with ² and its footnote ---


def footnote(page: Page, marker: str):
    """The footnote explaining a marker: a paragraph that starts with it."""
    return page.locator("p").filter(has_text=re.compile(rf"^\s*{re.escape(marker)}"))


def test_j4_tunnel_drop_shows_heartbeat_only_with_footnote(world, page: Page, login, shot):
    device = world.register("fast")
    device.start_polling(every=1)
    world.tunnel.connect(device)

    login()
    expect_badge(page, device, "online")
    # The tab title carries the number of devices not Online: none yet.
    expect(page).to_have_title(re.compile(r"^Devices\b"))
    mark_document(page)

    world.tunnel.disconnect(device)  # e.g. a firewall starts dropping VPN traffic
    expect_badge(page, device, "online-heartbeat-only", timeout=LIVE_TIMEOUT_MS)
    expect(badge(page, device)).to_contain_text("²")
    expect(page).to_have_title(re.compile(r"^\(1\) Devices\b"))
    note = footnote(page, "²")
    expect(note).to_have_count(1)
    expect(note).to_be_visible()
    expect(note).to_contain_text("Online (Heartbeat Only)")
    expect(note).to_contain_text(re.compile(r"tunnel", re.I))
    # The marker is a way to the note: following it brings the note into view.
    page.set_viewport_size({"width": 1366, "height": 400})
    expect(note).not_to_be_in_viewport()
    badge(page, device).get_by_role("link", name="²").click()
    expect(note).to_be_in_viewport()
    page.set_viewport_size({"width": 1366, "height": 900})
    assert_not_reloaded(page)
    # It keeps fetching, so it is still Heartbeat Only (not Offline) once a sweep has run past the
    # moment its deadline would have passed had it stopped.
    sweep_after(seconds_from_now=FAST_POLL_INTERVAL * 1.5 + 0.5)
    page.reload()
    expect_badge(page, device, "online-heartbeat-only")
    expect(footnote(page, "²")).to_be_visible()
    shot()
    assert_no_console_errors(page)


# --- 5. Device Summary: why, history of the transitions just caused, uptime -------------------------


def test_j5_device_summary_why_history_uptime(world, page: Page, login, shot):
    device = world.register("fast")  # Configuring: registered, never connected
    device.start_polling(every=1)  # -> Online (Heartbeat Only)
    world.tunnel.connect(device)  # -> Online
    world.tunnel.disconnect(device)  # -> Online (Heartbeat Only)

    login(next_path=f"/devices/{device.uuid}/")
    expect(page).to_have_url(re.compile(rf"/devices/{device.uuid}/$"))
    expect_badge(page, device, "online-heartbeat-only")
    why = page.get_by_role("region", name=re.compile(r"^Why it is"))
    expect(why).to_contain_text("Online (Heartbeat Only)")
    # While it fetches: when it will turn Offline if nothing more arrives.
    expect(why).to_contain_text(re.compile(r"Turns Offline at"))
    mark_document(page)

    device.stop_polling()
    expect_badge(page, device, "offline", timeout=LIVE_TIMEOUT_MS)
    assert_not_reloaded(page)

    # Why, now: the rule that matched and each signal against its threshold.
    expect(why.get_by_role("heading", level=2)).to_have_text("Why it is Offline")
    expect(why).to_contain_text(re.compile(r"polling window", re.I))
    heartbeat_signal = why.get_by_role("row").filter(has_text=re.compile(r"Target-state fetch", re.I))
    expect(heartbeat_signal).to_contain_text(re.compile(r"Offline|expired", re.I))
    expect(heartbeat_signal).to_contain_text(re.compile(r"last fetch", re.I))
    expect(heartbeat_signal).to_contain_text(re.compile(rf"polls every {FAST_POLL_INTERVAL} s", re.I))
    tunnel_signal = why.get_by_role("row").filter(has_text=re.compile(r"tunnel", re.I)).first
    expect(tunnel_signal).to_contain_text(re.compile(r"not connected", re.I))

    # History, newest first: exactly the transitions this journey caused, each with how long it lasted.
    history = page.get_by_role("region", name="History").first
    expected = ["offline", "online-heartbeat-only", "online", "online-heartbeat-only", "configuring"]
    entries = history.locator("[data-to-status]")
    expect(entries).to_have_count(len(expected))
    assert entries.evaluate_all("els => els.map(e => e.dataset.toStatus)") == expected
    for entry, slug in zip(entries.all(), expected, strict=True):
        expect(entry).to_contain_text(LABELS[slug])
    expect(history.locator("tbody tr").first).to_contain_text("ongoing")

    # Uptime over three windows: the device is seconds old, so every window has the same data
    # (the rest is no data, not uptime); Online and the partial states are counted apart.
    uptime = page.get_by_role("region", name="Uptime")
    shares = {}
    for window in ("24 h", "7 d", "30 d"):
        card = uptime.locator(f"[data-window='{window}']")
        expect(card).to_be_visible()
        shares[window] = {
            part: percent(card.locator(f"[data-uptime='{part}']")) for part in ("online", "partial", "other")
        }
        expect(card.locator("[data-uptime='nodata']")).to_be_visible()
    day = shares["24 h"]
    assert day["online"] > 0 and day["partial"] > 0 and day["other"] > 0, shares
    assert abs(sum(day.values()) - 100) <= 0.2, shares
    assert shares["7 d"] == day and shares["30 d"] == day, shares
    shot()
    assert_no_console_errors(page)


def percent(locator) -> float:
    text = locator.inner_text()
    match = re.search(r"(\d+(?:\.\d+)?)\s?%", text)
    assert match, f"no percentage in {text!r}"
    return float(match.group(1))


# --- 6. Fleets page: stacked bar and counts; a count leads to the filtered Devices page -------------


def test_j6_fleets_bar_and_count_link(world, page: Page, login, shot):
    steady_online = [online(world) for _ in range(2)]
    steady_hb = [heartbeat_only(world) for _ in range(3)]
    fast = [world.register("fast") for _ in range(2)]  # Configuring
    login(next_path="/fleets/")
    expect(page).to_have_url(re.compile(r"/fleets/$"))

    signage = page.locator(f"[data-fleet='{world.steady_fleet.slug}']")
    kiosks = page.locator(f"[data-fleet='{world.fast_fleet.slug}']")
    expect(signage).to_contain_text(world.steady_fleet.name)
    expect(kiosks).to_contain_text(world.fast_fleet.name)
    expect(signage.locator("[data-fleet-total]")).to_have_text("5")
    expect(kiosks.locator("[data-fleet-total]")).to_have_text("2")
    expect(signage.locator("[data-status-count='online']")).to_have_text("2")
    expect(signage.locator("[data-status-count='online-heartbeat-only']")).to_have_text("3")
    expect(signage.locator("[data-status-count]")).to_have_count(2)
    expect(kiosks.locator("[data-status-count='configuring']")).to_have_text("2")
    expect(kiosks.locator("[data-status-count]")).to_have_count(1)

    # The stacked bar: one segment per status present, lengths in proportion (2 : 3).
    segments = signage.locator(".stackbar .stackbar__seg")
    expect(segments).to_have_count(2)
    widths = segments.evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert min(widths) > 0 and abs(max(widths) / min(widths) - 1.5) < 0.1, widths
    shot()

    signage.locator("[data-status-count='online-heartbeat-only']").click()
    expect(page).to_have_url(re.compile(r"/devices/\?"))
    assert query(page).get("status") == ["online-heartbeat-only"]
    assert query(page).get("fleet", [""])[0].split("/")[-1] == world.steady_fleet.slug
    rows = page.locator("tbody [data-uuid]")
    expect(rows).to_have_count(len(steady_hb))
    assert sorted(row_uuids(page)) == sorted(d.uuid for d in steady_hb)
    for device in steady_online + fast:
        expect(row(page, device)).to_have_count(0)
    shot("devices")
    assert_no_console_errors(page)


# --- 7. Admin: deactivate an Offline device; an Online one is refused with a message ---------------


def test_j7_admin_deactivate(world, page: Page, login, shot):
    gone = offline(world)
    alive = online(world)
    # Staff, and a member of the organization, so the same login can look at the dashboard after.
    make_user(world.org, "root", staff=True, role="member")
    gone_name, alive_name = _device_names(gone, alive)

    login("root", next_path="/admin/devices/device/")
    expect(page).to_have_url(re.compile(r"/admin/devices/device/"))

    def deactivate(device_name: str) -> None:
        page.locator("#result_list tbody tr", has_text=device_name).locator("input[name='_selected_action']").check()
        page.locator("select[name='action']").select_option("deactivate")
        page.get_by_role("button", name="Go").click()

    deactivate(gone_name)
    expect(page.locator(".messagelist .success")).to_contain_text("Deactivated 1 device")
    expect(page.locator("#result_list tbody tr", has_text=gone_name).locator("[data-status]")).to_have_attribute(
        "data-status", "inactive"
    )
    deactivate(alive_name)
    refusal = page.locator(".messagelist .warning")
    expect(refusal).to_contain_text(alive_name)
    expect(refusal).to_contain_text(re.compile(r"only an Offline device can be deactivated", re.I))
    expect(page.locator(".messagelist .success")).to_have_count(0)
    shot("admin")

    page.goto(f"{world.base_url}/devices/")
    expect_badge(page, gone, "inactive")
    expect_badge(page, alive, "online")
    shot()
    assert_no_console_errors(page)


def _device_names(*devices: SimDevice) -> list[str]:
    from devices.models import Device

    by_uuid = dict(Device.objects.filter(uuid__in=[d.uuid for d in devices]).values_list("uuid", "name"))
    return [by_uuid[d.uuid] for d in devices]


# --- 8. CSV export downloads exactly the filtered rows ---------------------------------------------


def test_j8_csv_export_of_filtered_view(world, page: Page, login, shot):
    wanted = [heartbeat_only(world) for _ in range(3)]
    unwanted = [online(world), offline(world), world.register("steady")]
    login()
    count(page, "online-heartbeat-only").click()
    expect(page).to_have_url(re.compile(r"[?&]status=online-heartbeat-only(&|$)"))
    expect(page.locator("tbody [data-uuid]")).to_have_count(len(wanted))
    on_screen = row_uuids(page)
    shot()

    export = page.get_by_role("link", name=re.compile(r"export csv", re.I))
    expect(export).to_have_attribute("href", re.compile(r"[?&]status=online-heartbeat-only(&|$)"))
    with page.expect_download() as info:
        export.click()
    download = info.value
    assert download.failure() is None, download.failure()
    assert download.suggested_filename.endswith(".csv"), download.suggested_filename
    with open(download.path(), encoding="utf-8-sig", newline="") as f:
        exported = list(csv.DictReader(f))
    # Exactly the rows of the view, in the view's order, and nothing of the other statuses.
    assert [r["uuid"] for r in exported] == on_screen
    assert {r["status"] for r in exported} == {"online-heartbeat-only"}
    assert sorted(on_screen) == sorted(d.uuid for d in wanted)
    assert not {d.uuid for d in unwanted} & {r["uuid"] for r in exported}
    assert_no_console_errors(page)


# --- 9. Tag devices in the admin and filter the Devices page by tag ----------------------------------


def test_j9_tag_devices_and_filter(world, page: Page, login, shot):
    from django.core.management import call_command

    gate_a, gate_b, lobby = world.provision_many(3)
    make_user(world.org, "root", staff=True, role="member")
    names = _device_names(gate_a, gate_b, lobby)

    login("root", next_path="/admin/devices/device/")
    for name in names[:2]:
        page.locator("#result_list tbody tr", has_text=name).locator("input[name='_selected_action']").check()
    page.locator("select[name='action']").select_option("tag_devices")
    page.get_by_role("button", name="Go").click()
    page.locator("input[name='tag']").fill("location=gate-b")
    page.get_by_role("button", name="Tag 2 devices").click()
    expect(page.locator(".messagelist .success")).to_contain_text("Set location=gate-b on 2 devices")
    # The command, as an operator's script would: one of the gate devices is also acme's.
    call_command("tag_devices", world.org.slug, "customer=acme", gate_a.uuid, lobby.uuid)

    page.goto(f"{world.base_url}/devices/")
    expect(page.locator("tbody [data-uuid]")).to_have_count(3)
    row(page, gate_a).get_by_role("link", name="location=gate-b").click()
    expect(page).to_have_url(re.compile(r"[?&]tag=location%3Agate-b(&|$)"))
    expect(page.locator("tbody [data-uuid]")).to_have_count(2)
    assert sorted(row_uuids(page)) == sorted([gate_a.uuid, gate_b.uuid])

    # A second tag narrows further (AND); the search form keeps both tags.
    page.goto(f"{world.base_url}/devices/?tag=location:gate-b&tag=customer:acme")
    expect(page.locator("tbody [data-uuid]")).to_have_count(1)
    assert row_uuids(page) == [gate_a.uuid]
    expect(page.locator("#devices-summary")).to_contain_text("tagged location=gate-b and customer=acme")
    expect(row(page, gate_a).locator(".col-tags")).to_contain_text("customer=acme")
    shot()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody [data-uuid]")).to_have_count(1)
    assert parse_qs(urlsplit(page.url).query)["tag"] == ["location:gate-b", "customer:acme"]


# --- 10. Saved views: save the current view, open it from the menu, delete it --------------------------


def views_menu(page: Page):
    return page.locator("[data-saved-views]")


def open_views_menu(page: Page):
    menu = views_menu(page)
    if menu.get_attribute("open") is None:
        menu.locator("summary").click()
    return menu


def test_j10_save_open_and_delete_a_view(world, page: Page, login, shot):
    partial = [heartbeat_only(world) for _ in range(3)]
    others = [online(world), world.register("steady")]
    view_url = f"/devices/?status=online-heartbeat-only&fleet={world.steady_fleet.slug}&sort=-name"
    login(next_path=view_url.replace("&", "%26").replace("?", "%3F"))
    expect(page.locator("tbody [data-uuid]")).to_have_count(len(partial))
    original = row_uuids(page)

    menu = open_views_menu(page)
    expect(menu).to_contain_text("No saved views yet")
    menu.get_by_label("Save this view as").fill("Partial signage")
    menu.get_by_label("Share with the organization").check()
    shot("open-menu")
    menu.get_by_role("button", name="Save view").click()
    # Saved, and shown again: the stored query is the validated one of the URL.
    expect_url(page, r"[?&]status=online-heartbeat-only(&|$)")
    assert query(page)["sort"] == ["-name"] and query(page)["fleet"] == [world.steady_fleet.slug]

    # From the plain Devices page, the menu's link opens the same devices in the same order.
    page.goto(f"{world.base_url}/devices/")
    expect(page.locator("tbody [data-uuid]")).to_have_count(len(partial) + len(others))
    menu = open_views_menu(page)
    link = menu.get_by_role("link", name="Partial signage")
    expect(link).to_be_visible()
    expect(menu).to_contain_text("shared")
    link.click()
    expect_url(page, r"[?&]status=online-heartbeat-only(&|$)")
    expect(page.locator("tbody [data-uuid]")).to_have_count(len(partial))
    assert row_uuids(page) == original
    shot()

    # Delete it: the menu is empty again and the view's URL still works on its own.
    menu = open_views_menu(page)
    menu.get_by_role("button", name="Delete Partial signage").click()
    expect(page).to_have_url(re.compile(r"/devices/$"))
    menu = open_views_menu(page)
    expect(menu.get_by_role("link", name="Partial signage")).to_have_count(0)
    expect(menu).to_contain_text("No saved views yet")
    assert_no_console_errors(page)


# --- 11. Fleet page: counts now, the chart over a range, hovering a column -----------------------------


def test_j11_fleet_page_range_and_chart_hover(world, page: Page, login, shot):
    steady_online = [online(world) for _ in range(2)]
    heartbeat_only(world)
    login(next_path="/fleets/")
    card = page.locator(f"[data-fleet='{world.steady_fleet.slug}']")
    expect(card.locator("[data-fleet-total]")).to_have_text("3")
    card.get_by_role("link", name="Status over time").click()
    expect(page).to_have_url(re.compile(rf"/fleets/{world.org.slug}/{world.steady_fleet.slug}/$"))
    expect(page.locator("[data-status-count='online']").first).to_have_text(str(len(steady_online)))
    expect(page.locator("[data-status-count='online-heartbeat-only']").first).to_have_text("1")
    expect(page.locator("svg[data-chart='24h']")).to_be_visible()

    # The range switch: a link, so the URL says what is shown.
    page.locator("[data-range='7d']").click()
    expect_url(page, r"[?&]range=7d(&|$)")
    chart = page.locator("svg[data-chart='7d']")
    expect(chart).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile(r"over the last 7 days"))).to_be_visible()

    # Hovering the newest column: its title gives the time and the counts now.
    newest = chart.locator("rect.chart__hit").last
    newest.hover()
    title = newest.locator("title").text_content() or ""
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", title) and "Online 2" in title, title
    # The same numbers as a table, for screen readers and without JavaScript.
    page.get_by_text("The chart's numbers as a table").click()
    last_row = page.locator(".chart__table tbody tr").last
    expect(last_row).to_contain_text("2")
    shot()
    assert_no_console_errors(page)


# --- 12. The status strip on a Device Summary --------------------------------------------------------


def test_j12_status_strip_on_a_summary(world, page: Page, login, shot):
    from datetime import timedelta

    from django.utils import timezone

    from devices.models import StatusTransition

    device = world.register("steady")  # Configuring
    device.fetch()  # -> Online (Heartbeat Only)
    world.tunnel.connect(device)  # -> Online
    wait_until(
        lambda: StatusTransition.objects.filter(device__uuid=device.uuid).count() == 3, timeout=10, what="3 transitions"
    )
    # Seconds-long statuses would be one "several changes" sliver: the journey moves them hours back.
    now = timezone.now()
    transitions = StatusTransition.objects.filter(device__uuid=device.uuid).order_by("at", "id")
    for transition, hours in zip(transitions, (10, 6, 3), strict=True):
        StatusTransition.objects.filter(pk=transition.pk).update(at=now - timedelta(hours=hours))
    login(next_path=f"/devices/{device.uuid}/")
    expect_badge(page, device, "online")
    for key in ("24h", "7d"):
        strip = page.locator(f"[data-strip='{key}']")
        expect(strip).to_be_visible()
        # No data before the device existed, then each status in order, Online last (now).
        statuses = strip.locator(".strip__seg").evaluate_all("els => els.map(e => e.dataset.status)")
        assert statuses == ["nodata", "configuring", "online-heartbeat-only", "online"], (key, statuses)
    newest = page.locator("[data-strip='24h'] .strip__seg").last
    newest.focus()
    expect(newest).to_be_focused()
    title = newest.get_attribute("title") or ""
    assert re.match(r"Online from \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC for ", title), title
    newest.hover()
    shot()
    assert_no_console_errors(page)


# --- 13. Columns: the default fits 1,280 px; a user's choice follows the table and survives a reload -----


def table_overflow(page: Page) -> dict[str, int]:
    """The devices table's region: its content's width against its visible width (no horizontal
    scrolling when scroll <= client), and the window's."""
    return page.locator(".table-wrap").first.evaluate(
        "w => ({scroll: w.scrollWidth, client: w.clientWidth, window: document.documentElement.clientWidth,"
        " page: document.documentElement.scrollWidth})"
    )


def header_keys(page: Page) -> list[str]:
    return page.locator("thead th").evaluate_all("ths => ths.map(th => th.className.replace('col-', ''))")


def test_j13_columns_fit_1280_and_a_choice_is_kept(world, page: Page, login, shot):
    from devices import services
    from devices.models import Device
    from devices.queries import COLUMNS, DEFAULT_COLUMNS

    # Content that makes a table wide: a long name, a long fleet name, several long tags, a device
    # reporting OS and release, the widest badge (Heartbeat Only) and a tunnel that went down.
    wide = heartbeat_only(world)
    wide.report(
        os_version="balenaOS 6.0.13+rev2",
        apps={"a1b2c3": {"release_uuid": "8f3e2b1deadbeef"}},
        ip_address="10.0.3.17 192.168.1.4",
    )
    services.update_device(
        Device.objects.get(uuid=wide.uuid), {"name": "warehouse-north-dock-robot-0017-b"}, reason="e2e"
    )
    world.steady_fleet.name = "Northern distribution centre signage"
    world.steady_fleet.save(update_fields=["name"])
    tagged = Device.objects.filter(uuid=wide.uuid)
    for key, value in (("site", "rotterdam-harbour-terminal-4"), ("owner", "logistics-operations"), ("ring", "canary")):
        services.set_tag(tagged, key, value)
    others = [online(world), offline(world), vpn_only(world)]

    page.set_viewport_size({"width": 1280, "height": 900})
    login()
    expect(page.locator("tbody [data-uuid]")).to_have_count(1 + len(others))
    default = [k for k in COLUMNS if k in ("name", "status", *DEFAULT_COLUMNS)]
    assert header_keys(page) == default
    expect(row(page, wide).locator(".col-tags")).to_contain_text("site=rotterdam-harbour-terminal-4")
    sizes = table_overflow(page)
    assert sizes["scroll"] <= sizes["client"], sizes  # no horizontal scrolling in the table
    assert sizes["page"] <= sizes["window"], sizes  # nor of the page
    shot("1280")

    # Choose: add UUID and IP address, drop Tags; keep them as the user's own.
    menu = page.locator("[data-columns-menu]")
    menu.locator("summary").click()
    menu.get_by_label("UUID").check()
    menu.get_by_label("IP address").check()
    menu.get_by_label("Tags").uncheck()
    menu.get_by_role("button", name="Keep as my columns").click()
    expect(page).to_have_url(re.compile(r"/devices/$"))
    chosen = [k for k in COLUMNS if k in ("name", "status", "uuid", "ip", *DEFAULT_COLUMNS) and k != "tags"]
    expect(page.locator("thead th.col-ip")).to_have_count(1)
    assert header_keys(page) == chosen
    expect(row(page, wide).locator(".col-ip")).to_contain_text("10.0.3.17")
    expect(row(page, wide).locator(".col-uuid")).to_have_text(wide.uuid[:7])
    expect(page.locator("tbody .col-tags")).to_have_count(0)

    # The htmx refresh (same URL, same fragment) keeps them, without reloading the page.
    mark_document(page)
    as_of = page.locator(".asof time").inner_text()
    expect(page.locator(".asof time")).not_to_have_text(as_of, timeout=(PAGE_REFRESH + 10) * 1000)
    assert_not_reloaded(page)
    assert header_keys(page) == chosen

    # A reload (a new visit) shows the user's columns, and the chooser ticks them.
    page.reload()
    expect(page.locator("thead th.col-ip")).to_have_count(1)
    assert header_keys(page) == chosen
    page.locator("[data-columns-menu] summary").click()
    expect(page.locator("[data-columns-menu]").get_by_label("Tags")).not_to_be_checked()
    expect(page.locator("[data-columns-menu]").get_by_label("IP address")).to_be_checked()
    sizes = table_overflow(page)
    assert sizes["scroll"] <= sizes["client"], sizes
    shot()

    # For this view only: the URL names the columns; the user's own are untouched.
    page.locator("[data-columns-menu]").get_by_label("Device type").check()
    page.locator("[data-columns-menu]").get_by_role("button", name="This view only").click()
    expect_url(page, r"[?&]cols=")
    assert "device_type" in query(page)["cols"][0].split(",")
    expect(page.locator("thead th.col-device_type")).to_have_count(1)
    page.goto(f"{world.base_url}/devices/")
    expect(page.locator("thead th.col-ip")).to_have_count(1)
    assert header_keys(page) == chosen
    assert_no_console_errors(page)
