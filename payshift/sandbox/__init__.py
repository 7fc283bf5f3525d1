"""Local Paystack and Flutterwave emulator for Payshift's tests and demos (a stand-in external service)."""

from payshift.sandbox.app import create_app
from payshift.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_app"]
