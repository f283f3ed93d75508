//! Inner-product functional encryption from DDH (Abdalla–Bourse–De Caro–Pointcheval,
//! PKC 2015, §3), in the prime-order ristretto255 group with generator `g` (the standard
//! basepoint).
//!
//! * Setup(n): `s_i ← Z_ℓ`, master secret key `(s_i)`, master public key `h_i = g^{s_i}`.
//! * Encrypt(x): `r ← Z_ℓ`, `ct_0 = g^r`, `ct_i = h_i^r · g^{x_i}`.
//! * KeyDerive(y): `sk_y = ⟨s, y⟩ mod ℓ`.
//! * Decrypt: `g^{⟨x,y⟩} = Π ct_i^{y_i} / ct_0^{sk_y}`, then a bounded discrete log
//!   ([`DlogTable`]).
//!
//! Group operations are written additively below (`r·G` for `g^r`). Entries of `x` and `y`
//! are signed integers (negative values are negative exponents).

use crate::{DlogTable, FeError, Result};
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rayon::prelude::*;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// A signed integer as a scalar, without a branch on its sign (encryption is constant-time).
pub(crate) fn scalar_from_i64(v: i64) -> Scalar {
    let magnitude = Scalar::from(v.unsigned_abs());
    Scalar::conditional_select(&magnitude, &-magnitude, Choice::from((v as u64 >> 63) as u8))
}

/// The master secret key `s ∈ Z_ℓ^n`: held by the key authority only. Zeroized on drop; no
/// `Debug`, no serialization.
pub struct MasterSecretKey {
    s: Vec<Scalar>,
}

impl Drop for MasterSecretKey {
    fn drop(&mut self) {
        self.s.zeroize();
    }
}

/// The master public key `h_i = s_i·G`, `n` group elements: anyone can encrypt with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterPublicKey {
    pub(crate) h: Vec<RistrettoPoint>,
}

/// Limbs of `sk_y` in decryption: `sk_y·ct_0 = Σ_k sk_k·(2^{32k}·ct_0)` with 32-bit `sk_k`.
pub(crate) const LIMBS: usize = 8;

/// An encryption of a vector of length `n`: `ct_0 = r·G`, `ct_i = r·h_i + x_i·G`, and the
/// precomputed `2^{32k}·ct_0` for `k = 1..8` (public functions of `ct_0`, made by the
/// encryptor with seven fixed-base multiplications): they turn the decryptor's `sk_y·ct_0`
/// into eight 32-bit multiplications sharing 33 doublings instead of 253.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) ct0: RistrettoPoint,
    pub(crate) ct0_powers: [RistrettoPoint; LIMBS - 1],
    pub(crate) cts: Vec<RistrettoPoint>,
}

/// A function key for the vector `y`: lets its holder compute `⟨x, y⟩` from an encryption of
/// any `x`, and nothing else about `x`. Holds `y` in the clear (keys are not function-hiding);
/// `sk_y` is zeroized on drop.
pub struct FunctionKey {
    pub(crate) y: Vec<i64>,
    pub(crate) sk: Scalar,
}

impl Drop for FunctionKey {
    fn drop(&mut self) {
        self.sk.zeroize();
    }
}

/// Shows the length only: `sk_y` is never printed.
impl std::fmt::Debug for FunctionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionKey").field("len", &self.y.len()).finish_non_exhaustive()
    }
}

impl FunctionKey {
    /// The vector `y` the key is for.
    pub fn vector(&self) -> &[i64] {
        &self.y
    }

    /// `sk_y` as 32 canonical little-endian bytes (zeroized when dropped): with `y`, which its
    /// requester already has, all a key is on the wire.
    pub fn sk_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.sk.to_bytes())
    }

    /// The key for `y` whose `sk_y` has the canonical bytes `sk` ([`FunctionKey::sk_bytes`]):
    /// how the requester of a key rebuilds it from the authority's reply. A wrong `sk` gives
    /// a key that decrypts to garbage (a value out of the discrete-log bound, almost surely).
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] for bytes that are not a canonical scalar.
    pub fn from_parts(y: Vec<i64>, sk: &[u8; 32]) -> Result<Self> {
        let sk = Option::from(Scalar::from_canonical_bytes(*sk))
            .ok_or_else(|| FeError::InvalidArgument("a function key's scalar is not canonical".into()))?;
        Ok(Self { y, sk })
    }
}

/// Generates a master key pair for vectors of length `n`.
///
/// # Errors
/// [`FeError::InvalidArgument`] for `n = 0`; [`FeError::Rng`] if the operating system's random
/// source fails.
pub fn setup(n: usize) -> Result<(MasterSecretKey, MasterPublicKey)> {
    let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
    setup_with_rng(n, &mut rng)
}

/// [`setup`] with a given generator (reproducible tests).
///
/// # Errors
/// [`FeError::InvalidArgument`] for `n = 0`.
pub fn setup_with_rng(n: usize, rng: &mut impl rand_core::CryptoRng) -> Result<(MasterSecretKey, MasterPublicKey)> {
    if n == 0 {
        return Err(FeError::InvalidArgument("vectors of length 0".into()));
    }
    let s: Vec<Scalar> = (0..n).map(|_| Scalar::random(rng)).collect();
    let h = s.iter().map(RistrettoPoint::mul_base).collect();
    Ok((MasterSecretKey { s }, MasterPublicKey { h }))
}

fn check_len(expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(FeError::Length { expected, actual })
    }
}

impl MasterPublicKey {
    /// Length `n` of the vectors.
    pub fn len(&self) -> usize {
        self.h.len()
    }

    /// Whether the key is for vectors of length 0 (never, for a key from [`setup`]).
    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// Encrypts `x` (length `n`). Constant-time in `x` and the randomness: fixed-base and
    /// variable-base scalar multiplications of curve25519-dalek, no branch on a value.
    /// Cost: `n + 1` fixed-base and `n` variable-base multiplications.
    ///
    /// # Errors
    /// [`FeError::Length`] if `x` has the wrong length; [`FeError::Rng`].
    pub fn encrypt(&self, x: &[i64]) -> Result<Ciphertext> {
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        self.encrypt_with_rng(x, &mut rng)
    }

    /// [`MasterPublicKey::encrypt`] with a given generator.
    ///
    /// # Errors
    /// [`FeError::Length`].
    pub fn encrypt_with_rng(&self, x: &[i64], rng: &mut impl rand_core::CryptoRng) -> Result<Ciphertext> {
        check_len(self.h.len(), x.len())?;
        Ok(encrypt_with(x, rng, |i, r| self.h[i] * r))
    }

    /// An [`Encryptor`] for this key: a fixed-base table per `h_i` (about 30 KB each, 80 KB
    /// with IFMA), built in parallel, for a client that encrypts many vectors.
    pub fn encryptor(&self) -> Encryptor {
        Encryptor::new(self)
    }
}

/// `ct_0 = r·G`, its powers, and `ct_i = r·h_i + x_i·G` with `r·h_i` from `r_times_h(i, r)`.
fn encrypt_with(
    x: &[i64],
    rng: &mut impl rand_core::CryptoRng,
    r_times_h: impl Fn(usize, &Scalar) -> RistrettoPoint + Sync,
) -> Ciphertext {
    let mut r = Scalar::random(rng);
    let ct0 = RistrettoPoint::mul_base(&r);
    let two32 = Scalar::from(1u64 << 32);
    let mut rk = r;
    let ct0_powers = [0; LIMBS - 1].map(|_| {
        rk *= two32;
        RistrettoPoint::mul_base(&rk)
    });
    rk.zeroize();
    // Whether every entry is below 2^32 in magnitude decides the method for the whole vector,
    // so the choice reveals only that (CryptoNN's entries are far smaller).
    let small = x.iter().all(|v| v.unsigned_abs() < 1 << 32);
    let cts = x
        .par_iter()
        .enumerate()
        .map(|(i, &xi)| {
            let xg = if small { small_mul_base(xi) } else { RistrettoPoint::mul_base(&scalar_from_i64(xi)) };
            r_times_h(i, &r) + xg
        })
        .collect();
    r.zeroize();
    Ciphertext { ct0, ct0_powers, cts }
}

/// `d·16^j·G` for `j < 8`, `d < 16`.
fn small_base_table() -> &'static [[RistrettoPoint; 16]; 8] {
    static TABLE: std::sync::OnceLock<[[RistrettoPoint; 16]; 8]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|j| std::array::from_fn(|d| RistrettoPoint::mul_base(&Scalar::from((d as u64) << (4 * j)))))
    })
}

