//! The key authority as a party: public keys for anyone, keys for the training server only,
//! each through the policy and into the audit log; refusals name the party at fault; bytes
//! never panic it.

use blindfold_data::{Images, LabeledImages};
use blindfold_fe::wire::FeParams;
use blindfold_fe::{febo, ipfe, DlogTable, FixedPoint};
use blindfold_nn::cryptonn::encode_input;
use blindfold_protocol::cryptonn::messages::{FeWire, Message, Party, Shard, SparseVector};
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty, MAX_KEYS_PER_REQUEST};
use blindfold_protocol::cryptonn::training::BatchShape;
use blindfold_protocol::cryptonn::{Breakdown, EncryptedBatch, Mode, Purpose, TrainingAuthority, TrainingServer};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Vectors of 4 features and the bias; batches of 3.
const N: usize = 5;

fn faithful() -> AuthorityParty {
    AuthorityParty::new(TrainingAuthority::unrestricted(N - 1, 3, Mode::Faithful).unwrap())
}

fn refusal(reply: Message) -> (Party, String) {
    match reply {
        Message::Refused { fault, reason } => (fault, reason),
        other => panic!("expected a refusal, got {}", other.kind()),
    }
}

#[test]
fn keys_for_the_server_decrypt_what_the_owners_encrypt() {
    let mut party = faithful();
    let Message::PublicKeys(keys) = party.handle(Party::DataOwner, &Message::PublicKeysRequest) else {
        panic!("public keys")
    };
    let mpk: ipfe::MasterPublicKey = keys.forward.decode(&FeParams { n: N, generation: 0 }).unwrap();
    let xs = vec![vec![100, 3, 0, 7, 1], vec![100, 0, 0, 2, 9]];
    let batch = mpk.encryptor().encrypt_batch(&xs).unwrap();
    let ys = vec![vec![1, -2, 0, 4, 0], vec![0, 1, 1, 1, 1]];
    let request = Message::KeyRequests {
        epoch: 0,
        batch: 1,
        purpose: Purpose::Forward,
        vectors: ys.iter().map(|y| SparseVector::from_dense(y)).collect(),
    };
    let reply = Message::from_bytes(&party.handle_bytes(Party::TrainingServer, &request.to_bytes()), 1 << 20).unwrap();
    let Message::FunctionKeys { generation: 0, keys } = reply else { panic!("keys, got {}", reply.kind()) };
    let keys = keys.keys_for(ys.clone()).unwrap();
    let table = DlogTable::new(1 << 12, 1 << 8).unwrap();
    let want: Vec<i64> =
        xs.iter().flat_map(|x| ys.iter().map(move |y| x.iter().zip(y).map(|(a, b)| a * b).sum::<i64>())).collect();
    assert_eq!(batch.product(&keys).unwrap().solve(&table).unwrap(), want);

    // A label key: 100 − 37.
    let febo_mpk: febo::MasterPublicKey =
        keys_of(&mut party).labels.unwrap().decode(&FeParams { n: 1, generation: 0 }).unwrap();
    let label = febo_mpk.encrypt(100).unwrap();
    let request =
        Message::LabelKeyRequests { epoch: 0, batch: 1, entries: vec![(FeWire::new(&label, 0).unwrap(), 37)] };
    let Message::LabelKeys(label_keys) = party.handle(Party::TrainingServer, &request) else { panic!("label keys") };
    let key: febo::FunctionKey = label_keys[0].decode(&FeParams { n: 1, generation: 0 }).unwrap();
    assert_eq!(label.decrypt(&key, &table).unwrap(), 63);
    // Every key is in the audit log: two forward keys, one label key.
    let purposes: Vec<Purpose> = party.take_audit_records().iter().map(|r| r.purpose).collect();
    assert_eq!(purposes, vec![Purpose::Forward, Purpose::Forward, Purpose::LabelDelta]);
}

fn keys_of(party: &mut AuthorityParty) -> blindfold_protocol::cryptonn::messages::PublicKeys {
    match party.handle(Party::TrainingServer, &Message::PublicKeysRequest) {
        Message::PublicKeys(keys) => keys,
        other => panic!("public keys, got {}", other.kind()),
    }
}

