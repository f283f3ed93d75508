"""Tests of the blindfold Python package on PyTorch-exported ONNX files with onnxruntime's
outputs (crates/onnx/tests/data, made by scripts/onnx/make_test_models.py): plaintext,
simulated and encrypted predictions, client and server in two processes, and errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blindfold

DATA = Path(__file__).resolve().parents[2] / "crates" / "onnx" / "tests" / "data"


def zoo(name):
    """A zoo model's path, its 4 inputs and onnxruntime's logits for them."""
    entry = next(e for e in json.loads((DATA / "manifest.json").read_text()) if e["name"] == name)
    x = np.fromfile(DATA / f"{name}.in.f32", np.float32).reshape([4] + entry["input_shape"])
    want = np.fromfile(DATA / f"{name}.out.f32", np.float32).reshape(4, entry["classes"])
    return DATA / f"{name}.onnx", x, want


def spread(a):
    return float(a.max() - a.min())


@pytest.mark.parametrize("name", ["batchnorm_legacy", "poly2_dynamo", "matmul_legacy", "softmax_dynamo"])
def test_predictions_match_onnxruntime(name):
    path, x, want = zoo(name)
    model = blindfold.compile(path)
    assert model.input_shape == tuple(x.shape[1:]) and model.classes == want.shape[1]
    plain = model.predict(x, fhe="disable")
    assert plain.dtype == np.float32 and plain.shape == want.shape
    assert np.abs(plain - want).max() <= 1e-4 * spread(want)
    simulated = model.predict(x, fhe="simulate")
    assert np.abs(simulated - want).max() <= 1e-4 * spread(want)
    encrypted = model.predict(x, fhe="execute")
    assert encrypted.dtype == np.float64
    # CKKS error: a few percent of these untrained models' small logit ranges (0.3 to 0.5)
    # at the smallest rings; trained models' logits span tens (BENCHMARKS.md).
    assert np.abs(encrypted - want).max() <= 0.05 * spread(want)
    # One sample without the batch dimension, and the bytes of the file instead of its path.
    again = blindfold.compile(path.read_bytes())
    assert np.allclose(again.predict(x[0]), plain[:1])


def test_client_and_server_in_two_processes(tmp_path):
    path, x, want = zoo("square_dynamo")
    model = blindfold.compile(path)
    # The client knows only the server's published plan.
    client = blindfold.Client.from_plan(model.server().plan)
    (tmp_path / "keys").write_bytes(client.evaluation_keys())
    for i in range(2):
        (tmp_path / f"request{i}").write_bytes(client.encrypt(x[i]))
    server = f"""
import sys, blindfold
from pathlib import Path
d = Path(sys.argv[1])
server = blindfold.compile(sys.argv[2]).server()
keys = (d / "keys").read_bytes()
for i in range(2):
    (d / f"reply{{i}}").write_bytes(server.evaluate((d / f"request{{i}}").read_bytes(), keys))
