//! FE for basic operations: each operation against plaintext arithmetic, keys bound to their
//! ciphertext, bounds.

use blindfold_fe::febo::{setup_with_rng, Operation};
use blindfold_fe::{DlogTable, FeError};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[test]
fn each_operation_decrypts_to_its_plaintext_result() {
    let mut r = ChaCha20Rng::seed_from_u64(4);
    let (msk, mpk) = setup_with_rng(&mut r);
    let table = DlogTable::with_bound(100_000).unwrap();
    for x in [-300i64, -1, 0, 1, 7, 255] {
        let ct = mpk.encrypt_with_rng(x, &mut r);
        for y in [-100i64, -3, 0, 5, 100] {
            for (op, want) in [(Operation::Add, x + y), (Operation::Sub, x - y), (Operation::Mul, x * y)] {
                let key = msk.derive(ct.commitment(), op, y);
                assert_eq!(key.operation(), (op, y));
                assert_eq!(ct.decrypt(&key, &table).unwrap(), want, "{x} {op:?} {y}");
            }
        }
    }
}

#[test]
fn a_key_works_only_on_its_own_ciphertext_and_within_the_bound() {
    let mut r = ChaCha20Rng::seed_from_u64(5);
    let (msk, mpk) = setup_with_rng(&mut r);
    let table = DlogTable::with_bound(1000).unwrap();
    let (a, b) = (mpk.encrypt_with_rng(3, &mut r), mpk.encrypt_with_rng(3, &mut r));
    let key = msk.derive(a.commitment(), Operation::Sub, 1);
    assert_eq!(a.decrypt(&key, &table).unwrap(), 2);
    assert!(matches!(b.decrypt(&key, &table), Err(FeError::InvalidArgument(_))));
    let big = msk.derive(a.commitment(), Operation::Mul, 1000);
    assert_eq!(a.decrypt(&big, &table), Err(FeError::OutOfBound { bound: 1000 }));
    // Another master key: the result is not x op y, and the bounded log refuses it.
    let (other, _) = setup_with_rng(&mut r);
    let foreign = other.derive(a.commitment(), Operation::Add, 0);
    assert!(a.decrypt(&foreign, &table).is_err());
}
