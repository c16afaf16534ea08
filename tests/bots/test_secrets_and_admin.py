"""Exchange credentials are encrypted at rest and never shown; every bots admin page renders
with data; admin actions start and stop bots through the manager."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from bots import crypto
from bots.models import Bot, BotEvent, ExchangeAccount, RiskBudget
from marketdata.models import Exchange
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import StaffUserFactory

KEY = "AKIA-plain-api-key-4711"
SECRET = "s3cr3t-plain-api-secret-0815"


@pytest.fixture
def admin_client(client, db):
    client.force_login(StaffUserFactory(is_superuser=True))
    return client


@pytest.fixture
def account(user):
    instrument_with_exchange()
    account = ExchangeAccount(
        owner=user, exchange=Exchange.objects.get(ccxt_id="simulated"), label="main"
    )
    account.set_credentials(api_key=KEY, api_secret=SECRET)
    account.save()
    return account


def raw_columns(pk: int) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key_encrypted, api_secret_encrypted FROM bots_exchangeaccount "
            "WHERE id = %s",
            [pk],
        )
        return cursor.fetchone()


def test_credentials_are_encrypted_at_rest(account):
    stored_key, stored_secret = raw_columns(account.pk)
    assert KEY not in stored_key and SECRET not in stored_secret
    assert stored_key != stored_secret
    fresh = ExchangeAccount.objects.get(pk=account.pk)
    assert fresh.api_key() == KEY and fresh.api_secret() == SECRET
    for text in (str(fresh), repr(fresh), fresh.credentials_state):
        assert KEY not in text and SECRET not in text
    assert fresh.credentials_state == "key set, secret set"


def test_credentials_need_the_fernet_key_and_rotate(account, settings):
    old = list(settings.TRADEAPP_FERNET_KEYS)
    new = Fernet.generate_key().decode()
    with override_settings(TRADEAPP_FERNET_KEYS=[Fernet.generate_key().decode()]):
        with pytest.raises(InvalidToken):
            ExchangeAccount.objects.get(pk=account.pk).api_secret()
    with override_settings(TRADEAPP_FERNET_KEYS=[new, *old]):
        fresh = ExchangeAccount.objects.get(pk=account.pk)
        assert fresh.api_secret() == SECRET
        fresh.rotate_credentials()
        fresh.save()
    with override_settings(TRADEAPP_FERNET_KEYS=[new]):
        assert ExchangeAccount.objects.get(pk=account.pk).api_key() == KEY
    assert crypto.decrypt(crypto.encrypt("x")) == "x"


def test_admin_never_shows_credentials_and_keeps_them_when_left_empty(admin_client, account):
    url = reverse("admin:bots_exchangeaccount_change", args=[account.pk])
    page = admin_client.get(url).content.decode()
    assert KEY not in page and SECRET not in page
    stored_key, stored_secret = raw_columns(account.pk)
    assert stored_key not in page and stored_secret not in page
    assert "key set, secret set" in page
    listing = admin_client.get(reverse("admin:bots_exchangeaccount_changelist")).content.decode()
    assert KEY not in listing and "key set" in listing
    # Saving with the write-only fields empty keeps the credentials.
    form = {"owner": account.owner_id, "exchange": account.exchange_id, "label": "renamed"}
    response = admin_client.post(url, {**form, "api_key": "", "api_secret": ""})
    assert response.status_code == 302
    fresh = ExchangeAccount.objects.get(pk=account.pk)
    assert fresh.label == "renamed" and fresh.api_secret() == SECRET
    # A new secret replaces the old one, encrypted.
    admin_client.post(url, {**form, "api_key": "", "api_secret": "rotated-1"})
    assert ExchangeAccount.objects.get(pk=account.pk).api_secret() == "rotated-1"
    assert "rotated-1" not in raw_columns(account.pk)[1]


def test_every_bots_admin_page_renders_with_data(admin_client, user):
    from bots.manager import BotManager

    instrument = instrument_with_exchange()
    candles = walk(200, seed=3)
    store(instrument, candles, slice(0, 40))
    bot = make_bot(user, instrument, stop_loss=0.004)
    BotManager().start_bot(bot.pk)
    for close_ms in store(instrument, candles, slice(40, 200)):
        BotManager().process_candle(instrument.pk, "1m", close_ms)
    RiskBudget.objects.create(owner=user, max_exposure=50_000)
    for model in ("bot", "signal", "order", "fill", "trade", "position", "botevent",
                  "riskbudget", "exchangeaccount"):  # fmt: skip
        listing = admin_client.get(reverse(f"admin:bots_{model}_changelist"))
        assert listing.status_code == 200, model
        obj = apps.get_model("bots", model).objects.first()
        if obj is not None:
            page = admin_client.get(reverse(f"admin:bots_{model}_change", args=[obj.pk]))
            assert page.status_code == 200, model
    assert admin_client.get(reverse("admin:bots_signal_add")).status_code == 403


def test_admin_actions_start_and_stop_bots(admin_client, user):
    instrument = instrument_with_exchange()
    bots = [make_bot(user, instrument, name=f"b{i}") for i in range(2)]
    url = reverse("admin:bots_bot_changelist")
    ids = [str(b.pk) for b in bots]
    admin_client.post(url, {"action": "start_bots", "_selected_action": ids})
    assert set(Bot.objects.values_list("status", flat=True)) == {"running"}
    admin_client.post(url, {"action": "start_bots", "_selected_action": ids})
    admin_client.post(url, {"action": "stop_bots", "_selected_action": ids})
    assert set(Bot.objects.values_list("status", flat=True)) == {"stopped"}
    assert BotEvent.objects.filter(kind="started").count() == 2
    assert BotEvent.objects.filter(kind="stopped").count() == 2


def test_admin_bot_form_names_the_bad_parameter(admin_client, user):
    instrument = instrument_with_exchange()
    response = admin_client.post(reverse("admin:bots_bot_add"), {
        "owner": user.pk, "name": "x", "strategy": "sma_crossover",
        "parameters": '{"fast": 50, "slow": 10}', "instrument": instrument.pk,
        "timeframe": "1m", "mode": "paper", "capital": "1000", "max_position_fraction": "1",
        "cooldown_candles": "0", "fee": "0.001", "slippage": "0",
    })  # fmt: skip
    assert response.status_code == 200
    assert "sma_crossover: parameter" in response.content.decode()
    assert not Bot.objects.exists()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_admin_bot_actions_report_failures_and_counts(admin_client, user, account, settings):
    settings.TRADEAPP_LIVE_TRADING = False
    instrument = instrument_with_exchange()
    paper = make_bot(user, instrument, name="paper")
    live = make_bot(user, instrument, name="live", mode="live", account=account)
    url = reverse("admin:bots_bot_changelist")
    both = [str(paper.pk), str(live.pk)]
    response = admin_client.post(
        url, {"action": "start_bots", "_selected_action": both}, follow=True
    )
    assert response.status_code == 200
    text = messages_of(response)
    assert "1 bot(s) started, 0 already running, 1 failed." in text, text
    assert any(m.startswith(f"{live}: ") for m in text), text  # the refusal, per bot
    paper.refresh_from_db()
    live.refresh_from_db()
    assert (paper.status, live.status) == ("running", "stopped")
    response = admin_client.post(
        url, {"action": "stop_bots", "_selected_action": both}, follow=True
    )
    assert "1 bot(s) stopped, 1 already stopped, 0 failed." in messages_of(response)
    assert Bot.objects.get(pk=paper.pk).status == "stopped"


def test_admin_bot_edits_go_through_the_manager_and_only_while_stopped(admin_client, user):
    instrument = instrument_with_exchange()
    bot = make_bot(user, instrument, name="editable")
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="name"' in page and 'name="parameters"' in page
    assert 'name="capital"' not in page and 'name="strategy"' not in page  # fixed once made
    form = {
        "name": "renamed", "parameters": '{"fast": 4, "slow": 9}', "max_position_fraction": "0.5",
        "stop_loss": "0.02", "take_profit": "", "trailing_stop": "", "cooldown_candles": "0",
        "max_daily_loss": "", "fee": "0.001", "slippage": "0.0005",
        "capital": "999999", "strategy": "ema_crossover",  # ignored: not fields of this form
    }  # fmt: skip
    assert admin_client.post(url, form).status_code == 302
    bot.refresh_from_db()
    assert (bot.name, bot.parameters, bot.stop_loss) == ("renamed", {"fast": 4, "slow": 9}, 0.02)
    assert (bot.capital, bot.strategy) == (10_000, "sma_crossover")
    event = BotEvent.objects.get(bot=bot, kind=BotEvent.Kind.STATE_UPDATED)
    assert event.actor.is_superuser and "parameters" in event.message
    bad = admin_client.post(url, {**form, "parameters": '{"fast": 40, "slow": 9}'})
    assert bad.status_code == 200 and "sma_crossover: parameter" in bad.content.decode()

    from bots.manager import BotManager

    BotManager().start_bot(bot.pk)
    page = admin_client.get(url).content.decode()
    assert 'name="name"' not in page and 'name="parameters"' not in page  # read-only now
    admin_client.post(url, {**form, "name": "while running"})
    bot.refresh_from_db()
    assert bot.name == "renamed" and bot.status == "running"
