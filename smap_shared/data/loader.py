"""Load SMAP channels from the vendored archive or from any folder in the official telemanom layout."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from smap_shared.data.labels import Interval, LabelError, label_mask, load_labelled, load_labels

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ChannelData:
    """One channel (entity): train and test arrays of shape (rows, sensors), and its test labels."""

    channel: str
    train: Array
    test: Array
    labels: list[Interval] = field(default_factory=list)

    @property
    def n_sensors(self) -> int:
        return int(self.train.shape[1])

    def test_mask(self) -> npt.NDArray[np.bool_]:
        return label_mask(self.labels, len(self.test))

    def train_hash(self) -> str:
        """Content hash of the train split: stored in checkpoints to tie weights to their data."""
        return hashlib.sha256(np.ascontiguousarray(self.train).tobytes()).hexdigest()[:16]


class DataSource(Protocol):
    def channels(self) -> list[str]: ...

    def load(self, channel: str) -> ChannelData: ...

    def dataset(self, channels: list[str]) -> str: ...


class OfficialLayoutSource:
    """`root/train/<chan>.npy`, `root/test/<chan>.npy` and `root/labeled_anomalies.csv` (telemanom), of any
    spacecraft: `spacecraft` keeps that spacecraft's label rows only; None (the default) every row whose
    channel has arrays here."""

    def __init__(self, root: Path, spacecraft: str | None = None) -> None:
        self.root = Path(root)
        self.spacecraft = spacecraft
        if not (self.root / "train").is_dir() or not (self.root / "test").is_dir():
            raise FileNotFoundError(f"{self.root} is not in the telemanom layout (train/ and test/ missing)")

    @property
    def labels_csv(self) -> Path:
        return self.root / "labeled_anomalies.csv"

    @cached_property
    def _labelled(self) -> dict[str, tuple[str, list[Interval]]]:
        have = set(self.channels())
        rows = load_labelled(self.labels_csv, self.spacecraft) if self.labels_csv.exists() else {}
        return {chan: v for chan, v in rows.items() if chan in have}

    @cached_property
    def _labels(self) -> dict[str, list[Interval]]:
        return {chan: ivs for chan, (_, ivs) in self._labelled.items()}

    def dataset(self, channels: list[str]) -> str:
        """The spacecraft whose label rows cover `channels` ("SMAP", "MSL", "MSL+SMAP"); raises LabelError when
        a channel has arrays but no label row: an evaluation must never score it as if it had no anomaly."""
        missing = [c for c in channels if c not in self._labelled]
        if missing:
            where = f"rows of spacecraft {self.spacecraft!r}" if self.spacecraft else "a row"
            raise LabelError(
                f"{len(missing)} of {len(channels)} channels have arrays in {self.root} but no label row in "
                f"{self.labels_csv} ({where} needed): {', '.join(missing[:10])}{' ...' * (len(missing) > 10)}")
        return "+".join(sorted({self._labelled[c][0] for c in channels}))

    def channels(self) -> list[str]:
        """Channels with both arrays present; label rows whose arrays are absent (MSL here) are skipped."""
        train = {p.stem for p in (self.root / "train").glob("*.npy")}
        test = {p.stem for p in (self.root / "test").glob("*.npy")}
        return sorted(train & test, key=channel_sort_key)

    def load(self, channel: str) -> ChannelData:
        try:
            train = np.load(self.root / "train" / f"{channel}.npy").astype(np.float64)
            test = np.load(self.root / "test" / f"{channel}.npy").astype(np.float64)
        except FileNotFoundError as exc:
            raise KeyError(f"unknown channel {channel!r} in {self.root}") from exc
        return _checked(ChannelData(channel, train, test, self._labels.get(channel, [])))


class VendoredSource:
    """The compressed copy shipped in this package (see data/ATTRIBUTION.md for its packing)."""

    def __init__(self, archive: Path | None = None, labels_csv: Path | None = None) -> None:
        base = resources.files("smap_shared.data")
        self.archive = Path(str(archive or base.joinpath("smap.npz")))
        self.labels_csv = Path(str(labels_csv or base.joinpath("labeled_anomalies.csv")))

    @cached_property
    def _npz(self) -> dict[str, npt.NDArray[np.generic]]:
        with np.load(self.archive) as npz:
            return {k: npz[k] for k in npz.files}

    @cached_property
    def _labels(self) -> dict[str, list[Interval]]:
        return load_labels(self.labels_csv, "SMAP")

    def channels(self) -> list[str]:
        names = {k.split("/")[1] for k in self._npz if k.startswith("test/")}
        return sorted(names, key=channel_sort_key)

    def _array(self, split: str, channel: str) -> Array:
        try:
            values = self._npz[f"{split}/{channel}/values"].astype(np.float64)
            flags = self._npz[f"{split}/{channel}/flags"].astype(np.uint8)
            width = int(self._npz[f"{split}/{channel}/width"])
        except KeyError as exc:
            raise KeyError(f"unknown channel {channel!r}; known: {', '.join(self.channels())}") from exc
        bits = np.unpackbits(flags, axis=1, count=width - values.shape[1]).astype(np.float64)
        return np.concatenate([values, bits], axis=1)

    def load(self, channel: str) -> ChannelData:
        return _checked(
            ChannelData(
                channel, self._array("train", channel), self._array("test", channel),
                self._labels.get(channel, []),
            )
        )

    def dataset(self, channels: list[str]) -> str:
        """The vendored copy is SMAP's, every channel labelled."""
        return "SMAP"


