//! One bootstrap, on one thread and on two: `cargo bench -p blindfold-ckks --bench bootstrap`.
//!
//! The preset is `N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT` (key generation takes 10 to 30 s and
//! the keys about 8.5 GB; one bootstrap about 9 s on two cores); `BOOT_PRESET` names another
//! (`N65536_BOOT_LEFT8_128BIT`, or `N4096_BOOT_LEFT2_INSECURE`, the small insecure stand-in).
//! The full report (precision, keys, memory) is
//! `blindfold bench bootstrap`. Figures and machine: BENCHMARKS.md.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_ckks::*;
use criterion::{criterion_group, Criterion};
use std::hint::black_box;

fn benches(c: &mut Criterion) {
    let name = std::env::var("BOOT_PRESET").unwrap_or_else(|_| "N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT".into());
    let preset = BOOTSTRAP_PRESETS.iter().find(|p| p.name == name).expect("a bootstrapping preset");
    let ctx = Context::new(&preset.parameters().unwrap()).unwrap();
    let plan = Bootstrapper::new(&ctx, preset.config()).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [7; 32]);
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let gk = keygen.galois_keys(&plan.key_requests()).unwrap();
    let enc = plan.config().sparse_secret.map(|h| keygen.encapsulation_keys(h).unwrap());
    let encoder = Encoder::new(&ctx);
    let eval = Evaluator::new(&ctx);
    let v: Vec<f64> = (0..encoder.slots()).map(|i| (i as f64 * 0.001).sin()).collect();
    let pt = encoder.encode_real(&v, 0, ctx.params().default_scale()).unwrap();
    let ct = Encryptor::with_public_key(&ctx, &pk).unwrap().encrypt(&pt).unwrap();
    let keys = BootstrapKeys { relinearization: &rlk, galois: &gk, encapsulation: enc.as_ref() };
    let mut g = c.benchmark_group(format!("bootstrap_{}", preset.name));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        g.bench_function(format!("threads_{threads}"), |b| {
            b.iter(|| pool.install(|| eval.bootstrap(black_box(&ct), &plan, &keys).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = bootstrap;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(1));
    targets = benches
}

fn main() {
    bootstrap();
    Criterion::default().configure_from_args().final_summary();
}
