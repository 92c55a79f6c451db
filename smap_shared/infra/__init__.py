"""Helpers for the local infrastructure (ports, service endpoints); the scripts live in scripts/."""
