"""The forms of the backtest and optimisation pages.

Strategy parameters are not hand-written fields: they are generated from each strategy's
parameter schema (``strategies.base.Parameter``), one fieldset per registered strategy, named
``<strategy>__<parameter>`` (optimisation grids: ``<strategy>__<parameter>__from|to|step|values``)
so that strategies sharing a parameter name never collide. The page shows the chosen
strategy's fieldset and disables the others (disabled inputs are not submitted).

Validation stays where it lives: the strategy validates its parameters (its
``StrategyParameterError`` names the parameter, and ``add_strategy_error`` puts the message next
to that field), the engine validates the costs and sizing (``services.run_options_validate``),
and the services validate the run as a whole. The forms only parse input.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from backtests import services
from backtests.metrics import METRIC_NAMES
from backtests.models import BacktestRun, OptimizationRun
from marketdata.models import Instrument, Timeframe
from strategies.base import Parameter, StrategyParameterError
from strategies.registry import available, get_strategy

SEP = "__"
#: The strategy a blank form shows first.
DEFAULT_STRATEGY = "sma_crossover"
#: Values one parameter's range may give (the size of the whole grid is the service's rule).
MAX_VALUES = 1_000

OPTION_FIELDS = (
    "cash", "fee", "slippage", "size", "fill", "allow_short", "fee_in_base", "stop_loss",
    "take_profit", "trailing_stop",
)  # fmt: skip
METRIC_LABELS = {
    "total_return": "Total return",
    "cagr": "CAGR",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "max_drawdown": "Max drawdown (lower is better)",
    "max_drawdown_duration": "Max drawdown duration (lower is better)",
    "win_rate": "Win rate",
    "profit_factor": "Profit factor",
    "expectancy": "Expectancy",
    "exposure": "Exposure",
    "n_trades": "Trades",
    "final_equity": "Final equity",
}


def _strategies() -> list[tuple[str, type]]:
    return [(name, get_strategy(name)) for name in available()]


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _widget_hints(spec: Parameter) -> dict[str, str]:
    attrs = {"inputmode": "numeric" if spec.type is int else "decimal"}
    if spec.minimum is not None:
        attrs["min"] = _number(spec.minimum)
    if spec.maximum is not None:
        attrs["max"] = _number(spec.maximum)
    attrs["step"] = "1" if spec.type is int else "any"
    return attrs


def _bounds_help(spec: Parameter) -> str:
    parts = [spec.help.rstrip(".")] if spec.help else []
    if spec.minimum is not None or spec.maximum is not None:
        low = _number(spec.minimum) if spec.minimum is not None else "-inf"
        high = _number(spec.maximum) if spec.maximum is not None else "inf"
        parts.append(f"{low} to {high}")
    parts.append(f"default {spec.default}")
    return "; ".join(parts)


def parameter_field(spec: Parameter) -> forms.Field:
    """A form field for one strategy parameter: typed input, the schema's help and bounds as
    hints. Bounds are not checked here but by the strategy (one source of the rules)."""
    common = {"required": False, "label": spec.name, "help_text": _bounds_help(spec)}
    if spec.type is bool:
        return forms.BooleanField(**common)
    if spec.type is str:
        if spec.choices:
            return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
        return forms.CharField(**common)
    widget = forms.NumberInput(attrs=_widget_hints(spec))
    if spec.type is int:
        return forms.IntegerField(widget=widget, **common)
    return forms.FloatField(widget=widget, **common)


class UTCDateTimeField(forms.DateTimeField):
    """A ``datetime-local`` input read as UTC (the page says so)."""

    widget = forms.DateTimeInput(
        attrs={"type": "datetime-local", "step": "60"}, format="%Y-%m-%dT%H:%M"
    )

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RunForm(forms.Form):
    """What backtests and optimisations share: strategy, market, period, costs, sizing, stops."""

    strategy = forms.ChoiceField(choices=[])
    instrument = forms.ModelChoiceField(queryset=Instrument.objects.none(), empty_label=None)
    timeframe = forms.ChoiceField(choices=Timeframe.choices, initial=Timeframe.H1)
    start = UTCDateTimeField(label="Start (UTC)", help_text="First candle close time included.")
    end = UTCDateTimeField(label="End (UTC)", help_text="Last candle close time included.")
    cash = forms.FloatField(
        initial=10_000,
        help_text="Starting capital (quote currency).",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )
    fee = forms.FloatField(
        initial=0.001,
        help_text="Fraction of notional per fill (0.001 = 0.1%).",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )
    slippage = forms.FloatField(
        initial=0.0,
        help_text="Fraction of price, against you, per fill.",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )
    size = forms.FloatField(
        initial=1.0,
        help_text="Fraction of equity per entry, in (0, 1].",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0", "max": "1"}),
    )
    fill = forms.ChoiceField(
        choices=BacktestRun._meta.get_field("fill").choices,
        initial="next_open",
        help_text="When a signal's order fills.",
    )
    allow_short = forms.BooleanField(required=False, help_text="Sell signals open shorts.")
    fee_in_base = forms.BooleanField(
        required=False,
        label="Fee in the coin bought",
        help_text="A buy's fee is taken from the coin bought, as Binance does unless fees are "
        "paid in BNB. Spot only: not with shorts.",
    )
    stop_loss = forms.FloatField(
        required=False,
        help_text="Fraction below entry, e.g. 0.05.",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )
    take_profit = forms.FloatField(
        required=False,
        help_text="Fraction above entry, e.g. 0.1.",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )
    trailing_stop = forms.FloatField(
        required=False,
        help_text="Fraction below the peak.",
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )

    #: The field names of each strategy's fieldset, filled by ``add_parameter_fields``.
    strategy_fields: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        strategies = _strategies()
        self.fields["strategy"].choices = [(n, cls.title or n) for n, cls in strategies]
        if DEFAULT_STRATEGY in dict(strategies):
            self.fields["strategy"].initial = DEFAULT_STRATEGY
        self.fields["instrument"].queryset = Instrument.objects.select_related("exchange")
        self.strategy_fields = {}
        for name, cls in strategies:
            self.strategy_fields[name] = self.add_parameter_fields(name, cls)

    def add_parameter_fields(self, strategy: str, cls: type) -> list[str]:
        """Add ``strategy``'s parameter fields; return their names. Here one value per
        parameter, at its default (a backtest); ``OptimizationForm`` asks a range or list."""
        names = []
        for spec in cls.parameter_specs:
            key = f"{strategy}{SEP}{spec.name}"
            self.fields[key] = parameter_field(spec)
            self.initial.setdefault(key, spec.default)
            names.append(key)
        return names

    @property
    def chosen_strategy(self) -> str:
        """The strategy the page shows: the submitted one, else the initial, else the first."""
        names = [name for name, _ in self.fields["strategy"].choices]
        value = self.data.get("strategy") if self.is_bound else None
        value = value or self.initial.get("strategy") or self.fields["strategy"].initial
        return value if value in names else (names[0] if names else "")

    def parameter_fieldsets(self) -> list[dict[str, Any]]:
        """For the template: one fieldset per strategy (its bound fields, whether it is shown)."""
        chosen = self.chosen_strategy
        sets = []
        for name, cls in _strategies():
            fields = [self[f] for f in self.strategy_fields.get(name, [])]
            # Per parameter, its inputs (one for a backtest; from/to/step/values for a grid).
            params = [
                {"name": spec.name,
                 "fields": [f for f in fields if f.name.split(SEP)[1] == spec.name]}
                for spec in cls.parameter_specs
            ]  # fmt: skip
            sets.append({
                "strategy": name, "title": cls.title or name, "active": name == chosen,
                "fields": fields, "params": params,
            })  # fmt: skip
        return sets

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", "The end must be after the start.")
        options = {name: data.get(name) for name in OPTION_FIELDS}
        if all(name in data for name in OPTION_FIELDS):
            try:
                services.run_options_validate(options)
            except services.RunOptionsError as exc:
                self.add_error(exc.field if exc.field in self.fields else None, str(exc))
        return data

    def run_fields(self) -> dict[str, Any]:
        """The run's model fields (market, period, costs) from the cleaned data."""
        data = self.cleaned_data
        fields = {name: data[name] for name in ("strategy", "instrument", "timeframe", "start",
                                                "end")}  # fmt: skip
        return fields | {name: data.get(name) for name in OPTION_FIELDS}

    def parameter_error_field(self, exc: StrategyParameterError) -> str | None:
        """The form field a strategy's refusal belongs to (None: above the form): here the
        parameter's one field; ``OptimizationForm`` picks among its range and list."""
        strategy = self.cleaned_data.get("strategy")
        return f"{strategy}{SEP}{exc.parameter}" if exc.parameter and strategy else None

    def add_strategy_error(self, exc: StrategyParameterError) -> None:
        """Show a strategy's refusal next to the parameter it names (else above the form)."""
        field = self.parameter_error_field(exc)
        self.add_error(field if field in self.fields else None, exc.message)

    def add_service_errors(self, exc: ValidationError) -> None:
        """The service's refusals (keyed by the run's field names) next to the same inputs;
        those about the run as a whole (the search space's size, the user's limits on runs at
        once and bars) above the form."""
        errors = exc.message_dict if hasattr(exc, "error_dict") else {None: exc.messages}
        for field, messages in errors.items():
            target = field if field in self.fields else None
            for message in messages:
                self.add_error(target, message)


