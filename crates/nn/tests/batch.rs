//! Batch packing: the batch circuit's twin against the model's forward pass for every
//! built-in architecture, and the encrypted batch against its twin at 128-bit parameters.

use blindfold_ckks::{Decryptor, Encoder, KeyGenerator, SymmetricEncryptor};
use blindfold_nn::compile::{batch_circuit, batch_parameters, input_scale, ChainOptions, CompiledBatch};
use blindfold_nn::{ArchSpec, LayerSpec, Model};
use ndarray::Array2;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// `images` random inputs in [-1, 1]: `(per image, per feature)`.
fn random_images(rng: &mut ChaCha20Rng, images: usize, features: usize) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let per_image: Vec<Vec<f64>> =
        (0..images).map(|_| (0..features).map(|_| (rng.next_u32() % 1000) as f64 / 500.0 - 1.0).collect()).collect();
    let per_feature = (0..features).map(|f| per_image.iter().map(|x| x[f]).collect()).collect();
    (per_image, per_feature)
}

fn twin_matches_model(arch: ArchSpec) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut model = Model::init(arch.clone(), &mut rng).unwrap();
    let c = batch_circuit(&arch, Some(&model), 20).unwrap();
    println!("{}: batch depth {} (single-image {})", arch.name, c.depth(), arch.depth());
    let (per_image, per_feature) = random_images(&mut rng, 7, arch.input.len());
    let twin = c.evaluate_plain(&per_feature).unwrap();
    let flat: Vec<f32> = per_image.iter().flatten().map(|&v| v as f32).collect();
    let logits = model.forward(&Array2::from_shape_vec((7, arch.input.len()), flat).unwrap()).unwrap();
    assert_eq!(twin.len(), logits.ncols());
    for img in 0..7 {
        let max = logits.row(img).iter().fold(1f32, |m, v| m.max(v.abs())) as f64;
        for (o, t) in twin.iter().enumerate() {
            let l = logits[[img, o]] as f64;
            assert!(
                (t[img] - l).abs() <= 1e-4 * max,
                "{}: image {img} output {o}: twin {} vs model {l}",
                arch.name,
                t[img]
            );
        }
    }
}

#[test]
fn batch_twin_matches_every_builtin_model() {
    for name in ["cryptonets", "tenseal-cnn1", "cnn2"] {
        twin_matches_model(ArchSpec::builtin(name).unwrap());
    }
    twin_matches_model(ArchSpec::builtin("lenet5").unwrap().with_activation(LayerSpec::Square));
    twin_matches_model(ArchSpec::builtin("cnn2").unwrap().with_activation(LayerSpec::ReluPoly {
        degree: 2,
        lo: -3.0,
        hi: 3.0,
    }));
    let poly = LayerSpec::Poly { coeffs: vec![0.1, 0.5, 0.2, -0.01, 0.003] };
    twin_matches_model(ArchSpec::builtin("cnn2").unwrap().with_activation(poly));
}

#[test]
fn pooling_composes_into_the_linear_layers_around_it() {
    // lenet5: conv → act → pool → conv → act → pool → dense …: each pooling joins the
    // convolution or dense layer after it, so the batch circuit is as deep as the single one.
    let arch = ArchSpec::builtin("lenet5").unwrap().with_activation(LayerSpec::Square);
    let c = batch_circuit(&arch, None, 20).unwrap();
    let linear = c.stages().iter().filter(|s| matches!(s, blindfold_tensor::BatchStage::Linear { .. })).count();
    let layers = arch.layers.iter().filter(|l| matches!(l, LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. })).count();
    assert_eq!(linear, layers);
}

/// Encrypts every feature of a full batch, evaluates, decrypts, and compares with the twin.
fn encrypted_matches_twin(arch: ArchSpec, budget: f64) {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let model = Model::init(arch.clone(), &mut rng).unwrap();
    let params = batch_parameters(&arch, &ChainOptions::default()).unwrap();
    let compiled = CompiledBatch::with_parameters(&model, &params).unwrap();
    let ctx = &compiled.ctx;
    let slots = params.slots();
    let (_, per_feature) = random_images(&mut rng, slots, arch.input.len());
    let twin = compiled.circuit.evaluate_plain(&per_feature).unwrap();

    let mut keygen = KeyGenerator::from_seed(ctx, [4; 32]);
    let rlk = keygen.relinearization_key();
    let encoder = Encoder::new(ctx);
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let scale = input_scale(ctx);
    let pts: Vec<_> = per_feature.iter().map(|f| encoder.encode_real(f, ctx.max_level(), scale).unwrap()).collect();
    let cts: Vec<_> = enc.encrypt_batch(&pts).unwrap().iter().map(|c| c.expand(ctx)).collect();
    let eval = blindfold_ckks::Evaluator::new(ctx);
    let out = compiled.circuit.evaluate(&eval, &cts, &rlk).unwrap();
    let dec = Decryptor::new(keygen.secret_key());
    let mut worst: f64 = 0.0;
    for (ct, t) in out.iter().zip(&twin) {
        let got = encoder.decode_real(&dec.decrypt(ct).unwrap()).unwrap();
        let max = t.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(t) {
            worst = worst.max((g - w).abs() / max);
        }
    }
    println!("{}: N = {}, {} images, worst error {worst:.2e} of the largest output", arch.name, params.n(), slots);
    assert!(worst <= budget, "{}: worst error {worst:e} above {budget:e}", arch.name);
}

