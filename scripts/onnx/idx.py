"""MNIST-format IDX files for the scripts in this directory: where they are and how to read
them (numpy arrays of unsigned bytes)."""

import gzip
import os
import sys

import numpy as np


def default_data_dir():
    """``../shared/data/mnist`` from the repository root (the benchmark data), if present."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in ("/work/shared/data/mnist", os.path.join(here, "..", "..", "..", "shared", "data", "mnist")):
        if os.path.isdir(d):
            return d
    return "../shared/data/mnist"


def read_idx(data_dir, stem):
    """Read an IDX file (``stem`` or ``stem.gz``) into a numpy array; exit with a message
    (code 2) if it is missing or not an unsigned-byte IDX file."""
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                data = f.read()
            break
    else:
        print(f"error: neither {stem} nor {stem}.gz in {data_dir}", file=sys.stderr)
        sys.exit(2)
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:
        print(f"error: {path}: not an unsigned-byte IDX file (magic {magic:#x})", file=sys.stderr)
        sys.exit(2)
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
