//! The data owner and the training server of CryptoNN training, and [`FeProducts`], which
//! runs them with the key authority for `blindfold_nn::cryptonn::Trainer`.
//!
//! Per fixed mini-batch of `b ≤ B` examples the client sends an [`EncryptedBatch`]: each
//! example's encoded input `[scale; x̂]` (length `1 + n`) encrypted under the forward key pair,
//! each of the `1 + n` feature columns across the batch (length `B`, zero-padded) under the
//! gradient key pair, and the labels: one-hot at `scale` under FE for basic operations in
//! [`Mode::Faithful`], in the clear in [`Mode::PlainLabels`] (NN-EMD). The server asks one
//! forward key per row of `Ŵ` and one gradient key per row of `Δ̂`, and decrypts `X̂·Ŵᵀ`
//! and `Δ̂·X̂` with the secure matrix product (`blindfold_fe::ipfe::matrix_product`);
//! in faithful mode it also asks, per example and class, a FEBO subtraction key for
//! `ŷ − â`, which reveals the label (CryptoNN does this; SECURITY.md says so).
//!
//! For a convolutional first layer (LeNet-5, [`TrainingClient::rows_only`]) no feature
//! columns are encrypted: the forward keys are one per filter and output position, and the
//! gradient keys ([`Purpose::ConvGradient`]) one per filter, kernel entry and example on the
//! examples' own ciphertexts, summed over the batch before the discrete logarithm
//! ([`TrainingServer::summed_products`]).
//!
//! In [`Mode::Hardened`] the labels are never decrypted per example: the client encrypts
//! the augmented columns of `blindfold_nn::cryptonn::augmented_columns` (each feature column,
//! then per class the same column with other classes' examples zeroed) under the gradient key
//! pair and the one-hot label columns under a third pair; the server gets `δ1ᵀ·X̂` and
//! `Yᵀ·[1 | H]` as batch sums. Every key pair runs under a [`KeyPolicy`]: the authority
//! rotates a pair (and the client re-encrypts under the new one) before its keys could span
//! the space, which needs batches larger than the hidden width.

use super::audit::{AuditChain, AuditRecord};
use super::messages::{EncryptedLabels, FeWire, Message, PublicKeys};
use super::{KeyAuthority, KeyPolicy, KeyRequest, PolicyError, Purpose};
use crate::inference::ProtocolError;
use blindfold_data::LabeledImages;
use blindfold_fe::ipfe::{CiphertextBatch, Encryptor, FunctionKey, ProductPoints};
use blindfold_fe::wire::FeParams;
use blindfold_fe::{febo, DlogTable, FeError, FixedPoint};
use blindfold_nn::cryptonn::{augmented_columns, encode_input, subtract_labels, FirstLayerProducts, FixedBatches};
use ndarray::{Array2, Array3};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// How labels reach the training server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CryptoNN as published: labels encrypted with FE for basic operations, the output
    /// deltas `A − Y` decrypted element-wise (which reveals the labels to the server).
    Faithful,
    /// Labels in the clear, as CryptoNN's follow-up NN-EMD.
    PlainLabels,
    /// Every key pair under a policy with rotation, labels only summed over the batch inside
    /// FE products (`blindfold_nn::cryptonn::CryptonnConfig::hardened`).
    Hardened,
}

/// One fixed batch as the client sends it.
pub struct EncryptedBatch {
    rows: CiphertextBatch,
    /// `None` for a convolutional first layer, whose gradient is computed on `rows`.
    columns: Option<CiphertextBatch>,
    labels: Labels,
}

/// What a batch's receiver expects of it: the shape it asked for and the key pairs'
/// generations it holds keys of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Examples asked for.
    pub examples: usize,
    /// Pixels per example (without the bias entry).
    pub features: usize,
    /// The largest batch (the columns' length).
    pub batch_size: usize,
    /// Label classes.
    pub classes: usize,
    /// Generations of the forward, gradient and label-sum key pairs.
    pub generations: [u32; 3],
}

