"""The bots' pages: thin views over ``bots.services``/``bots.selectors``."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "bots/dashboard.html", {})


@login_required
def bot_list(request: HttpRequest) -> HttpResponse:
    return render(request, "bots/dashboard.html", {})