"""
    subprocess.run([sys.executable, "-c", server, str(tmp_path), str(path)], check=True)
    for i in range(2):
        scores = client.decrypt((tmp_path / f"reply{i}").read_bytes())
        assert scores.shape == (want.shape[1],)
        # N = 8192 with 29-bit scales: CKKS error about 2% of this untrained model's small
        # logit range (0.3).
        assert np.abs(scores - want[i]).max() <= 0.05 * spread(want)


def test_bad_input_is_a_value_error_that_says_what():
    path, x, _ = zoo("square_dynamo")
    model = blindfold.compile(path)
    with pytest.raises(ValueError, match=r"the model takes \[1, 28, 28\]"):
        model.predict(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="fhe="):
        model.predict(x, fhe="sometimes")
    with pytest.raises(ValueError, match="not finite"):
        model.predict(np.full((1, 28, 28), np.nan))
    client, server = model.client(), model.server()
    request = client.encrypt(x[0])
    for bad in (request[:-10], request[:8] + b"\xff" + request[9:], request + b"\x00"):
        with pytest.raises(ValueError, match="request"):
            server.evaluate(bad, client.evaluation_keys())
    with pytest.raises(ValueError, match="evaluation keys"):
        server.evaluate(client.encrypt(x[0]), b"not keys")
    # The server keeps serving after refusals.
    reply = server.evaluate(client.encrypt(x[0]), client.evaluation_keys())
    assert client.decrypt(reply).shape == (10,)
    with pytest.raises(ValueError):
        client.decrypt(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a blindfold plan"):
        blindfold.Client.from_plan("{}")
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        blindfold.compile(b"\xff\xff\xff\xff" * 16)
    with pytest.raises(ValueError, match="MaxPool"):
        blindfold.compile(DATA / "maxpool_dynamo.onnx")


def test_relu_needs_a_replacement_and_calibration():
    path = DATA / "relu_dynamo.onnx"
    with pytest.raises(ValueError, match="replace_activation"):
        blindfold.compile(path)
    with pytest.raises(ValueError, match="calibration"):
        blindfold.compile(path, replace_activation="relu-poly2")
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    model = blindfold.compile(path, x, replace_activation="relu-poly2")
    assert any("ReLU fit of degree 2" in layer for layer in model.layers)
    assert model.notes and "ReLU" in model.notes[0]
    plain, encrypted = model.predict(x[:2]), model.predict(x[:2], fhe="execute")
    assert np.abs(plain - encrypted).max() <= 0.05 * spread(plain)


@pytest.mark.skipif(
    os.environ.get("BLINDFOLD_TORCH_TESTS") != "1", reason="needs torch (set BLINDFOLD_TORCH_TESTS=1)"
)
def test_from_torch():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 5, stride=2, padding=1)
            self.fc = torch.nn.Linear(4 * 13 * 13, 10)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((h * h).flatten(1))

    net = Net()
    x = torch.rand(3, 1, 28, 28)
    model = blindfold.from_torch(net, x[:1])
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(model.predict(x.numpy()) - want).max() <= 1e-4 * spread(want)


def test_tensor_layer_computes_what_numpy_does():
    rng = np.random.default_rng(1)
    ctx = blindfold.CkksContext()
    assert ctx.has_secret_key and ctx.slots == 4096
    x, y = rng.normal(size=20), rng.normal(size=20)
    m = rng.normal(size=(20, 7))
    vx, vy = ctx.encrypt(x), ctx.encrypt(y)
    close = lambda got, want: np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert close((vx + vy).decrypt(), x + y)
    assert close((vx - 2.0).decrypt(), x - 2.0)
    assert close((vx * vy).decrypt(), x * y)
    assert close((vx * y).decrypt(), x * y)
    assert close((3.0 * vx + y).decrypt(), 3.0 * x + y)
    assert close((vx * vy + vx).decrypt(), x * y + x)  # operands of different levels
    assert close(vx.sum().decrypt(), [x.sum()])
    assert close(vx.dot(vy).decrypt(), [x @ y])
    assert close(vx.rotate(3).decrypt(), np.roll(x, -3))
    assert close(vx.rotate(-5).decrypt(), np.roll(x, 5))
    assert close(vx.matmul(m).decrypt(), x @ m)
    assert close(ctx.encrypt(x[:7]).matmul(m[:7].T).decrypt(), x[:7] @ m[:7].T)  # more columns than rows
    # The server side: public keys only, vectors as bytes.
    public = blindfold.CkksContext.load(ctx.serialize())
    assert not public.has_secret_key
    vz = public.vector_from(vx.serialize(), len(vx)).matmul(m)
    with pytest.raises(ValueError, match="no secret key"):
        vz.decrypt()
    assert close(ctx.vector_from(vz.serialize(), len(vz)).decrypt(), x @ m)
    again = blindfold.CkksContext.load(ctx.serialize(secret_key=True))
    assert close(again.vector_from(vx.serialize(), 20).decrypt(), x)


def test_tensor_layer_refuses_what_it_cannot_do():
    ctx = blindfold.CkksContext("N8192_DEPTH2_128BIT")
    v = ctx.encrypt([1.0, 2.0])
    with pytest.raises(ValueError, match="no levels left"):
        v * v * v * v  # depth 2: the third product has no level left
    with pytest.raises(ValueError, match="vectors of 2 and 3"):
        v + ctx.encrypt([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="different contexts"):
        v + blindfold.CkksContext("N8192_DEPTH2_128BIT").encrypt([1.0, 2.0])
    with pytest.raises(ValueError, match="matrix of shape"):
        v.matmul(np.ones((3, 2)))
    with pytest.raises(ValueError, match="unknown preset"):
        blindfold.CkksContext("N4_INSECURE")
    with pytest.raises(ValueError, match="not a serialized blindfold context"):
        blindfold.CkksContext.load(b"BFCX\x01\x05N8192")
    with pytest.raises(ValueError, match="truncated"):
        blindfold.CkksContext.load(b"BFCX\x01\x13N8192_DEPTH2_128BIT\xff\xff")
    # A public key where the Galois keys belong.
    data = ctx.serialize()
    at, fields = 6 + data[5], []
    while at < len(data):
        n = int.from_bytes(data[at : at + 8], "little")
        fields.append(data[at + 8 : at + 8 + n])
        at += 8 + n
    fields[2] = fields[0]
    swapped = data[: 6 + data[5]] + b"".join(len(f).to_bytes(8, "little") + f for f in fields)
    with pytest.raises(ValueError, match="Galois keys"):
        blindfold.CkksContext.load(swapped)
    with pytest.raises(ValueError):
        ctx.vector_from(b"garbage", 2)
    with pytest.raises(ValueError, match="finite"):
        ctx.encrypt([float("nan")])
