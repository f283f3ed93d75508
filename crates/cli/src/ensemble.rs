//! `blindfold ensemble`: several model holders, each with a model trained on its own share
//! of the data, a coordinator combining their encrypted scores, one end user decrypting.

use crate::infer::{batch_pixels, bfv_preset, check_batch_memory, crt_scores, PackingArg, SchemeArg};
use crate::progress::{bar, say};
use crate::report::{percentile, Percentiles};
use crate::train::{cached_model, train_on, TrainOpts};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::bfv::BfvDecryptor;
use blindfold_ckks::{presets, Ciphertext, Encryptor, Evaluator, KeyGenerator, Parameters, SymmetricEncryptor};
use blindfold_data::{class_histogram, partition, Partition, Split};
use blindfold_nn::compile::{BfvOptions, CompiledBfv};
use blindfold_nn::{argmax, compile, Model};
use blindfold_protocol::{Aggregation, Calibration, Client, CompiledModel, Coordinator, Message, ModelHolder};
use blindfold_tensor::weighted_sum;
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub(crate) struct EnsembleArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Number of model holders, each training its own model on its own share of the data.
    #[arg(long, default_value_t = 5)]
    holders: usize,
    /// Comma-separated data splits among the holders, one table row each: iid,
    /// label-skew:K (K classes per holder), dirichlet:ALPHA (class mix drawn from a
    /// Dirichlet distribution; small ALPHA = very unequal), size-skew.
    #[arg(long, value_delimiter = ',', default_value = "iid,dirichlet:1.0,dirichlet:0.3,label-skew:2")]
    split: Vec<Partition>,
    /// Comma-separated aggregations the coordinator runs on the encrypted scores: mean,
    /// weighted (by validation accuracy above chance), softmax-mean (mean of a polynomial
    /// softmax), vote (mean of polynomial one-hot votes). Anything but mean needs levels after
    /// the network, so the whole ensemble then runs on N16384_DEPTH9_128BIT, about 10× slower
    /// per holder than mean alone on N8192_DEPTH5_128BIT. BFV runs the linear ones only: mean
    /// (the sum of the scores) and weighted (integer weights of 4 bits, 1 to 15: a holder at
    /// chance keeps weight 1).
    /// [default: all four on CKKS, mean,weighted on BFV]
    #[arg(long, value_delimiter = ',', value_parser = parse_aggregation)]
    aggregation: Vec<Aggregation>,
    /// Scheme: `ckks`, or `bfv` (batch packing: every holder's network quantized to integers on
    /// one shared plan, scores exact; the coordinator sums them exactly).
    #[arg(long, value_enum, default_value_t = SchemeArg::Ckks)]
    scheme: SchemeArg,
    /// How images are packed: `single` (one image per request; CKKS) or `batch` (slot s of
    /// every ciphertext is image s; BFV).
    #[arg(long, value_enum, default_value_t = PackingArg::Single)]
    packing: PackingArg,
    /// BFV: bits of each layer's largest integer weight, sign included.
    #[arg(long, default_value_t = 6)]
    weight_bits: u32,
    /// BFV: circuit privacy at this statistical security λ (bits): the coordinator adds a
    /// fresh encryption of zero under the user's public key to each aggregated score
    /// ciphertext and floods it, so the user's decryption shows the ensemble's scores and
    /// nothing else of the holders' weights (SECURITY.md). 0 switches it off (benchmarks).
    /// [default: 40 on BFV]
    #[arg(long, value_name = "BITS")]
    circuit_privacy: Option<u32>,
    /// Architecture of every holder's model.
    #[arg(long, default_value = "tenseal-cnn1")]
    arch: String,
    #[command(flatten)]
    opts: TrainOpts,
    /// Seed of the data splits.
    #[arg(long, default_value_t = 1)]
    split_seed: u64,
    /// Where the holders' trained models are cached.
    #[arg(long, default_value = "models")]
    model_dir: PathBuf,
    /// Number of test images classified under encryption by the whole ensemble (the first
    /// ones of the test set). [default: 100 on CKKS; on BFV every test image not used for
    /// validation, as one batch costs the same for 1 image or N]
    #[arg(long)]
    n_test: Option<usize>,
    /// Validation images, taken from the end of the test set and never scored: the public
    /// weights and polynomial constants of the aggregations are computed on them.
    #[arg(long, default_value_t = 1000)]
    n_val: usize,
    /// A holder whose reply takes longer than this (milliseconds) is left out of that image's
    /// aggregation, and the result says so.
    #[arg(long)]
    timeout_ms: Option<f64>,
    /// Threads (default: all cores), shared by the holders evaluating in parallel.
    #[arg(long)]
    threads: Option<usize>,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every image's classes here (CSV: split, image, label, then the encrypted and the
    /// plaintext-twin class of each aggregation).
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Write the holders' models, exactly as evaluated here (logits centered), to this
    /// directory as `SPLIT-holderH.safetensors`: what `blindfold serve` runs for the same
    /// ensemble over the network.
    #[arg(long)]
    export_holders: Option<PathBuf>,
}

