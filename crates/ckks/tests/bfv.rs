//! BFV on the RNS core: exact arithmetic modulo t, checked against integer arithmetic.

use blindfold_ckks::bfv::{BfvContext, BfvDecryptor};
use blindfold_ckks::{Context, Evaluator, KeyGenerator, Parameters, ParametersLiteral, SymmetricEncryptor};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// N = 8192, Q = 3 × 60 bits, P = 38 bits: within the 218-bit bound.
fn context() -> std::sync::Arc<Context> {
    let params = Parameters::new(ParametersLiteral {
        log_n: 13,
        log_q: vec![60, 60, 60],
        log_p: vec![38],
        log_default_scale: 40,
        dnum: None,
    })
    .unwrap();
    Context::new(&params).unwrap()
}

fn setup(t: u64) -> (std::sync::Arc<BfvContext>, KeyGenerator) {
    let ctx = context();
    let bfv = BfvContext::new(&ctx, t).unwrap();
    (bfv, KeyGenerator::from_seed(&ctx, [7; 32]))
}

#[test]
fn bfv_is_exact_through_products_sums_and_constants() {
    let t = 65537;
    let (bfv, mut keygen) = setup(t);
    let ctx = bfv.context().clone();
    let n = bfv.slots();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let values: Vec<Vec<i64>> = (0..3).map(|_| (0..n).map(|_| (rng.next_u32() % 201) as i64 - 100).collect()).collect();
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let cts: Vec<_> =
        values.iter().map(|v| enc.encrypt(&bfv.encode_signed(v).unwrap()).unwrap().expand(&ctx)).collect();
    let dec = BfvDecryptor::new(&bfv, keygen.secret_key());
    assert_eq!(dec.decrypt_signed(&cts[0]).unwrap(), values[0]);
    let fresh = dec.noise_budget_bits(&cts[0]).unwrap();

    let rlk = keygen.relinearization_key();
    let eval = Evaluator::new(&ctx);
    // y = (x0·x1)² relinearized; z = 3·x0 − 2·y + x2 + 5.
    let mut p = bfv.multiply(&cts[0], &cts[1]).unwrap();
    eval.relinearize_assign(&mut p, &rlk).unwrap();
    let mut y = bfv.square(&p).unwrap();
    eval.relinearize_assign(&mut y, &rlk).unwrap();
    let inputs = [&cts[0], &y, &cts[2]];
    let rows = vec![vec![(0u32, 3.0), (1, -2.0), (2, 1.0)]];
    let mut z = eval.linear_combinations(&inputs, &rows, &[0.0], 1.0).unwrap().pop().unwrap();
    bfv.add_constant(&mut z, 5).unwrap();

    let tm = |v: i64| v.rem_euclid(t as i64);
    let got_y = dec.decrypt(&y).unwrap();
    let got_z = dec.decrypt(&z).unwrap();
    for k in 0..n {
        let (a, b, c) = (values[0][k], values[1][k], values[2][k]);
        let yy = tm(tm(a * b) * tm(a * b));
        assert_eq!(got_y[k] as i64, yy, "slot {k}");
        assert_eq!(got_z[k] as i64, tm(3 * a - 2 * yy + c + 5), "slot {k}");
    }
    let left = dec.noise_budget_bits(&z).unwrap();
    println!("noise budget: fresh {fresh:.1} bits, after depth 2 {left:.1} bits");
    assert!(left > 0.0 && left < fresh);
}

#[test]
fn bfv_refuses_bad_plaintext_moduli_and_values() {
    let ctx = context();
    // Not ≡ 1 mod 2N, not prime, too large for the chain.
    for t in [65539u64, 65536 * 2 + 1, 17] {
        assert!(BfvContext::new(&ctx, t).is_err(), "t = {t}");
    }
    let bfv = BfvContext::new(&ctx, 65537).unwrap();
    assert!(bfv.encode(&[65537]).is_err());
    assert!(bfv.encode(&vec![1; 8193]).is_err());
    assert!(bfv.encode_signed(&[40000]).is_err());
}
