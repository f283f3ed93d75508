#!/usr/bin/env python3
"""Train an x²-activated CNN on MNIST in PyTorch (CPU) and export it to ONNX for blindfold.

What it does
------------
Trains one of two networks whose layer structure blindfold's built-in architectures also
have, so that ``blindfold infer --model OUT.onnx`` can be compared with the built-in:

* ``--arch cnn2-bn`` (default): blindfold's ``cnn2`` with BatchNorm added::

      Conv2d(1,5,k5,s2,p1) -> BatchNorm2d(5) -> x*x
      -> Conv2d(5,10,k3,s1,p1) -> AvgPool2d(2) -> BatchNorm2d(10) -> x*x
      -> Flatten (10*6*6 = 360) -> Linear(360,64) -> BatchNorm1d(64) -> x*x -> Linear(64,10)

  (28x28 -> 13x13 after conv1, 13x13 after conv2, 6x6 after the pooling.)
* ``--arch tenseal-cnn1``: blindfold's ``tenseal-cnn1`` (no BatchNorm)::

      Conv2d(1,4,k7,s3,p0) -> x*x -> Flatten (4*8*8 = 256) -> Linear(256,64) -> x*x
      -> Linear(64,10)

The input is pixel/255 (as torchvision's ``ToTensor``) unless ``--normalize`` is given,
which standardizes it as (pixel/255 - 0.1307) / 0.3081 *in the data pipeline* (not in the
model: run blindfold with ``--normalize 0.1307,0.3081`` then).  Training: Adam with cosine
learning-rate decay, gradient-norm clipping, random translations of up to ``--max-shift``
pixels; the script prints the test accuracy after every epoch.

The trained model (``eval()`` mode, so BatchNorm uses its running statistics) is exported
with ``torch.onnx.export(..., dynamo=True, external_data=False, opset_version=18)``, or with
the TorchScript ("legacy") exporter ``dynamo=False`` under ``--legacy``.  The input is
float32 ``[1, 1, 28, 28]`` named ``input``, the output ``[1, 10]`` logits named ``logits``.
The exported file is checked with onnx.checker and run in onnxruntime on the whole test
set: its accuracy and the largest difference to PyTorch's logits are printed.

How to run
----------
::

    python -m venv venv && venv/bin/pip install torch onnx onnxruntime onnxscript numpy
    venv/bin/python scripts/onnx/train_mnist.py --data-dir ../shared/data/mnist --out cnn2.onnx
    venv/bin/python scripts/onnx/train_mnist.py --arch tenseal-cnn1 --out cnn1.onnx
    venv/bin/python scripts/onnx/train_mnist.py --normalize --legacy --out cnn2-std.onnx

``--data-dir`` holds the four MNIST IDX files (``train-images-idx3-ubyte.gz`` ... or
uncompressed).  Packages: torch (CPU is enough), onnx, onnxruntime, onnxscript (the dynamo
exporter needs it), numpy.  Written and run with torch 2.15.0, onnx 1.23.2, onnxruntime
1.32.0, onnxscript 0.7.2, numpy 2.4.6.
"""

import argparse
import gzip
import os
import sys
import time
import warnings

import numpy as np

