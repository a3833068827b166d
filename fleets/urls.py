from django.urls import path

from fleets import views

app_name = "fleets"

urlpatterns = [
    path("", views.fleet_list, name="list"),
]