/// `x·G` for `|x| < 2^32` in constant time: eight radix-16 digits of `|x|`, each selected from
/// its table row by a full constant-time scan, summed (complete addition formulas), then
/// negated by a conditional select. About five times cheaper than `mul_base`.
fn small_mul_base(x: i64) -> RistrettoPoint {
    let table = small_base_table();
    let m = x.unsigned_abs();
    let mut acc = RistrettoPoint::identity();
    for (j, row) in table.iter().enumerate() {
        let digit = ((m >> (4 * j)) & 15) as u8;
        let mut selected = RistrettoPoint::identity();
        for (d, point) in row.iter().enumerate().skip(1) {
            selected.conditional_assign(point, digit.ct_eq(&(d as u8)));
        }
        acc += selected;
    }
    RistrettoPoint::conditional_select(&acc, &-acc, Choice::from((x as u64 >> 63) as u8))
}

/// Encryption under one master public key with precomputed fixed-base tables of the `h_i`
/// ([`MasterPublicKey::encryptor`]) for a client that encrypts many vectors.
///
/// With AVX-512 IFMA the tables are the constant-time ones of `crates/fe/src/lanes.rs` and
/// [`Encryptor::encrypt_batch`] encrypts eight vectors at once (single
/// [`Encryptor::encrypt`] calls then use the public key's variable-base multiplications);
/// otherwise dalek's `RistrettoBasepointTable` per `h_i`, about three times cheaper than a
/// variable-base multiplication. Same constant-time guarantees either way: table lookups read
/// every entry.
pub struct Encryptor {
    mpk: MasterPublicKey,
    tables: Tables,
}

enum Tables {
    Dalek(Vec<RistrettoBasepointTable>),
    #[cfg(target_arch = "x86_64")]
    Lanes {
        ifma: crate::lanes::Ifma,
        h: Vec<crate::lanes::SecretTable>,
    },
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor").field("len", &self.mpk.len()).finish()
    }
}

/// The constant-time table of the basepoint in lanes (built once).
#[cfg(target_arch = "x86_64")]
fn basepoint_lane_table(s: crate::lanes::Ifma) -> &'static crate::lanes::SecretTable {
    static TABLE: std::sync::OnceLock<crate::lanes::SecretTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let g = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        s.vectorize(|| s.secret_tables(&[g], s.constants()).remove(0))
    })
}

impl Encryptor {
    fn new(mpk: &MasterPublicKey) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(ifma) = crate::lanes::Ifma::try_new() {
            let c = ifma.constants();
            let h = mpk
                .h
                .par_chunks(crate::lanes::LANES)
                .flat_map_iter(|chunk| ifma.vectorize(|| ifma.secret_tables(chunk, c)))
                .collect();
            return Self { mpk: mpk.clone(), tables: Tables::Lanes { ifma, h } };
        }
        Self {
            mpk: mpk.clone(),
            tables: Tables::Dalek(mpk.h.par_iter().map(RistrettoBasepointTable::create).collect()),
        }
    }

    /// Length `n` of the vectors.
    pub fn len(&self) -> usize {
        self.mpk.len()
    }

    /// Whether the key is for vectors of length 0.
    pub fn is_empty(&self) -> bool {
        self.mpk.is_empty()
    }

    /// As [`MasterPublicKey::encrypt`].
    ///
    /// # Errors
    /// [`FeError::Length`] if `x` has the wrong length; [`FeError::Rng`].
    pub fn encrypt(&self, x: &[i64]) -> Result<Ciphertext> {
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        self.encrypt_with_rng(x, &mut rng)
    }

    /// As [`MasterPublicKey::encrypt_with_rng`].
    ///
    /// # Errors
    /// [`FeError::Length`].
    pub fn encrypt_with_rng(&self, x: &[i64], rng: &mut impl rand_core::CryptoRng) -> Result<Ciphertext> {
        match &self.tables {
            Tables::Dalek(tables) => {
                check_len(tables.len(), x.len())?;
                Ok(encrypt_with(x, rng, |i, r| &tables[i] * r))
            }
            #[cfg(target_arch = "x86_64")]
            Tables::Lanes { .. } => self.mpk.encrypt_with_rng(x, rng),
        }
    }

    /// Encrypts many vectors for the secure matrix product ([`CiphertextBatch::product`]).
    ///
    /// # Errors
    /// [`FeError::Length`] if a vector has the wrong length; [`FeError::Rng`].
    pub fn encrypt_batch(&self, xs: &[Vec<i64>]) -> Result<CiphertextBatch> {
        let mut rng = blindfold_math::sampler::os_rng().map_err(|e| FeError::Rng(e.to_string()))?;
        self.encrypt_batch_with_rng(xs, &mut rng)
    }

    /// [`Encryptor::encrypt_batch`] with a given generator. With IFMA: per group of eight
    /// vectors, eight random `r`, `ct_0 = r·G` and `ct_i = r·h_i + x_i·G` by the constant-time
    /// lane tables (signed radix-16 digits; `x_i` in 9 windows when every entry of the batch
    /// is below `2^32` in magnitude, else 17: the choice reveals only that).
    ///
    /// # Errors
    /// As [`Encryptor::encrypt_batch`].
    pub fn encrypt_batch_with_rng(
        &self,
        xs: &[Vec<i64>],
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<CiphertextBatch> {
        let n = self.mpk.len();
        xs.iter().try_for_each(|x| check_len(n, x.len()))?;
        match &self.tables {
            Tables::Dalek(_) => {
                let cts = xs.iter().map(|x| self.encrypt_with_rng(x, rng)).collect::<Result<_>>()?;
                Ok(CiphertextBatch { n, len: xs.len(), repr: BatchRepr::Serial(cts) })
            }
            #[cfg(target_arch = "x86_64")]
            Tables::Lanes { ifma, h } => {
                use crate::lanes::{SecretDigits, LANES};
                let s = *ifma;
                let g = basepoint_lane_table(s);
                let windows = if xs.iter().flatten().all(|v| v.unsigned_abs() < 1 << 32) { 9 } else { 17 };
                let mut randomness: Vec<[[u8; 32]; LANES]> =
                    xs.chunks(LANES).map(|_| std::array::from_fn(|_| Scalar::random(rng).to_bytes())).collect();
                let groups = xs
                    .par_chunks(LANES)
                    .zip(&randomness)
                    .map(|(group, r)| {
                        s.vectorize(|| {
                            // 2^{32k}·ct_0 = (2^{32k}·r)·G for k = 0..8.
                            let mut r_k: [Scalar; LANES] = std::array::from_fn(|l| Scalar::from_bytes_mod_order(r[l]));
                            let ct0_powers = std::array::from_fn(|_| {
                                let bytes = std::array::from_fn(|l| r_k[l].to_bytes());
                                let p = s.secret_mul(g, &SecretDigits::new(&bytes, [false; LANES], 64));
                                r_k.iter_mut().for_each(|r| *r *= Scalar::from(1u64 << 32));
                                p
                            });
                            r_k.zeroize();
                            let r = SecretDigits::new(r, [false; LANES], 64);
                            let cts = (0..n)
                                .map(|i| {
                                    let x = |lane: usize| group.get(lane).map_or(0, |x| x[i]);
                                    let values = std::array::from_fn(|lane| {
                                        let mut b = [0u8; 32];
                                        b[..8].copy_from_slice(&x(lane).unsigned_abs().to_le_bytes());
                                        b
                                    });
                                    let xg = SecretDigits::new(&values, std::array::from_fn(|l| x(l) < 0), windows);
                                    let c = s.constants();
                                    s.add_points(&s.secret_mul(&h[i], &r), &s.secret_mul(g, &xg), c)
                                })
                                .collect();
                            LaneGroup { ct0_powers, cts }
                        })
                    })
                    .collect();
                randomness.zeroize();
                Ok(CiphertextBatch { n, len: xs.len(), repr: BatchRepr::Lanes { ifma: s, groups } })
            }
        }
    }
}

/// Ciphertexts of many vectors of length `n` under one master public key
/// ([`Encryptor::encrypt_batch`]): with AVX-512 IFMA eight to a vector of lanes, in the
/// representation the secure matrix product computes on (they are never turned into single
/// [`Ciphertext`]s); otherwise one [`Ciphertext`] each.
pub struct CiphertextBatch {
    n: usize,
    len: usize,
    repr: BatchRepr,
}

enum BatchRepr {
    Serial(Vec<Ciphertext>),
    /// Per group of eight; lanes past `len` encrypt zeros.
    #[cfg(target_arch = "x86_64")]
    Lanes {
        ifma: crate::lanes::Ifma,
        groups: Vec<LaneGroup>,
    },
}

/// Eight ciphertexts in lanes: `2^{32k}·ct_0` for `k = 0..8` (the first is `ct_0`; the rest
/// let one ciphertext's `sk·ct_0` be split over the lanes, as [`Ciphertext`]'s powers do for
/// dalek) and `ct_1..n`.
#[cfg(target_arch = "x86_64")]
struct LaneGroup {
    ct0_powers: [crate::lanes::Point; 8],
    cts: Vec<crate::lanes::Point>,
}

