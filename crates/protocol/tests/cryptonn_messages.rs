//! CryptoNN's messages: every kind round trips and its FE objects still work; a fixed seed
//! gives fixed bytes; damaged, oversized, foreign and stale messages are refused with the
//! reason; arbitrary bytes never panic.

use blindfold_fe::wire::FeParams;
use blindfold_fe::{febo, ipfe, DlogTable};
use blindfold_protocol::cryptonn::messages::{
    EncryptedLabels, FeWire, KeyScalars, Message, Party, PublicKeys, Shard, SparseVector, MAX_MESSAGE_LEN,
};
use blindfold_protocol::cryptonn::{KeyRequest, Mode, Purpose, TrainingAuthority};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};

const N: usize = 5;

/// Every message kind that carries no function key, from a fixed seed. (Function keys come
/// from the authority only — `tests/key_derivation.rs` — so [`issued`] has them.)
fn messages() -> Vec<Message> {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (_, mpk) = ipfe::setup_with_rng(N, &mut rng).unwrap();
    let (_, febo_mpk) = febo::setup_with_rng(&mut rng);
    let label = febo_mpk.encrypt_with_rng(100, &mut rng);
    // Last: with IFMA a batch draws eight random scalars per group of eight, without it one per
    // ciphertext (the same first ones), so the bytes are the same either way.
    let xs = vec![vec![1, 2, 0, -3, 4], vec![0, 0, 5, 1, 1], vec![2, 2, 2, 2, 2]];
    let batch = mpk.encryptor().encrypt_batch_with_rng(&xs, &mut rng).unwrap();
    vec![
        Message::PublicKeysRequest,
        Message::PublicKeys(PublicKeys {
            forward: FeWire::new(&mpk, 1).unwrap(),
            gradient: None,
            labels: Some(FeWire::new(&febo_mpk, 0).unwrap()),
            label_sums: None,
            generations: [1, 0, 0],
        }),
        Message::Join { owner: 2, shard: Shard { index: 1, count: 3 }, examples: 20_000, scale: 100 },
        Message::BatchRequest { epoch: 0, step: 4, examples: vec![7, 3, 11], generations: [1, 0, 0] },
        Message::EncryptedBatch {
            owner: 2,
            epoch: 0,
            step: 4,
            rows: FeWire::new(&batch, 1).unwrap(),
            columns: None,
            labels: EncryptedLabels::Entries(vec![FeWire::new(&label, 0).unwrap()]),
        },
        Message::KeyRequests {
            epoch: 0,
            batch: 4,
            purpose: Purpose::Forward,
            vectors: vec![SparseVector::from_dense(&[1, 0, -2, 0, 3])],
        },
        Message::LabelKeyRequests { epoch: 0, batch: 4, entries: vec![(FeWire::new(&label, 0).unwrap(), 37)] },
        Message::Refused { fault: Party::TrainingServer, reason: "a key the policy refuses".into() },
    ]
}

/// A faithful-mode authority for vectors of `N` entries (4 features and the bias), a batch
/// encrypted under its public keys with one label entry, and the keys it issues for them.
fn issued() -> (Vec<i64>, Message, Message, Message, Message) {
    let mut authority = TrainingAuthority::unrestricted(N - 1, 4, Mode::Faithful).unwrap();
    let keys = authority.public_keys();
    let mpk: ipfe::MasterPublicKey = keys.forward.decode(&FeParams { n: N, generation: 0 }).unwrap();
    let febo_mpk: febo::MasterPublicKey =
        keys.labels.as_ref().unwrap().decode(&FeParams { n: 1, generation: 0 }).unwrap();
    let xs = vec![vec![1, 2, 0, -3, 4], vec![0, 0, 5, 1, 1], vec![2, 2, 2, 2, 2]];
    let y = vec![1, 0, -2, 0, 3];
    let products = xs.iter().map(|x| x.iter().zip(&y).map(|(a, b)| a * b).sum()).collect();
    let batch = Message::EncryptedBatch {
        owner: 0,
        epoch: 0,
        step: 1,
        rows: FeWire::new(&mpk.encryptor().encrypt_batch(&xs).unwrap(), 0).unwrap(),
        columns: None,
        labels: EncryptedLabels::Entries(vec![FeWire::new(&febo_mpk.encrypt(100).unwrap(), 0).unwrap()]),
    };
    let key = authority.issue(&KeyRequest { epoch: 0, batch: 1, purpose: Purpose::Forward, vector: y }).unwrap();
    let Message::EncryptedBatch { labels: EncryptedLabels::Entries(labels), .. } = &batch else { unreachable!() };
    let label: febo::Ciphertext = labels[0].decode(&FeParams { n: 1, generation: 0 }).unwrap();
    let label_keys = authority.issue_label_keys(0, 1, &[(&label, 37)]).unwrap();
    (
        products,
        batch,
        Message::PublicKeys(keys),
        Message::FunctionKeys { generation: 0, keys: KeyScalars::of(std::slice::from_ref(&key)) },
        Message::LabelKeys(vec![FeWire::new(&label_keys[0], 0).unwrap()]),
    )
}