fn parse_aggregation(name: &str) -> Result<Aggregation, String> {
    name.parse()
}

/// The parameters with the levels `aggregations` need after `arch`'s network, and their name:
/// the compiler's chain for the network alone when every aggregation is linear, else
/// `N16384_DEPTH9_128BIT` (five levels for the network on 34-bit primes, four for the
/// aggregation on 35-bit primes).
fn parameters_for(arch: &blindfold_nn::ArchSpec, aggregations: &[Aggregation]) -> Result<(Parameters, String)> {
    if aggregations.iter().all(|a| a.depth() == 0) {
        let p = compile::parameters(arch, &Default::default())?;
        let name = blindfold_protocol::PlanInfo::name_of(p.literal());
        Ok((p, name))
    } else {
        let preset = presets::N16384_DEPTH9_128BIT;
        Ok((preset.parameters()?, preset.name.to_string()))
    }
}

#[derive(Serialize)]
struct AggregationResult {
    encrypted_accuracy: f64,
    /// The plaintext twin: the same polynomials on the holders' plaintext scores.
    plain_accuracy: f64,
    agreement: f64,
    /// Largest difference between a decrypted score and its plaintext twin, over all classes
    /// and images (the CKKS error of network and aggregation together).
    max_error: f64,
    /// The exact function the polynomials approximate (softmax, plurality vote), in plaintext.
    exact_accuracy: f64,
    /// Levels the aggregation consumes after the network.
    depth: usize,
    /// The coordinator's work per image.
    coordinator_ms: Percentiles,
    /// BFV: the share of images whose decrypted ensemble scores equal the plaintext integer
    /// ensemble's (every class) exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_scores: Option<f64>,
}

#[derive(Serialize)]
struct Row {
    split: String,
    holder_sizes: Vec<usize>,
    holder_accuracies: Vec<f64>,
    best_single: f64,
    ensemble: BTreeMap<String, AggregationResult>,
    /// Holder replies left out (failed or late), over all images.
    dropped_replies: usize,
    /// Encrypt, all holders in parallel, every aggregation, decrypt: per image.
    pipeline_ms: Percentiles,
    /// The holders' public constants (weights, score bounds, softmax inverse).
    calibration: Calibration,
    /// BFV: the shared plan and how the holders' integer scores are combined.
    #[serde(skip_serializing_if = "Option::is_none")]
    bfv: Option<BfvRow>,
}

/// The BFV plan of one split (each split's models have their own bounds).
#[derive(Serialize)]
struct BfvRow {
    preset: String,
    plaintext_moduli: Vec<u64>,
    /// The statistical security (bits) of the aggregate's circuit privacy; `null`: none.
    circuit_privacy_bits: Option<u32>,
    /// log2 of the common output scale (integer scores = float scores × 2^this).
    output_scale_log2: f64,
    /// Each holder's outputs multiplied by this power of two to reach the common scale.
    scale_factors: Vec<u64>,
    /// The integer weights of `weighted` (validation accuracy above chance, 4 bits).
    integer_weights: Vec<u64>,
    /// Each holder's integer network alone: its accuracy.
    integer_holder_accuracies: Vec<f64>,
    /// Images per evaluation.
    batch_size: usize,
    /// Test images over the wall time of the split's whole run: compilation, keys,
    /// encryption, every holder, the coordinator, decryption, and the checks beside them (the
    /// holders' float scores, the integer twins).
    images_per_second: f64,
    /// Server seconds per batch: all holders, and the coordinator.
    holders_s: Vec<f64>,
    coordinator_s: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    arch: String,
    scheme: String,
    packing: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_bits: Option<u32>,
    holders: usize,
    n: usize,
    n_val: usize,
    preset: String,
    threads: usize,
    rows: Vec<Row>,
}

