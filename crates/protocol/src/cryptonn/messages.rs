//! The messages between CryptoNN's three parties — data owners, the key authority and the
//! training server — and their bytes.
//!
//! A message is postcard-encoded (like [`crate::inference::Message`]); every FE object in it
//! travels in the FE wire format ([`blindfold_fe::wire`]), so the receiver checks its group,
//! vector length and key-pair generation when it decodes it ([`FeWire::decode`]). Key vectors
//! travel by their non-zero entries ([`SparseVector`]): a convolution's forward keys have 26
//! of 785; the keys come back as their scalars alone ([`KeyScalars`], 32 bytes each), since
//! the server has the vectors. No message can hold a master secret key: the FE wire format
//! has no form for one.
//!
//! Who sends what:
//!
//! | message | from → to |
//! | --- | --- |
//! | [`Message::PublicKeysRequest`] | owner or server → authority |
//! | [`Message::PublicKeys`] | authority → owner or server |
//! | [`Message::Join`] | owner → server |
//! | [`Message::BatchRequest`] | server → owner |
//! | [`Message::EncryptedBatch`] | owner → server |
//! | [`Message::KeyRequests`], [`Message::LabelKeyRequests`] | server → authority |
//! | [`Message::FunctionKeys`], [`Message::LabelKeys`] | authority → server |
//! | [`Message::Refused`] | any → the party it refuses |

use super::Purpose;
use crate::inference::ProtocolError;
use blindfold_fe::wire::{deserialize, serialize, FeParams, WireObject};
use blindfold_fe::{febo, ipfe};
use serde::{Deserialize, Serialize};

/// Default bound on a message's size (1 GiB): an MNIST batch of 64 with its feature columns
/// is about 3.3 MB, a batch of LeNet-5's forward keys about 1.5 MB.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// One of CryptoNN's parties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    /// A data owner: holds its shard of the training data and the authority's public keys.
    DataOwner,
    /// The key authority: the only holder of master secret keys.
    KeyAuthority,
    /// The training server: holds ciphertexts, the keys it was issued and the model.
    TrainingServer,
}

/// An FE object in the FE wire format ([`blindfold_fe::wire`]).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeWire<T> {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: WireObject> FeWire<T> {
    /// Serializes `obj`, made under the key pair of `generation`.
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] for a vector longer than the wire format allows.
    pub fn new(obj: &T, generation: u32) -> Result<Self, ProtocolError> {
        let bytes = serialize(obj, generation).map_err(|e| ProtocolError::Misuse(e.to_string()))?;
        Ok(Self { bytes, kind: std::marker::PhantomData })
    }

    /// Checks and decodes the object for `params` (vector length and generation).
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] naming what was wrong: another kind, length or generation,
    /// an invalid point, a wrong size.
    pub fn decode(&self, params: &FeParams) -> Result<T, ProtocolError> {
        deserialize(&self.bytes, params).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

impl<T> FeWire<T> {
    /// The serialized bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<T> Clone for FeWire<T> {
    fn clone(&self) -> Self {
        Self { bytes: self.bytes.clone(), kind: std::marker::PhantomData }
    }
}

impl<T> PartialEq for FeWire<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> std::fmt::Debug for FeWire<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("?");
        write!(f, "FeWire<{name}>({} bytes)", self.bytes.len())
    }
}

/// A key vector by its non-zero entries: `(index, value)` with strictly increasing indices
/// below `len`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseVector {
    /// The vector's length.
    pub len: u32,
    /// The non-zero entries.
    pub entries: Vec<(u32, i64)>,
}

impl SparseVector {
    /// The non-zero entries of `v`.
    ///
    /// # Panics
    /// If `v` is longer than `u32::MAX` (the FE wire format's vectors are at most 2^20).
    pub fn from_dense(v: &[i64]) -> Self {
        let len = u32::try_from(v.len()).expect("vectors shorter than 2^32");
        let entries = v.iter().enumerate().filter(|(_, &x)| x != 0).map(|(i, &x)| (i as u32, x)).collect();
        Self { len, entries }
    }

