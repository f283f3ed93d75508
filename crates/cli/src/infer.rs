//! `blindfold demo` and `blindfold infer`: encrypted inference on test images, client and
//! model holder exchanging bytes in one process.

use crate::import::{load_model, ImportArgs};
use crate::progress::bar;
use crate::report::{percentile, print_report, Bytes, ClientMs, ParamsReport, Percentiles, Report};
use crate::train::{cached_model, train_model, TrainOpts};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::bfv::BfvDecryptor;
use blindfold_ckks::serialize::serialize;
use blindfold_ckks::{
    Decryptor, Encoder, Encryptor, Evaluator, KeyGenerator, Parameters, SecretKey, SymmetricEncryptor,
};
use blindfold_data::{Dataset, LabeledImages, Split};
use blindfold_nn::compile::{self, BfvOptions, ChainOptions, CompiledBatch, CompiledBfv};
use blindfold_nn::{argmax, Model};
use blindfold_protocol::{Client, CompiledModel, KeyId, Message, ModelHolder, PlanInfo};
use clap::Args;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Clone, Copy)]
pub(crate) struct ChainArgs {
    /// Scale bits of the CKKS chain (every rescaled prime has this size) [default: the most the
    /// smallest 128-bit ring that holds the network allows, up to 40].
    #[arg(long)]
    pub(crate) scale_bits: Option<u32>,
    /// Ring degree log2 N (13, 14 or 15) [default: the smallest that holds the network].
    #[arg(long)]
    pub(crate) log_n: Option<u32>,
}

impl ChainArgs {
    pub(crate) fn options(&self) -> ChainOptions {
        ChainOptions { log_n: self.log_n, scale_bits: self.scale_bits, ..ChainOptions::default() }
    }
}