pub(crate) fn ensemble_cmd(a: EnsembleArgs) -> Result<()> {
    if a.holders == 0 {
        bail!("--holders must be at least 1");
    }
    let bfv = match (a.scheme, a.packing) {
        (SchemeArg::Ckks, PackingArg::Single) => false,
        (SchemeArg::Bfv, PackingArg::Batch) => true,
        (SchemeArg::Bfv, PackingArg::Single) => {
            bail!("BFV runs in batch packing only (one image per slot): add --packing batch, or use --scheme ckks")
        }
        (SchemeArg::Ckks, PackingArg::Batch) => {
            bail!("the CKKS ensemble runs in single packing; batch packing runs on BFV (--scheme bfv)")
        }
    };
    if !bfv && a.circuit_privacy.is_some() {
        bail!("--circuit-privacy applies to --scheme bfv: the CKKS ensemble's scores are not flooded (SECURITY.md)");
    }
    let aggregations = match (a.aggregation.is_empty(), bfv) {
        (true, false) => Aggregation::ALL.to_vec(),
        (true, true) => vec![Aggregation::Mean, Aggregation::Weighted],
        (false, _) => a.aggregation.clone(),
    };
    if bfv {
        if let Some(g) = aggregations.iter().find(|g| matches!(g, Aggregation::SoftmaxMean | Aggregation::Vote)) {
            bail!(
                "{} is a polynomial of the scores, which BFV's integer scores cannot take: \
                 use --aggregation mean,weighted, or --scheme ckks",
                g.name()
            );
        }
        if a.timeout_ms.is_some() {
            bail!("--timeout-ms applies to the CKKS ensemble's per-image requests, not to BFV batches");
        }
    }
    let (params, preset) = if bfv {
        (None, "per split (BFV)".to_string())
    } else {
        let (p, name) = parameters_for(&a.opts.arch_spec(&a.arch)?, &aggregations)?;
        (Some(p), name)
    };
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |t| t.get())).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let train_set = a.data.load(Split::Train)?.truncate(a.opts.limit.unwrap_or(usize::MAX));
    let test_full = a.data.load(Split::Test)?;
    let n_test = a.n_test.unwrap_or(if bfv { test_full.len().saturating_sub(a.n_val) } else { 100 });
    if n_test + a.n_val > test_full.len() {
        bail!(
            "--n-test {} plus --n-val {} exceed the {} test images (validation images are never scored)",
            n_test,
            a.n_val,
            test_full.len()
        );
    }
    let val_idx: Vec<usize> = (test_full.len() - a.n_val..test_full.len()).collect();
    let val = test_full.subset(&val_idx);
    let test = test_full.clone().truncate(n_test);
    let mut rows = Vec::new();
    let mut csv = format!(
        "split,image,label{}\n",
        aggregations.iter().map(|g| format!(",{0}_encrypted,{0}_plain", g.name())).collect::<String>()
    );
    for &split in &a.split {
        let parts = partition(&train_set.labels, a.holders, split, a.split_seed)?;
        let mut models = Vec::with_capacity(a.holders);
        for (h, idx) in parts.iter().enumerate() {
            let hist = class_histogram(&train_set.labels, idx, 10);
            eprintln!("{split}: holder {h} has {} images, per class {hist:?}", idx.len());
            let activation =
                if a.opts.activation == "square" { String::new() } else { format!("-{}", a.opts.activation) };
            let path = a.model_dir.join("ensemble").join(format!(
                "{}-{}{activation}-{}-holder{h}of{}-seed{}-n{}.safetensors",
                a.data.dataset,
                a.arch,
                split.to_string().replace(':', "_"),
                a.holders,
                a.split_seed,
                train_set.len()
            ));
            let model = match cached_model(&path, &a.opts.arch_spec(&a.arch)?) {
                Some(m) => m,
                None => train_on(&a.arch, a.data.dataset, &train_set.subset(idx), &test_full, &a.opts, &path)?,
            };
            models.push(model);
        }
        // Logits summing to zero: same predictions, bounded softmax sums (Model::center_logits).
        models.iter_mut().for_each(Model::center_logits);
        if let Some(dir) = &a.export_holders {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let provenance = HashMap::from([("ensemble_split".to_string(), split.to_string())]);
            for (h, m) in models.iter().enumerate() {
                let path = dir.join(format!("{}-holder{h}.safetensors", split.to_string().replace(':', "_")));
                m.save(&path, &provenance).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        let val_scores = models.iter_mut().map(|m| logits_f64(m, &val)).collect::<Result<Vec<_>>>()?;
        let calibration = Calibration::from_validation(&val_scores, &val.labels)?;
        let (row, classes) = match &params {
            Some(params) => {
                let ctx = Setup { params: params.clone(), calibration, aggregations: &aggregations };
                pool.install(|| evaluate_split(&split.to_string(), &mut models, &parts, &test, &ctx, &a))?
            }
            None => pool.install(|| {
                evaluate_split_bfv(&split.to_string(), &mut models, &parts, &test, &calibration, &aggregations, &a)
            })?,
        };
        for (i, c) in classes.iter().enumerate() {
            let cols: String = c.iter().map(|(e, p)| format!(",{e},{p}")).collect();
            csv += &format!("{split},{i},{}{cols}\n", test.labels[i]);
        }
        print_row(&row, &aggregations);
        rows.push(row);
    }
    let report = Report {
        dataset: a.data.dataset.to_string(),
        arch: a.arch.clone(),
        scheme: if bfv { "bfv" } else { "ckks" }.into(),
        packing: if bfv { "batch" } else { "single" }.into(),
        weight_bits: bfv.then_some(a.weight_bits),
        holders: a.holders,
        n: test.len(),
        n_val: a.n_val,
        preset: preset.clone(),
        threads,
        rows,
    };
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.predictions {
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A model's logits for every image of `set`, as `f64` rows.
fn logits_f64(model: &mut Model, set: &blindfold_data::LabeledImages) -> Result<Vec<Vec<f64>>> {
    let images: Vec<&[u8]> = (0..set.len()).map(|i| set.images.image(i)).collect();
    let l = model.logits(&images)?;
    Ok(l.rows().into_iter().map(|r| r.iter().map(|&v| f64::from(v)).collect()).collect())
}

/// What one split's encrypted run is set up with.
struct Setup<'a> {
    params: Parameters,
    calibration: Calibration,
    aggregations: &'a [Aggregation],
}

/// One image's (encrypted, plaintext-twin) class for each aggregation.
type ImageClasses = Vec<(usize, usize)>;

/// Runs the encrypted ensemble on every test image for one split; the row, and each image's
/// classes.
fn evaluate_split(
    split: &str,
    models: &mut [Model],
    parts: &[Vec<usize>],
    test: &blindfold_data::LabeledImages,
    setup: &Setup<'_>,
    a: &EnsembleArgs,
) -> Result<(Row, Vec<ImageClasses>)> {
    let aggregations = setup.aggregations;
    let n = test.len();
    let images: Vec<&[u8]> = (0..n).map(|i| test.images.image(i)).collect();
    // Each holder's plaintext logits: its own accuracy, and the plaintext twin of the ensemble.
    let plain: Vec<Vec<Vec<f64>>> = models.iter_mut().map(|m| logits_f64(m, test)).collect::<Result<_>>()?;
    let accuracy = |pred: &dyn Fn(usize) -> usize| {
        (0..n).filter(|&i| pred(i) == test.labels[i] as usize).count() as f64 / n.max(1) as f64
    };
    let holder_accuracies: Vec<f64> = plain.iter().map(|p| accuracy(&|i| argmax_f64(&p[i]))).collect();

    let mut holders: Vec<ModelHolder> = models
        .iter()
        .map(|m| Ok(ModelHolder::new(CompiledModel::with_parameters(m, &setup.params)?)))
        .collect::<Result<_>>()?;
    let info = holders[0].info().clone();
    let (mut user, keys) = Client::new(&info)?;
    for h in &mut holders {
        h.handle(&keys)?;
    }
    let mut coordinator = Coordinator::with_calibration(&info, setup.calibration.clone())?;
    let steps = coordinator.rotation_keys(aggregations)?;
    if !steps.is_empty() {
        coordinator.set_evaluation_keys(&user.evaluation_keys_for(&steps)?)?;
    }
    let mut encrypted_pred = vec![vec![0usize; n]; aggregations.len()];
    let mut plain_pred = vec![vec![0usize; n]; aggregations.len()];
    let mut exact_pred = vec![vec![0usize; n]; aggregations.len()];
    let mut max_error = vec![0f64; aggregations.len()];
    let (mut pipeline, mut coord_ms) = (Vec::with_capacity(n), vec![Vec::with_capacity(n); aggregations.len()]);
    let mut dropped = 0;
    let pb = bar(n as u64, split);
    for i in 0..n {
        let t0 = Instant::now();
        let request = user.encrypt_pixels(images[i])?;
        let replies: Vec<(Option<Message>, f64)> = holders
            .par_iter_mut()
            .map(|h| {
                let t = Instant::now();
                let reply = h.handle(&request).ok().flatten();
                (reply, t.elapsed().as_secs_f64() * 1e3)
            })
            .collect();
        let delivered: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, (r, ms))| r.is_some() && a.timeout_ms.is_none_or(|limit| *ms <= limit))
            .map(|(h, _)| h)
            .collect();
        dropped += holders.len() - delivered.len();
        for (k, &agg) in aggregations.iter().enumerate() {
            let tc = Instant::now();
            for &h in &delivered {
                coordinator.receive(h, replies[h].0.as_ref().expect("delivered"))?;
            }
            let out = coordinator.aggregate(agg)?;
            coord_ms[k].push(tc.elapsed().as_secs_f64() * 1e3);
            if !out.missing.is_empty() {
                say(&pb, format!("image {i}: {} without holders {:?} (failed or late)", agg.name(), out.missing));
            }
            let got = user.decrypt_ensemble_scores(&out.message)?;
            encrypted_pred[k][i] = argmax_f64(&got);
            let twin: Vec<&[f64]> = out.contributors.iter().map(|&h| plain[h][i].as_slice()).collect();
            let want = agg.apply_plain(&twin, &out.contributors, &setup.calibration)?;
            plain_pred[k][i] = argmax_f64(&want);
            max_error[k] = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(max_error[k], f64::max);
            exact_pred[k][i] = exact_prediction(agg, &twin);
        }
        pipeline.push(t0.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let ensemble = aggregations
        .iter()
        .zip(coord_ms.iter_mut())
        .enumerate()
        .map(|(k, (agg, ms))| {
            let agreement =
                (0..n).filter(|&i| encrypted_pred[k][i] == plain_pred[k][i]).count() as f64 / n.max(1) as f64;
            let result = AggregationResult {
                encrypted_accuracy: accuracy(&|i| encrypted_pred[k][i]),
                plain_accuracy: accuracy(&|i| plain_pred[k][i]),
                agreement,
                max_error: max_error[k],
                exact_accuracy: accuracy(&|i| exact_pred[k][i]),
                depth: agg.depth(),
                coordinator_ms: Percentiles { p50: percentile(ms, 0.5), p95: percentile(ms, 0.95) },
                exact_scores: None,
            };
            (agg.name().to_string(), result)
        })
        .collect();
    let classes =
        (0..n).map(|i| (0..aggregations.len()).map(|k| (encrypted_pred[k][i], plain_pred[k][i])).collect()).collect();
    let row = Row {
        split: split.to_string(),
        holder_sizes: parts.iter().map(Vec::len).collect(),
        best_single: holder_accuracies.iter().copied().fold(0.0, f64::max),
        holder_accuracies,
        ensemble,
        dropped_replies: dropped,
        pipeline_ms: Percentiles { p50: percentile(&mut pipeline, 0.5), p95: percentile(&mut pipeline, 0.95) },
        calibration: setup.calibration.clone(),
        bfv: None,
    };
    Ok((row, classes))
}

/// Integer weights of `weighted` on BFV: each holder's calibrated weight over the largest, on
/// 4 bits (1 to 15).
fn integer_weights(w: &[f64]) -> Vec<u64> {
    let top = w.iter().copied().fold(0.0, f64::max);
    w.iter().map(|&x| if top > 0.0 { (15.0 * x / top).round().max(1.0) as u64 } else { 1 }).collect()
}

/// The first largest entry (exact on integers beyond 2^53, unlike a float argmax).
fn argmax_i128(v: &[i128]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Runs the ensemble on BFV in batch packing for one split: every holder's network quantized
/// on one shared plan ([`CompiledBfv::ensemble`]); for each batch of up to `N` images and each
/// plaintext prime, the user encrypts one ciphertext per pixel, every holder evaluates its
/// integer network, the coordinator sums (mean) or weights (weighted) the holders' encrypted
/// scores, the user decrypts and recombines the primes (CRT). The twin is the plaintext
/// integer ensemble; agreement and exactness are against it.
fn evaluate_split_bfv(
    split: &str,
    models: &mut [Model],
    parts: &[Vec<usize>],
    test: &blindfold_data::LabeledImages,
    calibration: &Calibration,
    aggregations: &[Aggregation],
    a: &EnsembleArgs,
) -> Result<(Row, Vec<ImageClasses>)> {
    let start = Instant::now();
    let n = test.len();
    let plain: Vec<Vec<Vec<f64>>> = models.iter_mut().map(|m| logits_f64(m, test)).collect::<Result<_>>()?;
    let accuracy = |pred: &dyn Fn(usize) -> usize| {
        (0..n).filter(|&i| pred(i) == test.labels[i] as usize).count() as f64 / n.max(1) as f64
    };
    let holder_accuracies: Vec<f64> = plain.iter().map(|p| accuracy(&|i| argmax_f64(&p[i]))).collect();
    let int_weights = integer_weights(&calibration.weights);
    let agg_weights: Vec<Vec<u64>> = aggregations
        .iter()
        .map(|g| match g {
            Aggregation::Weighted => int_weights.clone(),
            _ => vec![1; models.len()],
        })
        .collect();
    // The plan holds the largest weight each holder gets in any aggregation.
    let plan_weights: Vec<u64> =
        (0..models.len()).map(|h| agg_weights.iter().map(|w| w[h]).max().unwrap_or(1)).collect();
    let refs: Vec<&Model> = models.iter().collect();
    let lambda = a.circuit_privacy.unwrap_or(blindfold_nn::compile::DEFAULT_CIRCUIT_PRIVACY_BITS);
    let opts = BfvOptions { weight_bits: a.weight_bits, log_n: None, circuit_privacy: (lambda > 0).then_some(lambda) };
    let compiled = CompiledBfv::ensemble(&refs, &opts, &plan_weights)?;
    let (ctx, moduli) = (&compiled[0].ctx, compiled[0].plaintext_moduli());
    // Holders run one after another on the same inputs; their replies are small.
    let peak = compiled.iter().map(|c| c.circuit.peak_polynomials()).max().unwrap_or(0);
    check_batch_memory(
        &format!("the ensemble of {}", a.arch),
        peak * (ctx.max_level() + 1),
        ctx.n(),
        "use fewer --weight-bits, the CKKS ensemble (--scheme ckks), or a machine with more memory",
    )?;
    let scale = compiled[0].circuit.output_scale();
    eprintln!(
        "{split}: BFV plan {} for {} holders; plaintext primes' product 2^{:.0}, ensemble bound 2^{:.1}",
        bfv_preset(ctx.params(), &moduli),
        compiled.len(),
        moduli.iter().map(|&t| (t as f64).log2()).sum::<f64>(),
        compiled.iter().zip(&plan_weights).map(|(c, &w)| w as f64 * c.circuit.output_bound()).sum::<f64>().log2()
    );
    // The user: keys, encryptor, one decryptor per plaintext prime.
    let eval = Evaluator::new(ctx);
    let mut keygen = KeyGenerator::new(ctx)?;
    let rlk = keygen.relinearization_key();
    let flooding = compiled[0].flooding_log_bound;
    // The coordinator re-randomizes the aggregate with the user's public key.
    let mut rerandomizer = flooding.map(|_| Encryptor::with_public_key(ctx, &keygen.public_key())).transpose()?;
    let mut encryptor = SymmetricEncryptor::new(keygen.secret_key())?;
    let decryptors: Vec<BfvDecryptor> =
        compiled[0].moduli.iter().map(|b| BfvDecryptor::new(b, keygen.secret_key())).collect();
    let slots = ctx.params().n();
    let batches = n.div_ceil(slots);
    let stages: usize = compiled.iter().map(|c| c.circuit.stages().len()).sum();
    let pb = bar((batches * moduli.len() * stages) as u64, &format!("{split}: BFV holders' layers"));
    let inputs = compiled[0].circuit.inputs();
    let k_aggs = aggregations.len();
    let mut encrypted_pred = vec![vec![0usize; n]; k_aggs];
    let mut plain_pred = vec![vec![0usize; n]; k_aggs];
    let mut exact_pred = vec![vec![0usize; n]; k_aggs];
    let mut exact = vec![0usize; k_aggs];
    let mut max_error = vec![0f64; k_aggs];
    let mut int_correct = vec![0usize; models.len()];
    let (mut holders_s, mut coordinator_s, mut per_image) = (Vec::new(), Vec::new(), Vec::new());
    let mut coord_ms = vec![Vec::new(); k_aggs];
    for b in 0..batches {
        let t_batch = Instant::now();
        let range = b * slots..n.min((b + 1) * slots);
        let pixels = batch_pixels(test, range.clone(), inputs);
        // residues[aggregation][prime][class][slot]
        let mut residues: Vec<Vec<Vec<Vec<u64>>>> = vec![Vec::with_capacity(moduli.len()); k_aggs];
        let (mut holders_t, mut coord_t) = (0.0, vec![0.0; k_aggs]);
        for (p, (bfv, dec)) in compiled[0].moduli.iter().zip(&decryptors).enumerate() {
            let pts = pixels.par_iter().map(|f| bfv.encode(f)).collect::<std::result::Result<Vec<_>, _>>()?;
            let request = encryptor.encrypt_batch(&pts)?;
            drop(pts);
            let t0 = Instant::now();
            let cts: Vec<Ciphertext> = request.par_iter().map(|c| c.expand(ctx)).collect();
            drop(request);
            let mut replies = Vec::with_capacity(compiled.len());
            for c in &compiled {
                replies.push(c.circuit.evaluate_bfv(&c.moduli[p], &eval, &cts, &rlk, |_, _| pb.inc(1))?);
            }
            drop(cts);
            holders_t += t0.elapsed().as_secs_f64();
            for (k, w) in agg_weights.iter().enumerate() {
                let tc = Instant::now();
                let mut combined = weighted_sum(&eval, &replies, w)?;
                if let (Some(r), Some(bits)) = (&mut rerandomizer, flooding) {
                    combined.iter_mut().try_for_each(|c| r.rerandomize_uniform(c, bits))?;
                }
                coord_t[k] += tc.elapsed().as_secs_f64();
                residues[k].push(combined.par_iter().map(|c| dec.decrypt(c)).collect::<std::result::Result<_, _>>()?);
            }
        }
        // The plaintext integer ensemble, and the float ensemble with the same weights.
        let ints: Vec<Vec<i64>> = pixels.iter().map(|f| f.iter().map(|&v| v as i64).collect()).collect();
        let twins = compiled.iter().map(|c| c.circuit.evaluate_integer(&ints)).collect::<Result<Vec<_>, _>>()?;
        for (s, i) in range.clone().enumerate() {
            for (h, t) in twins.iter().enumerate() {
                let scores: Vec<i128> = t.iter().map(|o| o[s]).collect();
                int_correct[h] += usize::from(argmax_i128(&scores) == test.labels[i] as usize);
            }
            for (k, w) in agg_weights.iter().enumerate() {
                let got = crt_scores(&residues[k], s, &moduli)?;
                let classes = got.len();
                let want: Vec<i128> =
                    (0..classes).map(|o| twins.iter().zip(w).map(|(t, &wh)| i128::from(wh) * t[o][s]).sum()).collect();
                exact[k] += usize::from(got == want);
                let err = got.iter().zip(&want).map(|(x, y)| (x - y).unsigned_abs() as f64 / scale).fold(0.0, f64::max);
                max_error[k] = max_error[k].max(err);
                encrypted_pred[k][i] = argmax_i128(&got);
                plain_pred[k][i] = argmax_i128(&want);
                let float: Vec<f64> =
                    (0..classes).map(|o| plain.iter().zip(w).map(|(p, &wh)| wh as f64 * p[i][o]).sum()).collect();
                exact_pred[k][i] = argmax_f64(&float);
            }
        }
        let images = range.len() as f64;
        holders_s.push(holders_t);
        coordinator_s.push(coord_t.iter().sum());
        for (k, t) in coord_t.iter().enumerate() {
            coord_ms[k].push(1e3 * t / images);
        }
        per_image.push(1e3 * t_batch.elapsed().as_secs_f64() / images);
    }
    pb.finish_and_clear();
    let images_per_second = n as f64 / start.elapsed().as_secs_f64();
    let ensemble = aggregations
        .iter()
        .enumerate()
        .map(|(k, agg)| {
            let result = AggregationResult {
                encrypted_accuracy: accuracy(&|i| encrypted_pred[k][i]),
                plain_accuracy: accuracy(&|i| plain_pred[k][i]),
                agreement: (0..n).filter(|&i| encrypted_pred[k][i] == plain_pred[k][i]).count() as f64
                    / n.max(1) as f64,
                max_error: max_error[k],
                exact_accuracy: accuracy(&|i| exact_pred[k][i]),
                depth: 0,
                coordinator_ms: Percentiles {
                    p50: percentile(&mut coord_ms[k], 0.5),
                    p95: percentile(&mut coord_ms[k], 0.95),
                },
                exact_scores: Some(exact[k] as f64 / n.max(1) as f64),
            };
            (agg.name().to_string(), result)
        })
        .collect();
    let classes = (0..n).map(|i| (0..k_aggs).map(|k| (encrypted_pred[k][i], plain_pred[k][i])).collect()).collect();
    let row = Row {
        split: split.to_string(),
        holder_sizes: parts.iter().map(Vec::len).collect(),
        best_single: holder_accuracies.iter().copied().fold(0.0, f64::max),
        holder_accuracies,
        ensemble,
        dropped_replies: 0,
        pipeline_ms: Percentiles { p50: percentile(&mut per_image, 0.5), p95: percentile(&mut per_image, 0.95) },
        calibration: calibration.clone(),
        bfv: Some(BfvRow {
            preset: bfv_preset(ctx.params(), &moduli),
            plaintext_moduli: moduli.clone(),
            output_scale_log2: scale.log2(),
            scale_factors: compiled.iter().map(|c| c.output_factor as u64).collect(),
            integer_weights: int_weights,
            integer_holder_accuracies: int_correct.iter().map(|&c| c as f64 / n.max(1) as f64).collect(),
            batch_size: slots,
            circuit_privacy_bits: opts.circuit_privacy,
            images_per_second,
            holders_s,
            coordinator_s,
        }),
    };
    Ok((row, classes))
}

/// The class the exact (not polynomial) aggregation picks: the mean of true softmaxes for
/// softmax-mean, the plurality of the holders' argmaxes for vote (ties to the larger summed
/// score), the aggregation itself otherwise (up to the weights of weighted, which are exact).
fn exact_prediction(agg: Aggregation, scores: &[&[f64]]) -> usize {
    let classes = scores[0].len();
    let mut total = vec![0f64; classes];
    for s in scores {
        let term: Vec<f64> = match agg {
            Aggregation::SoftmaxMean => {
                let m = s.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|v| v / sum).collect()
            }
            Aggregation::Vote => {
                let mut one_hot = vec![0f64; classes];
                one_hot[argmax_f64(s)] = 1.0;
                // Ties between vote counts go to the larger summed score.
                one_hot.iter().zip(s.iter()).map(|(v, x)| v + 1e-6 * x).collect()
            }
            _ => s.to_vec(),
        };
        total.iter_mut().zip(&term).for_each(|(t, v)| *t += v);
    }
    argmax_f64(&total)
}

fn argmax_f64(v: &[f64]) -> usize {
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    argmax(&v32)
}

fn print_row(row: &Row, aggregations: &[Aggregation]) {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    println!("split {}", row.split);
    println!(
        "  holders        {} (images {:?})",
        row.holder_accuracies.iter().map(|&x| pct(x)).collect::<Vec<_>>().join(" "),
        row.holder_sizes
    );
    println!("  best single    {}", pct(row.best_single));
    for agg in aggregations {
        let r = &row.ensemble[agg.name()];
        let verdict = if r.encrypted_accuracy > row.best_single { "beats" } else { "does not beat" };
        let exact = match r.exact_scores {
            Some(e) => format!(", scores exact {} (float ensemble {})", pct(e), pct(r.exact_accuracy)),
            None if matches!(agg, Aggregation::SoftmaxMean | Aggregation::Vote) => {
                format!(", exact {}", pct(r.exact_accuracy))
            }
            None => String::new(),
        };
        println!(
            "  {:<14} encrypted {}, plaintext {}, agreement {}{exact} ({verdict} the best single holder); \
             depth {}, largest error {:.1e}, coordinator p50 {:.2} ms",
            agg.name(),
            pct(r.encrypted_accuracy),
            pct(r.plain_accuracy),
            pct(r.agreement),
            r.depth,
            r.max_error,
            r.coordinator_ms.p50
        );
    }
    match &row.bfv {
        Some(b) => {
            println!(
                "  integer        holders {} (each integer network alone)",
                b.integer_holder_accuracies.iter().map(|&x| pct(x)).collect::<Vec<_>>().join(" ")
            );
            println!(
                "  BFV plan       {} (plaintext primes {:?}); common scale 2^{:.0}, factors {:?}, weighted's integer weights {:?}",
                b.preset, b.plaintext_moduli, b.output_scale_log2, b.scale_factors, b.integer_weights
            );
            println!(
                "  throughput     {:.0} images/s over the run ({} images per batch; per batch: holders {:.1} s, coordinator {:.2} s)",
                b.images_per_second,
                b.batch_size,
                b.holders_s.iter().sum::<f64>() / b.holders_s.len().max(1) as f64,
                b.coordinator_s.iter().sum::<f64>() / b.coordinator_s.len().max(1) as f64
            );
        }
        None => println!(
            "  latency        pipeline p50 {:.1} ms (p95 {:.1}); {} replies dropped",
            row.pipeline_ms.p50, row.pipeline_ms.p95, row.dropped_replies
        ),
    }
}
