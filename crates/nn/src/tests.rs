//! Gradient checks by finite differences and model-file round trips.

use crate::arch::{ArchSpec, LayerSpec, Normalization, Shape};
use crate::layers::softmax_cross_entropy;
use crate::model::Model;
use ndarray::Array2;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn tiny_arch() -> ArchSpec {
    ArchSpec {
        name: "tiny".into(),
        input: Shape { c: 2, h: 6, w: 6 },
        layers: vec![
            LayerSpec::Conv2d { out_channels: 3, kernel: 3, stride: 1, padding: 1 },
            LayerSpec::Square,
            LayerSpec::AvgPool2d { kernel: 2, stride: 2 },
            LayerSpec::Conv2d { out_channels: 2, kernel: 2, stride: 2, padding: 0 },
            LayerSpec::Poly { coeffs: vec![0.1, 0.5, 0.25] },
            LayerSpec::Flatten,
            LayerSpec::Dense { outputs: 5 },
            LayerSpec::Square,
            LayerSpec::Dense { outputs: 4 },
        ],
        normalization: Normalization { mean: 0.0, std: 1.0 },
    }
}

fn loss(model: &mut Model, x: &Array2<f32>, labels: &[u8]) -> f64 {
    let logits = model.forward_inner(x, false).unwrap();
    softmax_cross_entropy(&logits, labels).0 as f64
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut model = Model::init(tiny_arch(), &mut rng).unwrap();
    let x = Array2::from_shape_simple_fn((3, 72), || (rng.next_u32() % 1000) as f32 / 1000.0 - 0.5);
    let labels = [0u8, 3, 1];
    for l in model.layers.iter_mut() {
        l.zero_grads();
    }
    let logits = model.forward_inner(&x, true).unwrap();
    let (_, mut g) = softmax_cross_entropy(&logits, &labels);
    for l in model.layers.iter_mut().rev() {
        g = l.backward(&g);
    }
    let eps = 1e-2f32;
    let mut checked = 0;
    for li in 0..model.layers.len() {
        let Some(grads) = model.layers[li].grads.clone() else {
            continue;
        };
        let nw = grads.weight.len();
        for k in (0..nw).step_by(nw / 7 + 1).chain([nw - 1]) {
            let analytic = grads.weight.as_slice().unwrap()[k] as f64;
            let orig = model.layers[li].params.as_ref().unwrap().weight.as_slice().unwrap()[k];
            let mut set = |v: f32| model.layers[li].params.as_mut().unwrap().weight.as_slice_mut().unwrap()[k] = v;
            set(orig + eps);
            let up = loss(&mut model, &x, &labels);
            let mut set = |v: f32| model.layers[li].params.as_mut().unwrap().weight.as_slice_mut().unwrap()[k] = v;
            set(orig - eps);
            let down = loss(&mut model, &x, &labels);
            model.layers[li].params.as_mut().unwrap().weight.as_slice_mut().unwrap()[k] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            let tol = 2e-3 + 2e-2 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() < tol,
                "layer {li} weight {k}: numeric {numeric} vs analytic {analytic}"
            );
            checked += 1;
        }
        let analytic = grads.bias[0] as f64;
        let orig = model.layers[li].params.as_ref().unwrap().bias[0];
        model.layers[li].params.as_mut().unwrap().bias[0] = orig + eps;
        let up = loss(&mut model, &x, &labels);
        model.layers[li].params.as_mut().unwrap().bias[0] = orig - eps;
        let down = loss(&mut model, &x, &labels);
        model.layers[li].params.as_mut().unwrap().bias[0] = orig;
        let numeric = (up - down) / (2.0 * eps as f64);
        assert!((numeric - analytic).abs() < 2e-3 + 2e-2 * numeric.abs(), "layer {li} bias: {numeric} vs {analytic}");
    }
    assert!(checked >= 20);
}

