//! `blindfold cryptonn train`: CryptoNN training over functional encryption, next to its
//! plaintext twin on the same fixed-point encoding, in one process.

use crate::progress::bar;
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_data::Split;
use blindfold_data::{partition, Partition};
use blindfold_fe::{DlogTable, FixedPoint};
use blindfold_nn::cryptonn::{CryptonnConfig, FixedBatches, PlainProducts, Trainer};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::cryptonn::messages::Shard;
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty};
use blindfold_protocol::cryptonn::server::{LocalLink, Peer, ServerProducts};
use blindfold_protocol::cryptonn::{
    AuditError, AuditRecord, AuditVerifier, Breakdown, FeProducts, Mode, TrainingAuthority, TrainingClient,
    AUDIT_MAGIC, RECORD_LEN,
};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
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
    /// Split the training set among K data owners (`--split`), each a party of its own: the
    /// training server asks each for its batches and the key authority for keys by messages,
    /// every one passed through its bytes (all in this process; the report adds the bytes per
    /// party). Each batch holds one owner's examples. Faithful and plain-labels modes.
    #[arg(long)]
    owners: Option<usize>,
    /// How the training set is split among `--owners`: iid, dirichlet:ALPHA (class mix drawn
    /// from a Dirichlet), label-skew:K (K classes per owner) or size-skew.
    #[arg(long, default_value = "iid")]
    split: Partition,
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
    /// With `--owners`: bytes the training server sent to and received from each party.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<BTreeMap<String, [u64; 2]>>,
    /// With `--owners`: batches skipped this epoch (an owner gone or its batch refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_batches: Option<usize>,
}

/// What one epoch of the FE side reports besides the model: its time breakdown and, with
/// several owners, the bytes per party.
struct EpochOutcome {
    breakdown: Breakdown,
    bytes: Option<BTreeMap<String, [u64; 2]>>,
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
    if let Some(owners) = a.owners {
        let run = OwnersRun { a: &a, train_set: &train_set, encoding, classes, features, lenet, mode, owners, bound };
        let rows = run.train(model, cfg, &test_set, start)?;
        return write_report(&a, mode_name, &train_set, &test_set, batch_size, rows);
    }
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
        let mut sink = audit_sink(path)?;
        products.set_audit_sink(Box::new(move |records| sink(records)));
    }
    let rows = run_epochs(&a, &mut fe, &mut twin, &batches, &mut plain, &test_set, |epoch, fe, pb| {
        products.start_epoch(epoch);
        fe.epoch(&batches, &mut products, |done, _| pb.set_position(done as u64))?;
        products.flush_audit().map_err(|e| anyhow::anyhow!("the audit log: {e}"))?;
        Ok(EpochOutcome { breakdown: products.breakdown, bytes: None })
    })?;
    write_report(&a, mode_name, &train_set, &test_set, batch_size, rows)
}

/// `cryptonn train --owners K`: the data owners, the key authority and the training server as
/// parties exchanging messages (through their bytes, in this process).
struct OwnersRun<'a> {
    a: &'a TrainArgs,
    train_set: &'a blindfold_data::LabeledImages,
    encoding: FixedPoint,
    classes: usize,
    features: usize,
    lenet: bool,
    mode: Mode,
    owners: usize,
    bound: u64,
}

