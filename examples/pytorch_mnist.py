"""Train a small PyTorch network with x² activations on MNIST, export it to ONNX and run it
encrypted with blindfold — the notebook path, as a script.

Needs: `pip install ./python torch onnx onnxscript numpy` (torch from PyPI is about 3 GB with
its CUDA libraries, used here on the CPU only) and the MNIST IDX files (default
../shared/data/mnist; `--data DIR`). Takes about a minute on two cores:

    python examples/pytorch_mnist.py --data ../shared/data/mnist
"""

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import blindfold


def idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


class Square(nn.Module):
    def forward(self, x):
        return x * x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/mnist", help="directory of the MNIST IDX .gz files")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-encrypted", type=int, default=20, help="test images to classify under encryption")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    d = Path(args.data)
    x_train = torch.tensor(idx(d / "train-images-idx3-ubyte.gz"), dtype=torch.float32).unsqueeze(1) / 255
    y_train = torch.tensor(idx(d / "train-labels-idx1-ubyte.gz"), dtype=torch.long)
    x_test = idx(d / "t10k-images-idx3-ubyte.gz")[:, None].astype(np.float32) / 255
    y_test = idx(d / "t10k-labels-idx1-ubyte.gz")

    # conv 5×5 stride 2 → batch norm → x² → average pool → dense → x² → dense.
    net = nn.Sequential(
        nn.Conv2d(1, 5, 5, stride=2, padding=1),
        nn.BatchNorm2d(5),
        Square(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(5 * 6 * 6, 64),
        Square(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        net.train()
        for i in range(0, len(x_train), 128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x_train[i : i + 128]), y_train[i : i + 128])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(torch.tensor(x_test)).argmax(1).numpy() == y_test).mean()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, plaintext test accuracy {100 * acc:.2f}%")

    model = blindfold.from_torch(net, torch.tensor(x_test[:1]))
    print(model)
    for layer in model.layers:
        print("  ", layer)
    n = args.n_encrypted
    plain = model.predict(x_test[:n])
    t = time.time()
    encrypted = model.predict(x_test[:n], fhe="execute")
    seconds = time.time() - t
    agree = (plain.argmax(1) == encrypted.argmax(1)).mean()
    print(
        f"{n} images encrypted end to end in {seconds:.1f} s (keys included): argmax agreement "
        f"{100 * agree:.1f}%, encrypted accuracy {100 * (encrypted.argmax(1) == y_test[:n]).mean():.1f}%, "
        f"largest score error {np.abs(plain - encrypted).max():.2e}"
    )


if __name__ == "__main__":
    main()
