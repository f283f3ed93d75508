#!/usr/bin/env python3
"""Generate the ONNX test zoo of crates/onnx (blindfold's ONNX importer).

What it makes
-------------
Into ``crates/onnx/tests/data/`` (or ``--out DIR``):

* ``<name>.onnx`` -- small CNNs / MLPs with random weights (fixed ``torch.manual_seed``),
  exported from PyTorch by the TorchScript ("legacy", ``dynamo=False``) or the
  ``torch.export`` ("dynamo") exporter as single files (no ``.onnx.data`` side file), plus a
  few models built by hand with ``onnx.helper`` and a few deliberately broken files.
  BatchNorm layers get random running statistics / affine parameters (variance in [0.5, 2])
  and every model is exported in ``eval()`` mode.
* ``<name>.in.f32`` -- 4 inputs, raw little-endian float32, shape ``[4, *input_shape]``,
  uniform in [0, 1) from ``numpy.random.default_rng(seed)`` (``seed`` is in the manifest).
* ``<name>.out.f32`` -- onnxruntime's outputs for those inputs, raw little-endian float32,
  shape ``[4, classes]`` (a static-batch model is run one input at a time and the results
  concatenated).  For a model ending in Softmax/LogSoftmax this file holds the *logits*:
  onnxruntime's output of the same weights exported without the final softmax (which the
  importer removes).
* ``manifest.json`` -- one entry per test case::

    {"name", "exporter": "dynamo"|"legacy"|"handmade", "input_shape": [...] (no batch),
     "classes": n, "expect": "ok"|"refused", "error_contains": "..." (refused only),
     "options": {"replace_relu": 2} (only where relevant), "compare": bool
     (whether <name>.out.f32 is to be matched), "seed", "opset", "ops" (the op_type
     sequence in the file), "description"}

  A file may be listed twice (``relu_dynamo``: refused by default, imported with
  ``replace_relu``).

The script checks its own work: every "ok" model is run in onnxruntime and compared with
PyTorch, the written ``.out.f32`` files are read back and compared with a fresh
onnxruntime run, and the expected-refused files are classified (does onnxruntime load
them?).  It prints a summary table at the end and exits non-zero if a check fails.

How to run
----------
::

    python -m venv venv && venv/bin/pip install torch onnx onnxruntime onnxscript numpy
    venv/bin/python scripts/onnx/make_test_models.py            # writes crates/onnx/tests/data
    venv/bin/python scripts/onnx/make_test_models.py --out /tmp/zoo

Versions used to generate the committed files
---------------------------------------------
torch 2.15.0 (CPU use), onnx 1.23.2, onnxruntime 1.32.0, onnxscript 0.7.2, numpy 2.4.6,
Python 3.11 (the script prints the versions it runs with).  With these, the dynamo
exporter writes opset 20 / IR 10 and folds a BatchNorm that directly follows a Conv or
Gemm into it (one that follows an activation stays), emits ``ReduceMean`` (not
``GlobalAveragePool``) for ``AdaptiveAvgPool2d(1)`` and ``Reshape`` with ``allowzero=1``;
the legacy exporter is run at opset 13 (IR 7; opset 11 / IR 6 for
``batchnorm_legacy_dynbatch``) and folds BatchNorm2d into Conv but keeps BatchNorm1d.
Both drop Dropout and Identity in eval mode (``handmade_ops`` keeps them).  Other
versions export slightly different graphs, which is why the generated files are kept in
the repository.  The dynamo exporter embeds per-node metadata (stack traces with file
paths and line numbers of this script), so editing the script or running it elsewhere
changes those bytes; weights, inputs and outputs are reproducible.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "crates" / "onnx" / "tests" / "data"
N_INPUTS = 4
MNIST = [1, 28, 28]

warnings.filterwarnings("ignore")  # the legacy exporter's deprecation warnings


# ----------------------------------------------------------------------------- modules


class Square(nn.Module):
    def forward(self, x):
        return x * x


class PowSquare(nn.Module):
    def forward(self, x):
        return torch.pow(x, 2)


class Poly2(nn.Module):
    """0.1·x² + 0.5·x + 0.2, written as separate Mul/Add operations."""

    def forward(self, x):
        return 0.1 * x * x + 0.5 * x + 0.2


class Cubic(nn.Module):
    """x³·0.01 + x."""

    def forward(self, x):
        return x * x * x * 0.01 + x


class SquareNet(nn.Module):
    """Model 1: conv(1→4, k5, s2, p1) → x² → avgpool 2 → flatten → linear → x² → linear(10)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)  # 28 → 13
        self.act1 = Square()
        self.pool = nn.AvgPool2d(2)  # 13 → 6
        self.fc1 = nn.Linear(4 * 6 * 6, 32)
        self.act2 = Square()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.act1(self.conv(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.act2(self.fc1(x)))


class BatchNormNet(nn.Module):
    """Model 2: conv → BN → x·x → conv(k3, p1) → BN → pow(x, 2) → avgpool → view → linear → BN1d → x·x → linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, stride=2)  # 28 → 12
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)  # 12 → 12
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)  # 12 → 6
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.bn3 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = x * x
        x = torch.pow(self.bn2(self.conv2(x)), 2)
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        x = self.bn3(self.fc1(x))
        return self.fc2(x * x)


class PolyNet(nn.Module):
    """Model 3: conv → poly → avgpool → flatten → linear → poly → linear."""

    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)  # 28 → 13
        self.act1 = act()
        self.pool = nn.AvgPool2d(2)  # 13 → 6
        self.fc1 = nn.Linear(4 * 6 * 6, 32)
        self.act2 = act()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.act1(self.conv(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.act2(self.fc1(x)))


class BatchNormAfterActNet(nn.Module):
    """Model 4: conv(no bias) → x² → BN → conv(k3, padding 0) → x² → avgpool → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, stride=2, bias=False)  # 28 → 12
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=0)  # 12 → 10
        self.pool = nn.AvgPool2d(2)  # 10 → 5
        self.fc = nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn(x * x)
        x = self.conv2(x)
        x = self.pool(x * x)
        return self.fc(torch.flatten(x, 1))


