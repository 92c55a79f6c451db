"""Alerting: rules over the inference results, the alert lifecycle, history and notifications."""