#[test]
fn encrypted_batch_matches_twin_cryptonets() {
    encrypted_matches_twin(ArchSpec::builtin("cryptonets").unwrap(), 1e-3);
}

#[test]
fn encrypted_batch_matches_twin_with_a_polynomial_activation() {
    let fit = LayerSpec::ReluPoly { degree: 2, lo: -3.0, hi: 3.0 };
    encrypted_matches_twin(ArchSpec::builtin("cryptonets").unwrap().with_activation(fit), 1e-3);
}

/// CryptoNets' shape, smaller: 12×12 input, 3 channels, 16 hidden units.
fn small_cryptonets() -> ArchSpec {
    let mut arch = ArchSpec::builtin("cryptonets").unwrap();
    arch.name = "small-cryptonets".into();
    arch.input = blindfold_tensor::Shape { c: 1, h: 12, w: 12 };
    arch.layers = vec![
        LayerSpec::Conv2d { out_channels: 3, kernel: 5, stride: 2, padding: 1 },
        LayerSpec::Square,
        LayerSpec::Flatten,
        LayerSpec::Dense { outputs: 16 },
        LayerSpec::Square,
        LayerSpec::Dense { outputs: 10 },
    ];
    arch
}

#[test]
fn bfv_batch_equals_the_integer_twin_exactly() {
    use blindfold_ckks::bfv::BfvDecryptor;
    use blindfold_nn::compile::{BfvOptions, CompiledBfv};
    let arch = small_cryptonets();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let model = Model::init(arch.clone(), &mut rng).unwrap();
    let compiled = CompiledBfv::new(&model, &BfvOptions::default()).unwrap();
    let ctx = &compiled.ctx;
    let n = ctx.n();
    println!(
        "{} on BFV: N = {n}, chain {:?} bits, plaintext primes {:?}, output bound 2^{:.1}",
        arch.name,
        ctx.params().literal().log_q,
        compiled.plaintext_moduli(),
        compiled.circuit.output_bound().log2()
    );
    let pixels: Vec<Vec<i64>> =
        (0..arch.input.len()).map(|_| (0..n).map(|_| (rng.next_u32() % 256) as i64).collect()).collect();
    let twin = compiled.circuit.evaluate_integer(&pixels).unwrap();
    let mut keygen = KeyGenerator::from_seed(ctx, [5; 32]);
    let rlk = keygen.relinearization_key();
    let eval = blindfold_ckks::Evaluator::new(ctx);
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let mut residues: Vec<Vec<Vec<u64>>> = Vec::new(); // [component][output][slot]
    for bfv in &compiled.moduli {
        let pts: Vec<_> =
            pixels.iter().map(|f| bfv.encode(&f.iter().map(|&v| v as u64).collect::<Vec<_>>()).unwrap()).collect();
        let cts: Vec<_> = enc.encrypt_batch(&pts).unwrap().iter().map(|c| c.expand(ctx)).collect();
        let out = compiled.circuit.evaluate_bfv(bfv, &eval, &cts, &rlk, |_, _| {}).unwrap();
        let dec = BfvDecryptor::new(bfv, keygen.secret_key());
        let budget = out.iter().map(|c| dec.noise_budget_bits(c).unwrap()).fold(f64::INFINITY, f64::min);
        println!("  t = {}: noise budget left {budget:.1} bits", bfv.plaintext_modulus());
        assert!(budget > 0.0);
        residues.push(out.iter().map(|c| dec.decrypt(c).unwrap()).collect());
    }
    let moduli = compiled.plaintext_moduli();
    for (o, t) in twin.iter().enumerate() {
        for s in 0..n {
            let r: Vec<u64> = residues.iter().map(|c| c[o][s]).collect();
            assert_eq!(blindfold_tensor::crt_signed(&r, &moduli), Some(t[s]), "output {o} image {s}");
        }
    }
}

