use blindfold_math::{primes::ntt_primes, NttOperator, slice};
use std::time::Instant;
fn main() {
    let n = 8192;
    for bits in [40u32, 49, 55] {
        let q = ntt_primes(bits, n, 1, &[]).unwrap()[0];
        let op = NttOperator::new(n, q).unwrap();
        let mut a: Vec<u64> = (0..n as u64).map(|i| i * 12345 % q).collect();
        let b = a.clone();
        let t = Instant::now();
        for _ in 0..1000 { op.forward(&mut a); }
        let f = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        for _ in 0..1000 { op.backward(&mut a); }
        let bk = t.elapsed().as_secs_f64() * 1e3;
        let mut acc = vec![0u64; n];
        let t = Instant::now();
        for _ in 0..1000 { op.mul_acc(&mut acc, &a, &b); }
        let m = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        for _ in 0..1000 { slice::add_assign(&mut acc, &b, op.modulus()); }
        let ad = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        for _ in 0..1000 { slice::mul_scalar_assign(&mut acc, 12345, op.modulus()); }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{bits}-bit ifma={} fwd {f:.1}us inv {bk:.1}us mul_acc {m:.1}us add {ad:.1}us mul_scalar {ms:.1}us", op.uses_ifma());
    }
}
