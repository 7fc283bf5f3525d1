"""The demo project's working folders (database, embedded broker, static files), made by its entry points."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def var_dir_prepare() -> None:
    """Create the folders the settings point at; the settings themselves never touch the disk on import."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    broker = [Path(options[key]) for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
              if key in options]
    for folder in (Path(settings.VAR_DIR), Path(settings.STATIC_ROOT), *broker):
        folder.mkdir(parents=True, exist_ok=True)