impl std::fmt::Debug for CiphertextBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CiphertextBatch").field("len", &self.len).field("n", &self.n).finish_non_exhaustive()
    }
}

impl CiphertextBatch {
    /// The batch's points in wire order ([`crate::wire`]): per ciphertext `ct_0`, its seven
    /// precomputed powers and `ct_1..n`, each as its 32-byte ristretto255 encoding.
    pub(crate) fn encoded_points(&self) -> Vec<[u8; 32]> {
        match &self.repr {
            BatchRepr::Serial(cts) => cts
                .iter()
                .flat_map(|c| std::iter::once(&c.ct0).chain(&c.ct0_powers).chain(&c.cts))
                .map(|p| p.compress().to_bytes())
                .collect(),
            #[cfg(target_arch = "x86_64")]
            BatchRepr::Lanes { ifma, groups } => {
                let (s, lanes) = (*ifma, crate::lanes::LANES);
                let per_group: Vec<Vec<[u8; 32]>> = groups
                    .par_iter()
                    .enumerate()
                    .map(|(g, group)| {
                        let used = lanes.min(self.len - g * lanes);
                        let encoded: Vec<[[u8; 32]; 8]> = s.vectorize(|| {
                            group.ct0_powers.iter().chain(&group.cts).map(|p| s.encode(p, s.constants())).collect()
                        });
                        (0..used).flat_map(|lane| encoded.iter().map(move |e| e[lane])).collect()
                    })
                    .collect();
                per_group.concat()
            }
        }
    }

    /// A batch of `count` ciphertexts of vectors of length `n` from their wire points (per
    /// ciphertext `ct_0`, its seven powers `2^{32k}·ct_0`, then `ct_1..n`, 32 bytes each:
    /// `bytes` holds exactly `count·(8 + n)·32`), decoded straight into lanes (one inverse
    /// square root per eight encodings), in parallel over groups of eight ciphertexts. Checks
    /// every encoding and that the powers are `ct_0`'s. `None` without IFMA (the caller
    /// decodes with dalek); `Some(Err(reason))` for bytes that are not such a batch.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn decode_lanes(
        n: usize,
        count: usize,
        bytes: &[u8],
    ) -> Option<std::result::Result<Self, &'static str>> {
        use crate::lanes::LANES;
        let s = crate::lanes::Ifma::try_new()?;
        let stride = 32 * (LIMBS + n);
        debug_assert_eq!(bytes.len(), count * stride);
        let groups = bytes
            .par_chunks(LANES * stride)
            .map(|group| {
                s.vectorize(|| {
                    let c = s.constants();
                    let used = group.len() / stride;
                    let mask = ((1u16 << used) - 1) as u8;
                    // Point `j` of every ciphertext of the group (the missing lanes repeat the first).
                    let encodings = |j: usize| -> [[u8; 32]; LANES] {
                        std::array::from_fn(|lane| {
                            let at = (if lane < used { lane } else { 0 }) * stride + 32 * j;
                            group[at..at + 32].try_into().expect("32 bytes")
                        })
                    };
                    let decode = |j: usize| {
                        let (p, valid) = s.decode(&encodings(j), c);
                        (valid & mask == mask).then_some(p).ok_or("an invalid ristretto255 encoding")
                    };
                    let ct0 = decode(0)?;
                    let mut ct0_powers = [ct0; LIMBS];
                    for j in 1..LIMBS {
                        let mut p = ct0_powers[j - 1];
                        for _ in 0..32 {
                            p = s.double(&p);
                        }
                        let wire = encodings(j);
                        if s.encode(&p, c)[..used] != wire[..used] {
                            return Err("its precomputed 2^{32k}·ct_0 do not match ct_0");
                        }
                        ct0_powers[j] = p;
                    }
                    let cts = (LIMBS..LIMBS + n).map(decode).collect::<std::result::Result<_, _>>()?;
                    Ok(LaneGroup { ct0_powers, cts })
                })
            })
            .collect::<std::result::Result<_, _>>();
        Some(groups.map(|groups| Self { n, len: count, repr: BatchRepr::Lanes { ifma: s, groups } }))
    }

    /// A batch of single ciphertexts of vectors of length `n` (the serial representation:
    /// products on it take dalek's path).
    pub(crate) fn from_ciphertexts(n: usize, cts: Vec<Ciphertext>) -> Self {
        Self { n, len: cts.len(), repr: BatchRepr::Serial(cts) }
    }

    /// Number of ciphertexts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length `n` of the encrypted vectors.
    pub fn vector_len(&self) -> usize {
        self.n
    }

    /// The secure matrix product's group elements ([`matrix_product_points`]) with these
    /// ciphertexts as the rows of `X`.
    ///
    /// # Errors
    /// [`FeError::Length`] if a key's length is not `n`.
    pub fn product(&self, keys: &[FunctionKey]) -> Result<ProductPoints> {
        match &self.repr {
            BatchRepr::Serial(cts) => matrix_product_points(cts, keys),
            #[cfg(target_arch = "x86_64")]
            BatchRepr::Lanes { ifma, groups } => {
                let s = *ifma;
                keys.iter().try_for_each(|k| check_len(self.n, k.y.len()))?;
                let plan = (keys.len() >= SPLIT_BELOW_KEYS).then(|| KeyPlan::new(keys, self.n));
                let points = groups
                    .par_iter()
                    .enumerate()
                    .flat_map_iter(|(g, group)| {
                        s.vectorize(|| {
                            let Some(plan) = &plan else {
                                let used = crate::lanes::LANES.min(self.len - g * crate::lanes::LANES);
                                return split_product(s, group, used, keys);
                            };
                            product_group(s, &group.ct0_powers[0], &group.cts, keys, plan)
                        })
                    })
                    .collect();
                Ok(ProductPoints {
                    repr: Repr::Lanes { ifma: s, points, keys: keys.len(), doubled: false },
                    len: self.len * keys.len(),
                })
            }
        }
    }

    /// `Σ_b ⟨x_b, y_{o,b}⟩·G` per output `o`, with a different key for every ciphertext:
    /// `keys` is output-major, `keys[o·len + b]` for ciphertext `b`; only the sums over the
    /// batch reach a discrete logarithm ([`ProductPoints::solve`] gives `keys.len() / len`
    /// values). A convolutional first layer's gradient: per filter and kernel entry, each
    /// example's deltas placed where that entry reads.
    ///
    /// With IFMA, eight outputs per vector of lanes for one ciphertext at a time: per group of
    /// eight ciphertexts, each entry's multiples `m·ct_i` up to the largest `|y|` (at most 64;
    /// larger entries in signed radix-128 digit planes combined at the end) and `ct_0`'s
    /// fixed-base table, stored per lane; each lane then reads its own key's multiple
    /// (`crates/fe/src/lanes.rs`, a gather). Otherwise each ciphertext's table of `ct_0`
    /// ([`Ciphertext::prepare`]) and dalek.
    ///
    /// # Errors
    /// [`FeError::Length`] if a key's length is not `n`; [`FeError::InvalidArgument`] if the
    /// keys are not a multiple of the ciphertexts.
    pub fn summed_product(&self, keys: &[FunctionKey]) -> Result<ProductPoints> {
        keys.iter().try_for_each(|k| check_len(self.n, k.y.len()))?;
        if self.len == 0 || !keys.len().is_multiple_of(self.len) {
            return Err(FeError::InvalidArgument(format!(
                "{} keys for {} ciphertexts: one per ciphertext and output",
                keys.len(),
                self.len
            )));
        }
        let outputs = keys.len() / self.len;
        let repr = match &self.repr {
            BatchRepr::Serial(cts) => {
                let sums = cts
                    .par_iter()
                    .enumerate()
                    .map(|(b, ct)| {
                        let prepared = ct.prepare();
                        (0..outputs)
                            .map(|o| prepared.decrypt_point(&keys[o * self.len + b]))
                            .collect::<Result<Vec<_>>>()
                    })
                    .try_reduce(
                        || vec![RistrettoPoint::identity(); outputs],
                        |a, b| Ok(a.iter().zip(&b).map(|(x, y)| x + y).collect()),
                    )?;
                Repr::Points(sums)
            }
            #[cfg(target_arch = "x86_64")]
            BatchRepr::Lanes { ifma, groups } => Repr::Lanes {
                ifma: *ifma,
                points: summed_product_lanes(*ifma, groups, self.len, keys),
                keys: 1,
                doubled: false,
            },
        };
        Ok(ProductPoints { repr, len: outputs })
    }
}

