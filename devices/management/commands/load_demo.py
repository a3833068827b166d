"""A demo organization with fleets, a login and devices in every status.

Idempotent: when the demo organization exists it only prints the login again. Secrets the device
simulator needs (provisioning keys, a service key) are written to var/demo.json, since the
database keeps only their hashes.
"""

import json
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from devices import services
from devices.status import HeartbeatState, UpdateStatus
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, Membership, Organization, ServiceKey, Tier

DEMO_ORG = "demo"
DEMO_USER = "demo"
DEMO_PASSWORD = "fleetstatus-demo"
OTHER_ORG = "acme"


def demo_secrets_path():
    return settings.VAR_DIR / "demo.json"


class Command(BaseCommand):
    help = "Load the demo organization, fleets, login and devices in every status. Prints the demo login last."

    def handle(self, **options):
        if not Organization.objects.filter(slug=DEMO_ORG).exists():
            with transaction.atomic():
                self._load()
        self.stdout.write(f"demo data in organization {DEMO_ORG!r}; simulator secrets in {demo_secrets_path()}")
        self.stdout.write(f"login: {DEMO_USER} / {DEMO_PASSWORD}")

    def _load(self):
        now = timezone.now()
        User = get_user_model()
        org = Organization.objects.create(slug=DEMO_ORG, name="Demo Fleet Co", tier=Tier.FREE, device_allowance=64)
        user, _ = User.objects.get_or_create(username=DEMO_USER)
        user.set_password(DEMO_PASSWORD)
        user.save()
        Membership.objects.create(user=user, organization=org, role=Membership.Role.OWNER)

        keys = {}
        fleets = {}
        for slug, name, device_type, fleet_type in [
            ("kiosks", "Airport kiosks", "raspberrypi4-64", Tier.FREE),
            ("sensors", "Field sensors", "jetson-nano", Tier.FREE),
            ("signage", "Digital signage", "generic-amd64", Tier.PAID),
            ("sim", "Simulated devices", "raspberrypi5", Tier.FREE),
        ]:
            fleet = Fleet(organization=org, slug=slug, name=name, device_type=device_type, fleet_type=fleet_type)
            keys[f"{DEMO_ORG}/{slug}"] = fleet.issue_provisioning_key()
            fleet.save()
            fleets[slug] = fleet

        def device(fleet, name, minutes_ago=60, **signals):
            uuid = secrets.token_hex(16)
            d, _ = services.create_device(fleets[fleet], uuid, name=name, at=now - timedelta(minutes=minutes_ago))
            if signals:
                d = services.update_device(d, signals, reason="demo data", at=now - timedelta(minutes=1))
            return d

        # These showcase devices do not run (the simulator's fleet does): they poll once a day, so
        # their heartbeat stays alive for the demo with a deadline that matches their interval.
        daily = 24 * 3600
        hb = {
            "api_heartbeat_state": HeartbeatState.ONLINE,
            "last_api_heartbeat_at": now,
            "poll_interval": daily,
            "heartbeat_deadline": now + timedelta(seconds=daily * settings.FLEETSTATUS_HEARTBEAT_TOLERANCE),
            "last_seen_at": now,
        }
        vpn = {"is_connected_to_vpn": True, "last_vpn_event": now, "last_connectivity_event": now, "vpn_service_id": 1}
        base = {
            "os_version": "balenaOS 6.0.13",
            "os_variant": "prod",
            "supervisor_version": "16.7.1",
            "release": "8f3e2b1",
            "ip_address": "10.0.3.17",
            "mac_address": "dc:a6:32:00:11:22",
        }
        device("kiosks", "gate-a12-kiosk", **base, **hb, **vpn)
        device("kiosks", "gate-b03-kiosk", **base, **hb, **vpn)
        device(
            "kiosks",
            "gate-c07-kiosk",
            **base,
            **vpn,
            api_heartbeat_state=HeartbeatState.OFFLINE,
            last_api_heartbeat_at=now - timedelta(hours=2),
        )
        device(
            "kiosks",
            "gate-d01-kiosk",
            **base,
            **hb,
            last_connectivity_event=now - timedelta(hours=3),
            last_vpn_event=now - timedelta(hours=3),
        )
        device(
            "kiosks",
            "gate-e09-kiosk",
            **base,
            api_heartbeat_state=HeartbeatState.OFFLINE,
            last_api_heartbeat_at=now - timedelta(days=2),
            last_connectivity_event=now - timedelta(days=2),
            last_seen_at=now - timedelta(days=2),
        )
        device(
            "sensors",
            "north-field-07",
            **base,
            **hb,
            **vpn,
            update_status=UpdateStatus.DOWNLOADING,
            download_progress=42,
            status="Downloading",
        )
        device(
            "sensors",
            "south-field-02",
            **base,
            **hb,
            **vpn,
            provisioning_state="Running OS update",
            provisioning_progress=65,
        )
        device("sensors", "east-field-11", provisioning_state="Post-Provisioning", provisioning_progress=80)
        device("sensors", "west-field-03")  # registered, never connected: Configuring
        pre = device("sensors", "spare-unit-01")
        services.update_device(pre, {"is_active": False, "activated_at": None}, reason="preregistered", at=now)
        device("signage", "lobby-screen-1", **base, **hb, **vpn)  # paid fleet on a free tier: Frozen

        other = Organization.objects.create(slug=OTHER_ORG, name="Acme Corp", tier=Tier.PAID)
        other_fleet = Fleet(organization=other, slug="robots", name="Warehouse robots", device_type="raspberrypi4-64")
        keys[f"{OTHER_ORG}/robots"] = other_fleet.issue_provisioning_key()
        other_fleet.save()
        fleets["robots"] = other_fleet
        device("robots", "acme-robot-1", **base, **hb, **vpn)

        service_key = generate_key()
        ServiceKey.objects.create(name="demo tunnel server", key_hash=hash_key(service_key))
        demo_secrets_path().parent.mkdir(parents=True, exist_ok=True)
        demo_secrets_path().write_text(json.dumps({"provisioning_keys": keys, "service_key": service_key}, indent=2))
        demo_secrets_path().chmod(0o600)
