//! Arithmetic building blocks for blindfold's lattice cryptography.
//!
//! This crate has no cryptographic meaning of its own: it provides word-sized modular
//! arithmetic ([`Modulus`]), deterministic generation of NTT-friendly primes ([`primes`]),
//! negacyclic number-theoretic transforms over `Z_q[X]/(X^N + 1)` backed by Zama's
//! `tfhe-ntt` ([`NttOperator`]), residue-number-system basis conversion ([`BasisConverter`])
//! and constant-time samplers ([`sampler`]).
//!
//! Every modulus handled here is an odd prime below 2^62; polynomials are slices of `u64`
//! residues in `[0, q)`.
#![forbid(unsafe_code)]

mod ifma;
mod modulus;
mod ntt;
pub mod primes;
mod rns;
pub mod sampler;
pub mod slice;

pub use modulus::Modulus;
pub use ntt::{automorphism_coefficients, NttOperator};
pub use rns::BasisConverter;
