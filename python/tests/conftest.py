"""Shared fixtures: the repository, the CLI binary built from it, and a safetensors reader
(numpy only, so the tests need nothing beyond numpy and pytest)."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import deepvis

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "testdata" / "onnx"


def read_safetensors(path):
    """{name: float32 array} of a safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"])
    return out


@pytest.fixture(scope="session")
def cli():
    """Runs the `deepvis` binary of this checkout (DEEPVIS_BIN, or target/release/deepvis)."""
    exe = Path(os.environ.get("DEEPVIS_BIN", ROOT / "target" / "release" / "deepvis"))
    if not exe.is_file():
        pytest.fail(f"{exe} is missing; run `cargo build --release` first (or set DEEPVIS_BIN)")

    def run(*args, check=True):
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"deepvis {' '.join(map(str, args))} failed: {r.stderr}")
        return r

    return run


@pytest.fixture(scope="session")
def lite0():
    return deepvis.load("efficientnet_lite0")


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """A deterministic 80x96 RGB PNG (smooth colours and a few edges)."""
    y, x = np.mgrid[0:80, 0:96].astype(np.float32)
    img = np.stack(
        [
            0.5 + 0.5 * np.sin(x / 7.0),
            0.5 + 0.5 * np.cos(y / 5.0),
            ((x // 16 + y // 16) % 2).astype(np.float32),
        ],
        axis=2,
    )
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    deepvis.Image(img).save(path)
    return path
