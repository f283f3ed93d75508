//! Shared helpers for the CKKS integration tests.
#![allow(dead_code, missing_docs)]

use blindfold_ckks::*;
use std::sync::Arc;

/// Deterministic pseudo-random complex values in the unit disc.
pub fn values(n: usize, seed: u64) -> Vec<Complex64> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..n).map(|_| Complex64::new(next(), next()) * 0.7).collect()
}

/// Bits of precision: -log2 of the error, per slot; returns (mean, min) over the slots.
pub fn precision(got: &[Complex64], want: &[Complex64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let bits: Vec<f64> = got.iter().zip(want).map(|(g, w)| -((g - w).norm().max(1e-300)).log2()).collect();
    let mean = bits.iter().sum::<f64>() / bits.len() as f64;
    let min = bits.iter().cloned().fold(f64::INFINITY, f64::min);
    (mean, min)
}

pub struct Setup {
    pub params: Parameters,
    pub ctx: Arc<Context>,
    pub keygen: KeyGenerator,
    pub encoder: Encoder,
    pub encryptor: Encryptor,
    pub decryptor: Decryptor,
    pub eval: Evaluator,
    pub rlk: RelinearizationKey,
}

pub fn setup(params: Parameters, seed: u8) -> Setup {
    let ctx = Context::new(&params).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [seed; 32]);
    let pk = keygen.public_key();
    let rlk = keygen.relinearization_key();
    let mut encryptor = Encryptor::with_public_key(&ctx, &pk).unwrap();
    encryptor.reseed_for_tests([seed.wrapping_add(1); 32]);
    let decryptor = Decryptor::new(keygen.secret_key());
    Setup { encoder: Encoder::new(&ctx), eval: Evaluator::new(&ctx), params, ctx, keygen, encryptor, decryptor, rlk }
}

impl Setup {
    pub fn encrypt(&mut self, v: &[Complex64]) -> Ciphertext {
        let pt = self.encoder.encode(v, self.ctx.max_level(), self.params.default_scale()).unwrap();
        self.encryptor.encrypt(&pt).unwrap()
    }
    pub fn decrypt(&self, ct: &Ciphertext) -> Vec<Complex64> {
        self.encoder.decode(&self.decryptor.decrypt(ct).unwrap()).unwrap()
    }
}

/// Small insecure parameters for fast tests (N = 2^11).
pub fn small_params() -> Parameters {
    Parameters::new_insecure(ParametersLiteral {
        log_n: 11,
        log_q: vec![50, 40, 40, 40],
        log_p: vec![50, 50],
        log_default_scale: 40,
        dnum: None,
    })
    .unwrap()
}

/// Parameters with the same ring degree as [`small_params`] but other primes (one special
/// prime instead of two): objects made under them must be refused.
pub fn other_small_context() -> Arc<Context> {
    Context::new(
        &Parameters::new_insecure(ParametersLiteral {
            log_n: 11,
            log_q: vec![50, 40, 40, 40],
            log_p: vec![50],
            log_default_scale: 40,
            dnum: None,
        })
        .unwrap(),
    )
    .unwrap()
}
