//! Per-operation benchmarks, single thread, ciphertexts at the top level: N = 8192 with a
//! 3-prime and a 4-prime chain (one special prime each) and N = 16384 with an 8-prime chain
//! (two special primes).
//!
//! Run: `cargo bench -p blindfold-ckks --bench ops`; CI runs each once with `-- --test`.
//! `BENCH_THREADS=2` runs the operations on two threads each (group names get `_t2`).
//! Figures and machine: BENCHMARKS.md.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_ckks::*;
use criterion::{criterion_group, Criterion};
use std::hint::black_box;

fn bench_preset(c: &mut Criterion, preset: Preset) {
    let params = preset.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [7; 32]);
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let steps: Vec<i64> = (1..=8).collect();
    let gk = keygen.galois_keys(&keygen.top_level_requests(&steps, true)).unwrap();
    let encoder = Encoder::new(&ctx);
    let mut encryptor = Encryptor::with_public_key(&ctx, &pk).unwrap();
    let decryptor = Decryptor::new(keygen.secret_key());
    let eval = Evaluator::new(&ctx);
    let v: Vec<f64> = (0..encoder.slots()).map(|i| (i as f64 * 0.001).sin()).collect();
    let level = ctx.max_level();
    let pt = encoder.encode_real(&v, level, params.default_scale()).unwrap();
    let ct = encryptor.encrypt(&pt).unwrap();
    let ct2 = encryptor.encrypt(&pt).unwrap();
    let prod = eval.multiply(&ct, &ct2).unwrap();
    let threads = rayon::current_num_threads();
    let name =
        if threads == 1 { format!("N{}_L{level}", params.n()) } else { format!("N{}_L{level}_t{threads}", params.n()) };
    let mut g = c.benchmark_group(name);
    // In-place forms where SEAL's benchmark uses them (add_inplace, multiply_plain_inplace,
    // rescale_to_next_inplace, relinearize_inplace); allocating forms for comparison.
    let mut acc = ct.clone();
    g.bench_function("add_assign", |b| b.iter(|| eval.add_assign(black_box(&mut acc), black_box(&ct2)).unwrap()));
    g.bench_function("add", |b| b.iter(|| eval.add(black_box(&ct), black_box(&ct2)).unwrap()));
    let mut target = ct.clone();
    let pt_one = encoder.encode_real(&[1.0], level, 1.0).unwrap();
    g.bench_function("multiply_plain_assign", |b| {
        b.iter(|| eval.multiply_plain_assign(black_box(&mut target), black_box(&pt_one)).unwrap())
    });
    g.bench_function("multiply_plain", |b| b.iter(|| eval.multiply_plain(black_box(&ct), black_box(&pt)).unwrap()));
    g.bench_function("multiply_const", |b| {
        b.iter(|| eval.multiply_const(black_box(&ct), 0.37, params.default_scale()).unwrap())
    });
    g.bench_function("multiply", |b| b.iter(|| eval.multiply(black_box(&ct), black_box(&ct2)).unwrap()));
    g.bench_function("relinearize", |b| b.iter(|| eval.relinearize(black_box(&prod), &rlk).unwrap()));
    g.bench_function("multiply_relin", |b| {
        b.iter(|| eval.multiply_relin(black_box(&ct), black_box(&ct2), &rlk).unwrap())
    });
    g.bench_function("rescale_assign", |b| {
        b.iter_batched_ref(|| ct.clone(), |x| eval.rescale_assign(x).unwrap(), criterion::BatchSize::LargeInput)
    });
    g.bench_function("rescale", |b| b.iter(|| eval.rescale(black_box(&ct)).unwrap()));
    g.bench_function("rotate", |b| b.iter(|| eval.rotate(black_box(&ct), 1, &gk).unwrap()));
    g.bench_function("rotate_hoisted_x8", |b| b.iter(|| eval.rotate_hoisted(black_box(&ct), &steps, &gk).unwrap()));
    g.bench_function("conjugate", |b| b.iter(|| eval.conjugate(black_box(&ct), &gk).unwrap()));
    g.bench_function("encode", |b| {
        b.iter(|| encoder.encode_real(black_box(&v), level, params.default_scale()).unwrap())
    });
    g.bench_function("encrypt_pk", |b| b.iter(|| encryptor.encrypt(black_box(&pt)).unwrap()));
    g.bench_function("decrypt", |b| b.iter(|| decryptor.decrypt(black_box(&ct)).unwrap()));
    let dec = decryptor.decrypt(&ct).unwrap();
    g.bench_function("decode", |b| b.iter(|| encoder.decode(black_box(&dec))));
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_preset(c, presets::N8192_DEPTH2_128BIT);
    bench_preset(c, presets::N8192_DEPTH3_128BIT);
    bench_preset(c, presets::N16384_DEPTH7_128BIT);
}

criterion_group! {
    name = ops;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
/// `criterion_main!`, with the benchmarks run inside a thread pool of `BENCH_THREADS`
/// threads (default 1): the evaluator's parallel loops then run on the caller's thread.
fn main() {
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    pool.install(ops);
    Criterion::default().configure_from_args().final_summary();
}
