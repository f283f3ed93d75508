//! The CryptoNN key authority refuses each policy violation with a clear error, tracks the span
//! of what it issues, rotates, and logs every key.

use blindfold_fe::DlogTable;
use blindfold_protocol::cryptonn::{KeyAuthority, KeyPolicy, KeyRequest, PolicyError, Purpose};

fn request(epoch: u32, batch: u32, vector: Vec<i64>) -> KeyRequest {
    KeyRequest { epoch, batch, purpose: Purpose::Forward, vector }
}

/// Dense vectors of length 8 with small entries, linearly independent for `k < 8`.
fn dense(k: i64) -> Vec<i64> {
    (0..8).map(|i| if i == k { 5 } else { 1 + (i + k) % 3 }).collect()
}

#[test]
fn issued_keys_decrypt_and_are_logged() {
    let mut authority = KeyAuthority::new(8, KeyPolicy::for_length(8)).unwrap();
    let (generation, mpk) = authority.public_key();
    assert_eq!(generation, 0);
    let x = [3i64, -1, 4, 1, -5, 9, 2, -6];
    let ct = mpk.encrypt(&x).unwrap();
    let table = DlogTable::with_bound(10_000).unwrap();
    for k in 0..3 {
        let key = authority.issue(&request(0, k as u32, dense(k))).unwrap();
        let want: i64 = x.iter().zip(dense(k)).map(|(a, b)| a * b).sum();
        assert_eq!(ct.decrypt(&key, &table).unwrap(), want);
    }
    let log = authority.audit_log();
    assert_eq!(log.len(), 3);
    assert_eq!(log.iter().map(|e| e.rank_after).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(log.iter().all(|e| e.generation == 0 && e.purpose == Purpose::Forward));
    assert_ne!(log[0].vector_sha256, log[1].vector_sha256);
}

#[test]
fn each_policy_violation_is_refused_and_changes_nothing() {
    let policy = KeyPolicy { max_entry: 100, min_nonzero: 4, max_rank: 5, max_keys_per_batch: 3 };
    let mut authority = KeyAuthority::new(8, policy).unwrap();
    let err = authority.issue(&request(0, 0, vec![1; 7])).unwrap_err();
    assert_eq!(err, PolicyError::Length { expected: 8, actual: 7 });
    let mut big = dense(0);
    big[3] = -101;
    let err = authority.issue(&request(0, 0, big)).unwrap_err();
    assert_eq!(err, PolicyError::EntryOutOfBounds { index: 3, value: -101, bound: 100 });
    assert!(err.to_string().contains("beyond the bound"));
    // A unit vector would reveal one input in the clear.
    let err = authority.issue(&request(0, 0, vec![0, 0, 1, 0, 0, 0, 0, 0])).unwrap_err();
    assert_eq!(err, PolicyError::TooSparse { nonzero: 1, min: 4 });
    // Rate limit per (epoch, batch, purpose); another purpose has its own.
    for k in 0..3 {
        authority.issue(&request(0, 0, dense(k))).unwrap();
    }
    assert!(matches!(authority.issue(&request(0, 0, dense(3))), Err(PolicyError::RateLimited { limit: 3, .. })));
    let gradient = KeyRequest { purpose: Purpose::Gradient, ..request(0, 0, dense(3)) };
    authority.issue(&gradient).unwrap();
    // Going back in training order is refused.
    authority.issue(&request(1, 4, dense(4))).unwrap();
    let err = authority.issue(&request(1, 2, dense(0))).unwrap_err();
    assert!(matches!(err, PolicyError::Stale { epoch: 1, batch: 2, .. }), "{err}");
    assert_eq!(authority.audit_log().len(), 5);
    assert_eq!(authority.remaining_rank(), 0);
}

#[test]
fn the_span_limit_forces_a_rotation_and_dependent_vectors_pass() {
    let policy = KeyPolicy { max_rank: 7, ..KeyPolicy::for_length(8) };
    let mut authority = KeyAuthority::new(8, policy).unwrap();
    for k in 0..7 {
        authority.issue(&request(0, k as u32, dense(k))).unwrap();
    }
    // An eighth independent vector would let the keys reveal the master secret key.
    let err = authority.issue(&request(0, 7, dense(7))).unwrap_err();
    assert_eq!(err, PolicyError::WouldSpan { generation: 0, rank: 8, limit: 7 });
    assert!(err.to_string().contains("rotate"));
    // A combination of issued vectors adds nothing to the span and is allowed.
    let combination: Vec<i64> = dense(1).iter().zip(dense(2)).map(|(a, b)| a - 2 * b).collect();
    authority.issue(&request(0, 7, combination)).unwrap();
    assert_eq!(authority.audit_log().last().unwrap().rank_after, 7);
    // After rotating, a new key pair with an empty span; old ciphertexts do not decrypt with new keys.
    let old = authority.public_key().1.encrypt(&[1; 8]).unwrap();
    authority.rotate().unwrap();
    assert_eq!(authority.public_key().0, 1);
    assert_eq!(authority.remaining_rank(), 7);
    let key = authority.issue(&request(0, 8, dense(7))).unwrap();
    let table = DlogTable::with_bound(1000).unwrap();
    assert!(old.decrypt(&key, &table).is_err());
    let fresh = authority.public_key().1.encrypt(&[1; 8]).unwrap();
    assert_eq!(fresh.decrypt(&key, &table).unwrap(), dense(7).iter().sum::<i64>());
    assert_eq!(authority.audit_log().last().unwrap().generation, 1);
    // A policy that would allow a full span is refused outright.
    let unsafe_policy = KeyPolicy { max_rank: 8, ..KeyPolicy::for_length(8) };
    assert!(KeyAuthority::new(8, unsafe_policy).is_err());
}
