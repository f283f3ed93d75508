//! Several data owners, the key authority and the training server as separate state
//! machines joined by the in-process harness (every message through its bytes): training
//! equals the plaintext twin on the same sharded batches; an owner that goes away mid-epoch
//! is reported and training goes on with the others, still equal to the twin told which
//! batches were skipped.

use blindfold_data::LabeledImages;
use blindfold_fe::DlogTable;
use blindfold_nn::cryptonn::{FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::messages::{Message, Shard};
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty};
use blindfold_protocol::cryptonn::server::{Link, LocalLink, Peer, ServerProducts};
use blindfold_protocol::cryptonn::{verify_log, Mode, Purpose, TrainingAuthority, AUDIT_MAGIC};
use blindfold_protocol::ProtocolError;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const BATCH: usize = 8;

mod common;
use common::config;

fn data() -> LabeledImages {
    common::banded(45)
}

/// What goes wrong with one owner.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// The owner is lost after this many batch requests to it.
    Drop(u32, usize),
    /// The owner answers its second request with its first batch again.
    Replay(u32),
}

/// The harness with a fault on one owner.
struct Faulty<'a> {
    inner: LocalLink<'a>,
    fault: Fault,
    requests: usize,
    first: Option<Message>,
}

impl Link for Faulty<'_> {
    fn exchange(&mut self, to: Peer, msg: &Message) -> Result<Message, ProtocolError> {
        match self.fault {
            Fault::Drop(owner, after) if to == Peer::Owner(owner) => {
                if self.requests == after {
                    self.inner.disconnect(owner);
                }
                self.requests += 1;
            }
            Fault::Replay(owner) if to == Peer::Owner(owner) => {
                self.requests += 1;
                let reply = self.inner.exchange(to, msg)?;
                return Ok(match (self.requests, &self.first) {
                    (1, _) => {
                        self.first = Some(reply.clone());
                        reply
                    }
                    (2, Some(first)) => first.clone(),
                    _ => reply,
                });
            }
            _ => {}
        }
        self.inner.exchange(to, msg)
    }
}

/// Trains the MLP with three owners (members by `i % 3`) for `epochs` with `fault`; returns
/// the FE trainer, the twin, the server's reports and the audit log.
fn run(epochs: usize, fault: Fault) -> (Trainer, Trainer, Vec<String>, Vec<u8>) {
    let data = data();
    let cfg = config(epochs);
    let members: Vec<Vec<usize>> = (0..3).map(|k| (0..data.len()).filter(|i| i % 3 == k).collect()).collect();
    let shards: Vec<LabeledImages> = members.iter().map(|m| data.subset(m)).collect();
    let (local, owner_of) = FixedBatches::sharded(&members.iter().map(Vec::len).collect::<Vec<_>>(), BATCH, 11);
    let global = local.mapped(&owner_of, &members);
    let model = Model::init(ArchSpec::builtin("mlp").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    let mut fe = Trainer::new(model.clone(), &local, cfg.clone()).unwrap();
    let mut twin = Trainer::new(model, &global, cfg.clone()).unwrap();
    let authority = AuthorityParty::new(TrainingAuthority::unrestricted(784, BATCH, Mode::Faithful).unwrap());
    let owners = shards
        .iter()
        .enumerate()
        .map(|(k, d)| OwnerParty::new(k as u32, Shard { index: k as u32, count: 3 }, d, cfg.encoding, 10, BATCH, false))
        .collect();
    let link = LocalLink::new(authority, owners).unwrap();
    let link = Faulty { inner: link, fault, requests: 0, first: None };
    let bound = 1 << 23;
    let table = DlogTable::new(bound, (2 * bound + 1) as usize / 8).unwrap();
    let owners_per_batch = owner_of.iter().map(|&k| k as u32).collect();
    let mut products =
        ServerProducts::new(link, table, local.clone(), owners_per_batch, 784, 10, cfg.encoding, Mode::Faithful, false)
            .unwrap();
    let mut plain = PlainProducts::new(&data, &global, cfg.encoding, bound, 10);
    for epoch in 0..epochs {
        products.start_epoch(epoch as u32);
        fe.epoch(&local, &mut products, |_, _| ()).unwrap();
        plain.set_unavailable(fe.skipped().iter().filter(|s| s.0 == epoch + 1).map(|s| s.1));
        twin.epoch(&global, &mut plain, |_, _| ()).unwrap();
        let b = products.breakdown;
        assert!([b.encrypt, b.key_derivation, b.decrypt, b.dlog].iter().all(|t| !t.is_zero()), "{b:?}");
    }
    let bytes = products.link().inner.bytes.clone();
    assert!(bytes.len() == 4 && bytes.values().all(|&(sent, received)| sent > 0 && received > 0), "{bytes:?}");
    let reports = products.reports().to_vec();
    let mut log = AUDIT_MAGIC.to_vec();
    let records = products.link_mut().inner.authority_mut().take_audit_records();
    records.iter().for_each(|r| log.extend(r.to_bytes()));
    (fe, twin, reports, log)
}

#[test]
fn three_owners_train_like_the_twin() {
    let (fe, twin, reports, log) = run(2, Fault::None);
    assert_eq!(fe.first_layer(), twin.first_layer(), "FE training with three owners left the twin");
    assert!(reports.is_empty(), "{reports:?}");
    assert!(fe.skipped().is_empty());
    // Every key in the audit log: per batch 128 forward and 128 gradient keys, and a label
    // key per example and class.
    let verified = verify_log(&log).unwrap();
    let count =
        |p: Purpose| verified.counts().iter().filter(|((q, _), _)| *q == p).map(|(_, n)| *n as usize).sum::<usize>();
    let batches = FixedBatches::sharded(&[15, 15, 15], BATCH, 11).0.len();
    assert_eq!(batches, 6, "15 examples per owner: batches of 8 and 7");
    assert_eq!(count(Purpose::Forward), 2 * batches * 128);
    assert_eq!(count(Purpose::Gradient), 2 * batches * 128);
    assert_eq!(count(Purpose::LabelDelta), 2 * 45 * 10);
}

#[test]
fn an_owner_lost_mid_epoch_is_reported_and_training_goes_on() {
    let (fe, twin, reports, _) = run(2, Fault::Drop(1, 1));
    assert_eq!(fe.first_layer(), twin.first_layer(), "the twin skipping the same batches");
    assert!(reports.iter().any(|r| r.contains("data owner 1 dropped")), "{reports:?}");
    // Owner 1 has two batches per epoch: the second of epoch 1 and both of epoch 2 skipped.
    assert_eq!(fe.skipped().len(), 3, "{:?}", fe.skipped());
    assert!(fe.skipped().iter().all(|(_, _, why)| why.contains("data owner 1")), "{:?}", fe.skipped());
}

/// A batch replayed from an earlier step is refused (reported, skipped); training goes on.
#[test]
fn a_replayed_batch_is_refused() {
    let (fe, twin, reports, _) = run(1, Fault::Replay(2));
    assert_eq!(fe.first_layer(), twin.first_layer());
    assert_eq!(fe.skipped().len(), 1, "{:?}", fe.skipped());
    assert!(reports.iter().any(|r| r.contains("a batch of owner 2, epoch 0, step")), "{reports:?}");
}
