//! Plaintext convolutional networks with polynomial activations: the models blindfold
//! evaluates under encryption, their training, and their files.
//!
//! Activations are row-major `(batch, features)` matrices; a feature vector of a spatial
//! layer is laid out channel-major (`c·H·W + y·W + x`, as PyTorch's `NCHW`). Layers:
//! [`LayerSpec::Conv2d`] (stride, zero padding), [`LayerSpec::AvgPool2d`],
//! [`LayerSpec::Flatten`], [`LayerSpec::Dense`], [`LayerSpec::Square`], [`LayerSpec::Poly`]
//! and [`LayerSpec::ReluPoly`] (a polynomial fit of ReLU on the range training observes).
//! Every layer is polynomial, so the whole network can be evaluated on
//! CKKS ciphertexts (CryptoNets, Gilad-Bachrach et al., ICML 2016), except
//! [`LayerSpec::Relu`], which serves CryptoNN training ([`cryptonn`]): there only the first
//! layer's products see the data, through functional encryption.
#![forbid(unsafe_code)]

pub mod activation;
pub mod arch;
pub mod compile;
pub mod cryptonn;
mod error;
mod layers;
mod model;
#[cfg(test)]
mod tests;
pub mod train;

pub use arch::{ArchSpec, LayerSpec, Normalization, Shape};
pub use error::{Error, Result};
pub use layers::{ConvGeom, Params};
pub use model::{argmax, read_bounded, ActivationRange, Model, ModelFile, FORMAT_VERSION, MAX_MODEL_FILE};
