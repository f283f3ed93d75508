//! The bootstrap stage at small insecure parameters (`N4096_BOOT_LEFT2_INSECURE`): a circuit
//! deeper than its chain's computation levels against its plaintext twin, the keys it declares
//! against the keys it uses, and what it refuses.

use blindfold_ckks::bootstrap::{N4096_BOOT_LEFT2_INSECURE as PRESET, N65536_BOOT_LEFT8_SPARSE_SECRET_128BIT as BIG};
use blindfold_ckks::{
    presets, BootstrapKeys, Context, Decryptor, Encoder, Evaluator, KeyGenerator, SymmetricEncryptor,
};
use blindfold_tensor::{
    BootstrapStage, Circuit, CircuitError, CkksBackend, Packing, PolynomialActivation, Shape, Stage,
};
use std::sync::Arc;

fn packing(slots: usize) -> Packing {
    Packing::image(Shape { c: 1, h: 1, w: 100 }, slots).unwrap()
}

/// Bootstrap (from the top), x², bootstrap, x² − 0.5: six levels of a chain that leaves two.
fn circuit(ctx: &Context) -> Circuit {
    let (top, left) = (ctx.max_level(), PRESET.levels_left());
    let square = |level| Stage::Polynomial(PolynomialActivation::monic(vec![0.0, 0.0], level).unwrap());
    let stages = vec![
        Stage::Bootstrap(BootstrapStage::new(PRESET, top)),
        square(left),
        Stage::Bootstrap(BootstrapStage::new(PRESET, left - 1)),
        Stage::Polynomial(PolynomialActivation::monic(vec![-0.5, 0.0], left).unwrap()),
    ];
    let p = packing(ctx.params().slots());
    let layout = p.layout();
    Circuit::new(p, top, stages, layout).unwrap()
}

#[test]
fn a_circuit_with_bootstraps_matches_its_twin_with_exactly_the_declared_keys() {
    let ctx = Context::new(&PRESET.parameters().unwrap()).unwrap();
    let mut c = circuit(&ctx);
    assert_eq!(c.output_level(), PRESET.levels_left() - 1);
    assert_eq!(c.depth(), 2);
    assert_eq!(c.sparse_secret(), PRESET.sparse_secret);
    let delta = ctx.params().default_scale();
    c.encode(&ctx, delta).unwrap();
    let mut keygen = KeyGenerator::from_seed(&ctx, [3; 32]);
    let declared = c.key_requests(&ctx).unwrap();
    let (rlk, gk) = (keygen.relinearization_key(), keygen.galois_keys(&declared).unwrap());
    let enc = keygen.encapsulation_keys(c.sparse_secret().unwrap()).unwrap();
    let x: Vec<f64> = (0..100).map(|i| 0.9 * ((i * 37 % 100) as f64 / 50.0 - 1.0)).collect();
    let packed = c.packing().pack(&x).unwrap();
    let encoder = Encoder::new(&ctx);
    let pt = encoder.encode_real(&packed[0], ctx.max_level(), delta).unwrap();
    let ct = SymmetricEncryptor::new(keygen.secret_key()).unwrap().encrypt(&pt).unwrap().expand(&ctx);
    let eval = Evaluator::new(&ctx);
    let be = CkksBackend::new(&eval, &rlk, &gk, &declared).with_encapsulation(Some(&enc));
    let out = c.evaluate_on(&be, std::slice::from_ref(&ct)).unwrap();
    assert_eq!(out.level(), c.output_level());
    // Every declared key used, at its level, and nothing else.
    let (mut used, mut want) = (be.used(), declared.clone());
    used.sort();
    want.sort();
    assert_eq!(used, want);
    let got = c.read_output(&encoder.decode_real(&Decryptor::new(keygen.secret_key()).decrypt(&out).unwrap()).unwrap());
    let twin = c.evaluate_plain(&packed).unwrap();
    let exact: Vec<f64> = x.iter().map(|v| (v * v) * (v * v) - 0.5).collect();
    let err = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f64, f64::max);
    // The twin rounds to the preset's precision at each bootstrap: within a few of its units.
    assert!(err(&twin, &exact) < 4.0 * 2f64.powi(-(PRESET.precision_bits as i32)), "{}", err(&twin, &exact));
    let e = err(&got, &twin);
    println!("two bootstraps in a circuit: max |encrypted − twin| = 2^{:.1}", e.log2());
    assert!(e < 2f64.powi(-18), "encrypted vs twin: {e:e}");
    // The same through `Circuit::evaluate_with`.
    let keys = BootstrapKeys { relinearization: &rlk, galois: &gk, encapsulation: Some(&enc) };
    let again = c.evaluate_with(&eval, std::slice::from_ref(&ct), &keys).unwrap();
    assert_eq!(again.level(), out.level());
}

