"""Test-only gateways, one folder each, loaded through PAYSHIFT_GATEWAY_MODULES (payment/tests/conftest.py)."""
