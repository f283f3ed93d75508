//! Bootstrapping at small, insecure parameters (N = 2^10): the homomorphic DFTs against the
//! plaintext special FFT, EvalMod against exact modular reduction, the whole bootstrap against
//! its input, and the keys it declares against the keys it uses.

mod common;

use blindfold_ckks::bootstrap::special_fft_factors;
use blindfold_ckks::*;
use common::*;
use std::collections::BTreeMap;

fn bit_reverse(v: &[Complex64]) -> Vec<Complex64> {
    let bits = v.len().trailing_zeros();
    (0..v.len()).map(|j| v[j.reverse_bits() >> (usize::BITS - bits)]).collect()
}

fn max_error(a: &[Complex64], b: &[Complex64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).norm()).fold(0.0, f64::max)
}

/// An insecure chain laid out for bootstrapping: `q_0` 60 bits, `left` computation levels and
/// the SlotsToCoeffs levels at 45 bits, the EvalMod levels at 60 bits, the CoeffsToSlots
/// levels at 58 bits; scale 2^45.
fn boot_params(log_n: u32, left: usize, config: &BootstrapConfig) -> Parameters {
    let mut log_q = vec![60];
    log_q.extend(std::iter::repeat_n(45, left + config.stc_levels));
    log_q.extend(std::iter::repeat_n(60, config.evalmod_depth()));
    log_q.extend(std::iter::repeat_n(58, config.cts_levels));
    Parameters::new_insecure(ParametersLiteral {
        log_n,
        log_q,
        log_p: vec![60, 60, 60],
        log_default_scale: 45,
        dnum: None,
    })
    .unwrap()
}

fn small_config() -> BootstrapConfig {
    BootstrapConfig {
        cts_levels: 2,
        stc_levels: 2,
        k: BootstrapConfig::k_for_uniform_ternary(1 << 10),
        double_angles: 4,
        degree: 63,
        baby: 8,
        log_message_ratio: 8,
        sparse_secret: None,
        slots: None,
        arcsine: false,
    }
}

/// [`small_config`] with the sparse-secret encapsulation (32 nonzero coefficients: `K` = 14
/// instead of 62, so a shorter cosine) and the arcsine correction.
fn sparse_config() -> BootstrapConfig {
    BootstrapConfig {
        k: BootstrapConfig::k_for_sparse_ternary(1 << 10, 32),
        double_angles: 4,
        degree: 31,
        sparse_secret: Some(32),
        arcsine: true,
        ..small_config()
    }
}

#[test]
fn special_fft_factors_are_the_encoders_embedding() {
    let ctx = Context::new(&small_params()).unwrap();
    let encoder = Encoder::new(&ctx);
    let n = encoder.slots();
    let w = values(n, 7);
    let coeffs: Vec<f64> = w.iter().map(|c| c.re).chain(w.iter().map(|c| c.im)).collect();
    let z = encoder.decode_coefficients(&coeffs, 1.0);
    for levels in 1..=4 {
        let mut x = bit_reverse(&w);
        for m in special_fft_factors(n, levels, false).unwrap() {
            x = m.apply(&x);
        }
        assert!(max_error(&x, &z) < 1e-9, "SlotsToCoeffs in {levels} levels: {}", max_error(&x, &z));
        let mut y = z.clone();
        let factors = special_fft_factors(n, levels, true).unwrap();
        for m in &factors {
            y = m.apply(&y);
        }
        let want: Vec<Complex64> = bit_reverse(&w).iter().map(|c| c * n as f64).collect();
        assert!(max_error(&y, &want) < 1e-6, "CoeffsToSlots in {levels} levels: {}", max_error(&y, &want));
        // A factor of k merged stages has at most 2^{k+1} - 1 diagonals.
        let stages = n.trailing_zeros() as usize;
        for m in &factors {
            assert!(m.diagonals().len() < 1 << (stages.div_ceil(levels) + 1));
        }
    }
    assert!(special_fft_factors(n, 0, true).is_err());
    assert!(special_fft_factors(n, 11, true).is_err());
}