class BacktestForm(RunForm):
    """``/backtests/new/``: one backtest (``RunForm``'s one field per parameter)."""

    def parameters(self) -> dict[str, Any]:
        """The chosen strategy's submitted parameters; an empty input takes the default."""
        strategy = self.cleaned_data["strategy"]
        cls = get_strategy(strategy)
        values = {}
        for spec in cls.parameter_specs:
            value = self.cleaned_data.get(f"{strategy}{SEP}{spec.name}")
            if spec.type is bool:
                values[spec.name] = bool(value)
            elif value is not None and value != "":
                values[spec.name] = value
        return values

    @classmethod
    def initial_from(cls, run: BacktestRun | OptimizationRun, parameters: dict[str, Any]) -> dict:
        """Initial values reproducing ``run`` with ``parameters`` (re-run, "backtest these")."""
        initial = {
            "strategy": run.strategy, "instrument": run.instrument_id, "timeframe": run.timeframe,
            "start": run.start, "end": run.end,
        } | {name: getattr(run, name) for name in OPTION_FIELDS}  # fmt: skip
        for name, value in (parameters or {}).items():
            initial[f"{run.strategy}{SEP}{name}"] = value
        return initial


def _parse_values(text: str, spec: Parameter) -> list[Any]:
    """A comma-separated list of values for ``spec`` (``true``/``false`` for booleans)."""
    values: list[Any] = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        if spec.type is bool:
            if raw.lower() not in ("true", "false"):
                raise forms.ValidationError(f"{raw!r} is not true or false.")
            values.append(raw.lower() == "true")
        elif spec.type is str:
            values.append(raw)
        else:
            try:
                number = float(raw)
            except ValueError:
                raise forms.ValidationError(f"{raw!r} is not a number.") from None
            if spec.type is int:
                if not number.is_integer():
                    raise forms.ValidationError(f"{raw!r} is not a whole number.")
                number = int(number)
            values.append(number)
    return list(dict.fromkeys(values))


