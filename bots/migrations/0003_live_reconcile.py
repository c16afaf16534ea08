"""Reconciliation of live bots: its BotEvent kinds (with the live stops' ``stop_deferred``), and
the beat schedule (every minute, a row in django-celery-beat, editable in the admin) that runs
``bots.reconcile``."""

from django.db import migrations, models

TASK_NAME = "bots: reconcile live bots"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": "bots.reconcile",
            "interval": every,
            "queue": "bots",
            "description": "Settle the unknown and open orders of live bots against their "
            "exchange by client order id, and adopt their orders we have no row for (nothing "
            "while TRADEAPP_LIVE_TRADING is off).",
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("bots", "0002_catch_up_schedule"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AlterField(
            model_name="botevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("created", "Created"),
                    ("started", "Started"),
                    ("stopped", "Stopped"),
                    ("paused", "Paused"),
                    ("error", "Error"),
                    ("kill_switch", "Kill switch"),
                    ("order_cancelled", "Order cancelled"),
                    ("state_updated", "State updated"),
                    ("reconciled", "Reconciled with the exchange"),
                    ("reconcile_failed", "Reconciliation failed"),
                    ("stop_deferred", "Stop exit not sent (an order is unsettled)"),
                ],
                max_length=16,
            ),
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]
