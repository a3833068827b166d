"""Saved views of the Devices page: a name for a query string of its filters, sort and columns.

A view belongs to one organization and one owner; it is personal, or shared with the organization's
members. The stored query holds only the parameters the Devices page knows, as its own parser
validated them, and the page validates it again whenever the view is opened (a fleet renamed since
then gets the page's usual notice). Only the owner renames or deletes a view; any other view, of
another user or another organization, is a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django import forms
from django.contrib.auth.views import redirect_to_login
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from devices.models import SavedView
from devices.queries import DEFAULT_SORT, DeviceQuery, parse_device_query, user_organizations
from fleets.models import Organization

NAME_MAX = SavedView._meta.get_field("name").max_length
QUERY_MAX = SavedView._meta.get_field("query").max_length


def query_string(query: DeviceQuery) -> str:
    """The Devices page URL's query for a validated query: filters, sort and the columns the URL
    names (none: the viewer's own), never the page number."""
    params: list[tuple[str, str]] = [("status", s) for s in query.statuses]
    if query.fleet_param:
        params.append(("fleet", query.fleet_param))
    if query.q:
        params.append(("q", query.q))
    params += [("tag", f"{key}:{value}") for key, value in query.tags]
    params += [("update_status", u) for u in query.update_statuses]
    if query.sort_param != DEFAULT_SORT:
        params.append(("sort", query.sort_param))
    if query.columns is not None:
        params.append(("cols", query.cols_param))
    return urlencode(params, safe=",")


def menu(user, organizations: list[Organization]) -> QuerySet[SavedView]:
    """The user's own views and the views shared in their organizations, in one (lazy) query."""
    return (
        SavedView.objects.filter(organization__in=[o.pk for o in organizations])
        .filter(Q(owner=user) | Q(shared=True))
        .select_related("owner", "organization")
        .order_by("name", "pk")
    )


def href(view: SavedView) -> str:
    base = reverse("devices:list")
    return f"{base}?{view.query}" if view.query else base


# --- Forms ----------------------------------------------------------------------------------------


class NameForm(forms.Form):
    name = forms.CharField(max_length=NAME_MAX, strip=True)

    def __init__(self, *args, owner, organization: Organization | None = None, exclude_pk: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.owner, self.organization, self.exclude_pk = owner, organization, exclude_pk

    def clean(self) -> dict:
        data = super().clean()
        name, organization = data.get("name"), data.get("organization", self.organization)
        if name and organization is not None:
            taken = SavedView.objects.filter(organization=organization, owner=self.owner, name=name)
            if self.exclude_pk is not None:
                taken = taken.exclude(pk=self.exclude_pk)
            if taken.exists():
                self.add_error("name", f"You already have a view named “{name}” in {organization.name}.")
        return data


class SaveForm(NameForm):
    query = forms.CharField(max_length=QUERY_MAX, required=False, strip=False)
    shared = forms.BooleanField(required=False)
    organization = forms.ModelChoiceField(queryset=Organization.objects.none(), to_field_name="slug", required=False)

    def __init__(self, *args, organizations: list[Organization], **kw):
        super().__init__(*args, **kw)
        self.organizations = organizations
        self.fields["organization"].queryset = Organization.objects.filter(pk__in=[o.pk for o in organizations])

    def clean_organization(self) -> Organization:
        chosen = self.cleaned_data.get("organization")
        if chosen is None:
            # One organization needs no choice; with several the form offers a select.
            if len(self.organizations) != 1:
                raise forms.ValidationError("Choose the organization the view belongs to.")
            return self.organizations[0]
        return chosen

    def clean_query(self) -> str:
        parsed = parse_device_query(QueryDict(self.cleaned_data.get("query", "")), self.organizations)
        if parsed.fleet_not_found:
            raise forms.ValidationError("The view's fleet is not in your organizations.")
        return query_string(parsed)


# --- Views ----------------------------------------------------------------------------------------


def member_post(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """POST only (CSRF-checked by the middleware), from a logged-in user."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(reverse("devices:list"))
        return view(request, *args, **kwargs)

    return require_POST(wrapped)


def _refused(request: HttpRequest, form: forms.Form, what: str) -> HttpResponse:
    errors = [message for messages in form.errors.values() for message in messages]
    context = {"page_name": "Saved view not changed", "what": what, "errors": errors}
    return render(request, "devices/saved_view_refused.html", context, status=400)


def _own_view(request: HttpRequest, pk: int) -> SavedView:
    organizations = user_organizations(request)
    view = (
        SavedView.objects.filter(pk=pk, owner=request.user, organization__in=[o.pk for o in organizations])
        .select_related("organization")
        .first()
    )
    if view is None:
        raise Http404("No such saved view of yours.")
    return view


@member_post
def save_view(request: HttpRequest) -> HttpResponse:
    organizations = user_organizations(request)
    form = SaveForm(request.POST, owner=request.user, organizations=organizations)
    if not form.is_valid():
        return _refused(request, form, "saved")
    data = form.cleaned_data
    try:
        with transaction.atomic():
            view = SavedView.objects.create(
                organization=data["organization"],
                owner=request.user,
                name=data["name"],
                query=data["query"],
                shared=data["shared"],
            )
    except IntegrityError:  # a concurrent save of the same name won the race
        form.add_error("name", f"You already have a view named “{data['name']}”.")
        return _refused(request, form, "saved")
    return HttpResponseRedirect(href(view), status=303)


@member_post
def rename_view(request: HttpRequest, pk: int) -> HttpResponse:
    view = _own_view(request, pk)
    form = NameForm(request.POST, owner=request.user, organization=view.organization, exclude_pk=view.pk)
    if not form.is_valid():
        return _refused(request, form, "renamed")
    view.name = form.cleaned_data["name"]
    try:
        with transaction.atomic():
            view.save(update_fields=["name", "updated_at"])
    except IntegrityError:
        form.add_error("name", "You already have a view with that name.")
        return _refused(request, form, "renamed")
    return HttpResponseRedirect(href(view), status=303)


@member_post
def delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    _own_view(request, pk).delete()
    return HttpResponseRedirect(reverse("devices:list"), status=303)
