#!/usr/bin/env python3
"""Cross-check `softmax-ce eval` against PyTorch in float64.

Not part of the test suite (the project's tests need no Python); a tool for developers who
change a kernel or the CLI. Needs numpy and torch:

    python3 -m pip install numpy torch
    cargo build --release
    python3 scripts/check_eval.py [--bin target/release/softmax-ce] [--devices gpu,cpu]

Prints one line per case with the worst relative error, and exits non-zero if any case is
outside tolerance (1e-5 relative on losses, 1e-4 on probabilities and gradients, with an
absolute floor for values near zero).
"""

import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

LOSS_TOL = 1e-5
PROB_TOL = 1e-4


def rel_err(got, want, floor):
    if np.shape(got) != np.shape(want):
        return float("inf"), f"shape {np.shape(got)} != {np.shape(want)}"
    got = np.atleast_1d(np.asarray(got, dtype=np.float64))
    want = np.atleast_1d(np.asarray(want, dtype=np.float64))
    both_nan = np.isnan(got) & np.isnan(want)
    same = (got == want) | both_nan
    diff = np.abs(got - want) / np.maximum(np.abs(want), floor)
    diff[same] = 0.0
    if not diff.size:
        return 0.0, ""
    i = np.unravel_index(int(diff.argmax()), diff.shape)
    return float(diff[i]), f"at {tuple(int(k) for k in i)}: got {got[i]:.9g}, want {want[i]:.9g}"



class Runner:
    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.failures = 0
        self.count = 0

    def path(self, name):
        return os.path.join(self.tmp, name)

    def save(self, name, array):
        p = self.path(name)
        np.save(p, array)
        return p

    def eval(self, args):
        cmd = [self.binary, "eval", *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr}")

    def check(self, case, got, want, tol, floor):
        self.count += 1
        err, where = rel_err(got, want, floor)
        ok = err <= tol
        if not ok:
            self.failures += 1
        print(f"{'ok ' if ok else 'BAD'} {err:9.2e} {case}" + ("" if ok else f" ({where})"))


def logits_for(rng, rows, cols, kind):
    x = rng.uniform(-8, 8, size=(rows, cols)).astype(np.float32)
    if kind == "wide":
        x *= 1e3
    elif kind == "float64":
        return x.astype(np.float64)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/softmax-ce")
    ap.add_argument("--devices", default="gpu,cpu")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (3, 7), (64, 10), (257, 1000), (3, 100003)]
    with tempfile.TemporaryDirectory() as tmp:
        r = Runner(args.bin, tmp)
        for device, (rows, cols), kind in itertools.product(
            args.devices.split(","), shapes, ["plain", "wide", "float64"]
        ):
            x = logits_for(rng, rows, cols, kind)
            xp = r.save("x.npy", x)
            t = torch.from_numpy(x.astype(np.float64))
            tag = f"{device} {rows}x{cols} {kind}"
            for op, ref in [
                ("softmax", lambda: torch.softmax(t, 1)),
                ("log-softmax", lambda: torch.log_softmax(t, 1)),
                ("logsumexp", lambda: torch.logsumexp(t, 1)),
            ]:
                out = r.path("out.npy")
                r.eval([op, "--logits", xp, "--out", out, "--device", device])
                # Log-domain values near 0 carry f32's absolute error in log(s), s ~ 1.
                floor = 1e-6 if op == "softmax" else 1.0
                tol = PROB_TOL if op == "softmax" else LOSS_TOL
                r.check(f"{tag} {op}", np.load(out), ref().numpy(), tol, floor)

            for dtype, ignore, reduction in itertools.product(
                [np.uint8 if cols <= 255 else np.int32, np.int64],
                [-100, 0],
                ["none", "mean", "sum"],
            ):
                y = rng.integers(0, cols, size=rows).astype(dtype)
                if rows > 2:
                    y[1] = ignore if ignore >= 0 or dtype != np.uint8 else y[1]
                yp = r.save("y.npy", y)
                out, gout = r.path("loss.npy"), r.path("grad.npy")
                r.eval(
                    [
                        "cross-entropy", "--logits", xp, "--labels", yp,
                        "--reduction", reduction, "--ignore-index", str(ignore),
                        "--out", out, "--grad-out", gout, "--device", device,
                    ]
                )
                tt = t.clone().requires_grad_(True)
                loss = F.cross_entropy(
                    tt, torch.from_numpy(y.astype(np.int64)), reduction=reduction,
                    ignore_index=ignore,
                )
                (loss.sum() if reduction == "none" else loss).backward()
                case = f"{tag} cross-entropy {np.dtype(dtype).name} ignore={ignore} {reduction}"
                r.check(case + " loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
                # p - 1 carries p's f32 rounding, a few ulp of 1, times the reduction's scale.
                active = max(int((y != ignore).sum()), 1)
                grad_floor = 1e-3 / (active if reduction == "mean" else 1)
                r.check(case + " grad", np.load(gout), tt.grad.numpy(), PROB_TOL, grad_floor)
        print(f"{r.count - r.failures}/{r.count} cases within tolerance")
        sys.exit(1 if r.failures else 0)


if __name__ == "__main__":
    main()