class RelabelledSource:
    """Another source's arrays scored against the labels of `labels_csv` (telemanom's layout): e.g. the
    operators' verdicts the alert manager exports (GET /api/smap/verdicts/labeled_anomalies.csv: chan_id =
    entity, spacecraft = satellite, intervals in the stream's frame indices, which are the test split's rows
    for a replayed SMAP stream). `spacecraft` keeps that spacecraft's (satellite's) rows; a channel without a
    row is refused by `dataset`, like any evaluation without labels."""

    def __init__(self, base: DataSource, labels_csv: Path, spacecraft: str | None = None) -> None:
        self.base = base
        self.labels_csv = Path(labels_csv)
        self.spacecraft = spacecraft
        if not self.labels_csv.is_file():
            raise FileNotFoundError(f"labels file {self.labels_csv} not found")

    @cached_property
    def _labelled(self) -> dict[str, tuple[str, list[Interval]]]:
        have = set(self.base.channels())
        return {c: v for c, v in load_labelled(self.labels_csv, self.spacecraft).items() if c in have}

    def channels(self) -> list[str]:
        return self.base.channels()

    def load(self, channel: str) -> ChannelData:
        return replace(self.base.load(channel), labels=self._labelled.get(channel, ("", []))[1])

    def dataset(self, channels: list[str]) -> str:
        missing = [c for c in channels if c not in self._labelled]
        if missing:
            where = f"rows of {self.spacecraft!r}" if self.spacecraft else "a row"
            raise LabelError(f"{len(missing)} of {len(channels)} channels have no label row in {self.labels_csv} "
                             f"({where} needed): {', '.join(missing[:10])}{' ...' * (len(missing) > 10)}")
        return "+".join(sorted({self._labelled[c][0] for c in channels}))


def _checked(data: ChannelData) -> ChannelData:
    if data.train.ndim != 2 or data.test.ndim != 2 or data.train.shape[1] != data.test.shape[1]:
        raise ValueError(f"{data.channel}: train {data.train.shape} and test {data.test.shape} disagree")
    return data


def channel_sort_key(channel: str) -> tuple[str, int]:
    """A-2 before A-10: letter, then number."""
    letter, _, num = channel.partition("-")
    return (letter, int(num) if num.isdigit() else 0)


def default_source(root: Path | None = None, spacecraft: str | None = None, labels_csv: Path | None = None
                   ) -> DataSource:
    """The official layout at `root` when given (e.g. $SMAP_DATA_DIR; `spacecraft`: keep its label rows only),
    else the vendored copy (SMAP); `labels_csv`: score against that file's labels instead (RelabelledSource)."""
    base: DataSource = OfficialLayoutSource(root, spacecraft) if root is not None else VendoredSource()
    return RelabelledSource(base, labels_csv, spacecraft) if labels_csv is not None else base
