"""Shared code of the SMAP anomaly detection chain: schemas, settings, fleet config, data, model."""
