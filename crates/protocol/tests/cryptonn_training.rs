//! CryptoNN training through functional encryption matches its plaintext twin exactly: FE
//! decryption gives the exact integer products, so both runs take the same steps.

use blindfold_data::LabeledImages;
use blindfold_fe::{DlogTable, FixedPoint};
use blindfold_nn::arch::LayerSpec;
use blindfold_nn::cryptonn::{CryptonnConfig, FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::{
    verify_log, AuditError, FeProducts, Mode, PolicyError, Purpose, TrainingAuthority, TrainingClient, AUDIT_MAGIC,
    RECORD_LEN,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

mod common;
use common::config;

fn data() -> LabeledImages {
    common::banded(40)
}

/// Trains `model` through FE (with `authority`) and as the plaintext twin, epoch by epoch;
/// every part of the FE time breakdown is non-zero in every epoch.
fn train_both(
    model: Model,
    data: &LabeledImages,
    batches: &FixedBatches,
    cfg: &CryptonnConfig,
    authority: &mut TrainingAuthority,
) -> (Trainer, Trainer) {
    let bound = 1 << 23;
    let conv = model.spec().name == "lenet5";
    let mut twin = Trainer::new(model.clone(), batches, cfg.clone()).unwrap();
    let mut fe = Trainer::new(model, batches, cfg.clone()).unwrap();
    let client = TrainingClient::new(data, cfg.encoding, 10, batches.batch_size(), &authority.public_keys()).unwrap();
    let client = if conv { client.rows_only() } else { client };
    let table = DlogTable::new(bound, (2 * bound + 1) as usize / 8).unwrap();
    let mut plain = PlainProducts::new(data, batches, cfg.encoding, bound, 10);
    let mut products = FeProducts::new(client, authority, table, batches);
    for epoch in 0..cfg.epochs {
        products.start_epoch(epoch as u32);
        fe.epoch(batches, &mut products, |_, _| ()).unwrap();
        twin.epoch(batches, &mut plain, |_, _| ()).unwrap();
        let b = products.breakdown;
        assert!([b.encrypt, b.key_derivation, b.decrypt, b.dlog].iter().all(|t| !t.is_zero()), "{b:?}");
    }
    (fe, twin)
}

fn check_mode(mode: Mode, epochs: usize) {
    let data = data();
    let cfg = config(epochs);
    let batches = FixedBatches::new(data.len(), 16, 11);
    let model = Model::init(ArchSpec::builtin("mlp").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    let mut authority = TrainingAuthority::unrestricted(784, 16, mode).unwrap();
    let (fe, twin) = train_both(model, &data, &batches, &cfg, &mut authority);
    assert_eq!(fe.first_layer(), twin.first_layer(), "{mode:?}: FE training left the twin");
    // The first layer moved: training happened.
    let init = Model::init(ArchSpec::builtin("mlp").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    assert_ne!(init.params(1).unwrap(), twin.first_layer());
    // One forward key per hidden unit and one gradient key per hidden unit, per batch and epoch.
    let (forward, gradient) = authority.authorities();
    let keys = cfg.epochs * batches.len() * 128;
    assert_eq!(forward.audit_log().len(), keys);
    assert_eq!(gradient.audit_log().len(), keys);
    assert!(forward.audit_log().iter().all(|e| e.purpose == Purpose::Forward));
    // The hash-chained log has every key, the label keys of faithful mode too (one per
    // example and class), and verifies; any changed byte breaks it at that record or later.
    let mut log = AUDIT_MAGIC.to_vec();
    authority.take_audit_records().iter().for_each(|r| log.extend(r.to_bytes()));
    let verified = verify_log(&log).unwrap();
    let count =
        |p: Purpose| verified.counts().iter().filter(|((q, _), _)| *q == p).map(|(_, n)| *n as usize).sum::<usize>();
    assert_eq!(count(Purpose::Forward), keys);
    assert_eq!(count(Purpose::Gradient), keys);
    let label_keys = if mode == Mode::Faithful { cfg.epochs * data.len() * 10 } else { 0 };
    assert_eq!(count(Purpose::LabelDelta), label_keys);
    assert_eq!(verified.records() as usize, 2 * keys + label_keys);
    let at = AUDIT_MAGIC.len() + RECORD_LEN * 5 + 30;
    log[at] ^= 1;
    assert!(matches!(verify_log(&log), Err(AuditError::Chain { sequence: 5 })));
    log[at] ^= 1;
    log.truncate(log.len() - 7);
    assert!(matches!(verify_log(&log), Err(AuditError::Truncated { extra, .. }) if extra == RECORD_LEN - 7));
    log.drain(AUDIT_MAGIC.len()..AUDIT_MAGIC.len() + RECORD_LEN);
    assert!(matches!(verify_log(&log), Err(AuditError::Sequence { position: 0, found: 1 })));
}

#[test]
fn fe_training_matches_the_plaintext_twin_with_plain_labels() {
    check_mode(Mode::PlainLabels, 2);
}

#[test]
fn fe_training_matches_the_plaintext_twin_with_encrypted_labels() {
    check_mode(Mode::Faithful, 1);
}

/// LeNet-5: the first convolution's outputs through sparse forward keys on each example's
/// ciphertext, its gradient through per-example keys summed over the batch; the same steps as
/// the twin, and the audit log holds one forward key per filter and output position and one
/// gradient key per filter, kernel entry and example.
#[test]
fn lenet5_fe_training_matches_the_plaintext_twin() {
    let data = data();
    // At two digits the per-example deltas of the first convolution round to zero.
    let cfg = CryptonnConfig { encoding: FixedPoint::decimal(3).unwrap(), ..config(1) };
    let batches = FixedBatches::new(data.len(), 16, 11);
    let init = Model::init(ArchSpec::builtin("lenet5").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    let mut authority = TrainingAuthority::unrestricted(784, 16, Mode::PlainLabels).unwrap();
    let (mut fe, mut twin) = train_both(init.clone(), &data, &batches, &cfg, &mut authority);
    assert_eq!(fe.first_layer(), twin.first_layer(), "FE training left the twin");
    assert_eq!(fe.model().params(11), twin.model().params(11), "last layers differ");
    assert_ne!(init.params(0), twin.model().params(0), "no training happened");
    let (forward, gradient) = authority.authorities();
    let log = forward.audit_log();
    let count = |p: Purpose| log.iter().filter(|e| e.purpose == p).count();
    assert_eq!(count(Purpose::Forward), batches.len() * 6 * 28 * 28);
    assert_eq!(count(Purpose::ConvGradient), data.len() * 6 * 25);
    assert!(gradient.audit_log().is_empty(), "no feature columns for a convolution");
}

/// The built-in MLP with 12 hidden units (hardened batches must exceed the hidden width).
fn narrow_mlp() -> Model {
    let mut spec = ArchSpec::builtin("mlp").unwrap();
    spec.layers[1] = LayerSpec::Dense { outputs: 12 };
    Model::init(spec, &mut ChaCha20Rng::seed_from_u64(5)).unwrap()
}

/// Hardened mode: the same steps as the twin, labels only as batch sums (no FEBO keys, no
/// per-example deltas), every key pair under its policy and rotated before its keys could
/// span: the audit logs never reach the span limit, and rotations happened.
#[test]
fn hardened_fe_training_matches_the_plaintext_twin_under_the_policy() {
    let data = data();
    let cfg = CryptonnConfig { hardened: Some(4), ..config(2) };
    let (hidden, batch_size) = (12, 14);
    let batches = FixedBatches::new(data.len(), batch_size, 11);
    let mut authority = TrainingAuthority::hardened(784, batch_size, 10, hidden, 4).unwrap();
    let (mut fe, mut twin) = train_both(narrow_mlp(), &data, &batches, &cfg, &mut authority);
    assert_eq!(fe.first_layer(), twin.first_layer(), "hardened FE training left the twin");
    assert_eq!(fe.model().params(3), twin.model().params(3), "last layers differ");
    assert_ne!(narrow_mlp().params(1), twin.model().params(1), "no training happened");
    let (forward, gradient) = authority.authorities();
    let label_sums = authority.label_sums_authority().unwrap();
    for (log, n) in
        [(forward.audit_log(), 785), (gradient.audit_log(), 11 * batch_size), (label_sums.audit_log(), batch_size)]
    {
        assert!(!log.is_empty());
        assert!(log.iter().all(|e| e.rank_after > 0 && e.rank_after < n), "a span reached {n}");
    }
    // 13 label-sum keys per batch of at most 14 examples: a new key pair every batch.
    assert_eq!(label_sums.audit_log().last().unwrap().generation as usize, cfg.epochs * batches.len() - 1);
    assert!(label_sums.audit_log().iter().all(|e| e.purpose == Purpose::LabelSums));
}

#[test]
fn hardened_mode_refuses_batches_the_label_keys_could_span() {
    match TrainingAuthority::hardened(784, 64, 10, 128, 32) {
        Err(PolicyError::Fe(e)) => assert!(e.to_string().contains("at least 130 examples"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a batch of 64 with 128 hidden units was accepted"),
    }
}
