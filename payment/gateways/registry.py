"""The one switch between core code and gateways: name -> Gateway instance, found by discovery."""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from payment.conf import app_settings

from .base import Gateway
from .ratelimit import limiters_reset

_classes: dict[str, type[Gateway]] = {}
_instances: dict[str, Gateway] = {}
_lock = threading.RLock()
# Packages already imported (built-in folders, then each PAYSHIFT_GATEWAY_MODULES entry as first seen).
_imported: set[str] = set()
_built_in: list[str] = []


class UnknownGatewayError(LookupError):
    pass


def register(cls: type[Gateway]) -> type[Gateway]:
    """Class decorator used by each gateway module: adding a gateway never edits core code."""
    existing = _classes.get(cls.name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        # The URL, the stored rows and the metrics all key on the name: a second gateway under it would
        # silently take over the first one's webhooks.
        raise ImproperlyConfigured(f"two gateways are named {cls.name!r}: {existing.__module__}.{existing.__qualname__}"
                                   f" and {cls.__module__}.{cls.__qualname__}")
    _classes[cls.name] = cls
    return cls


def _in_package(cls: type[Gateway], package: str) -> bool:
    return cls.__module__ == package or cls.__module__.startswith(f"{package}.")


def _import(package: str, setting: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{setting}: cannot import {package!r}: {exc}") from exc
    if not any(_in_package(cls, package) for cls in _classes.values()):
        raise ImproperlyConfigured(f"{setting}: {package!r} registers no gateway (a class decorated with "
                                   "payment.gateways.registry.register; docs/adding-a-gateway.md)")
    _imported.add(package)


def _extra_packages() -> list[str]:
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        # Tooling that runs with no Django settings at all (the dev stack's demo environment): the
        # environment is the only place the setting can be then.
        return [p.strip() for p in os.environ.get("PAYSHIFT_GATEWAY_MODULES", "").split(",") if p.strip()]
    return app_settings.PAYSHIFT_GATEWAY_MODULES


def _packages() -> list[str]:
    """Every folder under payment/gateways/, then the packages PAYSHIFT_GATEWAY_MODULES names, imported."""
    extra = _extra_packages()
    if _built_in and all(package in _imported for package in extra):
        return [*_built_in, *extra]
    with _lock:
        if not _built_in:
            import payment.gateways as folder  # noqa: PLC0415  (this module is inside that package)

            found = [f"{folder.__name__}.{info.name}" for info in pkgutil.iter_modules(folder.__path__) if info.ispkg]
            for package in found:
                _import(package, "payment/gateways/")
            _built_in.extend(found)
        for package in extra:
            if package not in _imported:
                _import(package, "PAYSHIFT_GATEWAY_MODULES")
    return [*_built_in, *extra]


def _loaded() -> dict[str, type[Gateway]]:
    """The registered classes of the packages configured now (a module dropped from the setting drops out)."""
    packages = _packages()
    return {name: cls for name, cls in _classes.items() if any(_in_package(cls, p) for p in packages)}


# gateway_names() is asked twice per webhook (the metric label, the lookup): its answer is kept while what it
# is computed from (the configured packages, the enabled list, the registered classes) is unchanged.
_names_cache: list[tuple[object, list[str]]] = []


def gateway_names() -> list[str]:
    """Enabled gateways, in a stable order."""
    enabled = app_settings.PAYSHIFT_ENABLED_GATEWAYS
    packages = _packages()
    key = (None if enabled is None else tuple(enabled), tuple(packages), tuple(_classes.items()))
    if _names_cache and _names_cache[0][0] == key:
        return list(_names_cache[0][1])
    loaded = {name: cls for name, cls in _classes.items() if any(_in_package(cls, p) for p in packages)}
    names = sorted(n for n in loaded if enabled is None or n in enabled)
    _names_cache[:] = [(key, names)]
    return list(names)


def gateway_get(name: str) -> Gateway:
    if name not in gateway_names():
        raise UnknownGatewayError(name)
    instance = _instances.get(name)
    if instance is None:
        with _lock:
            instance = _instances.setdefault(name, _classes[name]())
    return instance


def registry_reset() -> None:
    """Drop cached instances and rate limiters (settings changed, e.g. in tests or after a key rotation)."""
    for instance in list(_instances.values()):
        client = getattr(instance, "_http", None)
        if client is not None:
            client.close()
    _instances.clear()
    limiters_reset()


def gateway_classes() -> dict[str, type[Gateway]]:
    """Every registered gateway class by name, enabled or not (tooling: dev stack, bench, contract suite)."""
    return dict(sorted(_loaded().items()))


def demo_environment(sandbox_url: str) -> dict[str, str]:
    """The demo keys of every gateway and base URLs pointing at the local sandbox at `sandbox_url`."""
    env: dict[str, str] = {}
    for cls in gateway_classes().values():
        env.update(cls.demo_settings)
        if cls.sandbox_path:
            env[cls.base_url_setting] = f"{sandbox_url.rstrip('/')}/{cls.sandbox_path}"
    return env
