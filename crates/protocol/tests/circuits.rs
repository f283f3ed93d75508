//! Every built-in architecture with an encrypted form, fully encrypted through the client and
//! model holder roles, against the circuit's plaintext twin and the model, on real
//! Fashion-MNIST images (Debian's `dataset-fashion-mnist`), models trained for one epoch on
//! 3,000 images.
//!
//! Tolerances: the twin equals the model's forward pass up to `f32` rounding (relative
//! 1e-4); the decrypted logits equal the twin's within 2^-8 of the largest logit, and every
//! argmax agrees.

use blindfold_data::{load, Dataset, Split};
use blindfold_nn::compile::ChainOptions;
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{argmax, ArchSpec, LayerSpec, Model, Normalization};
use blindfold_protocol::{Client, CompiledModel, ModelHolder};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn check(arch: ArchSpec, n_encrypted: usize) {
    check_trained(arch, n_encrypted, 1);
}

fn check_trained(arch: ArchSpec, n_encrypted: usize, epochs: usize) {
    let dir = Dataset::FashionMnist.default_dir();
    let train_set = load(Dataset::FashionMnist, &dir, Split::Train).expect("Fashion-MNIST installed").truncate(3000);
    let test = load(Dataset::FashionMnist, &dir, Split::Test).unwrap().truncate(50);
    let name = arch.name.clone();
    let mut model = Model::init(arch, &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    train(&mut model, &train_set, None, &TrainConfig { epochs, ..Default::default() }, |_, _| {}, |_| {}).unwrap();
    let compiled = CompiledModel::new(&model, &ChainOptions::default()).unwrap();
    let info = compiled.info().clone();
    let ranges: Vec<String> = model
        .spec()
        .layers
        .iter()
        .filter_map(|l| match l {
            LayerSpec::ReluPoly { lo, hi, .. } => Some(format!("[{lo:.1}, {hi:.1}]")),
            _ => None,
        })
        .collect();
    println!("{name}: fit ranges {}", ranges.join(" "));
    println!("{name}: depth {}, {} rotation keys, {}", info.depth, info.rotation_keys.len(), info.parameters_name());
    let circuit = compiled.circuit();

    // Plaintext twin against the model.
    for i in 0..test.len() {
        let x: Vec<f64> = model.normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let twin = circuit.evaluate_plain(&circuit.packing().pack(&x).unwrap()).unwrap();
        let logits = model.logits(&[test.images.image(i)]).unwrap();
        let max = logits.iter().fold(1f32, |m, v| m.max(v.abs())) as f64;
        for (t, l) in twin.iter().zip(logits.iter()) {
            assert!((t - *l as f64).abs() <= 1e-4 * max, "{name} image {i}: twin {t} vs model {l}");
        }
    }

    // Encrypted, through the roles, against the twin.
    let mut holder = ModelHolder::new(compiled.clone());
    let (mut client, keys) = Client::new(&info).unwrap();
    holder.handle(&keys).unwrap();
    for i in 0..n_encrypted {
        let reply = holder.handle(&client.encrypt_pixels(test.images.image(i)).unwrap()).unwrap().unwrap();
        let got = client.decrypt_scores(&reply).unwrap();
        let x: Vec<f64> = model.normalize(test.images.image(i)).into_iter().map(f64::from).collect();
        let twin = circuit.evaluate_plain(&circuit.packing().pack(&x).unwrap()).unwrap();
        let max = twin.iter().fold(1f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&twin).map(|(g, t)| (g - t).abs()).fold(0f64, f64::max);
        println!("{name} image {i}: max |encrypted − twin| = {err:.2e} (largest logit {max:.2})");
        assert!(err <= max / 256.0, "{name} image {i}: error {err} vs largest logit {max}");
        let (g32, t32): (Vec<f32>, Vec<f32>) = got.iter().zip(&twin).map(|(&g, &t)| (g as f32, t as f32)).unzip();
        assert_eq!(argmax(&g32), argmax(&t32), "{name} image {i}: argmax differs");
    }
}

#[test]
fn tenseal_cnn1_encrypted() {
    check(ArchSpec::builtin("tenseal-cnn1").unwrap(), 4);
}

#[test]
fn cryptonets_encrypted() {
    check(ArchSpec::builtin("cryptonets").unwrap(), 2);
}

#[test]
fn cnn2_encrypted() {
    check(ArchSpec::builtin("cnn2").unwrap(), 2);
}

#[test]
fn lenet5_encrypted() {
    check(ArchSpec::builtin("lenet5").unwrap().with_activation(LayerSpec::Square), 2);
}

/// ReLU fits of every degree on pixels in `[0, 255]`: pre-activations reach hundreds, so the
/// fits' leading coefficients are tiny (about 1e-3 at degree 2, 1e-8 at degree 4). Folding
/// them whole into the next layer's weights once left the logits 5% off at degree 2.
#[test]
fn relu_fits_on_raw_pixels_encrypted() {
    for degree in [2, 3, 4] {
        let mut arch =
            ArchSpec::builtin("cryptonets").unwrap().with_activation(LayerSpec::ReluPoly { degree, lo: -1.0, hi: 1.0 });
        arch.normalization = Normalization { mean: 0.0, std: 1.0 / 255.0 };
        check_trained(arch, 2, 2);
    }
}

#[test]
fn too_deep_networks_are_refused_at_compile_time() {
    // Twenty square activations: depth 41, beyond every 128-bit chain.
    let mut arch = ArchSpec::builtin("tenseal-cnn1").unwrap();
    for _ in 0..18 {
        arch.layers.insert(3, LayerSpec::Square);
        arch.layers.insert(3, LayerSpec::Dense { outputs: 64 });
    }
    let model = Model::init(arch, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    let err = CompiledModel::new(&model, &ChainOptions::default()).unwrap_err().to_string();
    assert!(err.contains("depth 41") && err.contains("largest 128-bit chain"), "{err}");
    // ReLU has no encrypted form: refused with what to do instead.
    let relu = Model::init(ArchSpec::builtin("lenet5").unwrap(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    let err = CompiledModel::new(&relu, &ChainOptions::default()).unwrap_err().to_string();
    assert!(err.contains("ReLU") && err.contains("--activation"), "{err}");
}