impl EncryptedBatch {
    /// The batch as an owner sends it ([`Message::EncryptedBatch`]).
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] for vectors beyond the wire format's length.
    pub fn to_message(
        &self,
        owner: u32,
        epoch: u32,
        step: u32,
        generations: [u32; 3],
    ) -> Result<Message, ProtocolError> {
        let labels = match &self.labels {
            Labels::Clear(l) => EncryptedLabels::Clear(l.clone()),
            Labels::Encrypted(cts) => {
                EncryptedLabels::Entries(cts.iter().map(|ct| FeWire::new(ct, 0)).collect::<Result<_, _>>()?)
            }
            Labels::Columns(columns) => EncryptedLabels::Columns(FeWire::new(columns, generations[2])?),
        };
        Ok(Message::EncryptedBatch {
            owner,
            epoch,
            step,
            rows: FeWire::new(&self.rows, generations[0])?,
            columns: self.columns.as_ref().map(|c| FeWire::new(c, generations[1])).transpose()?,
            labels,
        })
    }

    /// The batch of a [`Message::EncryptedBatch`]'s `rows`, `columns` and `labels`, checked
    /// against `shape`: each object's length and generation, the number of examples, and
    /// that the labels have the form of the mode (`conv`: no feature columns).
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for an object that does not decode for `shape`;
    /// [`ProtocolError::Peer`] for the wrong number of examples, columns or labels, or labels
    /// of another mode.
    pub fn from_message(
        rows: &FeWire<CiphertextBatch>,
        columns: Option<&FeWire<CiphertextBatch>>,
        labels: &EncryptedLabels,
        shape: &BatchShape,
        conv: bool,
    ) -> Result<Self, ProtocolError> {
        let count = |what: &str, got: usize, want: usize| {
            (got == want)
                .then_some(())
                .ok_or_else(|| ProtocolError::Peer(format!("{got} {what} in the batch, expected {want}")))
        };
        let [forward, gradient, label_sums] = shape.generations;
        let rows: CiphertextBatch = rows.decode(&FeParams { n: shape.features + 1, generation: forward })?;
        count("examples", rows.len(), shape.examples)?;
        let hardened = matches!(labels, EncryptedLabels::Columns(_));
        let columns = match (columns, conv) {
            (None, true) => None,
            (Some(c), false) => {
                let n = if hardened { (1 + shape.classes) * shape.batch_size } else { shape.batch_size };
                let c: CiphertextBatch = c.decode(&FeParams { n, generation: gradient })?;
                count("feature columns", c.len(), shape.features + 1)?;
                Some(c)
            }
            (Some(_), true) => return Err(ProtocolError::Peer("feature columns for a convolutional layer".into())),
            (None, false) => return Err(ProtocolError::Peer("no feature columns".into())),
        };
        let labels = match labels {
            EncryptedLabels::Clear(l) => {
                count("labels", l.len(), shape.examples)?;
                if let Some(bad) = l.iter().find(|&&c| c as usize >= shape.classes) {
                    return Err(ProtocolError::Peer(format!("label {bad} of {} classes", shape.classes)));
                }
                Labels::Clear(l.clone())
            }
            EncryptedLabels::Entries(cts) => {
                count("label entries", cts.len(), shape.examples * shape.classes)?;
                let params = FeParams { n: 1, generation: 0 };
                Labels::Encrypted(cts.iter().map(|ct| ct.decode(&params)).collect::<Result<_, _>>()?)
            }
            EncryptedLabels::Columns(c) => {
                let c: CiphertextBatch = c.decode(&FeParams { n: shape.batch_size, generation: label_sums })?;
                count("label columns", c.len(), shape.classes)?;
                Labels::Columns(c)
            }
        };
        Ok(Self { rows, columns, labels })
    }
}

enum Labels {
    Clear(Vec<u8>),
    /// `(examples × classes)` one-hot entries at `scale`, row-major.
    Encrypted(Vec<febo::Ciphertext>),
    /// Hardened mode: per class, the one-hot column over the batch (0/1, zero-padded).
    Columns(CiphertextBatch),
}

/// Where the time of the FE side goes, summed over calls (wall-clock).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// The client encrypting batches.
    pub encrypt: Duration,
    /// The authority deriving function keys.
    pub key_derivation: Duration,
    /// The server computing `g^{⟨x,y⟩}` (multi-scalar multiplications), and its FEBO
    /// decryptions of the labels with their discrete logs.
    pub decrypt: Duration,
    /// The server's discrete logarithms.
    pub dlog: Duration,
}

/// The key authority of training: the forward and gradient IPFE key pairs and, in faithful
/// mode, the FEBO key pair for the labels.
pub struct TrainingAuthority {
    forward: KeyAuthority,
    gradient: KeyAuthority,
    labels: Option<(febo::MasterSecretKey, febo::MasterPublicKey)>,
    /// Hardened mode: the key pair of the label columns.
    label_sums: Option<KeyAuthority>,
    /// Every key issued, hash-chained (taken by the caller to persist).
    audit: AuditChain,
}

impl TrainingAuthority {
    /// Key pairs for inputs of `features` values (without the bias entry) and batches of up
    /// to `batch_size`, issuing every key asked for (CryptoNN as published).
    ///
    /// # Errors
    /// [`PolicyError::Fe`] if the random source fails or a length is 0.
    /// [`FeError::InvalidArgument`] for [`Mode::Hardened`] ([`TrainingAuthority::hardened`]).
    pub fn unrestricted(features: usize, batch_size: usize, mode: Mode) -> Result<Self, PolicyError> {
        Ok(Self {
            forward: KeyAuthority::unrestricted(features + 1)?,
            gradient: KeyAuthority::unrestricted(batch_size)?,
            labels: match mode {
                Mode::Faithful => Some(febo::setup()?),
                Mode::PlainLabels => None,
                Mode::Hardened => {
                    return Err(FeError::InvalidArgument("the hardened mode's authority has a policy".into()).into())
                }
            },
            label_sums: None,
            audit: AuditChain::new(),
        })
    }