def _range_values(low: float, high: float, step: float, spec: Parameter) -> list[Any]:
    if step <= 0:
        raise forms.ValidationError("The step must be positive.")
    if high < low:
        raise forms.ValidationError("'To' must not be below 'from'.")
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > MAX_VALUES:
        raise forms.ValidationError(f"That range gives {count} values; at most {MAX_VALUES}.")
    values = [round(low + k * step, 10) for k in range(count)]
    if spec.type is int:
        if not all(float(v).is_integer() for v in values):
            raise forms.ValidationError("A whole-number parameter needs whole from and step.")
        values = [int(v) for v in values]
    return values


class OptimizationForm(RunForm):
    """``/optimizations/new/``: a grid, random or walk-forward search over a parameter space."""

    method = forms.ChoiceField(choices=OptimizationRun.Method.choices, initial="grid")
    objective = forms.ChoiceField(
        choices=[(m, METRIC_LABELS.get(m, m)) for m in METRIC_NAMES if m in METRIC_LABELS],
        initial="sharpe", help_text="The metric that ranks the combinations.",
    )  # fmt: skip
    n_iter = forms.IntegerField(
        label="Combinations", initial=50, min_value=1, required=False,
        help_text="Random search: how many combinations to draw.",
    )  # fmt: skip
    seed = forms.IntegerField(initial=0, required=False, help_text="Random search: the seed.")
    train_bars = forms.IntegerField(
        min_value=2, required=False, help_text="Walk-forward: in-sample bars per window."
    )
    test_bars = forms.IntegerField(
        min_value=1, required=False, help_text="Walk-forward: out-of-sample bars per window."
    )

    def add_parameter_fields(self, strategy: str, cls: type) -> list[str]:
        names = []
        for spec in cls.parameter_specs:
            key = f"{strategy}{SEP}{spec.name}"
            help_text = _bounds_help(spec)
            if spec.type in (int, float):
                low, high, step = self._default_range(spec)
                attrs = _widget_hints(spec)
                field_type = forms.IntegerField if spec.type is int else forms.FloatField
                for part, label, value in (("from", "from", low), ("to", "to", high),
                                           ("step", "step", step)):  # fmt: skip
                    widget_attrs = dict(attrs) if part != "step" else {"step": "any", "min": "0"}
                    self.fields[f"{key}{SEP}{part}"] = field_type(
                        required=False, label=label,
                        widget=forms.NumberInput(attrs=widget_attrs),
                    )  # fmt: skip
                    self.initial.setdefault(f"{key}{SEP}{part}", value)
                    names.append(f"{key}{SEP}{part}")
                values_help = "Or a list such as 5, 10, 20 (overrides the range). " + help_text
            else:
                values_help = "Comma-separated values"
                values_help += " (true, false)" if spec.type is bool else ""
                values_help += f"; {help_text}"
                self.initial.setdefault(
                    f"{key}{SEP}values", str(spec.default).lower() if spec.type is bool
                    else spec.default,
                )  # fmt: skip
            self.fields[f"{key}{SEP}values"] = forms.CharField(
                required=False, label="values", help_text=values_help
            )
            names.append(f"{key}{SEP}values")
        return names

    @staticmethod
    def _default_range(spec: Parameter) -> tuple[Any, Any, Any]:
        """Five values around the default, within the bounds; the default alone if no step."""
        step = spec.step if spec.step is not None else (1 if spec.type is int else None)
        if step is None:
            return spec.default, spec.default, None
        low = spec.default - 2 * step
        high = spec.default + 2 * step
        # Clipped to the bounds on the step's multiples, as the strategy's own grid is.
        if spec.minimum is not None and low < spec.minimum:
            low = math.ceil(spec.minimum / step - 1e-9) * step
        if spec.maximum is not None and high > spec.maximum:
            high = math.floor(spec.maximum / step + 1e-9) * step
        high = max(high, low)
        cast = spec.type
        return cast(low), cast(high), cast(step)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        strategy = data.get("strategy")
        if strategy:
            space = self._space(strategy)
            self.cleaned_data["space"] = space
            try:  # the strategy's own check of each value, shown next to its parameter
                get_strategy(strategy).search_space(space)
            except StrategyParameterError as exc:
                self.add_strategy_error(exc)
        return self.cleaned_data

    def _space(self, strategy: str) -> dict[str, list[Any]]:
        """The values to try per parameter: the list if given, else the range, else the
        default alone (a fixed parameter)."""
        space: dict[str, list[Any]] = {}
        for spec in get_strategy(strategy).parameter_specs:
            key = f"{strategy}{SEP}{spec.name}"
            try:
                text = (self.cleaned_data.get(f"{key}{SEP}values") or "").strip()
                if spec.type in (int, float) and not text:
                    low = self.cleaned_data.get(f"{key}{SEP}from")
                    high = self.cleaned_data.get(f"{key}{SEP}to")
                    step = self.cleaned_data.get(f"{key}{SEP}step")
                    if low is None and high is None:
                        space[spec.name] = [spec.default]
                    elif low is not None and (high is None or high == low):
                        space[spec.name] = [low]
                    elif low is None or step is None:
                        raise forms.ValidationError("Give from, to and step (or a list).")
                    else:
                        space[spec.name] = _range_values(low, high, step, spec)
                    continue
                values = _parse_values(text, spec) if text else [spec.default]
                if len(values) > MAX_VALUES:
                    raise forms.ValidationError(f"At most {MAX_VALUES} values.")
                space[spec.name] = values
            except forms.ValidationError as exc:
                field = (
                    f"{key}{SEP}values"
                    if text or spec.type not in (int, float)
                    else (f"{key}{SEP}from")
                )
                self.add_error(field, exc)
        return space

    def parameter_error_field(self, exc: StrategyParameterError) -> str | None:
        strategy = self.cleaned_data.get("strategy")
        if not exc.parameter or not strategy:
            return None
        key = f"{strategy}{SEP}{exc.parameter}"
        if (self.cleaned_data.get(f"{key}{SEP}values") or "").strip():
            return f"{key}{SEP}values"
        return f"{key}{SEP}from" if f"{key}{SEP}from" in self.fields else f"{key}{SEP}values"

    def optimization_fields(self) -> dict[str, Any]:
        """``services.optimization_create``'s arguments (besides the user) from the cleaned data;
        the rules between them (walk-forward needs its window sizes, the grid's size limit, ...)
        are the service's."""
        data = self.cleaned_data
        method = data["method"]
        walk_forward = method == OptimizationRun.Method.WALK_FORWARD
        return self.run_fields() | {
            "method": method, "space": data["space"], "objective": data["objective"],
            "n_iter": data.get("n_iter") or 0, "seed": data.get("seed") or 0,
            "train_bars": data.get("train_bars") if walk_forward else None,
            "test_bars": data.get("test_bars") if walk_forward else None,
        }  # fmt: skip