#[test]
fn model_files_round_trip_and_refuse_damage() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let model = Model::init(ArchSpec::builtin("tenseal-cnn1").unwrap(), &mut rng).unwrap();
    let dir = std::env::temp_dir().join(format!("blindfold-nn-{}", std::process::id()));
    let path = dir.join("m.safetensors");
    let mut prov = std::collections::HashMap::new();
    prov.insert("dataset".to_string(), "test".to_string());
    model.save(&path, &prov).unwrap();
    let (loaded, file) = Model::load(&path).unwrap();
    assert_eq!(file.arch, *model.spec());
    assert_eq!(file.provenance, prov);
    for i in 0..model.layers.len() {
        assert_eq!(loaded.params(i), model.params(i));
    }
    // Damaged files: truncated, not safetensors, missing tensors.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(Model::load(&path).unwrap_err().to_string().contains("m.safetensors"));
    std::fs::write(&path, b"hello").unwrap();
    assert!(Model::load(&path).unwrap_err().to_string().contains("not a safetensors file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn builtin_architectures_have_the_published_shapes() {
    let t = ArchSpec::builtin("tenseal-cnn1").unwrap().shapes().unwrap();
    assert_eq!(t[1], Shape { c: 4, h: 8, w: 8 });
    assert_eq!(t[3].len(), 256);
    let c = ArchSpec::builtin("cryptonets").unwrap().shapes().unwrap();
    assert_eq!(c[1], Shape { c: 5, h: 13, w: 13 });
    assert_eq!(c[3].len(), 845);
    assert_eq!(ArchSpec::builtin("cnn2").unwrap().classes().unwrap(), 10);
    assert!(ArchSpec::builtin("resnet").is_err());
}

#[test]
fn centered_logits_sum_to_zero_and_keep_the_softmax() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut model = Model::init(tiny_arch(), &mut rng).unwrap();
    // A bias that shifts every class, which centering must remove.
    let last = model.layers.len() - 1;
    model.layers[last].params.as_mut().unwrap().bias.fill(2.5);
    let x = Array2::from_shape_simple_fn((4, 72), || (rng.next_u32() % 1000) as f32 / 1000.0 - 0.5);
    let before = model.forward_inner(&x, false).unwrap();
    model.center_logits();
    let after = model.forward_inner(&x, false).unwrap();
    for (b, a) in before.rows().into_iter().zip(after.rows()) {
        assert!(a.sum().abs() < 1e-4, "{a}");
        let shift = b[0] - a[0];
        assert!(b.iter().zip(a.iter()).all(|(x, y)| (x - y - shift).abs() < 1e-4), "{b} vs {a}");
    }
}