/// Key entries as signed radix-`2^7` digits in `[−64, 63]` (one plane, the entry itself, when
/// every entry is at most 64 in magnitude), so that tables of multiples `m·P` need `m ≤ 64`.
#[derive(Clone, Copy, Debug)]
struct DigitPlanes {
    /// Multiples per table: the largest entry, at most 64 (at least 1).
    table: usize,
    /// Digits per entry.
    planes: usize,
}

impl DigitPlanes {
    const BITS: u32 = 7;
    const HALF: i64 = 1 << (Self::BITS - 1);

    fn for_max(max: usize) -> Self {
        let max = max as u64;
        let planes =
            if max <= Self::HALF as u64 { 1 } else { (64 - max.leading_zeros()).div_ceil(Self::BITS) as usize + 1 };
        Self { table: max.clamp(1, Self::HALF as u64) as usize, planes }
    }

    /// The digits of `y`, least significant first (`planes` of them used).
    #[inline(always)]
    fn digits(self, y: i64) -> [i64; 12] {
        let mut d = [0i64; 12];
        if self.planes == 1 {
            d[0] = y;
            return d;
        }
        let mut v = y;
        for slot in d.iter_mut().take(self.planes) {
            *slot = ((v + Self::HALF) & ((1 << Self::BITS) - 1)) - Self::HALF;
            v = (v - *slot) >> Self::BITS;
        }
        d
    }

    /// `Σ_p 2^{7p}·per_plane[p]` by Horner's rule.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn combine(self, s: crate::lanes::Ifma, per_plane: &[crate::lanes::Point]) -> crate::lanes::Point {
        let c = s.constants();
        let mut total = per_plane[per_plane.len() - 1];
        for p in per_plane[..per_plane.len() - 1].iter().rev() {
            for _ in 0..Self::BITS {
                total = s.double(&total);
            }
            total = s.add_points(&total, p, c);
        }
        total
    }
}

/// Below this many keys, [`CiphertextBatch::product`] splits each product over the lanes
/// ([`split_product`]) instead of building each group's `ct_0` table.
#[cfg(target_arch = "x86_64")]
const SPLIT_BELOW_KEYS: usize = 4;

/// Each of the first `used` ciphertexts of `group` against each key, one product at a time
/// with the work spread over the eight lanes: lane `k` computes `(−sk)_k·2^{32k}·ct_0` for the
/// `k`-th 32-bit limb of `−sk` and `y_i·ct_i` for the entries `i ≡ k (mod 8)`, by Straus with
/// per-lane radix-16 digits; the lanes are then added together. About 90 lane operations
/// for 25 entries, against the `ct_0` table's 816 additions of the other method. Returns,
/// per key, the products in the ciphertexts' lanes.
#[cfg(target_arch = "x86_64")]
fn split_product(
    s: crate::lanes::Ifma,
    group: &LaneGroup,
    used: usize,
    keys: &[FunctionKey],
) -> Vec<crate::lanes::Point> {
    use crate::lanes::{SecretDigits, LANES};
    let c = s.constants();
    let digits_of = |values: &[i64], windows: usize| {
        let bytes = std::array::from_fn(|l| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&values.get(l).map_or(0, |v| v.unsigned_abs()).to_le_bytes());
            b
        });
        SecretDigits::new(&bytes, std::array::from_fn(|l| values.get(l).is_some_and(|&v| v < 0)), windows)
    };
    let mut out = vec![s.identity(); keys.len()];
    for lane in 0..used {
        let mut points = s.transpose_lane(&group.ct0_powers, lane);
        points.extend(s.transpose_lane(&group.cts, lane));
        for (key, out) in keys.iter().zip(out.iter_mut()) {
            let minus_sk = (-key.sk).to_bytes();
            let limbs: Vec<i64> =
                minus_sk.chunks_exact(4).map(|b| i64::from(u32::from_le_bytes(b.try_into().expect("4")))).collect();
            let max = key.y.iter().map(|y| y.unsigned_abs()).max().unwrap_or(0);
            let windows = (64 - max.leading_zeros()).div_ceil(4) as usize + 1;
            let digits: Vec<SecretDigits> = std::iter::once(digits_of(&limbs, 9))
                .chain(key.y.chunks(LANES).map(|ys| digits_of(ys, windows)))
                .collect();
            let sum = s.sum_lanes(&s.straus_per_lane(&points, &digits.iter().collect::<Vec<_>>(), c), c);
            *out = s.blend_lane(out, &sum, lane);
        }
    }
    out
}

/// [`CiphertextBatch::summed_product`] in lanes: eight outputs per vector.
#[cfg(target_arch = "x86_64")]
fn summed_product_lanes(
    s: crate::lanes::Ifma,
    groups: &[LaneGroup],
    len: usize,
    keys: &[FunctionKey],
) -> Vec<crate::lanes::Point> {
    use crate::lanes::LANES;
    let c = s.constants();
    let outputs = keys.len() / len;
    let chunks = outputs.div_ceil(LANES);
    let digits = DigitPlanes::for_max(largest_entry(keys));
    let (t, planes) = (digits.table, digits.planes);
    let identity = s.vectorize(|| s.identity());
    // Per group: `planes` accumulators per chunk for Σ y·ct_i, one for −sk·ct_0.
    let sums = groups
        .par_iter()
        .enumerate()
        .map(|(g, LaneGroup { ct0_powers, cts })| {
            s.vectorize(|| {
                let n = cts.len();
                let width = t + 1;
                let tables = s.lane_tables(cts.iter().map(|p| s.multiples(p, t, c)), width);
                let ct0_rows = s.fixed_base_points(&ct0_powers[0], 5, c);
                let ct0_tables =
                    s.lane_tables(ct0_rows.iter().map(|row| row.iter().map(|p| s.to_niels(p, c)).collect()), 17);
                let mut acc = vec![s.identity(); (planes + 1) * chunks];
                for lane in 0..LANES.min(len - g * LANES) {
                    let b = g * LANES + lane;
                    let key = |o: usize| (o < outputs).then(|| &keys[o * len + b]);
                    let (table, ct0_table) = (&tables[lane], &ct0_tables[lane]);
                    for chunk in 0..chunks {
                        let sk: [[i64; 51]; LANES] =
                            std::array::from_fn(|l| key(chunk * LANES + l).map_or([0; 51], |k| signed_radix32(&-k.sk)));
                        let a = &mut acc[planes * chunks + chunk];
                        for w in 0..51 {
                            let row = &ct0_table[w * 17..(w + 1) * 17];
                            *a = s.add_niels(a, &s.gather(row, std::array::from_fn(|l| sk[l][w])), false);
                        }
                    }
                    for i in 0..n {
                        for chunk in 0..chunks {
                            let d: [[i64; 12]; LANES] = std::array::from_fn(|l| {
                                key(chunk * LANES + l).map_or([0; 12], |k| digits.digits(k.y[i]))
                            });
                            for (plane, a) in acc[chunk..].iter_mut().step_by(chunks).take(planes).enumerate() {
                                if d.iter().all(|d| d[plane] == 0) {
                                    continue;
                                }
                                let row = &table[i * width..(i + 1) * width];
                                *a = s.add_niels(a, &s.gather(row, std::array::from_fn(|l| d[l][plane])), false);
                            }
                        }
                    }
                }
                acc
            })
        })
        .reduce(
            || vec![identity; (planes + 1) * chunks],
            |a, b| s.vectorize(|| a.iter().zip(&b).map(|(x, y)| s.add_points(x, y, c)).collect()),
        );
    s.vectorize(|| {
        (0..chunks)
            .map(|chunk| {
                let per_plane: Vec<_> = (0..planes).map(|plane| sums[plane * chunks + chunk]).collect();
                s.add_points(&digits.combine(s, &per_plane), &sums[planes * chunks + chunk], c)
            })
            .collect()
    })
}

impl MasterSecretKey {
    /// Length `n` of the vectors.
    pub fn len(&self) -> usize {
        self.s.len()
    }

    /// Whether the key is for vectors of length 0.
    pub fn is_empty(&self) -> bool {
        self.s.is_empty()
    }

