from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from smap_shared.data import Interval, LabelError, OfficialLayoutSource, VendoredSource, parse_labels
from smap_shared.data.labels import label_mask, merge_intervals
from smap_shared.data.vendor import pack

OFFICIAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "smap"

CSV = """chan_id,spacecraft,anomaly_sequences,class,num_values
P-2,SMAP,"[[5300, 6575]]",[point],8209
P-2,SMAP,"[[5500, 5800], [7000, 7010]]","[point, point]",8209
M-1,MSL,"[[10, 20]]",[point],100
A-1,SMAP,"[[4690, 4774]]",[point],8640
"""


def _rows() -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(io.StringIO(CSV)))


def test_labels_merge_p2_rows_and_skip_other_spacecraft() -> None:
    labels = parse_labels(_rows())
    assert set(labels) == {"P-2", "A-1"}
    assert labels["P-2"] == [Interval(5300, 6575), Interval(7000, 7010)]


def test_labels_inclusive_ends() -> None:
    mask = label_mask([Interval(2, 4)], 7)
    assert mask.tolist() == [False, False, True, True, True, False, False]
    assert 4 in Interval(2, 4) and 5 not in Interval(2, 4)


def test_merge_touching_intervals() -> None:
    assert merge_intervals([Interval(5, 9), Interval(0, 4), Interval(20, 21)]) == [
        Interval(0, 9), Interval(20, 21)
    ]


def test_invalid_interval_rejected() -> None:
    with pytest.raises(ValueError):
        Interval(5, 4)


def test_vendored_archive_has_54_channels_with_facts(source: VendoredSource) -> None:
    chans = source.channels()
    assert len(chans) == 54
    a1 = source.load("A-1")
    assert a1.train.shape == (2880, 25) and a1.test.shape == (8640, 25)
    assert a1.labels == [Interval(4690, 4774)]
    assert sum(len(source.load(c).test) for c in chans) == 435_826
    assert sum(len(source.load(c).labels) for c in chans) == 68  # 69 sequences, two of P-2 overlap


def test_unknown_channel_is_clear_error(source: VendoredSource) -> None:
    with pytest.raises(KeyError, match="unknown channel"):
        source.load("Z-9")


def test_official_layout_roundtrip_and_width_from_data(tmp_path: Path) -> None:
    """A folder in telemanom's layout with a non-SMAP width (7 columns) packs and loads losslessly."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 60)):
        (tmp_path / split).mkdir()
        arr = np.concatenate([rng.uniform(-1, 1, (n, 1)), rng.integers(0, 2, (n, 6))], axis=1)
        np.save(tmp_path / split / "X-1.npy", arr)
    (tmp_path / "labeled_anomalies.csv").write_text(
        'chan_id,spacecraft,anomaly_sequences,class,num_values\nX-1,SMAP,"[[3, 5]]",[point],60\n'
        'Q-1,MSL,"[[1, 2]]",[point],10\n'
    )
    official = OfficialLayoutSource(tmp_path)
    assert official.channels() == ["X-1"]  # the MSL row without arrays is skipped
    data = official.load("X-1")
    assert data.n_sensors == 7 and data.labels == [Interval(3, 5)]
    out = tmp_path / "packed"
    out.mkdir()
    pack(tmp_path, out)
    vendored = VendoredSource(out / "smap.npz", out / "labeled_anomalies.csv").load("X-1")
    np.testing.assert_array_equal(vendored.train, data.train)
    np.testing.assert_array_equal(vendored.test, data.test)


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official SMAP copy not beside the repo")
def test_vendored_equals_official_copy(source: VendoredSource) -> None:
    official = OfficialLayoutSource(OFFICIAL)
    assert official.channels() == source.channels()
    for chan in official.channels():
        a, b = source.load(chan), official.load(chan)
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.test, b.test)
        assert a.labels == b.labels


def _layout(root: Path, channels: dict[str, str], rows: str) -> Path:
    """A telemanom folder: channel -> its spacecraft's label row text; `rows` the CSV body."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 30), ("test", 50)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for chan in channels:
            np.save(root / split / f"{chan}.npy", rng.uniform(-1, 1, (n, 3)))
    (root / "labeled_anomalies.csv").write_text("chan_id,spacecraft,anomaly_sequences,class,num_values\n" + rows)
    return root


def test_labels_of_any_spacecraft_are_parsed(tmp_path: Path) -> None:
    """Another spacecraft's folder (here MSL rows only): its labels are read, not dropped for not being
    SMAP's, and the dataset is named after the rows that labelled it."""
    root = _layout(tmp_path, {"M-1": "MSL", "C-2": "MSL"},
                   'M-1,MSL,"[[3, 5], [10, 12]]",[point],50\nC-2,MSL,"[]",[],50\nA-1,SMAP,"[[1, 2]]",[point],50\n')
    src = OfficialLayoutSource(root)
    assert src.load("M-1").labels == [Interval(3, 5), Interval(10, 12)]
    assert src.load("C-2").labels == []  # a row with no anomaly is a label too
    assert src.dataset(src.channels()) == "MSL"
    only = OfficialLayoutSource(root, spacecraft="MSL")
    assert only.load("M-1").labels == [Interval(3, 5), Interval(10, 12)]


def test_arrays_without_label_rows_are_an_error(tmp_path: Path) -> None:
    root = _layout(tmp_path, {"M-1": "MSL"}, 'M-1,MSL,"[[3, 5]]",[point],50\n')
    with pytest.raises(LabelError, match="no label row"):
        OfficialLayoutSource(root, spacecraft="SMAP").dataset(["M-1"])  # the filter leaves it unlabelled
    (root / "labeled_anomalies.csv").write_text("chan_id,spacecraft,anomaly_sequences,class,num_values\n")
    with pytest.raises(LabelError, match="1 of 1 channels have arrays"):
        OfficialLayoutSource(root).dataset(["M-1"])


def test_a_channel_labelled_for_two_spacecraft_must_be_chosen(tmp_path: Path) -> None:
    root = _layout(tmp_path, {"X-1": "SMAP"}, 'X-1,SMAP,"[[1, 2]]",[point],50\nX-1,MSL,"[[4, 6]]",[point],50\n')
    with pytest.raises(LabelError, match="both SMAP and MSL"):
        OfficialLayoutSource(root).dataset(["X-1"])
    assert OfficialLayoutSource(root, spacecraft="MSL").load("X-1").labels == [Interval(4, 6)]


def test_the_evaluation_refuses_arrays_without_labels(tmp_path: Path) -> None:
    """`evaluate --data-dir D` of a folder whose CSV has no row for its channels fails with a clear message
    (it used to report 0 events and exit 0)."""
    from smap_shared.evaluation.evaluate import main

    root = _layout(tmp_path / "data", {"M-1": "MSL"}, "")
    with pytest.raises(SystemExit, match="no label row"):
        main(["--data-dir", str(root), "--checkpoints", str(tmp_path / "ck"), "--json", str(tmp_path / "e.json"),
              "--md", str(tmp_path / "e.md")])
    assert not (tmp_path / "e.json").exists()
