//! Tier (a): the encoder and ring arithmetic against naive references.
//!
//! - The special FFT against the O(N²) canonical embedding `m(ζ^{5^j})`.
//! - The slot rotation the Galois automorphism X -> X^5 performs.
//! - Homomorphic products against schoolbook negacyclic products (no NTT in the reference).
//! - Multi-prime CRT decoding against exact integer arithmetic.

mod common;
use blindfold_ckks::*;
use common::*;
use std::f64::consts::PI;

fn tiny(log_n: u32) -> std::sync::Arc<Context> {
    Context::new(
        &Parameters::new_insecure(ParametersLiteral {
            log_n,
            log_q: vec![50, 40, 40],
            log_p: vec![50],
            log_default_scale: 40,
            dnum: None,
        })
        .unwrap(),
    )
    .unwrap()
}

/// slot_j = Σ_k m_k ζ^{5^j k}, ζ = exp(iπ/N).
fn naive_embedding(coeffs: &[f64]) -> Vec<Complex64> {
    let n = coeffs.len();
    let mut g = 1usize;
    (0..n / 2)
        .map(|_| {
            let e = g;
            g = g * 5 % (2 * n);
            coeffs
                .iter()
                .enumerate()
                .map(|(k, &m)| Complex64::from_polar(m, PI * ((e * k) % (2 * n)) as f64 / n as f64))
                .sum()
        })
        .collect()
}

#[test]
fn special_fft_matches_naive_embedding() {
    for log_n in [4u32, 8, 10] {
        let ctx = tiny(log_n);
        let enc = Encoder::new(&ctx);
        let n = ctx.n();
        let coeffs: Vec<f64> = (0..n).map(|k| ((k * 7919) % 201) as f64 - 100.0).collect();
        let fast = enc.decode_coefficients(&coeffs, 1.0);
        let slow = naive_embedding(&coeffs);
        let err = fast.iter().zip(&slow).map(|(a, b)| (a - b).norm()).fold(0.0, f64::max);
        assert!(err < 1e-9 * n as f64 * 100.0, "N = {n}: max error {err}");
        // And the inverse: embedding the rounded encoding gives the values back.
        let values = values(n / 2, log_n as u64);
        let scale = 2f64.powi(30);
        let m = enc.embed(&values, scale).unwrap();
        let back = naive_embedding(&m);
        let err = back.iter().zip(&values).map(|(a, b)| (a / scale - b).norm()).fold(0.0, f64::max);
        assert!(err < (n as f64) / scale, "N = {n}: roundtrip error {err}");
    }
}

#[test]
fn automorphism_by_five_rotates_slots_left() {
    let ctx = tiny(8);
    let enc = Encoder::new(&ctx);
    let n = ctx.n();
    let coeffs: Vec<f64> = (0..n).map(|k| ((k * 31) % 17) as f64 - 8.0).collect();
    // X -> X^5 on integer coefficients, reference implementation.
    let mut rotated = vec![0f64; n];
    for (k, &c) in coeffs.iter().enumerate() {
        let t = (5 * k) % (2 * n);
        if t < n {
            rotated[t] = c;
        } else {
            rotated[t - n] = -c;
        }
    }
    let a = enc.decode_coefficients(&coeffs, 1.0);
    let b = enc.decode_coefficients(&rotated, 1.0);
    for j in 0..n / 2 {
        assert!((b[j] - a[(j + 1) % (n / 2)]).norm() < 1e-9);
    }
}

/// Schoolbook negacyclic product of integer polynomials (no NTT, no modular reduction).
fn schoolbook(a: &[i64], b: &[i64]) -> Vec<i128> {
    let n = a.len();
    let mut out = vec![0i128; n];
    for i in 0..n {
        for j in 0..n {
            let p = a[i] as i128 * b[j] as i128;
            if i + j < n {
                out[i + j] += p;
            } else {
                out[i + j - n] -= p;
            }
        }
    }
    out
}

#[test]
fn plaintext_product_matches_schoolbook() {
    // Encode integer-coefficient polynomials as slot vectors (their embeddings), multiply
    // homomorphically, and compare the decrypted embedding with the embedding of the
    // schoolbook product.
    let ctx = tiny(8);
    let n = ctx.n();
    let enc = Encoder::new(&ctx);
    let a: Vec<i64> = (0..n).map(|k| ((k * 13) % 7) as i64 - 3).collect();
    let b: Vec<i64> = (0..n).map(|k| ((k * 29) % 5) as i64 - 2).collect();
    let prod = schoolbook(&a, &b);
    let to_f = |v: &[i64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let za = enc.decode_coefficients(&to_f(&a), 1.0);
    let zb = enc.decode_coefficients(&to_f(&b), 1.0);
    let want = enc.decode_coefficients(&prod.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1.0);
    let mut kg = KeyGenerator::from_seed(&ctx, [3; 32]);
    let rlk = kg.relinearization_key();
    let pk = kg.public_key();
    let mut encryptor = Encryptor::with_public_key(&ctx, &pk).unwrap();
    let scale = 2f64.powi(30);
    let ca = encryptor.encrypt(&enc.encode(&za, 2, scale).unwrap()).unwrap();
    let cb = encryptor.encrypt(&enc.encode(&zb, 2, scale).unwrap()).unwrap();
    let eval = Evaluator::new(&ctx);
    let c = eval.multiply_relin(&ca, &cb, &rlk).unwrap();
    let got = enc.decode(&Decryptor::new(kg.secret_key()).decrypt(&c).unwrap()).unwrap();
    let err = got.iter().zip(&want).map(|(g, w)| (g - w).norm() / w.norm().max(1.0)).fold(0.0, f64::max);
    assert!(err < 1e-5, "relative error {err}");
}

#[test]
fn multi_prime_decoding_matches_exact_crt() {
    // Values large enough that the coefficients need all three primes (≈ 2^120 > 2^64).
    let ctx = tiny(4);
    let enc = Encoder::new(&ctx);
    let scale = 2f64.powi(100);
    let v: Vec<Complex64> = (0..8).map(|j| Complex64::new(j as f64 - 3.5, 0.5 * j as f64)).collect();
    let pt = enc.encode(&v, 2, scale).unwrap();
    let back = enc.decode(&pt).unwrap();
    for (a, b) in back.iter().zip(&v) {
        assert!((a - b).norm() < 1e-12, "{a} vs {b}");
    }
    // Values too large for Q_level are refused rather than wrapped.
    assert!(matches!(enc.encode(&v, 0, scale), Err(Error::Encoding(_))));
}