#[test]
fn bootstraps_refuse_what_they_cannot_do() {
    let ctx = Context::new(&PRESET.parameters().unwrap()).unwrap();
    let mut c = circuit(&ctx);
    // The twin needs no encoding.
    assert!(c.evaluate_plain(&[vec![0.5; ctx.params().slots()]]).is_ok());
    let delta = ctx.params().default_scale();
    c.encode(&ctx, delta).unwrap();
    // The twin refuses slots outside [-1, 1], naming the slot.
    let mut packed = c.packing().pack(&[0.5; 100]).unwrap();
    packed[0][7] = 1.5;
    let err = c.evaluate_plain(&packed).unwrap_err();
    assert!(matches!(&err, CircuitError::Input { actual, .. } if actual.contains("slot 7")), "{err}");
    // Without the encapsulation keys, or without a declared key: refused, naming the stage.
    let mut keygen = KeyGenerator::from_seed(&ctx, [4; 32]);
    let declared = c.key_requests(&ctx).unwrap();
    let (rlk, gk) = (keygen.relinearization_key(), keygen.galois_keys(&declared).unwrap());
    let pt = Encoder::new(&ctx).encode_real(&packed[0][..8], ctx.max_level(), delta).unwrap();
    let ct = SymmetricEncryptor::new(keygen.secret_key()).unwrap().encrypt(&pt).unwrap().expand(&ctx);
    let eval = Evaluator::new(&ctx);
    let err = c.evaluate(&eval, std::slice::from_ref(&ct), &rlk, &gk).unwrap_err();
    assert!(matches!(&err, CircuitError::MissingKeys(what) if what.contains("encapsulation")), "{err}");
    let enc = keygen.encapsulation_keys(c.sparse_secret().unwrap()).unwrap();
    let be = CkksBackend::new(&eval, &rlk, &gk, &declared[1..]).with_encapsulation(Some(&enc));
    let err = c.evaluate_on(&be, std::slice::from_ref(&ct)).unwrap_err();
    assert!(matches!(&err, CircuitError::UndeclaredElement { stage, .. } if stage.contains("bootstrap")), "{err}");
    // Other parameters than the preset's.
    let other = Context::new(&presets::N8192_DEPTH5_128BIT.parameters().unwrap()).unwrap();
    let mut b = BootstrapStage::new(PRESET, other.max_level());
    assert!(matches!(b.encode(&other), Err(CircuitError::Input { .. })));
    // A stage deeper than the level it starts at: bootstrap first.
    let (top, left) = (ctx.max_level(), PRESET.levels_left());
    let quartic = Stage::Polynomial(PolynomialActivation::monic(vec![0.0; 4], left).unwrap());
    let cube = Stage::Polynomial(PolynomialActivation::monic(vec![0.0; 3], left - 2).unwrap());
    let stages = vec![Stage::Bootstrap(BootstrapStage::new(PRESET, top)), quartic, cube];
    let p = packing(ctx.params().slots());
    let layout = p.layout();
    let err = Circuit::new(p, top, stages, layout).unwrap_err();
    assert!(matches!(&err, CircuitError::TooDeep { hint: Some(h), .. } if h.contains("bootstrap before")), "{err}");
}

#[test]
fn a_bootstrap_declares_its_levels_and_keys_without_encoding() {
    let b = BootstrapStage::new(BIG, 0);
    assert_eq!(b.output_level(), 8);
    assert_eq!(b.sparse_secret(), Some(128));
    assert_eq!(b.cost().levels, BIG.config().depth());
    let ctx = Context::new(&PRESET.parameters().unwrap()).unwrap();
    let small = BootstrapStage::new(PRESET, 0);
    let requests = small.key_requests(&ctx).unwrap();
    assert!(requests.iter().any(|r| r.element == ctx.galois_element_for_conjugation()), "the conjugation");
    assert!(requests.iter().all(|r| r.level.0 <= ctx.max_level() && r.level.0 > PRESET.levels_left()));
    assert!(matches!(small.plan(), Err(CircuitError::NotEncoded)));
    let _: Arc<Context> = ctx;
}
