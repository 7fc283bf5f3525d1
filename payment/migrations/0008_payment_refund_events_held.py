from django.db import migrations, models


def flag_payments_with_held_refund_events(apps, schema_editor):
    """Refund webhooks already kept waiting when this migration runs: their payments get the flag, so the
    settling transition releases them as it does new ones (without it they would wait for the sweep)."""
    Payment = apps.get_model("payment", "Payment")
    WebhookEvent = apps.get_model("payment", "WebhookEvent")
    held = WebhookEvent.objects.filter(kind="refund", status="unmatched", payment__isnull=False)
    Payment.objects.filter(pk__in=held.values("payment_id")).update(refund_events_held=True)


class Migration(migrations.Migration):

    dependencies = [
        ('payment', '0007_payment_order'),
    ]

    operations = [
        migrations.AddField(
            model_name='payment',
            name='refund_events_held',
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.RunPython(flag_payments_with_held_refund_events, migrations.RunPython.noop),
    ]
