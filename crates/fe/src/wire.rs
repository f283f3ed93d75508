//! A safe wire format for the public objects of functional encryption, mirroring
//! `blindfold_ckks::serialize`.
//!
//! Layout: a fixed 51-byte header followed by a body of fixed layout (a batch of ciphertexts
//! starts with its count, little-endian `u32`, at most [`MAX_BATCH`]).
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `BFFE` |
//! | 4..6 | format version, little-endian `u16` ([`FORMAT_VERSION`]) |
//! | 6 | object kind ([`ObjectKind`]) |
//! | 7..39 | parameter fingerprint ([`FeParams::fingerprint`]: group, scheme, vector length) |
//! | 39..43 | key-pair generation, little-endian `u32` |
//! | 43..51 | body length, little-endian `u64` |
//!
//! Group elements are 32-byte ristretto255 encodings (RFC 9496), scalars 32 canonical
//! little-endian bytes, integers little-endian. Every body's length follows from the kind and
//! the parameters, so [`deserialize`] checks, before it allocates anything: magic, version,
//! kind, fingerprint, generation, then the exact length; then every point (a valid encoding),
//! every scalar (canonical), and the ciphertexts' precomputed `2^{32k}·ct_0`. Arbitrary bytes
//! give an error, never a panic. Master secret keys have no wire form.

use crate::{febo, ipfe, FeError, Result};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;

/// Version of the wire format written by this crate.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: [u8; 4] = *b"BFFE";
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 51;
/// Longest vector a wire object may carry (`2^20` entries; CryptoNN's are 785).
pub const MAX_LEN: usize = 1 << 20;

/// What a serialized object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum ObjectKind {
    /// [`ipfe::MasterPublicKey`].
    IpfePublicKey = 1,
    /// [`ipfe::Ciphertext`].
    IpfeCiphertext = 2,
    /// [`ipfe::FunctionKey`].
    IpfeFunctionKey = 3,
    /// [`febo::MasterPublicKey`].
    FeboPublicKey = 4,
    /// [`febo::Ciphertext`].
    FeboCiphertext = 5,
    /// [`febo::FunctionKey`].
    FeboFunctionKey = 6,
    /// [`ipfe::CiphertextBatch`].
    IpfeCiphertextBatch = 7,
}

impl ObjectKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::IpfePublicKey,
            2 => Self::IpfeCiphertext,
            3 => Self::IpfeFunctionKey,
            4 => Self::FeboPublicKey,
            5 => Self::FeboCiphertext,
            6 => Self::FeboFunctionKey,
            7 => Self::IpfeCiphertextBatch,
            _ => return None,
        })
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::IpfePublicKey => "inner-product FE public key",
            Self::IpfeCiphertext => "inner-product FE ciphertext",
            Self::IpfeFunctionKey => "inner-product FE function key",
            Self::FeboPublicKey => "FEBO public key",
            Self::FeboCiphertext => "FEBO ciphertext",
            Self::FeboFunctionKey => "FEBO function key",
            Self::IpfeCiphertextBatch => "inner-product FE ciphertext batch",
        }
    }
}

/// What an object is made for: the vector length of the inner-product scheme (1 for FEBO)
/// and the key-pair generation (the key authority's counter of rotations), so that objects
/// of another length or of a stale key pair are refused by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeParams {
    /// Vector length `n` (1 for FEBO objects).
    pub n: usize,
    /// Key-pair generation.
    pub generation: u32,
}

impl FeParams {
    /// SHA-256 of the group, the scheme's domain and the vector length.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"blindfold-fe ristretto255 v1");
        h.update((self.n as u64).to_le_bytes());
        h.finalize().into()
    }
}

/// An object with a wire form: public keys, ciphertexts, function keys.
pub trait WireObject: Sized {
    /// Its kind tag.
    const KIND: ObjectKind;
    /// The body's length for `params`, given the body (variable-length objects read their
    /// count from its first bytes); `None` if the count is out of range.
    #[doc(hidden)]
    fn body_len(body: &[u8], params: &FeParams) -> Option<usize>;
    #[doc(hidden)]
    fn encode_body(&self, out: &mut Vec<u8>);
    #[doc(hidden)]
    fn decode_body(body: &[u8], params: &FeParams) -> Result<Self>;
    #[doc(hidden)]
    fn len_of(&self) -> usize;
}

fn malformed(what: &str, reason: impl std::fmt::Display) -> FeError {
    FeError::InvalidArgument(format!("malformed {what}: {reason}"))
}

