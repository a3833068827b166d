"""Delivering: signature, retries with backoff, a receiver that is down then back, SSRF refusal,
email (locmem and a real SMTP round trip), Apprise json:// end to end. Every HTTP exchange is with a
real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import socket
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from notifications import engine, sending, transports
from notifications.models import Channel, Delivery


@pytest.fixture
def channel(org, receiver, settings):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    return Channel.objects.create(organization=org, name="ops", url=receiver.url, secret="s3cret")


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


def changes_delivery(channel: Channel, now) -> Delivery:
    change = {"uuid": "a" * 32, "name": "kiosk-1", "fleet": "kiosks", "from": "online", "to": "offline", "at": "x"}
    return Delivery.objects.create(
        channel=channel,
        event=Delivery.Event.CHANGES,
        payload={"changes": [change]},
        size=1,
        created_at=now,
        next_attempt_at=now,
    )


def test_webhook_is_signed_with_the_channel_secret(channel, receiver, now):
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "delivered"
    (got,) = receiver.received
    expected = "sha256=" + hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Fleetstatus-Signature-256"] == expected
    assert got.headers["X-Fleetstatus-Delivery"] == str(delivery.uuid)
    assert got.headers["Content-Type"] == "application/json"
    assert got.json()["changes"][0]["name"] == "kiosk-1"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def test_retries_back_off_and_respect_retry_after(channel, receiver, now):
    receiver.respond([(503, {"Retry-After": "120"}), 500, 429])
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "pending"
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == now + timedelta(seconds=120)  # Retry-After beats the 10 s backoff
    assert sending.deliver(delivery.pk, now + timedelta(seconds=60)) == "skipped"  # not due yet
    t = now + timedelta(seconds=120)
    assert sending.deliver(delivery.pk, t) == "pending"
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == t + timedelta(seconds=20)  # second retry: 2 x 10 s
    t += timedelta(seconds=20)
    assert sending.deliver(delivery.pk, t) == "pending"
    delivery.refresh_from_db()
    assert (delivery.last_status_code, delivery.next_attempt_at) == (429, t + timedelta(seconds=40))
    assert sending.deliver(delivery.pk, t + timedelta(seconds=40)) == "delivered"
    assert [r.status for r in receiver.received] == [503, 500, 429, 200]
    # Every attempt carried the same delivery id.
    assert {r.headers["X-Fleetstatus-Delivery"] for r in receiver.received} == {str(delivery.uuid)}


def test_backoff_keeps_trying_for_a_day_then_fails():
    total, attempts = 0, 0
    while total < 24 * 3600:
        attempts += 1
        total += sending.backoff(attempts)
    assert attempts < 40  # hourly at most once the backoff is at its cap
    assert sending.backoff(1) == 10 and sending.backoff(30) == 3600


def test_gives_up_after_the_retry_period(channel, receiver, now, settings):
    receiver.respond([500])
    delivery = changes_delivery(channel, now - timedelta(hours=settings.FLEETSTATUS_NOTIFY_RETRY_HOURS))
    assert sending.deliver(delivery.pk, now) == "failed"


def test_other_4xx_fail_at_once(channel, receiver, now):
    receiver.respond([404])
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "failed"
    delivery.refresh_from_db()
    assert (delivery.last_status_code, delivery.last_error, delivery.next_attempt_at) == (404, "HTTP 404", None)
    assert sending.due_ids(now + timedelta(days=1)) == []


def test_receiver_down_then_back_everything_delivered_once(channel, receiver, now):
    receiver.stop()  # connection refused from now on
    deliveries = [changes_delivery(channel, now) for _ in range(3)]
    t = now
    for _ in range(3):
        for pk in sending.due_ids(t):
            assert sending.deliver(pk, t) == "pending"
        t += timedelta(hours=1)
    assert all("connection error" in d.last_error for d in Delivery.objects.all())
    receiver.start()  # same port
    for pk in sending.due_ids(t):
        sending.deliver(pk, t)
    ids = [r.headers["X-Fleetstatus-Delivery"] for r in receiver.received]
    assert sorted(ids) == sorted(str(d.uuid) for d in deliveries)
    assert set(Delivery.objects.values_list("state", flat=True)) == {"delivered"}
    for pk in sending.due_ids(t + timedelta(days=2)):
        sending.deliver(pk, t + timedelta(days=2))
    assert len(receiver.received) == 3  # nothing sent twice


def test_a_lost_sender_is_replaced_after_its_lease_with_the_same_id(channel, receiver, now, settings):
    delivery = changes_delivery(channel, now)
    assert sending.claim(delivery.pk, now) is not None  # a worker took it, then died
    assert sending.deliver(delivery.pk, now) == "skipped"  # its lease still holds
    later = now + timedelta(seconds=settings.FLEETSTATUS_NOTIFY_LEASE_SECONDS + 1)
    assert delivery.pk in sending.due_ids(later)
    assert sending.deliver(delivery.pk, later) == "delivered"
    assert [r.headers["X-Fleetstatus-Delivery"] for r in receiver.received] == [str(delivery.uuid)]


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if anything tries to open a connection."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise AssertionError(f"connection attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("http://127.0.0.1:8080/hook", None),
        ("http://[::1]/hook", None),
        ("http://hooks.example.com/x", "10.1.2.3"),
        ("https://metadata.example.com/latest", "169.254.169.254"),
        ("http://multi.example.com/", "192.168.1.1"),
        ("http://zero.example.com/", "0.0.0.0"),
        ("http://mapped.example.com/", "::ffff:127.0.0.1"),
        ("json://internal.example.com/", "10.0.0.9"),
    ],
)
def test_private_targets_are_refused_before_any_connection(
    org, settings, monkeypatch, no_connections, url, resolved, now
):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = False
    if resolved is not None:
        family = socket.AF_INET6 if ":" in resolved else socket.AF_INET

        def fake_getaddrinfo(host, port, *args, **kwargs):
            return [(family, socket.SOCK_STREAM, 6, "", (resolved, port))]

        monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    channel = Channel.objects.create(organization=org, name="evil", url=url)
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "failed"
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("refused:")
    assert no_connections == []


def test_public_addresses_pass_the_check():
    assert not transports.forbidden("93.184.215.14")
    assert transports.forbidden("100.64.0.1")  # carrier-grade NAT is not public either
    assert transports.forbidden("fd00:ec2::254")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_email_through_locmem(org, settings, now):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    channel = Channel.objects.create(organization=org, name="mail", url="mailto:ops@example.com,cto@example.com")
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "delivered"
    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "cto@example.com"]
    assert message.subject == "Northwind in kiosks: 1 device went Offline"
    assert "kiosk-1 (kiosks): Online -> Offline" in message.body
    assert "http://localhost:8000/devices/?fleet=kiosks&status=offline" in message.body


def test_email_over_a_real_smtp_server(org, settings, now):
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
            self.messages.append(envelope)
            return "250 OK"

    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.EMAIL_USE_TLS = False
        channel = Channel.objects.create(organization=org, name="mail", url="mailto:ops@example.com")
        delivery = changes_delivery(channel, now)
        assert sending.deliver(delivery.pk, now) == "delivered"
    finally:
        controller.stop()
    (envelope,) = handler.messages
    assert envelope.rcpt_tos == ["ops@example.com"]
    assert b"1 device went Offline" in envelope.content


def test_email_server_down_is_retried(org, settings, now):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    channel = Channel.objects.create(organization=org, name="mail", url="mailto:ops@example.com")
    assert sending.deliver(changes_delivery(channel, now).pk, now) == "pending"


def test_apprise_json_end_to_end(org, receiver, settings, now):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    channel = Channel.objects.create(organization=org, name="apprise", url=f"json://127.0.0.1:{receiver.port}/hook")
    delivery = changes_delivery(channel, now)
    assert sending.deliver(delivery.pk, now) == "delivered"
    (got,) = receiver.received
    body = got.json()
    assert body["title"] == "Northwind in kiosks: 1 device went Offline"
    assert "kiosk-1" in body["message"]


def test_apprise_failure_is_retried(org, receiver, settings, now):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    receiver.respond([500])
    channel = Channel.objects.create(organization=org, name="apprise", url=f"json://127.0.0.1:{receiver.port}/hook")
    assert sending.deliver(changes_delivery(channel, now).pk, now) == "pending"


def test_test_message(channel, receiver, now):
    delivery = engine.send_test(channel, now)
    assert sending.deliver(delivery.pk, now) == "delivered"
    body = receiver.received[0].json()
    assert (body["event"], body["channel"]) == ("test", "ops")


def test_a_queued_delivery_is_not_queued_again_until_its_lease_passes(channel, now, settings):
    delivery = changes_delivery(channel, now)
    assert sending.to_queue(now) == [delivery.pk]
    assert sending.to_queue(now + timedelta(seconds=1)) == []  # still in the queue
    lease = timedelta(seconds=settings.FLEETSTATUS_NOTIFY_LEASE_SECONDS + 1)
    assert sending.to_queue(now + lease) == [delivery.pk]  # the message was lost: queued again


def test_chat_and_email_texts_use_the_organizations_status_names(org, now):
    from notifications import messages

    change = {"uuid": "a" * 32, "name": "kiosk-1", "fleet": "kiosks", "from": "online", "to": "offline", "at": "x"}
    channel = Channel.objects.create(organization=org, name="chat", url="json://127.0.0.1:9/")
    delivery = Delivery.objects.create(
        channel=channel,
        event=Delivery.Event.CHANGES,
        payload={"changes": [change]},
        size=1,
        created_at=now,
        next_attempt_at=now,
    )
    subject, body = messages.summary(delivery)
    assert "1 device went Offline" in subject
    assert "Online" in body and "Disconnected" not in body
    org.status_names = "balena"
    org.save(update_fields=["status_names"])
    delivery = Delivery.objects.select_related("channel__organization").get(pk=delivery.pk)
    subject, body = messages.summary(delivery)
    assert "1 device went Disconnected" in subject
    assert "Operational" in body and "Offline" not in body