class GlobalPoolNet(nn.Module):
    """Model 5: conv → x² → conv → AdaptiveAvgPool2d(1) → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, stride=2)  # 28 → 12
        self.conv2 = nn.Conv2d(4, 8, 3)  # 12 → 10
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x * x)
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


class MatMulNet(nn.Module):
    """Model 6: [N, 784] → x @ W + b (parameters, no nn.Linear) → x² → linear."""

    def __init__(self, features=784, hidden=16):
        super().__init__()
        self.W = nn.Parameter(torch.randn(features, hidden) / features**0.5)
        self.b = nn.Parameter(torch.randn(hidden) * 0.1)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        h = x @ self.W + self.b
        return self.fc(h * h)


class SoftmaxNet(nn.Module):
    """Model 7: Dropout and Identity in the path, final softmax / log_softmax (or none)."""

    def __init__(self, final: str | None):
        super().__init__()
        self.final = final
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)  # 28 → 13
        self.drop1 = nn.Dropout(0.25)
        self.ident = nn.Identity()
        self.pool = nn.AvgPool2d(2)  # 13 → 6
        self.drop2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.ident(self.drop1(self.conv(x)))
        x = self.pool(x * x)
        x = self.drop2(torch.flatten(x, 1))
        x = self.fc1(x)
        x = self.fc2(self.ident(x * x))
        if self.final == "softmax":
            return F.softmax(x, dim=1)
        if self.final == "log_softmax":
            return F.log_softmax(x, dim=1)
        return x


class RgbNet(nn.Module):
    """Model 8: 3×16×16 input: conv(3→6, k3, s1, p1) → x² → avgpool 2 → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=1, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = self.pool(x * x)
        return self.fc(torch.flatten(x, 1))