    /// The hardened mode's key pairs, each under a [`KeyPolicy`]: forward (length
    /// `1 + features`, the default policy), gradient over the augmented columns (length
    /// `(1 + classes)·batch_size`) and label sums (length `batch_size`), the last two refusing
    /// keys with fewer than `min_nonzero` non-zero entries. Per batch the server asks `hidden`
    /// forward keys, `hidden` gradient keys and `1 + hidden` label-sum keys, so a batch must
    /// hold at least `hidden + 2` examples: with fewer, the label-sum keys of one batch would
    /// span the batch space and reveal the labels.
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] for a batch size below `hidden + 2`; [`PolicyError::Fe`].
    pub fn hardened(
        features: usize,
        batch_size: usize,
        classes: usize,
        hidden: usize,
        min_nonzero: usize,
    ) -> Result<Self, PolicyError> {
        if batch_size < hidden + 2 {
            return Err(FeError::InvalidArgument(format!(
                "hardened mode needs batches of at least {} examples (hidden width {hidden} + 2): with \
                 {batch_size}, one batch's {} label-sum keys would span the batch and reveal its labels",
                hidden + 2,
                hidden + 1
            ))
            .into());
        }
        let sparse = |n: usize| KeyAuthority::new(n, KeyPolicy { min_nonzero, ..KeyPolicy::for_length(n) });
        Ok(Self {
            forward: KeyAuthority::new(features + 1, KeyPolicy::for_length(features + 1))?,
            gradient: sparse((1 + classes) * batch_size)?,
            labels: None,
            label_sums: Some(sparse(batch_size)?),
            audit: AuditChain::new(),
        })
    }

    /// Issues the key for `request` from the key pair its purpose belongs to, under that
    /// pair's policy, and appends it to the audit log.
    ///
    /// # Errors
    /// The [`PolicyError`] of the pair's policy; [`FeError::InvalidArgument`] for a purpose
    /// this authority has no key pair for ([`Purpose::LabelDelta`]: [`Self::issue_label_keys`]).
    pub fn issue(&mut self, request: &KeyRequest) -> Result<FunctionKey, PolicyError> {
        let pair = match request.purpose {
            Purpose::Forward | Purpose::ConvGradient => &mut self.forward,
            Purpose::Gradient => &mut self.gradient,
            Purpose::LabelSums => self
                .label_sums
                .as_mut()
                .ok_or_else(|| FeError::InvalidArgument("no label-sum key pair outside hardened mode".into()))?,
            Purpose::LabelDelta => {
                return Err(FeError::InvalidArgument("label keys are FEBO keys: issue_label_keys".into()).into())
            }
        };
        let key = pair.issue(request)?;
        let entry = pair.audit_log().last().expect("issue logs the key");
        self.audit.append(AuditRecord {
            sequence: 0,
            purpose: entry.purpose,
            generation: entry.generation,
            epoch: entry.epoch,
            batch: entry.batch,
            rank_after: u32::try_from(entry.rank_after).unwrap_or(u32::MAX),
            key_sha256: entry.vector_sha256,
            chain: [0; 32],
        });
        Ok(key)
    }

    /// Faithful mode: the FEBO subtraction keys for `ŷ − a`, one per (encrypted label entry,
    /// `a`), each appended to the audit log as [`Purpose::LabelDelta`] (its hash covers the
    /// commitment, the operation and `a`).
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] without a FEBO key pair (labels in the clear, or hardened).
    pub fn issue_label_keys(
        &mut self,
        epoch: u32,
        batch: u32,
        entries: &[(&febo::Ciphertext, i64)],
    ) -> Result<Vec<febo::FunctionKey>, PolicyError> {
        let Some((msk, _)) = &self.labels else {
            return Err(
                FeError::InvalidArgument("no FEBO key pair: the labels are not encrypted per entry".into()).into()
            );
        };
        let derived: Vec<_> =
            entries.par_iter().map(|&(ct, a)| super::authority::derive_label_key(msk, ct, a)).collect();
        let mut keys = Vec::with_capacity(entries.len());
        for (key, key_sha256) in derived {
            keys.push(key);
            self.audit.append(AuditRecord {
                sequence: 0,
                purpose: Purpose::LabelDelta,
                generation: 0,
                epoch,
                batch,
                rank_after: 0,
                key_sha256,
                chain: [0; 32],
            });
        }
        Ok(keys)
    }

    /// The audit records of the keys issued since the last call, in order: append them to
    /// the persisted log (after [`crate::cryptonn::AUDIT_MAGIC`] for a new file).
    pub fn take_audit_records(&mut self) -> Vec<AuditRecord> {
        self.audit.take()
    }

    /// The forward and gradient authorities (their audit logs).
    pub fn authorities(&self) -> (&KeyAuthority, &KeyAuthority) {
        (&self.forward, &self.gradient)
    }

    /// The hardened mode's label-sum authority.
    pub fn label_sums_authority(&self) -> Option<&KeyAuthority> {
        self.label_sums.as_ref()
    }

    /// Rotates each key pair that cannot issue `hidden` more keys (`hidden + 1` label-sum
    /// keys) under its policy (the client re-encrypts when it sees the new generation). Pairs
    /// without a policy never rotate.
    ///
    /// # Errors
    /// [`PolicyError::Fe`] if the random source fails.
    pub fn rotate_before(&mut self, hidden: usize) -> Result<(), PolicyError> {
        let pairs = [(&mut self.forward, hidden), (&mut self.gradient, hidden)];
        for (authority, needed) in pairs.into_iter().chain(self.label_sums.as_mut().map(|a| (a, hidden + 1))) {
            if authority.remaining_rank() < needed {
                authority.rotate()?;
            }
        }
        Ok(())
    }

    /// The current public keys, as the authority sends them to data owners and the server.
    ///
    /// # Panics
    /// Never for the authority's own keys (their lengths are within the wire format's).
    pub fn public_keys(&self) -> PublicKeys {
        let wire = |(generation, mpk): (u32, &blindfold_fe::ipfe::MasterPublicKey)| {
            FeWire::new(mpk, generation).expect("the authority's keys fit the wire format")
        };
        PublicKeys {
            forward: wire(self.forward.public_key()),
            gradient: Some(wire(self.gradient.public_key())),
            labels: self.labels.as_ref().map(|(_, mpk)| FeWire::new(mpk, 0).expect("a FEBO key fits")),
            label_sums: self.label_sums.as_ref().map(|a| wire(a.public_key())),
            generations: self.generations(),
        }
    }

    /// The inner-product key pair that issues `purpose`'s keys (`None` for label keys, and for
    /// label sums outside hardened mode).
    fn pair(&self, purpose: Purpose) -> Option<&KeyAuthority> {
        match purpose {
            Purpose::Forward | Purpose::ConvGradient => Some(&self.forward),
            Purpose::Gradient => Some(&self.gradient),
            Purpose::LabelSums => self.label_sums.as_ref(),
            Purpose::LabelDelta => None,
        }
    }

    /// Length of the vectors of `purpose`'s keys (`None`: no inner-product key pair for it).
    pub fn vector_len(&self, purpose: Purpose) -> Option<usize> {
        self.pair(purpose).map(|a| a.public_key().1.len())
    }

    /// Generation of the key pair that issues `purpose`'s keys.
    pub fn generation(&self, purpose: Purpose) -> Option<u32> {
        self.pair(purpose).map(|a| a.public_key().0)
    }

    /// The key pairs' generations (the client re-encrypts when they change).
    pub fn generations(&self) -> [u32; 3] {
        let label_sums = self.label_sums.as_ref().map_or(0, |a| a.public_key().0);
        [self.forward.public_key().0, self.gradient.public_key().0, label_sums]
    }
}