#[test]
fn requests_it_will_not_serve_are_refused_naming_the_party_at_fault() {
    let mut party = faithful();
    let forward =
        |vectors: Vec<SparseVector>| Message::KeyRequests { epoch: 0, batch: 1, purpose: Purpose::Forward, vectors };
    let ok = SparseVector::from_dense(&[1, 2, 3, 4, 5]);
    // A data owner asking for keys.
    let (fault, reason) = refusal(party.handle(Party::DataOwner, &forward(vec![ok.clone()])));
    assert_eq!(fault, Party::DataOwner);
    assert!(reason.contains("only the training server"), "{reason}");
    // Another length, a malformed sparse vector, label keys through the inner-product path.
    for (bad, needle) in [
        (SparseVector::from_dense(&[1, 2, 3]), "length 3, expected 5"),
        (SparseVector { len: N as u32, entries: vec![(2, 1), (1, 1)] }, "indices must increase"),
        (SparseVector { len: u32::MAX, entries: vec![] }, "expected 5"),
    ] {
        let (fault, reason) = refusal(party.handle(Party::TrainingServer, &forward(vec![ok.clone(), bad])));
        assert_eq!(fault, Party::TrainingServer);
        assert!(reason.contains(needle), "{reason} should say {needle}");
    }
    let labels = Message::KeyRequests { epoch: 0, batch: 1, purpose: Purpose::LabelDelta, vectors: vec![ok.clone()] };
    assert!(refusal(party.handle(Party::TrainingServer, &labels)).1.contains("LabelDelta"));
    // Too many keys in one request.
    let many = forward(vec![ok.clone(); MAX_KEYS_PER_REQUEST + 1]);
    assert!(refusal(party.handle(Party::TrainingServer, &many)).1.contains("keys in one request"));
    // A message that is not for the authority; bytes that are not a message.
    let (fault, reason) = refusal(party.handle(
        Party::DataOwner,
        &Message::Join { owner: 0, shard: Shard { index: 0, count: 1 }, examples: 1, scale: 100 },
    ));
    assert_eq!(fault, Party::DataOwner);
    assert!(reason.contains("not a message for the key authority"), "{reason}");
    let reply = Message::from_bytes(&party.handle_bytes(Party::TrainingServer, &[0xff, 0xff]), 1 << 20).unwrap();
    assert_eq!(refusal(reply).0, Party::TrainingServer);
    // A damaged label ciphertext: the first byte of its last point made odd (the message ends
    // with that point and `a = 1`, one byte).
    let label = FeWire::new(&febo::setup().unwrap().1.encrypt(1).unwrap(), 0).unwrap();
    let mut bytes = Message::LabelKeyRequests { epoch: 0, batch: 1, entries: vec![(label, 1)] }.to_bytes();
    let at = bytes.len() - 33;
    bytes[at] |= 1;
    let reply = Message::from_bytes(&party.handle_bytes(Party::TrainingServer, &bytes), 1 << 20).unwrap();
    let (fault, reason) = refusal(reply);
    assert_eq!(fault, Party::TrainingServer);
    assert!(reason.contains("malformed FEBO ciphertext"), "{reason}");
    // Nothing was issued by any of it.
    assert!(party.take_audit_records().is_empty());
}

/// The policy's refusals reach the server as refusals: a hardened authority refuses a
/// gradient key with too few non-zero entries, and a request for a batch it has moved past.
#[test]
fn the_policy_refuses_through_the_party() {
    let authority = TrainingAuthority::hardened(N - 1, 8, 2, 2, 4).unwrap();
    let mut party = AuthorityParty::new(authority);
    let len = (1 + 2) * 8;
    let sparse = SparseVector { len: len as u32, entries: vec![(0, 1), (5, 2)] };
    let request = Message::KeyRequests { epoch: 0, batch: 2, purpose: Purpose::Gradient, vectors: vec![sparse] };
    let (fault, reason) = refusal(party.handle(Party::TrainingServer, &request));
    assert_eq!(fault, Party::TrainingServer);
    assert!(reason.contains("non-zero entries"), "{reason}");
    let dense = SparseVector::from_dense(&(1..=len as i64).collect::<Vec<_>>());
    let ok = Message::KeyRequests { epoch: 0, batch: 2, purpose: Purpose::Gradient, vectors: vec![dense.clone()] };
    assert!(matches!(party.handle(Party::TrainingServer, &ok), Message::FunctionKeys { .. }));
    let stale = Message::KeyRequests { epoch: 0, batch: 1, purpose: Purpose::Gradient, vectors: vec![dense] };
    assert!(refusal(party.handle(Party::TrainingServer, &stale)).1.contains("after epoch 0, batch 2"));
}