#[test]
fn homomorphic_linear_transform_matches_its_plaintext_twin() {
    let mut s = setup(small_params(), 3);
    let n = s.encoder.slots();
    let mut diagonals = BTreeMap::new();
    for (k, d) in [0usize, 1, 5, 17, n - 1, n - 33, 300].into_iter().enumerate() {
        diagonals.insert(d, values(n, 100 + k as u64));
    }
    let m = LinearTransform::new(n, diagonals).unwrap();
    let level = s.ctx.max_level();
    let gk = s.keygen.galois_keys(&m.key_requests(&s.ctx, Level(level))).unwrap();
    let x = values(n, 9);
    let ct = s.encrypt(&x);
    let q = s.params.q()[level] as f64;
    let encoded = m.encode(&s.encoder, level, q).unwrap();
    let out = s.eval.linear_transform(&ct, &encoded, &gk).unwrap();
    assert_eq!(out.level(), level - 1);
    let got = s.decrypt(&out);
    let want = m.apply(&x);
    let (mean, min) = precision(&got, &want);
    assert!(min > 20.0, "linear transform precision {mean:.1} mean, {min:.1} worst bits");
    // Diagonals too large for one word per coefficient are kept as plaintexts: same map.
    let big = m.encode(&s.encoder, level, 2f64.powi(70)).unwrap();
    let out = s.eval.linear_transform(&ct, &big, &gk).unwrap();
    let (mean, min) = precision(&s.decrypt(&out), &want);
    assert!(min > 20.0, "linear transform with wide diagonals: {mean:.1} mean, {min:.1} worst bits");
    // A missing key is a typed error, not a wrong answer.
    let partial = s.keygen.galois_keys(&m.key_requests(&s.ctx, Level(level))[1..]).unwrap();
    assert!(matches!(s.eval.linear_transform(&ct, &encoded, &partial), Err(Error::MissingGaloisKey { .. })));
}

#[test]
fn chebyshev_evaluation_matches_the_polynomial_at_its_depth() {
    let params = Parameters::new_insecure(ParametersLiteral {
        log_n: 10,
        log_q: vec![60, 50, 50, 50, 50, 50, 50, 50, 50],
        log_p: vec![60, 60],
        log_default_scale: 50,
        dnum: None,
    })
    .unwrap();
    let mut s = setup(params, 5);
    let n = s.encoder.slots();
    let f = |x: f64| (3.0 * x).sin() + 0.5 * x;
    for (degree, baby) in [(7, 2), (15, 4), (30, 8), (31, 2), (63, 8), (5, 8)] {
        let p = ChebyshevPolynomial::interpolate(f, degree);
        let xs: Vec<f64> = (0..n).map(|j| -1.0 + 2.0 * j as f64 / (n - 1) as f64).collect();
        let ct = s.encryptor.encrypt(&s.encoder.encode_real(&xs, s.ctx.max_level(), 2f64.powi(50)).unwrap()).unwrap();
        let depth = p.depth();
        let out = s.eval.evaluate_chebyshev(&ct, &p, 2f64.powi(50), baby, &s.rlk).unwrap();
        assert_eq!(out.level(), s.ctx.max_level() - depth, "degree {degree} baby {baby}");
        assert_eq!(out.scale(), 2f64.powi(50));
        let got = s.decrypt(&out);
        let want: Vec<Complex64> = xs.iter().map(|&x| Complex64::new(p.evaluate(x), 0.0)).collect();
        let (mean, min) = precision(&got, &want);
        assert!(min > 25.0, "degree {degree} baby {baby}: {mean:.1} mean, {min:.1} worst bits");
        // The interpolant itself is close to f for the higher degrees.
        if degree >= 15 {
            assert!(xs.iter().all(|&x| (p.evaluate(x) - f(x)).abs() < 1e-9));
        }
    }
    // Depths: ceil(log2(d + 1)) with baby steps of 2.
    assert_eq!(ChebyshevPolynomial::interpolate(f, 63).depth(), 6);
    assert_eq!(ChebyshevPolynomial::interpolate(f, 31).depth(), 5);
    let p = ChebyshevPolynomial::interpolate(f, 63);
    let ct = s.encrypt(&values(4, 1));
    let low = s.eval.drop_to_level(&ct, 2).unwrap();
    assert!(matches!(s.eval.evaluate_chebyshev(&low, &p, 2f64.powi(50), 8, &s.rlk), Err(Error::LevelTooLow { .. })));
}

