//! Tier (c) wire-format checks and tier (d) never-panic properties of the one safe
//! deserializer.

mod common;
use blindfold_ckks::serialize::{self, deserialize, deserialize_with_limit, read_header, ObjectKind, WireObject};
use blindfold_ckks::*;
use common::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::sync::Arc;

fn roundtrip<T: WireObject + PartialEq + std::fmt::Debug>(obj: &T, ctx: &Arc<Context>) -> Vec<u8> {
    let bytes = serialize::serialize(obj, ctx).unwrap();
    let back: T = deserialize(&bytes, ctx).unwrap();
    assert_eq!(&back, obj);
    bytes.to_vec()
}

#[test]
fn every_object_roundtrips() {
    let mut s = setup(small_params(), 11);
    let v = values(s.encoder.slots(), 1);
    let ct = s.encrypt(&v);
    roundtrip(&ct, &s.ctx);
    roundtrip(&s.eval.multiply(&ct, &ct).unwrap(), &s.ctx);
    roundtrip(&s.eval.rescale(&ct).unwrap(), &s.ctx);
    let pt = s.encoder.encode(&v, 1, 2f64.powi(30)).unwrap();
    let pk = s.keygen.public_key();
    roundtrip(&pk, &s.ctx);
    roundtrip(&s.rlk, &s.ctx);
    let gk = s.keygen.galois_keys(&s.keygen.top_level_requests(&[1, -3], true)).unwrap();
    roundtrip(&gk, &s.ctx);
    roundtrip(&s.keygen.encapsulation_keys(16).unwrap(), &s.ctx);
    let seeded = SymmetricEncryptor::new(s.keygen.secret_key()).unwrap().encrypt(&pt).unwrap();
    let seeded_bytes = roundtrip(&seeded, &s.ctx);
    let full = serialize::serialize(&seeded.expand(&s.ctx), &s.ctx).unwrap();
    assert!(seeded_bytes.len() * 2 < full.len() + 200, "seeded form is about half the size");
    // The secret key roundtrips through its own export and compares equal in constant time.
    let sk_bytes = s.keygen.secret_key().to_bytes().unwrap();
    assert_eq!(read_header(&sk_bytes).unwrap().kind, ObjectKind::SecretKey);
    let sk = SecretKey::from_bytes(&sk_bytes, &s.ctx).unwrap();
    assert!(sk == *s.keygen.secret_key());
    // A loaded secret key decrypts.
    let got = s.encoder.decode(&Decryptor::new(&sk).decrypt(&ct).unwrap()).unwrap();
    assert!(precision(&got, &v).1 > 20.0);
    let other = KeyGenerator::from_seed(&s.ctx, [99; 32]);
    assert!(!(*other.secret_key() == sk));
}

#[test]
fn packed_sizes_match_the_prime_sizes() {
    let s = setup(presets::N8192_DEPTH3_128BIT.parameters().unwrap(), 12);
    let mut s = s;
    let ct = s.encrypt(&values(8, 2));
    let bytes = serialize::serialize(&ct, &s.ctx).unwrap();
    let bits: usize = s.params.q().iter().map(|q| 64 - q.leading_zeros() as usize).sum();
    let expect = 2 * 8192 * bits / 8;
    assert!(bytes.len() >= expect && bytes.len() < expect + 100, "{} vs {expect}", bytes.len());
}

