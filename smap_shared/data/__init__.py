"""SMAP telemetry: the vendored copy and the official telemanom layout, plus the anomaly labels."""

from smap_shared.data.labels import Interval, LabelError, load_labels, parse_labels
from smap_shared.data.loader import (
    ChannelData,
    DataSource,
    OfficialLayoutSource,
    VendoredSource,
    default_source,
)

__all__ = [
    "ChannelData",
    "DataSource",
    "Interval",
    "LabelError",
    "OfficialLayoutSource",
    "VendoredSource",
    "default_source",
    "load_labels",
    "parse_labels",
]
