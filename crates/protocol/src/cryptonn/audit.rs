//! The training authority's audit log as a hash chain, in a fixed binary form that can be
//! persisted and verified offline.
//!
//! Every function key the authority issues — forward, gradient, label-sum, convolution
//! gradient and the FEBO label keys — becomes one [`AuditRecord`] of [`RECORD_LEN`] bytes:
//! sequence number, purpose, key-pair generation, epoch, batch, the span's dimension after
//! the key, the SHA-256 of what the key was derived for, and `chain`, the SHA-256 of the
//! previous record's `chain` and this record's other fields (the first links to
//! [`genesis`]). A file is [`AUDIT_MAGIC`] followed by the records. Changing, dropping,
//! inserting or reordering any record breaks every later link, which [`AuditVerifier`] finds
//! and names; the log's last `chain` value commits to all of it.
//!
//! The chain proves the log's integrity to whoever trusts its last value (or the authority
//! that published it); it does not stop an authority from lying about what it issued.

use super::Purpose;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// First bytes of an audit log file (the format's version is in them).
pub const AUDIT_MAGIC: &[u8; 8] = b"BFAUDIT1";

/// Bytes of one record: sequence (8), purpose (1), generation, epoch, batch, rank after
/// (4 each), the key's SHA-256 (32), the chain (32); integers little-endian.
pub const RECORD_LEN: usize = 8 + 1 + 4 * 4 + 32 + 32;

/// What the first record's chain links to: SHA-256 of `"blindfold cryptonn audit log v1"`.
pub fn genesis() -> [u8; 32] {
    Sha256::digest(b"blindfold cryptonn audit log v1").into()
}

/// One issued function key, as the audit log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log, from 0.
    pub sequence: u64,
    /// What the key serves.
    pub purpose: Purpose,
    /// Generation of the key pair it belongs to.
    pub generation: u32,
    /// Epoch of the request.
    pub epoch: u32,
    /// Batch of the request.
    pub batch: u32,
    /// The span's dimension after this key (0 where the authority does not track it).
    pub rank_after: u32,
    /// SHA-256 of what the key was derived for: the vector for inner-product keys
    /// ([`super::vector_digest`]); the commitment, the operation and the operand
    /// for FEBO keys.
    pub key_sha256: [u8; 32],
    /// SHA-256 of the previous record's chain and this record's other fields.
    pub chain: [u8; 32],
}

fn purpose_byte(p: Purpose) -> u8 {
    match p {
        Purpose::Forward => 0,
        Purpose::Gradient => 1,
        Purpose::LabelSums => 2,
        Purpose::ConvGradient => 3,
        Purpose::LabelDelta => 4,
    }
}

fn purpose_of(b: u8) -> Option<Purpose> {
    Some(match b {
        0 => Purpose::Forward,
        1 => Purpose::Gradient,
        2 => Purpose::LabelSums,
        3 => Purpose::ConvGradient,
        4 => Purpose::LabelDelta,
        _ => return None,
    })
}

impl AuditRecord {
    /// The fields the chain covers (all but `chain`).
    fn body(&self) -> [u8; RECORD_LEN - 32] {
        let mut b = [0u8; RECORD_LEN - 32];
        b[..8].copy_from_slice(&self.sequence.to_le_bytes());
        b[8] = purpose_byte(self.purpose);
        for (i, v) in [self.generation, self.epoch, self.batch, self.rank_after].into_iter().enumerate() {
            b[9 + 4 * i..13 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[25..57].copy_from_slice(&self.key_sha256);
        b
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..RECORD_LEN - 32].copy_from_slice(&self.body());
        out[RECORD_LEN - 32..].copy_from_slice(&self.chain);
        out
    }

    /// A record from its bytes (its chain is not checked here: [`AuditVerifier`] does).
    ///
    /// # Errors
    /// [`AuditError::Purpose`] for an unknown purpose byte.
    pub fn from_bytes(bytes: &[u8; RECORD_LEN]) -> Result<Self, AuditError> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let sequence = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let purpose = purpose_of(bytes[8]).ok_or(AuditError::Purpose { sequence, byte: bytes[8] })?;
        Ok(Self {
            sequence,
            purpose,
            generation: u32_at(9),
            epoch: u32_at(13),
            batch: u32_at(17),
            rank_after: u32_at(21),
            key_sha256: bytes[25..57].try_into().expect("32 bytes"),
            chain: bytes[57..].try_into().expect("32 bytes"),
        })
    }
}

