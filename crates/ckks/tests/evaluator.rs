//! Tier (b): every evaluator operation against the plaintext computation, within a stated
//! precision budget. Bits of precision are -log2 |decrypted - expected| per slot; each test
//! prints the mean and minimum over all slots and asserts the minimum.
//!
//! Budgets (scale 2^40; the N = 2^13 preset and an N = 2^11 insecure set with α = 2), as
//! minimum bits over all slots: fresh encryption ≥ 22, additions and integer multiples ≥ 20,
//! rotations ≥ 21, multiplications after rescaling ≥ 18. Public-key encryption noise is
//! about `σ·sqrt(N)·sqrt(2N/3)` ≈ 2^14 at N = 2^13, i.e. 2^-26 relative to the scale on
//! average and ~2^-23 in the worst of 4096 slots; measured values are printed.

mod common;
use blindfold_ckks::serialize;
use blindfold_ckks::*;
use common::*;

fn report(name: &str, got: &[Complex64], want: &[Complex64], budget: f64) {
    let (mean, min) = precision(got, want);
    println!("{name:<28} mean {mean:6.2} bits, min {min:6.2} bits (budget {budget})");
    assert!(min >= budget, "{name}: min precision {min:.2} bits below budget {budget}");
}

fn all_params() -> Vec<Parameters> {
    vec![small_params(), presets::N8192_DEPTH3_128BIT.parameters().unwrap()]
}

#[test]
fn encrypt_decrypt_roundtrip() {
    for params in all_params() {
        let mut s = setup(params, 1);
        let v = values(s.encoder.slots(), 1);
        let ct = s.encrypt(&v);
        report("encrypt/decrypt", &s.decrypt(&ct), &v, 22.0);
        // Secret-key (seeded) encryption.
        let pt = s.encoder.encode(&v, 2, s.params.default_scale()).unwrap();
        let mut sym = SymmetricEncryptor::new(s.keygen.secret_key()).unwrap();
        let seeded = sym.encrypt(&pt).unwrap();
        report("symmetric encrypt/decrypt", &s.decrypt(&seeded.expand(&s.ctx)), &v, 22.0);
        // A batch: every plaintext decrypts back, each with its own seed.
        let vs: Vec<Vec<Complex64>> = (0..3).map(|k| values(s.encoder.slots(), 10 + k)).collect();
        let pts: Vec<Plaintext> =
            vs.iter().map(|v| s.encoder.encode(v, 2, s.params.default_scale()).unwrap()).collect();
        let batch = sym.encrypt_batch(&pts).unwrap();
        assert_eq!(batch.len(), 3);
        assert!(batch[0] != batch[1] && batch[1] != batch[2]);
        for (ct, v) in batch.iter().zip(&vs) {
            report("batch symmetric encrypt/decrypt", &s.decrypt(&ct.expand(&s.ctx)), v, 22.0);
        }
    }
}

#[test]
fn add_sub_negate_plain() {
    for params in all_params() {
        let mut s = setup(params, 2);
        let (a, b) = (values(s.encoder.slots(), 2), values(s.encoder.slots(), 3));
        let (ca, cb) = (s.encrypt(&a), s.encrypt(&b));
        let sum: Vec<_> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let diff: Vec<_> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let neg: Vec<_> = a.iter().map(|x| -x).collect();
        report("add", &s.decrypt(&s.eval.add(&ca, &cb).unwrap()), &sum, 20.0);
        report("sub", &s.decrypt(&s.eval.sub(&ca, &cb).unwrap()), &diff, 20.0);
        report("negate", &s.decrypt(&s.eval.negate(&ca).unwrap()), &neg, 20.0);
        let pb = s.encoder.encode(&b, ca.level(), ca.scale()).unwrap();
        report("add_plain", &s.decrypt(&s.eval.add_plain(&ca, &pb).unwrap()), &sum, 20.0);
    }
}