class ReluNet(nn.Module):
    """Model 9: conv → ReLU → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 5, stride=2)  # 28 → 12
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


# Refused (exported by PyTorch: valid ONNX, outside what blindfold evaluates).


class MaxPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(torch.flatten(self.pool(x * x), 1))


class SigmoidNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = torch.sigmoid(self.conv(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, stride=2, padding=1)  # 13
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)  # 13
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        h = self.conv1(x)
        h = h * h
        h = h + self.conv2(h)
        return self.fc(torch.flatten(self.pool(h), 1))


class GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, stride=2, padding=1)  # 13
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)  # 13
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        h = self.conv1(x)
        h = self.conv2(h * h)
        return self.fc(torch.flatten(self.pool(h * h), 1))


class TwoInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x, y):
        h = self.conv(x) + self.conv(y)
        return self.fc(torch.flatten(self.pool(h * h), 1))


class Rank3Net(nn.Module):
    """Input [N, 28, 28] (no channel dimension)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        h = self.fc1(torch.flatten(x, 1))
        return self.fc2(h * h)


# ----------------------------------------------------------------------------- helpers


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters for every BatchNorm layer."""
    g = torch.Generator().manual_seed(seed + 1000)

    def uniform(n, lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(uniform(n, -0.5, 0.5))
                m.running_var.copy_(uniform(n, 0.5, 2.0))
                m.weight.copy_(uniform(n, 0.5, 1.5))
                m.bias.copy_(uniform(n, -0.5, 0.5))


def build(cls, seed: int, *args) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(*args)
    randomize_batchnorm(model, seed)
    return model.eval()


def export(model: nn.Module, example: tuple, path: Path, exporter: str, dynamic_batch: bool = False,
           opset: int | None = None, input_names=("input",)) -> None:
    """Exports `model` to a single self-contained ONNX file."""
    input_names = list(input_names)
    if exporter == "dynamo":
        kwargs = {}
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=1024)
            kwargs["dynamic_shapes"] = {name: {0: batch} for name in _forward_arg_names(model)}
        if opset is not None:
            kwargs["opset_version"] = opset
        # Quiet: the dynamo exporter prints its progress.
        with _quiet():
            prog = torch.onnx.export(model, example, dynamo=True, external_data=False,
                                     input_names=input_names, output_names=["output"], **kwargs)
        prog.save(str(path), external_data=False)
    elif exporter == "legacy":
        kwargs = {}
        if dynamic_batch:
            kwargs["dynamic_axes"] = {**{n: {0: "batch"} for n in input_names}, "output": {0: "batch"}}
        with _quiet():
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset or 13,
                              input_names=input_names, output_names=["output"], **kwargs)
    else:
        raise ValueError(exporter)
    if path.with_name(path.name + ".data").exists():
        raise RuntimeError(f"{path}: the exporter wrote external data")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _forward_arg_names(model):
    import inspect

    return [p for p in inspect.signature(model.forward).parameters]


class _quiet:
    """Silences stdout/stderr (also at the file-descriptor level) inside a `with`."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in [*self.saved, self.null]:
            os.close(fd)
        return False


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def static_batch(sess: ort.InferenceSession) -> bool:
    dim = sess.get_inputs()[0].shape[0]
    return isinstance(dim, int)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the N inputs `x`: one at a time if the batch dimension is static."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    if static_batch(sess):
        outs = [sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]
        return np.concatenate(outs, axis=0).astype(np.float32)
    return sess.run(None, {name: x})[0].astype(np.float32)


def inputs_for(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((N_INPUTS, *shape), dtype=np.float64).astype(np.float32)


def write_f32(path: Path, a: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(a, dtype="<f4").tobytes())


def read_f32(path: Path, shape) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype="<f4").reshape(shape)


