//! `blindfold demo` and `blindfold infer`: encrypted inference on test images, client and
//! model holder exchanging bytes in one process.

use crate::import::{load_model, ImportArgs};
use crate::progress::bar;
use crate::report::{percentile, print_report, Bytes, ClientMs, ParamsReport, Percentiles, Report};
use crate::train::{cached_model, train_model, TrainOpts};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::Parameters;
use blindfold_ckks::SecretKey;
use blindfold_data::{Dataset, LabeledImages, Split};
use blindfold_nn::compile::{self, ChainOptions};
use blindfold_nn::{argmax, Model};
use blindfold_protocol::{Client, CompiledModel, KeyId, Message, ModelHolder, PlanInfo};
use clap::Args;
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
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
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
    let params = compile::parameters(model.spec(), &opts.chain.options())?;
    let report = encrypted_inference(&mut model, &params, &test, data.dataset, opts.threads, opts.parallel_images)?;
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

/// Encrypted inference of `model` compiled for `params` on every image of `test`: client and
/// model holder exchanging bytes, `parallel_images` images at a time on `threads` threads.
///
/// The client makes its keys from the plan of the architecture alone, before the model is
/// compiled (the two never hold their large objects at once), and refuses a compiled plan
/// that differs from it.
pub(crate) fn encrypted_inference(
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
    let mut enc: Vec<f64> = results.iter().map(|r| r.encrypt_ms).collect();
    let mut dec: Vec<f64> = results.iter().map(|r| r.decrypt_ms).collect();
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
        activation_ranges: model.activation_ranges(&test.clone().truncate(1000))?,
        scores: results.into_iter().map(|r| r.scores).collect(),
    })
}
