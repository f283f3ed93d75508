//! RNS-CKKS approximate homomorphic encryption on `tfhe-ntt`.
//!
//! Implements the CKKS scheme of Cheon–Kim–Kim–Song (ASIACRYPT 2017) in the full-RNS variant
//! of Cheon–Han–Kim–Kim–Song (SAC 2018), with hybrid key switching (Han–Ki, CT-RSA 2020) and
//! hoisted rotations (Halevi–Shoup, CRYPTO 2018).
//!
//! ```
//! use blindfold_ckks::{presets, Context, Decryptor, Encoder, Encryptor, Evaluator, KeyGenerator};
//!
//! let params = presets::N8192_DEPTH3_128BIT.parameters()?;
//! let ctx = Context::new(&params)?;
//! let mut keygen = KeyGenerator::new(&ctx)?;
//! let pk = keygen.public_key();
//! let rlk = keygen.relinearization_key();
//! let encoder = Encoder::new(&ctx);
//! let x = [1.5, -2.0, 0.25];
//! let pt = encoder.encode_real(&x, ctx.max_level(), params.default_scale())?;
//! let ct = Encryptor::with_public_key(&ctx, &pk)?.encrypt(&pt)?;
//! let eval = Evaluator::new(&ctx);
//! let sq = eval.rescale(&eval.multiply_relin(&ct, &ct, &rlk)?)?;
//! let out = encoder.decode_real(&Decryptor::new(keygen.secret_key()).decrypt(&sq)?)?;
//! for (o, v) in out.iter().zip(x) {
//!     assert!((o - v * v).abs() < 1e-6);
//! }
//! # Ok::<(), blindfold_ckks::Error>(())
//! ```
#![forbid(unsafe_code)]

// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

pub mod bfv;
pub mod bootstrap;
mod context;
mod crypto;
mod encoder;
mod error;
mod evaluator;
mod keys;
mod linear;
mod params;
mod polynomial;
mod scratch;
pub mod serialize;
mod types;
pub use types::{Ciphertext, GaloisElement, GaloisKeyRequest, Level, Plaintext};

pub use bootstrap::{BootstrapConfig, BootstrapKeys, BootstrapPreset, Bootstrapper, BOOTSTRAP_PRESETS};
pub use context::Context;
pub use crypto::{Decryptor, Encryptor, SeededCiphertext, SymmetricEncryptor};
pub use encoder::Encoder;
pub use error::{Error, Result};
pub use evaluator::{Decomposed, Evaluator};
pub use keys::{
    EncapsulationKeys, GaloisKeys, KeyGenerator, KeySwitchingKey, PublicKey, RelinearizationKey, SecretKey,
};
pub use linear::{EncodedLinearTransform, LinearTransform};
pub use num_complex::Complex64;
pub use params::{
    max_log_qp_128bit, sparse_secret_passes_drop_and_solve, Parameters, ParametersLiteral, Preset, SecurityLevel,
    HE_STANDARD_128BIT,
};
pub use polynomial::ChebyshevPolynomial;

/// Released parameter presets, named for what they guarantee.
pub mod presets {
    pub use crate::params::{
        N16384_DEPTH11_128BIT, N16384_DEPTH7_128BIT, N16384_DEPTH9_128BIT, N32768_DEPTH16_128BIT, N8192_DEPTH2_128BIT,
        N8192_DEPTH3_128BIT, N8192_DEPTH5_128BIT, PRESETS,
    };
}
