"""Local Paystack and Flutterwave emulator for Payshift's tests and demos (a stand-in external service)."""

from sandbox.app import create_app
from sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_app"]
