//! ONNX model import: a network exported by PyTorch (`torch.onnx.export`) or any other ONNX
//! producer becomes a blindfold [`Model`](blindfold_nn::Model), which compiles to the same encrypted circuit as a
//! built-in network.
//!
//! The graph is read with prost types generated from the official `onnx.proto` (ONNX IR,
//! <https://onnx.ai/onnx/repo-docs/IR.html>) and walked in topological order. Supported
//! operators ([`SUPPORTED_OPS`]): `Conv` (square kernels, symmetric padding, one group),
//! `Gemm`, `MatMul` (+ `Add`), `Flatten`, `Reshape` (to `[N, C·H·W]`), `AveragePool`,
//! `GlobalAveragePool`, `BatchNormalization` (folded into the convolution or dense layer
//! before it, or after it when an activation lies between), `Identity` and `Dropout`
//! (removed), a final `Softmax`/`LogSoftmax` (removed: the scores are the logits, the argmax
//! is unchanged), and elementwise `Mul`, `Add`, `Sub`, `Div` (by a constant), `Neg` and
//! `Pow` (integer exponent), which are traced as polynomials of the last linear layer's
//! output and fused into one activation stage (`x·x`, `Pow(x, 2)`, `a·x² + b·x + c`). A
//! scale or shift by constants (scalars or one per channel) folds into the neighbouring
//! linear layer. The shape arithmetic exporters emit around `Reshape` (`Shape`, `Gather`,
//! `Unsqueeze`, `Squeeze`, `Concat`, `Cast`, `Constant`) and constant subgraphs (`Transpose`,
//! `Reshape`, `Sqrt`, `Reciprocal` and arithmetic on constants) are evaluated at import.
//!
//! `Relu` is not polynomial: it is refused unless [`ImportOptions::replace_relu`] asks for a
//! least-squares polynomial fit (`relu-poly2..4`), whose range must then be calibrated on
//! data ([`Imported::needs_calibration`], `Model::calibrate_activations`). Every other
//! operator, a dynamic shape, a branch (residual connections) or an unexpected input rank is
//! refused with the node's position, name and operator: nothing in a file can panic the
//! importer or make it allocate more than the file's size allows.
//!
//! The model's input is one float32 tensor `[N, C, H, W]` (or `[N, F]`), `N` free; pixels go
//! in as `pixel / 255` (torchvision's `ToTensor`) unless [`ImportOptions::normalization`]
//! says otherwise.
#![forbid(unsafe_code)]

mod import;
mod tensor;

pub use import::{
    import, import_file, ImportError, ImportOptions, Imported, MAX_IMPORT_VALUES, MAX_NODES, SUPPORTED_OPS,
};
pub use tensor::MAX_ELEMENTS;

/// The ONNX protobuf messages (`onnx.proto`, ONNX IR version 10 and earlier), generated at
/// build time. Public so that tests and tools can write ONNX files.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
