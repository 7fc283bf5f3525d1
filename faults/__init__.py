"""Fault and abuse suite: break the running system on purpose and prove nothing is lost, doubled or granted."""
