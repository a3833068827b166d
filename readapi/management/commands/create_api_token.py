from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from readapi.models import ApiToken


class Command(BaseCommand):
    help = "Create a personal API token for a user; the token is printed as the last line (shown only now)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="What the token is for.")

    def handle(self, *args, username: str, name: str, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive: a token of theirs would be refused.")
        _, plain = ApiToken.issue(user, name)
        self.stdout.write(f"Created API token {name!r} for {username}. Store it now: it is not shown again.")
        self.stdout.write(plain)
