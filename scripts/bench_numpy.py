#!/usr/bin/env python3
"""The numpy side of BENCHMARKS.md: the seed's code, timed on the shapes `softmax-ce bench` uses.

Not used by the Rust tests. Run it next to `softmax-ce bench` on the same machine, in the same
session, and quote ratios rather than absolute times (the machines here are shared and noisy):

    python3 scripts/bench_numpy.py            # prints one JSON object per line
    python3 scripts/bench_numpy.py --quick

Each case reports the median, min and max milliseconds over repetitions after one warm-up, with
the keys of `softmax-ce bench --json` and path "numpy".

The code is the seed's (CMU 10-414/714 hw0, /work/shared/seeds/000_*.txt), float32 throughout:
softmax as exp / row sum (with the row max subtracted, which the seed omits, so that random
logits cannot overflow), cross-entropy forward and backward as the seed's softmax_loss and
Z - I_y, and softmax_regression_epoch unchanged.
"""

import argparse
import json
import time

import numpy as np

from seed_train import softmax_regression_epoch  # the seed's epoch, shared with the checker


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_fwd_bwd(z, y):
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) + m[:, 0] - z[np.arange(z.shape[0]), y])
    grad = e / s
    grad[np.arange(z.shape[0]), y] -= 1
    grad /= z.shape[0]
    return loss, grad


def timed(f, reps):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def emit(op, shape, times, **extra):
    times = sorted(times)
    median = times[len(times) // 2]
    row = {"op": op, "shape": shape, "path": "numpy", "median_ms": round(median, 3),
           "min_ms": round(times[0], 3), "max_ms": round(times[-1], 3), "reps": len(times)}
    for key, value in extra.items():
        row[key] = round(value(median), 3)
    print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    rng = np.random.default_rng(714)
    print(json.dumps({"op": "adapter", "device": "cpu", "name": "numpy " + np.__version__}))

    shapes = [(256, 1024), (64, 8192)] if args.quick else [(4096, 1024), (1024, 32768), (256, 131072)]
    for n, c in shapes:
        z = rng.uniform(-8, 8, size=(n, c)).astype(np.float32)
        y = rng.integers(0, c, size=n)
        gbps = lambda ms, b=2 * n * c * 4: b / ms / 1e6
        emit("softmax", f"{n}x{c}", timed(lambda: softmax(z), reps), gbps=gbps)
        emit("cross_entropy_fwd_bwd", f"{n}x{c}", timed(lambda: cross_entropy_fwd_bwd(z, y), reps), gbps=gbps)

    for m, k, n in ([(128, 128, 128), (100, 784, 10)] if args.quick else [(1024, 1024, 1024), (100, 784, 10)]):
        a = rng.uniform(-1, 1, size=(m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, size=(k, n)).astype(np.float32)
        emit("matmul", f"{m}x{k}x{n}", timed(lambda: a @ b, reps), gflops=lambda ms: 2 * m * n * k / ms / 1e6)

    rows, features, classes = (2000, 784, 10) if args.quick else (60000, 784, 10)
    X = rng.uniform(0, 1, size=(rows, features)).astype(np.float32)
    y = rng.integers(0, classes, size=rows).astype(np.uint8)
    theta = np.zeros((features, classes), dtype=np.float32)
    emit("train_epoch", f"{rows}x{features}x{classes}",
         timed(lambda: softmax_regression_epoch(X, y, theta, lr=0.01, batch=100), min(reps, 5)))


if __name__ == "__main__":
    main()
