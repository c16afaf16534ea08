"""Recovery of runs whose worker was lost: a start count and a heartbeat on every run, and the
beat schedule (every minute, a row in django-celery-beat, editable in the admin) that runs
``backtests.recover_stale``."""

from django.db import migrations, models

TASK_NAME = "backtests: recover runs of lost workers"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={
            "task": "backtests.recover_stale",
            "interval": every,
            # Not the backtests queue: a backlog of long runs there must not delay the watchdog.
            "queue": "default",
            "description": "Requeue queued or running backtests and optimisations with no sign "
            "of life for TRADEAPP_RUN_STALE_AFTER seconds (their worker was lost, or the broker "
            "lost their message); fail them once TRADEAPP_RUN_MAX_ATTEMPTS starts are used up.",
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


HEARTBEAT_HELP = "Last sign of life: when the run was sent, started, progressed or beat."


class Migration(migrations.Migration):
    dependencies = [
        ("backtests", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="backtestrun",
            name="attempts",
            field=models.PositiveIntegerField(
                default=0, editable=False, help_text="Times a worker started the run."
            ),
        ),
        migrations.AddField(
            model_name="backtestrun",
            name="heartbeat_at",
            field=models.DateTimeField(
                blank=True, editable=False, help_text=HEARTBEAT_HELP, null=True
            ),
        ),
        migrations.AddField(
            model_name="optimizationrun",
            name="attempts",
            field=models.PositiveIntegerField(
                default=0, editable=False, help_text="Times a worker started the run."
            ),
        ),
        migrations.AddField(
            model_name="optimizationrun",
            name="heartbeat_at",
            field=models.DateTimeField(
                blank=True, editable=False, help_text=HEARTBEAT_HELP, null=True
            ),
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]
