from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction


@transaction.atomic
def admin_ensure(*, username: str, password: str, email: str = "") -> tuple[AbstractBaseUser, bool]:
    """Create the superuser ``username`` or reset it to ``password``; return (user, created)."""
    user_model = get_user_model()
    user, created = user_model.objects.select_for_update().get_or_create(
        username=username, defaults={"email": email}
    )
    user.is_staff = True
    user.is_superuser = True
    user.is_active = True
    if created or not user.check_password(password):
        user.set_password(password)
    user.save()
    return user, created
