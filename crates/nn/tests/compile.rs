//! The compiled circuit's plaintext twin against the model's forward pass, for every
//! built-in architecture that has an encrypted form, on random weights and inputs (the twin
//! mirrors the slot layout exactly, so only `f32` rounding separates them: relative 1e-4).

use blindfold_nn::compile::{circuit, parameters, ChainOptions};
use blindfold_nn::{ArchSpec, LayerSpec, Model};
use ndarray::Array2;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn twin_matches_model(arch: ArchSpec) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut model = Model::init(arch.clone(), &mut rng).unwrap();
    let params = parameters(&arch, &ChainOptions::default()).unwrap();
    let c = circuit(&arch, Some(&model), params.slots(), params.max_level()).unwrap();
    println!("{}: depth {}, {} rotation keys, N = {}", arch.name, c.depth(), c.rotation_keys().len(), params.n());
    for s in c.costs() {
        println!("  {s:?}");
    }
    for _ in 0..3 {
        let x: Vec<f64> = (0..arch.input.len()).map(|_| (rng.next_u32() % 1000) as f64 / 500.0 - 1.0).collect();
        let twin = c.evaluate_plain(&c.packing().pack(&x).unwrap()).unwrap();
        let xa = Array2::from_shape_vec((1, x.len()), x.iter().map(|&v| v as f32).collect()).unwrap();
        let logits = model.forward(&xa).unwrap();
        let max = logits.iter().fold(1f32, |m, v| m.max(v.abs())) as f64;
        assert_eq!(twin.len(), logits.len());
        for (t, l) in twin.iter().zip(logits.iter()) {
            assert!((t - *l as f64).abs() <= 1e-4 * max, "{}: twin {t} vs model {l}", arch.name);
        }
    }
}

#[test]
fn tenseal_cnn1() {
    twin_matches_model(ArchSpec::builtin("tenseal-cnn1").unwrap());
}

#[test]
fn cryptonets() {
    twin_matches_model(ArchSpec::builtin("cryptonets").unwrap());
}

#[test]
fn cnn2() {
    twin_matches_model(ArchSpec::builtin("cnn2").unwrap());
}

#[test]
fn lenet5_square() {
    twin_matches_model(ArchSpec::builtin("lenet5").unwrap().with_activation(LayerSpec::Square));
}

#[test]
fn lenet5_polynomial() {
    let poly = LayerSpec::Poly { coeffs: vec![0.1, 0.5, 0.2, -0.01, 0.003] };
    twin_matches_model(ArchSpec::builtin("lenet5").unwrap().with_activation(poly));
}

#[test]
fn cnn2_with_relu_fits() {
    for degree in [2, 3, 4] {
        let fit = LayerSpec::ReluPoly { degree, lo: -2.5, hi: 3.5 };
        twin_matches_model(ArchSpec::builtin("cnn2").unwrap().with_activation(fit));
    }
}

#[test]
fn strided_padded_convolutions_and_pooling_on_ciphertexts() {
    // A second convolution with stride 2 and padding, a 3×3 pooling with stride 1, and a
    // dense layer straight after a convolution's activation.
    let mut arch = ArchSpec::builtin("cnn2").unwrap();
    arch.name = "strided".into();
    arch.layers = vec![
        LayerSpec::Conv2d { out_channels: 4, kernel: 3, stride: 1, padding: 1 },
        LayerSpec::Square,
        LayerSpec::Conv2d { out_channels: 6, kernel: 4, stride: 2, padding: 1 },
        LayerSpec::AvgPool2d { kernel: 3, stride: 1 },
        LayerSpec::Square,
        LayerSpec::Flatten,
        LayerSpec::Dense { outputs: 10 },
    ];
    twin_matches_model(arch);
}