#[test]
fn multiply_plain_and_constants() {
    for params in all_params() {
        let mut s = setup(params, 3);
        let (a, b) = (values(s.encoder.slots(), 4), values(s.encoder.slots(), 5));
        let ca = s.encrypt(&a);
        let l = ca.level();
        let ql = s.params.q()[l] as f64;
        // Plaintext at scale q_l: the rescale restores the scale exactly.
        let pb = s.encoder.encode(&b, l, ql).unwrap();
        let prod = s.eval.rescale(&s.eval.multiply_plain(&ca, &pb).unwrap()).unwrap();
        assert_eq!(prod.scale(), ca.scale());
        let want: Vec<_> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        report("multiply_plain + rescale", &s.decrypt(&prod), &want, 20.0);

        let c = -1.8125;
        let m = s.eval.rescale(&s.eval.multiply_const(&ca, c, ql).unwrap()).unwrap();
        let want: Vec<_> = a.iter().map(|x| x * c).collect();
        report("multiply_const + rescale", &s.decrypt(&m), &want, 20.0);

        let m = s.eval.multiply_integer(&ca, -3).unwrap();
        let want: Vec<_> = a.iter().map(|x| x * -3.0).collect();
        report("multiply_integer", &s.decrypt(&m), &want, 20.0);

        let mut in_place = ca.clone();
        s.eval.multiply_plain_assign(&mut in_place, &pb).unwrap();
        s.eval.rescale_assign(&mut in_place).unwrap();
        assert_eq!(in_place, prod, "in-place multiply_plain + rescale equal the allocating ones");

        let mut acc = s.eval.multiply_plain(&ca, &pb).unwrap();
        s.eval.multiply_plain_acc(&mut acc, &ca, &pb).unwrap();
        let acc = s.eval.rescale(&acc).unwrap();
        let want: Vec<_> = a.iter().zip(&b).map(|(x, y)| x * y * 2.0).collect();
        report("multiply_plain_acc", &s.decrypt(&acc), &want, 20.0);
        // Exact division through the scale: a sum of three becomes their mean.
        let mut sum = s.eval.add(&ca, &ca).unwrap();
        s.eval.add_assign(&mut sum, &ca).unwrap();
        s.eval.divide_exact(&mut sum, 3.0).unwrap();
        report("divide_exact (mean of three)", &s.decrypt(&sum), &a, 20.0);
        assert!(s.eval.divide_exact(&mut sum, 0.0).is_err());
        assert!(s.eval.divide_exact(&mut sum, f64::NAN).is_err());
    }
}

#[test]
fn multiply_relinearize_rescale_to_level_zero() {
    for params in all_params() {
        let mut s = setup(params, 4);
        let a = values(s.encoder.slots(), 6);
        let mut ct = s.encrypt(&a);
        let mut want = a.clone();
        // Square repeatedly down to level 0; the scale tracks the dropped primes exactly.
        while ct.level() > 0 {
            let sq3 = s.eval.multiply(&ct, &ct).unwrap();
            assert_eq!(sq3.size(), 3);
            // Deferred relinearization: decryption under (1, s, s^2) already works.
            let got3 = s.decrypt(&s.eval.rescale(&sq3).unwrap());
            want = want.iter().map(|x| x * x).collect();
            report("multiply (size 3)", &got3, &want, 18.0);
            let sq = s.eval.rescale(&s.eval.relinearize(&sq3, &s.rlk).unwrap()).unwrap();
            let mut sq_in_place = sq3.clone();
            s.eval.relinearize_assign(&mut sq_in_place, &s.rlk).unwrap();
            s.eval.rescale_assign(&mut sq_in_place).unwrap();
            assert_eq!(sq_in_place, sq, "in-place relinearize + rescale equal the allocating ones");
            report(&format!("mul+relin+rescale -> L{}", sq.level()), &s.decrypt(&sq), &want, 18.0);
            let sq_b = s.eval.rescale(&s.eval.relinearize(&s.eval.square(&ct).unwrap(), &s.rlk).unwrap()).unwrap();
            report("square", &s.decrypt(&sq_b), &want, 18.0);
            ct = sq;
        }
        assert!(matches!(s.eval.rescale(&ct), Err(Error::LevelTooLow { .. })));
    }
}

