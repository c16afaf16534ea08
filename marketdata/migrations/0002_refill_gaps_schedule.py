"""The beat schedule that refills candle gaps: a row in django-celery-beat, editable in the admin."""

from django.db import migrations

TASK_NAME = "marketdata: refill candle gaps"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(every=15, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": "marketdata.refill_gaps",
            "interval": every,
            "kwargs": '{"hours": 24}',
            "queue": "collect",
            "description": "Find missing 1m candles of the last 24 hours and fetch them from the "
            "exchange (higher timeframes are rebuilt).",
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("marketdata", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
