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
        options(r, rng, args.devices.split(","), shapes)
        parity_cases(r, rng, args.devices.split(","))
        print(f"{r.count - r.failures}/{r.count} cases within tolerance")
        sys.exit(1 if r.failures else 0)


def options(r, rng, devices, shapes):
    """Label smoothing, class weights, z-loss; the backward ops; BCE with logits."""
    for device, (rows, cols) in itertools.product(devices, shapes):
        x = logits_for(rng, rows, cols, "plain")
        xp = r.save("x.npy", x)
        t = torch.from_numpy(x.astype(np.float64))
        y = rng.integers(0, cols, size=rows).astype(np.int64)
        if rows > 2:
            y[1] = -100
        yp = r.save("y.npy", y)
        w = rng.uniform(0.2, 2.0, size=cols).astype(np.float32)
        wp = r.save("w.npy", w)
        tag = f"{device} {rows}x{cols}"
        for eps, weighted, z, reduction in itertools.product(
            [0.0, 0.1], [False, True], [0.0, 1e-3], ["none", "mean", "sum"]
        ):
            out, gout = r.path("loss.npy"), r.path("grad.npy")
            cmd = ["cross-entropy", "--logits", xp, "--labels", yp, "--reduction", reduction,
                   "--label-smoothing", str(eps), "--z-loss", str(z),
                   "--out", out, "--grad-out", gout, "--device", device]
            if weighted:
                cmd += ["--weight", wp]
            r.eval(cmd)
            tt = t.clone().requires_grad_(True)
            yt = torch.from_numpy(y)
            wt = torch.from_numpy(w.astype(np.float64)) if weighted else None
            ce = F.cross_entropy(tt, yt, weight=wt, reduction=reduction, ignore_index=-100,
                                 label_smoothing=eps)
            keep = (yt != -100).double()
            zrow = z * torch.logsumexp(tt, 1) ** 2 * keep
            if reduction == "none":
                loss = ce + zrow
            elif reduction == "sum":
                loss = ce + zrow.sum()
            else:
                loss = ce + zrow.sum() / keep.sum()
            (loss.sum() if reduction == "none" else loss).backward()
            case = f"{tag} cross-entropy e={eps} w={weighted} z={z} {reduction}"
            r.check(case + " loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
            wsum = float((w[y[y != -100]] if weighted else np.ones((y != -100).sum())).sum())
            floor = 1e-3 / (max(wsum, 1e-3) if reduction == "mean" else 1)
            r.check(case + " grad", np.load(gout), tt.grad.numpy(), PROB_TOL, floor)

        soft = rng.uniform(0.01, 1, size=(rows, cols))
        soft = (soft / soft.sum(1, keepdims=True)).astype(np.float32)
        sp = r.save("soft.npy", soft)
        for eps, weighted, reduction in itertools.product([0.0, 0.1], [False, True], ["none", "mean", "sum"]):
            out, gout = r.path("loss.npy"), r.path("grad.npy")
            cmd = ["cross-entropy", "--logits", xp, "--targets", sp, "--reduction", reduction,
                   "--label-smoothing", str(eps), "--out", out, "--grad-out", gout, "--device", device]
            if weighted:
                cmd += ["--weight", wp]
            r.eval(cmd)
            tt = t.clone().requires_grad_(True)
            wt = torch.from_numpy(w.astype(np.float64)) if weighted else None
            loss = F.cross_entropy(tt, torch.from_numpy(soft.astype(np.float64)), weight=wt,
                                   reduction=reduction, label_smoothing=eps)
            (loss.sum() if reduction == "none" else loss).backward()
            case = f"{tag} soft cross-entropy e={eps} w={weighted} {reduction}"
            r.check(case + " loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
            floor = 1e-3 / (rows if reduction == "mean" else 1)
            r.check(case + " grad", np.load(gout), tt.grad.numpy(), PROB_TOL, floor)

        dy = rng.uniform(-1, 1, size=(rows, cols)).astype(np.float32)
        dyp = r.save("dy.npy", dy)
        dyt = torch.from_numpy(dy.astype(np.float64))
        for op, flag, fwd in [("softmax-backward", "--probs", torch.softmax),
                              ("log-softmax-backward", "--log-probs", torch.log_softmax)]:
            tt = t.clone().requires_grad_(True)
            out_t = fwd(tt, 1)
            (out_t * dyt).sum().backward()
            ip = r.save("in.npy", out_t.detach().numpy().astype(np.float32))
            out = r.path("dx.npy")
            r.eval([op, flag, ip, "--upstream", dyp, "--out", out, "--device", device])
            # dy - exp(lp) sum(dy) subtracts terms of order |dy| ~ 1 (and the input lp is
            # already rounded to f32): its absolute error is a few ulp of 1, not of the result.
            floor = 1e-2 if op == "log-softmax-backward" else 1e-3
            r.check(f"{tag} {op}", np.load(out), tt.grad.numpy(), PROB_TOL, floor)

        targ = rng.uniform(0, 1, size=(rows, cols)).astype(np.float32)
        tp = r.save("t.npy", targ)
        for reduction in ["none", "mean", "sum"]:
            out, gout = r.path("bce.npy"), r.path("bceg.npy")
            r.eval(["bce-with-logits", "--logits", xp, "--targets", tp, "--reduction", reduction,
                    "--out", out, "--grad-out", gout, "--device", device])
            tt = t.clone().requires_grad_(True)
            loss = F.binary_cross_entropy_with_logits(
                tt, torch.from_numpy(targ.astype(np.float64)), reduction=reduction)
            (loss.sum() if reduction == "none" else loss).backward()
            r.check(f"{tag} bce {reduction} loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
            floor = 1e-3 / (rows * cols if reduction == "mean" else 1)
            r.check(f"{tag} bce {reduction} grad", np.load(gout), tt.grad.numpy(), PROB_TOL, floor)


def parity_cases(r, rng, devices):
    """bce-with-logits of any shape with weight and pos_weight, and cross-entropy over N-d
    logits (N, C, d1, ..., dk) and one unbatched row (C,)."""
    for device in devices:
        for shape, w_shape, pw_shape in [((37,), (37,), (1,)), ((2, 3, 5), (2, 1, 1), (5,)),
                                         ((4, 6), (), (6,)), ((3, 4), (3, 1), (3, 4))]:
            z = rng.uniform(-8, 8, size=shape).astype(np.float32)
            t = np.where(rng.uniform(size=shape) < 0.5, 0.0, 1.0).astype(np.float32)
            t[..., 0] = rng.uniform(size=t[..., 0].shape)  # some fractional targets
            w = rng.uniform(0.5, 1.5, size=w_shape).astype(np.float32)
            pw = rng.uniform(0.5, 3.0, size=pw_shape).astype(np.float32)
            zp, tp, wp, pwp = (r.save(n, a) for n, a in
                               [("bz.npy", z), ("bt.npy", t), ("bw.npy", w), ("bpw.npy", pw)])
            for reduction in ["none", "mean", "sum"]:
                out, gout = r.path("bl.npy"), r.path("bg.npy")
                r.eval(["bce-with-logits", "--logits", zp, "--targets", tp, "--weight", wp,
                        "--pos-weight", pwp, "--reduction", reduction, "--out", out,
                        "--grad-out", gout, "--device", device])
                zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
                loss = F.binary_cross_entropy_with_logits(
                    zt, torch.from_numpy(t.astype(np.float64)),
                    weight=torch.from_numpy(w.astype(np.float64)),
                    pos_weight=torch.from_numpy(pw.astype(np.float64)), reduction=reduction)
                (loss.sum() if reduction == "none" else loss).backward()
                case = f"{device} {shape} bce w{w_shape} pw{pw_shape} {reduction}"
                r.check(case + " loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
                floor = 1e-3 / (z.size if reduction == "mean" else 1)
                r.check(case + " grad", np.load(gout), zt.grad.numpy(), PROB_TOL, floor)

        for shape in [(2, 5, 3, 4), (3, 7, 65), (6,)]:
            x = rng.uniform(-8, 8, size=shape).astype(np.float32)
            c = shape[1] if len(shape) > 1 else shape[0]
            positions = (shape[0],) + shape[2:] if len(shape) > 1 else ()
            y = rng.integers(0, c, size=positions).astype(np.int64)
            if len(shape) > 1:
                y.reshape(-1)[::5] = 255
            w = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
            xp, yp, wp = r.save("cx.npy", x), r.save("cy.npy", y), r.save("cw.npy", w)
            for reduction, eps in itertools.product(["none", "mean", "sum"], [0.0, 0.1]):
                out, gout = r.path("cl.npy"), r.path("cg.npy")
                r.eval(["cross-entropy", "--logits", xp, "--labels", yp, "--weight", wp,
                        "--ignore-index", "255", "--label-smoothing", str(eps),
                        "--reduction", reduction, "--out", out, "--grad-out", gout,
                        "--device", device])
                xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
                loss = F.cross_entropy(xt, torch.from_numpy(y), weight=torch.from_numpy(
                    w.astype(np.float64)), ignore_index=255, label_smoothing=eps,
                    reduction=reduction)
                (loss.sum() if reduction == "none" else loss).backward()
                case = f"{device} {shape} cross-entropy nd e={eps} {reduction}"
                r.check(case + " loss", np.load(out), loss.detach().numpy(), LOSS_TOL, 1.0)
                active = max(int((y != 255).sum()), 1)
                floor = 1e-3 / (active if reduction == "mean" else 1)
                r.check(case + " grad", np.load(gout), xt.grad.numpy(), PROB_TOL, floor)


if __name__ == "__main__":
    main()