def op_types(path: Path) -> list[str] | None:
    try:
        return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    except Exception:
        return None


def opset_of(path: Path) -> int | None:
    try:
        m = onnx.load(str(path), load_external_data=False)
        return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    except Exception:
        return None


# ----------------------------------------------------------------------------- hand-made models


def handmade(variant: str = "ok") -> onnx.ModelProto:
    """A small model written with onnx.helper (opset 13, dynamic batch "N"):

    Conv(1→4, k5, s2, p1) → Identity → Mul(x, x) → Dropout → Div(·, 2) → Sub(·, 0.1)
    → AveragePool(2) → Flatten → Gemm(144 → 10, transB = 0) → output

    `variant` breaks it on purpose: "cycle", "missing_initializer", "huge_tensor",
    "external_data".
    """
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((4, 1, 5, 5)) * 0.2).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((144, 10)) * 0.1).astype(np.float32)  # Gemm without transB
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "conv.weight"),
        numpy_helper.from_array(b1, "conv.bias"),
        numpy_helper.from_array(w2, "fc.weight"),
        numpy_helper.from_array(b2, "fc.bias"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
    ]
    sq_in = "ident"
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv"], name="conv",
                         kernel_shape=[5, 5], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["conv"], ["ident"], name="identity"),
        helper.make_node("Mul", [sq_in, sq_in], ["square"], name="square"),
        helper.make_node("Dropout", ["square"], ["dropped"], name="dropout"),
        helper.make_node("Div", ["dropped", "two"], ["halved"], name="halve"),
        helper.make_node("Sub", ["halved", "tenth"], ["shifted"], name="shift"),
        helper.make_node("AveragePool", ["shifted"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], name="fc"),
    ]
    if variant == "cycle":
        # square reads `looped`, computed (through `loop`) from square's own output.
        nodes[2] = helper.make_node("Mul", ["ident", "looped"], ["square"], name="square")
        nodes.insert(3, helper.make_node("Mul", ["square", "two"], ["looped"], name="loop"))
    elif variant == "missing_initializer":
        # Conv reads "conv.weight", which is neither an initializer nor a graph input.
        inits = [t for t in inits if t.name != "conv.weight"]
    elif variant == "huge_tensor":
        # fc.weight declares 100000 × 100000 floats but carries 4 bytes.
        t = TensorProto(name="fc.weight", data_type=TensorProto.FLOAT, dims=[100000, 100000], raw_data=b"\0\0\x80\x3f")
        inits = [t if i.name == "fc.weight" else i for i in inits]
    elif variant == "external_data":
        # conv.weight stored in a file that does not exist.
        t = TensorProto(name="conv.weight", data_type=TensorProto.FLOAT, dims=[4, 1, 5, 5])
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", "missing_weights.bin"), ("offset", "0"), ("length", str(4 * 25 * 4))]:
            e = t.external_data.add()
            e.key, e.value = k, v
        inits = [t if i.name == "conv.weight" else i for i in inits]
    elif variant != "ok":
        raise ValueError(variant)
    graph = helper.make_graph(
        nodes,
        f"handmade_{variant}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="blindfold-make_test_models")
    model.ir_version = 7
    return model


# ----------------------------------------------------------------------------- the zoo


@dataclass
class Case:
    name: str
    exporter: str
    input_shape: list
    classes: int
    expect: str
    description: str
    make: object = None  # callable(path) that writes <name>.onnx (None: file written by another case)
    torch_model: nn.Module | None = None  # for the torch/ORT comparison
    logits_model: nn.Module | None = None  # softmax models: the same weights without the softmax
    dynamic_batch: bool = False
    error_contains: str | None = None
    options: dict | None = None
    compare: bool = True
    seed: int = 0
    write_io: bool = True
    extra: dict = field(default_factory=dict)


def torch_case(name, exporter, cls, args=(), *, seed, input_shape=MNIST, classes=10, expect="ok",
               error_contains=None, dynamic_batch=False, opset=None, description="", n_inputs=1, **kw):
    model = build(cls, seed, *args)
    batch = 2 if dynamic_batch else 1
    example = tuple(torch.rand(batch, *input_shape) for _ in range(n_inputs))
    names = ("input",) if n_inputs == 1 else tuple(f"input{i}" for i in range(n_inputs))

    def make(path):
        export(model, example, path, exporter, dynamic_batch=dynamic_batch, opset=opset, input_names=names)

    return Case(name=name, exporter=exporter, input_shape=list(input_shape), classes=classes, expect=expect,
                description=description, make=make, torch_model=model, dynamic_batch=dynamic_batch,
                error_contains=error_contains, seed=seed, **kw)


def zoo(out: Path) -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # 1. conv → x² → avgpool → linear → x² → linear
    for i, ex in enumerate(["dynamo", "legacy"]):
        add(torch_case(f"square_{ex}", ex, SquareNet, seed=101, description=(
            "conv(1→4, k5, s2, p1) → x*x → AvgPool2d(2) (13→6, floor) → flatten → Linear(144→32) → x*x → Linear(32→10)")))

    # 2. BatchNorm before the activation (2-D and 1-D), pow, view(x.size(0), -1)
    desc2 = ("conv(1→4, k5, s2) → BatchNorm2d → x*x → conv(4→8, k3, p1) → BatchNorm2d → pow(x, 2) → AvgPool2d(2) "
             "→ x.view(x.size(0), -1) → Linear(288→32) → BatchNorm1d → x*x → Linear(32→10); random BN statistics")
    add(torch_case("batchnorm_dynamo", "dynamo", BatchNormNet, seed=202, description=desc2))
    add(torch_case("batchnorm_legacy", "legacy", BatchNormNet, seed=202, description=desc2 + "; opset 13"))
    add(torch_case("batchnorm_dynamo_dynbatch", "dynamo", BatchNormNet, seed=202, dynamic_batch=True,
                   description=desc2 + "; dynamic batch dimension (torch.export Dim)"))
    add(torch_case("batchnorm_legacy_dynbatch", "legacy", BatchNormNet, seed=202, dynamic_batch=True, opset=11,
                   description=desc2 + "; dynamic batch dimension (dynamic_axes), opset 11 (Unsqueeze with axes attribute)"))

    # 3. polynomial activations
    desc3 = ("conv(1→4, k5, s2, p1) → {act} → AvgPool2d(2) → flatten → Linear(144→32) → {act} → Linear(32→10)")
    add(torch_case("poly2_dynamo", "dynamo", PolyNet, (Poly2,), seed=303, description=desc3.format(act="0.1*x*x + 0.5*x + 0.2")))
    add(torch_case("poly2_legacy", "legacy", PolyNet, (Poly2,), seed=303, description=desc3.format(act="0.1*x*x + 0.5*x + 0.2")))
    add(torch_case("cubic_dynamo", "dynamo", PolyNet, (Cubic,), seed=304, description=desc3.format(act="x*x*x*0.01 + x")))
    add(torch_case("cubic_legacy", "legacy", PolyNet, (Cubic,), seed=304, description=desc3.format(act="x*x*x*0.01 + x")))

    # 4. BatchNorm after the activation: folds forward into the next (unpadded) convolution
    desc4 = ("conv(1→4, k5, s2, bias=False) → x*x → BatchNorm2d → conv(4→8, k3, padding 0) → x*x → AvgPool2d(2) "
             "→ flatten → Linear(200→10); the BN must fold forward into conv2 (exact because conv2 is unpadded)")
    add(torch_case("bn_after_act_dynamo", "dynamo", BatchNormAfterActNet, seed=404, description=desc4))
    add(torch_case("bn_after_act_legacy", "legacy", BatchNormAfterActNet, seed=404, description=desc4))

    # 5. global average pooling
    desc5 = "conv(1→4, k5, s2) → x*x → conv(4→8, k3) → AdaptiveAvgPool2d(1) → flatten → Linear(8→10)"
    add(torch_case("global_pool_dynamo", "dynamo", GlobalPoolNet, seed=505, description=desc5))
    add(torch_case("global_pool_legacy", "legacy", GlobalPoolNet, seed=505, description=desc5))

    # 6. MatMul + Add on a rank-2 input
    desc6 = "[N, 784] input: x @ W + b (nn.Parameter, 784→16) → x*x → Linear(16→10)"
    add(torch_case("matmul_dynamo", "dynamo", MatMulNet, seed=606, input_shape=[784], description=desc6))
    add(torch_case("matmul_legacy", "legacy", MatMulNet, seed=606, input_shape=[784], description=desc6))

    # 7. Dropout, Identity, final softmax / log_softmax; out.f32 holds the logits
    desc7 = ("conv(1→4, k5, s2, p1) → Dropout → Identity → x*x → AvgPool2d(2) → flatten → Dropout → Linear(144→32) "
             "→ x*x → Identity → Linear(32→10) → {f}; the .onnx ends in {op}, but .out.f32 holds the LOGITS "
             "(onnxruntime on the same weights exported without the final {op}), since the importer removes it")
    for name, ex, final, op in [("softmax_dynamo", "dynamo", "softmax", "Softmax"),
                                ("logsoftmax_legacy", "legacy", "log_softmax", "LogSoftmax"),
                                ("softmax_legacy", "legacy", "softmax", "Softmax")]:
        c = torch_case(name, ex, SoftmaxNet, (final,), seed=707, description=desc7.format(f=final + "(dim=1)", op=op))
        c.logits_model = build(SoftmaxNet, 707, None)
        add(c)

    # 8. 3×16×16 input
    desc8 = "[N, 3, 16, 16] input: conv(3→6, k3, s1, p1) → x*x → AvgPool2d(2) → flatten → Linear(384→10)"
    add(torch_case("rgb16_dynamo", "dynamo", RgbNet, seed=808, input_shape=[3, 16, 16], description=desc8))
    add(torch_case("rgb16_legacy", "legacy", RgbNet, seed=808, input_shape=[3, 16, 16], description=desc8))

    # Hand-made, valid: Identity and Dropout nodes survive here (the exporters drop them in eval mode)
    def make_handmade(variant):
        def make(path):
            m = handmade(variant)
            path.write_bytes(m.SerializeToString())
        return make

    add(Case("handmade_ops", "handmade", MNIST, 10, "ok", make=make_handmade("ok"), seed=900, dynamic_batch=True,
             description=(
        "onnx.helper, opset 13, IR 7, batch dim_param N: Conv(1→4, k5, s2, p1) → Identity → Mul(x, x) → Dropout "
        "→ Div(·, 2) → Sub(·, 0.1) → AveragePool(2) → Flatten → Gemm(144→10, transB=0); the valid base of the "
        "hand-made refused cases")))

    # 9. ReLU: refused by default, imported with replace_relu = 2
    relu = torch_case("relu_dynamo", "dynamo", ReluNet, seed=909, expect="refused", error_contains="replace-activation",
                      description="conv(1→2, k5, s2) → ReLU → flatten → Linear(288→10): ReLU is refused without "
                                  "replace_relu; .out.f32 holds onnxruntime's (exact ReLU) outputs",
                      compare=False)
    add(relu)
    add(Case("relu_dynamo", "dynamo", MNIST, 10, "ok", options={"replace_relu": 2}, compare=False, seed=909,
             write_io=False, description="the same file as above, imported with replace_relu = 2 (a fitted "
             "polynomial: outputs differ from the exact ReLU, so no comparison)"))

    # ---- refused
    add(torch_case("maxpool_dynamo", "dynamo", MaxPoolNet, seed=1001, expect="refused", error_contains="MaxPool",
                   compare=False, write_io=False,
                   description="conv → x*x → MaxPool2d(2) → flatten → Linear: max pooling has no encrypted form"))
    add(torch_case("sigmoid_legacy", "legacy", SigmoidNet, seed=1002, expect="refused", error_contains="Sigmoid",
                   compare=False, write_io=False,
                   description="conv → sigmoid → AvgPool2d → flatten → Linear: Sigmoid is not polynomial"))
    add(torch_case("residual_dynamo", "dynamo", ResidualNet, seed=1003, expect="refused", error_contains="branch",
                   compare=False, write_io=False,
                   description="conv → x*x → h + conv(h) (a residual connection) → AvgPool2d → flatten → Linear"))
    add(torch_case("grouped_conv_legacy", "legacy", GroupedConvNet, seed=1004, expect="refused", error_contains="group",
                   compare=False, write_io=False,
                   description="conv → x*x → conv(4→4, k3, p1, groups=2) → x*x → AvgPool2d → flatten → Linear"))
    add(torch_case("two_inputs_legacy", "legacy", TwoInputNet, seed=1005, n_inputs=2, expect="refused",
                   error_contains="graph inputs", compare=False, write_io=False,
                   description="forward(x, y): conv(x) + conv(y) → x*x → AvgPool2d → flatten → Linear: two graph inputs"))
    add(torch_case("rank3_dynamo", "dynamo", Rank3Net, seed=1006, input_shape=[28, 28], expect="refused",
                   error_contains="rank 3", compare=False, write_io=False,
                   description="input [N, 28, 28] (rank 3) → flatten → Linear(784→8) → x*x → Linear(8→10)"))
    for variant, needle, desc in [
        ("cycle", "cycle", "handmade_ops with a cycle: square = Mul(ident, looped), looped = Mul(square, 2)"),
        ("missing_initializer", "initializer",
         "handmade_ops without the initializer conv.weight: the Conv reads a value nothing defines"),
        ("huge_tensor", "elements",
         "handmade_ops whose fc.weight declares dims [100000, 100000] with 4 bytes of raw_data"),
        ("external_data", "external data",
         "handmade_ops whose conv.weight has data_location EXTERNAL, location missing_weights.bin (no such file)"),
    ]:
        add(Case(f"{variant}_handmade", "handmade", MNIST, 10, "refused", make=make_handmade(variant), seed=900,
                 dynamic_batch=True,
                 error_contains=needle, compare=False, write_io=False, description=desc))

    def make_truncated(path):
        whole = (out / "square_dynamo.onnx").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])

    def make_random(path):
        path.write_bytes(np.random.default_rng(1234).bytes(4096))

    add(Case("truncated", "handmade", MNIST, 10, "refused", make=make_truncated, error_contains="not a valid ONNX model",
             compare=False, write_io=False, description="the first half of the bytes of square_dynamo.onnx"))
    add(Case("random_bytes", "handmade", MNIST, 10, "refused", make=make_random, error_contains="not a valid ONNX model",
             compare=False, write_io=False, description="4096 random bytes (numpy default_rng(1234))"))
    return cases


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}, python {sys.version.split()[0]}")
    torch.set_num_threads(1)

    cases = zoo(out)
    failures: list[str] = []
    rows = []
    manifest = []
    tmp = Path(tempfile.mkdtemp(prefix="blindfold-onnx-"))
    for c in cases:
        path = out / f"{c.name}.onnx"
        if c.make is not None:
            c.make(path)
        status = []
        ort_ok = None
        max_err = None
        if c.write_io:
            x = inputs_for(c.input_shape, c.seed)
            write_f32(out / f"{c.name}.in.f32", x)
            ref_path = path
            if c.logits_model is not None:
                ref_path = tmp / f"{c.name}.logits.onnx"
                export(c.logits_model, (torch.rand(1, *c.input_shape),), ref_path, c.exporter,
                       dynamic_batch=c.dynamic_batch)
            y = run_ort(ref_path, x)
            assert y.shape == (N_INPUTS, c.classes), (c.name, y.shape)
            write_f32(out / f"{c.name}.out.f32", y)
            ort_ok = True
            # checks: the written files read back, a fresh ORT run, and PyTorch
            x2 = read_f32(out / f"{c.name}.in.f32", (N_INPUTS, *c.input_shape))
            y2 = read_f32(out / f"{c.name}.out.f32", (N_INPUTS, c.classes))
            if not np.array_equal(x2, x) or not np.allclose(run_ort(ref_path, x2), y2, rtol=1e-5, atol=1e-6):
                failures.append(f"{c.name}: the written .in/.out.f32 do not reproduce")
            if c.torch_model is not None:
                with torch.no_grad():
                    t = (c.logits_model or c.torch_model)(torch.from_numpy(x)).numpy()
                max_err = float(np.max(np.abs(t - y)) / max(1e-6, float(np.max(np.abs(t)))))
                if max_err > 1e-4:
                    failures.append(f"{c.name}: onnxruntime and PyTorch differ (relative {max_err:.2e})")
            if c.logits_model is not None:
                # the kept file (with softmax) agrees with softmax(logits)
                full = run_ort(path, x)
                sm = torch.from_numpy(y)
                want = (F.log_softmax(sm, 1) if "logsoftmax" in c.name else F.softmax(sm, 1)).numpy()
                if not np.allclose(full, want, rtol=1e-4, atol=1e-5):
                    failures.append(f"{c.name}: the softmax model is not softmax(logits)")
                status.append("out=logits")
        else:
            try:
                ort_session(path)
                ort_ok = True
            except Exception as e:  # noqa: BLE001 - classification only
                ort_ok = False
                status.append("ORT: " + str(e).split("\n")[0][:60])
        if c.expect == "ok" and not ort_ok:
            failures.append(f"{c.name}: expected ok but onnxruntime cannot run it")
        ops = op_types(path)
        entry = {
            "name": c.name,
            "exporter": c.exporter,
            "input_shape": c.input_shape,
            "classes": c.classes,
            "expect": c.expect,
        }
        if c.expect == "refused":
            entry["error_contains"] = c.error_contains
        if c.options:
            entry["options"] = c.options
        entry["compare"] = bool(c.compare and c.expect == "ok" and c.write_io)
        entry["seed"] = c.seed
        entry["opset"] = opset_of(path)
        entry["dynamic_batch"] = c.dynamic_batch
        entry["ops"] = ops
        entry["description"] = c.description
        manifest.append(entry)
        rows.append((c.name, c.exporter, c.expect, c.error_contains or "", path.stat().st_size,
                     "yes" if ort_ok else "no", "" if max_err is None else f"{max_err:.1e}", " ".join(status)))

    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    # stray files from earlier runs
    known = {"manifest.json"} | {f"{c.name}{ext}" for c in cases for ext in (".onnx", ".in.f32", ".out.f32")}
    stray = sorted(p.name for p in out.iterdir() if p.name not in known)

    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    print()
    for r in [HEADER] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"\n{len(manifest)} manifest entries, {len(list(out.iterdir()))} files, {total} bytes in {out}")
    if total > 1_500_000:
        failures.append(f"the directory holds {total} bytes, more than 1.5 MB")
    if stray:
        print("files not made by this script:", ", ".join(stray))
    print("\nop_type sequences:")
    seen = set()
    for e in manifest:
        if e["name"] in seen or e["ops"] is None:
            continue
        seen.add(e["name"])
        print(f"  {e['name']} (opset {e['opset']}): {' '.join(e['ops'])}")
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


HEADER = ("name", "exporter", "expect", "error_contains", "bytes", "ORT", "torch≠ORT", "notes")

if __name__ == "__main__":
    sys.exit(main())
