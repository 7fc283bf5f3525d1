"""The one list of sandbox gateways: every sub-package of a gateway package that exports `GATEWAY`."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterator, Mapping

from payshift.sandbox.gateway import SandboxGateway

# Where the built-in gateways live; SandboxConfig.gateway_packages (SANDBOX_GATEWAY_PACKAGES) can add more.
BUILTIN_PACKAGE = "payshift.sandbox.gateways"


class GatewayRegistry(Mapping[str, SandboxGateway]):
    """Read-only name -> gateway, in discovery order (package order, then folder name)."""

    def __init__(self, gateways: list[SandboxGateway]) -> None:
        self._gateways: dict[str, SandboxGateway] = {}
        for gateway in gateways:
            if gateway.name in self._gateways:
                raise ValueError(f"two sandbox gateways are named {gateway.name!r}")
            self._gateways[gateway.name] = gateway

    def __getitem__(self, name: str) -> SandboxGateway:
        return self._gateways[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._gateways)

    def __len__(self) -> int:
        return len(self._gateways)

    def for_path(self, path: str) -> SandboxGateway | None:
        """The gateway whose URL prefix `/<name>/` starts `path`, if any."""
        head = path.lstrip("/").split("/", 1)[0]
        return self._gateways.get(head)


@functools.cache
def discover(packages: tuple[str, ...] = (BUILTIN_PACKAGE,)) -> GatewayRegistry:
    """Import each folder of each package; a folder without `GATEWAY` is not a gateway and is skipped."""
    found: list[SandboxGateway] = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda item: item.name):
            if not info.ispkg:
                continue
            module = importlib.import_module(f"{package_name}.{info.name}")
            gateway = getattr(module, "GATEWAY", None)
            if isinstance(gateway, SandboxGateway):
                found.append(gateway)
    return GatewayRegistry(found)
