app_name = "fleets"

urlpatterns: list = []