/// Arbitrary and mutated messages, from every party, get a reply and never a panic.
#[test]
fn bytes_never_panic_the_authority() {
    let mut party = faithful();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut next = |bound: usize| (rand_core::Rng::next_u64(&mut rng) % bound as u64) as usize;
    let seeds = [
        Message::PublicKeysRequest.to_bytes(),
        Message::KeyRequests {
            epoch: 0,
            batch: 1,
            purpose: Purpose::Forward,
            vectors: vec![SparseVector::from_dense(&[1, 2, 3, 4, 5])],
        }
        .to_bytes(),
        Message::LabelKeyRequests {
            epoch: 0,
            batch: 1,
            entries: vec![(FeWire::new(&febo::setup().unwrap().1.encrypt(1).unwrap(), 0).unwrap(), 3)],
        }
        .to_bytes(),
    ];
    for round in 0..600 {
        let mut b = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(3) {
            let i = next(b.len());
            b[i] = next(256) as u8;
        }
        let from = [Party::DataOwner, Party::KeyAuthority, Party::TrainingServer][round % 3];
        assert!(Message::from_bytes(&party.handle_bytes(from, &b), 1 << 24).is_ok());
    }
}

/// `n` images of 28×28 with varied pixels and labels `i % 10`.
fn images(n: usize) -> LabeledImages {
    let pixels = (0..n * 784).map(|p| ((p * 37 + p / 784 * 11) % 256) as u8).collect();
    LabeledImages {
        images: Images { count: n, rows: 28, cols: 28, pixels },
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

fn shape(examples: usize, generations: [u32; 3]) -> BatchShape {
    BatchShape { examples, features: 784, batch_size: 4, classes: 10, generations }
}

/// An owner, the authority as a party, and the server's part played here: the owner's batch
/// for the server's request gives the plaintext products under the authority's keys.
#[test]
fn an_owner_encrypts_what_the_server_asks_for() {
    let data = images(12);
    let encoding = FixedPoint::decimal(2).unwrap();
    let mut authority = AuthorityParty::new(TrainingAuthority::unrestricted(784, 4, Mode::Faithful).unwrap());
    let mut owner = OwnerParty::new(1, Shard { index: 0, count: 2 }, &data, encoding, 10, 4, false);
    let start = owner.start();
    assert!(matches!(start[1], (Party::TrainingServer, Message::Join { owner: 1, examples: 12, scale: 100, .. })));
    let keys = authority.handle(Party::DataOwner, &start[0].1);
    assert!(owner.handle(Party::KeyAuthority, &keys).is_empty());
    let request = Message::BatchRequest { epoch: 0, step: 1, examples: vec![3, 0, 7], generations: [0; 3] };
    let out = owner.handle(Party::TrainingServer, &request);
    let [(Party::TrainingServer, Message::EncryptedBatch { owner: 1, epoch: 0, step: 1, rows, columns, labels })] =
        &out[..]
    else {
        panic!("an encrypted batch, got {:?}", out.iter().map(|(_, m)| m.kind()).collect::<Vec<_>>())
    };
    let batch = EncryptedBatch::from_message(rows, columns.as_ref(), labels, &shape(3, [0; 3]), false).unwrap();
    // The server's side: keys for two rows of weights, then the products.
    let weights: Vec<Vec<i64>> =
        (0..2).map(|k| (0..785).map(|i| ((i * 7 + k * 3) % 11) as i64 - 5).collect()).collect();
    let request = Message::KeyRequests {
        epoch: 0,
        batch: 1,
        purpose: Purpose::Forward,
        vectors: weights.iter().map(|w| SparseVector::from_dense(w)).collect(),
    };
    let Message::FunctionKeys { generation: 0, keys } = authority.handle(Party::TrainingServer, &request) else {
        panic!("keys")
    };
    let keys = keys.keys_for(weights.clone()).unwrap();
    let mut server = TrainingServer::new(DlogTable::new(1 << 22, 1 << 14).unwrap());
    server.receive(0, batch);
    let got = server.forward(0, &keys, &mut Breakdown::default()).unwrap();
    for (r, &i) in [3usize, 0, 7].iter().enumerate() {
        let x = encode_input(data.images.image(i), encoding).unwrap();
        for (k, w) in weights.iter().enumerate() {
            assert_eq!(got[[r, k]], x.iter().zip(w).map(|(a, b)| a * b).sum::<i64>());
        }
    }
    // The same batch checked against another shape or generation is refused.
    for (wrong, needle) in
        [(shape(2, [0; 3]), "3 examples in the batch, expected 2"), (shape(3, [1, 0, 0]), "generation")]
    {
        let err = EncryptedBatch::from_message(rows, columns.as_ref(), labels, &wrong, false).err().unwrap();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = EncryptedBatch::from_message(rows, columns.as_ref(), labels, &shape(3, [0; 3]), true).err().unwrap();
    assert!(err.to_string().contains("feature columns for a convolutional layer"), "{err}");
}

/// After the authority rotates its key pairs, a request naming the new generations makes the
/// owner fetch the new public keys first; a request naming generations the authority does
/// not have is refused as the server's fault; so are examples outside the shard, batches too
/// large, and requests from another party.
#[test]
fn an_owner_follows_rotations_and_refuses_bad_requests() {
    let data = images(6);
    let encoding = FixedPoint::decimal(2).unwrap();
    let mut inner = TrainingAuthority::hardened(784, 4, 10, 2, 1).unwrap();
    let mut owner = OwnerParty::new(0, Shard { index: 1, count: 3 }, &data, encoding, 10, 4, false);
    let keys = Message::PublicKeys(inner.public_keys());
    owner.handle(Party::KeyAuthority, &keys);
    inner.rotate_before(100_000).unwrap();
    let mut authority = AuthorityParty::new(inner);
    let request = Message::BatchRequest { epoch: 0, step: 1, examples: vec![1, 2], generations: [1, 1, 1] };
    let out = owner.handle(Party::TrainingServer, &request);
    assert!(matches!(&out[..], [(Party::KeyAuthority, Message::PublicKeysRequest)]));
    let out = owner.handle(Party::KeyAuthority, &authority.handle(Party::DataOwner, &out[0].1));
    let [(Party::TrainingServer, Message::EncryptedBatch { rows, columns, labels, .. })] = &out[..] else {
        panic!("an encrypted batch")
    };
    EncryptedBatch::from_message(rows, columns.as_ref(), labels, &shape(2, [1, 1, 1]), false).unwrap();
    // Generations the authority never had.
    let ahead = Message::BatchRequest { epoch: 0, step: 2, examples: vec![0], generations: [5, 5, 5] };
    let out = owner.handle(Party::TrainingServer, &ahead);
    let out = owner.handle(Party::KeyAuthority, &authority.handle(Party::DataOwner, &out[0].1));
    let [(Party::TrainingServer, refusal_msg)] = &out[..] else { panic!("a refusal") };
    let (fault, reason) = refusal(refusal_msg.clone());
    assert_eq!(fault, Party::TrainingServer);
    assert!(reason.contains("[5, 5, 5]"), "{reason}");
    for (examples, needle) in
        [(vec![6], "example 6 of a shard of 6"), (vec![0; 5], "a batch of 5 examples"), (vec![], "a batch of 0")]
    {
        let request = Message::BatchRequest { epoch: 0, step: 3, examples, generations: [1, 1, 1] };
        let out = owner.handle(Party::TrainingServer, &request);
        let (fault, reason) = refusal(out[0].1.clone());
        assert_eq!((out[0].0, fault), (Party::TrainingServer, Party::TrainingServer));
        assert!(reason.contains(needle), "{reason}");
    }
    let request = Message::BatchRequest { epoch: 0, step: 3, examples: vec![0], generations: [1, 1, 1] };
    let out = owner.handle(Party::DataOwner, &request);
    assert_eq!(refusal(out[0].1.clone()).0, Party::DataOwner);
    assert!(refusal(owner.handle(Party::TrainingServer, &Message::PublicKeysRequest)[0].1.clone())
        .1
        .contains("not a message for a data owner"));
}