    /// The function key for `y`: `sk_y = ⟨s, y⟩ mod ℓ`.
    ///
    /// # Errors
    /// [`FeError::Length`] if `y` has the wrong length.
    pub fn derive(&self, y: &[i64]) -> Result<FunctionKey> {
        check_len(self.s.len(), y.len())?;
        // Σ |y_i|·s_i over the integers, positive and negative `y_i` apart (`y` is public, the
        // arithmetic on `s` has no branch), in 384-bit accumulators (785 terms of at most
        // 253 + 63 bits fit), reduced once: about six times cheaper than a multiplication
        // modulo ℓ per entry.
        let mut sums = [[0u64; 6]; 2];
        // `y` is public: skipping its zero entries (most of a convolution's key) leaks nothing.
        for (s, &yi) in self.s.iter().zip(y).filter(|(_, &yi)| yi != 0) {
            let acc = &mut sums[usize::from(yi < 0)];
            let m = u128::from(yi.unsigned_abs());
            let mut carry = 0u128;
            for (k, limb) in s.as_bytes().chunks_exact(8).enumerate() {
                let t =
                    u128::from(acc[k]) + u128::from(u64::from_le_bytes(limb.try_into().expect("8 bytes"))) * m + carry;
                acc[k] = t as u64;
                carry = t >> 64;
            }
            let t = u128::from(acc[4]) + carry;
            acc[4] = t as u64;
            acc[5] = acc[5].wrapping_add((t >> 64) as u64);
        }
        let mut wide = [[0u8; 64]; 2];
        for (w, acc) in wide.iter_mut().zip(&sums) {
            for (chunk, limb) in w.chunks_exact_mut(8).zip(acc) {
                chunk.copy_from_slice(&limb.to_le_bytes());
            }
        }
        let sk = Scalar::from_bytes_mod_order_wide(&wide[0]) - Scalar::from_bytes_mod_order_wide(&wide[1]);
        sums.zeroize();
        wide.zeroize();
        Ok(FunctionKey { y: y.to_vec(), sk })
    }
}

impl Ciphertext {
    /// Length `n` of the encrypted vector.
    pub fn len(&self) -> usize {
        self.cts.len()
    }

    /// Whether the ciphertext encrypts a vector of length 0.
    pub fn is_empty(&self) -> bool {
        self.cts.is_empty()
    }

    /// `⟨x, y⟩·G = Σ y_i·ct_i − sk_y·ct_0`, in variable time (the ciphertext and `y` are
    /// known to the decryptor). `−sk_y` is split into eight 32-bit limbs against `ct_0` and its
    /// precomputed powers (width-4 NAF, 33 shared doublings instead of 253); the small `y_i`
    /// join the same interleaved loop (NAF), or, when buckets are cheaper for them (long
    /// vectors), go through [`small_multiscalar_mul`]. For many keys on one ciphertext,
    /// [`Ciphertext::prepare`] first.
    ///
    /// # Errors
    /// [`FeError::Length`] if the key is for another length.
    pub fn decrypt_point(&self, key: &FunctionKey) -> Result<RistrettoPoint> {
        check_len(self.cts.len(), key.y.len())?;
        let neg = (-key.sk).to_bytes();
        let limbs = neg.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
        let bases = std::iter::once(&self.ct0).chain(&self.ct0_powers);
        let mut terms: Vec<Term> = limbs.zip(bases).map(|(v, p)| Term::new(v as u128, false, p, 4, 33)).collect();
        match SmallMethod::for_scalars(&key.y) {
            SmallMethod::Buckets { max } => Ok(buckets(&key.y, &self.cts, max) + interleaved_wnaf(&terms)),
            SmallMethod::Naf { len } => {
                terms.extend(naf_terms(&key.y, &self.cts, len));
                Ok(interleaved_wnaf(&terms))
            }
        }
    }

    /// Precomputes multiples of `ct_0` (`d·32^w·ct_0`, about 1,000 additions) so that
    /// each key's `sk_y·ct_0` costs at most 51 additions: worth it from a handful of keys per
    /// ciphertext, as in the secure matrix product.
    pub fn prepare(&self) -> PreparedCiphertext<'_> {
        PreparedCiphertext { ct: self, ct0: FixedBaseTable::new(&self.ct0) }
    }

    /// `⟨x, y⟩` as an integer, if it lies within the table's bound.
    ///
    /// # Errors
    /// [`FeError::Length`]; [`FeError::OutOfBound`] if `|⟨x, y⟩|` exceeds the table's bound
    /// (a wrong key, or inputs larger than the table was built for).
    pub fn decrypt(&self, key: &FunctionKey, table: &DlogTable) -> Result<i64> {
        table.solve(&self.decrypt_point(key)?)
    }
}

/// A [`Ciphertext`] with a table of multiples of `ct_0` ([`Ciphertext::prepare`]).
pub struct PreparedCiphertext<'a> {
    ct: &'a Ciphertext,
    ct0: FixedBaseTable,
}

/// Signed radix-`2^bits` digits of a scalar's canonical value, least significant first:
/// `⌈254/bits⌉` digits in `[−2^{bits−1}, 2^{bits−1}]` (the top one absorbs the last carry,
/// since the value is below `2^253`).
pub(crate) fn signed_digits(s: &Scalar, bits: u32) -> impl Iterator<Item = i64> {
    let bytes = s.to_bytes();
    let bit = move |i: u32| -> i64 { bytes.get(i as usize / 8).map_or(0, |b| i64::from((b >> (i % 8)) & 1)) };
    let (full, half) = (1i64 << bits, 1i64 << (bits - 1));
    let mut carry = 0;
    (0..254u32.div_ceil(bits)).map(move |w| {
        let v = (0..bits).map(|b| bit(bits * w + b) << b).sum::<i64>() + carry;
        // v ∈ [0, 2^bits]: digits above half borrow from the next window.
        carry = i64::from(v > half);
        v - carry * full
    })
}

/// [`signed_digits`] with 5 bits: 51 digits in `[−16, 16]`.
pub(crate) fn signed_radix32(s: &Scalar) -> [i64; 51] {
    let mut digits = signed_digits(s, 5);
    std::array::from_fn(|_| digits.next().expect("51 digits"))
}

/// A variable-time fixed-base table for one point `P` (the decryptor's `ct_0`, public):
/// `d·32^w·P` for `d = 1..16` and the 51 windows `w` of [`signed_radix32`]. Building it costs
/// about 1,000 additions and doublings (dalek's constant-time `RistrettoBasepointTable` costs
/// 256 field inversions more); a multiplication then costs at most 51 additions.
struct FixedBaseTable {
    windows: Vec<Vec<RistrettoPoint>>,
}

impl FixedBaseTable {
    fn new(p: &RistrettoPoint) -> Self {
        let mut base = *p;
        let windows = (0..51)
            .map(|_| {
                let row = multiples(&base, 16);
                // 32·base = 2·(16·base).
                base = row[15] + row[15];
                row
            })
            .collect();
        Self { windows }
    }

    /// `s·P`, in variable time.
    fn mul(&self, s: &Scalar) -> RistrettoPoint {
        let mut acc = RistrettoPoint::identity();
        for (row, &d) in self.windows.iter().zip(signed_radix32(s).iter()) {
            add_multiple(&mut acc, row, d);
        }
        acc
    }
}

/// `P, 2P, …, count·P`.
fn multiples(p: &RistrettoPoint, count: usize) -> Vec<RistrettoPoint> {
    std::iter::successors(Some(*p), |m| Some(m + p)).take(count).collect()
}

/// `acc += d·P` from the [`multiples`] of `P` (at least `|d|` of them), in variable time.
fn add_multiple(acc: &mut RistrettoPoint, multiples: &[RistrettoPoint], d: i64) {
    match d.cmp(&0) {
        std::cmp::Ordering::Greater => *acc += multiples[d as usize - 1],
        std::cmp::Ordering::Less => *acc -= multiples[d.unsigned_abs() as usize - 1],
        std::cmp::Ordering::Equal => {}
    }
}

impl PreparedCiphertext<'_> {
    /// [`Ciphertext::decrypt_point`] with the precomputed table.
    ///
    /// # Errors
    /// [`FeError::Length`] if the key is for another length.
    pub fn decrypt_point(&self, key: &FunctionKey) -> Result<RistrettoPoint> {
        check_len(self.ct.cts.len(), key.y.len())?;
        Ok(small_multiscalar_mul(&key.y, &self.ct.cts) - self.ct0.mul(&key.sk))
    }

    /// [`PreparedCiphertext::decrypt_point`] for many keys with entries up to `max` in
    /// magnitude, sharing the multiples `m·ct_i` (`m ≤ max`) among them: one addition per
    /// entry of each key instead of [`small_multiscalar_mul`]'s `n + 2·max`.
    ///
    /// # Errors
    /// [`FeError::Length`] if a key is for another length.
    fn decrypt_points_sharing_multiples(&self, keys: &[FunctionKey], max: usize) -> Result<Vec<RistrettoPoint>> {
        let cts = &self.ct.cts;
        keys.iter().try_for_each(|key| check_len(cts.len(), key.y.len()))?;
        let multiples: Vec<Vec<RistrettoPoint>> = cts.iter().map(|p| multiples(p, max)).collect();
        Ok(keys
            .iter()
            .map(|key| {
                let mut acc = -self.ct0.mul(&key.sk);
                for (&y, m) in key.y.iter().zip(&multiples) {
                    add_multiple(&mut acc, m, y);
                }
                acc
            })
            .collect())
    }

    /// [`Ciphertext::decrypt`] with the precomputed table.
    ///
    /// # Errors
    /// As [`Ciphertext::decrypt`].
    pub fn decrypt(&self, key: &FunctionKey, table: &DlogTable) -> Result<i64> {
        table.solve(&self.decrypt_point(key)?)
    }
}