#[test]
fn relu_passes_gradients_where_its_input_is_positive() {
    let input = Shape { c: 4, h: 1, w: 1 };
    let mut layer = crate::layers::Layer::new(LayerSpec::Relu, input, input, None);
    let x = Array2::from_shape_vec((1, 4), vec![-1.0, 0.5, 0.0, 2.0]).unwrap();
    assert_eq!(layer.forward(&x, true).into_raw_vec_and_offset().0, vec![0.0, 0.5, 0.0, 2.0]);
    let g = Array2::from_shape_vec((1, 4), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(layer.backward(&g).into_raw_vec_and_offset().0, vec![0.0, 2.0, 0.0, 4.0]);
}

#[test]
fn fixed_batches_hold_every_example_once() {
    let batches = crate::cryptonn::FixedBatches::new(150, 64, 3);
    assert_eq!(batches.len(), 3);
    assert_eq!((batches.get(0).len(), batches.get(2).len()), (64, 22));
    let mut all: Vec<usize> = (0..3).flat_map(|b| batches.get(b).to_vec()).collect();
    assert_ne!(all[..10], (0..10).collect::<Vec<_>>()[..], "shuffled");
    all.sort_unstable();
    assert_eq!(all, (0..150).collect::<Vec<_>>());
    assert_eq!(batches, crate::cryptonn::FixedBatches::new(150, 64, 3), "reproducible");
}

/// Sharded batches: each within one shard, the shards taking turns, every example of every
/// shard once; mapped through the shards' members they are the holder-of-all view.
#[test]
fn sharded_batches_stay_within_their_shard() {
    use crate::cryptonn::FixedBatches;
    let (batches, shards) = FixedBatches::sharded(&[70, 10, 33], 16, 5);
    assert_eq!(shards, vec![0, 1, 2, 0, 2, 0, 2, 0, 0]);
    for (k, n) in [(0, 70), (1, 10), (2, 33)] {
        let mut mine: Vec<usize> =
            (0..batches.len()).filter(|&b| shards[b] == k).flat_map(|b| batches.get(b).to_vec()).collect();
        mine.sort_unstable();
        assert_eq!(mine, (0..n).collect::<Vec<_>>(), "shard {k}");
    }
    let members: Vec<Vec<usize>> =
        vec![(0..70).map(|i| 3 * i).collect(), (0..10).collect(), (0..33).map(|i| 1000 + i).collect()];
    let global = batches.mapped(&shards, &members);
    assert_eq!(global.get(1), batches.get(1), "shard 1 maps to itself");
    assert_eq!(global.get(0), batches.get(0).iter().map(|i| 3 * i).collect::<Vec<_>>());
    assert_eq!(FixedBatches::sharded(&[70, 10, 33], 16, 5), (batches, shards), "reproducible");
}

/// The crafted architectures of the trust-boundary audit: each is refused with a message,
/// before anything sized by it is allocated, by the model reader and by the compiler (which
/// a client runs on a model holder's published architecture).
#[test]
fn crafted_architectures_are_refused_before_any_allocation() {
    let input = Shape { c: 1, h: 28, w: 28 };
    let arch = |input: Shape, layers: Vec<LayerSpec>| ArchSpec {
        name: "crafted".into(),
        input,
        layers,
        normalization: Normalization { mean: 0.0, std: 1.0 },
    };
    let dense = |outputs| vec![LayerSpec::Flatten, LayerSpec::Dense { outputs }];
    let conv = |out_channels, kernel, stride| LayerSpec::Conv2d { out_channels, kernel, stride, padding: 0 };
    let crafted = [
        ("10^12 outputs", arch(input, dense(1_000_000_000_000))),
        ("2^62 outputs", arch(input, dense(1 << 62))),
        ("wrapping stride", arch(Shape { c: 1, h: 28, w: (1 << 60) + 49 }, vec![conv(4, 7, 1 << 59)])),
        ("10^9 channels", arch(input, vec![conv(1_000_000_000, 5, 1)])),
        ("10^5 x 10^5 input", arch(Shape { c: 1, h: 100_000, w: 100_000 }, dense(10))),
        ("usize::MAX kernel", arch(input, vec![conv(4, usize::MAX, 1)])),
        ("10^4 layers", arch(input, vec![LayerSpec::Square; 10_000])),
    ];
    let dir = std::env::temp_dir().join(format!("blindfold-nn-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, spec) in crafted {
        assert!(spec.shapes().is_err(), "{name}: shapes");
        let err = crate::compile::parameters(&spec, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("invalid architecture"), "{name}: {err}");
        // A model file declaring it, with one small tensor.
        let path = dir.join("crafted.safetensors");
        let data = vec![0u8; 16];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format_version".to_string(), crate::FORMAT_VERSION.to_string());
        meta.insert("arch".to_string(), serde_json::to_string(&spec).unwrap());
        let bytes = safetensors::serialize([("layers.1.weight".to_string(), view)], Some(meta)).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let err = Model::load(&path).unwrap_err().to_string();
        assert!(err.contains("crafted.safetensors") && err.contains("invalid architecture"), "{name}: {err}");
    }
    // A tensor of another shape than the architecture's is refused by its shape.
    let model = Model::init(ArchSpec::builtin("tenseal-cnn1").unwrap(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    let path = dir.join("m.safetensors");
    model.save(&path, &Default::default()).unwrap();
    let (_, file) = Model::load(&path).unwrap();
    let mut bigger = file.arch.clone();
    bigger.layers[3] = LayerSpec::Dense { outputs: 1 << 12 };
    let mut meta = std::collections::HashMap::new();
    meta.insert("format_version".to_string(), crate::FORMAT_VERSION.to_string());
    meta.insert("arch".to_string(), serde_json::to_string(&bigger).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = safetensors::serialize(tensors.tensors(), Some(meta)).unwrap();
    std::fs::write(&path, out).unwrap();
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(err.contains("layers.3.weight has shape [64, 256], the architecture needs [4096, 256]"), "{err}");
    // A file larger than any model is refused by its size before it is read (sparse: no
    // disk is used).
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(err.contains("more than the"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_output_mask_keeps_one_copy_of_each_score_and_zeros_the_rest() {
    use blindfold_tensor::PlainBackend;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let spec = tiny_arch();
    let model = Model::init(spec.clone(), &mut rng).unwrap();
    let (slots, depth) = (1024, spec.depth());
    let plain = crate::compile::circuit(&spec, Some(&model), slots, depth + 1).unwrap();
    let masked = plain.clone().with_output_mask().unwrap();
    assert_eq!((masked.depth(), masked.output_level(), masked.masks_output()), (depth + 1, 0, true));
    assert!(!plain.masks_output());
    let x: Vec<f64> = (0..spec.input.len()).map(|_| (rng.next_u32() % 256) as f64 / 255.0).collect();
    let inputs = plain.packing().pack(&x).unwrap();
    let before = plain.evaluate_on(&PlainBackend, &inputs).unwrap();
    let after = masked.evaluate_on(&PlainBackend, &inputs).unwrap();
    // The same scores, read the same way.
    assert_eq!(plain.read_output(&before), masked.read_output(&after));
    // Before: copies and partial sums all over the slots; after: zeros outside the scores.
    let layout = masked.output();
    let outside = |v: &[f64]| {
        v.iter()
            .enumerate()
            .filter(|&(j, x)| *x != 0.0 && !layout.features.iter().any(|&(_, s)| s as usize == j))
            .count()
    };
    assert!(outside(&before) > 0, "the unmasked result repeats its scores");
    assert_eq!(outside(&after), 0);
    assert_eq!(layout.stray(&[after]), 0.0);
    assert!(layout.stray(&[before]) > 0.0);
    // No level left for the mask: refused.
    let full = crate::compile::circuit(&spec, Some(&model), slots, depth).unwrap();
    assert!(full.with_output_mask().unwrap_err().to_string().contains("one more level"));
}
