"""The built-in sandbox gateways: one folder each, found by payshift.sandbox.registry (docs/sandbox.md)."""
