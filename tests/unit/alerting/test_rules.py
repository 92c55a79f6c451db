"""Rule files: the packaged default is valid; invalid rules are rejected with a message naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from smap_shared.alerting.rules import Consecutive, RuleConfigError, load_rules, parse_rules

GOOD = """
[[rule]]
name = "r1"
severity = "warning"
satellite = "SAT-00[12]"
entity = "A-*"
channels = ["slack"]
[rule.condition]
kind = "consecutive"
frames = 2

[[rule]]
name = "r2"
severity = "info"
sensor = "sensor_*"
[rule.condition]
kind = "score_above"
threshold = 1.5
duration_s = 30
"""


def test_packaged_rules_are_valid_and_alarm_on_three_consecutive_frames() -> None:
    rules = load_rules()
    first = rules.enabled[0]
    assert first.name == "anomaly-3-frames" and first.severity == "critical"
    assert isinstance(first.condition, Consecutive) and first.condition.frames == 3
    assert first.matches("SAT-002", "E-1") and set(first.channels) == {"slack", "email"}
    assert len(rules.rule) > len(rules.enabled)  # the examples are validated, but disabled


def test_scope_wildcards() -> None:
    r1, r2 = parse_rules(GOOD).rule
    assert r1.matches("SAT-001", "A-3") and r1.matches("SAT-002", "A-1")
    assert not r1.matches("SAT-003", "A-1") and not r1.matches("SAT-001", "D-1")
    assert r1.sensors_of(["sensor_0", "sensor_1"]) == [None]
    assert r2.sensors_of(["sensor_0", "sensor_1", "x"]) == ["sensor_0", "sensor_1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("[[rule]]\nname = 'a'\nseverity = 'loud'\n[rule.condition]\nkind = 'consecutive'\nframes = 3\n",
     "rule #1 ('a').severity"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\n[rule.condition]\nkind = 'consecutive'\nframes = 0\n",
     "frames: Input should be greater than or equal to 1"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\n[rule.condition]\nkind = 'sometimes'\n",
     "does not match any of the expected tags"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\nchannels = ['pager']\n[rule.condition]\nkind = 'consecutive'\n"
     "frames = 1\n", "channels.0"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\nsensor = 'sensor_0'\n[rule.condition]\nkind = 'consecutive'\n"
     "frames = 1\n", "sensor-scoped rule needs kind = 'score_above'"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\ncolour = 'red'\n[rule.condition]\nkind = 'consecutive'\n"
     "frames = 1\n", "colour: Extra inputs are not permitted"),
    ("[[rule]]\nname = 'a'\nseverity = 'info'\n[rule.condition]\nkind = 'consecutive'\nframes = 1\n"
     "[[rule]]\nname = 'a'\nseverity = 'info'\n[rule.condition]\nkind = 'consecutive'\nframes = 2\n",
     "duplicate rule name(s): a"),
    ("", "no [[rule]] defined"),
    ("[[rule]\n", "not valid TOML"),
])
def test_invalid_rules_are_rejected_with_a_clear_message(text: str, expected: str) -> None:
    with pytest.raises(RuleConfigError) as info:
        parse_rules(text, "test.toml")
    assert "test.toml" in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RuleConfigError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")
