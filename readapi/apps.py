from django.apps import AppConfig


class ReadApiConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "readapi"
    verbose_name = "Read API and metrics"