#[test]
fn rotations_conjugation_and_hoisting() {
    for params in all_params() {
        let mut s = setup(params, 5);
        let slots = s.encoder.slots();
        let a = values(slots, 7);
        let ct = s.encrypt(&a);
        let steps = [1i64, 2, 5, -1, -7, slots as i64 / 2];
        let gk = s.keygen.galois_keys(&s.keygen.top_level_requests(&steps, true)).unwrap();
        for &k in &steps {
            let want: Vec<_> = (0..slots).map(|j| a[(j as i64 + k).rem_euclid(slots as i64) as usize]).collect();
            report(&format!("rotate {k}"), &s.decrypt(&s.eval.rotate(&ct, k, &gk).unwrap()), &want, 21.0);
        }
        let hoisted = s.eval.rotate_hoisted(&ct, &steps, &gk).unwrap();
        for (&k, h) in steps.iter().zip(&hoisted) {
            let want: Vec<_> = (0..slots).map(|j| a[(j as i64 + k).rem_euclid(slots as i64) as usize]).collect();
            report(&format!("hoisted rotate {k}"), &s.decrypt(h), &want, 21.0);
        }
        let want: Vec<_> = a.iter().map(|x| x.conj()).collect();
        report("conjugate", &s.decrypt(&s.eval.conjugate(&ct, &gk).unwrap()), &want, 21.0);
        // Rotations at a lower level use the same keys.
        let low = s.eval.drop_to_level(&ct, 1).unwrap();
        let want: Vec<_> = (0..slots).map(|j| a[(j + 1) % slots]).collect();
        report("rotate 1 at level 1", &s.decrypt(&s.eval.rotate(&low, 1, &gk).unwrap()), &want, 21.0);
        assert!(matches!(s.eval.rotate(&ct, 3, &gk), Err(Error::MissingGaloisKey { .. })));
    }
}

#[test]
fn rotate_sum_and_dot_plain_match_their_definitions() {
    for params in all_params() {
        let mut s = setup(params, 12);
        let slots = s.encoder.slots();
        let (a, b) = (values(slots, 13), values(slots, 14));
        let (ca, cb) = (s.encrypt(&a), s.encrypt(&b));
        let gk = s.keygen.galois_keys(&s.keygen.top_level_requests(&[1, 3], false)).unwrap();
        // rot(a, 1) + b + rot(b, 3), one ModDown.
        let sum = s.eval.rotate_sum(&[&ca, &cb, &cb], &[1, 0, 3], &gk).unwrap();
        let want: Vec<_> = (0..slots).map(|j| a[(j + 1) % slots] + b[j] + b[(j + 3) % slots]).collect();
        report("rotate_sum (lazy ModDown)", &s.decrypt(&sum), &want, 20.0);
        // a ⊙ p + b ⊙ r in one pass, against multiply_plain + add.
        let l = ca.level();
        let q = s.params.q()[l] as f64;
        let (p, r) = (values(slots, 15), values(slots, 16));
        let (pp, pr) = (s.encoder.encode(&p, l, q).unwrap(), s.encoder.encode(&r, l, q).unwrap());
        let dot = s.eval.rescale(&s.eval.dot_plain(&[&ca, &cb], &[&pp, &pr]).unwrap()).unwrap();
        let want: Vec<_> = (0..slots).map(|j| a[j] * p[j] + b[j] * r[j]).collect();
        report("dot_plain", &s.decrypt(&dot), &want, 19.0);
        let mut reference = s.eval.multiply_plain(&ca, &pp).unwrap();
        s.eval.multiply_plain_acc(&mut reference, &cb, &pr).unwrap();
        assert_eq!(s.eval.rescale(&reference).unwrap(), dot, "fused and unfused products agree exactly");
    }
}