fn link(previous: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(body);
    h.finalize().into()
}

/// The authority's side: appends records to the chain and keeps them until taken.
pub(crate) struct AuditChain {
    head: [u8; 32],
    next: u64,
    pending: Vec<AuditRecord>,
}

impl AuditChain {
    pub(crate) fn new() -> Self {
        Self { head: genesis(), next: 0, pending: Vec::new() }
    }

    /// Appends a record for a key (its `sequence` and `chain` are filled in here).
    pub(crate) fn append(&mut self, mut record: AuditRecord) {
        record.sequence = self.next;
        record.chain = link(&self.head, &record.body());
        self.head = record.chain;
        self.next += 1;
        self.pending.push(record);
    }

    /// The records appended since the last call, in order.
    pub(crate) fn take(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.pending)
    }
}

/// Why an audit log does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file does not start with [`AUDIT_MAGIC`].
    #[error("not a blindfold audit log (the first 8 bytes are not {:?})", String::from_utf8_lossy(AUDIT_MAGIC))]
    Magic,
    /// A record's purpose byte names no purpose.
    #[error("record {sequence}: purpose byte {byte} names no purpose")]
    Purpose {
        /// The record's sequence field.
        sequence: u64,
        /// The byte.
        byte: u8,
    },
    /// A record out of order (one dropped, inserted or moved).
    #[error("record {position} of the file carries sequence number {found}: records are missing, added or reordered")]
    Sequence {
        /// Its position in the file, from 0.
        position: u64,
        /// Its sequence field.
        found: u64,
    },
    /// A record whose chain does not follow from the previous one.
    #[error("record {sequence}: the hash chain breaks here (this record or an earlier one was changed)")]
    Chain {
        /// Its sequence number.
        sequence: u64,
    },
    /// The file ends inside a record.
    #[error("the log ends {extra} bytes into a record after record {records}: truncated")]
    Truncated {
        /// Complete records before the end.
        records: u64,
        /// Bytes of the incomplete one.
        extra: usize,
    },
}

/// Checks a log record by record (a log of millions of keys need not be held in memory) and
/// counts keys per purpose and generation.
pub struct AuditVerifier {
    head: [u8; 32],
    next: u64,
    counts: BTreeMap<(Purpose, u32), u64>,
}

impl Default for AuditVerifier {
    fn default() -> Self {
        Self { head: genesis(), next: 0, counts: BTreeMap::new() }
    }
}

impl AuditVerifier {
    /// A verifier expecting the first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next record.
    ///
    /// # Errors
    /// The first [`AuditError`] this record shows; the verifier is unchanged then.
    pub fn push(&mut self, bytes: &[u8; RECORD_LEN]) -> Result<AuditRecord, AuditError> {
        let record = AuditRecord::from_bytes(bytes)?;
        if record.sequence != self.next {
            return Err(AuditError::Sequence { position: self.next, found: record.sequence });
        }
        if link(&self.head, &record.body()) != record.chain {
            return Err(AuditError::Chain { sequence: record.sequence });
        }
        self.head = record.chain;
        self.next += 1;
        *self.counts.entry((record.purpose, record.generation)).or_insert(0) += 1;
        Ok(record)
    }

    /// Records verified so far.
    pub fn records(&self) -> u64 {
        self.next
    }

    /// The last record's chain value (what the whole log so far commits to).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Keys per (purpose, key-pair generation), verified so far.
    pub fn counts(&self) -> &BTreeMap<(Purpose, u32), u64> {
        &self.counts
    }
}

/// Verifies a whole log held in memory ([`AUDIT_MAGIC`], then records).
///
/// # Errors
/// The first [`AuditError`].
pub fn verify_log(bytes: &[u8]) -> Result<AuditVerifier, AuditError> {
    let body = bytes.strip_prefix(AUDIT_MAGIC.as_slice()).ok_or(AuditError::Magic)?;
    let mut verifier = AuditVerifier::new();
    let mut records = body.chunks_exact(RECORD_LEN);
    for r in &mut records {
        verifier.push(r.try_into().expect("RECORD_LEN bytes"))?;
    }
    if !records.remainder().is_empty() {
        return Err(AuditError::Truncated { records: verifier.records(), extra: records.remainder().len() });
    }
    Ok(verifier)
}
