"""The payment app: webhook ingest, verification, payment state, refunds and notifications."""