/// The data owner: encrypts its fixed batches under the authority's public keys, which it
/// holds decoded from the authority's [`PublicKeys`] message (never the authority itself).
pub struct TrainingClient<'a> {
    data: &'a LabeledImages,
    encoding: FixedPoint,
    rows: Encryptor,
    /// `None`: a convolutional first layer, no feature columns.
    columns: Option<Encryptor>,
    labels: Option<febo::MasterPublicKey>,
    label_columns: Option<Encryptor>,
    generations: [u32; 3],
    classes: usize,
    batch_size: usize,
}

/// Decodes one of the authority's public keys for vectors of length `n`.
fn public_key<T: blindfold_fe::wire::WireObject>(
    key: &FeWire<T>,
    n: usize,
    generation: u32,
) -> Result<T, ProtocolError> {
    key.decode(&FeParams { n, generation })
}

/// Length of the gradient key pair's vectors: a batch's feature column, or in hardened mode
/// (label-sum keys present) its augmented columns, `(1 + classes)·batch_size`.
fn column_len(keys: &PublicKeys, classes: usize, batch_size: usize) -> usize {
    if keys.label_sums.is_some() {
        (1 + classes) * batch_size
    } else {
        batch_size
    }
}

impl<'a> TrainingClient<'a> {
    /// A client holding `data`, encrypting batches of up to `batch_size` examples under the
    /// public keys of `keys` ([`TrainingAuthority::public_keys`]).
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for a key of another length or generation than `keys`
    /// says, or damaged; [`ProtocolError::Peer`] without the gradient key pair.
    pub fn new(
        data: &'a LabeledImages,
        encoding: FixedPoint,
        classes: usize,
        batch_size: usize,
        keys: &PublicKeys,
    ) -> Result<Self, ProtocolError> {
        let features = data.images.rows * data.images.cols;
        let [forward, gradient, label_sums] = keys.generations;
        let columns = keys.gradient.as_ref().ok_or_else(|| ProtocolError::Peer("no gradient public key".into()))?;
        Ok(Self {
            data,
            encoding,
            rows: public_key(&keys.forward, features + 1, forward)?.encryptor(),
            columns: Some(public_key(columns, column_len(keys, classes, batch_size), gradient)?.encryptor()),
            labels: keys.labels.as_ref().map(|k| public_key(k, 1, 0)).transpose()?,
            label_columns: keys
                .label_sums
                .as_ref()
                .map(|k| public_key(k, batch_size, label_sums).map(|k| k.encryptor()))
                .transpose()?,
            generations: keys.generations,
            classes,
            batch_size,
        })
    }

