"""Test settings: the real settings, with a throwaway SECRET_KEY and a fast password hasher."""

import os

os.environ.setdefault("SECRET_KEY", "fleetstatus-tests-only-not-secret")

from fleetstatus.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Login throttling is tested on its own (tests/test_security.py); don't let other tests trip it.
AXES_ENABLED = os.environ.get("AXES_ENABLED_IN_TESTS", "") == "1"
# The test client speaks plain HTTP; production's HTTPS redirect is checked in tests/test_security.py.
SECURE_SSL_REDIRECT = False