/// Serializes `obj` for a key pair of `generation`.
///
/// # Errors
/// [`FeError::InvalidArgument`] for a vector longer than [`MAX_LEN`].
pub fn serialize<T: WireObject>(obj: &T, generation: u32) -> Result<Vec<u8>> {
    let params = FeParams { n: obj.len_of(), generation };
    if params.n > MAX_LEN {
        return Err(FeError::InvalidArgument(format!("{} entries, more than {MAX_LEN}", params.n)));
    }
    let mut body = Vec::new();
    obj.encode_body(&mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(T::KIND as u8);
    out.extend_from_slice(&params.fingerprint());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Deserializes untrusted bytes into a `T` made for `params`.
///
/// # Errors
/// [`FeError::InvalidArgument`] naming the object and what was wrong: not a blindfold FE
/// object, another version or kind, another vector length (fingerprint), a stale or future
/// key-pair generation, a wrong length, an invalid point or scalar, inconsistent precomputed
/// powers.
pub fn deserialize<T: WireObject>(bytes: &[u8], params: &FeParams) -> Result<T> {
    let what = T::KIND.name();
    if params.n == 0 || params.n > MAX_LEN {
        return Err(FeError::InvalidArgument(format!("vector length {} outside 1..={MAX_LEN}", params.n)));
    }
    if bytes.len() < HEADER_LEN {
        return Err(malformed(what, format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
    }
    if bytes[..4] != MAGIC {
        return Err(malformed(what, "not a blindfold FE object (bad magic)"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(malformed(what, format!("format version {version}, this library reads {FORMAT_VERSION}")));
    }
    match ObjectKind::from_u8(bytes[6]) {
        Some(k) if k == T::KIND => {}
        Some(k) => return Err(malformed(what, format!("this is a {}", k.name()))),
        None => return Err(malformed(what, format!("unknown object kind {}", bytes[6]))),
    }
    if bytes[7..39] != params.fingerprint() {
        return Err(malformed(what, format!("made for other parameters than vectors of length {}", params.n)));
    }
    let generation = u32::from_le_bytes(bytes[39..43].try_into().expect("4 bytes"));
    if generation != params.generation {
        return Err(malformed(
            what,
            format!("made for key-pair generation {generation}, the current one is {}", params.generation),
        ));
    }
    let announced = u64::from_le_bytes(bytes[43..51].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_LEN..];
    let expected = T::body_len(body, params).ok_or_else(|| malformed(what, "a count out of range"))?;
    if announced != expected as u64 || body.len() != expected {
        return Err(malformed(
            what,
            format!("header announces {announced} body bytes, {} present, {expected} expected", body.len()),
        ));
    }
    T::decode_body(body, params)
}

/// One ciphertext of length `n`: `ct_0`, its powers (checked against it), `ct_1..n`.
fn read_ciphertext(r: &mut Reader<'_>, n: usize) -> Result<ipfe::Ciphertext> {
    let ct0 = r.point()?;
    let mut ct0_powers = [RistrettoPoint::default(); ipfe::LIMBS - 1];
    let mut expect = ct0;
    for p in ct0_powers.iter_mut() {
        *p = r.point()?;
        for _ in 0..32 {
            expect = expect + expect;
        }
        if *p != expect {
            return Err(malformed(r.what, "its precomputed 2^{32k}·ct_0 do not match ct_0"));
        }
    }
    Ok(ipfe::Ciphertext { ct0, ct0_powers, cts: r.points(n)? })
}

/// Most ciphertexts in one batch (`2^16`).
pub const MAX_BATCH: usize = 1 << 16;

impl WireObject for ipfe::CiphertextBatch {
    const KIND: ObjectKind = ObjectKind::IpfeCiphertextBatch;
    fn body_len(body: &[u8], params: &FeParams) -> Option<usize> {
        let count = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
        (count <= MAX_BATCH).then(|| 4 + count * 32 * (ipfe::LIMBS + params.n))
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        for p in self.encoded_points() {
            out.extend_from_slice(&p);
        }
    }
    fn decode_body(body: &[u8], params: &FeParams) -> Result<Self> {
        let mut r = Reader { bytes: body, what: Self::KIND.name() };
        let count = u32::from_le_bytes(r.take(4).try_into().expect("4 bytes")) as usize;
        #[cfg(target_arch = "x86_64")]
        if let Some(batch) = ipfe::CiphertextBatch::decode_lanes(params.n, count, r.bytes) {
            return batch.map_err(|reason| malformed(r.what, reason));
        }
        let cts = (0..count).map(|_| read_ciphertext(&mut r, params.n)).collect::<Result<_>>()?;
        Ok(ipfe::CiphertextBatch::from_ciphertexts(params.n, cts))
    }
    fn len_of(&self) -> usize {
        self.vector_len()
    }
}

/// A reader over a body whose length has been checked.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }

    fn point(&mut self) -> Result<RistrettoPoint> {
        let c = CompressedRistretto(self.take(32).try_into().expect("32 bytes"));
        c.decompress().ok_or_else(|| malformed(self.what, "an invalid ristretto255 encoding"))
    }

    fn points(&mut self, n: usize) -> Result<Vec<RistrettoPoint>> {
        (0..n).map(|_| self.point()).collect()
    }

    fn scalar(&mut self) -> Result<Scalar> {
        let b: [u8; 32] = self.take(32).try_into().expect("32 bytes");
        Option::from(Scalar::from_canonical_bytes(b)).ok_or_else(|| malformed(self.what, "a non-canonical scalar"))
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}

fn put_points<'a>(out: &mut Vec<u8>, points: impl IntoIterator<Item = &'a RistrettoPoint>) {
    for p in points {
        out.extend_from_slice(p.compress().as_bytes());
    }
}

impl WireObject for ipfe::MasterPublicKey {
    const KIND: ObjectKind = ObjectKind::IpfePublicKey;
    fn body_len(_: &[u8], params: &FeParams) -> Option<usize> {
        Some(32 * params.n)
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        put_points(out, &self.h);
    }
    fn decode_body(body: &[u8], params: &FeParams) -> Result<Self> {
        Ok(Self { h: Reader { bytes: body, what: Self::KIND.name() }.points(params.n)? })
    }
    fn len_of(&self) -> usize {
        self.h.len()
    }
}

impl WireObject for ipfe::Ciphertext {
    const KIND: ObjectKind = ObjectKind::IpfeCiphertext;
    fn body_len(_: &[u8], params: &FeParams) -> Option<usize> {
        Some(32 * (ipfe::LIMBS + params.n))
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        put_points(out, std::iter::once(&self.ct0).chain(&self.ct0_powers).chain(&self.cts));
    }
    fn decode_body(body: &[u8], params: &FeParams) -> Result<Self> {
        read_ciphertext(&mut Reader { bytes: body, what: Self::KIND.name() }, params.n)
    }
    fn len_of(&self) -> usize {
        self.cts.len()
    }
}

impl WireObject for ipfe::FunctionKey {
    const KIND: ObjectKind = ObjectKind::IpfeFunctionKey;
    fn body_len(_: &[u8], params: &FeParams) -> Option<usize> {
        Some(8 * params.n + 32)
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        for y in &self.y {
            out.extend_from_slice(&y.to_le_bytes());
        }
        out.extend_from_slice(self.sk.as_bytes());
    }
    fn decode_body(body: &[u8], params: &FeParams) -> Result<Self> {
        let mut r = Reader { bytes: body, what: Self::KIND.name() };
        let y = (0..params.n).map(|_| r.i64()).collect();
        Ok(Self { y, sk: r.scalar()? })
    }
    fn len_of(&self) -> usize {
        self.y.len()
    }
}

impl WireObject for febo::MasterPublicKey {
    const KIND: ObjectKind = ObjectKind::FeboPublicKey;
    fn body_len(_: &[u8], _: &FeParams) -> Option<usize> {
        Some(32)
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        put_points(out, [&self.h]);
    }
    fn decode_body(body: &[u8], _: &FeParams) -> Result<Self> {
        Ok(Self { h: Reader { bytes: body, what: Self::KIND.name() }.point()? })
    }
    fn len_of(&self) -> usize {
        1
    }
}

impl WireObject for febo::Ciphertext {
    const KIND: ObjectKind = ObjectKind::FeboCiphertext;
    fn body_len(_: &[u8], _: &FeParams) -> Option<usize> {
        Some(64)
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        put_points(out, [&self.cmt, &self.ct]);
    }
    fn decode_body(body: &[u8], _: &FeParams) -> Result<Self> {
        let mut r = Reader { bytes: body, what: Self::KIND.name() };
        Ok(Self { cmt: r.point()?, ct: r.point()? })
    }
    fn len_of(&self) -> usize {
        1
    }
}

impl WireObject for febo::FunctionKey {
    const KIND: ObjectKind = ObjectKind::FeboFunctionKey;
    fn body_len(_: &[u8], _: &FeParams) -> Option<usize> {
        Some(1 + 8 + 32 + 32)
    }
    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(match self.op {
            febo::Operation::Add => 0,
            febo::Operation::Sub => 1,
            febo::Operation::Mul => 2,
        });
        out.extend_from_slice(&self.y.to_le_bytes());
        out.extend_from_slice(self.cmt.as_bytes());
        put_points(out, [&self.key]);
    }
    fn decode_body(body: &[u8], _: &FeParams) -> Result<Self> {
        let mut r = Reader { bytes: body, what: Self::KIND.name() };
        let op = match r.take(1)[0] {
            0 => febo::Operation::Add,
            1 => febo::Operation::Sub,
            2 => febo::Operation::Mul,
            b => return Err(malformed(r.what, format!("unknown operation {b}"))),
        };
        let y = r.i64();
        let cmt = CompressedRistretto(r.take(32).try_into().expect("32 bytes"));
        if cmt.decompress().is_none() {
            return Err(malformed(r.what, "its commitment is not a ristretto255 encoding"));
        }
        Ok(Self { op, y, cmt, key: r.point()? })
    }
    fn len_of(&self) -> usize {
        1
    }
}