/// `Σ y_i·P_i` for integer scalars that are small (CryptoNN's weights at two decimal digits
/// are at most a few hundred), in variable time. Of two methods, the one with fewer group
/// additions for these scalars:
///
/// * interleaved signed binary (non-adjacent form, shared doublings): about
///   `n·(b/3 + 1) + b` additions for `b`-bit scalars;
/// * buckets by value (Pippenger's method with a single window): each point added into the
///   bucket of `|y_i|`, then `Σ_v v·B_v` by running sums: `n + 2·max|y_i|` additions.
///
/// A generic multi-scalar multiplication treats every scalar as 253 bits; these pay only
/// for the bits the scalars have.
///
/// # Panics
/// If the lengths differ.
pub fn small_multiscalar_mul(ys: &[i64], points: &[RistrettoPoint]) -> RistrettoPoint {
    assert_eq!(ys.len(), points.len(), "one scalar per point");
    match SmallMethod::for_scalars(ys) {
        SmallMethod::Buckets { max } => buckets(ys, points, max),
        SmallMethod::Naf { len } => interleaved_wnaf(&naf_terms(ys, points, len)),
    }
}

/// The method of [`small_multiscalar_mul`] for some scalars.
enum SmallMethod {
    /// Buckets `1..=max`.
    Buckets { max: usize },
    /// Interleaved NAF with `len` digits.
    Naf { len: usize },
}

impl SmallMethod {
    /// The one with fewer additions for `ys`.
    fn for_scalars(ys: &[i64]) -> Self {
        let max = ys.iter().map(|y| y.unsigned_abs()).max().unwrap_or(0);
        let (bits, n) = (u64::from(64 - max.leading_zeros()), ys.len() as u64);
        // Saturating: a scalar near i64::MAX must choose NAF, never wrap into a bucket table
        // of 2^64 entries.
        if n.saturating_add(max.saturating_mul(2)) <= n.saturating_mul(bits / 3 + 1).saturating_add(bits) {
            SmallMethod::Buckets { max: max as usize }
        } else {
            SmallMethod::Naf { len: bits as usize + 1 }
        }
    }
}

/// The non-zero `y_i·P_i` as NAF terms of `len` digits.
fn naf_terms(ys: &[i64], points: &[RistrettoPoint], len: usize) -> Vec<Term> {
    ys.iter()
        .zip(points)
        .filter(|(y, _)| **y != 0)
        .map(|(&y, p)| Term::new(y.unsigned_abs() as u128, y < 0, p, 2, len))
        .collect()
}

/// Adds `q` to an optional accumulator.
fn accumulate(acc: &mut Option<RistrettoPoint>, q: RistrettoPoint) {
    *acc = Some(match acc.take() {
        Some(a) => a + q,
        None => q,
    });
}

fn buckets(ys: &[i64], points: &[RistrettoPoint], max: usize) -> RistrettoPoint {
    let mut bucket: Vec<Option<RistrettoPoint>> = vec![None; max + 1];
    for (&y, p) in ys.iter().zip(points) {
        if y != 0 {
            accumulate(&mut bucket[y.unsigned_abs() as usize], if y < 0 { -p } else { *p });
        }
    }
    let (mut running, mut sum) = (None, None);
    for b in bucket.into_iter().skip(1).rev() {
        if let Some(b) = b {
            accumulate(&mut running, b);
        }
        if let Some(r) = running {
            accumulate(&mut sum, r);
        }
    }
    sum.unwrap_or_else(RistrettoPoint::identity)
}

/// One scalar·point term of [`interleaved_wnaf`]: the scalar's width-`w` non-adjacent form
/// (odd digits `|d| < 2^(w-1)`, least significant first) and the odd multiples
/// `P, 3P, …, (2^(w-1) − 1)P` of the (possibly negated) point.
struct Term {
    digits: Vec<i8>,
    odd_multiples: Vec<RistrettoPoint>,
}

impl Term {
    /// `±v·P` (negative if `negative`), `v < 2^(len−1)`.
    fn new(mut v: u128, negative: bool, p: &RistrettoPoint, w: u32, len: usize) -> Self {
        let mut digits = vec![0i8; len];
        for d in digits.iter_mut() {
            if v & 1 == 1 {
                let m = (v & ((1 << w) - 1)) as i32;
                let z = if m >= 1 << (w - 1) { m - (1 << w) } else { m };
                *d = z as i8;
                v = if z > 0 { v - z as u128 } else { v + (-z) as u128 };
            }
            v >>= 1;
        }
        debug_assert_eq!(v, 0, "scalar longer than its digits");
        let p = if negative { -p } else { *p };
        let twice = p + p;
        let mut odd_multiples = vec![p];
        for k in 1..(1usize << (w - 2)) {
            odd_multiples.push(odd_multiples[k - 1] + twice);
        }
        Self { digits, odd_multiples }
    }
}

/// `Σ` of the terms' products by Straus's interleaving: one doubling per digit position,
/// one addition per non-zero digit.
fn interleaved_wnaf(terms: &[Term]) -> RistrettoPoint {
    let len = terms.iter().map(|t| t.digits.len()).max().unwrap_or(0);
    let mut acc: Option<RistrettoPoint> = None;
    for b in (0..len).rev() {
        if let Some(a) = acc {
            acc = Some(a + a);
        }
        for t in terms {
            match t.digits.get(b) {
                Some(&d) if d > 0 => accumulate(&mut acc, t.odd_multiples[d as usize / 2]),
                Some(&d) if d < 0 => accumulate(&mut acc, -t.odd_multiples[(-d) as usize / 2]),
                _ => {}
            }
        }
    }
    acc.unwrap_or_else(RistrettoPoint::identity)
}

/// Secure matrix product (CryptoNN §IV-B): row `i` of `X` encrypted as `rows[i]`, one function
/// key per column `j` of `Y`; returns `X·Y` (`rows.len() × keys.len()`, row-major):
/// [`matrix_product_points`], then [`ProductPoints::solve`].
///
/// # Errors
/// As [`Ciphertext::decrypt`], for the first entry that fails.
pub fn matrix_product(rows: &[Ciphertext], keys: &[FunctionKey], table: &DlogTable) -> Result<Vec<i64>> {
    matrix_product_points(rows, keys)?.solve(table)
}

/// The group elements `(X·Y)_{ij}·G` of a secure matrix product before their discrete
/// logarithms ([`matrix_product_points`]); [`ProductPoints::solve`] turns them into integers.
pub struct ProductPoints {
    repr: Repr,
    len: usize,
}

enum Repr {
    /// Row-major, one dalek point per entry.
    Points(Vec<RistrettoPoint>),
    /// Eight rows per vector ([`crate::lanes`]): `points[g·keys + k]` holds entry
    /// `(8g + lane, k)`, times two if `doubled` (points loaded from dalek's are).
    #[cfg(target_arch = "x86_64")]
    Lanes { ifma: crate::lanes::Ifma, points: Vec<crate::lanes::Point>, keys: usize, doubled: bool },
}

impl std::fmt::Debug for ProductPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductPoints").field("len", &self.len).finish_non_exhaustive()
    }
}

