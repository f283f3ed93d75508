//! The key authority: the master secret keys, the policy, the audit log.

use blindfold_fe::ipfe::{self, FunctionKey, MasterPublicKey, MasterSecretKey};
use blindfold_fe::FeError;
use blindfold_math::primes::is_prime;
use blindfold_math::Modulus;
use rand_core::Rng;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// What a function key is for: one of the products CryptoNN moves through FE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Purpose {
    /// A row of `W1`, for the first layer's forward product `W1·x`.
    Forward,
    /// A row of `δ1`, for the first layer's gradient `δ1·X` (over the batch's feature columns).
    Gradient,
    /// A column of `[1 | H]` over the batch, for the hardened mode's label sums `YᵀH`.
    LabelSums,
    /// One example's deltas placed at the pixels one kernel entry reads, for a convolutional
    /// first layer's gradient (on the forward key pair, the examples' own ciphertexts). The
    /// server sums these products over the batch before the discrete logarithm; it could
    /// decrypt each example's term.
    ConvGradient,
    /// A FEBO subtraction key for one entry `ŷ − a` of the output deltas (faithful mode): one
    /// per example and class, which reveals the labels to the server (CryptoNN does this).
    LabelDelta,
}

/// A request for one function key, bound to where in training it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// Training epoch.
    pub epoch: u32,
    /// Mini-batch within the epoch.
    pub batch: u32,
    /// Which product the key serves.
    pub purpose: Purpose,
    /// The key vector `y` (fixed-point integers).
    pub vector: Vec<i64>,
}

/// The limits the authority enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Largest `|y_i|` accepted.
    pub max_entry: i64,
    /// Fewest non-zero entries a vector must have.
    pub min_nonzero: usize,
    /// Largest dimension the issued vectors may span under one key pair: at most `n − 1`
    /// (at `n` the master secret key can be solved for).
    pub max_rank: usize,
    /// Most keys per (epoch, batch, purpose).
    pub max_keys_per_batch: usize,
}

impl KeyPolicy {
    /// Defaults for vectors of length `n`: entries up to `10^6` (six digits), at least
    /// `n/4` non-zero entries, span up to `n − 1`, 1024 keys per (epoch, batch, purpose).
    pub fn for_length(n: usize) -> Self {
        Self {
            max_entry: 1_000_000,
            min_nonzero: (n / 4).max(1),
            max_rank: n.saturating_sub(1),
            max_keys_per_batch: 1024,
        }
    }

    /// The rules that look at the request alone (`count` keys already issued for its slot).
    fn check(&self, request: &KeyRequest, count: usize) -> Result<(), PolicyError> {
        let v = &request.vector;
        if let Some((index, &value)) =
            v.iter().enumerate().find(|(_, x)| x.unsigned_abs() > self.max_entry.unsigned_abs())
        {
            return Err(PolicyError::EntryOutOfBounds { index, value, bound: self.max_entry });
        }
        let nonzero = v.iter().filter(|&&x| x != 0).count();
        if nonzero < self.min_nonzero {
            return Err(PolicyError::TooSparse { nonzero, min: self.min_nonzero });
        }
        if count >= self.max_keys_per_batch {
            return Err(PolicyError::RateLimited {
                epoch: request.epoch,
                batch: request.batch,
                purpose: request.purpose,
                limit: self.max_keys_per_batch,
            });
        }
        Ok(())
    }
}

