//! `blindfold cryptonn train`: CryptoNN training over functional encryption, next to its
//! plaintext twin on the same fixed-point encoding, in one process.

use crate::progress::bar;
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_data::Split;
use blindfold_fe::{DlogTable, FixedPoint};
use blindfold_nn::cryptonn::{CryptonnConfig, FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::{
    AuditError, AuditVerifier, Breakdown, FeProducts, Mode, TrainingAuthority, TrainingClient, AUDIT_MAGIC, RECORD_LEN,
};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub(crate) enum CryptonnCommand {
    /// Train with the first layer's products (forward `W·x` and gradient `δ·X`) decrypted from
    /// functional-encryption ciphertexts, next to plaintext training of the same model on the
    /// same fixed-point encoding; report accuracy and time per epoch.
    Train(TrainArgs),
    /// Verify an audit log written by `train --audit-log`: the hash chain from the first
    /// record to the last, then the keys issued per purpose and key-pair generation. Exits
    /// non-zero, naming the first bad record, if the log was changed or cut.
    Audit {
        /// The audit log.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// CryptoNN as published: labels encrypted with FE for basic operations; the server
    /// decrypts `A − Y` element-wise (which reveals the labels to it).
    Faithful,
    /// Labels in the clear (CryptoNN's follow-up NN-EMD).
    PlainLabels,
    /// Every key pair under the authority's policy (bounds, sparsity, span with rotation,
    /// rate limit, audit log); labels only summed over the batch inside FE products, never
    /// decrypted per example. Needs batches larger than the hidden width (default 256).
    Hardened,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Model: mlp (784-128-10 with ReLU, CryptoNN's MLP) or lenet5 (conv 5×5 ×6 → pool → conv
    /// 5×5 ×16 → pool → 120 → 84 → 10, ReLU; its first convolution through FE). Hardened mode
    /// trains the MLP only.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// How labels reach the server.
    #[arg(long, value_enum, default_value = "faithful")]
    mode: ModeArg,
    /// Passes over the training set.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Decimal digits of the fixed-point encoding of pixels, weights and deltas (CryptoNN: 2).
    #[arg(long, default_value_t = 2)]
    precision: u32,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Examples per mini-batch [default: 64 (CryptoNN's), 256 in hardened mode].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Hardened mode: fewest non-zero entries of a gradient or label-sum key; a hidden unit
    /// whose key is sparser gets no gradient from that batch.
    #[arg(long, default_value_t = 32)]
    min_nonzero: usize,
    /// Peak learning rate (Adam, cosine decay over the run).
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f32,
    /// Seed of initialization, batches and their order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest |product| the discrete logarithm finds; a larger one stops training with an
    /// error (never a wrong number). The table takes about 40 bytes per value of the range
    /// divided by 4 (at most 2^23 entries) [default: 2^21 for mlp; 2^24 for lenet5, whose
    /// gradient sums each filter entry over the batch and all 784 positions].
    #[arg(long)]
    dlog_bound: Option<u64>,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Persist the key authority's audit log here (a new file; never overwritten): every
    /// function key issued — forward, gradient, label — hash-chained, written batch by batch.
    /// `blindfold cryptonn audit FILE` verifies it.
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    mode: &'static str,
    dataset: String,
    n_train: usize,
    n_test: usize,
    batch_size: usize,
    precision: u32,
    threads: usize,
    epochs: Vec<EpochRow>,
}

#[derive(Serialize)]
struct EpochRow {
    epoch: usize,
    encrypted_accuracy: f64,
    plain_accuracy: f64,
    seconds: f64,
    plain_seconds: f64,
    breakdown_seconds: BreakdownRow,
}

#[derive(Serialize)]
struct BreakdownRow {
    encrypt: f64,
    key_derivation: f64,
    decrypt: f64,
    dlog: f64,
}

impl From<Breakdown> for BreakdownRow {
    fn from(b: Breakdown) -> Self {
        Self {
            encrypt: b.encrypt.as_secs_f64(),
            key_derivation: b.key_derivation.as_secs_f64(),
            decrypt: b.decrypt.as_secs_f64(),
            dlog: b.dlog.as_secs_f64(),
        }
    }
}

pub(crate) fn cryptonn_cmd(cmd: CryptonnCommand) -> Result<()> {
    match cmd {
        CryptonnCommand::Train(a) => train(a),
        CryptonnCommand::Audit { file } => audit(&file),
    }
}

/// A new audit log file (refused if the path exists), its header written.
fn create_audit_log(path: &std::path::Path) -> Result<std::io::BufWriter<std::fs::File>> {
    use std::io::Write as _;
    let file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).with_context(|| {
            format!("creating the audit log {} (an existing log is never overwritten)", path.display())
        })?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(AUDIT_MAGIC).with_context(|| format!("writing {}", path.display()))?;
    Ok(w)
}

fn audit(path: &std::path::Path) -> Result<()> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| AuditError::Magic).with_context(|| path.display().to_string())?;
    if &magic != AUDIT_MAGIC {
        return Err(AuditError::Magic).with_context(|| path.display().to_string());
    }
    let mut verifier = AuditVerifier::new();
    let mut record = [0u8; RECORD_LEN];
    loop {
        let mut filled = 0;
        while filled < RECORD_LEN {
            match r.read(&mut record[filled..]).with_context(|| format!("reading {}", path.display()))? {
                0 => break,
                n => filled += n,
            }
        }
        match filled {
            0 => break,
            RECORD_LEN => {
                verifier.push(&record).with_context(|| format!("{} does not verify", path.display()))?;
            }
            extra => {
                return Err(AuditError::Truncated { records: verifier.records(), extra })
                    .with_context(|| format!("{} does not verify", path.display()))
            }
        }
    }
    let hex: String = verifier.head().iter().map(|b| format!("{b:02x}")).collect();
    println!("{}: {} records, hash chain intact; last link {hex}", path.display(), verifier.records());
    let mut by_purpose: std::collections::BTreeMap<String, (u64, Vec<u32>)> = Default::default();
    for (&(purpose, generation), &n) in verifier.counts() {
        let e = by_purpose.entry(format!("{purpose:?}")).or_default();
        e.0 += n;
        e.1.push(generation);
    }
    println!("{:<14} {:>10}  key-pair generations", "purpose", "keys");
    for (purpose, (n, generations)) in &by_purpose {
        let first = generations.first().copied().unwrap_or(0);
        let last = generations.last().copied().unwrap_or(0);
        let span = if first == last { format!("{first}") } else { format!("{first}..{last} ({})", generations.len()) };
        println!("{purpose:<14} {n:>10}  {span}");
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let lenet = match a.model.as_str() {
        "mlp" => false,
        "lenet5" => true,
        other => bail!("model {other:?}: CryptoNN training supports mlp and lenet5"),
    };
    if lenet && matches!(a.mode, ModeArg::Hardened) {
        bail!(
            "hardened mode trains the MLP only: a convolution's keys are sparse (26 of 785 entries) and the \
             label term of deeper networks cannot be summed over the batch inside one product"
        );
    }
    let batch_size = a.batch_size.unwrap_or(if matches!(a.mode, ModeArg::Hardened) { 256 } else { 64 });
    if a.epochs == 0 || batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    let encoding = FixedPoint::decimal(a.precision).context("--precision")?;
    let mut train_set = a.data.load(Split::Train)?;
    if let Some(n) = a.limit {
        if n == 0 {
            bail!("--limit 0: nothing to train on");
        }
        train_set = train_set.truncate(n);
    }
    let test_set = a.data.load(Split::Test)?;
    let spec = ArchSpec::builtin(&a.model)?;
    if train_set.images.rows * train_set.images.cols != spec.input.len() {
        bail!(
            "{} has {}×{} images; {} takes {}",
            a.data.dataset.name(),
            train_set.images.rows,
            train_set.images.cols,
            a.model,
            spec.input
        );
    }
    let classes = spec.classes()?;
    let features = spec.input.len();
    let model = Model::init(spec, &mut blindfold_nn::train::seeded_rng(a.seed))?;
    let batches = FixedBatches::new(train_set.len(), batch_size, a.seed);
    let (mode, mode_name) = match a.mode {
        ModeArg::Faithful => (Mode::Faithful, "faithful"),
        ModeArg::PlainLabels => (Mode::PlainLabels, "plain-labels"),
        ModeArg::Hardened => (Mode::Hardened, "hardened"),
    };
    let hardened = (mode == Mode::Hardened).then_some(a.min_nonzero);
    let cfg = CryptonnConfig {
        epochs: a.epochs,
        learning_rate: a.learning_rate,
        clip_norm: 5.0,
        encoding,
        seed: a.seed,
        hardened,
    };
    eprintln!(
        "CryptoNN training, {} mode: {} on {} training images of {} (batches of {}, {} digits); first-layer \
         products through inner-product FE on ristretto255",
        mode_name,
        a.model,
        train_set.len(),
        a.data.dataset.name(),
        batch_size,
        a.precision
    );
    let start = Instant::now();
    let bound = a.dlog_bound.unwrap_or(if lenet { 1 << 24 } else { 1 << 21 });
    let table = DlogTable::new(bound, (2 * bound + 1).min(1 << 23) as usize)?;
    let mut authority = match mode {
        Mode::Hardened => {
            let hidden = model.params(1).context("the first dense layer")?.weight.nrows();
            TrainingAuthority::hardened(features, batch_size, classes, hidden, a.min_nonzero)?
        }
        _ => TrainingAuthority::unrestricted(features, batch_size, mode)?,
    };
    let client = TrainingClient::new(&train_set, encoding, classes, batch_size, &authority.public_keys())?;
    let client = if lenet { client.rows_only() } else { client };
    eprintln!("keys, encryption tables and discrete-log table ready in {:.1} s", start.elapsed().as_secs_f64());
    let mut fe = Trainer::new(model.clone(), &batches, cfg.clone())?;
    let mut twin = Trainer::new(model, &batches, cfg)?;
    let mut plain = PlainProducts::new(&train_set, &batches, encoding, bound, classes);
    let mut products = FeProducts::new(client, &mut authority, table, &batches);
    if let Some(path) = &a.audit_log {
        use std::io::Write as _;
        let mut w = create_audit_log(path)?;
        let shown = path.display().to_string();
        products.set_audit_sink(Box::new(move |records| {
            records
                .iter()
                .try_for_each(|r| w.write_all(&r.to_bytes()))
                .and_then(|()| w.flush())
                .map_err(|e| format!("writing {shown}: {e}"))
        }));
    }
    let mut rows = Vec::new();
    println!("epoch  encrypted  plaintext   seconds  encrypt  keys  decrypt  dlog");
    for epoch in 1..=a.epochs {
        products.start_epoch(epoch as u32 - 1);
        let pb = bar(batches.len() as u64, &format!("epoch {epoch}"));
        let t = Instant::now();
        fe.epoch(&batches, &mut products, |done, _| pb.set_position(done as u64))?;
        products.flush_audit().map_err(|e| anyhow::anyhow!("the audit log: {e}"))?;
        let seconds = t.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let t = Instant::now();
        twin.epoch(&batches, &mut plain, |_, _| ())?;
        let plain_seconds = t.elapsed().as_secs_f64();
        let encrypted_accuracy = fe.model().accuracy(&test_set)?;
        let plain_accuracy = twin.model().accuracy(&test_set)?;
        let b = BreakdownRow::from(products.breakdown);
        if encrypted_accuracy != plain_accuracy {
            eprintln!("note: epoch {epoch}: the FE run and its twin differ ({encrypted_accuracy} vs {plain_accuracy})");
        }
        println!(
            "{epoch:>5}  {:>8.2}%  {:>8.2}%  {seconds:>8.1}  {:>7.1}  {:>4.1}  {:>7.1}  {:>4.1}",
            100.0 * encrypted_accuracy,
            100.0 * plain_accuracy,
            b.encrypt,
            b.key_derivation,
            b.decrypt,
            b.dlog
        );
        rows.push(EpochRow { epoch, encrypted_accuracy, plain_accuracy, seconds, plain_seconds, breakdown_seconds: b });
    }
    if let Some(path) = &a.json {
        let report = Report {
            model: a.model.clone(),
            mode: mode_name,
            dataset: a.data.dataset.name().into(),
            n_train: train_set.len(),
            n_test: test_set.len(),
            batch_size,
            precision: a.precision,
            threads: rayon::current_num_threads(),
            epochs: rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
