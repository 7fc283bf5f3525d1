"""Paystack: HMAC-SHA512 webhooks keyed with the secret key, minor-unit amounts (gateways.md, Paystack)."""

from .gateway import PaystackGateway

__all__ = ["PaystackGateway"]
