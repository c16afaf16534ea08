"""Market pages: thin views over ``marketdata.selectors``."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def market_list(request: HttpRequest) -> HttpResponse:
    return render(request, "marketdata/markets.html", {})


@login_required
def data_status(request: HttpRequest) -> HttpResponse:
    return render(request, "marketdata/markets.html", {})
