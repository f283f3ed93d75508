//! The FE wire format: round trips, refusals with a reason, known-answer bytes, and
//! never-panic properties on arbitrary and mutated bytes.

use blindfold_fe::wire::{deserialize, serialize, FeParams, WireObject, HEADER_LEN};
use blindfold_fe::{febo, ipfe, DlogTable};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};

const N: usize = 6;

struct Objects {
    mpk: Vec<u8>,
    ct: Vec<u8>,
    key: Vec<u8>,
    febo_mpk: Vec<u8>,
    febo_ct: Vec<u8>,
    febo_key: Vec<u8>,
}

/// Every object from a fixed seed, for key-pair generation 3.
fn objects() -> Objects {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let (msk, mpk) = ipfe::setup_with_rng(N, &mut rng).unwrap();
    let ct = mpk.encrypt_with_rng(&[1, -2, 3, 0, 5, 7], &mut rng).unwrap();
    let key = msk.derive(&[2, 1, 0, 9, -1, 1]).unwrap();
    let (fmsk, fmpk) = febo::setup_with_rng(&mut rng);
    let fct = fmpk.encrypt_with_rng(-4, &mut rng);
    let fkey = fmsk.derive(fct.commitment(), febo::Operation::Sub, 3);
    Objects {
        mpk: serialize(&mpk, 3).unwrap(),
        ct: serialize(&ct, 3).unwrap(),
        key: serialize(&key, 3).unwrap(),
        febo_mpk: serialize(&fmpk, 3).unwrap(),
        febo_ct: serialize(&fct, 3).unwrap(),
        febo_key: serialize(&fkey, 3).unwrap(),
    }
}

const IPFE: FeParams = FeParams { n: N, generation: 3 };
const FEBO: FeParams = FeParams { n: 1, generation: 3 };

#[test]
fn every_object_round_trips_and_still_works() {
    let o = objects();
    let table = DlogTable::new(1 << 10, 64).unwrap();
    let ct: ipfe::Ciphertext = deserialize(&o.ct, &IPFE).unwrap();
    let key: ipfe::FunctionKey = deserialize(&o.key, &IPFE).unwrap();
    // 2 - 2 + 0 + 0 - 5 + 7 = 2
    assert_eq!(ct.decrypt(&key, &table), Ok(2));
    let mpk: ipfe::MasterPublicKey = deserialize(&o.mpk, &IPFE).unwrap();
    assert_eq!(serialize(&mpk, 3).unwrap(), o.mpk);
    assert_eq!(serialize(&ct, 3).unwrap(), o.ct);
    assert_eq!(serialize(&key, 3).unwrap(), o.key);
    let fct: febo::Ciphertext = deserialize(&o.febo_ct, &FEBO).unwrap();
    let fkey: febo::FunctionKey = deserialize(&o.febo_key, &FEBO).unwrap();
    assert_eq!(fct.decrypt(&fkey, &table), Ok(-7));
    let fmpk: febo::MasterPublicKey = deserialize(&o.febo_mpk, &FEBO).unwrap();
    assert_eq!(serialize(&fmpk, 3).unwrap(), o.febo_mpk);
}

#[test]
fn the_bytes_of_a_fixed_seed_do_not_drift() {
    let o = objects();
    let mut h = Sha256::new();
    for b in [&o.mpk, &o.ct, &o.key, &o.febo_mpk, &o.febo_ct, &o.febo_key] {
        h.update(b);
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, GOLDEN, "FE wire format or sampling changed: bump FORMAT_VERSION");
}

const GOLDEN: &str = "71ca0b19c25d4b3b48873d438f940387b5c2150ab20b27ca6082b774d96b9cb9";

fn refused<T: WireObject>(bytes: &[u8], params: &FeParams, needle: &str) {
    match deserialize::<T>(bytes, params) {
        Ok(_) => panic!("accepted, expected a refusal with {needle:?}"),
        Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
    }
}

#[test]
fn foreign_stale_and_damaged_objects_are_refused_with_the_reason() {
    let o = objects();
    refused::<ipfe::Ciphertext>(&o.key, &IPFE, "this is a inner-product FE function key");
    refused::<ipfe::Ciphertext>(&o.ct, &FeParams { n: N + 1, generation: 3 }, "other parameters");
    refused::<ipfe::Ciphertext>(&o.ct, &FeParams { n: N, generation: 4 }, "generation 3, the current one is 4");
    refused::<ipfe::Ciphertext>(&o.ct[..o.ct.len() - 1], &IPFE, "body bytes");
    let mut longer = o.ct.clone();
    longer.push(0);
    refused::<ipfe::Ciphertext>(&longer, &IPFE, "body bytes");
    refused::<ipfe::Ciphertext>(&o.ct[..10], &IPFE, "shorter than the 51-byte header");
    refused::<ipfe::Ciphertext>(b"BFCK and more bytes than a header has, surely, yes indeed", &IPFE, "bad magic");
    // An invalid point, a swapped precomputed power, a non-canonical scalar.
    let mut bad = o.ct.clone();
    bad[HEADER_LEN..HEADER_LEN + 32].fill(0xff);
    refused::<ipfe::Ciphertext>(&bad, &IPFE, "invalid ristretto255 encoding");
    let mut swapped = o.ct.clone();
    let (a, b) = (HEADER_LEN + 32, HEADER_LEN + 64);
    let first: Vec<u8> = swapped[a..a + 32].to_vec();
    let second: Vec<u8> = swapped[b..b + 32].to_vec();
    swapped[a..a + 32].copy_from_slice(&second);
    swapped[b..b + 32].copy_from_slice(&first);
    refused::<ipfe::Ciphertext>(&swapped, &IPFE, "do not match ct_0");
    let mut big = o.key.clone();
    let n = big.len();
    big[n - 32..].fill(0xff);
    refused::<ipfe::FunctionKey>(&big, &IPFE, "non-canonical scalar");
    let mut op = o.febo_key.clone();
    op[HEADER_LEN] = 7;
    refused::<febo::FunctionKey>(&op, &FEBO, "unknown operation 7");
    // Absurd lengths are refused before anything is allocated.
    refused::<ipfe::Ciphertext>(&o.ct, &FeParams { n: usize::MAX, generation: 3 }, "outside 1..=");
}

