"""The user's surfaces in a real browser (see ``conftest.py``)."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory
from tests.support import eventually

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def trader(transactional_db):
    user = UserFactory(username="trader")
    user.set_password(PASSWORD)
    user.save()
    return user


def sign_in(browsing, username: str = "trader") -> None:
    page = browsing.page
    page.goto("/")
    page.wait_for_url("**/accounts/login/**")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(browsing.url("/"))


def test_sign_in_and_out(browsing, trader):
    page = browsing.page
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("trader")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").wait_for(state="visible")  # the page answered the wrong password
    sign_in(browsing)
    assert page.locator(".who").inner_text() == "trader"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/accounts/login/**")
    page.goto("/bots/")
    page.wait_for_url("**/accounts/login/?next=/bots/")
    assert browsing.errors == []


def test_a_bot_from_the_form_trades_live_and_a_backtest_draws_its_equity(browsing, trader):
    """The issue's path: sign in, create a bot from the form, start it, see a candle and a
    signal arrive on its page over the WebSocket, run a backtest and see its equity chart."""
    from bots.models import Bot, Signal
    from marketdata.services import ms_to_datetime
    from tests.e2e.market import close_next_minute, instrument_with_history

    page = browsing.page
    instrument = instrument_with_history()
    sign_in(browsing)

    # --- a bot from the form generated from the strategy's parameter schema
    page.goto("/bots/new/")
    page.fill("#id_name", "Browser SMA")
    page.select_option("#id_strategy", "sma_crossover")
    page.select_option("#id_instrument", str(instrument.pk))
    page.select_option("#id_timeframe", "1m")
    page.fill("[name='sma_crossover-fast']", "8")
    page.fill("[name='sma_crossover-slow']", "3")  # refused: the fast average must be faster
    page.click("#bot-submit")
    page.locator("#id_sma_crossover-fast_error, .errorlist").first.wait_for(state="visible")
    assert not Bot.objects.filter(name="Browser SMA").exists()
    page.fill("[name='sma_crossover-fast']", "3")
    page.fill("[name='sma_crossover-slow']", "8")
    page.click("#bot-submit")
    bot = eventually(lambda: Bot.objects.filter(owner=trader, name="Browser SMA").first())
    page.wait_for_url(f"**/bots/{bot.pk}/")
    assert bot.parameters == {"fast": 3, "slow": 8}
    assert page.locator("#bot-status").inner_text() == "stopped"

    # --- start it (the page asks first)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#start-form button")
    page.wait_for_function("document.querySelector('#bot-status').textContent.trim() == 'running'")
    for stream in ("status", "portfolio", "market"):
        page.wait_for_selector(f"#stream-state-{stream}[data-stream-state='live']")
    chart = page.locator("#price-chart")
    page.wait_for_function("Number(document.querySelector('#price-chart').dataset.candles) > 0")
    candles_before = int(chart.get_attribute("data-candles"))
    page.evaluate("window.__sameDocument = true")

    # --- a live minute closes: collector -> candle.closed -> Celery worker -> bot -> signal
    close_ms = close_next_minute(instrument, [101.0, 103.5, 102.2, 104.0])
    signal = eventually(
        lambda: Signal.objects.filter(bot=bot, time=ms_to_datetime(close_ms)).first(),
        timeout=60,
        message="the worker recorded the bot's decision on the new candle",
    )
    page.wait_for_selector(f"#decision-log tr[data-signal-id='{signal.pk}']", timeout=30_000)
    page.wait_for_function(
        f"Number(document.querySelector('#price-chart').dataset.candles) > {candles_before}"
    )
    assert page.evaluate("window.__sameDocument") is True  # arrived live, not by a reload
    row = page.locator(f"#decision-log tr[data-signal-id='{signal.pk}']").inner_text()
    assert signal.action.lower() in row.lower()
    # Times in the viewer's zone (the context runs in Europe/Berlin), UTC on hover.
    stamp = page.locator(f"#decision-log tr[data-signal-id='{signal.pk}'] time").first
    assert "UTC" in (stamp.get_attribute("title") or "")
    assert "UTC" not in stamp.inner_text()
    browsing.screenshot("bot-detail-live")

    # --- the dashboard lists it, live
    page.goto("/")
    page.wait_for_selector("#stream-state-dashboard[data-stream-state='live']")
    assert "Browser SMA" in page.locator(f"#dashboard-bots tr[data-bot-id='{bot.pk}']").inner_text()

    # --- a backtest from its form, run by the worker, its equity and drawdown drawn
    page.goto("/backtests/new/")
    page.select_option("#id_strategy", "sma_crossover")
    page.select_option("#id_instrument", str(instrument.pk))
    page.select_option("#id_timeframe", "1m")
    page.fill("[name='sma_crossover__fast']", "3")
    page.fill("[name='sma_crossover__slow']", "8")
    page.click("#submit-backtest")
    page.wait_for_url("**/backtests/*/")
    page.wait_for_selector("#run-status[data-status='done']", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#equity-chart').dataset.points) > 1")
    page.wait_for_function("Number(document.querySelector('#drawdown-chart').dataset.points) > 1")
    assert page.locator("#metrics .stat").count() > 3
    browsing.screenshot("backtest-result")
    assert browsing.errors == []


def test_pages_fit_a_phone(browsing, trader):
    """Every main page at a phone's width: no sideways scrolling of the page itself (wide
    tables scroll inside their own box)."""
    from tests.e2e.market import instrument_with_history

    instrument = instrument_with_history(minutes=30)
    sign_in(browsing)
    page = browsing.page
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ["/", "/bots/", "/bots/new/", "/markets/", f"/markets/{instrument.pk}/",
                 "/markets/data-status/", "/backtests/", "/backtests/new/", "/optimizations/",
                 "/optimizations/new/"]:  # fmt: skip
        page.goto(path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} scrolls sideways by {overflow}px at 390px"
    browsing.screenshot("phone-market-data-status")
    assert browsing.errors == []


def test_forms_and_tables_work_from_the_keyboard(browsing, trader):
    """No mouse: the strategy select swaps the parameter fields, Tab reaches them, Enter
    submits; a sortable table sorts from its focused heading."""
    from bots.models import Bot
    from tests.e2e.market import instrument_with_history

    instrument = instrument_with_history(minutes=30)
    sign_in(browsing)
    page = browsing.page
    page.goto("/bots/new/?strategy=sma_crossover")
    page.locator("#params-sma_crossover").wait_for(state="visible")
    options = page.eval_on_selector_all("#id_strategy option", "os => os.map(o => o.value)")
    page.focus("#id_strategy")
    # The neighbouring strategy in the list, by the arrow keys alone.
    last = options.index("sma_crossover") == len(options) - 1
    page.keyboard.press("ArrowUp" if last else "ArrowDown")
    chosen = page.eval_on_selector("#id_strategy", "select => select.value")
    assert chosen != "sma_crossover"
    assert page.locator(f"#params-{chosen}").is_visible()
    assert not page.locator("#params-sma_crossover").is_visible()
    page.select_option("#id_strategy", "sma_crossover")
    page.focus("#id_name")
    page.keyboard.type("Keyboard bot")
    page.select_option("#id_instrument", str(instrument.pk))
    page.focus("[name='sma_crossover-fast']")
    page.keyboard.press("Control+A")
    page.keyboard.type("4")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.name")
    assert focused == "sma_crossover-slow", focused  # the next parameter, in order
    page.keyboard.type("12")
    page.keyboard.press("Enter")
    bot = eventually(lambda: Bot.objects.filter(owner=trader, name="Keyboard bot").first())
    page.wait_for_url(f"**/bots/{bot.pk}/")  # the form's redirect, before navigating on
    assert bot.parameters == {"fast": 4, "slow": 12}

    page.goto("/bots/")
    heading = page.locator("table.sortable th[data-sort]").first
    heading.focus()
    page.keyboard.press("Enter")
    assert heading.get_attribute("aria-sort") in ("ascending", "descending")
    assert browsing.errors == []