    /// A client for a convolutional first layer (LeNet-5): its gradient is computed on the
    /// examples' own ciphertexts ([`Purpose::ConvGradient`]), so no feature columns are
    /// encrypted.
    pub fn rows_only(mut self) -> Self {
        self.columns = None;
        self
    }

    /// The generations of the key pairs it encrypts under.
    pub fn generations(&self) -> [u32; 3] {
        self.generations
    }

    /// Takes the authority's new public keys after a rotation: the encryption tables of the
    /// key pairs whose generation changed are rebuilt.
    ///
    /// # Errors
    /// As [`TrainingClient::new`].
    pub fn set_public_keys(&mut self, keys: &PublicKeys) -> Result<(), ProtocolError> {
        let now = keys.generations;
        if now[0] != self.generations[0] {
            self.rows =
                public_key(&keys.forward, self.data.images.rows * self.data.images.cols + 1, now[0])?.encryptor();
        }
        if let (true, Some(gradient)) = (now[1] != self.generations[1] && self.columns.is_some(), &keys.gradient) {
            let n = column_len(keys, self.classes, self.batch_size);
            self.columns = Some(public_key(gradient, n, now[1])?.encryptor());
        }
        if now[2] != self.generations[2] {
            self.label_columns = keys
                .label_sums
                .as_ref()
                .map(|k| public_key(k, self.batch_size, now[2]).map(|k| k.encryptor()))
                .transpose()?;
        }
        self.generations = now;
        Ok(())
    }

    /// Encrypts the examples `indices` (at most the batch size) under its public keys.
    ///
    /// # Errors
    /// [`FeError::Length`] for too many examples; [`FeError::Encoding`]; [`FeError::Rng`].
    pub fn encrypt_batch(&mut self, indices: &[usize]) -> Result<EncryptedBatch, FeError> {
        let size = self.batch_size;
        if indices.len() > size {
            return Err(FeError::Length { expected: size, actual: indices.len() });
        }
        let inputs: Vec<Vec<i64>> = indices
            .iter()
            .map(|&i| encode_input(self.data.images.image(i), self.encoding))
            .collect::<Result<_, _>>()
            .map_err(|e| FeError::Encoding(e.to_string()))?;
        let rows = self.rows.encrypt_batch(&inputs)?;
        let width = inputs.first().map_or(0, Vec::len);
        let x = ndarray::Array2::from_shape_vec((inputs.len(), width), inputs.concat()).expect("rows of equal width");
        let labels: Vec<u8> = indices.iter().map(|&i| self.data.labels[i]).collect();
        // The gradient's columns: X̂ zero-padded to the batch size, or augmented with labels.
        let columns = match &self.columns {
            Some(encryptor) => {
                let columns_of = match &self.label_columns {
                    Some(_) => augmented_columns(&x, &labels, self.classes, size)
                        .map_err(|e| FeError::Encoding(e.to_string()))?,
                    None => {
                        let mut padded = ndarray::Array2::zeros((size, width));
                        padded.rows_mut().into_iter().zip(x.rows()).for_each(|(mut p, r)| p.assign(&r));
                        padded
                    }
                };
                Some(
                    encryptor
                        .encrypt_batch(&columns_of.columns().into_iter().map(|c| c.to_vec()).collect::<Vec<_>>())?,
                )
            }
            None => None,
        };
        let labels = match (&self.labels, &self.label_columns) {
            (Some(mpk), _) => Labels::Encrypted(
                labels
                    .iter()
                    .flat_map(|&l| (0..self.classes).map(move |c| if c == l as usize { 1 } else { 0 }))
                    .map(|onehot| mpk.encrypt(onehot * self.encoding.scale() as i64))
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(encryptor)) => {
                let onehot: Vec<Vec<i64>> = (0..self.classes)
                    .map(|c| (0..size).map(|e| i64::from(labels.get(e).is_some_and(|&l| l as usize == c))).collect())
                    .collect();
                Labels::Columns(encryptor.encrypt_batch(&onehot)?)
            }
            (None, None) => Labels::Clear(labels),
        };
        Ok(EncryptedBatch { rows, columns, labels })
    }
}

