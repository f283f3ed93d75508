#!/usr/bin/env python3
"""The Python package on an ONNX model and MNIST test images: ``predict(x, fhe="execute")``
against ``fhe="disable"`` and, when onnxruntime is installed, against onnxruntime's logits.

    python scripts/onnx/python_predict.py MODEL.onnx --data ../shared/data/mnist --n 200

Inputs are pixel/255 (``--normalize MEAN,STD`` for standardized models). Prints argmax
agreement, the largest score difference relative to the logit range, and the time per image
(keys made once, not counted). Exit code 1 if agreement with the plaintext model is below
``--min-agreement`` (default 0.995).
"""

import argparse
import sys
import time

import numpy as np

import blindfold
from idx import default_data_dir, read_idx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--normalize", help="MEAN,STD")
    ap.add_argument("--min-agreement", type=float, default=0.995)
    a = ap.parse_args()
    x = read_idx(a.data, "t10k-images-idx3-ubyte")[: a.n, None].astype(np.float32) / 255
    if a.normalize:
        mean, std = (float(v) for v in a.normalize.split(","))
        x = (x - mean) / std
    model = blindfold.compile(a.model)
    print(model)
    plain = model.predict(x, fhe="disable")
    model.predict(x[:1], fhe="execute")  # keys
    t = time.time()
    encrypted = model.predict(x, fhe="execute")
    per_image = (time.time() - t) / len(x) * 1e3
    span = float(plain.max() - plain.min())
    agree = float((plain.argmax(1) == encrypted.argmax(1)).mean())
    print(f"execute vs disable: argmax agreement {100 * agree:.2f}% on {len(x)} images, "
          f"largest difference {np.abs(plain - encrypted).max():.3e} (logit range {span:.1f}), "
          f"{per_image:.1f} ms per image (encrypt, evaluate, decrypt)")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: no comparison with it")
    else:
        sess = ort.InferenceSession(a.model)
        name = sess.get_inputs()[0].name
        ref = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
        print(f"execute vs onnxruntime: argmax agreement {100 * (ref.argmax(1) == encrypted.argmax(1)).mean():.2f}%, "
              f"largest difference {np.abs(ref - encrypted).max():.3e}; disable vs onnxruntime: "
              f"largest difference {np.abs(ref - plain).max():.3e}")
    return 0 if agree >= a.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