#[test]
fn insecure_bootstrap_restores_the_slots_at_a_higher_level() {
    for config in [small_config(), sparse_config()] {
        let left = 2;
        let params = boot_params(10, left, &config);
        let mut s = setup(params, 11);
        let plan = Bootstrapper::new(&s.ctx, config.clone()).unwrap();
        assert_eq!(plan.output_level(), left);
        let gk = s.keygen.galois_keys(&plan.key_requests()).unwrap();
        let enc = config.sparse_secret.map(|h| s.keygen.encapsulation_keys(h).unwrap());
        let n = s.encoder.slots();
        // Real slots uniform in [-1, 1]; and all 0.9 (one large coefficient, where the sine's
        // cubic error shows unless the arcsine corrects it).
        let uniform: Vec<Complex64> = values(n, 21).iter().map(|c| Complex64::new(c.re / 0.7, 0.0)).collect();
        let constant = vec![Complex64::new(0.9, 0.0); n];
        for (name, x) in [("uniform", uniform), ("constant", constant)] {
            let ct = s.encrypt(&x);
            let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: enc.as_ref() };
            let low = s.eval.drop_to_level(&ct, 0).unwrap();
            let t = std::time::Instant::now();
            let out = s.eval.bootstrap(&low, &plan, &keys).unwrap();
            println!("bootstrap at N = 2^10, K = {}: {:?}", config.k, t.elapsed());
            assert_eq!(out.level(), left);
            assert_eq!(out.scale(), low.scale());
            let (mean, min) = precision(&s.decrypt(&out), &x);
            println!("{name} slots: precision {mean:.1} bits mean, {min:.1} worst");
            if name == "uniform" || config.arcsine {
                assert!(min > 20.0 && mean > 22.0, "K = {}, {name}: {mean:.1} mean, {min:.1} worst bits", config.k);
            } else {
                // Without the arcsine: relative error (2π·0.9/2^8)²/6, about 13 bits.
                assert!((11.0..16.0).contains(&min), "K = {}, {name}: {min:.1} worst bits", config.k);
            }
        }
    }
}

/// Sparse slots: `n` values repeated over the N/2 slots come back repeated, at full precision,
/// for periods from 4 to N/4; other periods are refused.
#[test]
fn insecure_sparse_slot_bootstrap_restores_periodic_slots() {
    for n in [4usize, 64, 256] {
        let config = BootstrapConfig { slots: Some(n), ..sparse_config() };
        let left = 2;
        let mut s = setup(boot_params(10, left, &config), 31);
        let plan = Bootstrapper::new(&s.ctx, config.clone()).unwrap();
        let gk = s.keygen.galois_keys(&plan.key_requests()).unwrap();
        let enc = s.keygen.encapsulation_keys(32).unwrap();
        let period: Vec<Complex64> = values(n, 41).iter().map(|c| Complex64::new(c.re / 0.7, 0.0)).collect();
        let x: Vec<Complex64> = period.iter().copied().cycle().take(s.encoder.slots()).collect();
        let ct = s.encrypt(&x);
        let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: Some(&enc) };
        let t = std::time::Instant::now();
        let out = s.eval.bootstrap(&ct, &plan, &keys).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(out.level(), left);
        let (mean, min) = precision(&s.decrypt(&out), &x);
        println!("{n} sparse slots at N = 2^10: {elapsed:?}, precision {mean:.1} bits mean, {min:.1} worst");
        assert!(min > 20.0 && mean > 22.0, "{n} slots: {mean:.1} mean, {min:.1} worst bits");
    }
    let ctx = Context::new(&boot_params(10, 2, &sparse_config())).unwrap();
    for n in [3, 1, 1024] {
        let config = BootstrapConfig { slots: Some(n), ..sparse_config() };
        assert!(matches!(config.key_requests(&ctx), Err(Error::InvalidParameters(_))), "{n} slots");
    }
}

#[test]
fn the_sparse_secret_plan_refuses_missing_or_other_encapsulation_keys() {
    let config = sparse_config();
    let mut s = setup(boot_params(10, 1, &config), 23);
    let plan = Bootstrapper::new(&s.ctx, config).unwrap();
    let gk = s.keygen.galois_keys(&plan.key_requests()).unwrap();
    let ct = s.encrypt(&values(8, 3));
    let low = s.eval.drop_to_level(&ct, 0).unwrap();
    let (denser, sparser) = (s.keygen.encapsulation_keys(64).unwrap(), s.keygen.encapsulation_keys(16).unwrap());
    for enc in [None, Some(&denser), Some(&sparser)] {
        let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: enc };
        let err = s.eval.bootstrap(&low, &plan, &keys).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("sparse secret of 32")), "{err}");
    }
    assert!(s.keygen.encapsulation_keys(0).is_err());
    assert!(s.keygen.encapsulation_keys((1 << 10) + 1).is_err());
    // Under checked parameters a weight that fails the drop-and-solve check is refused before
    // any key exists (the key to it would expose the secret key).
    let secure = Context::new(&presets::N8192_DEPTH3_128BIT.parameters().unwrap()).unwrap();
    let mut kg = KeyGenerator::from_seed(&secure, [2; 32]);
    assert!(matches!(kg.encapsulation_keys(8), Err(Error::InvalidParameters(m)) if m.contains("drop-and-solve")));
    assert!(kg.encapsulation_keys(128).is_ok());
    // A K too small for the secret is refused.
    let config = BootstrapConfig { sparse_secret: None, ..sparse_config() };
    assert!(matches!(Bootstrapper::new(&s.ctx, config), Err(Error::InvalidParameters(m)) if m.contains("K =")));
}

