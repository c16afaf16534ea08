from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from tradeapp.health import system_health


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when database, Redis, a Celery worker, collection and (under `make run`) every
    process are up, else 503.

    Open to load balancers without sign-in, so only staff see error texts, worker names and
    the processes' pids and exits; others get the verdicts and counts.
    """
    health = system_health()
    if not (request.user.is_authenticated and request.user.is_staff):
        for name in ("database", "redis", "celery", "collection", "processes"):
            part = health.get(name)
            if part is None:  # processes: not run by supervisord
                continue
            health[name] = {"ok": part["ok"], "ms": part["ms"]}
            if name == "celery" and part["ok"]:
                health[name]["workers"] = len(part["workers"])
            if name == "collection" and part["ok"]:
                health[name]["instruments"] = part["instruments"]
            if name == "processes" and "processes" in part:
                listed = part["processes"]
                health[name]["running"] = sum(p["state"] == "RUNNING" for p in listed)
                health[name]["total"] = len(listed)
                health[name]["restarts"] = sum(p["restarts"] for p in listed)
    health["status"] = "ok" if health["ok"] else "unavailable"
    return JsonResponse(health, status=200 if health["ok"] else 503)
