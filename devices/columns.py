"""The Devices page's column chooser: which optional columns the table shows.

A POST form (it works without JavaScript) with a checkbox per optional column and three buttons:
keep the choice as the user's own (a ColumnChoice row, read by every later Devices page and its
htmx refresh), show it for this view only (no write: the page's URL gets ?cols=, which a saved view
then keeps), or go back to the default columns. It answers with a redirect to the Devices page, the
filters and sort it came from kept. Bad input is a 400 that says what was wrong, and nothing changes.
"""

from __future__ import annotations

import dataclasses

from django import forms
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse

from devices.models import ColumnChoice
from devices.queries import COLUMNS, OPTIONAL_COLUMNS, parse_device_query, user_organizations
from devices.saved_views import QUERY_MAX, member_post, query_string

SCOPE_USER, SCOPE_VIEW, SCOPE_RESET = "user", "view", "reset"


class ColumnsForm(forms.Form):
    cols = forms.MultipleChoiceField(
        choices=[(k, COLUMNS[k]) for k in OPTIONAL_COLUMNS],
        required=False,
        error_messages={"invalid_choice": "There is no column %(value)s."},
    )
    scope = forms.ChoiceField(
        choices=[
            (SCOPE_USER, "Keep as my columns"),
            (SCOPE_VIEW, "This view only"),
            (SCOPE_RESET, "Default columns"),
        ],
        error_messages={"required": "Choose whether to keep the columns or show them for this view only."},
    )
    # The Devices page query to return to (its filters and sort), validated again below.
    query = forms.CharField(max_length=QUERY_MAX, required=False, strip=False)


def _refused(request: HttpRequest, form: forms.Form) -> HttpResponse:
    errors = [message for messages in form.errors.values() for message in messages]
    context = {"page_name": "Columns not changed", "errors": errors}
    return render(request, "devices/columns_refused.html", context, status=400)


@member_post
def choose_columns(request: HttpRequest) -> HttpResponse:
    form = ColumnsForm(request.POST)
    if not form.is_valid():
        return _refused(request, form)
    data = form.cleaned_data
    chosen = tuple(k for k in OPTIONAL_COLUMNS if k in data["cols"])
    # The page's own parser rebuilds the query it came from: only parameters it knows go back.
    query = parse_device_query(QueryDict(data["query"]), user_organizations(request))
    if data["scope"] == SCOPE_VIEW:
        back = dataclasses.replace(query, columns=chosen)
    else:
        # Without ?cols=, so that the page shows the user's own columns from now on.
        back = dataclasses.replace(query, columns=None)
        if data["scope"] == SCOPE_USER:
            ColumnChoice.objects.update_or_create(user=request.user, defaults={"columns": ",".join(chosen)})
        else:
            ColumnChoice.objects.filter(user=request.user).delete()
    params = query_string(back)
    return HttpResponseRedirect(reverse("devices:list") + (f"?{params}" if params else ""), status=303)
