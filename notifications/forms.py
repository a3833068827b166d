"""Channel and mute input, validated once for the dashboard, the admin and the command."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, URLValidator

from devices.status import Status
from fleets.models import Fleet, Organization
from notifications.models import DEFAULT_STATUSES, Channel, kind_of


def validate_target(url: str) -> None:
    kind = kind_of(url)
    if kind == Channel.Kind.WEBHOOK:
        URLValidator(schemes=["http", "https"], message="Enter a valid http(s):// URL.")(url)
    elif kind == Channel.Kind.EMAIL:
        addresses = [a.strip() for a in url.split(":", 1)[1].split(",") if a.strip()]
        if not addresses:
            raise ValidationError("Give at least one address: mailto:ops@example.com")
        for address in addresses:
            EmailValidator(message=f"{address!r} is not an email address.")(address)
    else:
        import apprise

        if "://" not in url or not apprise.Apprise().add(url):
            raise ValidationError("Not a webhook (http/https), mailto: or Apprise URL that Apprise understands.")


class ChannelForm(forms.ModelForm):
    statuses = forms.MultipleChoiceField(
        choices=Status.choices,
        initial=DEFAULT_STATUSES,
        widget=forms.CheckboxSelectMultiple,
        help_text="Entering these statuses notifies; leaving them (after a notified entry) is the recovery.",
    )

    class Meta:
        model = Channel
        fields = ["name", "url", "fleets", "statuses", "hold_seconds", "fleet_threshold", "enabled"]
        labels = {"url": "Target URL", "hold_seconds": "Hold (seconds)", "fleet_threshold": "Fleet threshold (%)"}
        help_texts = {
            "url": "https://… (webhook), mailto:ops@example.com, or an Apprise URL (slack://…, ntfy://…).",
            "fleets": "None selected: the whole organization.",
        }
        widgets = {"fleets": forms.CheckboxSelectMultiple}

    def __init__(self, *args, organization: Organization, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance.organization = organization
        self.fields["fleets"].queryset = Fleet.objects.filter(organization=organization).order_by("name")
        self.fields["fleets"].required = False

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        validate_target(url)
        return url

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        others = Channel.objects.filter(organization=self.instance.organization, name=name)
        if self.instance.pk:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise ValidationError("This organization already has a channel with this name.")
        return name


class MuteForm(forms.Form):
    hours = forms.IntegerField(min_value=1, max_value=24 * 30, initial=2, label="Mute for (hours)")
    reason = forms.CharField(max_length=200, required=False)
