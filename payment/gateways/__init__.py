"""Gateway modules: one folder per gateway behind the interface in base.py, found by the registry."""
