#!/usr/bin/env python3
"""Compare blindfold's decrypted logits with onnxruntime's on the same MNIST test images.

What it does
------------
Loads the first N test images of an MNIST-format dataset (IDX files), runs MODEL.onnx in
onnxruntime on each (input float32 ``[1, 1, 28, 28]``: pixel/255, or
(pixel/255 - MEAN) / STD with ``--normalize MEAN,STD``, the same option blindfold takes),
loads the logits blindfold decrypted (``blindfold infer --logits-out LOGITS.npy``: float64,
``[N, classes]``, test images in order) and prints

* the largest absolute difference between the two,
* that difference relative to the range of onnxruntime's logits (max - min over all of them),
* argmax agreement (the fraction of images both classify the same way),
* the accuracy of each against the labels.

With ``--json OUT`` the figures are also written as JSON.  The exit code is 1 if the
agreement is below ``--min-agreement`` (default 0.995), 2 on a usage / shape error.

How to run
----------
::

    python -m venv venv && venv/bin/pip install onnxruntime numpy
    blindfold infer --model cnn2.onnx --dataset mnist --data-dir DIR --n-test 1000 \\
        --logits-out cnn2.npy
    venv/bin/python scripts/onnx/compare.py cnn2.onnx cnn2.npy --dataset-dir DIR

Packages: onnxruntime, numpy (``onnx`` is not needed).  Written with onnxruntime 1.32.0
and numpy 2.4.6.
"""

import argparse
import gzip
import json
import os
import sys

import numpy as np

from idx import default_data_dir, read_idx


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the ONNX model blindfold ran")
    p.add_argument("logits", help="blindfold's decrypted logits (.npy, [N, classes])")
    p.add_argument("--dataset-dir", default=default_data_dir(), help="directory with the MNIST-format IDX test files")
    p.add_argument("--n", type=int, default=None, help="number of test images (default: the rows of LOGITS)")
    p.add_argument("--normalize", default=None, metavar="MEAN,STD", help="model input is (pixel/255 - MEAN) / STD")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the figures here")
    p.add_argument("--min-agreement", type=float, default=0.995, help="exit 1 below this argmax agreement (default 0.995)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    args = p.parse_args()

    import onnxruntime as ort

    bf = np.load(args.logits)
    if bf.ndim != 2:
        print(f"error: {args.logits}: expected a 2-d array [N, classes], got shape {bf.shape}", file=sys.stderr)
        sys.exit(2)
    n = args.n if args.n is not None else bf.shape[0]
    if n > bf.shape[0]:
        print(f"error: --n {n} but {args.logits} has only {bf.shape[0]} rows", file=sys.stderr)
        sys.exit(2)
    bf = bf[:n].astype(np.float64)

    images = read_idx(args.dataset_dir, "t10k-images-idx3-ubyte")[:n]
    labels = read_idx(args.dataset_dir, "t10k-labels-idx1-ubyte")[:n].astype(np.int64)
    if len(images) < n:
        print(f"error: only {len(images)} test images in {args.dataset_dir}", file=sys.stderr)
        sys.exit(2)
    x = images.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    if args.normalize:
        mean, std = (np.float32(float(v)) for v in args.normalize.split(","))
        x = (x - mean) / std

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    ort_logits = np.concatenate([sess.run(None, {inp: x[i : i + 1]})[0] for i in range(n)]).astype(np.float64)
    if ort_logits.shape != bf.shape:
        print(f"error: onnxruntime's logits have shape {ort_logits.shape}, blindfold's {bf.shape}", file=sys.stderr)
        sys.exit(2)

    err = np.abs(bf - ort_logits)
    logit_range = float(ort_logits.max() - ort_logits.min())
    ort_pred, bf_pred = ort_logits.argmax(1), bf.argmax(1)
    res = {
        "model": os.path.abspath(args.model),
        "logits": os.path.abspath(args.logits),
        "n": int(n),
        "classes": int(bf.shape[1]),
        "normalize": args.normalize,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_abs_error_image": int(np.unravel_index(err.argmax(), err.shape)[0]),
        "ort_logit_min": float(ort_logits.min()),
        "ort_logit_max": float(ort_logits.max()),
        "ort_logit_range": logit_range,
        "max_rel_error": float(err.max() / logit_range) if logit_range > 0 else float("inf"),
        "argmax_agreement": float((ort_pred == bf_pred).mean()),
        "disagreements": [int(i) for i in np.nonzero(ort_pred != bf_pred)[0]],
        "ort_accuracy": float((ort_pred == labels).mean()),
        "blindfold_accuracy": float((bf_pred == labels).mean()),
        "min_agreement": args.min_agreement,
    }
    res["pass"] = res["argmax_agreement"] >= args.min_agreement

    print(f"model {args.model}, {n} test images of {args.dataset_dir}, input "
          f"{'(pixel/255-MEAN)/STD with ' + args.normalize if args.normalize else 'pixel/255'}")
    print(f"max abs error        {res['max_abs_error']:.6g} (image {res['max_abs_error_image']}), mean {res['mean_abs_error']:.3g}")
    print(f"ORT logit range      [{res['ort_logit_min']:.4f}, {res['ort_logit_max']:.4f}] = {logit_range:.4f}")
    print(f"max error / range    {res['max_rel_error']:.3e}")
    print(f"argmax agreement     {100 * res['argmax_agreement']:.2f}% ({n - len(res['disagreements'])}/{n})"
          + (f", disagreeing images {res['disagreements'][:20]}" if res["disagreements"] else ""))
    print(f"ORT accuracy         {100 * res['ort_accuracy']:.2f}%")
    print(f"blindfold accuracy   {100 * res['blindfold_accuracy']:.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    if not res["pass"]:
        print(f"FAIL: agreement {res['argmax_agreement']:.4f} < {args.min_agreement}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
