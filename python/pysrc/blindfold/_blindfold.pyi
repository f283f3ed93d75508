"""Type stubs of the Rust extension module (see blindfold/__init__.py for the documented API)."""

from typing import Any, List, Optional, Tuple, Union
import numpy as np

__version__: str

class Model:
    @property
    def input_shape(self) -> List[int]: ...
    @property
    def classes(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def parameters(self) -> str: ...
    @property
    def layers(self) -> List[str]: ...
    @property
    def notes(self) -> List[str]: ...
    @property
    def plan(self) -> str: ...
    def predict_plain(self, x: Any) -> np.ndarray: ...
    def predict_simulate(self, x: Any) -> np.ndarray: ...
    def predict_encrypted(self, x: Any) -> np.ndarray: ...
    def client(self) -> "Client": ...
    def server(self) -> "Server": ...

class Client:
    @staticmethod
    def from_plan(plan: str) -> "Client":
        """A client for a server's published plan (JSON), checked against the architecture."""
    def evaluation_keys(self) -> bytes:
        """The public evaluation keys to send to the server once."""
    def encrypt(self, x: Any) -> bytes:
        """Encrypts one sample (the model's input shape) into a request."""
    def decrypt(self, reply: bytes) -> np.ndarray:
        """Decrypts a reply into the scores, float64 [classes]."""

class Server:
    @property
    def plan(self) -> str:
        """The plan (JSON) a client needs."""
    def evaluate(self, request: bytes, keys: bytes) -> bytes:
        """Evaluates an encrypted request with the client's evaluation keys."""

def compile(
    model: Union[str, bytes],
    calibration: Optional[Any] = ...,
    normalize: Optional[Tuple[float, float]] = ...,
    replace_relu: Optional[int] = ...,
    scale_bits: Optional[int] = ...,
    log_n: Optional[int] = ...,
) -> Model: ...
