//! Inner-product FE against plaintext inner products, the bounded discrete log at and beyond
//! its bound, the secure matrix product, and fixed-point encoding. Fixed seeds.

use blindfold_fe::ipfe::{matrix_product, setup_with_rng, small_multiscalar_mul};
use blindfold_fe::{DlogTable, FeError, FixedPoint};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn small_vec(r: &mut ChaCha20Rng, n: usize, max: i64) -> Vec<i64> {
    (0..n).map(|_| (r.next_u64() % (2 * max as u64 + 1)) as i64 - max).collect()
}

fn point(v: i64) -> RistrettoPoint {
    let s = Scalar::from(v.unsigned_abs());
    RistrettoPoint::mul_base(&if v < 0 { -s } else { s })
}

#[test]
fn decryption_gives_the_inner_product() {
    let mut r = rng(1);
    let table = DlogTable::with_bound(25 * 100 * 100).unwrap();
    let (msk, mpk) = setup_with_rng(25, &mut r).unwrap();
    for _ in 0..20 {
        let (x, y) = (small_vec(&mut r, 25, 100), small_vec(&mut r, 25, 100));
        let ct = mpk.encrypt_with_rng(&x, &mut r).unwrap();
        let key = msk.derive(&y).unwrap();
        let want: i64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert_eq!(ct.decrypt(&key, &table).unwrap(), want);
        assert_eq!(ct.prepare().decrypt(&key, &table).unwrap(), want);
    }
    // Extremes of the bound.
    let x = vec![100; 25];
    let ct = mpk.encrypt_with_rng(&x, &mut r).unwrap();
    assert_eq!(ct.decrypt(&msk.derive(&[100; 25]).unwrap(), &table).unwrap(), 250_000);
    assert_eq!(ct.decrypt(&msk.derive(&[-100; 25]).unwrap(), &table).unwrap(), -250_000);
}

#[test]
fn a_key_of_another_master_key_or_length_is_refused() {
    let mut r = rng(2);
    let table = DlogTable::with_bound(10_000).unwrap();
    let (_, mpk) = setup_with_rng(8, &mut r).unwrap();
    let (other_msk, _) = setup_with_rng(8, &mut r).unwrap();
    let ct = mpk.encrypt_with_rng(&[1, 2, 3, 4, 5, 6, 7, 8], &mut r).unwrap();
    // The result is a random group element: out of bound, not a wrong number.
    let key = other_msk.derive(&[1; 8]).unwrap();
    assert_eq!(ct.decrypt(&key, &table), Err(FeError::OutOfBound { bound: 10_000 }));
    assert_eq!(other_msk.derive(&[1; 7]).err(), Some(FeError::Length { expected: 8, actual: 7 }));
    assert!(matches!(mpk.encrypt_with_rng(&[1; 9], &mut r), Err(FeError::Length { .. })));
    assert!(setup_with_rng(0, &mut r).is_err());
}

