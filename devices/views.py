from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def device_list(request):
    # Placeholder until the dashboard issue lands.
    return render(request, "devices/list.html", {})
