"""The "API tokens" page: the logged-in user creates, lists and revokes their personal tokens."""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from readapi.models import ApiToken


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, strip=True, help_text="What the token is for, e.g. “grafana” or “backup script”."
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if "\x00" in name:
            raise forms.ValidationError("The name cannot contain a NUL character.")
        return name


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            token, plain = ApiToken.issue(request.user, form.cleaned_data["name"])
            # Shown in this response only; a reload shows the list without it.
            created = {"token": token, "plain": plain}
            form = TokenForm()
        else:
            status = 400
    tokens = ApiToken.objects.filter(user=request.user)
    response = render(
        request,
        "readapi/tokens.html",
        {"page_name": "API tokens", "form": form, "tokens": tokens, "created": created},
        status=status,
    )
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = ApiToken.objects.filter(user=request.user, pk=pk).first()
    if token is None:
        raise Http404("No such token of yours.")
    token.revoke(timezone.now())
    return redirect("readapi:tokens")
