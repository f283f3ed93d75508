//! Parameters: the 128-bit check (tier d), presets and known-answer vectors (tier c).

use blindfold_ckks::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_preset_passes_the_128_bit_check() {
    for p in presets::PRESETS {
        let params = p.parameters().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let bound = max_log_qp_128bit(params.n()).unwrap() as f64;
        assert!(params.log_qp() <= bound, "{}", p.name);
        assert_eq!(params.security(), SecurityLevel::Bits128);
        assert_eq!(params.max_level(), p.depth());
        assert!(p.name.contains(&format!("N{}", params.n())) && p.name.contains(&format!("DEPTH{}", p.depth())));
        println!("{:<24} log2(QP) = {:.2} <= {bound}", p.name, params.log_qp());
    }
}

#[test]
fn insecure_literals_are_refused() {
    // One bit over the N = 8192 bound.
    let lit = ParametersLiteral {
        log_n: 13,
        log_q: vec![60, 40, 40, 40],
        log_p: vec![60],
        log_default_scale: 40,
        dnum: None,
    };
    let err = Parameters::new(lit.clone()).unwrap_err();
    assert!(matches!(err, Error::Insecure { n: 8192, bound: 218, .. }), "{err}");
    assert!(err.to_string().contains("exceeds the HomomorphicEncryption.org 128-bit bound"));
    // The explicit insecure constructor accepts it and marks it.
    assert_eq!(Parameters::new_insecure(lit).unwrap().security(), SecurityLevel::Insecure);
    // Small rings only through the insecure constructor.
    let small = ParametersLiteral { log_n: 10, log_q: vec![27], log_p: vec![20], log_default_scale: 15, dnum: None };
    assert!(matches!(Parameters::new(small), Err(Error::InvalidParameters(_))));
}

#[test]
fn malformed_literals_are_refused() {
    let base = ParametersLiteral { log_n: 13, log_q: vec![40, 30], log_p: vec![40], log_default_scale: 30, dnum: None };
    for (lit, needle) in [
        (ParametersLiteral { log_q: vec![], ..base.clone() }, "non-empty"),
        (ParametersLiteral { log_q: vec![61, 30], ..base.clone() }, "outside"),
        (ParametersLiteral { log_q: vec![12, 30], ..base.clone() }, "outside"),
        (ParametersLiteral { dnum: Some(0), ..base.clone() }, "dnum"),
        (ParametersLiteral { dnum: Some(3), ..base.clone() }, "dnum"),
        (ParametersLiteral { log_default_scale: 5, ..base.clone() }, "scale"),
        (ParametersLiteral { log_n: 17, ..base.clone() }, "log_n"),
    ] {
        let err = Parameters::new(lit).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
    }
}

#[test]
fn preset_primes_and_fingerprints_are_known_answers() {
    let p = presets::N8192_DEPTH3_128BIT.parameters().unwrap();
    println!("N8192_DEPTH3 q = {:?} p = {:?} fp = {}", p.q(), p.p(), hex(p.fingerprint()));
    let p5 = presets::N8192_DEPTH5_128BIT.parameters().unwrap();
    println!("N8192_DEPTH5 q = {:?} p = {:?} fp = {}", p5.q(), p5.p(), hex(p5.fingerprint()));
    assert_eq!(p.q(), KAT_N8192_DEPTH3_Q);
    assert_eq!(p.p(), KAT_N8192_DEPTH3_P);
    assert_eq!(hex(p.fingerprint()), KAT_N8192_DEPTH3_FINGERPRINT);
    assert_eq!(p5.q(), KAT_N8192_DEPTH5_Q);
    assert_eq!(p5.p(), KAT_N8192_DEPTH5_P);
    for q in p.q().iter().chain(p.p()) {
        assert_eq!(q % 16384, 1);
    }
}

#[test]
fn encoding_is_a_known_answer() {
    let params = presets::N8192_DEPTH3_128BIT.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let enc = Encoder::new(&ctx);
    let values: Vec<Complex64> =
        (0..4096).map(|j| Complex64::new((j as f64 * 0.01).sin(), (j as f64 * 0.003).cos() / 3.0)).collect();
    let coeffs = enc.embed(&values, 2f64.powi(40)).unwrap();
    let mut h = Sha256::new();
    for c in &coeffs {
        h.update((*c as i64).to_le_bytes());
    }
    let digest = hex(&h.finalize());
    println!("encoding digest {digest}, first coefficients {:?}", &coeffs[..4]);
    assert_eq!(digest, KAT_ENCODING_DIGEST);
    assert_eq!(&coeffs[..4], KAT_ENCODING_FIRST);
}

// Known answers, recorded 2026-11-21. A change here means released presets or the encoding
// changed: presets are never changed in place (add a new one instead).
const KAT_N8192_DEPTH3_Q: &[u64] = &[562949952847873, 1099511480321, 1099510890497, 1099510824961];
const KAT_N8192_DEPTH3_P: &[u64] = &[562949952798721];
const KAT_N8192_DEPTH3_FINGERPRINT: &str = "a9b4b2601f604661dac6daf94ea034b84c77ce6c980add7ec36c2dcaa0a51eac";
const KAT_N8192_DEPTH5_Q: &[u64] = &[68719230977, 536690689, 536641537, 536608769, 536543233, 536494081];
const KAT_N8192_DEPTH5_P: &[u64] = &[137438822401];
const KAT_ENCODING_DIGEST: &str = "18047a74c9e50e3053410f07d8a1d33805846674aba63845ce23d7e70a5ac8c6";
const KAT_ENCODING_FIRST: &[f64] = &[53511834592.0, 8091819519.0, -10783084207.0, 10608689722.0];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(218), ..ProptestConfig::default() })]

    /// Whatever the literal, `Parameters::new` either refuses it or returns parameters
    /// within the 128-bit bound; it never panics.
    #[test]
    fn checked_parameters_are_always_within_the_bound(
        log_n in 10u32..17,
        log_q in proptest::collection::vec(10u32..64, 0..12),
        log_p in proptest::collection::vec(10u32..64, 0..4),
        log_scale in 0u32..70,
        dnum in proptest::option::of(0usize..14),
    ) {
        let lit = ParametersLiteral { log_n, log_q, log_p, log_default_scale: log_scale, dnum };
        if let Ok(p) = Parameters::new(lit) {
            prop_assert!(p.log_qp() <= max_log_qp_128bit(p.n()).unwrap() as f64);
            prop_assert_eq!(p.security(), SecurityLevel::Bits128);
        }
    }
}
