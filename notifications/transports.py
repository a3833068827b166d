"""How one delivery reaches its channel: signed webhook, Django email, or Apprise for everything else.

Every transport answers with a SendResult: delivered, or failed and whether a retry can help
(timeouts, connection errors, 429 and 5xx can; any other 4xx or a refused address cannot).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail

from notifications import messages
from notifications.models import Channel, Delivery

SIGNATURE_HEADER = "X-Fleetstatus-Signature-256"
DELIVERY_HEADER = "X-Fleetstatus-Delivery"
# Apprise schemes that post to any host the user names: checked like webhooks.
GENERIC_APPRISE_SCHEMES = {"json", "jsons", "xml", "xmls", "form", "forms"}
# Cloud metadata services live at link-local addresses (169.254.169.254, fd00:ec2::254); the
# reserved, private and link-local checks below refuse them with the rest.


@dataclass(frozen=True)
class SendResult:
    ok: bool
    retry: bool = False
    status_code: int | None = None
    error: str = ""
    retry_after: int | None = None


class Refused(Exception):
    """The target resolves to an address webhooks may not reach."""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(delivery: Delivery, now: datetime) -> SendResult:
    channel = delivery.channel
    kind = channel.kind
    try:
        if kind == Channel.Kind.WEBHOOK:
            return send_webhook(delivery, now)
        if kind == Channel.Kind.EMAIL:
            return send_email(delivery, now)
        return send_apprise(delivery, now)
    except Refused as exc:
        return SendResult(ok=False, retry=False, error=f"refused: {exc}")


# --- Address checks (SSRF) -----------------------------------------------------------------------


def forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def resolve_checked(host: str, port: int) -> str:
    """The address to connect to: resolved once, refused if any of the host's addresses is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ConnectionError(f"cannot resolve {host}")
    if not settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE:
        bad = [a for a in addresses if forbidden(a)]
        if bad:
            raise Refused(f"{host} resolves to a non-public address ({bad[0]})")
    return addresses[0]


# --- Webhook -------------------------------------------------------------------------------------


def webhook_body(delivery: Delivery, now: datetime) -> bytes:
    return json.dumps(messages.webhook_payload(delivery, now), separators=(",", ":")).encode()


def send_webhook(delivery: Delivery, now: datetime) -> SendResult:
    url = urlsplit(delivery.channel.url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        address = resolve_checked(host, port)
    except ConnectionError as exc:
        return SendResult(ok=False, retry=True, error=str(exc))
    body = webhook_body(delivery, now)
    # Connect to the address just checked (no second lookup a DNS answer could change); the Host
    # header and TLS server name stay the channel's host.
    literal = f"[{address}]" if ":" in address else address
    target = url._replace(netloc=f"{literal}:{port}").geturl()
    headers = {
        "Host": url.netloc.rsplit("@", 1)[-1],
        "Content-Type": "application/json",
        "User-Agent": "fleetstatus-notifications",
        SIGNATURE_HEADER: sign(delivery.channel.secret, body),
        DELIVERY_HEADER: str(delivery.uuid),
    }
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    try:
        with httpx.Client(timeout=settings.FLEETSTATUS_NOTIFY_TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = client.post(target, content=body, headers=headers, extensions=extensions)
    except httpx.TimeoutException as exc:
        return SendResult(ok=False, retry=True, error=f"timeout: {type(exc).__name__}")
    except httpx.TransportError as exc:
        return SendResult(ok=False, retry=True, error=f"connection error: {type(exc).__name__}: {exc}")
    code = response.status_code
    if 200 <= code < 300:
        return SendResult(ok=True, status_code=code)
    retry = code in (408, 429) or code >= 500
    return SendResult(
        ok=False,
        retry=retry,
        status_code=code,
        error=f"HTTP {code}",
        retry_after=retry_after(response.headers.get("Retry-After"), now) if retry else None,
    )


def retry_after(value: str | None, now: datetime) -> int | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(int((when - now).total_seconds()), 0)


# --- Email ---------------------------------------------------------------------------------------


def email_recipients(url: str) -> list[str]:
    return [a.strip() for a in url.split(":", 1)[1].split(",") if a.strip()]


def send_email(delivery: Delivery, now: datetime) -> SendResult:
    subject, body = messages.summary(delivery)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, email_recipients(delivery.channel.url))
    except smtplib.SMTPRecipientsRefused as exc:
        return SendResult(ok=False, retry=False, error=f"recipients refused: {list(exc.recipients)}")
    except (smtplib.SMTPException, OSError) as exc:
        return SendResult(ok=False, retry=True, error=f"email: {type(exc).__name__}: {exc}")
    return SendResult(ok=True)


# --- Apprise -------------------------------------------------------------------------------------


def send_apprise(delivery: Delivery, now: datetime) -> SendResult:
    import apprise

    url = delivery.channel.url
    parts = urlsplit(url)
    if parts.scheme.lower() in GENERIC_APPRISE_SCHEMES and parts.hostname:
        # Apprise connects by itself, so the address is checked here and not pinned: a DNS answer
        # that changes between the two lookups is not caught for these schemes.
        try:
            resolve_checked(parts.hostname, parts.port or 80)
        except ConnectionError as exc:
            return SendResult(ok=False, retry=True, error=str(exc))
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return SendResult(ok=False, retry=False, error="Apprise does not understand this URL")
    subject, body = messages.summary(delivery)
    if notifier.notify(title=subject, body=body):
        return SendResult(ok=True)
    return SendResult(ok=False, retry=True, error="Apprise could not deliver (see the worker log)")