#[test]
fn every_message_round_trips_and_its_objects_still_work() {
    let (products, batch, public_keys, keys, label_keys) = issued();
    let mut all = messages();
    all.extend([batch.clone(), public_keys, keys.clone(), label_keys.clone()]);
    for msg in &all {
        let bytes = msg.to_bytes();
        assert_eq!(&Message::from_bytes(&bytes, MAX_MESSAGE_LEN).unwrap(), msg, "{}", msg.kind());
    }
    let table = DlogTable::new(1 << 12, 64).unwrap();
    let params = FeParams { n: N, generation: 0 };
    let back = |m: &Message| Message::from_bytes(&m.to_bytes(), MAX_MESSAGE_LEN).unwrap();
    let Message::EncryptedBatch { rows, labels: EncryptedLabels::Entries(labels), .. } = back(&batch) else {
        panic!("an encrypted batch")
    };
    let Message::FunctionKeys { generation: 0, keys } = back(&keys) else { panic!("function keys") };
    let rows: ipfe::CiphertextBatch = rows.decode(&params).unwrap();
    let key = keys.keys_for(vec![vec![1, 0, -2, 0, 3]]).unwrap().remove(0);
    assert!(keys.keys_for(vec![]).unwrap_err().to_string().contains("1 keys for 0 requested vectors"));
    assert!(KeyScalars(vec![[0xff; 32]]).keys_for(vec![vec![1; N]]).unwrap_err().to_string().contains("canonical"));
    assert_eq!(rows.product(std::slice::from_ref(&key)).unwrap().solve(&table).unwrap(), products);
    let febo_params = FeParams { n: 1, generation: 0 };
    let Message::LabelKeys(label_keys) = back(&label_keys) else { panic!("label keys") };
    let label: febo::Ciphertext = labels[0].decode(&febo_params).unwrap();
    assert_eq!(label.decrypt(&label_keys[0].decode(&febo_params).unwrap(), &table).unwrap(), 100 - 37);
    let Message::KeyRequests { vectors, .. } = &all[5] else { panic!("key requests") };
    assert_eq!(vectors[0].to_dense(N).unwrap(), vec![1, 0, -2, 0, 3]);
}

/// The bytes of every message for a fixed seed, by their SHA-256: a change here changes
/// what parties of different versions understand.
#[test]
fn the_bytes_of_a_fixed_seed_do_not_drift() {
    let messages = messages();
    let mut h = Sha256::new();
    for msg in &messages {
        h.update(msg.to_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, "fa3326646e90c4ce7a0ccbaea333ce501ca3389ddbc916d29ded2a980996e49d",
        "a message changed: bump the format"
    );
}

#[test]
fn damaged_oversized_foreign_and_stale_messages_are_refused_with_the_reason() {
    let messages = messages();
    let bytes = messages[4].to_bytes();
    let refused = |bytes: &[u8], limit: usize, needle: &str| {
        let err = Message::from_bytes(bytes, limit).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should say {needle:?}");
    };
    refused(&bytes, bytes.len() - 1, "more than the");
    refused(&bytes[..bytes.len() - 1], MAX_MESSAGE_LEN, "malformed message");
    refused(&[bytes.as_slice(), &[0]].concat(), MAX_MESSAGE_LEN, "1 trailing bytes");
    refused(&[200], MAX_MESSAGE_LEN, "malformed message");
    // The batch decodes for its own length and generation only.
    let Message::EncryptedBatch { rows, .. } = &messages[4] else { panic!("an encrypted batch") };
    let stale = rows.decode(&FeParams { n: N, generation: 2 }).unwrap_err().to_string();
    assert!(stale.contains("generation"), "{stale}");
    let foreign = rows.decode(&FeParams { n: N + 1, generation: 1 }).unwrap_err().to_string();
    assert!(foreign.contains("fingerprint") || foreign.contains("length"), "{foreign}");
    // Sparse vectors: another length, entries out of order, out of range or zero.
    let v = |entries: Vec<(u32, i64)>| SparseVector { len: N as u32, entries };
    assert!(v(vec![(1, 2)]).to_dense(N + 1).unwrap_err().to_string().contains("length 5, expected 6"));
    for bad in [vec![(3, 1), (1, 1)], vec![(1, 1), (1, 2)], vec![(5, 1)], vec![(2, 0)]] {
        assert!(v(bad.clone()).to_dense(N).is_err(), "{bad:?}");
    }
}

/// Random bytes, and every message with bytes flipped or cut, decode to an error or a
/// message, never a panic; every FE object in a decoded message decodes likewise.
#[test]
fn arbitrary_and_mutated_bytes_never_panic() {
    let (_, batch, public_keys, keys, label_keys) = issued();
    let mut messages = messages();
    messages.extend([batch, public_keys, keys, label_keys]);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut next = |bound: usize| (rand_core::Rng::next_u64(&mut rng) % bound as u64) as usize;
    let try_all = |bytes: &[u8]| {
        if let Ok(msg) = Message::from_bytes(bytes, MAX_MESSAGE_LEN) {
            for generation in [0, 1] {
                let params = FeParams { n: N, generation };
                match &msg {
                    Message::EncryptedBatch { rows, .. } => drop(rows.decode(&params)),
                    Message::FunctionKeys { keys, .. } => drop(keys.keys_for(vec![vec![1; N]; keys.0.len()])),
                    Message::KeyRequests { vectors, .. } => vectors.iter().for_each(|v| drop(v.to_dense(N))),
                    _ => {}
                }
            }
        }
    };
    for len in 0..64 {
        let bytes: Vec<u8> = (0..len).map(|_| next(256) as u8).collect();
        try_all(&bytes);
    }
    for msg in &messages {
        let bytes = msg.to_bytes();
        for _ in 0..200 {
            let mut b = bytes.clone();
            for _ in 0..1 + next(4) {
                let i = next(b.len());
                b[i] = next(256) as u8;
            }
            b.truncate(next(b.len() + 1).max(b.len() / 2));
            try_all(&b);
        }
    }
}
