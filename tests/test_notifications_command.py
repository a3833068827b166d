"""add_notification_channel: good input creates one channel and prints its secret last; bad input
exits non-zero with a clear message and creates nothing."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from notifications.models import Channel


def run(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("add_notification_channel", *args, stdout=out)
    return out.getvalue().splitlines()


def test_creates_a_channel_and_prints_its_secret_last(org, fleet, make_fleet):
    signs = make_fleet(org, "signs")[0]
    lines = run(
        "northwind",
        "https://hooks.example.com/fleet",
        "--name",
        "ops",
        "--fleet",
        "kiosks",
        "signs",
        "--on",
        "offline,online-vpn-only",
        "--hold",
        "30",
        "--fleet-threshold",
        "20",
    )
    channel = Channel.objects.get()
    assert lines[-1] == channel.secret and len(channel.secret) >= 32
    assert (channel.name, channel.url, channel.hold_seconds, channel.fleet_threshold) == (
        "ops",
        "https://hooks.example.com/fleet",
        30,
        20,
    )
    assert channel.statuses == ["offline", "online-vpn-only"]
    assert set(channel.fleets.all()) == {fleet, signs}


def test_given_secret_and_defaults(org):
    lines = run("northwind", "mailto:ops@example.com", "--secret", "my-secret")
    channel = Channel.objects.get()
    assert lines[-1] == "my-secret"
    assert (channel.kind, channel.hold_seconds, channel.statuses, channel.fleet_threshold) == (
        "email",
        60,
        ["offline"],
        None,
    )
    assert channel.fleets.count() == 0


def test_apprise_url(org):
    run("northwind", "ntfy://ntfy.example.com/fleet-alerts", "--name", "phone")
    assert Channel.objects.get().kind == "apprise"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody", "https://x.example.com/"], "No organization with slug 'nobody'"),
        (["northwind", "https://x.example.com/", "--fleet", "robots"], "has no fleet 'robots'"),
        (["northwind", "http//broken"], "url:"),
        (["northwind", "https://"], "url:"),
        (["northwind", "mailto:not-an-address"], "is not an email address"),
        (["northwind", "nosuchscheme://x"], "Apprise"),
        (["northwind", "https://x.example.com/", "--on", "offline,sleeping"], "Unknown status sleeping"),
        (["northwind", "https://x.example.com/", "--hold", "-5"], "hold_seconds"),
        (["northwind", "https://x.example.com/", "--fleet-threshold", "150"], "fleet_threshold"),
    ],
)
def test_bad_input_creates_nothing(org, other_fleet, fleet, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert Channel.objects.count() == 0


def test_duplicate_name_is_refused(org):
    run("northwind", "https://x.example.com/", "--name", "ops")
    with pytest.raises(CommandError, match="already has a channel"):
        run("northwind", "https://y.example.com/", "--name", "ops")
    assert Channel.objects.count() == 1


def test_exit_status_is_non_zero(org, capsys, monkeypatch):
    from django.core.management import base

    from notifications.management.commands.add_notification_channel import Command

    # run_from_argv closes every connection on its way out; the test's transaction needs its own.
    monkeypatch.setattr(base.connections, "close_all", lambda: None)

    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(["manage.py", "add_notification_channel", "nobody", "https://x.example.com/"])
    assert exit_info.value.code != 0
    assert "No organization with slug 'nobody'" in capsys.readouterr().err
    assert Channel.objects.count() == 0
