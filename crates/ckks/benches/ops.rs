//! Per-operation benchmarks at N = 8192 (4-prime chain + 1 special prime) and N = 16384
//! (8-prime chain + 2 special primes), single thread, ciphertexts at the top level.
//!
//! Run: `cargo bench -p blindfold-ckks --bench ops`. Quick smoke run (CI):
//! `cargo bench -p blindfold-ckks --bench ops -- --quick`... see BENCHMARKS.md.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_ckks::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

fn bench_preset(c: &mut Criterion, preset: Preset) {
    let params = preset.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [7; 32]);
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let steps: Vec<i64> = (1..=8).collect();
    let gk = keygen.galois_keys(&steps, true);
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
    let name = format!("N{}", params.n());
    let mut g = c.benchmark_group(name);
    let id = |op: &str| BenchmarkId::new(op, format!("L{level}"));
    g.bench_function(id("add"), |b| {
        b.iter(|| eval.add(black_box(&ct), black_box(&ct2)).unwrap())
    });
    let mut acc = ct.clone();
    g.bench_function(id("add_assign"), |b| {
        b.iter(|| eval.add_assign(black_box(&mut acc), black_box(&ct2)).unwrap())
    });
    g.bench_function(id("multiply_plain"), |b| {
        b.iter(|| eval.multiply_plain(black_box(&ct), black_box(&pt)).unwrap())
    });
    g.bench_function(id("multiply_const"), |b| {
        b.iter(|| {
            eval.multiply_const(black_box(&ct), 0.37, params.default_scale())
                .unwrap()
        })
    });
    g.bench_function(id("multiply"), |b| {
        b.iter(|| eval.multiply(black_box(&ct), black_box(&ct2)).unwrap())
    });
    g.bench_function(id("relinearize"), |b| {
        b.iter(|| eval.relinearize(black_box(&prod), &rlk).unwrap())
    });
    g.bench_function(id("multiply_relin"), |b| {
        b.iter(|| eval.multiply_relin(black_box(&ct), black_box(&ct2), &rlk).unwrap())
    });
    g.bench_function(id("rescale"), |b| b.iter(|| eval.rescale(black_box(&ct)).unwrap()));
    g.bench_function(id("rotate"), |b| {
        b.iter(|| eval.rotate(black_box(&ct), 1, &gk).unwrap())
    });
    g.bench_function(id("rotate_hoisted_x8"), |b| {
        b.iter(|| eval.rotate_hoisted(black_box(&ct), &steps, &gk).unwrap())
    });
    g.bench_function(id("conjugate"), |b| {
        b.iter(|| eval.conjugate(black_box(&ct), &gk).unwrap())
    });
    g.bench_function(id("encode"), |b| {
        b.iter(|| {
            encoder
                .encode_real(black_box(&v), level, params.default_scale())
                .unwrap()
        })
    });
    g.bench_function(id("encrypt_pk"), |b| {
        b.iter(|| encryptor.encrypt(black_box(&pt)).unwrap())
    });
    g.bench_function(id("decrypt"), |b| b.iter(|| decryptor.decrypt(black_box(&ct)).unwrap()));
    let dec = decryptor.decrypt(&ct).unwrap();
    g.bench_function(id("decode"), |b| b.iter(|| encoder.decode(black_box(&dec))));
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_preset(c, presets::N8192_DEPTH3_128BIT);
    bench_preset(c, presets::N16384_DEPTH7_128BIT);
}

criterion_group! {
    name = ops;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(ops);
