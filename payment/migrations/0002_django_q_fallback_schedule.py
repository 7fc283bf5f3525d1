"""Install the Django Q schedule that stands in for Celery beat when beat is silent."""

from django.db import migrations


def add_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="payshift-check-pending-payments-fallback",
        defaults={"func": "payment.q_tasks.check_pending_payments_q", "schedule_type": "I", "minutes": 1,
                  "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="payshift-check-pending-payments-fallback").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("payment", "0001_initial"),
        ("django_q", "0018_task_success_index"),
    ]
    operations = [migrations.RunPython(add_schedule, remove_schedule)]
