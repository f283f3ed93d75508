/// Errors of model building, training and model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An architecture whose layers do not fit together.
    #[error("invalid architecture: {0}")]
    Architecture(String),
    /// A shape mismatch between data and model.
    #[error("shape mismatch in {op}: expected {expected}, got {actual}")]
    Shape {
        /// Where.
        op: &'static str,
        /// Expected shape.
        expected: String,
        /// Actual shape.
        actual: String,
    },
    /// A model file that cannot be used.
    #[error("model file {path}: {reason}")]
    ModelFile {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// An unknown built-in architecture name.
    #[error("unknown architecture {0:?}: expected one of tenseal-cnn1, cryptonets, cnn2, mlp, lenet5")]
    UnknownArch(String),
    /// The model has no encrypted form, or its circuit does not fit the parameters.
    #[error("encrypted circuit: {0}")]
    Circuit(blindfold_tensor::CircuitError),
    /// A value the fixed-point encoding cannot represent.
    #[error("fixed-point encoding: {0}")]
    Encoding(String),
    /// The first layer's products (functional encryption or its plaintext twin) failed; the
    /// cause keeps its type (e.g. the key authority's `PolicyError`, found by
    /// `downcast_ref`).
    #[error("first-layer products: {0}")]
    Products(Box<dyn std::error::Error + Send + Sync>),
    /// A batch's products cannot be had (its data owner went away): [`crate::cryptonn::Trainer`]
    /// skips the batch, records it and goes on.
    #[error("batch unavailable: {0}")]
    Unavailable(String),
    /// Training diverged (a non-finite loss).
    #[error("training diverged at epoch {epoch}, batch {batch}: loss is {loss}; lower the learning rate")]
    Diverged {
        /// Epoch.
        epoch: usize,
        /// Batch.
        batch: usize,
        /// The loss value.
        loss: f32,
    },
}

// Not `#[from]`: that would also make the circuit error the source, and error reports that
// print the chain of sources would print its message twice.
impl From<blindfold_tensor::CircuitError> for Error {
    fn from(e: blindfold_tensor::CircuitError) -> Self {
        Error::Circuit(e)
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
