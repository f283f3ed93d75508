//! The key authority of CryptoNN training (Xu–Joshi–Li, ICDCS 2019; `../shared/CRYPTONN.md`):
//! holds the inner-product FE master secret key and issues function keys under a policy.
//!
//! Inner-product FE keys are linear: keys for vectors spanning `Z_ℓ^n` let their holder solve
//! for the master secret key, and then decrypt every ciphertext under its public key. The
//! policy therefore tracks the span of what it has issued under the current key pair and
//! refuses a key that would complete it; the caller rotates the key pair
//! ([`KeyAuthority::rotate`]) and has the data re-encrypted before that. It also bounds the
//! vectors' entries, refuses sparse vectors (a unit vector is a pixel in the clear), limits
//! keys per (epoch, batch, purpose), refuses requests for batches it has moved past, and logs
//! every key it issues.
//!
//! What it cannot prevent is stated in SECURITY.md: the products it allows still reveal
//! `W·x`, from which inputs can be reconstructed over enough batches or epochs.
//!
//! Every key any of training's key pairs issues, the FEBO label keys included, is also
//! appended to one hash-chained [`audit`] log that the caller takes and persists.
//!
//! [`messages`] are what the parties send each other, as bytes; [`parties`] has the data
//! owner and the key authority as state machines over them, [`server`] the training server
//! (over a link the transport implements) and the in-process harness that joins them.
//!
//! [`training`] has the other two roles, the data owner ([`TrainingClient`]) and the training
//! server ([`TrainingServer`]), and [`FeProducts`], which runs the three together for
//! `blindfold_nn::cryptonn`'s training loop.

pub mod audit;
mod authority;
pub mod messages;
pub mod parties;
pub mod server;
pub mod training;

pub use audit::{verify_log, AuditError, AuditRecord, AuditVerifier, AUDIT_MAGIC, RECORD_LEN};
pub use authority::{vector_digest, AuditEntry, KeyAuthority, KeyPolicy, KeyRequest, PolicyError, Purpose};
pub use training::{
    AuditSink, Breakdown, EncryptedBatch, FeProducts, Mode, TrainingAuthority, TrainingClient, TrainingServer,
};
