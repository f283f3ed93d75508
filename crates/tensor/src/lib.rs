//! Encrypted tensor operations on CKKS slot layouts, and the circuits made of them.
//!
//! This crate knows slot layouts and operations, not networks: compiling a model into a
//! [`Circuit`] is `blindfold-nn`'s job.
//!
//! * [`geometry`] — shapes, convolution and pooling geometry (checked arithmetic).
//! * [`layout`] — where features live in the slots ([`Layout`], [`Grid`]) and how the client
//!   packs an image ([`Packing`]: the image itself, or client-side im2col).
//! * [`linear`] — sparse linear maps and their evaluation as one baby-step giant-step sum of
//!   plaintext diagonals with a fold ([`LinearTransform`]); [`conv`] and [`matvec`] place the
//!   terms of convolutions and dense layers.
//! * [`pooling`] — sums of rotations (average pooling without a level).
//! * [`activation`] — polynomial activations at minimum depth.
//! * [`bootstrap`] — bootstrapping as a stage: back up to the levels a bootstrappable preset
//!   leaves, with its keys declared and a twin that models its precision loss.
//! * [`batch`] — batch packing (slot `s` of every ciphertext is image `s`): linear layers
//!   as modular matrix products of integer constants, no rotations ([`BatchCircuit`]).
//! * [`integer`] — batch circuits quantized to exact integers for BFV, with their bounds and
//!   the CRT recombination of several plaintext moduli ([`IntegerBatchCircuit`]).
//! * [`aggregation`] — combining several parties' encrypted scores (an ensemble's mean,
//!   weighted mean, polynomial softmax and vote), keys traced from the evaluation itself.
//! * [`requirements`] — rotation keys with their levels, costs.
//! * [`circuit`] — the circuit: the stages, the keys and depth they declare, evaluation on
//!   CKKS ([`CkksBackend`], which refuses any rotation the circuit did not declare) and on the
//!   plaintext twin ([`PlainBackend`]), both from the same code.
#![forbid(unsafe_code)]

pub mod activation;
pub mod aggregation;
pub mod backend;
pub mod batch;
pub mod bootstrap;
pub mod circuit;
pub mod conv;
mod error;
pub mod geometry;
pub mod integer;
pub mod layout;
pub mod linear;
pub mod matvec;
pub mod pooling;
pub mod requirements;

pub use activation::PolynomialActivation;
pub use aggregation::{Aggregator, Combine};
pub use backend::{Backend, CkksBackend, Operand, PlainBackend, Trace, TraceBackend};
pub use batch::{BatchCircuit, BatchStage};
pub use bootstrap::{BootstrapStage, BOOTSTRAP_INPUT_BOUND};
pub use circuit::{Circuit, Stage};
pub use error::{CircuitError, Result};
pub use geometry::{ConvGeom, PoolGeom, Shape};
pub use integer::{crt_signed, weighted_sum, IntegerBatchCircuit, IntegerStage, Quantization};
pub use layout::{Grid, Layout, Packing};
pub use linear::{LinearBuilder, LinearMap, LinearTransform};
pub use pooling::{DoublingPlan, RotationSum};
pub use requirements::{RotationKey, StageCost};
