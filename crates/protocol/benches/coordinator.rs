//! The ensemble coordinator's work per image: receiving K holders' encrypted scores
//! (deserialization with the parameter check) and their aggregation (serialized for the end
//! user). The mean on level-0 ciphertexts of `N8192_DEPTH5_128BIT`, as the holders of
//! `blindfold ensemble --aggregation mean` send them; every aggregation on level-4
//! ciphertexts of `N16384_DEPTH9_128BIT`, as they arrive when the polynomial aggregations are
//! on. Single thread.
//!
//! Run: `cargo bench -p blindfold-protocol --bench coordinator`; CI runs it once with `-- --test`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_ckks::{presets, Context, Encoder, Encryptor, KeyGenerator, Preset};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{Aggregation, Calibration, CompiledModel, Coordinator, KeyId, Message, PlanInfo, Wire};
use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::sync::Arc;

/// Keys, an encryptor and an encoder under `preset`, and the plan information of tenseal-cnn1
/// compiled for it.
fn setup(preset: Preset, seed: u8) -> (Arc<Context>, KeyGenerator, Encryptor, Encoder, PlanInfo) {
    let params = preset.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [seed; 32]);
    let enc = Encryptor::with_public_key(&ctx, &keygen.public_key()).unwrap();
    let model =
        Model::init(ArchSpec::builtin("tenseal-cnn1").unwrap(), &mut blindfold_nn::train::seeded_rng(1)).unwrap();
    let info = CompiledModel::with_parameters(&model, &params).unwrap().info().clone();
    (ctx.clone(), keygen, enc, Encoder::new(&ctx), info)
}

fn bench(c: &mut Criterion) {
    let (ctx, _, mut enc, encoder, info) = setup(presets::N8192_DEPTH5_128BIT, 3);
    for holders in [3, 5] {
        let replies: Vec<Message> = (0..holders)
            .map(|h| {
                let scores: Vec<f64> = (0..10).map(|i| (i * h) as f64 * 0.1 - 2.0).collect();
                let pt = encoder.encode_real(&scores, 0, 2f64.powi(25)).unwrap();
                Message::EncryptedScores {
                    key_id: KeyId([7; 32]),
                    ciphertext: Wire::new(&enc.encrypt(&pt).unwrap(), &ctx).unwrap(),
                }
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
    polynomial_aggregations(c);
}

/// Scores vectors like centred logits, for holder `h` and image `i`.
fn scores(h: usize, i: usize) -> Vec<f64> {
    (0..10).map(|j| ((j * 7 + h * 3 + i * 5) % 11) as f64 - 5.0).collect()
}

fn polynomial_aggregations(c: &mut Criterion) {
    let (ctx, mut keygen, mut enc, encoder, info) = setup(presets::N16384_DEPTH9_128BIT, 4);
    let holders = 5;
    let validation: Vec<Vec<Vec<f64>>> = (0..holders).map(|h| (0..50).map(|i| scores(h, i)).collect()).collect();
    let labels: Vec<u8> = (0..50).map(|i| (i % 10) as u8).collect();
    let cal = Calibration::from_validation(&validation, &labels).unwrap();
    let mut coordinator = Coordinator::with_calibration(&info, cal).unwrap();
    let keys = coordinator.rotation_keys(&Aggregation::ALL).unwrap();
    let requests = blindfold_tensor::requirements::key_requests(&keys, &ctx);
    let keys = Message::EvaluationKeys {
        relinearization: Wire::new(&keygen.relinearization_key(), &ctx).unwrap(),
        galois: Wire::new(&keygen.galois_keys(&requests).unwrap(), &ctx).unwrap(),
        public: None,
    };
    coordinator.set_evaluation_keys(&keys).unwrap();
    // Scores at the level the network leaves them (9 − 5), at the default scale.
    let level = ctx.max_level() - info.depth;
    let replies: Vec<Message> = (0..holders)
        .map(|h| {
            let pt = encoder.encode_real(&scores(h, 0), level, 2f64.powi(35)).unwrap();
            Message::EncryptedScores {
                key_id: KeyId([7; 32]),
                ciphertext: Wire::new(&enc.encrypt(&pt).unwrap(), &ctx).unwrap(),
            }
        })
        .collect();
    let mut g = c.benchmark_group("coordinator_N16384");
    g.sample_size(10);
    for agg in Aggregation::ALL {
        g.bench_function(format!("{}_of_{holders}", agg.name()), |b| {
            b.iter(|| {
                for (h, r) in replies.iter().enumerate() {
                    coordinator.receive(h, black_box(r)).unwrap();
                }
                coordinator.aggregate(agg).unwrap()
            })
        });
    }
    g.finish();
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