/// Why a key request was refused. A refused request issues nothing and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The vector has the wrong length.
    #[error("key vector of length {actual}, the key pair is for length {expected}")]
    Length {
        /// The key pair's length.
        expected: usize,
        /// The request's.
        actual: usize,
    },
    /// An entry is larger than the policy allows.
    #[error("entry {index} of the key vector is {value}, beyond the bound ±{bound}")]
    EntryOutOfBounds {
        /// Its index.
        index: usize,
        /// Its value.
        value: i64,
        /// The bound.
        bound: i64,
    },
    /// Too sparse: such vectors isolate individual inputs.
    #[error("key vector has {nonzero} non-zero entries, the policy requires at least {min}")]
    TooSparse {
        /// Non-zero entries.
        nonzero: usize,
        /// The minimum.
        min: usize,
    },
    /// Issuing it would let the issued keys span more than the policy allows.
    #[error(
        "issuing this key would raise the span of keys issued under key pair {generation} to {rank} \
         (limit {limit}): rotate the key pair (and re-encrypt) first"
    )]
    WouldSpan {
        /// The current key pair.
        generation: u32,
        /// The span's dimension with this key.
        rank: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many keys for one (epoch, batch, purpose).
    #[error("already {limit} keys for epoch {epoch}, batch {batch}, {purpose:?}: the policy's limit")]
    RateLimited {
        /// Epoch.
        epoch: u32,
        /// Batch.
        batch: u32,
        /// Purpose.
        purpose: Purpose,
        /// The limit.
        limit: usize,
    },
    /// A request for a batch before one the authority has already served.
    #[error("request for epoch {epoch}, batch {batch} after epoch {latest_epoch}, batch {latest_batch} was served")]
    Stale {
        /// Requested epoch.
        epoch: u32,
        /// Requested batch.
        batch: u32,
        /// Latest epoch served.
        latest_epoch: u32,
        /// Latest batch served.
        latest_batch: u32,
    },
    /// FE or randomness failure.
    #[error(transparent)]
    Fe(#[from] FeError),
}

/// The FEBO subtraction key for `ŷ − a` on the label entry `ct`, and the SHA-256 of what it
/// was derived for (the commitment, the operation, `a`) for the audit log. With
/// [`KeyAuthority::issue`] the only places function keys are derived
/// (`tests/key_derivation.rs` checks the sources).
pub(crate) fn derive_label_key(
    msk: &blindfold_fe::febo::MasterSecretKey,
    ct: &blindfold_fe::febo::Ciphertext,
    a: i64,
) -> (blindfold_fe::febo::FunctionKey, [u8; 32]) {
    let key = msk.derive(ct.commitment(), blindfold_fe::febo::Operation::Sub, a);
    let mut h = Sha256::new();
    h.update(ct.commitment().compress().as_bytes());
    h.update(b"sub");
    h.update(a.to_le_bytes());
    (key, h.finalize().into())
}

/// SHA-256 of a key vector in its sparse form: its length (`u32`), then each non-zero entry's
/// index (`u32`) and value (`i64`), little-endian, in order. One digest per vector, and about
/// 20 times fewer bytes to hash than the dense form for a convolution's keys (26 of 785
/// entries non-zero).
pub fn vector_digest(v: &[i64]) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(4 + 12 * v.len().min(64));
    bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for (i, &x) in v.iter().enumerate().filter(|(_, &x)| x != 0) {
        bytes.extend_from_slice(&(i as u32).to_le_bytes());
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Sha256::digest(&bytes).into()
}

/// One issued key, as the audit log records it (the vector by its SHA-256 digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number over the authority's lifetime.
    pub sequence: u64,
    /// Key pair generation the key belongs to.
    pub generation: u32,
    /// Epoch, batch and purpose of the request.
    pub epoch: u32,
    /// Batch of the request.
    pub batch: u32,
    /// Purpose of the request.
    pub purpose: Purpose,
    /// The vector's digest ([`vector_digest`]).
    pub vector_sha256: [u8; 32],
    /// Dimension of the span of this generation's keys after this one (0 when the authority
    /// has no policy and does not track it).
    pub rank_after: usize,
}

/// The span of the issued vectors, tracked modulo a secret random 61-bit prime `p`: row
/// echelon form with unit pivots. Its dimension never exceeds the span's over the rationals,
/// which bounds the span modulo the group order; it is lower only if `p` divides a minor of the
/// issued vectors, which a requester who does not know `p` hits with probability about `2^-47`
/// even for vectors of length 785 with six-digit entries.
struct Span {
    p: Modulus,
    rows: Vec<(usize, Vec<u64>)>,
}

impl Span {
    fn new<R: Rng>(rng: &mut R) -> Self {
        let p = loop {
            let candidate = (rng.next_u64() >> 3) | (1 << 60) | 1;
            if is_prime(candidate) {
                break candidate;
            }
        };
        Self { p: Modulus::new(p).expect("a 61-bit prime"), rows: Vec::new() }
    }

    /// `v` reduced against the rows: zero iff `v` is in the span.
    fn reduce(&self, v: &[i64]) -> Vec<u64> {
        let p = &self.p;
        let mut r: Vec<u64> = v.iter().map(|&x| p.reduce_i64(x)).collect();
        for (pivot, row) in &self.rows {
            let f = r[*pivot];
            if f != 0 {
                for (a, &b) in r.iter_mut().zip(row) {
                    *a = p.sub(*a, p.mul(f, b));
                }
            }
        }
        r
    }

    /// Adds a reduced, non-zero vector.
    fn insert(&mut self, mut r: Vec<u64>) {
        let p = &self.p;
        let pivot = r.iter().position(|&x| x != 0).expect("non-zero");
        let inv = p.inv(r[pivot]).expect("p is prime");
        r.iter_mut().for_each(|a| *a = p.mul(*a, inv));
        self.rows.push((pivot, r));
    }
}

/// The key authority: the FE master secret key, the policy, the span of issued keys and the
/// audit log. Never gives out the master secret key.
pub struct KeyAuthority {
    /// `None`: CryptoNN as published, no policy.
    policy: Option<KeyPolicy>,
    n: usize,
    msk: MasterSecretKey,
    mpk: MasterPublicKey,
    generation: u32,
    span: Span,
    per_batch: HashMap<(u32, u32, Purpose), usize>,
    latest: Option<(u32, u32)>,
    log: Vec<AuditEntry>,
}