#[derive(Args)]
pub(crate) struct EvalOpts {
    /// Number of test images to classify under encryption.
    #[arg(long, default_value_t = 100)]
    pub(crate) n_test: usize,
    /// Write a machine-readable report here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write the decrypted scores here as a NumPy file (float64, [n, classes], test images in
    /// order), e.g. to compare them with another runtime's logits.
    #[arg(long, value_name = "PATH.npy")]
    pub(crate) logits_out: Option<PathBuf>,
    /// Threads (default: all cores). Each image's encryption, evaluation and decryption
    /// use them all (lowest latency per image).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Images in flight at once, sharing the threads: raise to the thread count for the
    /// highest throughput on many images (latencies then include waiting for the other
    /// images' work).
    #[arg(long, default_value_t = 1)]
    pub(crate) parallel_images: usize,
    /// How images are packed: `single` (one image spread over the slots of a few
    /// ciphertexts; lowest latency) or `batch` (slot s of every ciphertext is image s, one
    /// ciphertext per pixel; thousands of images per evaluation, highest throughput).
    #[arg(long, value_enum, default_value_t = PackingArg::Single)]
    pub(crate) packing: PackingArg,
    /// Scheme: `ckks` (approximate arithmetic on reals) or `bfv` (exact arithmetic on
    /// integers: the network is quantized, pixels go in as 8-bit integers, and the scores
    /// equal the integer network's exactly; batch packing only).
    #[arg(long, value_enum, default_value_t = SchemeArg::Ckks)]
    pub(crate) scheme: SchemeArg,
    /// BFV: bits of each layer's largest integer weight, sign included (fewer bits: a
    /// smaller plaintext space and less noise, a coarser network; 6 keeps CryptoNets' MNIST
    /// accuracy, BENCHMARKS.md).
    #[arg(long, default_value_t = 6)]
    pub(crate) weight_bits: u32,
    /// Circuit privacy at this statistical security λ (bits): the model holder adds a fresh
    /// encryption of zero under the client's public key to each score ciphertext and floods
    /// it with noise 2^λ times its own, so the decryption shows the scores and nothing else of
    /// the weights. BFV: uniform noise, the chain grows by about λ + log2(N·k) − 10 bits
    /// (CryptoNets: one 50-bit prime, 21% of the throughput); on by default, 0 switches it
    /// off (for benchmarks). CKKS (single packing): off by default; the scores keep the
    /// flooding as Gaussian noise (at most 2^-7 standard deviation, or the plan is refused),
    /// so λ is bounded by the network's precision — one more level for the mask, the largest
    /// scale, a larger ring (CryptoNets: up to λ = 20 at N = 2^14). SECURITY.md.
    /// [default: 40 on BFV, off on CKKS]
    #[arg(long, value_name = "BITS")]
    pub(crate) circuit_privacy: Option<u32>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SchemeArg {
    /// CKKS.
    Ckks,
    /// BFV.
    Bfv,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PackingArg {
    /// One image per evaluation.
    Single,
    /// N/2 images per evaluation, one per slot.
    Batch,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Architecture: tenseal-cnn1, cryptonets, cnn2 or lenet5.
    #[arg(long, default_value = "tenseal-cnn1")]
    pub(crate) arch: String,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
    #[command(flatten)]
    pub(crate) opts: TrainOpts,
    /// Where trained models are cached.
    #[arg(long, default_value = "models")]
    pub(crate) model_dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct InferArgs {
    /// The trained model: a blindfold model file, or an ONNX file (e.g. from
    /// `torch.onnx.export`).
    #[arg(long)]
    pub(crate) model: PathBuf,
    #[command(flatten)]
    pub(crate) import: ImportArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
}

pub(crate) fn demo(a: DemoArgs) -> Result<()> {
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

pub(crate) fn infer_cmd(a: InferArgs) -> Result<()> {
    let model = load_model(&a.model, &a.import, Some(&a.data))?.model;
    run_inference(model, &a.data, &a.eval)
}

/// What one image gave.
#[derive(Clone)]
struct ImageResult {
    /// The class of the decrypted scores.
    encrypted_class: usize,
    /// The plaintext model's class.
    plain_class: usize,
    label: u8,
    server_ms: f64,
    encrypt_ms: f64,
    decrypt_ms: f64,
    request_bytes: usize,
    reply_bytes: usize,
    /// The decrypted scores.
    scores: Vec<f64>,
}

fn run_inference(mut model: Model, data: &DataArgs, opts: &EvalOpts) -> Result<()> {
    let test = data.load(Split::Test)?.truncate(opts.n_test);
    let input = model.spec().input;
    if !test.is_empty() && test.images.image(0).len() != input.len() {
        bail!(
            "the model takes {input} inputs ({} values); {} images have {} pixels",
            input.len(),
            data.dataset,
            test.images.image(0).len()
        );
    }
    if opts.packing == PackingArg::Batch && opts.parallel_images != 1 {
        bail!("--parallel-images applies to single packing; a batch already fills every thread");
    }
    if (opts.scheme, opts.packing) == (SchemeArg::Ckks, PackingArg::Batch) && opts.circuit_privacy.is_some() {
        bail!(
            "--circuit-privacy applies to --scheme bfv and to CKKS in single packing: CKKS batch responses are not \
             flooded (SECURITY.md)"
        );
    }
    let report = match (opts.scheme, opts.packing) {
        (SchemeArg::Bfv, PackingArg::Single) => {
            bail!("BFV runs in batch packing only (one image per slot): add --packing batch, or use --scheme ckks")
        }
        (SchemeArg::Bfv, PackingArg::Batch) => {
            if opts.chain.scale_bits.is_some() {
                bail!("--scale-bits sets a CKKS chain; BFV chooses its own (set --weight-bits or --log-n)");
            }
            let lambda = opts.circuit_privacy.unwrap_or(compile::DEFAULT_CIRCUIT_PRIVACY_BITS);
            let bfv = BfvOptions {
                weight_bits: opts.weight_bits,
                log_n: opts.chain.log_n,
                circuit_privacy: (lambda > 0).then_some(lambda),
            };
            bfv_inference(&mut model, &bfv, &test, data.dataset, opts.threads)?
        }
        (SchemeArg::Ckks, PackingArg::Single) => {
            let chain =
                ChainOptions { circuit_privacy: opts.circuit_privacy.filter(|&l| l > 0), ..opts.chain.options() };
            let plan = match chain.circuit_privacy {
                None => Plan::Parameters(compile::parameters(model.spec(), &chain)?),
                // The ring is chosen by the calibration of the flooding: compile first.
                Some(_) => Plan::Compiled(CompiledModel::new(&model, &chain)?),
            };
            encrypted_inference(&mut model, plan, &test, data.dataset, opts.threads, opts.parallel_images)?
        }
        (SchemeArg::Ckks, PackingArg::Batch) => {
            let params = compile::batch_parameters(model.spec(), &opts.chain.options())?;
            batch_inference(&mut model, &params, &test, data.dataset, opts.threads)?
        }
    };
    print_report(&report);
    if let Some(path) = &opts.logits_out {
        let classes = report.scores.first().map_or(0, Vec::len);
        let scores = ndarray::Array2::from_shape_vec((report.scores.len(), classes), report.scores.concat())?;
        ndarray_npy::write_npy(path, &scores).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the decrypted scores to {}", path.display());
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// What [`encrypted_inference`] runs on: parameters (the model is compiled after the client
/// made its keys), or a model compiled already (circuit privacy, whose ring the calibration
/// chose).
pub(crate) enum Plan {
    Parameters(Parameters),
    Compiled(std::sync::Arc<CompiledModel>),
}

/// Encrypted inference of `model` compiled for `plan` on every image of `test`: client and
/// model holder exchanging bytes, `parallel_images` images at a time on `threads` threads.
///
/// On parameters, the client makes its keys from the plan of the architecture alone, before
/// the model is compiled (the two never hold their large objects at once), and refuses a
/// compiled plan that differs from it.
pub(crate) fn encrypted_inference(
    model: &mut Model,
    plan: Plan,
    test: &LabeledImages,
    dataset: Dataset,
    threads: Option<usize>,
    parallel_images: usize,
) -> Result<Report> {
    let start = Instant::now();
    let n = test.len();
    let threads = thread_count(threads);
    let workers = parallel_images.clamp(1, threads);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let arch = model.spec().name.clone();
    let info = match &plan {
        Plan::Parameters(params) => PlanInfo::for_parameters(model.spec(), params)?,
        Plan::Compiled(c) => c.info().clone(),
    };
    let (client, keys) = pool.install(|| Client::new(&info))?;
    let key_bytes = keys.to_bytes().len();
    let compiled = match plan {
        Plan::Parameters(params) => pool.install(|| CompiledModel::with_parameters(model, &params))?,
        Plan::Compiled(c) => c,
    };
    if compiled.info() != &info {
        bail!("the compiled model's plan differs from its architecture's");
    }
    let compiled = &compiled;
    let params = info.parameters()?;
    let preset = info.parameters_name();
    let plain_logits = plain_classes(model, test)?;
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
                                ImageResult {
                                    encrypted_class: argmax(&s32),
                                    plain_class: plain_logits[i],
                                    label: test.labels[i],
                                    server_ms: ms(t1, t2),
                                    encrypt_ms: ms(t0, t1),
                                    decrypt_ms: ms(t2, t3),
                                    request_bytes: request.len(),
                                    reply_bytes: reply.len(),
                                    scores,
                                },
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
    let encrypted_accuracy = count(&|r| r.encrypted_class == r.label as usize);
    let plain_accuracy = count(&|r| r.plain_class == r.label as usize);
    let agreement = count(&|r| r.encrypted_class == r.plain_class);
    let mut server: Vec<f64> = results.iter().map(|r| r.server_ms).collect();
    let server_p50 = percentile(&mut server, 0.5);
    let mut enc: Vec<f64> = results.iter().map(|r| r.encrypt_ms).collect();
    let mut dec: Vec<f64> = results.iter().map(|r| r.decrypt_ms).collect();
    Ok(Report {
        dataset: dataset.to_string(),
        arch: arch.clone(),
        n,
        plain_accuracy,
        encrypted_accuracy,
        agreement,
        server_ms: Percentiles { p50: server_p50, p95: percentile(&mut server, 0.95) },
        client_ms: ClientMs { encrypt_p50: percentile(&mut enc, 0.5), decrypt_p50: percentile(&mut dec, 0.5) },
        bytes: Bytes {
            ciphertext_in: results.first().map_or(0, |r| r.request_bytes),
            ciphertext_out: results.first().map_or(0, |r| r.reply_bytes),
            eval_keys: key_bytes,
            max_eval_keys: compiled.max_keys_len(),
            max_request: compiled.max_image_len(),
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
        scheme: "ckks".into(),
        packing: "single".into(),
        batch_size: 1,
        batch_latency_s: server_p50 / 1e3,
        images_per_second: n as f64 / start.elapsed().as_secs_f64(),
        server_images_per_second: None,
        stage_seconds: Vec::new(),
        exact_scores: None,
        plaintext_moduli: Vec::new(),
        circuit_privacy_bits: info.circuit_privacy,
        flooding_width: compiled.flooding().map(|f| f.width),
        activation_ranges: model.activation_ranges(&test.clone().truncate(1000))?,
        scores: results.into_iter().map(|r| r.scores).collect(),
    })
}

fn thread_count(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |t| t.get())).max(1)
}

/// Encrypted inference in batch packing: the client encrypts each batch of up to `N/2` test
/// images as one ciphertext per input feature (slot `s` is image `s`), the model holder
/// evaluates the batch circuit on them with the relinearization key alone, the client
/// decrypts one ciphertext per class.
pub(crate) fn batch_inference(
    model: &mut Model,
    params: &Parameters,
    test: &LabeledImages,
    dataset: Dataset,
    threads: Option<usize>,
) -> Result<Report> {
    on_pool(threads, |threads, start| batch_inference_on(model, params, test, dataset, threads, start))
}

/// Runs `f(threads, start)` on a pool of `threads` threads (default: every core).
fn on_pool<T: Send>(threads: Option<usize>, f: impl FnOnce(usize, Instant) -> Result<T> + Send) -> Result<T> {
    let start = Instant::now();
    let threads = thread_count(threads);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build()?.install(|| f(threads, start))
}

fn batch_inference_on(
    model: &mut Model,
    params: &Parameters,
    test: &LabeledImages,
    dataset: Dataset,
    threads: usize,
    start: Instant,
) -> Result<Report> {
    let n = test.len();
    // Model holder: the compiled batch circuit.
    let compiled = CompiledBatch::with_parameters(model, params)?;
    let circuit = &compiled.circuit;
    let ctx = &compiled.ctx;
    check_batch_memory(
        &model.spec().name,
        circuit.peak_residues(),
        ctx.n(),
        "use --packing single, or a machine with more memory",
    )?;
    let eval = Evaluator::new(ctx);
    // Client: its keys; only the relinearization key goes to the model holder.
    let mut keygen = KeyGenerator::new(ctx)?;
    let rlk = keygen.relinearization_key();
    let key_bytes = serialize(&rlk, ctx)?.len();
    let encoder = Encoder::new(ctx);
    let mut encryptor = SymmetricEncryptor::new(keygen.secret_key())?;
    let decryptor = Decryptor::new(keygen.secret_key());
    let (level, scale) = (ctx.max_level(), compile::input_scale(ctx));
    let slots = params.slots();
    let batches = n.div_ceil(slots);
    let normalization = &model.spec().normalization;

    let stages = circuit.stages().len();
    let pb = bar((batches * stages) as u64, "batch layers");
    let mut stage_seconds = vec![0.0; stages];
    let (mut server_s, mut encrypt_s, mut decrypt_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bytes_in, mut bytes_out) = (0, 0);
    let mut scores: Vec<Vec<f64>> = Vec::with_capacity(n);
    for b in 0..batches {
        let images: Vec<Vec<f32>> =
            (b * slots..n.min((b + 1) * slots)).map(|i| normalization.apply(test.images.image(i))).collect();
        let t0 = Instant::now();
        let pts = (0..circuit.inputs())
            .into_par_iter()
            .map(|f| {
                let values: Vec<f64> = images.iter().map(|x| f64::from(x[f])).collect();
                encoder.encode_real(&values, level, scale)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let request = encryptor.encrypt_batch(&pts)?;
        drop(pts);
        let t1 = Instant::now();
        if b == 0 {
            bytes_in = request.len() * serialize(&request[0], ctx)?.len();
        }
        let inputs: Vec<_> = request.par_iter().map(|c| c.expand(ctx)).collect();
        drop(request);
        let reply = circuit.evaluate_observed(&eval, &inputs, &rlk, |i, secs| {
            stage_seconds[i] += secs;
            pb.inc(1);
        })?;
        drop(inputs);
        let t2 = Instant::now();
        if b == 0 {
            bytes_out = reply.len() * serialize(&reply[0], ctx)?.len();
        }
        let outputs = reply
            .par_iter()
            .map(|c| encoder.decode_real(&decryptor.decrypt(c)?))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        scores.extend((0..images.len()).map(|s| outputs.iter().map(|o| o[s]).collect::<Vec<f64>>()));
        let t3 = Instant::now();
        server_s.push((t2 - t1).as_secs_f64());
        encrypt_s.push((t1 - t0).as_secs_f64());
        decrypt_s.push((t3 - t2).as_secs_f64());
    }
    pb.finish_and_clear();
    let run = BatchRun {
        start,
        check_s: 0.0,
        threads,
        slots,
        scores,
        server_s,
        encrypt_s,
        decrypt_s,
        bytes_in,
        bytes_out,
        key_bytes,
        params,
        preset: PlanInfo::name_of(params.literal()),
        depth: circuit.depth(),
        input_ciphertexts: circuit.inputs(),
        stages: circuit.costs(),
        stage_seconds,
        scheme: "ckks",
        exact_scores: None,
        plaintext_moduli: Vec::new(),
        circuit_privacy_bits: None,
    };
    batch_report(model, test, dataset, run)
}

/// What a batch-packing run measured, for its report.
struct BatchRun<'a> {
    start: Instant,
    /// Seconds of the run spent on checks (the integer twin), not on the service.
    check_s: f64,
    threads: usize,
    slots: usize,
    /// Decrypted scores, per test image.
    scores: Vec<Vec<f64>>,
    /// Seconds per batch.
    server_s: Vec<f64>,
    encrypt_s: Vec<f64>,
    decrypt_s: Vec<f64>,
    /// Bytes of a batch's request and reply (all plaintext primes), and of the keys.
    bytes_in: usize,
    bytes_out: usize,
    key_bytes: usize,
    params: &'a Parameters,
    preset: String,
    depth: usize,
    input_ciphertexts: usize,
    stages: Vec<blindfold_tensor::StageCost>,
    stage_seconds: Vec<f64>,
    scheme: &'static str,
    exact_scores: Option<f64>,
    plaintext_moduli: Vec<u64>,
    circuit_privacy_bits: Option<u32>,
}

fn batch_report(model: &mut Model, test: &LabeledImages, dataset: Dataset, mut run: BatchRun<'_>) -> Result<Report> {
    let n = test.len();
    // The run's clock stops here: the plaintext twin below is the check, not the service.
    let images_per_second = n as f64 / (run.start.elapsed().as_secs_f64() - run.check_s).max(1e-9);
    let server_images_per_second = n as f64 / run.server_s.iter().sum::<f64>().max(1e-9);
    let plain = &plain_classes(model, test)?;
    let classes: Vec<usize> =
        run.scores.iter().map(|s| argmax(&s.iter().map(|&v| v as f32).collect::<Vec<_>>())).collect();
    let share = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count() as f64 / n.max(1) as f64;
    // Per image: a batch's time over the images a full batch (or the whole run) holds.
    let per_image = |v: &mut Vec<f64>, p: f64| 1e3 * percentile(v, p) / run.slots.min(n.max(1)) as f64;
    Ok(Report {
        dataset: dataset.to_string(),
        arch: model.spec().name.clone(),
        n,
        plain_accuracy: share(&|i| plain[i] == test.labels[i] as usize),
        encrypted_accuracy: share(&|i| classes[i] == test.labels[i] as usize),
        agreement: share(&|i| classes[i] == plain[i]),
        server_ms: Percentiles { p50: per_image(&mut run.server_s, 0.5), p95: per_image(&mut run.server_s, 0.95) },
        client_ms: ClientMs {
            encrypt_p50: per_image(&mut run.encrypt_s, 0.5),
            decrypt_p50: per_image(&mut run.decrypt_s, 0.5),
        },
        bytes: Bytes {
            ciphertext_in: run.bytes_in,
            ciphertext_out: run.bytes_out,
            eval_keys: run.key_bytes,
            max_eval_keys: run.key_bytes,
            max_request: run.bytes_in,
        },
        params: ParamsReport {
            log_n: run.params.log_n(),
            log_qp: run.params.log_qp(),
            security_bits: 128,
            preset: run.preset,
        },
        threads: run.threads,
        parallel_images: 1,
        depth: run.depth,
        rotation_keys: 0,
        input_ciphertexts: run.input_ciphertexts,
        stages: run.stages,
        scheme: run.scheme.into(),
        packing: "batch".into(),
        batch_size: run.slots,
        batch_latency_s: percentile(&mut run.server_s, 0.5),
        images_per_second,
        server_images_per_second: Some(server_images_per_second),
        stage_seconds: run.stage_seconds,
        exact_scores: run.exact_scores,
        plaintext_moduli: run.plaintext_moduli,
        circuit_privacy_bits: run.circuit_privacy_bits,
        flooding_width: None,
        activation_ranges: model.activation_ranges(&test.clone().truncate(1000))?,
        scores: run.scores,
    })
}

/// Refuses, before any key or ciphertext is made, a batch whose ciphertexts would not fit in
/// the memory this process may use (`MemAvailable`, and the cgroup's `memory.max` where one is
/// set; not checked where neither is known): `residues` polynomials of `n` coefficients alive
/// at once; `hint` says what to change.
pub(crate) fn check_batch_memory(what: &str, residues: usize, n: usize, hint: &str) -> Result<()> {
    let need = residues as f64 * n as f64 * 8.0;
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let available = read("/proc/meminfo").and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb * 1024.0)
    });
    let cgroup = read("/sys/fs/cgroup/memory.max").and_then(|m| m.trim().parse::<f64>().ok());
    let have = match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    match have {
        Some(have) if need > 0.9 * have => bail!(
            "{what} in batch packing holds at least {:.1} GB of ciphertexts at once ({residues} residue polynomials \
             of N = {n}), more than the {:.1} GB of memory available: {hint}",
            need / 1e9,
            have / 1e9
        ),
        _ => Ok(()),
    }
}

/// Pixel `f` of every image in `range`, per feature `f < features` (`[feature][slot]`): a
/// BFV batch's integer inputs.
pub(crate) fn batch_pixels(test: &LabeledImages, range: std::ops::Range<usize>, features: usize) -> Vec<Vec<u64>> {
    (0..features).map(|f| range.clone().map(|i| u64::from(test.images.image(i)[f])).collect()).collect()
}

/// Slot `s`'s integer scores, recombined by the CRT from each plaintext prime's decrypted
/// residues (`residues[prime][class][slot]`).
pub(crate) fn crt_scores(residues: &[Vec<Vec<u64>>], s: usize, moduli: &[u64]) -> Result<Vec<i128>> {
    let classes = residues.first().map_or(0, Vec::len);
    (0..classes)
        .map(|o| blindfold_tensor::crt_signed(&residues.iter().map(|r| r[o][s]).collect::<Vec<_>>(), moduli))
        .collect::<Option<_>>()
        .context("the plaintext primes' product is beyond 128-bit integers")
}

/// The name of a BFV plan: ring degree, chain primes × bits, plaintext primes × bits.
pub(crate) fn bfv_preset(params: &Parameters, moduli: &[u64]) -> String {
    format!(
        "BFV_N{}_Q{}x{}_T{}x{}",
        params.n(),
        params.literal().log_q.len(),
        params.literal().log_q[0],
        moduli.len(),
        moduli.first().map_or(0, |t| 64 - t.leading_zeros())
    )
}

/// The plaintext model's class for every test image.
fn plain_classes(model: &mut Model, test: &LabeledImages) -> Result<Vec<usize>> {
    let imgs: Vec<&[u8]> = (0..test.len()).map(|i| test.images.image(i)).collect();
    let mut all = Vec::with_capacity(imgs.len());
    for chunk in imgs.chunks(500) {
        let l = model.logits(chunk)?;
        all.extend(l.rows().into_iter().map(|r| argmax(r.as_slice().expect("row-major"))));
    }
    Ok(all)
}

/// Encrypted inference on BFV in batch packing: the model quantized to integers
/// ([`CompiledBfv`]); for each batch of up to `N` images and each plaintext prime, the client
/// encrypts one ciphertext per pixel (8-bit integers), the model holder evaluates the integer
/// circuit with the relinearization key alone, the client decrypts and recombines the primes'
/// residues (CRT) into the exact integer scores, checked against the integer network's.
pub(crate) fn bfv_inference(
    model: &mut Model,
    opts: &BfvOptions,
    test: &LabeledImages,
    dataset: Dataset,
    threads: Option<usize>,
) -> Result<Report> {
    on_pool(threads, |threads, start| bfv_inference_on(model, opts, test, dataset, threads, start))
}

fn bfv_inference_on(
    model: &mut Model,
    opts: &BfvOptions,
    test: &LabeledImages,
    dataset: Dataset,
    threads: usize,
    start: Instant,
) -> Result<Report> {
    let n = test.len();
    let compiled = CompiledBfv::new(model, opts)?;
    let circuit = &compiled.circuit;
    let ctx = &compiled.ctx;
    let params = ctx.params();
    check_batch_memory(
        &model.spec().name,
        circuit.peak_polynomials() * (ctx.max_level() + 1),
        ctx.n(),
        "use fewer --weight-bits, --scheme ckks, or a machine with more memory",
    )?;
    let moduli = compiled.plaintext_moduli();
    eprintln!(
        "BFV plan: N = {}, chain {} × {} bits, plaintext primes {:?} (their product 2^{:.0} holds outputs up to 2^{:.1})",
        params.n(),
        params.literal().log_q.len(),
        params.literal().log_q[0],
        moduli,
        moduli.iter().map(|&t| (t as f64).log2()).sum::<f64>(),
        circuit.output_bound().log2()
    );
    let eval = Evaluator::new(ctx);
    let mut keygen = KeyGenerator::new(ctx)?;
    let rlk = keygen.relinearization_key();
    let mut key_bytes = serialize(&rlk, ctx)?.len();
    // Circuit privacy: the model holder re-randomizes with the client's public key.
    let mut rerandomizer = match compiled.flooding_log_bound {
        Some(_) => {
            let pk = keygen.public_key();
            key_bytes += serialize(&pk, ctx)?.len();
            Some(Encryptor::with_public_key(ctx, &pk)?)
        }
        None => None,
    };
    let mut encryptor = SymmetricEncryptor::new(keygen.secret_key())?;
    let decryptors: Vec<BfvDecryptor> =
        compiled.moduli.iter().map(|b| BfvDecryptor::new(b, keygen.secret_key())).collect();
    let slots = params.n();
    let batches = n.div_ceil(slots);
    let stages = circuit.stages().len();
    let pb = bar((batches * moduli.len() * stages) as u64, "BFV layers");
    let mut stage_seconds = vec![0.0; stages];
    let (mut server_s, mut encrypt_s, mut decrypt_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bytes_in, mut bytes_out) = (0, 0);
    let (mut scores, mut exact, mut check_s) = (Vec::with_capacity(n), 0usize, 0.0);
    for b in 0..batches {
        let range = b * slots..n.min((b + 1) * slots);
        let pixels = batch_pixels(test, range.clone(), circuit.inputs());
        let (mut server, mut encrypt, mut decrypt) = (0.0, 0.0, 0.0);
        let mut residues: Vec<Vec<Vec<u64>>> = Vec::with_capacity(moduli.len());
        for (bfv, dec) in compiled.moduli.iter().zip(&decryptors) {
            let t0 = Instant::now();
            let pts = pixels.par_iter().map(|f| bfv.encode(f)).collect::<std::result::Result<Vec<_>, _>>()?;
            let request = encryptor.encrypt_batch(&pts)?;
            drop(pts);
            let t1 = Instant::now();
            if b == 0 {
                bytes_in += request.len() * serialize(&request[0], ctx)?.len();
            }
            let inputs: Vec<_> = request.par_iter().map(|c| c.expand(ctx)).collect();
            drop(request);
            let mut reply = circuit.evaluate_bfv(bfv, &eval, &inputs, &rlk, |i, secs| {
                stage_seconds[i] += secs;
                pb.inc(1);
            })?;
            if let (Some(r), Some(b)) = (&mut rerandomizer, compiled.flooding_log_bound) {
                reply.iter_mut().try_for_each(|c| r.rerandomize_uniform(c, b))?;
            }
            drop(inputs);
            let t2 = Instant::now();
            if b == 0 {
                bytes_out += reply.len() * serialize(&reply[0], ctx)?.len();
            }
            residues.push(reply.par_iter().map(|c| dec.decrypt(c)).collect::<std::result::Result<Vec<_>, _>>()?);
            let t3 = Instant::now();
            encrypt += (t1 - t0).as_secs_f64();
            server += (t2 - t1).as_secs_f64();
            decrypt += (t3 - t2).as_secs_f64();
        }
        let t_check = Instant::now();
        let twin = circuit
            .evaluate_integer(&pixels.iter().map(|f| f.iter().map(|&v| v as i64).collect()).collect::<Vec<_>>())?;
        check_s += t_check.elapsed().as_secs_f64();
        for s in 0..range.len() {
            let ints = crt_scores(&residues, s, &moduli)?;
            if ints.iter().enumerate().all(|(o, &v)| v == twin[o][s]) {
                exact += 1;
            }
            scores.push(ints.iter().map(|&v| v as f64 / circuit.output_scale()).collect::<Vec<f64>>());
        }
        server_s.push(server);
        encrypt_s.push(encrypt);
        decrypt_s.push(decrypt);
    }
    pb.finish_and_clear();
    let run = BatchRun {
        start,
        check_s,
        threads,
        slots,
        scores,
        server_s,
        encrypt_s,
        decrypt_s,
        bytes_in,
        bytes_out,
        key_bytes,
        params,
        preset: bfv_preset(params, &moduli),
        depth: circuit.stages().len(),
        input_ciphertexts: circuit.inputs() * moduli.len(),
        stages: circuit.costs(),
        stage_seconds,
        scheme: "bfv",
        exact_scores: Some(exact as f64 / n.max(1) as f64),
        plaintext_moduli: moduli,
        circuit_privacy_bits: opts.circuit_privacy,
    };
    batch_report(model, test, dataset, run)
}
