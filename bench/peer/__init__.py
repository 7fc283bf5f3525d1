"""A stand-alone Django project around paystack-django's webhook view (runs only in bench/.venv-peer)."""
