//! Functional encryption for blindfold's CryptoNN training (Xu–Joshi–Li, ICDCS 2019).
//!
//! * [`ipfe`] — inner-product functional encryption, the DDH scheme of Abdalla, Bourse,
//!   De Caro and Pointcheval (PKC 2015, §3), in the ristretto255 group: a client encrypts a
//!   vector `x`, an authority holding the master secret key derives a function key for a
//!   vector `y`, and whoever holds that key learns `⟨x, y⟩` and nothing else about `x`
//!   (selective security under DDH).
//! * [`febo`] — FE for basic operations (CryptoNN §III-B): an encrypted integer and keys,
//!   bound to one ciphertext, for `x + y`, `x − y` or `x · y` with a public `y` (CryptoNN's
//!   encrypted labels). Reveals `x` to the key holder.
//! * [`DlogTable`] — the bounded discrete logarithm that turns the decrypted `g^⟨x,y⟩` into
//!   an integer: a baby-step giant-step table built once and shared read-only across threads.
//!   A value outside the bound is an error, never a wrong number.
//! * [`FixedPoint`] — real numbers as integers with a fixed number of decimal digits, as
//!   CryptoNN encodes pixels and weights.
//!
//! What this does not hide is stated in SECURITY.md and `../shared/CRYPTONN.md`: function
//! keys are linear in `y`, so keys for `n` independent vectors reveal the master secret key;
//! the key authority must track what it issues.
#![forbid(unsafe_code)]

mod dlog;
mod encoding;
pub mod febo;
pub mod ipfe;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod wire;

pub use dlog::DlogTable;
pub use encoding::FixedPoint;

/// Errors of the functional-encryption layer.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeError {
    /// A vector whose length does not match the key or ciphertext.
    #[error("length mismatch: expected {expected} entries, got {actual}")]
    Length {
        /// Entries expected.
        expected: usize,
        /// Entries given.
        actual: usize,
    },
    /// The decrypted value is outside the discrete-log table's bound.
    #[error("the decrypted value is outside the bound ±{bound} of the discrete-log table")]
    OutOfBound {
        /// The table's bound.
        bound: u64,
    },
    /// A value that cannot be encoded (not finite, or too large for the encoding).
    #[error("cannot encode {0}")]
    Encoding(String),
    /// An invalid parameter (empty vectors, a zero-size table, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Rng(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FeError>;