#[test]
fn dlog_finds_every_value_in_range_and_refuses_the_rest() {
    // Few baby steps, so lookups take several giant steps.
    let table = DlogTable::new(300, 37).unwrap();
    for v in -300..=300 {
        assert_eq!(table.solve(&point(v)).unwrap(), v);
    }
    for v in [301, -301, 1000, -100_000, i64::MAX / 4] {
        assert_eq!(table.solve(&point(v)), Err(FeError::OutOfBound { bound: 300 }), "{v}");
    }
    assert!(DlogTable::new(10, 0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Both small-scalar methods (buckets for many points and small values, signed binary
    /// otherwise) agree with the generic multi-scalar multiplication.
    #[test]
    fn small_multiscalar_mul_matches_the_generic_one(n in 0usize..60, max in 0i64..3000, seed in 0u64..1000) {
        let mut r = rng(seed);
        let ys = small_vec(&mut r, n, max);
        let points: Vec<RistrettoPoint> = (0..n).map(|_| point(r.next_u64() as i64 >> 8)).collect();
        let scalars = ys.iter().map(|&y| { let s = Scalar::from(y.unsigned_abs()); if y < 0 { -s } else { s } });
        prop_assert_eq!(small_multiscalar_mul(&ys, &points), RistrettoPoint::vartime_multiscalar_mul(scalars, &points));
    }

    #[test]
    fn dlog_with_any_table_shape(bound in 0u64..5000, m in 1usize..3000, frac in 0.0f64..1.0) {
        let table = DlogTable::new(bound, m).unwrap();
        let v = (frac * (2 * bound + 1) as f64) as i64 - bound as i64;
        let v = v.clamp(-(bound as i64), bound as i64);
        prop_assert_eq!(table.solve(&point(v)).unwrap(), v);
        prop_assert!(table.solve(&point(bound as i64 + 1)).is_err());
    }
}

#[test]
fn secure_matrix_product_matches_the_plaintext_product() {
    let mut r = rng(3);
    let (l, n, m) = (7, 10, 5);
    let table = DlogTable::with_bound((n * 50 * 50) as u64).unwrap();
    let (msk, mpk) = setup_with_rng(n, &mut r).unwrap();
    let x: Vec<Vec<i64>> = (0..l).map(|_| small_vec(&mut r, n, 50)).collect();
    let y: Vec<Vec<i64>> = (0..m).map(|_| small_vec(&mut r, n, 50)).collect(); // columns of Y
    let rows: Vec<_> = x.iter().map(|row| mpk.encrypt_with_rng(row, &mut r).unwrap()).collect();
    let keys: Vec<_> = y.iter().map(|col| msk.derive(col).unwrap()).collect();
    let got = matrix_product(&rows, &keys, &table).unwrap();
    for i in 0..l {
        for j in 0..m {
            let want: i64 = x[i].iter().zip(&y[j]).map(|(a, b)| a * b).sum();
            assert_eq!(got[i * m + j], want, "entry ({i}, {j})");
        }
    }
}

#[test]
fn fixed_point_encoding() {
    let fp = FixedPoint::decimal(2).unwrap();
    assert_eq!(fp.encode_all(&[0.125, -0.125, 1.0, -2.004]).unwrap(), vec![13, -13, 100, -200]);
    assert_eq!(fp.decode(-250), -2.5);
    assert_eq!(fp.decode_product(12_345, FixedPoint::decimal(1).unwrap()), 12.345);
    assert!(fp.encode(f64::NAN).is_err());
    assert!(fp.encode(1e300).is_err());
    assert!(FixedPoint::decimal(16).is_err());
    assert!(FixedPoint::with_scale(0).is_err());
    assert_eq!(FixedPoint::with_scale(1).unwrap().encode(255.0).unwrap(), 255);
}

#[test]
fn the_encryptor_makes_the_same_ciphertexts_as_the_public_key() {
    let (msk, mpk) = setup_with_rng(6, &mut rng(8)).unwrap();
    let encryptor = mpk.encryptor();
    let table = DlogTable::with_bound(1 << 20).unwrap();
    // Small entries (the constant-time small-multiple path) and one beyond 2^32 (the general
    // path for the whole vector), with signs.
    for x in [vec![0, 1, -1, 100, -255, 65_535], vec![3, -7, 1 << 33, 0, -(1 << 40), 9]] {
        let a = mpk.encrypt_with_rng(&x, &mut rng(9)).unwrap();
        let b = encryptor.encrypt_with_rng(&x, &mut rng(9)).unwrap();
        assert_eq!(a, b);
        let y = vec![1, 2, 0, 0, 0, 1];
        let key = msk.derive(&y).unwrap();
        let want: i64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        if want.unsigned_abs() <= 1 << 20 {
            assert_eq!(b.decrypt(&key, &table).unwrap(), want);
        }
    }
    assert!(matches!(encryptor.encrypt(&[1, 2]), Err(FeError::Length { expected: 6, actual: 2 })));
}

#[test]
fn matrix_product_with_many_short_keys_matches_the_plaintext_product() {
    // 128 keys of length 16 with entries up to 11: each row's multiples are shared by the keys
    // (the gradient's shape); the results must be those of single decryptions.
    let mut r = rng(12);
    let (msk, mpk) = setup_with_rng(16, &mut r).unwrap();
    let xs: Vec<Vec<i64>> = (0..3).map(|_| small_vec(&mut r, 16, 100)).collect();
    let ys: Vec<Vec<i64>> = (0..128).map(|_| small_vec(&mut r, 16, 11)).collect();
    let rows: Vec<_> = xs.iter().map(|x| mpk.encrypt_with_rng(x, &mut r).unwrap()).collect();
    let keys: Vec<_> = ys.iter().map(|y| msk.derive(y).unwrap()).collect();
    let table = DlogTable::with_bound(16 * 100 * 11).unwrap();
    let got = matrix_product(&rows, &keys, &table).unwrap();
    let want: Vec<i64> =
        xs.iter().flat_map(|x| ys.iter().map(move |y| x.iter().zip(y).map(|(a, b)| a * b).sum::<i64>())).collect();
    assert_eq!(got, want);
}
