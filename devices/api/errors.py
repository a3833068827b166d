"""The device API's error answer: a JSON object that says what is wrong."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    """`{"error": message, **extra}`; a 401 also names the scheme to authenticate with."""
    response = JsonResponse({"error": message, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="fleetstatus"'
    return response