impl OwnersRun<'_> {
    fn train(
        &self,
        model: Model,
        cfg: CryptonnConfig,
        test_set: &blindfold_data::LabeledImages,
        start: Instant,
    ) -> Result<Vec<EpochRow>> {
        if self.mode == Mode::Hardened {
            bail!("--owners runs the faithful and plain-labels modes; hardened mode keeps all parties in one process");
        }
        let a = self.a;
        let batch_size = a.batch_size.unwrap_or(64);
        let members = partition(&self.train_set.labels, self.owners, a.split, a.seed).with_context(|| {
            format!("splitting {} examples among {} owners ({})", self.train_set.len(), self.owners, a.split)
        })?;
        let shards: Vec<_> = members.iter().map(|m| self.train_set.subset(m)).collect();
        let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
        eprintln!("{} data owners ({}): {:?} examples", self.owners, a.split, sizes);
        let (local, owner_of) = FixedBatches::sharded(&sizes, batch_size, a.seed);
        let global = local.mapped(&owner_of, &members);
        let authority = AuthorityParty::new(TrainingAuthority::unrestricted(self.features, batch_size, self.mode)?);
        let count = self.owners as u32;
        let parties = shards
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let shard = Shard { index: k as u32, count };
                OwnerParty::new(k as u32, shard, d, self.encoding, self.classes, batch_size, self.lenet)
            })
            .collect();
        let mut link = LocalLink::new(authority, parties)?;
        match &a.audit_log {
            Some(path) => {
                let mut sink = audit_sink(path)?;
                link.set_audit_sink(Box::new(move |records| sink(records)));
            }
            None => link.set_audit_sink(Box::new(|_| Ok(()))),
        }
        let table = DlogTable::new(self.bound, (2 * self.bound + 1).min(1 << 23) as usize)?;
        let owner_ids = owner_of.iter().map(|&k| k as u32).collect();
        let mut products = ServerProducts::new(
            link,
            table,
            local.clone(),
            owner_ids,
            self.features,
            self.classes,
            self.encoding,
            self.mode,
            self.lenet,
        )?;
        eprintln!("keys, encryption tables and discrete-log table ready in {:.1} s", start.elapsed().as_secs_f64());
        let mut fe = Trainer::new(model.clone(), &local, cfg.clone())?;
        let mut twin = Trainer::new(model, &global, cfg)?;
        let mut plain = PlainProducts::new(self.train_set, &global, self.encoding, self.bound, self.classes);
        let (mut before, mut reported) = (BTreeMap::new(), 0);
        run_epochs(a, &mut fe, &mut twin, &global, &mut plain, test_set, |epoch, fe, pb| {
            products.start_epoch(epoch);
            fe.epoch(&local, &mut products, |done, _| pb.set_position(done as u64))?;
            for report in &products.reports()[reported..] {
                eprintln!("note: {report}");
            }
            reported = products.reports().len();
            let now = products.link().bytes.clone();
            let bytes = now
                .iter()
                .map(|(peer, &(sent, received))| {
                    let (s0, r0) = before.get(peer).copied().unwrap_or((0, 0));
                    let name = match peer {
                        Peer::Authority => "key authority".to_string(),
                        Peer::Owner(k) => format!("data owner {k}"),
                    };
                    (name, [sent - s0, received - r0])
                })
                .collect();
            before = now;
            Ok(EpochOutcome { breakdown: products.breakdown, bytes: Some(bytes) })
        })
    }
}

/// Writes every record it is given to a new audit log at `path` (after its header).
fn audit_sink(path: &std::path::Path) -> Result<impl FnMut(&[AuditRecord]) -> Result<(), String>> {
    use std::io::Write as _;
    let mut w = create_audit_log(path)?;
    let shown = path.display().to_string();
    Ok(move |records: &[AuditRecord]| {
        records
            .iter()
            .try_for_each(|r| w.write_all(&r.to_bytes()))
            .and_then(|()| w.flush())
            .map_err(|e| format!("writing {shown}: {e}"))
    })
}

/// The epochs: the FE run's (by `fe_epoch`, which trains `fe` one epoch on `fe_batches`),
/// then the twin's on `twin_batches` skipping the batches the FE run skipped, a row each.
#[allow(clippy::too_many_arguments)]
fn run_epochs(
    a: &TrainArgs,
    fe: &mut Trainer,
    twin: &mut Trainer,
    twin_batches: &FixedBatches,
    plain: &mut PlainProducts<'_>,
    test_set: &blindfold_data::LabeledImages,
    mut fe_epoch: impl FnMut(u32, &mut Trainer, &indicatif::ProgressBar) -> Result<EpochOutcome>,
) -> Result<Vec<EpochRow>> {
    let mut rows = Vec::new();
    println!("epoch  encrypted  plaintext   seconds  encrypt  keys  decrypt  dlog");
    for epoch in 1..=a.epochs {
        let pb = bar(twin_batches.len() as u64, &format!("epoch {epoch}"));
        let t = Instant::now();
        let outcome = fe_epoch(epoch as u32 - 1, fe, &pb)?;
        let seconds = t.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let skipped: Vec<usize> = fe.skipped().iter().filter(|s| s.0 == epoch).map(|s| s.1).collect();
        plain.set_unavailable(skipped.iter().copied());
        let t = Instant::now();
        twin.epoch(twin_batches, plain, |_, _| ())?;
        let plain_seconds = t.elapsed().as_secs_f64();
        let encrypted_accuracy = fe.model().accuracy(test_set)?;
        let plain_accuracy = twin.model().accuracy(test_set)?;
        let b = BreakdownRow::from(outcome.breakdown);
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
        if let Some(bytes) = &outcome.bytes {
            let mb = |v: u64| v as f64 / 1e6;
            let parties: Vec<String> = bytes
                .iter()
                .map(|(party, [sent, received])| format!("{party} {:.1} MB out, {:.1} MB in", mb(*sent), mb(*received)))
                .collect();
            println!("       training server's bytes: {}", parties.join("; "));
        }
        let skipped_batches = outcome.bytes.as_ref().map(|_| skipped.len());
        rows.push(EpochRow {
            epoch,
            encrypted_accuracy,
            plain_accuracy,
            seconds,
            plain_seconds,
            breakdown_seconds: b,
            bytes: outcome.bytes,
            skipped_batches,
        });
    }
    Ok(rows)
}

fn write_report(
    a: &TrainArgs,
    mode_name: &'static str,
    train_set: &blindfold_data::LabeledImages,
    test_set: &blindfold_data::LabeledImages,
    batch_size: usize,
    rows: Vec<EpochRow>,
) -> Result<()> {
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
