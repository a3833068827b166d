"""The read API (/api/v1/): every endpoint, tokens (page, command, auth), throttling, query counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, transaction
from django.http import QueryDict
from django.test import Client
from django.utils import timezone

from devices import services
from devices.status import Status
from readapi.models import ApiToken
from readapi.queries import keyset_rows, read_cursor, strict_device_query
from readapi.views import LIST_FIELDS
from tests.dashboard_helpers import device_in, one_of_each

pytestmark = pytest.mark.django_db

# The index each sort reads (devices/models.py, migrations 0002-0006).
SORT_INDEXES = {
    "name": "dev_org_name",
    "status": "dev_org_status_name",
    "last_seen": "dev_org_last_seen",
    "device_type": "dev_org_device_type_name",
    "os": "dev_org_os_name",
    "release": "dev_org_release",
    "ip": "dev_org_ip",
    "heartbeat": "dev_org_heartbeat_name",
    "cloudlink": "dev_org_vpn_name",
    "uuid": "devices_device_uuid_key",
    "fleet": "fleet_org_name",
}


@pytest.fixture(autouse=True)
def _no_throttle(settings):
    # Throttling has its own tests below; elsewhere a burst of test requests must not trip it.
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 0


@pytest.fixture
def token(owner) -> str:
    return ApiToken.issue(owner, "tests")[1]


@pytest.fixture
def api(token) -> Client:
    return Client(headers={"Authorization": f"Bearer {token}"})


def get(client: Client, url: str, params=None, status: int = 200) -> dict:
    response = client.get(url, params or {})
    assert response.status_code == status, (url, params, response.status_code, response.content[:400])
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


# --- /api/v1/devices -------------------------------------------------------------------------------


def test_device_list_fields_counts_and_next(api, make_device, fleet):
    devices = one_of_each(make_device)
    body = get(api, "/api/v1/devices")
    assert body["count"] == len(Status) and body["next"] is None
    assert body["counts"] == {s.value: 1 for s in Status}
    first = body["results"][0]
    assert set(first) == {
        "tags",
        "uuid",
        "name",
        "organization",
        "fleet",
        "device_type",
        "status",
        "status_changed_at",
        "last_seen",
        "heartbeat",
        "cloudlink",
        "os_version",
        "release",
        "ip_addresses",
    }
    by_uuid = {r["uuid"]: r for r in body["results"]}
    online = by_uuid[devices["online"].uuid]
    assert online["status"] == "online" and online["heartbeat"] == "online" and online["cloudlink"] is True
    assert online["organization"] == "northwind" and online["last_seen"].endswith("Z")
    assert by_uuid[devices["configuring"].uuid]["heartbeat"] == "never"
    assert [r["name"] for r in body["results"]] == sorted(r["name"] for r in body["results"])


def test_status_filter_is_repeatable_and_count_is_the_filtered_set(api, make_device):
    one_of_each(make_device)
    body = get(api, "/api/v1/devices?status=offline&status=online")
    assert {r["status"] for r in body["results"]} == {"offline", "online"}
    assert body["count"] == 2
    # As on the page, the counts keep every filter but the status one.
    assert sum(body["counts"].values()) == len(Status)


def test_ip_addresses_are_a_list(api, make_device):
    make_device(name="two-ips", ip_address="10.0.0.2 192.168.1.9")
    assert get(api, "/api/v1/devices")["results"][0]["ip_addresses"] == ["10.0.0.2", "192.168.1.9"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("status=broken", "broken"),
        ("status=online&status=nope", "nope"),
        ("sort=colour", "colour"),
        ("fleet=no%20spaces", "no spaces"),
        ("fleet=a&fleet=b", "fleet"),
        ("q=" + "x" * 101, "100"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "ten"),
        ("page=2", "page"),
        ("cursor=forged", "forged"),
        ("q=a%00b", "NUL"),
    ],
)
def test_bad_values_are_400_naming_them_and_never_guessed(api, make_device, query, named):
    make_device(name="a")
    body = get(api, f"/api/v1/devices?{query}", status=400)
    assert named in body["error"]


def test_cursor_of_another_sort_is_refused(api, make_device):
    for i in range(3):
        make_device(name=f"d{i}")
    cursor = get(api, "/api/v1/devices", {"limit": 1})["next"].split("cursor=")[1]
    body = get(api, f"/api/v1/devices?limit=1&sort=-name&cursor={cursor}", status=400)
    assert "sort=name" in body["error"]


def test_limit_and_next_walk_every_device_once(api, make_device):
    for i in range(7):
        make_device(name=f"d{i}")
    seen, url = [], "/api/v1/devices?limit=3&sort=-name"
    while url:
        body = get(api, url)
        assert len(body["results"]) <= 3 and body["count"] == 7
        seen += [r["name"] for r in body["results"]]
        url = body["next"]
    assert seen == [f"d{i}" for i in reversed(range(7))]


def test_another_organizations_fleet_is_404_unknown_fleet_too(api, make_device, other_fleet):
    make_device(name="a")
    assert "robots" in get(api, "/api/v1/devices?fleet=robots", status=404)["error"]
    get(api, "/api/v1/devices?fleet=contoso/robots", status=404)
    get(api, "/api/v1/devices?fleet=kiosks", status=200)


def test_unknown_api_path_and_wrong_method_are_json(api):
    assert get(api, "/api/v1/nothing", status=404)["error"].startswith("No such endpoint")
    response = api.post("/api/v1/devices")
    assert response.status_code == 405 and json.loads(response.content)["error"]


# --- /api/v1/devices/<uuid> and history ------------------------------------------------------------------


def test_device_detail_explains_the_status(api, make_device):
    device = device_in(make_device, "online", name="kiosk-7")
    body = get(api, f"/api/v1/devices/{device.uuid.upper()}")
    assert body["uuid"] == device.uuid and body["status"] == "online"
    why = body["why"]
    assert why["rule"] == 10 and why["computed_status"] == "online"
    assert why["after_deadline"] == "online-vpn-only"
    deadline = datetime.fromisoformat(why["heartbeat_deadline"])
    assert deadline == device.heartbeat_deadline
    names = [s["name"] for s in why["signals"]]
    assert "Target-state fetch (heartbeat)" in names and "Cloudlink tunnel" in names
    heartbeat = next(s for s in why["signals"] if s["name"].startswith("Target-state"))
    assert heartbeat["ok"] is True and heartbeat["times"]["deadline"]


def test_device_detail_of_offline_device(api, make_device):
    device = device_in(make_device, "offline")
    why = get(api, f"/api/v1/devices/{device.uuid}")["why"]
    assert why["rule"] == 5 and why["after_deadline"] is None and why["heartbeat_deadline"] is None


@pytest.mark.parametrize("path", ["", "/history"])
def test_unknown_or_malformed_uuid_is_404(api, path):
    get(api, f"/api/v1/devices/{'0' * 32}{path}", status=404)
    get(api, f"/api/v1/devices/not-a-uuid%00{path}", status=404)


def test_history_newest_first_with_lasted_cursor_and_since(api, make_device):
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    device = make_device(name="h", at=start)
    statuses = ["online", "offline", "online", "offline", "online"]
    for i, status in enumerate(statuses, start=1):
        from tests.dashboard_helpers import signals_for

        services.update_device(
            device, signals_for(status, start + timedelta(hours=i)), reason=f"step {i}", at=start + timedelta(hours=i)
        )
    with time_machine.travel(start + timedelta(hours=10), tick=False):
        body = get(api, f"/api/v1/devices/{device.uuid}/history", {"limit": 2})
        assert [r["to"] for r in body["results"]] == ["online", "offline"]
        assert body["results"][0]["ongoing"] is True and body["results"][0]["lasted_seconds"] == 5 * 3600
        assert body["results"][1]["lasted_seconds"] == 3600 and body["results"][1]["reason"] == "step 4"
        rest = []
        url = body["next"]
        while url:
            page = get(api, url)
            rest += page["results"]
            url = page["next"]
        assert [r["to"] for r in rest] == ["online", "offline", "online", "configuring"]
        assert rest[-1]["from"] is None and rest[0]["ongoing"] is False
        since = get(api, f"/api/v1/devices/{device.uuid}/history", {"since": "2026-03-01T15:00:00Z"})
        assert [r["at"] for r in since["results"]] == [
            "2026-03-01T17:00:00Z",
            "2026-03-01T16:00:00Z",
            "2026-03-01T15:00:00Z",
        ]
        assert since["next"] is None
        get(api, f"/api/v1/devices/{device.uuid}/history", {"since": "yesterday"}, status=400)
        get(api, f"/api/v1/devices/{device.uuid}/history", {"cursor": "x"}, status=400)


def test_history_cursor_of_another_device_is_refused(api, make_device):
    a, b = make_device(name="a"), make_device(name="b")
    for device in (a, b):
        services.update_device(device, {"is_active": False}, reason="off")
    cursor = get(api, f"/api/v1/devices/{a.uuid}/history", {"limit": 1})["next"].split("cursor=")[1]
    get(api, f"/api/v1/devices/{b.uuid}/history?cursor={cursor}", status=400)


# --- /api/v1/fleets --------------------------------------------------------------------------------


def test_fleets_counts_and_allowance(api, make_device, make_fleet, org, owner_client):
    one_of_each(make_device)
    empty, _ = make_fleet(org, "empty")
    org.device_allowance = 3
    org.save()
    body = get(api, "/api/v1/fleets")
    fleets = {f["slug"]: f for f in body["fleets"]}
    assert fleets["empty"]["total"] == 0 and set(fleets["empty"]["counts"].values()) == {0}
    assert sum(f["total"] for f in body["fleets"]) == len(Status)
    (northwind,) = body["organizations"]
    assert northwind["total"] == len(Status) and northwind["active"] == len(Status) - 1
    assert northwind["frozen"] == 1 and northwind["device_allowance"] == 3 and northwind["over_allowance"] is True


# --- Tokens ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "required"),
        ("Basic abc", "Malformed"),
        ("Bearer ", "Malformed"),
        ("Bearer fsr_" + "0" * 63, "Malformed"),
        ("Bearer fsr_" + "0" * 64, "Unknown"),
    ],
)
def test_missing_malformed_or_unknown_token_is_401_json(db, header, message):
    client = Client(headers={"Authorization": header} if header else {})
    for url in ("/api/v1/devices", "/api/v1/fleets", f"/api/v1/devices/{'a' * 32}"):
        body = get(client, url, status=401)
        assert message in body["error"]


def test_revoked_token_and_inactive_user_are_401(api, token, owner):
    get(api, "/api/v1/devices")
    ApiToken.objects.get(user=owner).revoke(timezone.now())
    assert "revoked" in get(api, "/api/v1/devices", status=401)["error"]
    _, fresh = ApiToken.issue(owner, "second")
    owner.is_active = False
    owner.save()
    get(Client(headers={"Authorization": f"Bearer {fresh}"}), "/api/v1/devices", status=401)


def test_session_login_does_not_authenticate_the_api(owner_client):
    get(owner_client, "/api/v1/devices", status=401)


def test_only_the_hash_is_stored_and_last_used_is_written_once_a_minute(api, token, owner, django_assert_num_queries):
    stored = ApiToken.objects.get(user=owner)
    assert token not in json.dumps(list(ApiToken.objects.values()), default=str)
    assert stored.prefix == token[:10] and stored.read_only and stored.last_used_at is None
    start = datetime(2026, 5, 1, 9, tzinfo=UTC)
    with time_machine.travel(start, tick=False):
        get(api, "/api/v1/fleets")
        assert ApiToken.objects.get(pk=stored.pk).last_used_at == start
        # Token, organizations, fleets, counts: no write for a token used within the minute.
        with django_assert_num_queries(4):
            get(api, "/api/v1/fleets")
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        get(api, "/api/v1/fleets")
        assert ApiToken.objects.get(pk=stored.pk).last_used_at == start + timedelta(seconds=61)


def test_tokens_page_creates_shows_once_lists_and_revokes(owner_client, owner, other_user):
    page = owner_client.get("/api-tokens/")
    assert page.status_code == 200 and "no API tokens yet" in page.content.decode()
    response = owner_client.post("/api-tokens/", {"name": "grafana <b>"})
    html = response.content.decode()
    token = ApiToken.objects.get(user=owner)
    plain = html.split('<code class="token-secret">')[1].split("</code>")[0]
    assert plain.startswith("fsr_") and len(plain) == 68
    assert "grafana &lt;b&gt;" in html and "<b>" not in html.split("<main")[1]
    get(Client(headers={"Authorization": f"Bearer {plain}"}), "/api/v1/devices")
    again = owner_client.get("/api-tokens/").content.decode()
    assert plain not in again and token.prefix in again and "Never" not in again
    # Another user's token id is a 404, and their page does not list it.
    other = Client()
    other.force_login(other_user)
    assert other.post(f"/api-tokens/{token.pk}/revoke").status_code == 404
    assert token.prefix not in other.get("/api-tokens/").content.decode()
    assert owner_client.get(f"/api-tokens/{token.pk}/revoke").status_code == 405
    assert owner_client.post(f"/api-tokens/{token.pk}/revoke").status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    get(Client(headers={"Authorization": f"Bearer {plain}"}), "/api/v1/devices", status=401)


def test_tokens_page_needs_login_and_a_name(anon_client, owner_client):
    assert anon_client.get("/api-tokens/").status_code == 302
    assert owner_client.post("/api-tokens/", {"name": "  "}).status_code == 400
    assert not ApiToken.objects.exists()


def test_create_api_token_command_prints_the_token_last(owner, capsys):
    call_command("create_api_token", "olivia", "--name", "ci")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    token = ApiToken.objects.get(user=owner)
    assert token.name == "ci" and last.startswith("fsr_") and token.prefix == last[:10]
    get(Client(headers={"Authorization": f"Bearer {last}"}), "/api/v1/fleets")


def test_create_api_token_command_refuses_unknown_user(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user"):
        call_command("create_api_token", "nobody")


# --- Throttling --------------------------------------------------------------------------------------------


def test_throttle_429_with_retry_after_shared_through_the_cache(api, token, owner, settings):
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 5
    settings.FLEETSTATUS_API_THROTTLE_SECONDS = 10
    with time_machine.travel(datetime(2031, 1, 1, 0, 0, 3, tzinfo=UTC), tick=False):
        for _ in range(5):
            get(api, "/api/v1/fleets")
        response = api.get("/api/v1/fleets")
        assert response.status_code == 429 and response["Retry-After"] == "7"
        assert "retry in 7 s" in json.loads(response.content)["error"]
        # Another token of the same user has its own budget; a second client of this token shares it.
        get(Client(headers={"Authorization": f"Bearer {ApiToken.issue(owner, 'b')[1]}"}), "/api/v1/fleets")
        assert Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/fleets").status_code == 429
    with time_machine.travel(datetime(2031, 1, 1, 0, 0, 10, tzinfo=UTC), tick=False):
        get(api, "/api/v1/fleets")


# --- Cost -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 30])
def test_query_counts_do_not_grow_with_devices(api, make_device, django_assert_num_queries, n):
    for i in range(n):
        make_device(name=f"d{i:02}")
    get(api, "/api/v1/devices")  # last_used_at written once
    # token, organizations, page, counts, the page's tags (one query)
    with django_assert_num_queries(5):
        body = get(api, "/api/v1/devices", {"limit": 2, "status": "configuring"})
    with django_assert_num_queries(5):
        get(api, body["next"])
    # token, organizations, fleet, page, counts, tags
    with django_assert_num_queries(6):
        get(api, "/api/v1/devices", {"fleet": "kiosks", "sort": "-last_seen"})
    device = make_device(name="x")
    get(api, f"/api/v1/devices/{device.uuid}")
    # token, organizations, device, tags
    with django_assert_num_queries(4):
        get(api, f"/api/v1/devices/{device.uuid}")
    with django_assert_num_queries(4):
        get(api, f"/api/v1/devices/{device.uuid}/history")


def test_openapi_document_is_public_json(client):
    body = get(client, "/api/v1/openapi.json")
    assert set(body["paths"]) == {
        "/api/v1/devices",
        "/api/v1/devices/{uuid}",
        "/api/v1/devices/{uuid}/history",
        "/api/v1/fleets",
    }


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
@pytest.mark.parametrize(
    "sort",
    [
        "name",
        "-name",
        "status",
        "last_seen",
        "-last_seen",
        "device_type",
        "-os",
        "release",
        "ip",
        "heartbeat",
        "cloudlink",
        "uuid",
        "fleet",
    ],
)
def test_pages_after_a_cursor_read_an_index_range(api, org, make_device, sort):
    """With sequential scans and sorts priced out, the page after a cursor still has a plan: the
    sort's index, entered at the cursor (as tests/test_device_indexes.py checks for the page)."""
    for i in range(3):
        make_device(name=f"d{i}")
    cursor = unquote(get(api, "/api/v1/devices", {"limit": 1, "sort": sort})["next"].split("cursor=")[1])
    query = strict_device_query(QueryDict(f"sort={sort}"), [org])
    rows = keyset_rows([org], query, read_cursor(cursor, query)).values(*LIST_FIELDS)[:100]
    sql, params = rows.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cur:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            cur.execute(f"SET LOCAL {setting} = off")
        cur.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(r[0] for r in cur.fetchall())
    index = SORT_INDEXES[sort.lstrip("-")]
    assert index in plan and "Seq Scan" not in plan, plan
    print(plan)


def test_an_unreachable_cache_serves_unthrottled_rather_than_failing(api, settings, caplog):
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 5
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.5},
        }
    }
    get(api, "/api/v1/fleets")
    assert "throttle skipped" in caplog.text
