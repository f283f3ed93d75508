"""blindfold: run neural networks on data the server cannot read.

An ONNX model (for example from ``torch.onnx.export``) with polynomial activations
(``x*x``, ``a*x**2 + b*x + c``), convolutions, dense layers, average pooling and batch
normalization is compiled into an encrypted circuit on CKKS homomorphic encryption at
128-bit security (HomomorphicEncryption.org standard)::

    import blindfold
    model = blindfold.compile("model.onnx")
    model.predict(x, fhe="disable")    # plaintext logits (float32)
    model.predict(x, fhe="simulate")   # the circuit on unencrypted slots (float64)
    model.predict(x, fhe="execute")    # encrypted end to end (float64)

Client and server can run in separate processes and exchange bytes::

    client = model.client()                    # holds the secret key
    keys = client.evaluation_keys()            # public, send once
    request = client.encrypt(x[0])             # one sample
    reply = model.server().evaluate(request, keys)
    scores = client.decrypt(reply)             # float64 [classes]

For your own computations, a CKKS tensor layer in TenSEAL's shape::

    ctx = blindfold.CkksContext("N8192_DEPTH3_128BIT")   # keys made here
    v = ctx.encrypt([1.0, 2.0, 3.0])
    (v * v + 1).dot([0.5, 0.5, 0.5]).decrypt()            # about [8.5]
    v.matmul(np.eye(3)[:, :2]).decrypt()                   # about [1.0, 2.0]
    server_ctx = blindfold.CkksContext.load(ctx.serialize())  # public keys only

Inputs are float arrays shaped like the model's input, one sample (``[C, H, W]``) or a batch
(``[N, C, H, W]``), already scaled as the model was trained (e.g. ``pixel / 255``).
Errors are ``ValueError`` with the reason. Long operations release the GIL.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _blindfold
from ._blindfold import CkksContext, CkksVector, Client, Server, __version__

__all__ = ["compile", "from_torch", "CompiledModel", "Client", "Server", "CkksContext", "CkksVector", "__version__"]

_REPLACEMENTS = {"relu-poly2": 2, "relu-poly3": 3, "relu-poly4": 4}


class CompiledModel:
    """An ONNX model compiled for encrypted inference (see :func:`compile`)."""

    def __init__(self, inner: "_blindfold.Model") -> None:
        self._inner = inner

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self._inner.input_shape)

    @property
    def classes(self) -> int:
        """Number of scores per sample."""
        return self._inner.classes

    @property
    def depth(self) -> int:
        """Multiplicative depth of the encrypted circuit (levels consumed)."""
        return self._inner.depth

    @property
    def parameters(self) -> str:
        """Name of the CKKS parameters chosen for the depth (128-bit secure)."""
        return self._inner.parameters

    @property
    def layers(self) -> list:
        """The layers the ONNX graph became, described."""
        return self._inner.layers

    @property
    def notes(self) -> list:
        """What the import changed (e.g. a final softmax removed)."""
        return self._inner.notes

    @property
    def plan(self) -> str:
        """The plan (JSON) a client in another process needs: :meth:`Client.from_plan`."""
        return self._inner.plan

    def predict(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Scores (logits) of ``x``: one sample or a batch, ``[N, classes]``.

        ``fhe="disable"`` runs the plaintext model (float32); ``"simulate"`` the encrypted
        circuit's plaintext twin (same packing, rotations and polynomials, no encryption
        noise; float64); ``"execute"`` encrypts each sample, evaluates it encrypted and
        decrypts the scores (float64; keys are made on the first call and kept).
        """
        x = np.asarray(x, dtype=np.float32)
        if fhe == "disable":
            return self._inner.predict_plain(x)
        if fhe == "simulate":
            return self._inner.predict_simulate(x)
        if fhe == "execute":
            return self._inner.predict_encrypted(x)
        raise ValueError(f"fhe={fhe!r}: expected 'execute', 'simulate' or 'disable'")

    def client(self) -> Client:
        """A new client: a fresh secret key and its evaluation keys."""
        return self._inner.client()

    def server(self) -> Server:
        """A server (model holder) that evaluates clients' requests."""
        return self._inner.server()

    def __repr__(self) -> str:
        return (
            f"CompiledModel(input_shape={self.input_shape}, classes={self.classes}, "
            f"depth={self.depth}, parameters={self.parameters!r})"
        )


def compile(
    model: Union[str, os.PathLike, bytes],
    calibration: Optional[Any] = None,
    *,
    normalize: Optional[Tuple[float, float]] = None,
    replace_activation: Optional[str] = None,
    scale_bits: Optional[int] = None,
    log_n: Optional[int] = None,
) -> CompiledModel:
    """Imports an ONNX model (a path or the file's bytes) and compiles it.

    ``calibration``: a batch of typical inputs, needed when ``replace_activation`` replaces
    ReLU by a polynomial (``"relu-poly2"``, ``"relu-poly3"`` or ``"relu-poly4"``: the
    least-squares fit on the range the inputs reach; accuracy will change).
    ``normalize=(mean, std)`` only matters for the command line's 8-bit pixels.
    ``scale_bits``/``log_n`` override the CKKS parameters the compiler chooses.

    Raises ``ValueError`` naming the node, operator and reason for anything that has no
    encrypted form.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        source: Any = bytes(model)
    else:
        source = os.fspath(model)
    replace_relu = None
    if replace_activation is not None:
        if replace_activation not in _REPLACEMENTS:
            raise ValueError(f"replace_activation={replace_activation!r}: expected one of {sorted(_REPLACEMENTS)}")
        replace_relu = _REPLACEMENTS[replace_activation]
    if calibration is not None:
        calibration = np.asarray(calibration, dtype=np.float32)
    inner = _blindfold.compile(
        source,
        calibration=calibration,
        normalize=normalize,
        replace_relu=replace_relu,
        scale_bits=scale_bits,
        log_n=log_n,
    )
    return CompiledModel(inner)


def from_torch(module: Any, example_input: Any, *, opset_version: int = 18, **kwargs: Any) -> CompiledModel:
    """Exports a PyTorch module to ONNX (``torch.onnx.export``, eval mode) and compiles it.

    ``example_input``: a tensor of one batch of inputs (also the calibration data when
    ``replace_activation`` is given). Other keyword arguments go to :func:`compile`.
    Needs ``torch`` (and ``onnxscript`` for torch's default exporter).
    """
    import torch

    module = module.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            torch.onnx.export(
                module, (example_input,), path, opset_version=opset_version, dynamo=True, external_data=False, verbose=False
            )
        except (ImportError, TypeError):
            # No onnxscript, or a torch without the dynamo exporter: the TorchScript exporter.
            torch.onnx.export(module, (example_input,), path, opset_version=min(opset_version, 17))
        with open(path, "rb") as f:
            onnx_bytes = f.read()
    if kwargs.get("replace_activation") and kwargs.get("calibration") is None:
        kwargs["calibration"] = example_input.detach().cpu().numpy()
    return compile(onnx_bytes, **kwargs)
