from django.urls import path, re_path

from devices import columns, saved_views, views

app_name = "devices"

urlpatterns = [
    path("", views.device_list, name="list"),
    path("export.csv", views.device_export, name="export"),
    path("columns/", columns.choose_columns, name="columns"),
    path("views/", saved_views.save_view, name="view-save"),
    path("views/<int:pk>/rename/", saved_views.rename_view, name="view-rename"),
    path("views/<int:pk>/delete/", saved_views.delete_view, name="view-delete"),
    # 32 or 62 hex characters (docs/design.md, Device API); anything else is a 404 without a query.
    re_path(r"^(?P<uuid>[0-9a-fA-F]{32}|[0-9a-fA-F]{62})/$", views.device_detail, name="detail"),
]