impl ProductPoints {
    /// Number of entries (`rows × keys`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries as integers (row-major), by [`DlogTable::solve_all`] or its eight-lane
    /// counterpart, in parallel.
    ///
    /// # Errors
    /// [`FeError::OutOfBound`] if any entry's value is outside the table's bound.
    pub fn solve(&self, table: &DlogTable) -> Result<Vec<i64>> {
        match &self.repr {
            Repr::Points(points) => table.solve_all(points),
            #[cfg(target_arch = "x86_64")]
            Repr::Lanes { ifma, points, keys, doubled } => {
                let solved = table.solve_lanes(*ifma, points, *doubled);
                let mut out = Vec::with_capacity(self.len);
                for i in 0..self.len / keys {
                    for k in 0..*keys {
                        out.push(solved[(i / crate::lanes::LANES) * keys + k][i % crate::lanes::LANES].clone()?);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The group elements `(X·Y)_{ij}·G` of [`matrix_product`], before the discrete logarithms,
/// in parallel over the rows.
///
/// With AVX-512 IFMA, eight rows at a time in the lanes of `crates/fe/src/lanes.rs` (about ten times
/// faster per group addition than dalek's serial arithmetic); otherwise with dalek, each
/// row's `ct_0` table ([`Ciphertext::prepare`]) from four keys on. When the keys are many and
/// short with small entries (CryptoNN's gradient), each row's multiples `m·ct_i` up to the
/// largest `|y_i|` are computed once and every key costs one addition per entry; otherwise
/// buckets ([`small_multiscalar_mul`]) per key.
///
/// # Errors
/// [`FeError::Length`] if a key and a row differ in length.
pub fn matrix_product_points(rows: &[Ciphertext], keys: &[FunctionKey]) -> Result<ProductPoints> {
    for ct in rows {
        keys.iter().try_for_each(|k| check_len(ct.cts.len(), k.y.len()))?;
    }
    let len = rows.len() * keys.len();
    #[cfg(target_arch = "x86_64")]
    if let Some(ifma) = crate::lanes::Ifma::try_new() {
        if !keys.is_empty() {
            let points = ifma.vectorize(|| matrix_product_lanes(ifma, rows, keys));
            return Ok(ProductPoints { repr: Repr::Lanes { ifma, points, keys: keys.len(), doubled: true }, len });
        }
    }
    Ok(ProductPoints { repr: Repr::Points(matrix_product_serial(rows, keys)?), len })
}

fn largest_entry(keys: &[FunctionKey]) -> usize {
    keys.iter().flat_map(|k| k.y.iter()).map(|y| y.unsigned_abs()).max().unwrap_or(0) as usize
}

/// Whether sharing each row's multiples among the keys costs fewer additions than buckets
/// per key, for rows of `n` entries, `k` keys and entries up to `max`.
fn share_multiples(n: usize, k: usize, max: usize) -> bool {
    k >= 4 && n * max + k * n < k * (n + 2 * max) && n * max <= 1 << 16
}

fn matrix_product_serial(rows: &[Ciphertext], keys: &[FunctionKey]) -> Result<Vec<RistrettoPoint>> {
    let max = largest_entry(keys);
    let per_row: Vec<Result<Vec<RistrettoPoint>>> = rows
        .par_iter()
        .map(|ct| {
            if keys.len() < 4 {
                return keys.iter().map(|k| ct.decrypt_point(k)).collect();
            }
            let prepared = ct.prepare();
            if share_multiples(ct.cts.len(), keys.len(), max) {
                return prepared.decrypt_points_sharing_multiples(keys, max);
            }
            keys.iter().map(|k| prepared.decrypt_point(k)).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len() * keys.len());
    for r in per_row {
        out.extend(r?);
    }
    Ok(out)
}

/// [`matrix_product_points`] in eight lanes: per group of eight rows, the points loaded
/// doubled ([`crate::lanes::Ifma::load_doubled`]), then [`product_group`].
#[cfg(target_arch = "x86_64")]
fn matrix_product_lanes(s: crate::lanes::Ifma, rows: &[Ciphertext], keys: &[FunctionKey]) -> Vec<crate::lanes::Point> {
    let c = s.constants();
    let plan = KeyPlan::new(keys, rows.first().map_or(0, |ct| ct.cts.len()));
    let groups: Vec<Vec<crate::lanes::Point>> = rows
        .par_chunks(crate::lanes::LANES)
        .map(|group| {
            s.vectorize(|| {
                let ct0: Vec<&[RistrettoPoint]> = group.iter().map(|ct| std::slice::from_ref(&ct.ct0)).collect();
                let cts: Vec<&[RistrettoPoint]> = group.iter().map(|ct| ct.cts.as_slice()).collect();
                product_group(s, &s.load_doubled(&ct0, c)[0], &s.load_doubled(&cts, c), keys, &plan)
            })
        })
        .collect();
    groups.into_iter().flatten().collect()
}

/// How [`product_group`] evaluates a set of keys on every group of eight ciphertexts,
/// decided once per product from the keys alone (counting additions).
#[cfg(target_arch = "x86_64")]
struct KeyPlan {
    /// Bits per window of `ct_0`'s fixed-base table (more keys, wider windows).
    bits: u32,
    /// Digits per key of `−sk` ([`signed_digits`]).
    windows: usize,
    /// Per key, the digits of `−sk` (key-major).
    minus_sk: Vec<i16>,
    /// `None`: buckets per key.
    shared: Option<SharedMultiples>,
}

/// The multiples `m·ct_i` for `m = 1..t` of each entry `i`, shared by the keys.
#[cfg(target_arch = "x86_64")]
struct SharedMultiples {
    t: usize,
    /// Per entry `i`, the keys `(index, y_i)` with `y_i ≠ 0`.
    columns: Vec<Vec<(u32, i64)>>,
}

#[cfg(target_arch = "x86_64")]
impl KeyPlan {
    /// Widest window considered: 8 bits (a table of 32 rows of 128 points, about 4 MB in
    /// lanes; wider tables leave the cache).
    const MAX_BITS: u32 = 8;
    /// Accumulators per block of [`product_group`]'s `−sk·ct_0` pass (about 650 KB).
    const BLOCK: usize = 512;

    fn new(keys: &[FunctionKey], n: usize) -> Self {
        let k = keys.len();
        // An entry of the table costs about two additions (one to compute, one to make affine).
        let table_and_keys = |bits: u32| {
            let windows = 254usize.div_ceil(bits as usize);
            windows * ((2 << (bits - 1)) + k)
        };
        let bits = (4..=Self::MAX_BITS).min_by_key(|&b| table_and_keys(b)).expect("a window");
        let windows = 254usize.div_ceil(bits as usize);
        let mut minus_sk = Vec::with_capacity(k * windows);
        for key in keys {
            minus_sk.extend(signed_digits(&-key.sk, bits).map(|d| d as i16));
        }
        // Shared multiples up to `t`: `t` additions per used entry to build, `⌈|y|/t⌉` per
        // non-zero key entry; buckets: per key, 12-bit planes of `nonzero + 2·max` additions.
        let mut used = vec![false; n];
        let mut entries = Vec::new();
        for key in keys {
            for (i, &y) in key.y.iter().enumerate().filter(|(_, y)| **y != 0) {
                used[i] = true;
                entries.push(y.unsigned_abs());
            }
        }
        let used = used.iter().filter(|&&u| u).count() as u64;
        let shared_cost = |t: u64| entries.iter().fold(used * t, |cost, y| cost.saturating_add(y.div_ceil(t)));
        let t = (0..8).map(|e| 1u64 << e).min_by_key(|&t| shared_cost(t)).expect("a table size");
        let bucket_cost: u64 = keys
            .iter()
            .map(|key| {
                let max = key.y.iter().map(|y| y.unsigned_abs()).max().unwrap_or(0);
                let nonzero = key.y.iter().filter(|&&y| y != 0).count() as u64;
                let planes = u64::from((64 - max.leading_zeros()).div_ceil(12).max(1));
                planes * (nonzero + 2 * max.min(1 << 12) + 12)
            })
            .sum();
        let shared = (shared_cost(t) <= bucket_cost).then(|| {
            let mut columns = vec![Vec::new(); n];
            for (index, key) in keys.iter().enumerate() {
                for (i, &y) in key.y.iter().enumerate().filter(|(_, y)| **y != 0) {
                    columns[i].push((index as u32, y));
                }
            }
            SharedMultiples { t: t as usize, columns }
        });
        Self { bits, windows, minus_sk, shared }
    }
}

/// One group of eight ciphertexts `(ct_0, ct_i)` in lanes against every key of `plan`, the
/// same digit, multiple or bucket in every lane. First `−sk·ct_0` for every key from
/// `ct_0`'s fixed-base table, window by window over blocks of keys (the block's accumulators
/// and one row of the table stay in cache); then `Σ y_i·ct_i`: with shared multiples, entry
/// by entry (each entry's `t` multiples built once, then added to the accumulator of every
/// key that uses it, `y = q·t + r` as `q` additions of `t·ct_i` and one of `r·ct_i`), or by
/// buckets per key.
#[cfg(target_arch = "x86_64")]
fn product_group(
    s: crate::lanes::Ifma,
    ct0: &crate::lanes::Point,
    points: &[crate::lanes::Point],
    keys: &[FunctionKey],
    plan: &KeyPlan,
) -> Vec<crate::lanes::Point> {
    let c = s.constants();
    let table = s.fixed_base_table(ct0, plan.bits, c);
    let mut acc = vec![s.identity(); keys.len()];
    for (block, digits) in acc.chunks_mut(KeyPlan::BLOCK).zip(plan.minus_sk.chunks(KeyPlan::BLOCK * plan.windows)) {
        for (w, row) in table.iter().enumerate() {
            for (a, d) in block.iter_mut().zip(digits.chunks_exact(plan.windows)) {
                s.add_affine_multiple(a, row, i64::from(d[w]));
            }
        }
    }
    match &plan.shared {
        Some(SharedMultiples { t, columns }) => {
            let t = *t as i64;
            for (p, column) in points.iter().zip(columns).filter(|(_, column)| !column.is_empty()) {
                let multiples = s.multiples(p, t as usize, c);
                for &(key, y) in column {
                    let a = &mut acc[key as usize];
                    let (q, r) = (y.unsigned_abs() / t as u64, (y.unsigned_abs() % t as u64) as i64);
                    for _ in 0..q {
                        s.add_multiple(a, &multiples, t * y.signum());
                    }
                    s.add_multiple(a, &multiples, r * y.signum());
                }
            }
        }
        None => {
            let niels: Vec<_> = points.iter().map(|p| s.to_niels(p, c)).collect();
            for (a, key) in acc.iter_mut().zip(keys) {
                *a = s.add_points(a, &s.buckets_wide(&key.y, &niels, c), c);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn small(rng: &mut ChaCha20Rng, n: usize, max: i64) -> Vec<i64> {
        (0..n).map(|_| (rand_core::Rng::next_u64(rng) % (2 * max as u64 + 1)) as i64 - max).collect()
    }

    /// The eight-lane product equals the serial one (both shapes of keys, rows not a multiple
    /// of eight), and its values out of bound are errors.
    #[test]
    fn lanes_and_serial_products_agree() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let table = DlogTable::new(1 << 17, 1 << 12).unwrap();
        // (rows, length, keys, largest key entry): buckets per key, then shared multiples.
        for (rows, n, k, max, x_max) in [
            (11, 40, 5, 30, 20),
            (9, 12, 20, 3, 20),
            (3, 7, 2, 1000, 20),
            (8, 5, 6, 0, 20),
            (5, 7, 3, 9000, 2),
            (9, 6, 600, 300, 20),
        ] {
            let (msk, mpk) = setup_with_rng(n, &mut rng).unwrap();
            let cts: Vec<Ciphertext> =
                (0..rows).map(|_| mpk.encrypt_with_rng(&small(&mut rng, n, x_max), &mut rng).unwrap()).collect();
            let keys: Vec<FunctionKey> = (0..k).map(|_| msk.derive(&small(&mut rng, n, max)).unwrap()).collect();
            let serial = table.solve_all(&matrix_product_serial(&cts, &keys).unwrap()).unwrap();
            let points = matrix_product_points(&cts, &keys).unwrap();
            assert_eq!(points.len(), rows * k);
            assert_eq!(points.solve(&table).unwrap(), serial, "{rows}×{n} by {k} keys up to {max}");
        }
        let (msk, mpk) = setup_with_rng(3, &mut rng).unwrap();
        let ct = mpk.encrypt_with_rng(&[(1 << 16) + 1, 1 << 16, 0], &mut rng).unwrap();
        let key = msk.derive(&[1, 1, 1]).unwrap();
        assert_eq!(matrix_product(&[ct], &[key], &table), Err(FeError::OutOfBound { bound: 1 << 17 }));
    }

    /// Key entries at the ends of `i64` decrypt (NAF), where the bucket method's cost
    /// estimate used to wrap and ask for a table of 2^64 buckets.
    #[test]
    fn extreme_key_entries_decrypt_without_panicking() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let table = DlogTable::new(1 << 17, 1 << 12).unwrap();
        let (msk, mpk) = setup_with_rng(3, &mut rng).unwrap();
        let ct = mpk.encrypt_with_rng(&[0, 0, 1], &mut rng).unwrap();
        for y in [[i64::MAX, i64::MIN, 5], [i64::MIN, 0, -7], [i64::MAX, i64::MAX, 0]] {
            let key = msk.derive(&y).unwrap();
            assert_eq!(ct.decrypt(&key, &table), Ok(y[2]), "{y:?}");
        }
    }

    /// Batch encryption (eight vectors per lane group with IFMA) decrypts to the plaintext
    /// product: negative entries, entries beyond 2^32 (the wider digit path; they cancel in
    /// the products), a batch that is not a multiple of eight, all three product methods.
    #[test]
    fn batch_encryption_gives_the_plaintext_product() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let table = DlogTable::new(1 << 17, 1 << 12).unwrap();
        // Fewer than four keys: each product split over the lanes.
        // 600 keys: two blocks of the `ct_0` pass, entries several times the shared table.
        let shapes = [
            (13, 30, 5, 40, false),
            (9, 10, 16, 2, false),
            (3, 6, 4, 3, true),
            (10, 12, 1, 100, false),
            (9, 6, 600, 300, false),
        ];
        for (rows, n, k, max, large) in shapes.into_iter().chain([(3, 6, 2, 3, true), (2, 9, 3, 140, false)]) {
            let (msk, mpk) = setup_with_rng(n, &mut rng).unwrap();
            let mut xs: Vec<Vec<i64>> = (0..rows).map(|_| small(&mut rng, n, 100)).collect();
            let mut ys: Vec<Vec<i64>> = (0..k).map(|_| small(&mut rng, n, max)).collect();
            if large {
                xs.iter_mut().for_each(|x| (x[0], x[1]) = ((1 << 35) + x[0], x[1] - (1 << 35)));
                ys.iter_mut().for_each(|y| y[1] = y[0]);
            }
            let keys: Vec<FunctionKey> = ys.iter().map(|y| msk.derive(y).unwrap()).collect();
            let batch = mpk.encryptor().encrypt_batch_with_rng(&xs, &mut rng).unwrap();
            assert_eq!((batch.len(), batch.vector_len()), (rows, n));
            let expected: Vec<i64> =
                xs.iter().flat_map(|x| ys.iter().map(|y| x.iter().zip(y).map(|(a, b)| a * b).sum::<i64>())).collect();
            assert_eq!(batch.product(&keys).unwrap().solve(&table).unwrap(), expected, "{rows}×{n} by {k} keys");
        }
    }

    /// The summed product (a different key per ciphertext, sums over the batch) equals the
    /// plaintext sums, in lanes and serially: small entries (one table), entries past 64
    /// (digit planes), outputs and batches that are not multiples of eight; wrong key counts
    /// are refused.
    #[test]
    fn summed_product_gives_the_plaintext_sums() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let table = DlogTable::new(1 << 20, 1 << 12).unwrap();
        for (rows, n, outputs, max) in [(11, 20, 5, 2), (8, 9, 9, 64), (5, 7, 3, 3000), (1, 4, 1, 0)] {
            let (msk, mpk) = setup_with_rng(n, &mut rng).unwrap();
            let xs: Vec<Vec<i64>> = (0..rows).map(|_| small(&mut rng, n, 100)).collect();
            let ys: Vec<Vec<i64>> = (0..outputs * rows).map(|_| small(&mut rng, n, max)).collect();
            let keys: Vec<FunctionKey> = ys.iter().map(|y| msk.derive(y).unwrap()).collect();
            let expected: Vec<i64> = (0..outputs)
                .map(|o| {
                    let dot = |b: usize| xs[b].iter().zip(&ys[o * rows + b]).map(|(a, c)| a * c).sum::<i64>();
                    (0..rows).map(dot).sum()
                })
                .collect();
            let batch = mpk.encryptor().encrypt_batch_with_rng(&xs, &mut rng).unwrap();
            assert_eq!(batch.summed_product(&keys).unwrap().solve(&table).unwrap(), expected, "{rows}×{n}, {max}");
            let cts = xs.iter().map(|x| mpk.encrypt_with_rng(x, &mut rng).unwrap()).collect();
            let serial = CiphertextBatch { n, len: rows, repr: BatchRepr::Serial(cts) };
            assert_eq!(serial.summed_product(&keys).unwrap().solve(&table).unwrap(), expected);
            if rows > 1 {
                assert!(matches!(batch.summed_product(&keys[1..]), Err(FeError::InvalidArgument(_))));
            }
        }
    }

    /// Key derivation by wide integer sums equals `Σ s_i·y_i` modulo ℓ, for any signs and
    /// sizes of `y_i` (including `i64::MIN`) and lengths past 785.
    #[test]
    fn derived_keys_are_the_inner_product_with_the_master_secret_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        for (n, max) in [(1, 1), (785, 100), (2000, i64::MAX), (5, 0)] {
            let (msk, _) = setup_with_rng(n, &mut rng).unwrap();
            let mut y = small(&mut rng, n, max.min(1 << 40));
            if max == i64::MAX {
                y[0] = i64::MIN;
                y[1] = i64::MAX;
            }
            let expected: Scalar = msk.s.iter().zip(&y).map(|(s, &v)| s * scalar_from_i64(v)).sum();
            assert_eq!(msk.derive(&y).unwrap().sk, expected, "n = {n}");
        }
    }
}
