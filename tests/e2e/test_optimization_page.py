"""The optimisation page of a large run in Chromium: the results table sorted and paged on the
server (heading links, the keyboard, the pager), the binned heatmap, a phone's width."""

from __future__ import annotations

from marketdata.models import Exchange
from marketdata.services import instrument_ensure
from tests.backtests.test_optimization_page import reference, store_optimization
from tests.e2e.test_browser import sign_in, trader  # noqa: F401


def test_a_large_optimisation_page_sorts_and_pages_on_the_server(browsing, trader):  # noqa: F811
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    instrument = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    run = store_optimization(
        trader, instrument, fast=list(range(2, 102)), slow=list(range(200, 300))
    )
    sign_in(browsing)
    page = browsing.page
    page.goto(f"/optimizations/{run.pk}/")
    assert page.locator("#heatmap td.cell").count() == 2500
    rows = page.locator("#results-table tbody tr")
    assert rows.count() == 50
    first = lambda: int(rows.first.get_attribute("data-result-id"))  # noqa: E731
    assert first() == reference(run, "sharpe")[0]
    # A heading's link sorts every combination on the server (not the page's rows in place).
    page.locator("#results-table th a", has_text="Return").click()
    page.wait_for_url("**sort=-total_return**")
    assert first() == reference(run, "total_return")[0]
    assert page.locator("#results-table th[aria-sort]").count() == 1
    # From the keyboard: the link of a heading, Enter.
    page.locator("#results-table th a", has_text="Trades").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**sort=-n_trades**")
    assert first() == reference(run, "n_trades")[0]
    # Clicking the heading's cell outside its link follows the link too.
    th = page.locator("#results-table th", has_text="Max DD")
    box = th.bounding_box()
    page.mouse.click(box["x"] + 2, box["y"] + 2)
    page.wait_for_url("**sort=max_drawdown**")
    assert first() == reference(run, "max_drawdown")[0]
    # The pager keeps the sort.
    page.locator("nav.pager a[rel=next]").first.click()
    page.wait_for_url("**sort=max_drawdown&page=2**")
    assert first() == reference(run, "max_drawdown")[50]
    page.locator("nav.pager input[name=page]").first.fill("7")
    page.locator("nav.pager button").first.click()
    page.wait_for_url("**page=7**")
    assert first() == reference(run, "max_drawdown")[300]
    # A phone: the heatmap and the table scroll inside their boxes, not the page.
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, overflow
    browsing.screenshot("optimization-phone")
    assert browsing.errors == []
