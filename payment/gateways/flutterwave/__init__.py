"""Flutterwave v3: verif-hash (and v4 flutterwave-signature) webhooks, major-unit amounts."""

from .gateway import FlutterwaveGateway

__all__ = ["FlutterwaveGateway"]
