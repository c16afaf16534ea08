"""The beat schedule that catches up running bots: a row in django-celery-beat, editable in the
admin. Candles normally reach the bots through the collector's candle_closed signal; this finds
any bot that fell behind (a lost message, a worker restart) and processes what it missed."""

from django.db import migrations

TASK_NAME = "bots: catch up running bots"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": "bots.catch_up",
            "interval": every,
            "queue": "bots",
            "description": "Process, in order, the stored candles that running bots have not "
            "seen yet (idempotent: a candle already processed is skipped).",
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("bots", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
