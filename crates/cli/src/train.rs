//! `blindfold train`: plaintext training of the built-in architectures, and the cached
//! models of `demo`, `sweep` and `ensemble`.

use crate::progress::{bar, say};
use crate::DataArgs;
use anyhow::{bail, Result};
use blindfold_data::{Dataset, LabeledImages, Split};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{ArchSpec, LayerSpec, Model};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Clone)]
pub(crate) struct TrainOpts {
    /// Training epochs [default: 30 for fashion-mnist, 20 otherwise].
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Peak learning rate (Adam, cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub(crate) learning_rate: f32,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Seed of initialization and shuffling.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Random translation of training images, in pixels (data augmentation; 0 disables)
    /// [default: 1 for fashion-mnist, 2 otherwise].
    #[arg(long)]
    pub(crate) max_shift: Option<usize>,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Activation of every hidden layer: square (x², CryptoNets), or relu-poly2, relu-poly3,
    /// relu-poly4 (least-squares polynomial fits of ReLU on the pre-activation range seen in
    /// training, trained with the polynomial in the loop).
    #[arg(long, default_value = "square")]
    pub(crate) activation: String,
}

impl TrainOpts {
    /// The built-in architecture `name` with this activation.
    pub(crate) fn arch_spec(&self, name: &str) -> Result<ArchSpec> {
        let spec = ArchSpec::builtin(name)?;
        let degree = match self.activation.as_str() {
            "square" => return Ok(spec.with_activation(LayerSpec::Square)),
            "relu-poly2" => 2,
            "relu-poly3" => 3,
            "relu-poly4" => 4,
            other => bail!("unknown activation {other:?}: expected square, relu-poly2, relu-poly3 or relu-poly4"),
        };
        // The range is refitted from the data before and during training.
        Ok(spec.with_activation(LayerSpec::ReluPoly { degree, lo: -4.0, hi: 4.0 }))
    }

    /// File name of the cached model of `arch` on `dataset`.
    pub(crate) fn model_file(&self, dataset: Dataset, arch: &str) -> String {
        match self.activation.as_str() {
            "square" => format!("{dataset}-{arch}.safetensors"),
            act => format!("{dataset}-{arch}-{act}.safetensors"),
        }
    }
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Architecture: tenseal-cnn1, cryptonets, cnn2 or lenet5.
    #[arg(long, default_value = "tenseal-cnn1")]
    pub(crate) arch: String,
    #[command(flatten)]
    pub(crate) opts: TrainOpts,
    /// Output model file (safetensors).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn train_model(arch: &str, data: &DataArgs, opts: &TrainOpts, out: &Path) -> Result<Model> {
    let train_set = data.load(Split::Train)?.truncate(opts.limit.unwrap_or(usize::MAX));
    let test_set = data.load(Split::Test)?;
    train_on(arch, data.dataset, &train_set, &test_set, opts, out)
}

/// Whether two architectures have the same layers, ignoring the coefficients of polynomial
/// activations (which training fits).
fn same_structure(a: &ArchSpec, b: &ArchSpec) -> bool {
    let kind = |l: &LayerSpec| match l {
        LayerSpec::Poly { coeffs } => LayerSpec::Poly { coeffs: vec![0.0; coeffs.len()] },
        LayerSpec::ReluPoly { degree, .. } => LayerSpec::ReluPoly { degree: *degree, lo: 0.0, hi: 0.0 },
        other => other.clone(),
    };
    a.name == b.name
        && a.input == b.input
        && a.layers.len() == b.layers.len()
        && a.layers.iter().zip(&b.layers).all(|(x, y)| kind(x) == kind(y))
}

/// Trains `arch` on `train_set` (reporting accuracy on `test_set` each epoch) and writes the
/// model to `out`.
pub(crate) fn train_on(
    arch: &str,
    dataset: Dataset,
    train_set: &LabeledImages,
    test_set: &LabeledImages,
    opts: &TrainOpts,
    out: &Path,
) -> Result<Model> {
    let spec = opts.arch_spec(arch)?;
    let mut model = Model::init(spec, &mut blindfold_nn::train::seeded_rng(opts.seed))?;
    // The settings behind the accuracies in BENCHMARKS.md.
    let fashion = dataset == Dataset::FashionMnist;
    let epochs = opts.epochs.unwrap_or(if fashion { 30 } else { 20 });
    let cfg = TrainConfig {
        epochs,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        seed: opts.seed,
        max_shift: opts.max_shift.unwrap_or(if fashion { 1 } else { 2 }),
        ..TrainConfig::default()
    };
    eprintln!("training {arch} on {dataset} ({} images, {epochs} epochs)", train_set.len());
    let pb = bar((epochs * train_set.len().div_ceil(cfg.batch_size)) as u64, "training");
    let mut last = None;
    let reports = train(
        &mut model,
        train_set,
        Some(test_set),
        &cfg,
        |_, _| pb.inc(1),
        |r| {
            say(
                &pb,
                format!(
                    "epoch {:>2}: loss {:.4}, test accuracy {:.2}% ({:.1} s)",
                    r.epoch,
                    r.loss,
                    100.0 * r.eval_accuracy.unwrap_or(0.0),
                    r.seconds
                ),
            );
            last = r.eval_accuracy;
        },
    )?;
    pb.finish_and_clear();
    // The fitted ranges against pre-activations the training never saw.
    let ranges = model.activation_ranges(&test_set.clone().truncate(1000))?;
    for r in &ranges {
        eprintln!("{r} (1,000 test images)");
    }
    let mut prov = HashMap::new();
    if !ranges.is_empty() {
        prov.insert("activation_ranges".into(), serde_json::to_string(&ranges)?);
    }
    prov.insert("dataset".into(), dataset.to_string());
    prov.insert("epochs".into(), reports.len().to_string());
    prov.insert("test_accuracy".into(), format!("{:.4}", last.unwrap_or(0.0)));
    prov.insert("seed".into(), opts.seed.to_string());
    model.save(out, &prov)?;
    eprintln!("wrote {}", out.display());
    Ok(model)
}

pub(crate) fn train_cmd(a: TrainArgs) -> Result<Model> {
    train_model(&a.arch, &a.data, &a.opts, &a.out)
}

/// The model at `path` if it exists, loads and has the architecture `arch` (up to fitted
/// coefficients).
pub(crate) fn cached_model(path: &Path, arch: &ArchSpec) -> Option<Model> {
    Model::load(path).ok().filter(|(_, file)| same_structure(&file.arch, arch)).map(|(m, _)| m)
}