    /// Checks that the vector has length `expected` and well-formed entries.
    ///
    /// # Errors
    /// [`ProtocolError::Peer`] for another length, or indices out of range, repeated or out
    /// of order, or a zero entry listed.
    pub fn check(&self, expected: usize) -> Result<(), ProtocolError> {
        if self.len as usize != expected {
            return Err(ProtocolError::Peer(format!("a key vector of length {}, expected {expected}", self.len)));
        }
        let mut next = 0u32;
        for &(i, x) in &self.entries {
            if i < next || i >= self.len || x == 0 {
                return Err(ProtocolError::Peer(format!(
                    "a sparse key vector's entry ({i}, {x}): indices must increase below {} and values be non-zero",
                    self.len
                )));
            }
            next = i + 1;
        }
        Ok(())
    }

    /// The dense vector, which must have length `expected` ([`SparseVector::check`]).
    ///
    /// # Errors
    /// As [`SparseVector::check`].
    pub fn to_dense(&self, expected: usize) -> Result<Vec<i64>, ProtocolError> {
        self.check(expected)?;
        let mut v = vec![0; expected];
        for &(i, x) in &self.entries {
            v[i as usize] = x;
        }
        Ok(v)
    }
}

/// Function keys' scalars `sk_y`, 32 canonical bytes each (zeroized on drop, never printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyScalars(pub Vec<[u8; 32]>);

impl Drop for KeyScalars {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for KeyScalars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyScalars({} keys)", self.0.len())
    }
}

impl KeyScalars {
    /// The scalars of `keys`.
    pub fn of(keys: &[ipfe::FunctionKey]) -> Self {
        Self(keys.iter().map(|k| *k.sk_bytes()).collect())
    }

    /// The keys for `vectors` (one scalar each, in order).
    ///
    /// # Errors
    /// [`ProtocolError::Peer`] for another count than vectors or a non-canonical scalar.
    pub fn keys_for(&self, vectors: Vec<Vec<i64>>) -> Result<Vec<ipfe::FunctionKey>, ProtocolError> {
        if vectors.len() != self.0.len() {
            return Err(ProtocolError::Peer(format!("{} keys for {} requested vectors", self.0.len(), vectors.len())));
        }
        vectors
            .into_iter()
            .zip(&self.0)
            .map(|(y, sk)| ipfe::FunctionKey::from_parts(y, sk).map_err(|e| ProtocolError::Peer(e.to_string())))
            .collect()
    }
}

/// Which of a data owner's shards of the training set, `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// From 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

/// The authority's current public keys, each with its key-pair generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// Inner-product FE key pair of the examples (`1 + features` entries).
    pub forward: FeWire<ipfe::MasterPublicKey>,
    /// Of the feature columns over a batch; `None` for a convolutional first layer.
    pub gradient: Option<FeWire<ipfe::MasterPublicKey>>,
    /// FEBO key pair of the label entries (faithful mode).
    pub labels: Option<FeWire<febo::MasterPublicKey>>,
    /// Hardened mode: of the one-hot label columns.
    pub label_sums: Option<FeWire<ipfe::MasterPublicKey>>,
    /// Generations of `forward`, `gradient` and `label_sums` (0 when absent).
    pub generations: [u32; 3],
}

/// A batch's labels as the server receives them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EncryptedLabels {
    /// In the clear (NN-EMD).
    Clear(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Faithful mode: one-hot entries at `scale`, `examples × classes`, row-major, FEBO.
    Entries(Vec<FeWire<febo::Ciphertext>>),
    /// Hardened mode: per class, the one-hot column over the batch.
    Columns(FeWire<ipfe::CiphertextBatch>),
}