from idx import default_data_dir, read_idx
import torch
import torch.nn as nn
import torch.nn.functional as F

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def load_mnist(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    labels = read_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    return images, labels


def to_input(images_u8, normalize):
    """uint8 [n, 28, 28] -> float32 [n, 1, 28, 28] model input."""
    x = images_u8.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    if normalize:
        x = (x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return x


def random_shift(x, max_shift, gen, fill):
    """Translate every image of the batch by its own random (dy, dx) in [-max_shift, max_shift],
    filling the uncovered border with ``fill`` (the value of a black pixel)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=fill)
    dy = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


class Square(nn.Module):
    def forward(self, x):
        return x * x


def make_model(arch):
    if arch == "cnn2-bn":
        return nn.Sequential(
            nn.Conv2d(1, 5, kernel_size=5, stride=2, padding=1),  # 28 -> 13
            nn.BatchNorm2d(5),
            Square(),
            nn.Conv2d(5, 10, kernel_size=3, stride=1, padding=1),  # 13 -> 13
            nn.AvgPool2d(2),  # 13 -> 6
            nn.BatchNorm2d(10),
            Square(),
            nn.Flatten(),
            nn.Linear(10 * 6 * 6, 64),
            nn.BatchNorm1d(64),
            Square(),
            nn.Linear(64, 10),
        )
    if arch == "tenseal-cnn1":
        return nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=7, stride=3, padding=0),  # 28 -> 8
            Square(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 64),
            Square(),
            nn.Linear(64, 10),
        )
    raise ValueError(arch)


def scale_init(model, factor):
    """Multiply the initial weights of every Conv/Linear layer by ``factor`` (x² networks
    without normalization can blow up with the default initialization)."""
    if factor == 1.0:
        return
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(factor)


# ---------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, x, batch=1000):
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def train(args):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tr_img, tr_lab = load_mnist(args.data_dir, "train")
    te_img, te_lab = load_mnist(args.data_dir, "test")
    x_tr = torch.from_numpy(to_input(tr_img, args.normalize))
    y_tr = torch.from_numpy(tr_lab.astype(np.int64))
    x_te = to_input(te_img, args.normalize)
    black = float(to_input(np.zeros((1, 1, 1), np.uint8), args.normalize)[0, 0, 0, 0])

    model = make_model(args.arch)
    init_scale = args.init_scale if args.init_scale is not None else (1.0 if args.arch == "cnn2-bn" else 0.5)
    scale_init(model, init_scale)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x_tr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    print(
        f"arch {args.arch}, input {'(pixel/255-0.1307)/0.3081' if args.normalize else 'pixel/255'}, "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr} (cosine), "
        f"clip {args.clip}, max-shift {args.max_shift}, init-scale {init_scale}, seed {args.seed}",
        flush=True,
    )
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total, n_seen, skipped = 0.0, 0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            if len(idx) < 2:  # BatchNorm1d needs more than one sample
                continue
            xb = random_shift(x_tr[idx], args.max_shift, gen, black)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            if not torch.isfinite(loss):
                skipped += 1
                opt.zero_grad(set_to_none=True)
                sched.step()
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n_seen += len(idx)
        acc = (predict(model, x_te).argmax(1) == te_lab).mean()
        extra = f", {skipped} non-finite batches skipped" if skipped else ""
        print(
            f"epoch {epoch + 1:2d}/{args.epochs}: loss {total / max(n_seen, 1):.4f}, "
            f"test accuracy {100 * acc:.2f}% ({time.time() - t0:.1f} s{extra})",
            flush=True,
        )
    model.eval()
    return model, x_te, te_lab


def export(model, path, legacy, opset):
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    if legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), path, dynamo=False, **kw)
    else:
        torch.onnx.export(model, (dummy,), path, dynamo=True, external_data=False, **kw)
    if os.path.exists(path + ".data"):
        print(f"warning: the exporter also wrote {path}.data (external data)", file=sys.stderr)


def check_export(model, path, x_te, te_lab):
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m)
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    ops = [n.op_type for n in m.graph.node]
    print(f"ONNX: ir_version {m.ir_version}, opsets {opset}, {len(ops)} nodes: {' '.join(ops)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    ort_logits = np.concatenate([sess.run(None, {inp: x_te[i : i + 1]})[0] for i in range(len(x_te))])
    torch_logits = predict(model, x_te)
    diff = np.abs(ort_logits - torch_logits).max()
    acc = (ort_logits.argmax(1) == te_lab).mean()
    agree = (ort_logits.argmax(1) == torch_logits.argmax(1)).mean()
    print(
        f"onnxruntime on the {len(x_te)} test images: accuracy {100 * acc:.2f}%, "
        f"max |ORT - PyTorch| {diff:.3g}, argmax agreement {100 * agree:.2f}%, "
        f"logit range [{ort_logits.min():.3f}, {ort_logits.max():.3f}]"
    )
    return acc


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["cnn2-bn", "tenseal-cnn1"], default="cnn2-bn")
    p.add_argument("--data-dir", default=default_data_dir(), help="directory with the four MNIST IDX files")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--normalize", action="store_true", help="train on (pixel/255 - 0.1307) / 0.3081 (data pipeline, not the model)")
    p.add_argument("--legacy", action="store_true", help="export with the TorchScript exporter (dynamo=False)")
    p.add_argument("--opset", type=int, default=18, help="opset_version passed to torch.onnx.export (default 18)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (cosine decay to 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--max-shift", type=int, default=1, help="random translation in pixels (0 disables)")
    p.add_argument("--init-scale", type=float, default=None, help="multiply initial Conv/Linear weights (default 1 for cnn2-bn, 0.5 for tenseal-cnn1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker / onnxruntime check of the export")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} threads, data {args.data_dir}", flush=True)
    model, x_te, te_lab = train(args)
    export(model, args.out, args.legacy, args.opset)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {'legacy' if args.legacy else 'dynamo'} exporter, opset_version {args.opset})")
    if not args.no_check:
        check_export(model, args.out, x_te, te_lab)
    if args.normalize:
        print(f"note: trained on standardized inputs: run blindfold with --normalize {MNIST_MEAN},{MNIST_STD}")


if __name__ == "__main__":
    main()
