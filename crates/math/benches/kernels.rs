#![allow(missing_docs)] // criterion_group! generates undocumented items

//! Arithmetic kernels at N = 8192 on one residue: NTT, pointwise products, conversions.
//! `cargo bench -p blindfold-math --bench kernels`

use blindfold_math::{primes::ntt_primes, slice, Modulus, NttOperator};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn kernels(c: &mut Criterion) {
    let n = 8192;
    let q49 = ntt_primes(49, n, 1, &[]).unwrap()[0];
    let q40 = ntt_primes(40, n, 1, &[]).unwrap()[0];
    let op = NttOperator::new(n, q49).unwrap();
    let m49 = Modulus::new(q49).unwrap();
    let m40 = Modulus::new(q40).unwrap();
    let mut a: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) % q49).collect();
    let b = a.clone();
    let mut out = vec![0u64; n];
    let mut g = c.benchmark_group("N8192");
    g.bench_function("ntt_forward_49bit", |x| x.iter(|| op.forward(black_box(&mut a))));
    g.bench_function("ntt_backward_49bit", |x| x.iter(|| op.backward(black_box(&mut a))));
    g.bench_function("mul_acc_49bit", |x| x.iter(|| op.mul_acc(black_box(&mut out), &a, &b)));
    g.bench_function("mul_assign", |x| x.iter(|| slice::mul_assign(black_box(&mut out), &b, &m49)));
    g.bench_function("dot_k1", |x| x.iter(|| slice::dot([black_box(&mut out[..])], &[&a], [&[&b]], &m49)));
    let (d4, k4): (Vec<&[u64]>, Vec<&[u64]>) = ((0..4).map(|_| &a[..]).collect(), (0..4).map(|_| &b[..]).collect());
    let mut out2 = vec![0u64; n];
    g.bench_function("dot_pair_k4", |x| {
        x.iter(|| slice::dot([black_box(&mut out[..]), &mut out2[..]], &d4, [&k4, &k4], &m49))
    });
    g.bench_function("mul_acc_x8", |x| {
        x.iter(|| {
            for _ in 0..8 {
                op.mul_acc(black_box(&mut out), &a, &b)
            }
        })
    });
    let perm = op.galois_permutation(5);
    g.bench_function("permute", |x| x.iter(|| slice::permute_into(black_box(&mut out), &a, &perm)));
    g.bench_function("add_assign", |x| x.iter(|| slice::add_assign(black_box(&mut out), &b, &m49)));
    g.bench_function("mul_scalar", |x| x.iter(|| slice::mul_scalar_assign(black_box(&mut out), 12345, &m49)));
    g.bench_function("reduce_centered_49_to_40", |x| {
        x.iter(|| slice::reduce_centered_into(black_box(&mut out), &a, &m49, &m40))
    });
    g.bench_function("reduce_centered_40_to_49", |x| {
        x.iter(|| slice::reduce_centered_into(black_box(&mut out), &b, &m40, &m49))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = kernels
}
criterion_main!(benches);
