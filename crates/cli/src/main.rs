//! `blindfold`: run neural networks on images the server cannot read.

use anyhow::{bail, Context as _, Result};
use blindfold_ckks::serialize::{read_header, WireObject};
use blindfold_ckks::{max_log_qp_128bit, presets, SecretKey};
use blindfold_ckks::{Ciphertext, Parameters};
use blindfold_data::{load, Dataset, LabeledImages, Split};
use blindfold_nn::compile::{self, ChainOptions};
use blindfold_nn::train::{train, TrainConfig};
use blindfold_nn::{argmax, ArchSpec, LayerSpec, Model};
use blindfold_protocol::{Client, CompiledModel, KeyId, Message, ModelHolder, PlanInfo};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod cryptonn;
mod ensemble;
mod sweep;

/// Encrypted neural-network inference with CKKS homomorphic encryption.
///
/// A client encrypts an image under its own key; a model holder evaluates a convolutional
/// network on the ciphertext with public evaluation keys only; the client decrypts the
/// prediction. Parameters are 128-bit secure (HomomorphicEncryption.org standard).
#[derive(Parser)]
#[command(name = "blindfold", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job in one process: train (or load a cached model), then classify test images
    /// under encryption and compare with the plaintext model.
    Demo(DemoArgs),
    /// Train a model in plaintext and write it as a safetensors file.
    Train(TrainArgs),
    /// Classify test images under encryption with a trained model.
    Infer(InferArgs),
    /// Encrypted ensemble: several model holders trained on their own shares of the data, a
    /// coordinator combining their encrypted scores; one row per data split.
    Ensemble(ensemble::EnsembleArgs),
    /// Encrypted accuracy, agreement and latency across scale bits and ring degrees: a CSV and
    /// two SVG charts. Points that cannot be 128-bit secure are skipped, with the reason.
    Sweep(sweep::SweepArgs),
    /// CryptoNN: training over data encrypted with functional encryption.
    #[command(subcommand)]
    Cryptonn(cryptonn::CryptonnCommand),
    /// List the CKKS parameter presets and the 128-bit bound each is checked against.
    Params {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Client: make keys for a model's architecture; writes secret.key (keep it), eval.keys
    /// and plan.json (send those to the model holder).
    Keygen {
        /// The model file (only its architecture is read) or a built-in architecture name.
        #[arg(long)]
        model: String,
        /// Directory for the key files.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Client: encrypt one test image into a request file.
    Encrypt {
        /// Directory written by `keygen`.
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Index of the test image.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Output request file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Model holder: evaluate the model on a request with the client's evaluation keys
    /// (public keys only) and write the encrypted scores.
    Evaluate {
        /// The trained model.
        #[arg(long)]
        model: PathBuf,
        /// The client's eval.keys.
        #[arg(long)]
        eval_keys: PathBuf,
        /// The request written by `encrypt`.
        #[arg(long)]
        input: PathBuf,
        /// Output file of encrypted scores.
        #[arg(long)]
        out: PathBuf,
    },
    /// Client: decrypt encrypted scores and print the predicted class.
    Decrypt {
        /// Directory written by `keygen`.
        #[arg(long)]
        keys: PathBuf,
        /// The scores written by `evaluate`.
        #[arg(long)]
        input: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Dataset: mnist, fashion-mnist or kmnist.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: Dataset,
    /// Directory with the four IDX files (.gz or raw). Default: Fashion-MNIST from Debian's
    /// dataset-fashion-mnist package, `../shared/data/DATASET` otherwise.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.dataset.default_dir())
    }
    fn load(&self, split: Split) -> Result<LabeledImages> {
        Ok(load(self.dataset, &self.dir(), split)?)
    }
}

#[derive(Args, Clone)]
struct TrainOpts {
    /// Training epochs [default: 30 for fashion-mnist, 20 otherwise].
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate (Adam, cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f32,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Seed of initialization and shuffling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random translation of training images, in pixels (data augmentation; 0 disables)
    /// [default: 1 for fashion-mnist, 2 otherwise].
    #[arg(long)]
    max_shift: Option<usize>,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Activation of every hidden layer: square (x², CryptoNets), or relu-poly2, relu-poly3,
    /// relu-poly4 (least-squares polynomial fits of ReLU on the pre-activation range seen in
    /// training, trained with the polynomial in the loop).
    #[arg(long, default_value = "square")]
    activation: String,
}

impl TrainOpts {
    /// The built-in architecture `name` with this activation.
    fn arch_spec(&self, name: &str) -> Result<ArchSpec> {
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
    fn model_file(&self, dataset: Dataset, arch: &str) -> String {
        match self.activation.as_str() {
            "square" => format!("{dataset}-{arch}.safetensors"),
            act => format!("{dataset}-{arch}-{act}.safetensors"),
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture: tenseal-cnn1, cryptonets, cnn2 or lenet5.
    #[arg(long, default_value = "tenseal-cnn1")]
    arch: String,
    #[command(flatten)]
    opts: TrainOpts,
    /// Output model file (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone, Copy)]
struct ChainArgs {
    /// Scale bits of the CKKS chain (every rescaled prime has this size) [default: the most the
    /// smallest 128-bit ring that holds the network allows, up to 40].
    #[arg(long)]
    scale_bits: Option<u32>,
    /// Ring degree log2 N (13, 14 or 15) [default: the smallest that holds the network].
    #[arg(long)]
    log_n: Option<u32>,
}

impl ChainArgs {
    fn options(&self) -> ChainOptions {
        ChainOptions { log_n: self.log_n, scale_bits: self.scale_bits, ..ChainOptions::default() }
    }
}

#[derive(Args)]
struct EvalOpts {
    /// Number of test images to classify under encryption.
    #[arg(long, default_value_t = 100)]
    n_test: usize,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Threads (default: all cores). Each image's encryption, evaluation and decryption
    /// use them all (lowest latency per image).
    #[arg(long)]
    threads: Option<usize>,
    /// Images in flight at once, sharing the threads: raise to the thread count for the
    /// highest throughput on many images (latencies then include waiting for the other
    /// images' work).
    #[arg(long, default_value_t = 1)]
    parallel_images: usize,
    #[command(flatten)]
    chain: ChainArgs,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture: tenseal-cnn1, cryptonets, cnn2 or lenet5.
    #[arg(long, default_value = "tenseal-cnn1")]
    arch: String,
    #[command(flatten)]
    eval: EvalOpts,
    #[command(flatten)]
    opts: TrainOpts,
    /// Where trained models are cached.
    #[arg(long, default_value = "models")]
    model_dir: PathBuf,
}

#[derive(Args)]
struct InferArgs {
    /// The trained model.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    eval: EvalOpts,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo(a),
        Command::Train(a) => train_cmd(a).map(|_| ()),
        Command::Infer(a) => infer_cmd(a),
        Command::Ensemble(a) => ensemble::ensemble_cmd(a),
        Command::Sweep(a) => sweep::sweep_cmd(a),
        Command::Cryptonn(c) => cryptonn::cryptonn_cmd(c),
        Command::Params { json } => params_cmd(json),
        Command::Keygen { model, out_dir } => keygen_cmd(&model, &out_dir),
        Command::Encrypt { keys, data, index, out } => encrypt_cmd(&keys, &data, index, &out),
        Command::Evaluate { model, eval_keys, input, out } => evaluate_cmd(&model, &eval_keys, &input, &out),
        Command::Decrypt { keys, input, json } => decrypt_cmd(&keys, &input, json),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Prints above the progress bar, or to stderr when the bar is hidden (not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn train_model(arch: &str, data: &DataArgs, opts: &TrainOpts, out: &Path) -> Result<Model> {
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
fn train_on(
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

fn train_cmd(a: TrainArgs) -> Result<Model> {
    train_model(&a.arch, &a.data, &a.opts, &a.out)
}

fn demo(a: DemoArgs) -> Result<()> {
    let path = a.model_dir.join(a.opts.model_file(a.data.dataset, &a.arch));
    let model = match cached_model(&path, &a.opts.arch_spec(&a.arch)?) {
        Some(m) => {
            eprintln!("using cached model {}", path.display());
            m
        }
        None => train_model(&a.arch, &a.data, &a.opts, &path)?,
    };
    run_inference(model, &a.data, &a.eval)
}

/// The model at `path` if it exists, loads and has the architecture `arch` (up to fitted
/// coefficients).
fn cached_model(path: &Path, arch: &ArchSpec) -> Option<Model> {
    Model::load(path).ok().filter(|(_, file)| same_structure(&file.arch, arch)).map(|(m, _)| m)
}

fn infer_cmd(a: InferArgs) -> Result<()> {
    let (model, _) = Model::load(&a.model)?;
    run_inference(model, &a.data, &a.eval)
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
}

#[derive(Serialize)]
struct ClientMs {
    encrypt_p50: f64,
    decrypt_p50: f64,
}

#[derive(Serialize)]
struct Bytes {
    ciphertext_in: usize,
    ciphertext_out: usize,
    eval_keys: usize,
    /// The largest evaluation-keys message the model holder accepts for this plan.
    max_eval_keys: usize,
    /// The largest request the model holder accepts for this plan.
    max_request: usize,
}

#[derive(Serialize)]
struct ParamsReport {
    log_n: u32,
    log_qp: f64,
    security_bits: u32,
    preset: String,
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    arch: String,
    n: usize,
    plain_accuracy: f64,
    encrypted_accuracy: f64,
    agreement: f64,
    server_ms: Percentiles,
    client_ms: ClientMs,
    bytes: Bytes,
    params: ParamsReport,
    threads: usize,
    parallel_images: usize,
    depth: usize,
    rotation_keys: usize,
    input_ciphertexts: usize,
    /// The circuit's stages: levels, rotations, products of each.
    stages: Vec<blindfold_tensor::StageCost>,
    /// ReLU fits: fitted range against the pre-activations of the first 1,000 test images.
    activation_ranges: Vec<blindfold_nn::ActivationRange>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Result of one image: (encrypted argmax, plaintext argmax, label, server ms, encrypt ms,
/// decrypt ms, request bytes, reply bytes).
type ImageResult = (usize, usize, u8, f64, f64, f64, usize, usize);

fn run_inference(mut model: Model, data: &DataArgs, opts: &EvalOpts) -> Result<()> {
    let test = data.load(Split::Test)?.truncate(opts.n_test);
    let params = compile::parameters(model.spec(), &opts.chain.options())?;
    let report = encrypted_inference(&mut model, &params, &test, data.dataset, opts.threads, opts.parallel_images)?;
    print_report(&report);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Encrypted inference of `model` compiled for `params` on every image of `test`: client and
/// model holder exchanging bytes, `parallel_images` images at a time on `threads` threads.
///
/// The client makes its keys from the plan of the architecture alone, before the model is
/// compiled (the two never hold their large objects at once), and refuses a compiled plan
/// that differs from it.
fn encrypted_inference(
    model: &mut Model,
    params: &Parameters,
    test: &LabeledImages,
    dataset: Dataset,
    threads: Option<usize>,
    parallel_images: usize,
) -> Result<Report> {
    let n = test.len();
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |t| t.get())).max(1);
    let workers = parallel_images.clamp(1, threads);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let arch = model.spec().name.clone();
    let info = PlanInfo::for_parameters(model.spec(), params)?;
    let (client, keys) = pool.install(|| Client::new(&info))?;
    let key_bytes = keys.to_bytes().len();
    let compiled = pool.install(|| CompiledModel::with_parameters(model, params))?;
    if compiled.info() != &info {
        bail!("the compiled model's plan differs from its architecture's");
    }
    let limits = ModelHolder::new(compiled.clone());
    let compiled = &compiled;
    let params = info.parameters()?;
    let preset = info.parameters_name();
    let plain_logits = {
        let imgs: Vec<&[u8]> = (0..n).map(|i| test.images.image(i)).collect();
        let mut all = Vec::with_capacity(n);
        for chunk in imgs.chunks(500) {
            let l = model.logits(chunk)?;
            all.extend(l.rows().into_iter().map(|r| argmax(r.as_slice().expect("row-major"))));
        }
        all
    };
    let pb = bar(n as u64, "encrypted");
    let mut results: Vec<Option<ImageResult>> = vec![None; n];
    // Each worker is a client/model-holder pair sharing the same keys: the holder gets the
    // client's evaluation keys once, then images are exchanged as bytes. Workers run on the
    // thread pool, so the parallel loops inside each operation start on their own thread.
    let chunks: Vec<Vec<usize>> = (0..workers).map(|t| (t..n).step_by(workers).collect()).collect();
    let outputs: Vec<Result<Vec<(usize, ImageResult)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|idx| {
                let (compiled, keys_ref, info_ref, pb, test, plain_logits, pool) =
                    (compiled, &keys, &info, &pb, test, &plain_logits, &pool);
                let sk_bytes = client.secret_key().to_bytes(); // zeroized on drop
                scope.spawn(move || {
                    pool.install(|| -> Result<Vec<(usize, ImageResult)>> {
                        let mut holder = ModelHolder::new(compiled.clone());
                        holder.handle(keys_ref)?;
                        let sk = SecretKey::from_bytes(&sk_bytes?, compiled.context())?;
                        let mut client = Client::with_secret_key(info_ref, &sk)?;
                        client.set_key_id(KeyId::of(keys_ref).context("evaluation keys")?);
                        let mut out = Vec::with_capacity(idx.len());
                        for &i in idx {
                            let t0 = Instant::now();
                            let request = client.encrypt_pixels(test.images.image(i))?.to_bytes();
                            let t1 = Instant::now();
                            let reply = holder.handle_bytes(&request)?.context("the model holder sent no reply")?;
                            let t2 = Instant::now();
                            let scores = client.decrypt_scores(&Message::from_bytes(&reply)?)?;
                            let t3 = Instant::now();
                            let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
                            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                            out.push((
                                i,
                                (
                                    argmax(&s32),
                                    plain_logits[i],
                                    test.labels[i],
                                    ms(t1, t2),
                                    ms(t0, t1),
                                    ms(t2, t3),
                                    request.len(),
                                    reply.len(),
                                ),
                            ));
                            pb.inc(1);
                        }
                        Ok(out)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread panicked")).collect()
    });
    pb.finish_and_clear();
    for o in outputs {
        for (i, r) in o? {
            results[i] = Some(r);
        }
    }
    let results: Vec<ImageResult> = results.into_iter().map(|r| r.expect("every image evaluated")).collect();
    let count = |f: &dyn Fn(&ImageResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n.max(1) as f64;
    let encrypted_accuracy = count(&|r| r.0 == r.2 as usize);
    let plain_accuracy = count(&|r| r.1 == r.2 as usize);
    let agreement = count(&|r| r.0 == r.1);
    let mut server: Vec<f64> = results.iter().map(|r| r.3).collect();
    let mut enc: Vec<f64> = results.iter().map(|r| r.4).collect();
    let mut dec: Vec<f64> = results.iter().map(|r| r.5).collect();
    Ok(Report {
        dataset: dataset.to_string(),
        arch: arch.clone(),
        n,
        plain_accuracy,
        encrypted_accuracy,
        agreement,
        server_ms: Percentiles { p50: percentile(&mut server, 0.5), p95: percentile(&mut server, 0.95) },
        client_ms: ClientMs { encrypt_p50: percentile(&mut enc, 0.5), decrypt_p50: percentile(&mut dec, 0.5) },
        bytes: Bytes {
            ciphertext_in: results.first().map_or(0, |r| r.6),
            ciphertext_out: results.first().map_or(0, |r| r.7),
            eval_keys: key_bytes,
            max_eval_keys: limits.max_keys_len(),
            max_request: limits.max_image_len(),
        },
        params: ParamsReport {
            log_n: params.log_n(),
            log_qp: params.log_qp(),
            security_bits: 128,
            preset: preset.clone(),
        },
        threads,
        parallel_images: workers,
        depth: info.depth,
        rotation_keys: info.rotation_keys.len(),
        input_ciphertexts: compiled.circuit().packing().ciphertexts(),
        stages: compiled.circuit().costs(),
        activation_ranges: model.activation_ranges(&test.clone().truncate(1000))?,
    })
}

fn print_report(report: &Report) {
    eprintln!(
        "circuit: depth {}, {} rotation keys, {} input ciphertext(s), parameters {}",
        report.depth, report.rotation_keys, report.input_ciphertexts, report.params.preset
    );
    for s in &report.stages {
        eprintln!(
            "  {:<70} levels {}, key switches {:>2} ({} hoisted), plaintext products {:>3}",
            s.name,
            s.levels,
            s.key_switches(),
            s.hoisted_rotations,
            s.plain_products
        );
    }
    println!("{:<22} {}", "dataset", report.dataset);
    println!("{:<22} {}", "architecture", report.arch);
    println!("{:<22} {}", "test images", report.n);
    println!("{:<22} {:.2}%", "plaintext accuracy", 100.0 * report.plain_accuracy);
    println!("{:<22} {:.2}%", "encrypted accuracy", 100.0 * report.encrypted_accuracy);
    println!("{:<22} {:.2}%", "agreement", 100.0 * report.agreement);
    println!(
        "{:<22} p50 {:.1} ms, p95 {:.1} ms ({} threads, {} image(s) at a time)",
        "server per image", report.server_ms.p50, report.server_ms.p95, report.threads, report.parallel_images
    );
    println!(
        "{:<22} encrypt {:.1} ms, decrypt {:.1} ms (p50)",
        "client per image", report.client_ms.encrypt_p50, report.client_ms.decrypt_p50
    );
    println!(
        "{:<22} in {:.2} MB, out {:.2} MB, evaluation keys {:.1} MB",
        "traffic",
        report.bytes.ciphertext_in as f64 / 1e6,
        report.bytes.ciphertext_out as f64 / 1e6,
        report.bytes.eval_keys as f64 / 1e6
    );
    println!(
        "{:<22} requests up to {:.2} MB, evaluation keys up to {:.1} MB (larger ones are refused unread)",
        "model holder limits",
        report.bytes.max_request as f64 / 1e6,
        report.bytes.max_eval_keys as f64 / 1e6
    );
    println!(
        "{:<22} {} (N = 2^{}, log2 QP = {:.1}, 128-bit), depth {}, {} rotation keys",
        "parameters",
        report.params.preset,
        report.params.log_n,
        report.params.log_qp,
        report.depth,
        report.rotation_keys
    );
    for r in &report.activation_ranges {
        println!("{:<22} {r}", "activation range");
    }
}

fn params_cmd(json: bool) -> Result<()> {
    #[derive(Serialize)]
    struct Row {
        preset: &'static str,
        log_n: u32,
        q_bits: Vec<f64>,
        p_bits: Vec<f64>,
        log_qp: f64,
        bound_128bit: u32,
        depth: usize,
        log_default_scale: u32,
        dnum: usize,
    }
    let rows: Vec<Row> = presets::PRESETS
        .iter()
        .map(|p| {
            let params = p.parameters()?;
            let bits = |v: &[u64]| v.iter().map(|&q| ((q as f64).log2() * 100.0).round() / 100.0).collect::<Vec<_>>();
            Ok(Row {
                preset: p.name,
                log_n: p.log_n,
                q_bits: bits(params.q()),
                p_bits: bits(params.p()),
                log_qp: (params.log_qp() * 100.0).round() / 100.0,
                bound_128bit: max_log_qp_128bit(params.n()).unwrap_or(0),
                depth: p.depth(),
                log_default_scale: p.log_default_scale,
                dnum: params.dnum(),
            })
        })
        .collect::<Result<_>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>6} {:>9} {:>6} {:>6}  chain (bits of each prime; special primes after |)",
        "preset", "N", "depth", "log2 QP", "bound", "scale"
    );
    for r in rows {
        let chain: Vec<String> = r.q_bits.iter().map(|b| format!("{b:.1}")).collect();
        let special: Vec<String> = r.p_bits.iter().map(|b| format!("{b:.1}")).collect();
        println!(
            "{:<24} {:>6} {:>6} {:>9.2} {:>6} {:>6}  {} | {}",
            r.preset,
            1u64 << r.log_n,
            r.depth,
            r.log_qp,
            r.bound_128bit,
            format!("2^{}", r.log_default_scale),
            chain.join(" "),
            special.join(" ")
        );
    }
    println!(
        "\nEvery preset is checked at construction against the HomomorphicEncryption.org 128-bit bound\n\
         (uniform ternary secret, sigma = 3.2). Encrypted inference generates its chain from the\n\
         network's depth (the smallest secure ring, the largest scale up to 2^40) and checks it the same way."
    );
    Ok(())
}

fn arch_of(model_or_arch: &str) -> Result<ArchSpec> {
    if ArchSpec::BUILTIN.contains(&model_or_arch) {
        return Ok(ArchSpec::builtin(model_or_arch)?);
    }
    Ok(Model::load(Path::new(model_or_arch))?.1.arch)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes secret bytes to a new file that only its owner can read (mode 0600 from creation
/// on Unix: any old file is removed first, so no other mode is ever in force).
fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()))
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// Largest plan.json, key id or secret key file read (1 MiB; the real ones are a few KB).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads `path` if it holds at most `limit` bytes (checked before reading).
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    blindfold_nn::read_bounded(path, limit).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

fn keygen_cmd(model: &str, out_dir: &Path) -> Result<()> {
    let arch = arch_of(model)?;
    let info = PlanInfo::for_architecture(&arch, &ChainOptions::default())
        .with_context(|| format!("compiling the architecture of {model}"))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (client, keys) = Client::new(&info)?;
    let sk_path = out_dir.join("secret.key");
    write_secret_file(&sk_path, &client.secret_key().to_bytes()?)?;
    let keys_bytes = keys.to_bytes();
    write_file(&out_dir.join("eval.keys"), &keys_bytes)?;
    let key_id = client.key_id().context("the client made evaluation keys")?;
    write_file(&out_dir.join("key.id"), format!("{}\n", key_id.to_hex()).as_bytes())?;
    write_file(&out_dir.join("plan.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
    println!(
        "wrote {} (secret: keep it), eval.keys ({:.1} MB), key.id and plan.json to {}",
        sk_path.display(),
        keys_bytes.len() as f64 / 1e6,
        out_dir.display()
    );
    Ok(())
}

fn load_client(keys: &Path) -> Result<Client> {
    let plan_path = keys.join("plan.json");
    let info: PlanInfo = serde_json::from_slice(&read_file(&plan_path, MAX_SMALL_FILE)?)
        .with_context(|| format!("{} is not a plan file", plan_path.display()))?;
    let ctx = blindfold_ckks::Context::new(&info.parameters().with_context(|| format!("{}", plan_path.display()))?)?;
    let sk_path = keys.join("secret.key");
    let sk_bytes = zeroize::Zeroizing::new(read_file(&sk_path, MAX_SMALL_FILE)?);
    let sk = SecretKey::from_bytes(&sk_bytes, &ctx).with_context(|| format!("loading {}", sk_path.display()))?;
    let mut client =
        Client::with_secret_key(&info, &sk).with_context(|| format!("{} does not fit its key", plan_path.display()))?;
    let id_path = keys.join("key.id");
    let id = String::from_utf8_lossy(&read_file(&id_path, MAX_SMALL_FILE)?).into_owned();
    client.set_key_id(KeyId::from_hex(&id).with_context(|| format!("reading {}", id_path.display()))?);
    Ok(client)
}

fn encrypt_cmd(keys: &Path, data: &DataArgs, index: usize, out: &Path) -> Result<()> {
    let mut client = load_client(keys)?;
    let test = data.load(Split::Test)?;
    if index >= test.len() {
        bail!("--index {index} is out of range: the test set has {} images", test.len());
    }
    let msg = client.encrypt_pixels(test.images.image(index))?.to_bytes();
    write_file(out, &msg)?;
    println!(
        "encrypted test image {index} (label {}) into {} ({:.2} MB)",
        test.labels[index],
        out.display(),
        msg.len() as f64 / 1e6
    );
    Ok(())
}

fn evaluate_cmd(model: &Path, eval_keys: &Path, input: &Path, out: &Path) -> Result<()> {
    let (m, _) = Model::load(model)?;
    let compiled =
        CompiledModel::new(&m, &ChainOptions::default()).with_context(|| format!("compiling {}", model.display()))?;
    let mut holder = ModelHolder::new(compiled);
    // Each file is bounded by what the plan allows before it is read.
    let keys = Message::from_bytes_limited(&read_file(eval_keys, holder.max_keys_len() as u64)?, holder.max_keys_len())
        .with_context(|| format!("reading {}", eval_keys.display()))?;
    holder.handle(&keys).with_context(|| format!("loading evaluation keys {}", eval_keys.display()))?;
    let request =
        Message::from_bytes_limited(&read_file(input, holder.max_image_len() as u64)?, holder.max_image_len())
            .with_context(|| format!("reading {}", input.display()))?;
    let t = Instant::now();
    let reply = holder
        .handle(&request)
        .with_context(|| format!("evaluating {} with the keys of {}", input.display(), eval_keys.display()))?
        .context("the request produced no reply")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = reply.to_bytes();
    write_file(out, &bytes)?;
    println!("evaluated {} in {ms:.1} ms; wrote encrypted scores to {}", input.display(), out.display());
    Ok(())
}

fn decrypt_cmd(keys: &Path, input: &Path, json: bool) -> Result<()> {
    let client = load_client(keys)?;
    let limit = Ciphertext::max_size(client.context()) + 64;
    let bytes = read_file(input, limit as u64)?;
    if read_header(&bytes).is_ok() {
        bail!("{} is a bare CKKS object, expected the scores file written by `blindfold evaluate`", input.display());
    }
    let msg = Message::from_bytes_limited(&bytes, limit).with_context(|| format!("reading {}", input.display()))?;
    let scores = client
        .decrypt_scores(&msg)
        .with_context(|| format!("decrypting {} with the keys in {}", input.display(), keys.display()))?;
    let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
    let class = argmax(&s32);
    if json {
        println!("{}", serde_json::json!({ "class": class, "scores": scores }));
    } else {
        println!("predicted class {class}");
        for (i, s) in scores.iter().enumerate() {
            println!("  {i}: {s:>9.3}");
        }
    }
    Ok(())
}
