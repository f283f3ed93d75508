//! The cryptonets BFV batch workload's server side on fhe.rs 0.1.1 (tfhe-ntt feature), at the
//! plan blindfold picks for 8-bit weights (N = 16384, Q = 5 × 50 bits, one 38-bit plaintext
//! prime: one CRT component): convolution 784 → 845 (25 terms per output), 845 squares,
//! dense 845 → 100, 100 squares, dense 100 → 10, weights as constant SIMD plaintexts
//! (fhe.rs's `dot_product_scalar`), products relinearized (`Multiplicator`). Both cores (rayon
//! over outputs). Prints seconds per stage. Run: `cargo run --release` in this directory.

use fhe::bfv::{
    dot_product_scalar, BfvParametersBuilder, Ciphertext, Encoding, Multiplicator, Plaintext, RelinearizationKey,
    SecretKey,
};
use fhe_traits::{FheEncoder, FheEncrypter};
use rand::Rng;
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let n = 16384;
    let t = 274877153281u64;
    let par = BfvParametersBuilder::new()
        .set_degree(n)
        .set_plaintext_modulus(t)
        .set_moduli_sizes(&[50; 5])
        .build_arc()
        .unwrap();
    let sk = SecretKey::random(&par, &mut rand::rng());
    let rk = RelinearizationKey::new(&sk, &mut rand::rng()).unwrap();
    let mul = Multiplicator::default(&rk).unwrap();
    let constant = |w: u64| Plaintext::try_encode(&vec![w; n], Encoding::simd(), &par).unwrap();
    let mut rng = rand::rng();
    let t0 = Instant::now();
    let inputs: Vec<Ciphertext> = (0..784)
        .into_par_iter()
        .map(|_| {
            let v: Vec<u64> = (0..n).map(|_| rand::rng().random_range(0..256)).collect();
            sk.try_encrypt(&Plaintext::try_encode(&v, Encoding::simd(), &par).unwrap(), &mut rand::rng()).unwrap()
        })
        .collect();
    println!("encrypt 784: {:.2} s", t0.elapsed().as_secs_f64());
    // Weights: small integers (8-bit), one constant plaintext each, made before timing.
    let mut weights =
        |count: usize| -> Vec<Plaintext> { (0..count).map(|_| constant(rng.random_range(0..128))).collect() };
    let w1 = weights(25);
    let w2 = weights(845);
    let w3 = weights(100);
    let stage = |name: &str, f: &dyn Fn() -> Vec<Ciphertext>| -> Vec<Ciphertext> {
        let t = Instant::now();
        let out = f();
        println!("{name}: {:.2} s", t.elapsed().as_secs_f64());
        out
    };
    let conv = stage("conv 784→845 (25 terms each)", &|| {
        (0..845)
            .into_par_iter()
            .map(|o| dot_product_scalar((0..25).map(|k| &inputs[(o * 7 + k) % 784]), w1.iter()).unwrap())
            .collect()
    });
    let sq1 =
        stage("845 squares + relinearization", &|| conv.par_iter().map(|c| mul.multiply(c, c).unwrap()).collect());
    let dense = stage("dense 845→100", &|| {
        (0..100).into_par_iter().map(|_| dot_product_scalar(sq1.iter(), w2.iter()).unwrap()).collect()
    });
    let sq2 =
        stage("100 squares + relinearization", &|| dense.par_iter().map(|c| mul.multiply(c, c).unwrap()).collect());
    let _ = stage("dense 100→10", &|| {
        (0..10).into_par_iter().map(|_| dot_product_scalar(sq2.iter(), w3.iter()).unwrap()).collect()
    });
}
