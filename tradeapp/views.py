from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from tradeapp.health import system_health


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when database, Redis and a Celery worker are all up, else 503.

    Open to load balancers without sign-in, so only staff see error texts and worker names.
    """
    health = system_health()
    if not (request.user.is_authenticated and request.user.is_staff):
        for name in ("database", "redis", "celery", "collection"):
            part = health[name]
            health[name] = {"ok": part["ok"], "ms": part["ms"]}
            if name == "celery" and part["ok"]:
                health[name]["workers"] = len(part["workers"])
            if name == "collection" and part["ok"]:
                health[name]["instruments"] = part["instruments"]
    health["status"] = "ok" if health["ok"] else "unavailable"
    return JsonResponse(health, status=200 if health["ok"] else 503)
