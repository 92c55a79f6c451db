"""smap-alert-manager: alert rules over the inference results, history in PostgreSQL, notifications
(settings: AlertManagerSettings in smap_shared; logic: smap_shared.alerting)."""

from __future__ import annotations

import sys

from smap_shared.alerting.rules import RuleConfigError, load_rules
from smap_shared.alerting.service import run_alert_manager
from smap_shared.settings import AlertManagerSettings
from smap_shared.streaming.service import run_service


def main() -> None:
    settings = AlertManagerSettings()
    try:
        rules = load_rules(settings.alert_rules_file)  # an invalid rule stops the start, with the reason
    except RuleConfigError as exc:
        print(f"smap-alert-manager: {exc}", file=sys.stderr)
        sys.exit(2)
    run_service("smap-alert-manager", lambda stop: run_alert_manager(settings, stop, rules),
                log_level=settings.log_level, metrics_port=settings.metrics_port,
                bind_address=settings.smap_bind_address)


if __name__ == "__main__":
    main()
