//! One safe wire format for every object that crosses a trust boundary.
//!
//! Layout: a fixed 47-byte header followed by a [postcard](https://docs.rs/postcard) body.
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `BFCK` |
//! | 4..6 | format version, little-endian `u16` ([`FORMAT_VERSION`]) |
//! | 6 | object kind ([`ObjectKind`]) |
//! | 7..39 | parameter fingerprint ([`crate::Parameters::fingerprint`]) |
//! | 39..47 | body length, little-endian `u64` |
//!
//! Residue polynomials are bit-packed at the bit length of their prime, so a ciphertext
//! costs `Σ_i N·bits(q_i)/8` bytes per polynomial. Fresh secret-key ciphertexts and all keys
//! are stored with their uniform `a` polynomials replaced by 32-byte seeds.
//!
//! [`deserialize`] checks, in order and before allocating anything sized by the input: the
//! magic, version, kind and fingerprint, the total size against a limit, the body length,
//! then every length, level, scale and residue (each below its prime) of the body. Arbitrary
//! bytes give an [`Error`], never a panic.

use crate::context::Context;
use crate::crypto::SeededCiphertext;
use crate::error::{Error, Result};
use crate::keys::{
    expand_uniform, inverse_permutation, key_indices, permuted_key, EncapsulationKeys, GaloisKeys, KeyDigit,
    KeySwitchingKey, PublicKey, RelinearizationKey, SecretKey,
};
use crate::types::Ciphertext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Version of the wire format written by this library.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: [u8; 4] = *b"BFCK";
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 47;
/// Default bound on the number of Galois keys in one object (a deserialization limit,
/// raise it with [`deserialize_with_limit`]).
pub const MAX_GALOIS_KEYS: usize = 256;

/// What a serialized object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum ObjectKind {
    /// [`Ciphertext`].
    Ciphertext = 1,
    /// [`SeededCiphertext`].
    SeededCiphertext = 2,
    /// [`PublicKey`].
    PublicKey = 4,
    /// [`RelinearizationKey`].
    RelinearizationKey = 5,
    /// [`GaloisKeys`].
    GaloisKeys = 6,
    /// [`SecretKey`].
    SecretKey = 7,
    /// [`EncapsulationKeys`].
    EncapsulationKeys = 8,
}

impl ObjectKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Ciphertext,
            2 => Self::SeededCiphertext,
            4 => Self::PublicKey,
            5 => Self::RelinearizationKey,
            6 => Self::GaloisKeys,
            7 => Self::SecretKey,
            8 => Self::EncapsulationKeys,
            _ => return None,
        })
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ciphertext => "ciphertext",
            Self::SeededCiphertext => "seeded ciphertext",
            Self::PublicKey => "public key",
            Self::RelinearizationKey => "relinearization key",
            Self::GaloisKeys => "Galois keys",
            Self::SecretKey => "secret key",
            Self::EncapsulationKeys => "encapsulation keys",
        }
    }
}

/// The parsed fixed header of a serialized object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Object kind.
    pub kind: ObjectKind,
    /// Fingerprint of the parameters the object was made for.
    pub fingerprint: [u8; 32],
    /// Length of the body in bytes.
    pub body_len: u64,
}

fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed { what, reason: reason.into() }
}

