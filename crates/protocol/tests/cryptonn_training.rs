//! CryptoNN training through functional encryption matches its plaintext twin exactly: FE
//! decryption gives the exact integer products, so both runs take the same steps.

use blindfold_data::{Images, LabeledImages};
use blindfold_fe::{DlogTable, FixedPoint};
use blindfold_nn::cryptonn::{CryptonnConfig, FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::{FeProducts, Mode, Purpose, TrainingAuthority, TrainingClient};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// 40 images of 28×28 with a class-dependent bright band, so there is something to learn.
fn data() -> LabeledImages {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (n, side) = (40, 28);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut pixels = vec![0u8; n * side * side];
    for (i, &l) in labels.iter().enumerate() {
        for p in 0..side * side {
            let band = (p / side) / 3 == l as usize;
            pixels[i * side * side + p] =
                if band { 200 + (rng.next_u32() % 56) as u8 } else { (rng.next_u32() % 30) as u8 };
        }
    }
    LabeledImages { images: Images { count: n, rows: side, cols: side, pixels }, labels }
}

fn config(epochs: usize) -> CryptonnConfig {
    CryptonnConfig { epochs, learning_rate: 2e-3, clip_norm: 5.0, encoding: FixedPoint::decimal(2).unwrap(), seed: 7 }
}

fn check_mode(mode: Mode, epochs: usize) {
    let data = data();
    let cfg = config(epochs);
    let batches = FixedBatches::new(data.len(), 16, 11);
    let model = Model::init(ArchSpec::builtin("mlp").unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    let bound = 1 << 21;
    let mut twin = Trainer::new(model.clone(), &batches, cfg.clone()).unwrap();
    let mut fe = Trainer::new(model, &batches, cfg.clone()).unwrap();
    let mut authority = TrainingAuthority::unrestricted(784, 16, mode).unwrap();
    let client = TrainingClient::new(&data, cfg.encoding, 10, &authority);
    let table = DlogTable::new(bound, (2 * bound + 1) as usize / 8).unwrap();
    let mut plain = PlainProducts::new(&data, &batches, cfg.encoding, bound, 10);
    {
        let mut products = FeProducts::new(&client, &mut authority, table, &batches);
        for epoch in 0..cfg.epochs {
            products.start_epoch(epoch as u32);
            fe.epoch(&batches, &mut products, |_, _| ()).unwrap();
            twin.epoch(&batches, &mut plain, |_, _| ()).unwrap();
            let b = products.breakdown;
            assert!([b.encrypt, b.key_derivation, b.decrypt, b.dlog].iter().all(|t| !t.is_zero()), "{b:?}");
        }
    }
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
}

#[test]
fn fe_training_matches_the_plaintext_twin_with_plain_labels() {
    check_mode(Mode::PlainLabels, 2);
}

#[test]
fn fe_training_matches_the_plaintext_twin_with_encrypted_labels() {
    check_mode(Mode::Faithful, 1);
}