#[test]
fn mismatches_are_typed_errors() {
    let mut s = setup(small_params(), 6);
    let a = values(8, 8);
    let ct = s.encrypt(&a);
    let low = s.eval.drop_to_level(&ct, 1).unwrap();
    assert!(matches!(s.eval.add(&ct, &low), Err(Error::LevelMismatch { .. })));
    assert!(matches!(s.eval.multiply(&ct, &low), Err(Error::LevelMismatch { .. })));
    let other_scale = s.eval.multiply_integer(&ct, 1).unwrap();
    let mut other_scale = other_scale;
    other_scale.set_scale(ct.scale() * 2.0);
    assert!(matches!(s.eval.add(&ct, &other_scale), Err(Error::ScaleMismatch { .. })));
    let three = s.eval.multiply(&ct, &ct).unwrap();
    assert!(matches!(
        s.eval.rotate(&three, 1, &s.keygen.galois_keys(&s.keygen.top_level_requests(&[1], false)).unwrap()),
        Err(Error::CiphertextSize { .. })
    ));
    assert!(matches!(s.eval.relinearize(&ct, &s.rlk), Err(Error::CiphertextSize { .. })));
    assert!(matches!(s.eval.multiply_const(&ct, f64::NAN, 2.0), Err(Error::InvalidArgument(_))));
}

#[test]
fn level_limited_galois_keys_serve_lower_levels_only() {
    let mut s = setup(small_params(), 10);
    let slots = s.encoder.slots();
    let a = values(slots, 11);
    let ct = s.encrypt(&a);
    let gk = s
        .keygen
        .galois_keys(&[s.ctx.rotation_key_request(1, Level(1)), s.ctx.rotation_key_request(2, Level(3))])
        .unwrap();
    assert_eq!(gk.max_level(s.ctx.galois_element_for_rotation(1)), Some(1));
    let low = s.eval.drop_to_level(&ct, 1).unwrap();
    let want: Vec<_> = (0..slots).map(|j| a[(j + 1) % slots]).collect();
    report("rotate 1 with a level-1 key", &s.decrypt(&s.eval.rotate(&low, 1, &gk).unwrap()), &want, 21.0);
    let err = s.eval.rotate(&ct, 1, &gk).unwrap_err();
    assert!(matches!(err, Error::KeyLevel { max_level: 1, level: 3, .. }), "{err}");
    // The smaller key is smaller on the wire too.
    let full = s.keygen.galois_keys(&s.keygen.top_level_requests(&[1], false)).unwrap();
    let small = s.keygen.galois_keys(&[s.ctx.rotation_key_request(1, Level(1))]).unwrap();
    let (fb, sb) =
        (serialize::serialize(&full, &s.ctx).unwrap().len(), serialize::serialize(&small, &s.ctx).unwrap().len());
    assert!(sb * 2 < fb, "level-1 key {sb} bytes vs full {fb}");
}

#[test]
fn objects_of_other_parameters_are_refused() {
    let mut s = setup(small_params(), 8);
    let ct = s.encrypt(&values(4, 1));
    // Same ring degree, other primes: keys carry the parameter fingerprint.
    let other = other_small_context();
    let mut other_keys = KeyGenerator::from_seed(&other, [1; 32]);
    let sq3 = s.eval.multiply(&ct, &ct).unwrap();
    let err = s.eval.relinearize(&sq3, &other_keys.relinearization_key()).unwrap_err();
    assert!(matches!(err, Error::ForeignObject { .. }), "{err}");
    let err = s
        .eval
        .rotate(&ct, 1, &other_keys.galois_keys(&other_keys.top_level_requests(&[1], false)).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::ForeignObject { .. } | Error::MissingGaloisKey { .. }), "{err}");
    // Another ring degree: the shape check refuses it before any indexing.
    let mut big = setup(presets::N8192_DEPTH3_128BIT.parameters().unwrap(), 9);
    let big_ct = big.encrypt(&values(4, 2));
    for result in
        [s.eval.add(&ct, &big_ct), s.eval.negate(&big_ct), s.eval.rescale(&big_ct), s.eval.multiply(&big_ct, &ct)]
    {
        assert!(matches!(result, Err(Error::ForeignObject { .. })));
    }
}

#[test]
fn evaluator_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Context>();
    assert_send_sync::<Evaluator>();
    assert_send_sync::<GaloisKeys>();
    assert_send_sync::<RelinearizationKey>();
    let mut s = setup(small_params(), 7);
    let a = values(s.encoder.slots(), 9);
    let ct = s.encrypt(&a);
    let want: Vec<_> = a.iter().map(|x| x * x).collect();
    let results: Vec<Ciphertext> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.eval.rescale(&s.eval.multiply_relin(&ct, &ct, &s.rlk).unwrap()).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        report("threaded multiply", &s.decrypt(r), &want, 20.0);
    }
}

