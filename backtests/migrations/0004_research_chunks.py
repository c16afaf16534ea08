"""Chunks of a search stored and sent a few at a time, each with its own heartbeat; the
watchdog ``backtests.recover_stale`` every 15 seconds instead of every minute, so that a run or
chunk whose worker died resumes within a minute."""

import django.db.models.deletion
from django.db import migrations, models

TASK_NAME = "backtests: recover runs of lost workers"


def _every(apps, every, period):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    PeriodicTask.objects.filter(name=TASK_NAME).update(interval=interval)


def every_15_seconds(apps, schema_editor):
    _every(apps, 15, "seconds")


def every_minute(apps, schema_editor):
    _every(apps, 1, "minutes")


class Migration(migrations.Migration):

    dependencies = [
        ('backtests', '0003_fee_in_base'),
        ('django_celery_beat', '0019_alter_periodictasks_options'),
    ]

    operations = [
        migrations.CreateModel(
            name='OptimizationChunk',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('index', models.PositiveIntegerField()),
                ('combinations', models.JSONField(help_text='The parameter combinations this chunk evaluates.')),
                ('state', models.CharField(choices=[('pending', 'Pending'), ('sent', 'Sent'), ('running', 'Running'), ('done', 'Done')], default='pending', max_length=8)),
                ('sends', models.PositiveIntegerField(default=0, help_text='Times the chunk was sent.')),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('worker', models.CharField(blank=True, max_length=200)),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='chunks', to='backtests.optimizationrun')),
            ],
            options={
                'ordering': ['run', 'index'],
                'indexes': [models.Index(fields=['state', 'heartbeat_at'], name='optchunk_state_beat')],
                'constraints': [models.UniqueConstraint(fields=('run', 'index'), name='optchunk_run_index')],
            },
        ),
        migrations.RunPython(every_15_seconds, every_minute),
    ]
