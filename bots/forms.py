"""The bots' page forms: a bot's settings, and its strategy's parameters generated from the
strategy's own schema (``BaseStrategy.parameter_specs``).

The forms only shape the input (types, bounds for the browser, labels, help): every rule is
the services' (``bots.services.bot_create``, ``bot_edit``), and ``service_errors`` puts what
they refuse next to the field it concerns, a strategy's parameter error next to that parameter.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from bots import services
from bots.models import Bot, ExchangeAccount
from marketdata.models import Instrument, Timeframe
from strategies.base import BaseStrategy, Parameter, StrategyParameterError
from strategies.registry import UnknownStrategyError, available, get_strategy

#: The risk and cost fields, in the order the form shows them.
RISK_FIELDS = services.RISK_FIELDS


def parameter_field(spec: Parameter) -> forms.Field:
    """A form field for one declared strategy parameter: its type, bounds, choices and help
    (the bounds also become the input's ``min``/``max``, so the browser says them first)."""
    common: dict[str, Any] = {
        "label": spec.name.replace("_", " "),
        "help_text": spec.help,
        "initial": spec.default,
    }
    if spec.type is bool:
        return forms.BooleanField(required=False, **common)
    if spec.type is str:
        if spec.choices:
            return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
        return forms.CharField(**common)
    bounds = {"min_value": spec.minimum, "max_value": spec.maximum}
    if spec.type is int:
        return forms.IntegerField(**bounds, **common)
    field = forms.FloatField(**bounds, **common)
    field.widget.attrs["step"] = "any"
    return field


class ParametersForm(forms.Form):
    """One strategy's parameters (prefix: the strategy's name, so that every strategy's
    fieldset can be on the page at once and only the chosen one is read)."""

    def __init__(
        self, strategy: str, *args: Any, initial: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, prefix=strategy, initial=initial, **kwargs)
        self.strategy = strategy
        self.strategy_class: type[BaseStrategy] = get_strategy(strategy)
        for spec in self.strategy_class.parameter_specs:
            self.fields[spec.name] = parameter_field(spec)

    @property
    def title(self) -> str:
        return self.strategy_class.title or self.strategy

    @property
    def description(self) -> str:
        """The first paragraph of the strategy's docstring."""
        doc = (self.strategy_class.__doc__ or "").strip()
        return " ".join(doc.split("\n\n", 1)[0].split())

    def parameters(self) -> dict[str, Any]:
        """The cleaned values (call after ``is_valid``)."""
        return {name: self.cleaned_data[name] for name in self.fields}


def strategy_choices() -> list[tuple[str, str]]:
    return [(name, get_strategy(name).title or name) for name in available()]


def _model_field(name: str, **overrides: Any) -> forms.Field:
    """The model field's form field with the model's own validators (bounds of fractions...),
    so that every field's error shows at once rather than after the others are fixed."""
    field = Bot._meta.get_field(name)
    return field.formfield(validators=field.validators, **overrides)


class _RiskFieldsMixin:
    """The risk and cost fields, as the model declares them (validators, help)."""

    def _add_risk_fields(self) -> None:
        for name in RISK_FIELDS:
            self.fields[name] = _model_field(name)  # type: ignore[attr-defined]

    def clean_max_position_fraction(self) -> float:
        value = self.cleaned_data["max_position_fraction"]  # type: ignore[attr-defined]
        if value is not None and value <= 0:
            raise ValidationError("must be more than 0 (a fraction of the cash, up to 1)")
        return value


class BotCreateForm(_RiskFieldsMixin, forms.Form):
    """A new bot's settings; the strategy's parameters come in its ``ParametersForm``."""

    name = forms.CharField(max_length=100)
    strategy = forms.ChoiceField(
        choices=(), help_text="Changing it shows that strategy's parameters."
    )
    instrument = forms.ModelChoiceField(queryset=Instrument.objects.none())
    timeframe = forms.ChoiceField(choices=Timeframe.choices, initial=Timeframe.M1)
    mode = forms.ChoiceField(
        choices=Bot.Mode.choices, initial=Bot.Mode.PAPER, widget=forms.RadioSelect
    )
    account = forms.ModelChoiceField(
        queryset=ExchangeAccount.objects.none(), required=False,
        help_text="Your exchange account for live orders (a live bot needs one).",
    )  # fmt: skip
    capital = _model_field("capital")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["strategy"].choices = strategy_choices()
        self.fields["instrument"].queryset = (
            Instrument.objects.active().select_related("exchange").order_by("symbol", "pk")
        )
        # One's own accounts only, staff included: a bot trades with its owner's credentials.
        self.fields["account"].queryset = ExchangeAccount.objects.filter(owner=user).select_related(
            "exchange"
        )
        self._add_risk_fields()
        self.live_enabled = bool(settings.TRADEAPP_LIVE_TRADING)
        if not self.live_enabled:
            self.fields["mode"].help_text = (
                "Live trading is switched off on this server (TRADEAPP_LIVE_TRADING): a live "
                "bot can be set up but will not start."
            )

    def clean_capital(self) -> Decimal:
        value = self.cleaned_data["capital"]
        if value is not None and value <= 0:
            raise ValidationError("the capital must be positive")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("mode") == Bot.Mode.LIVE and not data.get("account"):
            self.add_error("account", "a live bot needs an exchange account")
        return data

    def bot_fields(self) -> dict[str, Any]:
        """``bot_create``'s keyword arguments (but the user and the parameters)."""
        data = self.cleaned_data
        return {
            "name": data["name"], "strategy": data["strategy"], "instrument": data["instrument"],
            "timeframe": data["timeframe"], "mode": data["mode"], "account": data["account"],
            "capital": data["capital"], **{name: data[name] for name in RISK_FIELDS},
        }  # fmt: skip


class BotEditForm(_RiskFieldsMixin, forms.Form):
    """What may change once a bot exists (``services.EDITABLE``): its name, its risk and cost
    settings and its strategy's parameters (in a ``ParametersForm``)."""

    name = forms.CharField(max_length=100)

    def __init__(self, *args: Any, bot: Bot, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {name: getattr(bot, name) for name in ("name", *RISK_FIELDS)})
        super().__init__(*args, **kwargs)
        self._add_risk_fields()

    def changes(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": self.cleaned_data["name"], "parameters": parameters,
            **{name: self.cleaned_data[name] for name in RISK_FIELDS},
        }  # fmt: skip


def service_errors(
    exc: Exception, form: forms.Form, parameters: ParametersForm | None = None
) -> None:
    """Show what a service refused on the forms: a strategy parameter's error next to that
    parameter, a model field's next to that field, anything else above the form."""
    if isinstance(exc, StrategyParameterError):
        if parameters is not None and exc.parameter in parameters.fields:
            parameters.add_error(exc.parameter, exc.message)
        else:
            form.add_error(None, str(exc))
    elif isinstance(exc, UnknownStrategyError):
        form.add_error("strategy" if "strategy" in form.fields else None, str(exc))
    elif isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            target = field if field in form.fields and field != NON_FIELD_ERRORS else None
            form.add_error(target, errors)
    elif isinstance(exc, ValidationError):
        form.add_error(None, exc.messages)
    else:
        form.add_error(None, str(exc))
