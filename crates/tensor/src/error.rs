//! Errors of circuit construction and evaluation.

/// Errors of circuit construction and evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CircuitError {
    /// An operation this crate cannot express (a polynomial of too high a degree, …).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A layout does not fit in the slots.
    #[error("layout does not fit: {0}")]
    Layout(String),
    /// The circuit needs more levels than the parameters have.
    #[error(
        "the circuit needs multiplicative depth {needed}, the parameters provide {available}{}",
        hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default()
    )]
    TooDeep {
        /// Depth needed.
        needed: usize,
        /// Depth available.
        available: usize,
        /// What to do about it, if anything.
        hint: Option<String>,
    },
    /// Wrong number or size of inputs.
    #[error("input: expected {expected}, got {actual}")]
    Input {
        /// What was expected.
        expected: String,
        /// What was given.
        actual: String,
    },
    /// A stage asked for a Galois key the circuit did not declare, or at a higher level.
    #[error("stage {stage} rotates by {step} at level {level}, which the circuit's key requirements do not declare")]
    UndeclaredKey {
        /// The stage.
        stage: String,
        /// Rotation step.
        step: i64,
        /// Level of the rotated ciphertext.
        level: usize,
    },
    /// A bootstrap needs a Galois key (a rotation or the conjugation) the circuit did not
    /// declare, or at a higher level.
    #[error("stage {stage} applies Galois element {element} at level {level}, which the circuit's key requirements do not declare")]
    UndeclaredElement {
        /// The stage.
        stage: String,
        /// Galois element.
        element: u64,
        /// Level of the ciphertext it applies to.
        level: usize,
    },
    /// An operation needs an evaluation key the evaluator was not given.
    #[error("this computation needs the client's evaluation keys ({0}), which were not given")]
    MissingKeys(String),
    /// The circuit was built without encoding its plaintexts (a client-side structure) and
    /// cannot evaluate on ciphertexts.
    #[error("the circuit has no encoded plaintexts: build it with weights and encode it for a context")]
    NotEncoded,
    /// A CKKS error.
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CircuitError>;