impl KeyAuthority {
    /// An authority for vectors of length `n` with a fresh key pair (generation 0).
    ///
    /// # Errors
    /// [`PolicyError::Fe`] for `n = 0` or a failing random source; a policy whose span limit
    /// reaches `n` is refused as [`FeError::InvalidArgument`].
    pub fn new(n: usize, policy: KeyPolicy) -> Result<Self, PolicyError> {
        if policy.max_rank >= n {
            return Err(FeError::InvalidArgument(format!(
                "a span limit of {} for length {n} would let the keys reveal the master secret key",
                policy.max_rank
            ))
            .into());
        }
        Self::with_policy(n, Some(policy))
    }

    /// An authority that issues every key asked for, for vectors of length `n`: CryptoNN as
    /// published. Keys for `n` independent vectors reveal the master secret key, which the
    /// first layer's keys reach within a few batches; the audit log is still kept.
    ///
    /// # Errors
    /// [`PolicyError::Fe`] for `n = 0` or a failing random source.
    pub fn unrestricted(n: usize) -> Result<Self, PolicyError> {
        Self::with_policy(n, None)
    }

    fn with_policy(n: usize, policy: Option<KeyPolicy>) -> Result<Self, PolicyError> {
        let (msk, mpk) = ipfe::setup(n)?;
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        Ok(Self {
            policy,
            n,
            msk,
            mpk,
            generation: 0,
            span: Span::new(&mut rng),
            per_batch: HashMap::new(),
            latest: None,
            log: Vec::new(),
        })
    }

    /// The current master public key and its generation: clients encrypt with it.
    pub fn public_key(&self) -> (u32, &MasterPublicKey) {
        (self.generation, &self.mpk)
    }

    /// Keys that can still be issued under the current key pair (dimensions left in the span;
    /// unlimited without a policy).
    pub fn remaining_rank(&self) -> usize {
        self.policy.as_ref().map_or(usize::MAX, |p| p.max_rank - self.span.rows.len())
    }

    /// Every key issued so far, in order.
    pub fn audit_log(&self) -> &[AuditEntry] {
        &self.log
    }

    /// A new key pair (generation + 1) with an empty span; keys and ciphertexts of the old
    /// one stop working together with the new one.
    ///
    /// # Errors
    /// [`PolicyError::Fe`] if the random source fails.
    pub fn rotate(&mut self) -> Result<(), PolicyError> {
        let (msk, mpk) = ipfe::setup(self.n)?;
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        (self.msk, self.mpk, self.span) = (msk, mpk, Span::new(&mut rng));
        self.generation += 1;
        Ok(())
    }

    /// Issues the key for `request` if the policy allows it, and logs it.
    ///
    /// # Errors
    /// The [`PolicyError`] naming the first rule the request breaks; nothing is issued or
    /// recorded then.
    pub fn issue(&mut self, request: &KeyRequest) -> Result<FunctionKey, PolicyError> {
        let v = &request.vector;
        if v.len() != self.n {
            return Err(PolicyError::Length { expected: self.n, actual: v.len() });
        }
        if let Some((latest_epoch, latest_batch)) = self.latest {
            if (request.epoch, request.batch) < (latest_epoch, latest_batch) {
                return Err(PolicyError::Stale {
                    epoch: request.epoch,
                    batch: request.batch,
                    latest_epoch,
                    latest_batch,
                });
            }
        }
        let slot = (request.epoch, request.batch, request.purpose);
        let count = self.per_batch.get(&slot).copied().unwrap_or(0);
        let (reduced, rank) = match &self.policy {
            Some(p) => {
                p.check(request, count)?;
                let reduced = self.span.reduce(v);
                let rank = self.span.rows.len() + usize::from(reduced.iter().any(|&x| x != 0));
                if rank > p.max_rank {
                    return Err(PolicyError::WouldSpan { generation: self.generation, rank, limit: p.max_rank });
                }
                (Some(reduced), rank)
            }
            None => (None, 0),
        };
        let key = self.msk.derive(v)?;
        if let Some(reduced) = reduced.filter(|r| r.iter().any(|&x| x != 0)) {
            self.span.insert(reduced);
        }
        self.per_batch.insert(slot, count + 1);
        self.latest = Some((request.epoch, request.batch));
        self.log.push(AuditEntry {
            sequence: self.log.len() as u64,
            generation: self.generation,
            epoch: request.epoch,
            batch: request.batch,
            purpose: request.purpose,
            vector_sha256: vector_digest(v),
            rank_after: rank,
        });
        Ok(key)
    }
}
