//! Errors of the CKKS layer.

/// Everything that can go wrong in the CKKS layer. Each variant says what was wrong with
/// which input; none of them is raised by a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The parameter literal is malformed (wrong ring degree, prime sizes, digit count…).
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// The parameters are well formed but below 128-bit security.
    #[error(
        "parameters refused: log2(QP) = {log_qp:.2} bits exceeds the HomomorphicEncryption.org \
         128-bit bound of {bound} bits for N = {n} (ternary secret, sigma = 3.2)"
    )]
    Insecure {
        /// Ring degree.
        n: usize,
        /// log2 of the product of every prime in the chain and the special primes.
        log_qp: f64,
        /// The largest log2(QP) the standard allows at this degree.
        bound: u32,
    },
    /// Two operands are at different levels.
    #[error("level mismatch in {op}: left operand at level {lhs}, right operand at level {rhs}")]
    LevelMismatch {
        /// Operation name.
        op: &'static str,
        /// Level of the left operand.
        lhs: usize,
        /// Level of the right operand.
        rhs: usize,
    },
    /// Two operands have different scales.
    #[error(
        "scale mismatch in {op}: left operand has scale 2^{:.4}, right operand 2^{:.4}",
        lhs.log2(),
        rhs.log2()
    )]
    ScaleMismatch {
        /// Operation name.
        op: &'static str,
        /// Scale of the left operand.
        lhs: f64,
        /// Scale of the right operand.
        rhs: f64,
    },
    /// A ciphertext has the wrong number of polynomials for the operation.
    #[error("{op} expects a ciphertext of {expected} polynomials, got {actual}")]
    CiphertextSize {
        /// Operation name.
        op: &'static str,
        /// Number of polynomials expected.
        expected: usize,
        /// Number of polynomials found.
        actual: usize,
    },
    /// The operation needs a level the operand does not have.
    #[error("{op} needs level at least {needed}, operand is at level {level}")]
    LevelTooLow {
        /// Operation name.
        op: &'static str,
        /// Level required.
        needed: usize,
        /// Level of the operand.
        level: usize,
    },
    /// No Galois key was generated for this element.
    #[error("no Galois key for Galois element {element} (generate keys for the rotations the plan needs)")]
    MissingGaloisKey {
        /// The Galois element `g` of `X -> X^g`.
        element: u64,
    },
    /// Encoding input that does not fit.
    #[error("cannot encode: {0}")]
    Encoding(String),
    /// The object was made for other parameters.
    #[error("parameter mismatch: {what} was made for parameters {found}, expected {expected}")]
    ParameterMismatch {
        /// What was being checked.
        what: &'static str,
        /// Fingerprint prefix (hex) expected.
        expected: String,
        /// Fingerprint prefix (hex) found.
        found: String,
    },
    /// A key made for lower levels than the ciphertext's.
    #[error("{what} serves levels up to {max_level}, the ciphertext is at level {level}")]
    KeyLevel {
        /// Which key.
        what: &'static str,
        /// Highest level the key serves.
        max_level: usize,
        /// The ciphertext's level.
        level: usize,
    },
    /// An object built under other parameters (another `Context`) was passed to an
    /// operation.
    #[error("{what} does not belong to these parameters: {reason}")]
    ForeignObject {
        /// What the object is.
        what: &'static str,
        /// What did not match.
        reason: String,
    },
    /// Bytes that do not decode into a valid object.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Kind of object expected.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// An argument outside its domain (for example a non-finite constant).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Rng(String),
}

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, Error>;
