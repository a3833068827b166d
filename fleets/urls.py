from django.urls import path

from fleets import fleet_page, views

app_name = "fleets"

urlpatterns = [
    path("", views.fleet_list, name="list"),
    path("<slug:org_slug>/<slug:fleet_slug>/", fleet_page.fleet_detail, name="detail"),
]
