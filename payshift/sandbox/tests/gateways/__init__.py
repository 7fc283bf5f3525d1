"""Test-only sandbox gateways, served when a test adds this package to SandboxConfig.gateway_packages."""
