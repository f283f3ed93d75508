use blindfold_math::{slice, Modulus};
use std::time::Instant;
fn main() {
    let n = 8192;
    let q = Modulus::new(blindfold_math::primes::ntt_primes(49, n, 1, &[]).unwrap()[0]).unwrap();
    let regions = 64;
    let key: Vec<u64> = (0..regions * 6 * n).map(|i| (i as u64 * 7919) % q.value()).collect();
    let d: Vec<Vec<u64>> = (0..3).map(|j| (0..n).map(|i| ((i * 31 + j) as u64) % q.value()).collect()).collect();
    let dr: Vec<&[u64]> = d.iter().map(|v| v.as_slice()).collect();
    let mut o0 = vec![0u64; n];
    let mut o1 = vec![0u64; n];
    for &cold in &[false, true, false, true] {
        let t = Instant::now();
        let iters = 4000;
        for it in 0..iters {
            let r = if cold { it % regions } else { 0 };
            let base = &key[r * 6 * n..(r + 1) * 6 * n];
            let b: Vec<&[u64]> = (0..3).map(|j| &base[j * n..(j + 1) * n]).collect();
            let a: Vec<&[u64]> = (0..3).map(|j| &base[(3 + j) * n..(4 + j) * n]).collect();
            slice::dot([&mut o0, &mut o1], &dr, [&b, &a], &q);
        }
        println!("cold={cold}: {:.2} us", t.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
}
