from __future__ import annotations

from pathlib import Path

import pytest

from smap_shared.fleet import FleetError, default_fleet, load_fleet, stream_id


def test_default_fleet_matches_spec() -> None:
    fleet = default_fleet()
    assert fleet.streams() == [
        ("SAT-001", "A-1"), ("SAT-001", "A-2"), ("SAT-001", "A-3"),
        ("SAT-002", "D-1"), ("SAT-002", "D-2"), ("SAT-002", "E-1"),
        ("SAT-003", "P-1"), ("SAT-003", "P-2"), ("SAT-003", "G-1"),
    ]
    assert len(fleet.deployed) == 20
    assert stream_id("SAT-001", "A-1") == "SAT-001/A-1"


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(body)
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('deployed=["A-1"]\n[[satellites]]\nid="S"\nentities=["A-1"]\n[[satellites]]\nid="S"\nentities=["A-1"]',
         "duplicate satellite id"),
        ('deployed=["A-1","A-1"]\n[[satellites]]\nid="S"\nentities=["A-1"]', "duplicate deployed entity"),
        ('deployed=["A-1"]\n[[satellites]]\nid="S"\nentities=["A-1","A-2"]', "without a deployed model: A-2"),
        ('deployed=["A-1"]\n[[satellites]]\nid="S"\nentities=["weird"]', "does not look like"),
        ('deployed=["A-1"]\n[[satellites]]\nid="S"\nentities=["A-1"]\ncolour="red"', "colour"),
        ('deployed=["A-1"]\n[[satellites]]\nid="S"\nentities=["A-1","A-1"]', "duplicate entity on S: A-1"),
        ("deployed=[", "invalid fleet config"),
    ],
)
def test_invalid_fleet_files_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        load_fleet(_write(tmp_path, body))


def test_lookups() -> None:
    fleet = default_fleet()
    assert fleet.satellite_of("P-2") == "SAT-003"
    fleet.check_stream("SAT-002", "E-1")
    with pytest.raises(FleetError, match="unknown entity 'A-1' for SAT-002"):
        fleet.check_stream("SAT-002", "A-1")
    with pytest.raises(FleetError, match="unknown satellite"):
        fleet.satellite("SAT-999")


def test_identical_spacecraft_share_entities(tmp_path: Path) -> None:
    """A constellation: the same entity (one model) on many satellites, one stream per (satellite, entity)."""
    sats = "".join(f'[[satellites]]\nid="SAT-{k:03d}"\nentities=["A-1","D-1"]\n' for k in range(1, 11))
    fleet = load_fleet(_write(tmp_path, f'deployed=["A-1","D-1"]\n{sats}'))
    assert len(fleet.streams()) == 20
    assert fleet.fleet_entities() == ["A-1", "D-1"]
    assert fleet.satellites_of("D-1") == [f"SAT-{k:03d}" for k in range(1, 11)]
    assert fleet.satellite_of("A-1", "SAT-007") == "SAT-007"
    with pytest.raises(FleetError, match="flies on 10 satellites"):
        fleet.satellite_of("A-1")
    with pytest.raises(FleetError, match="unknown satellite"):
        fleet.satellite_of("A-1", "SAT-099")
