//! `blindfold ensemble`: several model holders, each with a model trained on its own share
//! of the data, a coordinator combining their encrypted scores, one end user decrypting.

use crate::progress::{bar, say};
use crate::report::{percentile, Percentiles};
use crate::train::{cached_model, train_on, TrainOpts};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::{presets, Parameters};
use blindfold_data::{class_histogram, partition, Partition, Split};
use blindfold_nn::{argmax, compile, Model};
use blindfold_protocol::{Aggregation, Calibration, Client, CompiledModel, Coordinator, Message, ModelHolder};
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
    /// per holder than mean alone on N8192_DEPTH5_128BIT.
    #[arg(long, value_delimiter = ',', default_value = "mean,weighted,softmax-mean,vote", value_parser = parse_aggregation)]
    aggregation: Vec<Aggregation>,
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
    /// ones of the test set).
    #[arg(long, default_value_t = 100)]
    n_test: usize,
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
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    arch: String,
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
    let aggregations = a.aggregation.clone();
    let (params, preset) = parameters_for(&a.opts.arch_spec(&a.arch)?, &aggregations)?;
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |t| t.get())).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let train_set = a.data.load(Split::Train)?.truncate(a.opts.limit.unwrap_or(usize::MAX));
    let test_full = a.data.load(Split::Test)?;
    if a.n_test + a.n_val > test_full.len() {
        bail!(
            "--n-test {} plus --n-val {} exceed the {} test images (validation images are never scored)",
            a.n_test,
            a.n_val,
            test_full.len()
        );
    }
    let val_idx: Vec<usize> = (test_full.len() - a.n_val..test_full.len()).collect();
    let val = test_full.subset(&val_idx);
    let test = test_full.clone().truncate(a.n_test);
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
            let path = a.model_dir.join("ensemble").join(format!(
                "{}-{}-{}-holder{h}of{}-seed{}-n{}.safetensors",
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
        let ctx = Setup { params: params.clone(), calibration, aggregations: &aggregations };
        let (row, classes) =
            pool.install(|| evaluate_split(&split.to_string(), &mut models, &parts, &test, &ctx, &a))?;
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
        let exact = if matches!(agg, Aggregation::SoftmaxMean | Aggregation::Vote) {
            format!(", exact {}", pct(r.exact_accuracy))
        } else {
            String::new()
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
    println!(
        "  latency        pipeline p50 {:.1} ms (p95 {:.1}); {} replies dropped",
        row.pipeline_ms.p50, row.pipeline_ms.p95, row.dropped_replies
    );
}
