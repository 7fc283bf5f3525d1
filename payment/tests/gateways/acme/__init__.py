"""Acme, a made-up gateway: HMAC-SHA256 hex webhooks in x-acme-signature, event ids, amounts as objects."""

from .gateway import AcmeGateway

__all__ = ["AcmeGateway"]
