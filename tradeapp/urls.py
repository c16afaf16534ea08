from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from tradeapp import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    # The pages land in a later change; until then the admin is the way in.
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