/// A message between CryptoNN's parties (the table in the module's documentation says who
/// sends which).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Asks the authority for its current public keys.
    PublicKeysRequest,
    /// The authority's current public keys.
    PublicKeys(PublicKeys),
    /// A data owner joins a training run with its shard.
    Join {
        /// The owner's id (distinct per owner).
        owner: u32,
        /// Its shard.
        shard: Shard,
        /// Examples in its shard.
        examples: u32,
        /// The fixed-point scale it encodes with (`10^digits`): the server refuses an owner
        /// whose scale is not the run's.
        scale: u64,
    },
    /// The server asks an owner to encrypt examples of its shard as one batch.
    BatchRequest {
        /// Epoch, from 0.
        epoch: u32,
        /// Step within the epoch, from 1.
        step: u32,
        /// The examples, as indices into the owner's shard.
        examples: Vec<u32>,
        /// The key-pair generations to encrypt under ([`PublicKeys::generations`]).
        generations: [u32; 3],
    },
    /// An owner's encrypted batch, answering a [`Message::BatchRequest`].
    EncryptedBatch {
        /// The owner's id.
        owner: u32,
        /// The request's epoch.
        epoch: u32,
        /// The request's step.
        step: u32,
        /// Each example's `[scale; x̂]` under the forward key pair.
        rows: FeWire<ipfe::CiphertextBatch>,
        /// Each feature column over the batch under the gradient key pair (`None` for a
        /// convolutional first layer).
        columns: Option<FeWire<ipfe::CiphertextBatch>>,
        /// The labels.
        labels: EncryptedLabels,
    },
    /// The server asks for the keys of one product of one batch.
    KeyRequests {
        /// Epoch.
        epoch: u32,
        /// Step within the epoch.
        batch: u32,
        /// The product.
        purpose: Purpose,
        /// One vector per key.
        vectors: Vec<SparseVector>,
    },
    /// The keys of a [`Message::KeyRequests`], in its order, as their scalars `sk_y`: the
    /// server has the vectors ([`ipfe::FunctionKey::from_parts`]).
    FunctionKeys {
        /// The key pair's generation: keys of another generation do not decrypt the batch.
        generation: u32,
        /// One `sk_y` per requested vector.
        keys: KeyScalars,
    },
    /// Faithful mode: FEBO subtraction keys `ŷ − a`, one per encrypted label entry.
    LabelKeyRequests {
        /// Epoch.
        epoch: u32,
        /// Step within the epoch.
        batch: u32,
        /// Per entry, its ciphertext and `a`.
        entries: Vec<(FeWire<febo::Ciphertext>, i64)>,
    },
    /// The keys of a [`Message::LabelKeyRequests`], in its order.
    LabelKeys(Vec<FeWire<febo::FunctionKey>>),
    /// A refusal of the last message: what was wrong and whose fault it was.
    Refused {
        /// The party at fault.
        fault: Party,
        /// What was wrong.
        reason: String,
    },
}

impl Message {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    /// Decodes one message of at most `limit` bytes; the size is checked before anything is
    /// decoded.
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for more than `limit` bytes, or bytes that are not exactly
    /// one message.
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, ProtocolError> {
        if bytes.len() > limit {
            return Err(ProtocolError::Malformed(format!(
                "{} bytes, more than the {limit} bytes a message may have here",
                bytes.len()
            )));
        }
        let (msg, rest) = postcard::take_from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Malformed(format!("{} trailing bytes after the message", rest.len())));
        }
        Ok(msg)
    }

    /// The message's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PublicKeysRequest => "PublicKeysRequest",
            Self::PublicKeys(_) => "PublicKeys",
            Self::Join { .. } => "Join",
            Self::BatchRequest { .. } => "BatchRequest",
            Self::EncryptedBatch { .. } => "EncryptedBatch",
            Self::KeyRequests { .. } => "KeyRequests",
            Self::FunctionKeys { .. } => "FunctionKeys",
            Self::LabelKeyRequests { .. } => "LabelKeyRequests",
            Self::LabelKeys(_) => "LabelKeys",
            Self::Refused { .. } => "Refused",
        }
    }
}
