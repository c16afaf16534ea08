from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from strategies.models import StrategyPreset
from strategies.registry import StrategyModuleError, available, get_strategy


def _parameter_rows(strategy_cls) -> str:
    rows = format_html_join(
        "",
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                p["name"],
                p["type"],
                p["default"],
                "" if p["minimum"] is None else p["minimum"],
                "" if p["maximum"] is None else p["maximum"],
                p["help"],
            )
            for p in strategy_cls.parameter_schema()
        ),
    )
    return format_html(
        "<table><thead><tr><th>parameter</th><th>type</th><th>default</th><th>min</th>"
        "<th>max</th><th>meaning</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


class StrategyPresetForm(forms.ModelForm):
    """The strategy is picked from the registry; the model's clean() reports parameter errors."""

    class Meta:
        model = StrategyPreset
        fields = ("name", "strategy", "parameters", "owner", "description")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            names = available()
        except StrategyModuleError:
            names = []  # the model's clean() shows the configuration error on the field
        current = self.instance.strategy if self.instance.pk else ""
        if current and current not in names:
            names.append(current)  # keep it selectable: clean() then says why it is invalid
        self.fields["strategy"].widget = forms.Select(
            choices=[("", "---------"), *((n, n) for n in names)]
        )


@admin.register(StrategyPreset)
class StrategyPresetAdmin(admin.ModelAdmin):
    form = StrategyPresetForm
    list_display = ("name", "strategy", "owner", "parameters", "updated_at")
    list_filter = ("strategy", ("owner", admin.EmptyFieldListFilter), "owner")
    search_fields = ("name", "strategy", "description", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = ("parameter_reference", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "strategy", "parameters", "owner", "description")}),
        ("Reference", {"fields": ("parameter_reference", "created_at", "updated_at")}),
    )

    @admin.display(description="Parameters of the strategy")
    def parameter_reference(self, obj: StrategyPreset | None) -> str:
        names = [obj.strategy] if obj is not None and obj.strategy else []
        try:
            names = names or available()
            sections = [(name, _parameter_rows(get_strategy(name))) for name in names]
        except (KeyError, StrategyModuleError) as exc:
            return str(exc)
        return format_html_join("", "<p><strong>{}</strong></p>{}", sections)