/// Regression: with two or more special primes, ModDown's basis conversion must be centered.
/// The uncentered fast conversion left an error of mean about -(α+1)/2 in every coefficient,
/// which the decoder concentrates into the slots near the root 1: at N = 2^14 and scale 2^29
/// rotations kept 9.2 bits in the worst slot (14.6 centered).
#[test]
fn key_switching_with_two_special_primes_keeps_its_precision() {
    let params = presets::N16384_DEPTH11_128BIT.parameters().unwrap();
    assert_eq!(params.alpha(), 2);
    let mut s = setup(params, 9);
    let slots = s.encoder.slots();
    let a = values(slots, 11);
    // Secret-key encryption: its noise is small enough for the conversion error to show.
    let pt = s.encoder.encode(&a, s.ctx.max_level(), s.params.default_scale()).unwrap();
    let ct = SymmetricEncryptor::new(s.keygen.secret_key()).unwrap().encrypt(&pt).unwrap().expand(&s.ctx);
    let gk = s.keygen.galois_keys(&s.keygen.top_level_requests(&[1], false)).unwrap();
    let want: Vec<_> = (0..slots).map(|j| a[(j + 1) % slots]).collect();
    report("rotate 1, N=2^14, α=2", &s.decrypt(&s.eval.rotate(&ct, 1, &gk).unwrap()), &want, 13.0);
}

/// Re-randomization with noise flooding: the same message, a different ciphertext each
/// time, and slot noise of the width the flooding predicts (`σ·√(N/2)/Δ` per real part).
#[test]
fn rerandomize_keeps_the_message_and_floods_the_noise() {
    let mut s = setup(small_params(), 17);
    let slots = s.encoder.slots();
    let a = values(slots, 17);
    let ct = s.encrypt(&a);
    let clean = s.decrypt(&ct);
    let (log_sigma, scale) = (30.0, ct.scale());
    let expected = 2f64.powf(log_sigma) * (s.ctx.n() as f64 / 2.0).sqrt() / scale;
    let mut first = ct.clone();
    s.encryptor.rerandomize(&mut first, log_sigma).unwrap();
    let mut second = ct.clone();
    s.encryptor.rerandomize(&mut second, log_sigma).unwrap();
    assert_ne!(first, ct);
    assert_ne!(first, second, "two re-randomizations of one ciphertext must differ");
    let slot_std = |r: &blindfold_ckks::Ciphertext, s: &Setup| {
        let diffs: Vec<f64> = s.decrypt(r).iter().zip(&clean).map(|(g, c)| (g - c).re).collect();
        (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt()
    };
    for r in [&first, &second] {
        let std = slot_std(r, &s);
        assert!(std > 0.5 * expected && std < 2.0 * expected, "flooded slot noise {std:e}, expected {expected:e}");
        report("rerandomized", &s.decrypt(r), &a, 2.0); // 4σ over 1,024 slots: about 2^-3
    }
    // Uniform flooding on [-2^30, 2^30): a standard deviation of 2^30/√3 per coefficient.
    let mut third = ct.clone();
    s.encryptor.rerandomize_uniform(&mut third, 30).unwrap();
    let std = slot_std(&third, &s);
    let expected = expected / 3f64.sqrt();
    assert!(
        std > 0.5 * expected && std < 2.0 * expected,
        "uniform flooding: slot noise {std:e}, expected {expected:e}"
    );
    // Refusals: an unrelinearized product, an absurd width.
    let mut big = s.eval.multiply(&ct, &ct).unwrap();
    assert!(s.encryptor.rerandomize(&mut big, 10.0).is_err());
    assert!(s.encryptor.rerandomize(&mut first, 70.0).is_err());
    assert!(s.encryptor.rerandomize_uniform(&mut big, 10).is_err());
    assert!(s.encryptor.rerandomize_uniform(&mut third, 10_000).is_err());
}