/// Circuit privacy: the model holder's response, re-randomized with the client's public key
/// and flooded as the plan says, decrypts to exactly the integer scores (every slot an image's
/// score: no replicas, no partial sums), carries noise of the flooded width rather than the
/// circuit's, and two responses to one request differ.
#[test]
fn bfv_responses_are_rerandomized_and_flooded() {
    use blindfold_ckks::bfv::BfvDecryptor;
    use blindfold_ckks::Encryptor;
    use blindfold_nn::compile::{BfvOptions, CompiledBfv, DEFAULT_CIRCUIT_PRIVACY_BITS};
    let arch = small_cryptonets();
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let model = Model::init(arch.clone(), &mut rng).unwrap();
    let compiled = CompiledBfv::new(&model, &BfvOptions::default()).unwrap();
    let bare = CompiledBfv::new(&model, &BfvOptions { circuit_privacy: None, ..BfvOptions::default() }).unwrap();
    assert_eq!(bare.flooding_log_bound, None);
    let bound = compiled.flooding_log_bound.expect("circuit privacy is on by default");
    let ctx = &compiled.ctx;
    let n = ctx.n();
    let log_q = |c: &CompiledBfv| c.ctx.params().literal().log_q.iter().sum::<u32>();
    let outputs = compiled.circuit.outputs() * compiled.moduli.len();
    println!(
        "flooding 2^{bound}; chain {} bits with circuit privacy, {} without ({outputs} output ciphertexts, N = {n})",
        log_q(&compiled),
        log_q(&bare)
    );
    assert_eq!(outputs, 10 * compiled.moduli.len());
    // λ − 1 + log2(N·k) bits above the circuit's noise estimate, which the chain holds.
    assert!(f64::from(bound) >= f64::from(DEFAULT_CIRCUIT_PRIVACY_BITS) - 1.0 + ((n * outputs) as f64).log2());
    let pixels: Vec<Vec<i64>> =
        (0..arch.input.len()).map(|_| (0..n).map(|_| (rng.next_u32() % 256) as i64).collect()).collect();
    let twin = compiled.circuit.evaluate_integer(&pixels).unwrap();
    let mut keygen = KeyGenerator::from_seed(ctx, [7; 32]);
    let rlk = keygen.relinearization_key();
    let pk = keygen.public_key();
    let eval = blindfold_ckks::Evaluator::new(ctx);
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let mut holder = Encryptor::with_public_key(ctx, &pk).unwrap();
    let mut residues: Vec<Vec<Vec<u64>>> = Vec::new(); // [component][output][slot]
    for bfv in &compiled.moduli {
        let pts: Vec<_> =
            pixels.iter().map(|f| bfv.encode(&f.iter().map(|&v| v as u64).collect::<Vec<_>>()).unwrap()).collect();
        let cts: Vec<_> = enc.encrypt_batch(&pts).unwrap().iter().map(|c| c.expand(ctx)).collect();
        let out = compiled.circuit.evaluate_bfv(bfv, &eval, &cts, &rlk, |_, _| {}).unwrap();
        let dec = BfvDecryptor::new(bfv, keygen.secret_key());
        let (mut first, mut second) = (out.clone(), out.clone());
        for (a, b) in first.iter_mut().zip(&mut second) {
            holder.rerandomize_uniform(a, bound).unwrap();
            holder.rerandomize_uniform(b, bound).unwrap();
        }
        // The budget left is Q/(2t) over the flooding's largest coefficient (about 2^bound),
        // far below what the circuit's own noise left.
        let log_delta = f64::from(log_q(&compiled)) - (bfv.plaintext_modulus() as f64).log2() - 1.0;
        for ((o, a), b) in out.iter().zip(&first).zip(&second) {
            assert_ne!(a, b, "two responses to one request must be randomized differently");
            assert_ne!(a, o);
            let (before, after) = (dec.noise_budget_bits(o).unwrap(), dec.noise_budget_bits(a).unwrap());
            let expected = log_delta - f64::from(bound);
            assert!((after - expected).abs() < 1.0, "budget {after:.2} bits after flooding, expected {expected:.2}");
            assert!(before - after > f64::from(DEFAULT_CIRCUIT_PRIVACY_BITS), "budget {before:.1} → {after:.1}");
            assert_eq!(dec.decrypt(a).unwrap(), dec.decrypt(b).unwrap());
        }
        residues.push(first.iter().map(|c| dec.decrypt(c).unwrap()).collect());
    }
    let moduli = compiled.plaintext_moduli();
    for (o, t) in twin.iter().enumerate() {
        for s in 0..n {
            let r: Vec<u64> = residues.iter().map(|c| c[o][s]).collect();
            assert_eq!(blindfold_tensor::crt_signed(&r, &moduli), Some(t[s]), "output {o} image {s}");
        }
    }
}