/// The training server's FE side: holds the current batch's ciphertexts and the discrete-log
/// table; decrypts the products its keys allow. Holds no master secret key and no pixel.
pub struct TrainingServer {
    table: DlogTable,
    batch: Option<(usize, EncryptedBatch)>,
}

impl TrainingServer {
    /// A server whose products must lie within `table`'s bound.
    pub fn new(table: DlogTable) -> Self {
        Self { table, batch: None }
    }

    /// Takes batch `id` from the client.
    pub fn receive(&mut self, id: usize, batch: EncryptedBatch) {
        self.batch = Some((id, batch));
    }

    fn current(&self, id: usize) -> Result<&EncryptedBatch, FeError> {
        match &self.batch {
            Some((held, b)) if *held == id => Ok(b),
            _ => Err(FeError::InvalidArgument(format!("batch {id} has not been received"))),
        }
    }

    /// `X̂·Ŵᵀ` (`examples × keys`) from one forward key per row of `Ŵ`.
    ///
    /// # Errors
    /// [`FeError::OutOfBound`] for a product beyond the table; [`FeError::Length`].
    pub fn forward(&self, id: usize, keys: &[FunctionKey], time: &mut Breakdown) -> Result<Array2<i64>, FeError> {
        let rows = &self.current(id)?.rows;
        let values = self.product(rows, keys, time)?;
        Ok(Array2::from_shape_vec((rows.len(), keys.len()), values).expect("one value per row and key"))
    }

    /// `Δ̂·X̂` (`keys × features`) from one gradient key per row of `Δ̂`.
    ///
    /// # Errors
    /// As [`TrainingServer::forward`].
    pub fn gradient(&self, id: usize, keys: &[FunctionKey], time: &mut Breakdown) -> Result<Array2<i64>, FeError> {
        let Some(columns) = &self.current(id)?.columns else {
            return Err(FeError::InvalidArgument("the batch came without feature columns".into()));
        };
        let values = self.product(columns, keys, time)?;
        // columns × keys → keys × columns
        Ok(Array2::from_shape_vec((columns.len(), keys.len()), values)
            .expect("one value per column and key")
            .reversed_axes())
    }

    /// `Σ_e ⟨x̂_e, y_{o,e}⟩` per output `o` from one key per output and example
    /// (`keys[o·examples + e]`, [`Purpose::ConvGradient`]): the sums only reach a discrete
    /// logarithm.
    ///
    /// # Errors
    /// As [`TrainingServer::forward`]; [`FeError::InvalidArgument`] for a key count that is not
    /// a multiple of the examples.
    pub fn summed_products(&self, id: usize, keys: &[FunctionKey], time: &mut Breakdown) -> Result<Vec<i64>, FeError> {
        let rows = &self.current(id)?.rows;
        self.solve(|| rows.summed_product(keys), time)
    }

    fn product(&self, cts: &CiphertextBatch, keys: &[FunctionKey], time: &mut Breakdown) -> Result<Vec<i64>, FeError> {
        self.solve(|| cts.product(keys), time)
    }

    /// The group elements from `decrypt`, then their discrete logarithms, each timed.
    fn solve(
        &self,
        decrypt: impl FnOnce() -> Result<ProductPoints, FeError>,
        time: &mut Breakdown,
    ) -> Result<Vec<i64>, FeError> {
        let start = Instant::now();
        let points = decrypt()?;
        let mid = Instant::now();
        let values = points.solve(&self.table);
        time.decrypt += mid - start;
        time.dlog += mid.elapsed();
        values
    }

    /// Hardened mode: `Ŷᵀ·K` (`classes × keys`) from one label-sum key per column of `K`.
    ///
    /// # Errors
    /// As [`TrainingServer::forward`]; [`FeError::InvalidArgument`] if the labels did not
    /// come as encrypted columns.
    pub fn label_sums(&self, id: usize, keys: &[FunctionKey], time: &mut Breakdown) -> Result<Array2<i64>, FeError> {
        let Labels::Columns(columns) = &self.current(id)?.labels else {
            return Err(FeError::InvalidArgument("the labels did not come as encrypted columns".into()));
        };
        let values = self.product(columns, keys, time)?;
        Ok(Array2::from_shape_vec((columns.len(), keys.len()), values).expect("one value per class and key"))
    }

    /// The labels of batch `id` if they came in the clear.
    pub(crate) fn clear_labels(&self, id: usize) -> Result<Option<&[u8]>, FeError> {
        Ok(match &self.current(id)?.labels {
            Labels::Clear(l) => Some(l),
            Labels::Encrypted(_) | Labels::Columns(_) => None,
        })
    }

