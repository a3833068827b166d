from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from fleets.models import Membership, Organization


class Command(BaseCommand):
    help = "Add a user (created when missing) to an organization. Prints the username as the last line."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("username")
        parser.add_argument("--password", required=True)
        parser.add_argument("--role", choices=Membership.Role.values, default=Membership.Role.MEMBER)
        parser.add_argument("--skip-password-validation", action="store_true", help=argparse_help())

    def handle(self, org_slug, username, password, role, skip_password_validation, **options):
        try:
            org = Organization.objects.get(slug=org_slug)
        except Organization.DoesNotExist:
            raise CommandError(f"no organization {org_slug!r}") from None
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if not username.strip():
            raise CommandError("username must not be empty")
        if not skip_password_validation:
            try:
                validate_password(password, user or User(username=username))
            except ValidationError as exc:
                raise CommandError("password rejected: " + " ".join(exc.messages)) from exc
        with transaction.atomic():
            if user is None:
                user = User(username=username)
                try:
                    user.full_clean(exclude=["password"])
                except ValidationError as exc:
                    raise CommandError("; ".join(exc.messages)) from exc
            user.set_password(password)
            user.save()
            Membership.objects.update_or_create(user=user, organization=org, defaults={"role": role})
        self.stdout.write(f"{username} is now {role} of {org.slug}")
        self.stdout.write(username)


def argparse_help() -> str:
    return "accept a weak password (demo data only)"