#[test]
fn bfv_ensemble_sums_holders_of_different_scales_exactly() {
    use blindfold_ckks::bfv::BfvDecryptor;
    use blindfold_nn::compile::{BfvOptions, CompiledBfv};
    let arch = small_cryptonets();
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let a = Model::init(arch.clone(), &mut rng).unwrap();
    // A second holder whose first layer is 0.3× another model's: its integer network comes out
    // at another output scale, which the ensemble's plan must bring to the first's.
    let other = Model::init(arch.clone(), &mut rng).unwrap();
    let first = (0..arch.layers.len()).find(|&i| other.params(i).is_some()).unwrap();
    let params = (0..arch.layers.len())
        .map(|i| {
            other.params(i).cloned().map(|mut p| {
                if i == first {
                    p.weight *= 0.3;
                }
                p
            })
        })
        .collect();
    let b = Model::from_parameters(arch.clone(), params).unwrap();
    let weights = [1u64, 3];
    let compiled = CompiledBfv::ensemble(&[&a, &b], &BfvOptions::default(), &weights).unwrap();
    let factors: Vec<i64> = compiled.iter().map(|c| c.output_factor).collect();
    assert!(factors.iter().any(|&f| f > 1), "the holders' scales should differ: factors {factors:?}");
    assert_eq!(compiled[0].circuit.output_scale(), compiled[1].circuit.output_scale());
    let ctx = &compiled[0].ctx;
    assert!(std::sync::Arc::ptr_eq(ctx, &compiled[1].ctx), "one shared plan");
    let n = ctx.n();
    let pixels: Vec<Vec<i64>> =
        (0..arch.input.len()).map(|_| (0..n).map(|_| (rng.next_u32() % 256) as i64).collect()).collect();
    let twins: Vec<_> = compiled.iter().map(|c| c.circuit.evaluate_integer(&pixels).unwrap()).collect();
    let mut keygen = KeyGenerator::from_seed(ctx, [6; 32]);
    let rlk = keygen.relinearization_key();
    let eval = blindfold_ckks::Evaluator::new(ctx);
    let mut enc = SymmetricEncryptor::new(keygen.secret_key()).unwrap();
    let mut residues: Vec<Vec<Vec<u64>>> = Vec::new(); // [component][output][slot]
    for (p, bfv) in compiled[0].moduli.iter().enumerate() {
        let pts: Vec<_> =
            pixels.iter().map(|f| bfv.encode(&f.iter().map(|&v| v as u64).collect::<Vec<_>>()).unwrap()).collect();
        let cts: Vec<_> = enc.encrypt_batch(&pts).unwrap().iter().map(|c| c.expand(ctx)).collect();
        let replies: Vec<_> = compiled
            .iter()
            .map(|c| c.circuit.evaluate_bfv(&c.moduli[p], &eval, &cts, &rlk, |_, _| {}).unwrap())
            .collect();
        let sum = blindfold_tensor::weighted_sum(&eval, &replies, &weights).unwrap();
        let dec = BfvDecryptor::new(bfv, keygen.secret_key());
        residues.push(sum.iter().map(|c| dec.decrypt(c).unwrap()).collect());
    }
    let moduli = compiled[0].plaintext_moduli();
    for o in 0..twins[0].len() {
        for s in 0..n {
            let want: i128 = twins.iter().zip(weights).map(|(t, w)| i128::from(w) * t[o][s]).sum();
            let r: Vec<u64> = residues.iter().map(|c| c[o][s]).collect();
            assert_eq!(blindfold_tensor::crt_signed(&r, &moduli), Some(want), "output {o} image {s}");
        }
    }
    // Beyond 2^62, or weights leaving i64, is refused.
    assert!(compiled[0].circuit.scaled_output(63).is_err());
    assert!(compiled[0].circuit.scaled_output(62).is_err());
}

#[test]
fn integer_circuits_refuse_bounds_they_cannot_hold() {
    use blindfold_nn::compile::{BfvOptions, CompiledBfv};
    let arch = ArchSpec::builtin("cryptonets").unwrap();
    let model = Model::init(arch, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    let err =
        CompiledBfv::new(&model, &BfvOptions { weight_bits: 24, ..BfvOptions::default() }).unwrap_err().to_string();
    assert!(err.contains("fewer weight bits"), "{err}");
}

#[test]
fn crt_recombines_signed_integers_and_refuses_products_beyond_i128() {
    use blindfold_tensor::crt_signed;
    let moduli = [1_099_510_054_913u64, 1_099_508_121_601, 1_099_507_695_617];
    for v in [0i128, 1, -1, 123_456_789_012_345_678_901_234, -987_654_321_098_765_432_109_876] {
        let r: Vec<u64> = moduli.iter().map(|&m| v.rem_euclid(i128::from(m)) as u64).collect();
        assert_eq!(crt_signed(&r, &moduli), Some(v));
    }
    assert_eq!(crt_signed(&[1, 2, 3, 4], &[u64::MAX - 58; 4]), None);
    assert_eq!(crt_signed(&[1], &[7, 11]), None);
}