    /// The encrypted labels (whose commitments FEBO keys are asked for).
    pub(crate) fn encrypted_labels(&self, id: usize) -> Result<&[febo::Ciphertext], FeError> {
        match &self.current(id)?.labels {
            Labels::Encrypted(l) => Ok(l),
            Labels::Clear(_) => Err(FeError::InvalidArgument("the labels came in the clear".into())),
            Labels::Columns(_) => {
                Err(FeError::InvalidArgument("hardened mode: the labels are only summed over the batch".into()))
            }
        }
    }

    /// The output deltas `â − ŷ` (`examples × classes`, the shape `dim`) from one FEBO
    /// subtraction key per encrypted label entry (each decrypts `ŷ − â`).
    pub(crate) fn label_deltas(
        &self,
        id: usize,
        keys: &[febo::FunctionKey],
        dim: (usize, usize),
    ) -> Result<Array2<i64>, FeError> {
        let differences = match &self.current(id)?.labels {
            Labels::Encrypted(l) if l.len() == keys.len() && keys.len() == dim.0 * dim.1 => {
                febo::decrypt_all(l, keys, &self.table)?
            }
            _ => return Err(FeError::InvalidArgument("one FEBO key per encrypted label entry".into())),
        };
        Ok(Array2::from_shape_vec(dim, differences.into_iter().map(|v| -v).collect())
            .expect("one difference per entry"))
    }
}

/// The three roles run in one process for `blindfold_nn::cryptonn::Trainer`: the client
/// encrypts a batch when the server needs it (every epoch again, with fresh randomness: the
/// server keeps no ciphertexts, which for all of MNIST would take about 16 GB in memory), the
/// server requests keys from the authority (bound to epoch, step and purpose) and decrypts.
/// Keeps the time breakdown.
pub struct FeProducts<'a> {
    client: TrainingClient<'a>,
    authority: &'a mut TrainingAuthority,
    server: TrainingServer,
    batches: &'a FixedBatches,
    epoch: u32,
    step: u32,
    /// Time spent so far.
    pub breakdown: Breakdown,
    /// Where the audit records go, batch by batch.
    audit_sink: Option<AuditSink<'a>>,
}

/// Takes the audit records of each batch's keys (e.g. appends them to a file).
pub type AuditSink<'a> = Box<dyn FnMut(&[AuditRecord]) -> Result<(), String> + 'a>;

impl<'a> FeProducts<'a> {
    /// The roles for `batches`, with products bounded by `table`.
    pub fn new(
        client: TrainingClient<'a>,
        authority: &'a mut TrainingAuthority,
        table: DlogTable,
        batches: &'a FixedBatches,
    ) -> Self {
        Self {
            client,
            authority,
            server: TrainingServer::new(table),
            batches,
            epoch: 0,
            step: 0,
            breakdown: Breakdown::default(),
            audit_sink: None,
        }
    }

    /// Hands the audit records to `sink` at the start of every batch (the previous batch's
    /// keys), so they need not be held in memory; [`Self::flush_audit`] hands the rest.
    pub fn set_audit_sink(&mut self, sink: AuditSink<'a>) {
        self.audit_sink = Some(sink);
    }

    /// Hands the records not yet handed to the sink (without a sink, they are dropped).
    ///
    /// # Errors
    /// The sink's error.
    pub fn flush_audit(&mut self) -> Result<(), String> {
        let records = self.authority.take_audit_records();
        match &mut self.audit_sink {
            Some(sink) if !records.is_empty() => sink(&records),
            _ => Ok(()),
        }
    }

    /// Starts epoch `epoch` (key requests carry it); resets the breakdown.
    pub fn start_epoch(&mut self, epoch: u32) {
        (self.epoch, self.step, self.breakdown) = (epoch, 0, Breakdown::default());
    }

    fn keys(
        &mut self,
        purpose: Purpose,
        vectors: impl Iterator<Item = Vec<i64>>,
    ) -> blindfold_nn::Result<Vec<FunctionKey>> {
        let start = Instant::now();
        let (epoch, batch) = (self.epoch, self.step);
        let keys = vectors
            .map(|vector| self.authority.issue(&KeyRequest { epoch, batch, purpose, vector }))
            .collect::<Result<_, _>>()
            .map_err(products_error)?;
        self.breakdown.key_derivation += start.elapsed();
        Ok(keys)
    }

    /// Keys for the non-zero rows of `keys` (zero-padded to `len`) only: a zero row's product
    /// is zero without one. Returns the rows' indices and the keys.
    fn nonzero_keys(
        &mut self,
        purpose: Purpose,
        keys: &Array2<i64>,
        len: usize,
    ) -> blindfold_nn::Result<(Vec<usize>, Vec<FunctionKey>)> {
        let rows: Vec<usize> = (0..keys.nrows()).filter(|&r| keys.row(r).iter().any(|&v| v != 0)).collect();
        let vectors = rows.iter().map(|&r| padded(keys.row(r), len));
        let issued = self.keys(purpose, vectors)?;
        Ok((rows, issued))
    }
}

