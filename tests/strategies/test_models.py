"""Strategy presets: validation against the registry and schema, services, admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from strategies.builtin import SMACrossover
from strategies.models import StrategyPreset
from strategies.services import preset_create, preset_update

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_user_modules(settings):
    settings.TRADEAPP_STRATEGY_MODULES = []


def test_preset_clean_rejects_an_unknown_strategy() -> None:
    preset = StrategyPreset(name="x", strategy="sma_crosover", parameters={})
    with pytest.raises(ValidationError) as caught:
        preset.full_clean()
    assert list(caught.value.message_dict) == ["strategy"]
    assert "unknown strategy 'sma_crosover'; available: bollinger_reversion" in str(caught.value)


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"fast": 50, "slow": 10}, "sma_crossover: parameter 'fast': fast (50) must be less than"),
        ({"fast": "ten"}, "parameter 'fast': must be an integer, got str 'ten'"),
        ({"speed": 3}, "parameter 'speed': unknown parameter"),
        ([1, 2], "parameters must be a JSON object"),
    ],
)
def test_preset_clean_rejects_invalid_parameters(parameters, message) -> None:
    preset = StrategyPreset(name="x", strategy="sma_crossover", parameters=parameters)
    with pytest.raises(ValidationError) as caught:
        preset.full_clean()
    assert list(caught.value.message_dict) == ["parameters"]
    assert message in caught.value.message_dict["parameters"][0]


def test_preset_clean_fills_in_defaults_and_builds_the_strategy(user) -> None:
    preset = preset_create(
        name="fast 5", strategy="sma_crossover", parameters={"fast": 5}, owner=user
    )
    preset.refresh_from_db()
    assert preset.parameters == {"fast": 5, "slow": 30}
    strategy = preset.build()
    assert isinstance(strategy, SMACrossover)
    assert strategy.parameters == {"fast": 5, "slow": 30}
    assert str(preset) == "sma_crossover: fast 5"


def test_preset_names_are_unique_per_owner_and_among_shared(user, user_factory) -> None:
    preset_create(name="default", strategy="sma_crossover", owner=user)
    preset_create(name="default", strategy="sma_crossover", owner=user_factory())
    preset_create(name="default", strategy="ema_crossover", owner=user)
    with pytest.raises(ValidationError, match="already has a preset of that name"):
        preset_create(name="default", strategy="sma_crossover", owner=user)
    shared = preset_create(name="default", strategy="sma_crossover", owner=None)
    assert str(shared) == "sma_crossover: default (shared)"
    with pytest.raises(ValidationError, match="shared preset of that name already exists"):
        preset_create(name="default", strategy="sma_crossover", owner=None)


def test_preset_visible_to_is_own_plus_shared(user, user_factory) -> None:
    mine = preset_create(name="mine", strategy="rsi_reversion", owner=user)
    shared = preset_create(name="shared", strategy="rsi_reversion")
    preset_create(name="theirs", strategy="rsi_reversion", owner=user_factory())
    assert set(StrategyPreset.objects.visible_to(user)) == {mine, shared}
    assert list(StrategyPreset.objects.shared()) == [shared]


def test_preset_for_a_user_strategy(settings, user) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = ["tests.strategies.user_strategies"]
    preset = preset_create(name="n8", strategy="close_above_sma", parameters={"n": 8}, owner=user)
    assert preset.build().parameters == {"n": 8}
    settings.TRADEAPP_STRATEGY_MODULES = []
    with pytest.raises(ValidationError, match="unknown strategy 'close_above_sma'"):
        preset.full_clean()


def test_preset_update_validates_like_create(user) -> None:
    preset = preset_create(name="p", strategy="bollinger_reversion", owner=user)
    preset_update(preset=preset, parameters={"n": 30, "k": 2.5}, description="wider")
    preset.refresh_from_db()
    assert preset.parameters == {"n": 30, "k": 2.5}
    with pytest.raises(ValidationError, match="parameter 'k': must be <= 10"):
        preset_update(preset=preset, parameters={"k": 11})
    with pytest.raises(TypeError, match="unexpected field"):
        preset_update(preset=preset, colour="red")


# -- admin --------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, staff_user, settings):
    staff_user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="strategies")
    )
    client.force_login(staff_user)
    return client


def test_preset_admin_changelist_renders_with_filters_and_search(admin_client, user) -> None:
    preset_create(name="swing", strategy="sma_crossover", owner=user)
    preset_create(name="scalp", strategy="rsi_reversion")
    url = reverse("admin:strategies_strategypreset_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    content = page.content.decode()
    assert "swing" in content and "scalp" in content
    assert "By strategy" in content
    filtered = admin_client.get(url, {"strategy": "rsi_reversion"}).content.decode()
    assert "scalp" in filtered and "swing" not in filtered
    searched = admin_client.get(url, {"q": "swing"}).content.decode()
    assert "swing" in searched and "scalp" not in searched


def test_preset_admin_add_form_lists_strategies_and_parameters(admin_client) -> None:
    page = admin_client.get(reverse("admin:strategies_strategypreset_add"))
    assert page.status_code == 200
    content = page.content.decode()
    assert '<option value="macd_crossover">macd_crossover</option>' in content
    assert "<code>overbought</code>" in content  # the parameter reference of every strategy


def test_preset_admin_shows_validation_errors_and_saves_valid_input(admin_client) -> None:
    url = reverse("admin:strategies_strategypreset_add")
    form = {
        "name": "bad",
        "strategy": "sma_crossover",
        "parameters": '{"fast": 50, "slow": 10}',
        "description": "",
    }
    page = admin_client.post(url, form)
    assert page.status_code == 200
    assert "fast (50) must be less than slow (10)" in page.content.decode()
    assert not StrategyPreset.objects.exists()

    form.update(name="good", parameters='{"fast": 5}')
    assert admin_client.post(url, form).status_code == 302
    preset = StrategyPreset.objects.get()
    assert preset.parameters == {"fast": 5, "slow": 30}
    assert preset.owner is None

    change = admin_client.get(reverse("admin:strategies_strategypreset_change", args=[preset.pk]))
    assert change.status_code == 200
    assert "<code>slow</code>" in change.content.decode()
    assert "<code>overbought</code>" not in change.content.decode()  # only its own strategy
