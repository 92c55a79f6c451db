"""Pack an official telemanom SMAP folder into the compact archive shipped with this package.

    python -m smap_shared.data.vendor ../shared/data/smap
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.data.loader import OfficialLayoutSource


def pack(src: Path, dest_dir: Path) -> Path:
    source = OfficialLayoutSource(src)
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    for chan in source.channels():
        data = source.load(chan)
        for split, arr in (("train", data.train), ("test", data.test)):
            flags = arr[:, 1:]
            if not np.isin(flags, (0.0, 1.0)).all():
                raise ValueError(f"{split}/{chan}: command columns are not 0/1; cannot bit-pack losslessly")
            arrays[f"{split}/{chan}/values"] = arr[:, :1]
            arrays[f"{split}/{chan}/flags"] = np.packbits(flags.astype(np.uint8), axis=1)
            arrays[f"{split}/{chan}/width"] = np.array(arr.shape[1])
    out = dest_dir / "smap.npz"
    np.savez_compressed(out, **arrays)
    shutil.copyfile(src / "labeled_anomalies.csv", dest_dir / "labeled_anomalies.csv")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src", type=Path, help="folder with train/, test/ and labeled_anomalies.csv")
    ap.add_argument("--dest", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    out = pack(args.src, args.dest)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