/// A key row zero-padded to `len` entries (a batch shorter than the largest).
pub(crate) fn padded(row: ndarray::ArrayView1<'_, i64>, len: usize) -> Vec<i64> {
    let mut v = row.to_vec();
    v.resize(len, 0);
    v
}

/// The key vectors of an `(outputs, examples, length)` array, output-major.
pub(crate) fn key_rows(keys: &Array3<i64>) -> impl Iterator<Item = Vec<i64>> + '_ {
    keys.outer_iter().flat_map(|per_output| per_output.rows().into_iter().map(|y| y.to_vec()).collect::<Vec<_>>())
}

/// The trainer's error for a failure of the FE parties, keeping the cause's type (a
/// [`PolicyError`] stays one).
fn products_error(e: impl std::error::Error + Send + Sync + 'static) -> blindfold_nn::Error {
    blindfold_nn::Error::Products(Box::new(e))
}

impl FirstLayerProducts for FeProducts<'_> {
    fn forward(&mut self, batch: usize, weights: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        if self.audit_sink.is_some() {
            self.flush_audit().map_err(|e| blindfold_nn::Error::Products(format!("the audit log: {e}").into()))?;
        }
        self.step += 1;
        self.authority.rotate_before(weights.nrows()).map_err(products_error)?;
        let start = Instant::now();
        if self.authority.generations() != self.client.generations() {
            self.client.set_public_keys(&self.authority.public_keys()).map_err(products_error)?;
        }
        let encrypted = self.client.encrypt_batch(self.batches.get(batch)).map_err(products_error)?;
        self.breakdown.encrypt += start.elapsed();
        self.server.receive(batch, encrypted);
        let keys = self.keys(Purpose::Forward, weights.rows().into_iter().map(|r| r.to_vec()))?;
        self.server.forward(batch, &keys, &mut self.breakdown).map_err(products_error)
    }

    fn gradient(&mut self, batch: usize, deltas: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        let size = self.batches.batch_size();
        let keys = self.keys(Purpose::Gradient, deltas.rows().into_iter().map(|r| padded(r, size)))?;
        self.server.gradient(batch, &keys, &mut self.breakdown).map_err(products_error)
    }

    fn output_delta(&mut self, batch: usize, probabilities: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        if let Some(labels) = self.server.clear_labels(batch).map_err(products_error)? {
            return subtract_labels(probabilities, labels, self.client.encoding);
        }
        let labels = self.server.encrypted_labels(batch).map_err(products_error)?;
        if labels.len() != probabilities.len() {
            return Err(blindfold_nn::Error::Products(
                format!("{} encrypted label entries for {} probabilities", labels.len(), probabilities.len()).into(),
            ));
        }
        let start = Instant::now();
        let entries: Vec<(&febo::Ciphertext, i64)> = labels.iter().zip(probabilities.iter().copied()).collect();
        let keys = self.authority.issue_label_keys(self.epoch, self.step, &entries).map_err(products_error)?;
        self.breakdown.key_derivation += start.elapsed();
        let start = Instant::now();
        let deltas = self.server.label_deltas(batch, &keys, probabilities.dim()).map_err(products_error)?;
        // FEBO decryption and its discrete log together (a few hundred per batch).
        self.breakdown.decrypt += start.elapsed();
        Ok(deltas)
    }

    fn summed_products(&mut self, batch: usize, keys: &Array3<i64>) -> blindfold_nn::Result<Vec<i64>> {
        let issued = self.keys(Purpose::ConvGradient, key_rows(keys))?;
        self.server.summed_products(batch, &issued, &mut self.breakdown).map_err(products_error)
    }

    fn label_sums(&mut self, batch: usize, keys: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        let (rows, issued) = self.nonzero_keys(Purpose::LabelSums, keys, self.batches.batch_size())?;
        let sums = self.server.label_sums(batch, &issued, &mut self.breakdown).map_err(products_error)?;
        let mut out = Array2::zeros((sums.nrows(), keys.nrows()));
        for (i, &r) in rows.iter().enumerate() {
            out.column_mut(r).assign(&sums.column(i));
        }
        Ok(out)
    }

    fn gradient_with_labels(&mut self, batch: usize, keys: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        let (rows, issued) = self.nonzero_keys(Purpose::Gradient, keys, keys.ncols())?;
        let grad = self.server.gradient(batch, &issued, &mut self.breakdown).map_err(products_error)?;
        let mut out = Array2::zeros((keys.nrows(), grad.ncols()));
        for (i, &r) in rows.iter().enumerate() {
            out.row_mut(r).assign(&grad.row(i));
        }
        Ok(out)
    }
}