fn hex8(f: &[u8; 32]) -> String {
    f[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses and checks the fixed header (magic, version, kind) without looking at the body.
///
/// # Errors
/// [`Error::Malformed`] for short input, wrong magic, unknown version or kind.
pub fn read_header(bytes: &[u8]) -> Result<Header> {
    const WHAT: &str = "object header";
    if bytes.len() < HEADER_LEN {
        return Err(malformed(WHAT, format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
    }
    if bytes[..4] != MAGIC {
        return Err(malformed(WHAT, "not a blindfold CKKS object (bad magic)"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(malformed(WHAT, format!("format version {version}, this library reads {FORMAT_VERSION}")));
    }
    let kind =
        ObjectKind::from_u8(bytes[6]).ok_or_else(|| malformed(WHAT, format!("unknown object kind {}", bytes[6])))?;
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&bytes[7..39]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[39..47]);
    Ok(Header { version, kind, fingerprint, body_len: u64::from_le_bytes(len) })
}

/// An object with a wire form.
pub trait WireObject: Sized {
    /// Its kind tag.
    const KIND: ObjectKind;
    /// Largest serialized size accepted by [`deserialize`] for these parameters.
    fn max_size(ctx: &Context) -> usize;
    #[doc(hidden)]
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>>;
    #[doc(hidden)]
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self>;
}

/// Serializes `obj` (made under `ctx`'s parameters) with the versioned header.
///
/// Only public objects (ciphertexts and public keys) have a wire form; a [`SecretKey`]
/// exports through [`SecretKey::to_bytes`], and plaintexts not at all.
///
/// # Errors
/// [`Error::InvalidArgument`] if the object does not match `ctx` (e.g. a ciphertext with
/// more residues than the parameters have).
pub fn serialize<T: WireObject>(obj: &T, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    Ok(frame(T::KIND, ctx, &obj.encode_body(ctx)?))
}

/// Header and body: the bytes of an object of `kind`.
fn frame(kind: ObjectKind, ctx: &Context, body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(ctx.params().fingerprint());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Deserializes untrusted bytes into a `T` for `ctx`'s parameters, with the default size
/// limit `T::max_size(ctx)`.
///
/// # Errors
/// [`Error::Malformed`] for anything that is not a well-formed `T`;
/// [`Error::ParameterMismatch`] if it was made for other parameters.
pub fn deserialize<T: WireObject>(bytes: &[u8], ctx: &Arc<Context>) -> Result<T> {
    deserialize_with_limit(bytes, ctx, T::max_size(ctx))
}

/// [`deserialize`] with an explicit size limit in bytes.
///
/// # Errors
/// As [`deserialize`].
pub fn deserialize_with_limit<T: WireObject>(bytes: &[u8], ctx: &Arc<Context>, limit: usize) -> Result<T> {
    T::decode_body(unframe(bytes, T::KIND, ctx, limit)?, ctx)
}

/// The body of an object of `kind` made for `ctx`'s parameters, after checking the header,
/// the fingerprint, the size limit and the body length.
fn unframe<'a>(bytes: &'a [u8], kind: ObjectKind, ctx: &Context, limit: usize) -> Result<&'a [u8]> {
    let what = kind.name();
    let header = read_header(bytes)?;
    if header.kind != kind {
        return Err(malformed(what, format!("this is a {}, expected a {what}", header.kind.name())));
    }
    if &header.fingerprint != ctx.params().fingerprint() {
        return Err(Error::ParameterMismatch {
            what,
            expected: hex8(ctx.params().fingerprint()),
            found: hex8(&header.fingerprint),
        });
    }
    if bytes.len() > limit {
        return Err(malformed(what, format!("{} bytes exceeds the limit of {limit} bytes", bytes.len())));
    }
    let body = &bytes[HEADER_LEN..];
    if header.body_len != body.len() as u64 {
        return Err(malformed(
            what,
            format!("header announces {} body bytes, {} present", header.body_len, body.len()),
        ));
    }
    Ok(body)
}

fn to_postcard<T: Serialize>(v: &T) -> Result<Zeroizing<Vec<u8>>> {
    postcard::to_allocvec(v)
        .map(Zeroizing::new)
        .map_err(|e| Error::InvalidArgument(format!("serialization failed: {e}")))
}

fn from_postcard<'a, T: Deserialize<'a>>(what: &'static str, body: &'a [u8]) -> Result<T> {
    let (v, rest) =
        postcard::take_from_bytes(body).map_err(|e| malformed(what, format!("body does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(what, format!("{} trailing bytes after the body", rest.len())));
    }
    Ok(v)
}

/// Packed size in bytes of a polynomial with residues for the full-basis indices `indices`.
fn packed_len(ctx: &Context, indices: &[usize]) -> usize {
    indices.iter().map(|&i| (ctx.n() * ctx.moduli[i].bits() as usize).div_ceil(8)).sum()
}

/// Bit-packs the residues `poly[k·N..]` modulo the primes `indices[k]`, each residue
/// polynomial starting on a byte boundary, little-endian bit order.
fn pack(ctx: &Context, poly: &[u64], indices: &[usize]) -> Result<Vec<u8>> {
    let n = ctx.n();
    if poly.len() != indices.len() * n {
        return Err(Error::InvalidArgument("polynomial does not match the parameters".into()));
    }
    // Whole words are written in place; `len` tracks the bytes in use.
    let mut out = vec![0u8; packed_len(ctx, indices) + 8];
    let mut len = 0;
    for (k, &i) in indices.iter().enumerate() {
        let bits = ctx.moduli[i].bits();
        let (mut acc, mut nacc) = (0u128, 0u32);
        for &x in &poly[k * n..(k + 1) * n] {
            acc |= (x as u128) << nacc;
            nacc += bits;
            if nacc >= 64 {
                out[len..len + 8].copy_from_slice(&(acc as u64).to_le_bytes());
                len += 8;
                acc >>= 64;
                nacc -= 64;
            }
        }
        out[len..len + 8].copy_from_slice(&(acc as u64).to_le_bytes());
        len += nacc.div_ceil(8) as usize;
    }
    out.truncate(len);
    Ok(out)
}

/// Inverse of [`pack`], checking the length and that every residue is below its prime.
fn unpack(ctx: &Context, bytes: &[u8], indices: &[usize], what: &'static str) -> Result<Vec<u64>> {
    let expected = packed_len(ctx, indices);
    if bytes.len() != expected {
        return Err(malformed(what, format!("polynomial of {} bytes, expected {expected}", bytes.len())));
    }
    let n = ctx.n();
    let mut out = Vec::with_capacity(indices.len() * n);
    let mut start = 0;
    for &i in indices {
        let q = ctx.moduli[i].value();
        let bits = ctx.moduli[i].bits();
        let mask = (1u64 << bits) - 1;
        let end = start + (n * bits as usize).div_ceil(8);
        let src = &bytes[start..end];
        let (mut acc, mut nacc, mut pos) = (0u128, 0u32, 0usize);
        let mut bad = false;
        for _ in 0..n {
            if nacc < bits {
                // Refill with up to 8 bytes (fewer at the end of the residue).
                let take = (src.len() - pos).min(8);
                let mut word = [0u8; 8];
                word[..take].copy_from_slice(&src[pos..pos + take]);
                acc |= (u64::from_le_bytes(word) as u128) << nacc;
                nacc += 8 * take as u32;
                pos += take;
            }
            let x = acc as u64 & mask;
            acc >>= bits;
            nacc -= bits;
            bad |= x >= q;
            out.push(x);
        }
        if bad {
            let x = out[out.len() - n..].iter().find(|&&x| x >= q).copied().unwrap_or(0);
            return Err(malformed(what, format!("residue {x} not below its prime {q}")));
        }
        if acc != 0 {
            return Err(malformed(what, "non-zero padding bits"));
        }
        start = end;
    }
    Ok(out)
}

fn check_level(ctx: &Context, level: u8, what: &'static str) -> Result<usize> {
    let level = level as usize;
    if level > ctx.max_level() {
        return Err(malformed(what, format!("level {level} above the top level {}", ctx.max_level())));
    }
    Ok(level)
}

fn check_scale(scale: f64, what: &'static str) -> Result<f64> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(malformed(what, format!("scale {scale} is not a positive finite number")));
    }
    Ok(scale)
}

fn q_indices(level: usize) -> Vec<usize> {
    (0..=level).collect()
}

#[derive(Serialize, Deserialize)]
struct CiphertextWire {
    level: u8,
    scale: f64,
    parts: Vec<serde_bytes::ByteBuf>,
}

impl WireObject for Ciphertext {
    const KIND: ObjectKind = ObjectKind::Ciphertext;
    fn max_size(ctx: &Context) -> usize {
        HEADER_LEN + 64 + 3 * (packed_len(ctx, &q_indices(ctx.max_level())) + 10)
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        let idx = q_indices(self.level);
        let parts =
            self.parts.iter().map(|p| pack(ctx, p, &idx).map(serde_bytes::ByteBuf::from)).collect::<Result<_>>()?;
        to_postcard(&CiphertextWire { level: self.level as u8, scale: self.scale, parts })
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "ciphertext";
        let w: CiphertextWire = from_postcard(WHAT, body)?;
        let level = check_level(ctx, w.level, WHAT)?;
        let scale = check_scale(w.scale, WHAT)?;
        if !(2..=3).contains(&w.parts.len()) {
            return Err(malformed(WHAT, format!("{} polynomials, expected 2 or 3", w.parts.len())));
        }
        let idx = q_indices(level);
        let parts = w.parts.iter().map(|p| unpack(ctx, p, &idx, WHAT)).collect::<Result<_>>()?;
        Ok(Ciphertext { parts, level, scale })
    }
}

#[derive(Serialize, Deserialize)]
struct SeededCiphertextWire {
    level: u8,
    scale: f64,
    c0: serde_bytes::ByteBuf,
    seed: [u8; 32],
}

impl WireObject for SeededCiphertext {
    const KIND: ObjectKind = ObjectKind::SeededCiphertext;
    fn max_size(ctx: &Context) -> usize {
        HEADER_LEN + 64 + packed_len(ctx, &q_indices(ctx.max_level())) + 10
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        let c0 = pack(ctx, &self.c0, &q_indices(self.level))?.into();
        to_postcard(&SeededCiphertextWire { level: self.level as u8, scale: self.scale, c0, seed: self.seed })
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "seeded ciphertext";
        let w: SeededCiphertextWire = from_postcard(WHAT, body)?;
        let level = check_level(ctx, w.level, WHAT)?;
        let scale = check_scale(w.scale, WHAT)?;
        let c0 = unpack(ctx, &w.c0, &q_indices(level), WHAT)?;
        Ok(SeededCiphertext { c0, seed: w.seed, level, scale })
    }
}

#[derive(Serialize, Deserialize)]
struct SeededPolyWire {
    b: serde_bytes::ByteBuf,
    seed: [u8; 32],
}

impl WireObject for PublicKey {
    const KIND: ObjectKind = ObjectKind::PublicKey;
    fn max_size(ctx: &Context) -> usize {
        HEADER_LEN + 64 + packed_len(ctx, &q_indices(ctx.max_level()))
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        let b = pack(ctx, &self.b, &q_indices(ctx.max_level()))?.into();
        to_postcard(&SeededPolyWire { b, seed: self.seed })
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "public key";
        let w: SeededPolyWire = from_postcard(WHAT, body)?;
        let idx = q_indices(ctx.max_level());
        let b = unpack(ctx, &w.b, &idx, WHAT)?;
        let a = expand_uniform(ctx, &w.seed, idx.into_iter());
        Ok(PublicKey { b, a, seed: w.seed })
    }
}

fn full_indices(ctx: &Context) -> Vec<usize> {
    (0..ctx.moduli.len()).collect()
}

fn ksk_size(ctx: &Context) -> usize {
    ctx.params().dnum() * (packed_len(ctx, &full_indices(ctx)) + 48)
}

/// Largest serialized size of [`GaloisKeys`] holding `count` keys for `ctx`'s parameters (keys
/// made for lower levels are smaller): the limit to pass to [`deserialize_with_limit`] when
/// the number of keys expected is known, e.g. from a circuit's declared rotations.
pub fn galois_keys_max_size(ctx: &Context, count: usize) -> usize {
    HEADER_LEN + 64 + count.saturating_mul(ksk_size(ctx) + 16)
}

#[derive(Serialize, Deserialize)]
struct KskWire {
    max_level: u8,
    digits: Vec<SeededPolyWire>,
}

fn ksk_to_wire(ctx: &Context, k: &KeySwitchingKey) -> Result<KskWire> {
    let idx = key_indices(ctx, k.max_level);
    let digits = k
        .digits
        .iter()
        .map(|d| Ok(SeededPolyWire { b: pack(ctx, &d.b, &idx)?.into(), seed: d.seed }))
        .collect::<Result<_>>()?;
    Ok(KskWire { max_level: k.max_level as u8, digits })
}

fn ksk_from_wire(ctx: &Context, w: &KskWire, what: &'static str) -> Result<KeySwitchingKey> {
    let max_level = check_level(ctx, w.max_level, what)?;
    let expected = (max_level + 1).div_ceil(ctx.params().alpha());
    if w.digits.len() != expected {
        return Err(malformed(what, format!("{} digits, level {max_level} has {expected}", w.digits.len())));
    }
    let idx = key_indices(ctx, max_level);
    let digits = w
        .digits
        .iter()
        .map(|d| {
            let b = unpack(ctx, &d.b, &idx, what)?;
            let a = expand_uniform(ctx, &d.seed, idx.iter().copied());
            Ok(KeyDigit { b, a, seed: d.seed })
        })
        .collect::<Result<_>>()?;
    Ok(KeySwitchingKey { digits, max_level, fingerprint: *ctx.params().fingerprint() })
}

impl WireObject for RelinearizationKey {
    const KIND: ObjectKind = ObjectKind::RelinearizationKey;
    fn max_size(ctx: &Context) -> usize {
        HEADER_LEN + 64 + ksk_size(ctx)
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        to_postcard(&ksk_to_wire(ctx, &self.0)?)
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "relinearization key";
        let w: KskWire = from_postcard(WHAT, body)?;
        Ok(RelinearizationKey(ksk_from_wire(ctx, &w, WHAT)?))
    }
}

#[derive(Serialize, Deserialize)]
struct EncapsulationWire {
    hamming_weight: u32,
    to_sparse: KskWire,
    from_sparse: KskWire,
}

impl WireObject for EncapsulationKeys {
    const KIND: ObjectKind = ObjectKind::EncapsulationKeys;
    fn max_size(ctx: &Context) -> usize {
        HEADER_LEN + 64 + 2 * ksk_size(ctx)
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        to_postcard(&EncapsulationWire {
            hamming_weight: self.hamming_weight as u32,
            to_sparse: ksk_to_wire(ctx, &self.to_sparse)?,
            from_sparse: ksk_to_wire(ctx, &self.from_sparse)?,
        })
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "encapsulation keys";
        let w: EncapsulationWire = from_postcard(WHAT, body)?;
        let hamming_weight = w.hamming_weight as usize;
        if hamming_weight == 0 || hamming_weight > ctx.n() {
            return Err(malformed(
                WHAT,
                format!("a sparse secret of {hamming_weight} nonzero coefficients for N = {}", ctx.n()),
            ));
        }
        let to_sparse = ksk_from_wire(ctx, &w.to_sparse, WHAT)?;
        if to_sparse.max_level != 0 {
            return Err(malformed(
                WHAT,
                format!("the key to the sparse secret is for level {}, not 0", to_sparse.max_level),
            ));
        }
        let from_sparse = ksk_from_wire(ctx, &w.from_sparse, WHAT)?;
        if from_sparse.max_level != ctx.max_level() {
            return Err(malformed(
                WHAT,
                format!(
                    "the key back from the sparse secret is for level {}, not the top level {}",
                    from_sparse.max_level,
                    ctx.max_level()
                ),
            ));
        }
        Ok(EncapsulationKeys { hamming_weight, to_sparse, from_sparse })
    }
}

impl WireObject for GaloisKeys {
    const KIND: ObjectKind = ObjectKind::GaloisKeys;
    fn max_size(ctx: &Context) -> usize {
        galois_keys_max_size(ctx, MAX_GALOIS_KEYS)
    }
    fn encode_body(&self, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
        // Held as π⁻¹(k): the wire carries k.
        let keys: Vec<(u64, KskWire)> = self
            .keys
            .iter()
            .map(|(&g, (k, perm))| Ok((g, ksk_to_wire(ctx, &permuted_key(k, perm))?)))
            .collect::<Result<_>>()?;
        to_postcard(&keys)
    }
    fn decode_body(body: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "Galois keys";
        let w: Vec<(u64, KskWire)> = from_postcard(WHAT, body)?;
        let mut keys = BTreeMap::new();
        for (g, k) in &w {
            if g % 2 == 0 || *g >= 2 * ctx.n() as u64 || *g == 1 {
                return Err(malformed(WHAT, format!("invalid Galois element {g}")));
            }
            if keys.contains_key(g) {
                return Err(malformed(WHAT, format!("Galois element {g} appears twice")));
            }
            let perm = ctx.galois_permutation(crate::GaloisElement(*g));
            let key = permuted_key(&ksk_from_wire(ctx, k, WHAT)?, &inverse_permutation(&perm));
            keys.insert(*g, (key, perm));
        }
        Ok(GaloisKeys { keys })
    }
}

#[derive(Serialize, Deserialize)]
struct SecretKeyWire {
    /// Two bits per coefficient: 0 → 0, 1 → 1, 2 → -1.
    coeffs: serde_bytes::ByteBuf,
}

impl Drop for SecretKeyWire {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.coeffs.as_mut_slice().zeroize();
    }
}

impl SecretKey {
    /// The key in the wire format (kind "secret key", with the header and parameter
    /// fingerprint), in bytes that are zeroized on drop: write them only to the client's own
    /// storage (e.g. a file created with mode 0600), never into a message.
    ///
    /// # Errors
    /// None in practice; [`Error::InvalidArgument`] is reserved for a key of other parameters.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut packed = Zeroizing::new(vec![0u8; self.coeffs.len().div_ceil(4)]);
        for (i, &c) in self.coeffs.iter().enumerate() {
            // c in {-1, 0, 1} → {2, 0, 1}, branch-free.
            let sign = ((c >> 63) & 1) as u8;
            let code = ((c & 1) as u8 & !sign) | (sign << 1);
            packed[i / 4] |= code << (2 * (i % 4));
        }
        let body = to_postcard(&SecretKeyWire { coeffs: serde_bytes::ByteBuf::from(std::mem::take(&mut *packed)) })?;
        Ok(frame(ObjectKind::SecretKey, &self.ctx, &body))
    }

    /// Reads a key written by [`SecretKey::to_bytes`] for `ctx`'s parameters.
    ///
    /// A key with fewer than `N/4` non-zero coefficients is refused: a uniform ternary key
    /// has about `2N/3`, so such a file is corrupted (an all-zero key would "decrypt"
    /// anything to its first component).
    ///
    /// # Errors
    /// [`Error::Malformed`] for bytes that are not such a key; [`Error::ParameterMismatch`]
    /// for a key of other parameters.
    pub fn from_bytes(bytes: &[u8], ctx: &Arc<Context>) -> Result<Self> {
        const WHAT: &str = "secret key";
        let body = unframe(bytes, ObjectKind::SecretKey, ctx, HEADER_LEN + 16 + ctx.n() / 4)?;
        let w: SecretKeyWire = from_postcard(WHAT, body)?;
        let n = ctx.n();
        if w.coeffs.len() != n / 4 {
            return Err(malformed(WHAT, format!("{} bytes of coefficients, expected {}", w.coeffs.len(), n / 4)));
        }
        let mut coeffs = Zeroizing::new(vec![0i64; n]);
        let (mut invalid, mut weight) = (0u8, 0usize);
        for (i, c) in coeffs.iter_mut().enumerate() {
            let code = (w.coeffs[i / 4] >> (2 * (i % 4))) & 3;
            invalid |= code & (code >> 1); // code 3
            weight += ((code | (code >> 1)) & 1) as usize;
            *c = (code & 1) as i64 - ((code >> 1) as i64);
        }
        if invalid != 0 {
            return Err(malformed(WHAT, "coefficient code 3 is not a ternary value"));
        }
        if weight < n / 4 {
            return Err(malformed(
                WHAT,
                format!("{weight} non-zero coefficients of {n}: not a uniform ternary key (corrupted?)"),
            ));
        }
        Ok(SecretKey::from_coefficients(ctx, coeffs))
    }
}
