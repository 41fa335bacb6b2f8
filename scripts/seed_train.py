#!/usr/bin/env python3
"""The seed's softmax regression in numpy (CMU 10-414/714 hw0), on the data `softmax-ce train`
uses, to check it epoch by epoch. Not used by the Rust tests (which must not need Python).

    python3 scripts/seed_train.py                       # the bundled digits, 10 epochs, lr 0.2
    python3 scripts/seed_train.py --train-x X.npy --train-y Y.npy [--test-x .. --test-y ..]
    python3 scripts/seed_train.py --save-theta theta.npy

Prints one JSON object per epoch per line, with the keys of `softmax-ce train --json`.
Everything is float32, as in the seed: theta starts at zero, batches are taken in order,
`total // batch` of them (the last partial batch is dropped), and the per-epoch loss and error
are the seed's `loss_err(X @ theta, y)`.
"""

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def read_idx(path):
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def softmax_loss(Z, y):
    return np.mean(np.log(np.sum(np.exp(Z), axis=1)) - Z[np.arange(Z.shape[0]), y])


def loss_err(h, y):
    return softmax_loss(h, y), np.mean(h.argmax(axis=1) != y)


def softmax_regression_epoch(X, y, theta, lr=0.1, batch=100):
    total = X.shape[0]
    iteration = total // batch
    k = theta.shape[1]
    for i in range(iteration):
        Xb = X[i * batch:(i + 1) * batch]
        xt = np.exp(np.matmul(Xb, theta))
        Z = xt / xt.sum(axis=1, keepdims=True)
        Iy = np.zeros((batch, k), dtype=np.float32)
        Iy[np.arange(batch), y[i * batch:(i + 1) * batch]] = 1
        theta -= lr * np.matmul(Xb.T, (Z - Iy)) / batch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-x")
    p.add_argument("--train-y")
    p.add_argument("--test-x")
    p.add_argument("--test-y")
    p.add_argument("--classes", type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--save-theta")
    a = p.parse_args()

    if a.train_x:
        X, y = np.load(a.train_x).astype(np.float32), np.load(a.train_y).astype(np.int64)
        test = (np.load(a.test_x).astype(np.float32), np.load(a.test_y).astype(np.int64)) if a.test_x else None
    else:
        images = read_idx(ROOT / "data/digits-images-idx3-ubyte.gz")
        labels = read_idx(ROOT / "data/digits-labels-idx1-ubyte.gz").astype(np.int64)
        images = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
        X, y = images[:8000], labels[:8000]
        test = (images[8000:], labels[8000:])
    k = a.classes or int(max(y.max(), test[1].max() if test else 0)) + 1
    theta = np.zeros((X.shape[1], k), dtype=np.float32)
    for epoch in range(1, a.epochs + 1):
        start = time.perf_counter()
        softmax_regression_epoch(X, y, theta, lr=a.lr, batch=a.batch)
        train_loss, train_err = loss_err(X @ theta, y)
        row = {"epoch": epoch, "train_loss": float(train_loss), "train_err": float(train_err)}
        if test:
            test_loss, test_err = loss_err(test[0] @ theta, test[1])
            row.update(test_loss=float(test_loss), test_err=float(test_err))
        else:
            row.update(test_loss=None, test_err=None)
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
    if a.save_theta:
        np.save(a.save_theta, theta)


if __name__ == "__main__":
    main()
