"""Every admin page of every registered model renders for a superuser, and needs sign-in."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from tests.factories import StaffUserFactory

MODELS = sorted((model._meta.app_label, model._meta.model_name) for model in admin.site._registry)


@pytest.fixture(autouse=True)
def _plain_http(settings):
    settings.SECURE_SSL_REDIRECT = False


@pytest.mark.django_db
@pytest.mark.parametrize(("app", "model"), MODELS)
def test_admin_changelist_and_add_pages_render(client, app, model):
    client.force_login(StaffUserFactory(is_superuser=True))
    changelist = client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert changelist.status_code == 200
    add = client.get(reverse(f"admin:{app}_{model}_add"))
    assert add.status_code in (200, 403)  # 403: audit data is never added by hand


@pytest.mark.django_db
@pytest.mark.parametrize(("app", "model"), MODELS)
def test_admin_pages_require_sign_in(client, app, model):
    response = client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