fn try_all(bytes: &[u8]) {
    for n in [N, 1, 785] {
        for generation in [3, 0] {
            let p = FeParams { n, generation };
            let _ = deserialize::<ipfe::MasterPublicKey>(bytes, &p);
            let _ = deserialize::<ipfe::Ciphertext>(bytes, &p);
            let _ = deserialize::<ipfe::FunctionKey>(bytes, &p);
            let _ = deserialize::<febo::MasterPublicKey>(bytes, &p);
            let _ = deserialize::<febo::Ciphertext>(bytes, &p);
            let _ = deserialize::<febo::FunctionKey>(bytes, &p);
            let _ = deserialize::<ipfe::CiphertextBatch>(bytes, &p);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(20261206), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        try_all(&bytes);
    }

    #[test]
    fn mutated_objects_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let o = objects();
        let mut bytes = vec![o.mpk, o.ct, o.key, o.febo_mpk, o.febo_ct, o.febo_key].swap_remove(which);
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        try_all(&bytes);
        let c = cut.index(bytes.len() + 1);
        try_all(&bytes[..c]);
    }
}

/// A batch (eight to a lane group with IFMA) round trips through its points: the decoded batch
/// gives the same secure matrix product, for a batch that is not a multiple of eight.
#[test]
fn a_batch_round_trips_to_the_same_products() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (msk, mpk) = ipfe::setup_with_rng(N, &mut rng).unwrap();
    let xs: Vec<Vec<i64>> = (0..11).map(|i| (0..N as i64).map(|j| (i * 7 + j * 3) % 11 - 5).collect()).collect();
    let batch = mpk.encryptor().encrypt_batch_with_rng(&xs, &mut rng).unwrap();
    let bytes = serialize(&batch, 2).unwrap();
    let params = FeParams { n: N, generation: 2 };
    let back: ipfe::CiphertextBatch = deserialize(&bytes, &params).unwrap();
    assert_eq!(back.len(), 11);
    assert_eq!(serialize(&back, 2).unwrap(), bytes, "the same points in the same order");
    let table = DlogTable::new(1 << 12, 64).unwrap();
    let keys: Vec<ipfe::FunctionKey> = (0..3).map(|k| msk.derive(&[k, 1, -1, 2, 0, 3]).unwrap()).collect();
    let want: Vec<i64> =
        xs.iter().flat_map(|x| (0..3).map(move |k| x[0] * k + x[1] - x[2] + 2 * x[3] + 3 * x[5])).collect();
    assert_eq!(batch.product(&keys).unwrap().solve(&table).unwrap(), want);
    assert_eq!(back.product(&keys).unwrap().solve(&table).unwrap(), want);
    // Four keys and more take the other path (ct_0's table).
    let ys: Vec<[i64; N]> = (0..5).map(|k| [k, -1, 2, 0, k - 2, 1]).collect();
    let keys: Vec<ipfe::FunctionKey> = ys.iter().map(|y| msk.derive(y).unwrap()).collect();
    let want: Vec<i64> =
        xs.iter().flat_map(|x| ys.iter().map(move |y| x.iter().zip(y).map(|(a, b)| a * b).sum::<i64>())).collect();
    assert_eq!(back.product(&keys).unwrap().solve(&table).unwrap(), want);
    // A power of ct_0 that is a valid point but not ct_0's, in the last (partial) group; an
    // invalid encoding.
    let stride = 32 * (8 + N);
    let last = HEADER_LEN + 4 + 10 * stride;
    let mut wrong_power = bytes.clone();
    wrong_power[last + 32 * 3..last + 32 * 4].copy_from_slice(&bytes[last + 32 * 8..last + 32 * 9]);
    refused::<ipfe::CiphertextBatch>(&wrong_power, &params, "do not match ct_0");
    let mut invalid = bytes.clone();
    invalid[last + 32 * 9] ^= 1;
    refused::<ipfe::CiphertextBatch>(&invalid, &params, "invalid ristretto255 encoding");
    // A count beyond the limit, or one the body does not hold, is refused before decoding.
    let mut huge = bytes.clone();
    huge[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    refused::<ipfe::CiphertextBatch>(&huge, &params, "count out of range");
    let mut more = bytes.clone();
    more[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&12u32.to_le_bytes());
    refused::<ipfe::CiphertextBatch>(&more, &params, "body bytes");
}
