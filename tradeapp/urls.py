from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from bots import views as bot_views
from tradeapp import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    # The pages (server-rendered; every one but sign-in needs a signed-in user).
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", bot_views.dashboard, name="dashboard"),
    path("bots/", include("bots.urls")),
    path("markets/", include("marketdata.urls")),
    path("", include("backtests.urls")),
]
