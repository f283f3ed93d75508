//! The parties of encrypted inference as state machines without I/O: bytes in, bytes out.
//!
//! * [`Client`] — the data owner. Makes the CKKS keys, encrypts its image, decrypts the
//!   scores. The only holder of the secret key.
//! * [`ModelHolder`] — holds the plaintext model and evaluates it on the client's
//!   ciphertexts with the client's public evaluation keys. Its type has no place for a secret
//!   key: it is built from a model and receives only [`Message`]s, which carry public keys and
//!   ciphertexts.
//!
//! * [`Coordinator`] — in an ensemble, combines the encrypted scores of several model
//!   holders ([`Aggregation`]) for the client, who decrypts the result. Holds no key that can
//!   decrypt and accepts only encrypted scores.
//!
//! * [`cryptonn::KeyAuthority`] — in CryptoNN training, holds the functional-encryption
//!   master secret key and issues function keys under a policy (span, bounds, sparsity, rate,
//!   audit log).
//!
//! Messages ([`Message`]) are postcard-encoded; the keys and ciphertexts inside use the CKKS
//! wire format (`blindfold_ckks::serialize`), which carries the parameter fingerprint, so keys
//! or ciphertexts made for other parameters are refused with a clear error.
//!
//! Flow: `Client::new` → [`Message::EvaluationKeys`] → model holder; `Client::encrypt` →
//! [`Message::EncryptedImage`] → model holder → [`Message::EncryptedScores`] →
//! `Client::decrypt_scores`.
#![forbid(unsafe_code)]

pub mod cryptonn;
mod ensemble;
mod inference;

pub use ensemble::{Aggregated, Aggregation, Calibration, Coordinator};
pub use inference::{
    Client, CompiledModel, Fault, Flooding, KeyId, Message, ModelHolder, PlanInfo, ProtocolError, Wire,
    CALIBRATION_MARGIN, MAX_FLOODING_WIDTH, MAX_MESSAGE_LEN, MAX_REPLICA_SPREAD, MAX_SCORE,
};
