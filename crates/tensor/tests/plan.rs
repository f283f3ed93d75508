//! The encrypted CNN plan against its plaintext twin and the model, on real Fashion-MNIST
//! images (Debian's `dataset-fashion-mnist`).
//!
//! Tolerances: the packed plaintext twin equals the model's forward pass up to f32 rounding
//! (relative 1e-4); the decrypted logits equal the twin's within 2^-8 relative to the largest
//! logit (CKKS noise at scale 2^29 through depth 5), and every argmax agrees.

use blindfold_ckks::{presets, Context, Decryptor, Encoder, Encryptor, Evaluator, KeyGenerator};
use blindfold_data::{load, Dataset, Split};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{argmax, ArchSpec, Model};
use blindfold_tensor::CnnPlan;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn trained(arch: &str) -> (Model, blindfold_data::LabeledImages) {
    let dir = Dataset::FashionMnist.default_dir();
    let train_set = load(Dataset::FashionMnist, &dir, Split::Train).expect("Fashion-MNIST installed").truncate(3000);
    let test_set = load(Dataset::FashionMnist, &dir, Split::Test).unwrap().truncate(200);
    let mut model = Model::init(ArchSpec::builtin(arch).unwrap(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    let cfg = TrainConfig { epochs: 1, ..TrainConfig::default() };
    train(&mut model, &train_set, None, &cfg, |_, _| {}, |_| {}).unwrap();
    (model, test_set)
}

fn check_arch(arch: &str, n_encrypted: usize) {
    let (mut model, test) = trained(arch);
    let params = presets::N8192_DEPTH5_128BIT.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let plan = CnnPlan::compile(&model, &ctx, params.default_scale()).unwrap();
    assert_eq!(plan.depth(), 5);
    let layout = plan.layout().clone();

    // Plaintext twin vs the model on 50 images.
    for i in 0..50 {
        let x: Vec<f64> = model.normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let twin = plan.evaluate_plain(&layout.pack(&x).unwrap()).unwrap();
        let logits = model.logits(&[test.images.image(i)]).unwrap();
        let max = logits.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (t, l) in twin.iter().zip(logits.iter()) {
            assert!((t - *l as f64).abs() <= 1e-4 * max.max(1.0), "{arch} image {i}: twin {t} vs model {l}");
        }
    }

    // Encrypted vs the twin.
    let mut keygen = KeyGenerator::new(&ctx).unwrap();
    let rlk = keygen.relinearization_key();
    let gk = keygen.galois_keys_at_levels(&plan.rotation_keys()).unwrap();
    let encoder = Encoder::new(&ctx);
    let mut encryptor = Encryptor::with_secret_key(keygen.secret_key()).unwrap();
    let decryptor = Decryptor::new(keygen.secret_key());
    let eval = Evaluator::new(&ctx);
    for i in 0..n_encrypted {
        let x: Vec<f64> = model.normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let packed = layout.pack(&x).unwrap();
        let cts: Vec<_> = packed
            .iter()
            .map(|v| {
                let pt = encoder.encode_real(v, ctx.max_level(), plan.input_scale()).unwrap();
                encryptor.encrypt_symmetric(&pt).unwrap().expand(&ctx)
            })
            .collect();
        let out = plan.evaluate(&eval, &cts, &rlk, &gk).unwrap();
        assert_eq!(out.level(), 0);
        let got = encoder.decode_real(&decryptor.decrypt(&out).unwrap());
        let twin = plan.evaluate_plain(&packed).unwrap();
        let max = twin.iter().fold(0f64, |m, v| m.max(v.abs())).max(1.0);
        let err = got[..plan.classes()].iter().zip(&twin).map(|(g, t)| (g - t).abs()).fold(0f64, f64::max);
        println!("{arch} image {i}: max |encrypted - twin| = {err:.2e} (max logit {max:.2})");
        assert!(err <= max / 256.0, "{arch} image {i}: error {err} vs max logit {max}");
        let g32: Vec<f32> = got[..plan.classes()].iter().map(|&v| v as f32).collect();
        let t32: Vec<f32> = twin.iter().map(|&v| v as f32).collect();
        assert_eq!(argmax(&g32), argmax(&t32), "{arch} image {i}: argmax differs");
    }
}

#[test]
fn tenseal_cnn1_encrypted_matches_plaintext() {
    check_arch("tenseal-cnn1", 6);
}

#[test]
fn cryptonets_encrypted_matches_plaintext() {
    check_arch("cryptonets", 3);
}

#[test]
fn wrong_inputs_are_refused() {
    let (model, _) = trained("tenseal-cnn1");
    let params = presets::N8192_DEPTH5_128BIT.parameters().unwrap();
    let ctx = Context::new(&params).unwrap();
    let plan = CnnPlan::compile(&model, &ctx, params.default_scale()).unwrap();
    assert!(plan.layout().pack(&[0.0; 10]).is_err());
    assert!(plan.evaluate_plain(&[]).is_err());
    // Too deep for a depth-3 preset.
    let small = Context::new(&presets::N8192_DEPTH3_128BIT.parameters().unwrap()).unwrap();
    assert!(CnnPlan::compile(&model, &small, 2f64.powi(30)).unwrap_err().to_string().contains("depth 5"));
    // An input scale that does not fit the primes (the network would decrypt to noise).
    let err = CnnPlan::compile(&model, &ctx, 2f64.powi(40)).unwrap_err().to_string();
    assert!(err.contains("encrypt at scale 2^29"), "{err}");
    // cnn2 is not of the single-convolution form.
    let cnn2 = Model::init(ArchSpec::builtin("cnn2").unwrap(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert!(CnnPlan::compile(&cnn2, &ctx, 2f64.powi(30)).is_err());
}