#[test]
fn wrong_kind_parameters_and_lengths_are_refused() {
    let mut s = setup(small_params(), 13);
    let ct = s.encrypt(&values(4, 3));
    let bytes = serialize::serialize(&ct, &s.ctx).unwrap().to_vec();
    // Wrong kind.
    let err = deserialize::<PublicKey>(&bytes, &s.ctx).unwrap_err();
    assert!(err.to_string().contains("this is a ciphertext, expected a public key"), "{err}");
    let err = SecretKey::from_bytes(&bytes, &s.ctx).err().unwrap();
    assert!(err.to_string().contains("this is a ciphertext, expected a secret key"), "{err}");
    // Other parameters.
    let other = other_small_context();
    assert!(matches!(deserialize::<Ciphertext>(&bytes, &other), Err(Error::ParameterMismatch { .. })));
    // Truncated and extended bodies.
    for cut in [0, 10, 46, 47, 100, bytes.len() - 1] {
        assert!(matches!(deserialize::<Ciphertext>(&bytes[..cut], &s.ctx), Err(Error::Malformed { .. })), "cut {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(deserialize::<Ciphertext>(&longer, &s.ctx), Err(Error::Malformed { .. })));
    // Size limit checked before anything else.
    let err = deserialize_with_limit::<Ciphertext>(&bytes, &s.ctx, 100).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // Bad magic and version.
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(read_header(&bad).is_err());
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert!(read_header(&bad).unwrap_err().to_string().contains("format version 9"));
    assert_eq!(read_header(&bytes).unwrap().kind, ObjectKind::Ciphertext);
}

#[test]
fn residues_above_their_prime_are_refused() {
    let mut s = setup(small_params(), 14);
    let ct = s.encrypt(&values(4, 3));
    let mut bytes = serialize::serialize(&ct, &s.ctx).unwrap().to_vec();
    // Set the first coefficient's bits to one: 2^50 - 1 is above the 50-bit prime q_0.
    let w = &mut bytes[serialize::HEADER_LEN..];
    // Locate the first part: postcard writes level (1 byte), scale (8 bytes), count (1 byte),
    // then the first part's length as a varint (3 bytes for these sizes).
    let first = 1 + 8 + 1 + 3;
    for b in &mut w[first..first + 7] {
        *b = 0xff;
    }
    let err = deserialize::<Ciphertext>(&bytes, &s.ctx).unwrap_err();
    assert!(err.to_string().contains("not below its prime"), "{err}");
}

#[test]
fn wire_format_hash_is_stable() {
    // Deterministic keys and encryption randomness: the bytes must not drift silently.
    let mut s = setup(small_params(), 21);
    let v = values(s.encoder.slots(), 21);
    let pt = s.encoder.encode(&v, s.ctx.max_level(), s.params.default_scale()).unwrap();
    let ct = s.encryptor.encrypt(&pt).unwrap();
    let mut h = Sha256::new();
    h.update(serialize::serialize(&ct, &s.ctx).unwrap());
    h.update(serialize::serialize(&s.rlk, &s.ctx).unwrap());
    h.update(s.keygen.secret_key().to_bytes().unwrap());
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, GOLDEN_WIRE_HASH, "wire format or deterministic sampling changed: bump FORMAT_VERSION");
}

const GOLDEN_WIRE_HASH: &str = "c4f4ff5eb7850196657e241e24f1cf6ff6a5dd5715425a11323be073851bb2a4";

fn ctx_for_fuzz() -> Arc<Context> {
    Context::new(
        &Parameters::new_insecure(ParametersLiteral {
            log_n: 5,
            log_q: vec![30, 25],
            log_p: vec![30],
            log_default_scale: 20,
            dnum: None,
        })
        .unwrap(),
    )
    .unwrap()
}

fn valid_objects(ctx: &Arc<Context>) -> Vec<Vec<u8>> {
    let mut kg = KeyGenerator::from_seed(ctx, [5; 32]);
    let pk = kg.public_key();
    let enc = Encoder::new(ctx);
    let pt = enc.encode_real(&[0.5, 0.25], 1, 2f64.powi(20)).unwrap();
    let ct = Encryptor::with_public_key(ctx, &pk).unwrap().encrypt(&pt).unwrap();
    vec![
        serialize::serialize(&ct, ctx).unwrap().to_vec(),
        serialize::serialize(&pk, ctx).unwrap().to_vec(),
        serialize::serialize(&kg.relinearization_key(), ctx).unwrap().to_vec(),
        serialize::serialize(&kg.galois_keys(&kg.top_level_requests(&[1], true)).unwrap(), ctx).unwrap().to_vec(),
        kg.secret_key().to_bytes().unwrap().to_vec(),
        serialize::serialize(&kg.encapsulation_keys(4).unwrap(), ctx).unwrap().to_vec(),
    ]
}

fn try_all(bytes: &[u8], ctx: &Arc<Context>) {
    let _ = deserialize::<Ciphertext>(bytes, ctx);
    let _ = deserialize::<SeededCiphertext>(bytes, ctx);
    let _ = deserialize::<PublicKey>(bytes, ctx);
    let _ = deserialize::<RelinearizationKey>(bytes, ctx);
    let _ = deserialize::<GaloisKeys>(bytes, ctx);
    let _ = SecretKey::from_bytes(bytes, ctx);
    let _ = deserialize::<EncapsulationKeys>(bytes, ctx);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(20261121), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let ctx = ctx_for_fuzz();
        try_all(&bytes, &ctx);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(kind in 1u8..=8, body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let ctx = ctx_for_fuzz();
        let mut bytes = b"BFCK".to_vec();
        bytes.extend_from_slice(&serialize::FORMAT_VERSION.to_le_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(ctx.params().fingerprint());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        try_all(&bytes, &ctx);
    }

    #[test]
    fn mutated_valid_objects_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let ctx = ctx_for_fuzz();
        let mut bytes = valid_objects(&ctx).swap_remove(which);
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        try_all(&bytes, &ctx);
        let c = cut.index(bytes.len() + 1);
        try_all(&bytes[..c], &ctx);
    }
}

#[test]
fn a_secret_key_of_too_few_non_zero_coefficients_is_refused() {
    let s = setup(small_params(), 15);
    let mut bytes = s.keygen.secret_key().to_bytes().unwrap().to_vec();
    // The body is postcard: a varint length (2 bytes for N/4 = 1024 here), then the codes.
    let n4 = s.ctx.n() / 4;
    let start = bytes.len() - n4;
    bytes[start..].fill(0);
    let err = SecretKey::from_bytes(&bytes, &s.ctx).err().unwrap().to_string();
    assert!(err.contains("non-zero coefficients") && err.contains("corrupted"), "{err}");
}

#[test]
fn objects_of_other_parameters_give_errors_not_panics() {
    let mut s = setup(small_params(), 16);
    // A smaller ring and a shorter chain: every index would run out of bounds.
    let other = ctx_for_fuzz();
    let other_keys = KeyGenerator::from_seed(&other, [3; 32]);
    let other_pt = Encoder::new(&other).encode_real(&[1.0], other.max_level(), 2f64.powi(20)).unwrap();
    let ct = s.encrypt(&values(4, 5));
    let other_ct = Encryptor::with_public_key(&other, &KeyGenerator::from_seed(&other, [4; 32]).public_key())
        .unwrap()
        .encrypt(&other_pt)
        .unwrap();
    let mine = Decryptor::new(s.keygen.secret_key());
    for err in [
        Decryptor::new(other_keys.secret_key()).decrypt(&ct).err(),
        mine.decrypt(&other_ct).err(),
        s.encoder.decode(&other_pt).err(),
        s.encryptor.encrypt(&other_pt).err(),
        SymmetricEncryptor::new(s.keygen.secret_key()).unwrap().encrypt(&other_pt).err(),
    ] {
        let err = err.expect("refused").to_string();
        assert!(err.contains("does not belong to these parameters"), "{err}");
    }
}
