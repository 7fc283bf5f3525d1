"""The one switch between core code and gateways: name -> Gateway instance, found by discovery."""

from __future__ import annotations

import importlib
import pkgutil
import threading

from payment.conf import app_settings

from .base import Gateway

_classes: dict[str, type[Gateway]] = {}
_instances: dict[str, Gateway] = {}
_lock = threading.Lock()
_state = {"discovered": False}


class UnknownGatewayError(LookupError):
    pass


def register(cls: type[Gateway]) -> type[Gateway]:
    """Class decorator used by each gateway module: adding a gateway never edits core code."""
    _classes[cls.name] = cls
    return cls


def _discover() -> None:
    if _state["discovered"]:
        return
    with _lock:
        if _state["discovered"]:
            return
        import payment.gateways as package

        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
                importlib.import_module(f"{package.__name__}.{info.name}")
        _state["discovered"] = True


def gateway_names() -> list[str]:
    """Enabled gateways, in a stable order."""
    _discover()
    enabled = app_settings.PAYSHIFT_ENABLED_GATEWAYS
    return sorted(n for n in _classes if enabled is None or n in enabled)


def gateway_get(name: str) -> Gateway:
    _discover()
    if name not in gateway_names():
        raise UnknownGatewayError(name)
    instance = _instances.get(name)
    if instance is None:
        with _lock:
            instance = _instances.setdefault(name, _classes[name]())
    return instance


def registry_reset() -> None:
    """Drop cached instances (settings changed, e.g. in tests or after a key rotation)."""
    for instance in list(_instances.values()):
        client = getattr(instance, "_http", None)
        if client is not None:
            client.close()
    _instances.clear()


def gateway_classes() -> dict[str, type[Gateway]]:
    """Every registered gateway class by name, enabled or not (tooling: dev stack, bench, contract suite)."""
    _discover()
    return dict(sorted(_classes.items()))


def demo_environment(sandbox_url: str) -> dict[str, str]:
    """The demo keys of every gateway and base URLs pointing at the local sandbox at `sandbox_url`."""
    env: dict[str, str] = {}
    for cls in gateway_classes().values():
        env.update(cls.demo_settings)
        if cls.sandbox_path:
            env[cls.base_url_setting] = f"{sandbox_url.rstrip('/')}/{cls.sandbox_path}"
    return env