/// The drop-and-solve check of sparse secrets: at N = 2^16 and a 300-bit modulus (`q_0·P` of
/// the 2^16 preset), 64 nonzero coefficients pass and 32 do not (keeping N/8 coordinates costs
/// only 2^96 guesses and leaves a dimension-8192 instance above its 218-bit bound; 32 pass only
/// up to the 109 bits of dimension 4096, where N/16 coordinates cost 2^128 guesses); the check is
/// monotone in the weight and the modulus.
#[test]
fn sparse_secret_security_check() {
    let n = 1 << 16;
    assert!(sparse_secret_passes_drop_and_solve(n, 300.0, 64));
    assert!(!sparse_secret_passes_drop_and_solve(n, 300.0, 32));
    assert!(sparse_secret_passes_drop_and_solve(n, 109.0, 32));
    assert!(!sparse_secret_passes_drop_and_solve(n, 110.0, 32));
    assert!(!sparse_secret_passes_drop_and_solve(n, 440.0, 64));
    assert!(!sparse_secret_passes_drop_and_solve(n, 1748.0, n));
    assert!(!sparse_secret_passes_drop_and_solve(n, 100.0, 0));
    let mut previous = 0;
    for log_q in [120.0, 218.0, 300.0, 438.0, 881.0] {
        let min_h = (1..=512).find(|&h| sparse_secret_passes_drop_and_solve(n, log_q, h)).unwrap_or(usize::MAX);
        assert!(min_h >= previous, "{log_q}: {min_h} < {previous}");
        previous = min_h;
    }
}

#[test]
fn bootstrap_presets_are_secure_and_leave_the_levels_they_name() {
    for p in BOOTSTRAP_PRESETS {
        let params = p.parameters().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let left = p.levels_left();
        assert!(
            p.name.contains(&format!("N{}_", params.n())) && p.name.contains(&format!("LEFT{left}_")),
            "{}",
            p.name
        );
        assert_eq!(p.name.ends_with("_128BIT"), p.secure);
        if p.secure {
            assert_eq!(params.security(), SecurityLevel::Bits128);
            assert!(params.log_qp() <= max_log_qp_128bit(params.n()).unwrap() as f64);
            // The key to the sparse secret lives modulo q_0·P.
            if let Some(h) = p.sparse_secret {
                let log_q0p: u32 = p.log_q[0] + p.log_p.iter().sum::<u32>();
                assert!(sparse_secret_passes_drop_and_solve(params.n(), f64::from(log_q0p), h), "{}", p.name);
            }
        } else {
            // The small presets deliver the precision they state (the 2^16 ones: BENCHMARKS.md).
            let mut s = setup(params.clone(), 29);
            let plan = Bootstrapper::new(&s.ctx, p.config()).unwrap();
            let gk = s.keygen.galois_keys(&plan.key_requests()).unwrap();
            let enc = p.sparse_secret.map(|h| s.keygen.encapsulation_keys(h).unwrap());
            let x: Vec<Complex64> =
                values(s.encoder.slots(), 5).iter().map(|c| Complex64::new(c.re / 0.7, 0.0)).collect();
            let ct = s.encrypt(&x);
            let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: enc.as_ref() };
            let (_, worst) = precision(&s.decrypt(&s.eval.bootstrap(&ct, &plan, &keys).unwrap()), &x);
            assert!(worst >= f64::from(p.precision_bits), "{}: {worst:.1} bits", p.name);
        }
        // The chain's layout matches the configuration: the EvalMod levels are the large primes,
        // the levels below them (but q_0) smaller.
        let c = p.config();
        let top = p.log_q.len() - c.cts_levels;
        let evalmod = &p.log_q[top - c.evalmod_depth()..top];
        assert!(evalmod.iter().all(|&b| b >= 59), "{}: EvalMod primes {evalmod:?}", p.name);
        assert!(p.log_q[1..top - c.evalmod_depth()].iter().all(|&b| b < 59), "{}", p.name);
        println!(
            "{}: log2 QP = {:.1}, {left} levels left, K = {}, EvalMod depth {}",
            p.name,
            params.log_qp(),
            c.k,
            c.evalmod_depth()
        );
    }
}

