"""Paystack: HMAC-SHA512 webhooks keyed with the secret key, minor-unit amounts."""

from .gateway import PaystackGateway

__all__ = ["PaystackGateway"]
