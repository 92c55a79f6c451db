"""Fleet configuration: satellites -> entities -> sensors, validated once at load time."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENTITY_PATTERN = r"^[A-Z]-[0-9]+$"


class FleetError(ValueError):
    """The fleet file is inconsistent, or a lookup names something the fleet does not have."""


class Satellite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    name: str = ""
    entities: tuple[str, ...] = Field(min_length=1)


class Fleet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deployed: tuple[str, ...] = Field(min_length=1)
    satellites: tuple[Satellite, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        _no_duplicates("satellite id", (s.id for s in self.satellites))
        _no_duplicates("deployed entity", self.deployed)
        # one entity (channel type, one model) may fly on any number of satellites; a stream is (satellite,
        # entity), so only an entity listed twice on one satellite is a duplicate
        for sat in self.satellites:
            _no_duplicates(f"entity on {sat.id}", sat.entities)
        for ent in (*self.deployed, *(e for s in self.satellites for e in s.entities)):
            if not re.match(ENTITY_PATTERN, ent):
                raise ValueError(f"entity id {ent!r} does not look like a SMAP channel (e.g. 'A-1')")
        undeployed = [e for s in self.satellites for e in s.entities if e not in self.deployed]
        if undeployed:
            raise ValueError(f"fleet entities without a deployed model: {', '.join(undeployed)}")
        return self

    def satellite(self, satellite_id: str) -> Satellite:
        for sat in self.satellites:
            if sat.id == satellite_id:
                return sat
        raise FleetError(f"unknown satellite {satellite_id!r}; known: {', '.join(s.id for s in self.satellites)}")

    def satellites_of(self, entity: str) -> list[str]:
        """Every satellite that carries `entity`, in file order."""
        return [sat.id for sat in self.satellites if entity in sat.entities]

    def satellite_of(self, entity: str, satellite_id: str | None = None) -> str:
        """The satellite of a stream of `entity`: `satellite_id` if given (checked), else the only satellite
        carrying it (FleetError when none or several do)."""
        if satellite_id is not None:
            self.check_stream(satellite_id, entity)
            return satellite_id
        sats = self.satellites_of(entity)
        if not sats:
            raise FleetError(f"entity {entity!r} belongs to no satellite of the fleet")
        if len(sats) > 1:
            raise FleetError(f"entity {entity!r} flies on {len(sats)} satellites ({', '.join(sats[:5])}"
                             f"{', ...' if len(sats) > 5 else ''}): name the satellite_id")
        return sats[0]

    def check_stream(self, satellite_id: str, entity: str) -> None:
        """Raise FleetError unless `entity` is an entity of `satellite_id`."""
        sat = self.satellite(satellite_id)
        if entity not in sat.entities:
            raise FleetError(f"unknown entity {entity!r} for {satellite_id}; known: {', '.join(sat.entities)}")

    def streams(self) -> list[tuple[str, str]]:
        """(satellite_id, entity) for every entity in the fleet, in file order."""
        return [(s.id, e) for s in self.satellites for e in s.entities]

    def fleet_entities(self) -> list[str]:
        """Every entity flying on some satellite, once, in file order."""
        return list(dict.fromkeys(e for s in self.satellites for e in s.entities))


def _no_duplicates(what: str, items: Iterable[str]) -> None:
    dupes = [k for k, n in Counter(items).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate {what}: {', '.join(sorted(dupes))}")


def stream_id(satellite_id: str, entity: str) -> str:
    """The key of one telemetry stream: Kafka key, Celery shard key and model state key."""
    return f"{satellite_id}/{entity}"


def sensor_ids(n_sensors: int) -> list[str]:
    return [f"sensor_{i}" for i in range(n_sensors)]


def model_name(entity: str) -> str:
    return f"smap_{entity}"


def load_fleet(path: Path | None = None) -> Fleet:
    """Load and validate a fleet file (TOML); the packaged default when no path is given."""
    if path is None:
        text = resources.files("smap_shared.config").joinpath("fleet.toml").read_text()
        where = "packaged fleet.toml"
    else:
        text = Path(path).read_text()
        where = str(path)
    try:
        return Fleet.model_validate(tomllib.loads(text))
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise FleetError(f"invalid fleet config {where}: {exc}") from exc


@cache
def default_fleet() -> Fleet:
    return load_fleet()