#[test]
fn the_declared_keys_are_exactly_the_keys_used() {
    for config in [small_config(), BootstrapConfig { slots: Some(64), ..small_config() }] {
        declared_keys_are_used(config);
    }
}

fn declared_keys_are_used(config: BootstrapConfig) {
    let mut s = setup(boot_params(10, 1, &config), 13);
    let plan = Bootstrapper::new(&s.ctx, config).unwrap();
    let requests = plan.key_requests();
    let ct = s.encrypt(&values(8, 3));
    let low = s.eval.drop_to_level(&ct, 0).unwrap();
    let mut elements: Vec<GaloisElement> = requests.iter().map(|r| r.element).collect();
    elements.sort();
    elements.dedup();
    for g in elements {
        // Without the element: refused, naming it.
        let without: Vec<GaloisKeyRequest> = requests.iter().filter(|r| r.element != g).copied().collect();
        let gk = s.keygen.galois_keys(&without).unwrap();
        let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: None };
        let err = s.eval.bootstrap(&low, &plan, &keys).unwrap_err();
        assert!(matches!(err, Error::MissingGaloisKey { element } if element == g.value()), "{g}: {err}");
        // One level short of its highest use: refused as a key-level error.
        let top = requests.iter().filter(|r| r.element == g).map(|r| r.level.0).max().unwrap();
        let short: Vec<GaloisKeyRequest> = requests
            .iter()
            .map(|r| if r.element == g { GaloisKeyRequest { element: g, level: Level(top - 1) } } else { *r })
            .collect();
        let gk = s.keygen.galois_keys(&short).unwrap();
        let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: None };
        assert!(matches!(s.eval.bootstrap(&low, &plan, &keys), Err(Error::KeyLevel { .. })), "{g} at level {top}");
    }
}

/// A deep circuit beyond any chain: `u ← 1.8·u·(1 − u²)` (two levels a step; every slot is
/// drawn to ±2/3, where the map contracts, and the slots' mean stays near zero), iterated until
/// 100 levels have been consumed, with a bootstrap whenever fewer than two levels are left; the
/// decryption matches the plaintext twin at every step.
#[test]
fn insecure_deep_circuit_with_bootstraps_matches_its_twin_at_every_step() {
    let config = small_config();
    let left = 4;
    let mut s = setup(boot_params(10, left, &config), 17);
    let plan = Bootstrapper::new(&s.ctx, config).unwrap();
    let gk = s.keygen.galois_keys(&plan.key_requests()).unwrap();
    let n = s.encoder.slots();
    let delta = s.params.default_scale();
    let mut twin: Vec<f64> =
        (0..n).map(|j| if j % 2 == 0 { 1.0 } else { -1.0 } * (0.3 + 0.6 * j as f64 / n as f64)).collect();
    let mut u = s.encryptor.encrypt(&s.encoder.encode_real(&twin, left, delta).unwrap()).unwrap();
    let keys = BootstrapKeys { relinearization: &s.rlk, galois: &gk, encapsulation: None };
    let (mut consumed, mut bootstraps, mut worst) = (0, 0, f64::INFINITY);
    while consumed < 100 {
        if u.level() < 2 {
            u = s.eval.bootstrap(&u, &plan, &keys).unwrap();
            bootstraps += 1;
        }
        let (q, q_next) = (s.params.q()[u.level()] as f64, s.params.q()[u.level() - 1] as f64);
        // v = 1 - u²; z = 1.8·u at the scale that puts z·v at Δ after its rescale; u ← z·v.
        let mut v = s.eval.negate(&s.eval.rescale(&s.eval.multiply_relin(&u, &u, &s.rlk).unwrap()).unwrap()).unwrap();
        s.eval.add_const_assign(&mut v, 1.0).unwrap();
        let z_scale = delta * q_next / v.scale();
        let mut z = s.eval.multiply_const(&u, 1.8, q * z_scale / u.scale()).unwrap();
        s.eval.rescale_assign(&mut z).unwrap();
        u = s.eval.rescale(&s.eval.multiply_relin(&z, &v, &s.rlk).unwrap()).unwrap();
        consumed += 2;
        twin.iter_mut().for_each(|x| *x = 1.8 * *x * (1.0 - *x * *x));
        let want: Vec<Complex64> = twin.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        let (_, min) = precision(&s.decrypt(&u), &want);
        worst = worst.min(min);
        assert!(min > 17.0, "after {consumed} levels ({bootstraps} bootstraps): {min:.1} bits");
    }
    println!("100 levels, {bootstraps} bootstraps, worst step {worst:.1} bits");
    assert!(bootstraps >= 100 / left - 1);
}
