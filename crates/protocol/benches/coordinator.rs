//! The ensemble coordinator's work per image: receiving K holders' encrypted scores
//! (deserialization with the parameter check) and their encrypted mean (serialized for the
//! end user). Scores are level-0 ciphertexts of `N8192_DEPTH5_128BIT`, as the holders of
//! `blindfold ensemble` send them. Single thread.
//!
//! Run: `cargo bench -p blindfold-protocol --bench coordinator`; CI runs it once with `-- --test`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_ckks::serialize::serialize;
use blindfold_ckks::{presets, Context, Encoder, Encryptor, KeyGenerator};
use blindfold_nn::ArchSpec;
use blindfold_protocol::{Aggregation, Coordinator, Message, PlanInfo};
use criterion::{criterion_group, Criterion};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let preset = presets::N8192_DEPTH5_128BIT;
    let ctx = Context::new(&preset.parameters().unwrap()).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [3; 32]);
    let mut enc = Encryptor::with_public_key(&ctx, &keygen.public_key()).unwrap();
    let encoder = Encoder::new(&ctx);
    let info = PlanInfo {
        arch: ArchSpec::builtin("tenseal-cnn1").unwrap(),
        preset: preset.name.to_string(),
        log_input_scale: 29,
    };
    for holders in [3, 5] {
        let replies: Vec<Message> = (0..holders)
            .map(|h| {
                let scores: Vec<f64> = (0..10).map(|i| (i * h) as f64 * 0.1 - 2.0).collect();
                let pt = encoder.encode_real(&scores, 0, 2f64.powi(25)).unwrap();
                Message::EncryptedScores { ciphertext: serialize(&enc.encrypt(&pt).unwrap(), &ctx).unwrap().to_vec() }
            })
            .collect();
        let mut coordinator = Coordinator::new(&info, holders).unwrap();
        c.bench_function(&format!("coordinator/mean_of_{holders}"), |b| {
            b.iter(|| {
                for (h, r) in replies.iter().enumerate() {
                    coordinator.receive(h, black_box(r)).unwrap();
                }
                coordinator.aggregate(Aggregation::Mean).unwrap()
            })
        });
    }
}

criterion_group! {
    name = coordinator;
    config = Criterion::default().sample_size(30);
    targets = bench
}

/// `criterion_main!` inside a one-thread pool (the figure of record is single-thread).
fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool").install(coordinator);
    Criterion::default().configure_from_args().final_summary();
}
