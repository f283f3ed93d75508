//! Functional-encryption micro-benchmarks (CryptoNN's reference points): one 1×25 by 25×1
//! secure product, a 100×10 by 10×100 secure product, encrypting one 784-pixel image, deriving
//! one key of length 785, decrypting one 785-length inner product. Values at CryptoNN's two
//! decimal digits (|x|, |y| ≤ 100); discrete-log tables sized for each product's bound and
//! built once, outside the timing.
//!
//! `encrypt_batch_8x785` encrypts eight images at once, as training does;
//! `product_1x25_25x1_batch` is the 1×25 product on a ciphertext of the batch encryptor.
//!
//! Run: `cargo bench -p blindfold-fe --bench fe`; `BENCH_THREADS` sets the thread pool (default 1).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blindfold_fe::ipfe::{matrix_product, setup_with_rng};
use blindfold_fe::DlogTable;
use criterion::{criterion_group, Criterion};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::hint::black_box;

fn vec(r: &mut ChaCha20Rng, n: usize) -> Vec<i64> {
    (0..n).map(|_| (r.next_u64() % 201) as i64 - 100).collect()
}

fn bench(c: &mut Criterion) {
    let mut r = ChaCha20Rng::seed_from_u64(9);
    let threads = rayon::current_num_threads();
    let mut g = c.benchmark_group(if threads == 1 { "fe".to_string() } else { format!("fe_t{threads}") });

    // 1×25 by 25×1.
    let table25 = DlogTable::with_bound(25 * 100 * 100).unwrap();
    let (msk, mpk) = setup_with_rng(25, &mut r).unwrap();
    let ct = mpk.encrypt_with_rng(&vec(&mut r, 25), &mut r).unwrap();
    let key = msk.derive(&vec(&mut r, 25)).unwrap();
    g.bench_function("product_1x25_25x1", |b| b.iter(|| ct.decrypt(black_box(&key), &table25).unwrap()));
    // The same product on a ciphertext from the batch encryptor (with AVX-512 IFMA: in lanes,
    // the product split over them; otherwise the same as above).
    let batch = mpk.encryptor().encrypt_batch_with_rng(&[vec(&mut r, 25)], &mut r).unwrap();
    g.bench_function("product_1x25_25x1_batch", |b| {
        b.iter(|| batch.product(std::slice::from_ref(black_box(&key))).unwrap().solve(&table25).unwrap())
    });

    // 100×10 by 10×100.
    let table10 = DlogTable::with_bound(10 * 100 * 100).unwrap();
    let (msk, mpk) = setup_with_rng(10, &mut r).unwrap();
    let rows: Vec<_> = (0..100).map(|_| mpk.encrypt_with_rng(&vec(&mut r, 10), &mut r).unwrap()).collect();
    let keys: Vec<_> = (0..100).map(|_| msk.derive(&vec(&mut r, 10)).unwrap()).collect();
    g.sample_size(10);
    g.bench_function("product_100x10_10x100", |b| {
        b.iter(|| matrix_product(black_box(&rows), &keys, &table10).unwrap())
    });

    // One MNIST image with a bias entry (785), pixels at two digits.
    let (msk, mpk) = setup_with_rng(785, &mut r).unwrap();
    let x: Vec<i64> = (0..785).map(|i| if i == 0 { 100 } else { (r.next_u64() % 101) as i64 }).collect();
    g.bench_function("encrypt_785", |b| b.iter(|| mpk.encrypt_with_rng(black_box(&x), &mut r).unwrap()));
    // Eight images at once (lanes with AVX-512 IFMA): the per-image cost is this / 8.
    let encryptor = mpk.encryptor();
    let eight = vec![x.clone(); 8];
    g.sample_size(10);
    g.bench_function("encrypt_batch_8x785", |b| {
        b.iter(|| encryptor.encrypt_batch_with_rng(black_box(&eight), &mut r).unwrap())
    });
    let y = vec(&mut r, 785);
    g.sample_size(30);
    g.bench_function("derive_key_785", |b| b.iter(|| msk.derive(black_box(&y)).unwrap()));
    let ct = mpk.encrypt_with_rng(&x, &mut r).unwrap();
    let key = msk.derive(&y).unwrap();
    let table785 = DlogTable::with_bound(785 * 100 * 100).unwrap();
    g.bench_function("decrypt_785", |b| b.iter(|| ct.decrypt(black_box(&key), &table785).unwrap()));
    g.bench_function("decrypt_785_group_only", |b| b.iter(|| ct.decrypt_point(black_box(&key)).unwrap()));
    g.finish();
}

criterion_group! {
    name = fe;
    config = Criterion::default().sample_size(30);
    targets = bench
}

/// `criterion_main!` inside a pool of `BENCH_THREADS` threads (default 1).
fn main() {
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool").install(fe);
    criterion::Criterion::default().configure_from_args().final_summary();
}
