"""Backtest and optimisation pages: thin views over ``backtests.services``."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def backtest_list(request: HttpRequest) -> HttpResponse:
    return render(request, "backtests/list.html", {})


@login_required
def optimization_list(request: HttpRequest) -> HttpResponse:
    return render(request, "backtests/list.html", {})
