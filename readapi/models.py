"""Personal API tokens: a user's scripts read the API as that user, with that user's organizations."""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models

from fleets.keys import hash_key

# A recognisable prefix lets secret scanners and humans tell a leaked token from any other hex.
TOKEN_PREFIX = "fsr_"
TOKEN_RE = re.compile(r"^fsr_[0-9a-f]{64}$")
# How much of the token the list shows, so a user can tell tokens apart without the secret.
SHOWN_PREFIX = len(TOKEN_PREFIX) + 6


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(32)


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # SHA-256 of the token (fleets/keys.py): the token has 256 random bits, so a fast unsalted hash
    # found by an indexed lookup is enough; the token itself is shown once and never stored.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=SHOWN_PREFIX, editable=False)
    # Every token is read-only for now; the flag is kept so write scopes can be added without a migration.
    read_only = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Written at most once a minute per token (readapi/auth.py), so reading stays free of writes.
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def issue(cls, user, name: str, *, read_only: bool = True) -> tuple[ApiToken, str]:
        """Create a token for `user`; returns it and the plain token (the only time it exists)."""
        plain = generate_token()
        token = cls.objects.create(
            user=user, name=name[:100], token_hash=hash_key(plain), prefix=plain[:SHOWN_PREFIX], read_only=read_only
        )
        return token, plain

    def revoke(self, at: datetime) -> None:
        if self.revoked_at is None:
            ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=at)
            self.revoked_at = at
