"""Type stubs of the Rust extension module (see blindfold/__init__.py for the documented API)."""

from typing import Any, List, Optional, Sequence, Tuple, Union
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

Operand = Union["CkksVector", float, Sequence[float], np.ndarray]

class CkksContext:
    """CKKS parameters (a 128-bit preset) with public, relinearization and ±2^j Galois keys,
    and the secret key on the side that made them."""
    def __init__(self, preset: str = "N8192_DEPTH3_128BIT") -> None: ...
    @property
    def preset(self) -> str: ...
    @property
    def slots(self) -> int: ...
    @property
    def has_secret_key(self) -> bool: ...
    def serialize(self, secret_key: bool = False) -> bytes:
        """Parameters and public keys; the secret key only with secret_key=True."""
    @staticmethod
    def load(data: bytes) -> "CkksContext": ...
    def encrypt(self, values: Union[Sequence[float], np.ndarray]) -> "CkksVector":
        """Encrypts at most `slots` values."""
    def vector_from(self, data: bytes, size: int) -> "CkksVector":
        """A vector from CkksVector.serialize() bytes."""

class CkksVector:
    """An encrypted vector; slots past its length hold zeros."""
    def __len__(self) -> int: ...
    @property
    def level(self) -> int:
        """Levels left for products."""
    def __add__(self, other: Operand) -> "CkksVector": ...
    def __radd__(self, other: Operand) -> "CkksVector": ...
    def __sub__(self, other: Operand) -> "CkksVector": ...
    def __mul__(self, other: Operand) -> "CkksVector":
        """Slot-wise product (one level)."""
    def __rmul__(self, other: Operand) -> "CkksVector": ...
    def __neg__(self) -> "CkksVector": ...
    def sum(self) -> "CkksVector":
        """The sum, as a vector of one value (one level)."""
    def dot(self, other: Operand) -> "CkksVector":
        """The dot product, as a vector of one value (two levels)."""
    def rotate(self, k: int) -> "CkksVector":
        """numpy.roll(x, -k) within the vector (one level)."""
    def matmul(self, matrix: np.ndarray) -> "CkksVector":
        """x · M for a plaintext matrix of len(x) rows (one level)."""
    def serialize(self) -> bytes: ...
    def decrypt(self) -> np.ndarray:
        """The values, float64 (needs the secret key)."""
