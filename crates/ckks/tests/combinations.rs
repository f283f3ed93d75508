//! `Evaluator::linear_combinations_of_squares` against the squares formed first: the same
//! ciphertexts, bit for bit, on the IFMA kernel's primes and on the scalar path's.

use blindfold_ckks::{
    Context, Encoder, Error, Evaluator, KeyGenerator, Parameters, ParametersLiteral, SymmetricEncryptor,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn check(log_q: Vec<u32>) {
    let params = Parameters::new(ParametersLiteral {
        log_n: 13,
        log_q: log_q.clone(),
        log_p: vec![log_q[0]],
        log_default_scale: 30,
        dnum: None,
    })
    .unwrap();
    let ctx = Context::new(&params).unwrap();
    let keygen = KeyGenerator::from_seed(&ctx, [3; 32]);
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let encoder = Encoder::new(&ctx);
    let eval = Evaluator::new(&ctx);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let level = ctx.max_level();
    let cts: Vec<_> = (0..7)
        .map(|_| {
            let v: Vec<f64> = (0..ctx.n() / 2).map(|_| f64::from(rng.next_u32() % 1000) / 500.0 - 1.0).collect();
            enc.encrypt(&encoder.encode_real(&v, level, 2f64.powi(20)).unwrap()).unwrap().expand(&ctx)
        })
        .collect();
    let refs: Vec<_> = cts.iter().collect();
    // Negative weights, a repeated input, an empty row, biases.
    let rows = vec![vec![(0u32, 0.5), (3, -1.25), (6, 2.0)], vec![(1, -0.75), (1, 0.25), (5, 1.0)], vec![]];
    let bias = [0.125, -3.0, 1.5];
    let fused = eval.linear_combinations_of_squares(&refs, &rows, &bias, 2f64.powi(12)).unwrap();
    let squares: Vec<_> = cts.iter().map(|c| eval.square(c).unwrap()).collect();
    let square_refs: Vec<_> = squares.iter().collect();
    let stored = eval.linear_combinations(&square_refs, &rows, &bias, 2f64.powi(12)).unwrap();
    assert_eq!(fused, stored, "q bits {log_q:?}");
    // Inputs of size 3 are refused with a typed error.
    let err = eval.linear_combinations_of_squares(&square_refs, &rows, &bias, 2f64.powi(12)).unwrap_err();
    assert!(matches!(err, Error::CiphertextSize { expected: 2, actual: 3, .. }), "{err}");
}

#[test]
fn fused_squares_equal_squares_then_sums_on_ifma_primes() {
    check(vec![45, 40, 40]);
}

#[test]
fn fused_squares_equal_squares_then_sums_on_the_scalar_path() {
    check(vec![58, 55]);
}
