"""Operator management commands: the secret is the last line; bad input is a clear non-zero exit."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from devices.models import Device
from fleets.keys import hash_key
from fleets.models import Fleet, Membership, Organization, ServiceKey

pytestmark = pytest.mark.django_db


def run(*args) -> list[str]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_organization_and_errors():
    assert (
        run("create_organization", "globex", "--name", "Globex", "--tier", "paid", "--allowance", "5")[-1] == "globex"
    )
    org = Organization.objects.get(slug="globex")
    assert (org.name, org.tier, org.device_allowance) == ("Globex", "paid", 5)
    with pytest.raises(CommandError, match="already exists"):
        run("create_organization", "globex")
    with pytest.raises(CommandError, match="allowance"):
        run("create_organization", "initech", "--allowance", "-1")
    with pytest.raises(CommandError, match="slug"):
        run("create_organization", "not a slug!")
    with pytest.raises(CommandError):
        run("create_organization", "x", "--tier", "gold")
    assert Organization.objects.count() == 1


def test_create_fleet_prints_key_stored_as_hash(org, settings):
    key = run("create_fleet", org.slug, "drones", "--type", "paid", "--poll-interval", "900")[-1]
    fleet = Fleet.objects.get(slug="drones")
    assert fleet.provisioning_key_hash == hash_key(key) and key not in fleet.provisioning_key_hash
    assert (fleet.fleet_type, fleet.poll_interval) == ("paid", 900)
    with pytest.raises(CommandError, match="no organization"):
        run("create_fleet", "nope", "drones")
    with pytest.raises(CommandError, match="already exists"):
        run("create_fleet", org.slug, "drones")
    with pytest.raises(CommandError, match="at least 600"):
        run("create_fleet", org.slug, "fast", "--poll-interval", "5")
    with pytest.raises(CommandError):
        run("create_fleet", org.slug, "typo", "--type", "premium")


def test_add_member(org):
    assert run("add_member", org.slug, "zoe", "--password", "a sturdy passphrase", "--role", "owner")[-1] == "zoe"
    user = get_user_model().objects.get(username="zoe")
    assert user.check_password("a sturdy passphrase")
    assert Membership.objects.get(user=user).role == "owner"
    with pytest.raises(CommandError, match="password rejected"):
        run("add_member", org.slug, "yan", "--password", "123")
    with pytest.raises(CommandError, match="no organization"):
        run("add_member", "nope", "yan", "--password", "a sturdy passphrase")
    assert not get_user_model().objects.filter(username="yan").exists()


def test_create_service_key():
    key = run("create_service_key", "--name", "tunnel")[-1]
    assert ServiceKey.objects.get().key_hash == hash_key(key)


def test_load_demo_has_every_status_and_is_idempotent(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    lines = run("load_demo")
    assert lines[-1].startswith("login: demo / ")
    statuses = set(Device.objects.filter(organization__slug="demo").values_list("overall_status", flat=True))
    assert statuses == {
        "online",
        "online-vpn-only",
        "online-heartbeat-only",
        "offline",
        "configuring",
        "updating",
        "post-provisioning",
        "inactive",
        "frozen",
    }
    secrets = json.loads((tmp_path / "demo.json").read_text())
    fleet = Fleet.objects.get(organization__slug="demo", slug="kiosks")
    assert hash_key(secrets["provisioning_keys"]["demo/kiosks"]) == fleet.provisioning_key_hash
    count = Device.objects.count()
    run("load_demo")
    assert Device.objects.count() == count
