//! `blindfold cryptonn train`: CryptoNN training over functional encryption, next to its
//! plaintext twin on the same fixed-point encoding, in one process.

use crate::progress::bar;
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_data::LabeledImages;
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
use serde::{Deserialize, Serialize};
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
    /// The key authority as a network service: the only holder of the master secret keys;
    /// public keys to anyone, function keys (forward, gradient, label) to the training
    /// server alone (recognised by its client certificate), each through the policy and into
    /// the audit log before it is sent.
    Authority(crate::cryptonn_net::AuthorityArgs),
    /// The training server as a network service: waits for its data owners to join, then
    /// trains, asking each owner for its encrypted batches and the authority for keys;
    /// reports accuracy on the test set, time per part and bytes per party each epoch.
    Server(crate::cryptonn_net::ServerArgs),
    /// A data owner: encrypts its shard of the training set under the authority's public
    /// keys, batch by batch as the training server asks, and never sends anything else.
    Owner(crate::cryptonn_net::OwnerArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
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

/// What every party of a run must agree on: the model, the mode, the encoding and the batch
/// size (`train --owners` passes its own to every party; the training server refuses an
/// owner whose encoding is not the run's).
#[derive(Args, Clone)]
pub(crate) struct PartyArgs {
    /// Model: mlp (784-128-10 with ReLU, CryptoNN's MLP) or lenet5 (conv 5×5 ×6 → pool → conv
    /// 5×5 ×16 → pool → 120 → 84 → 10, ReLU; its first convolution through FE). Hardened mode
    /// trains the MLP only.
    #[arg(long, default_value = "mlp")]
    pub(crate) model: String,
    /// How labels reach the server.
    #[arg(long, value_enum, default_value = "faithful")]
    pub(crate) mode: ModeArg,
    /// Decimal digits of the fixed-point encoding of pixels, weights and deltas (CryptoNN: 2).
    /// Every party of a run must use the same.
    #[arg(long, default_value_t = 2)]
    pub(crate) precision: u32,
    /// Examples per mini-batch [default: 64 (CryptoNN's), 256 in hardened mode].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
}

/// How the training server trains.
#[derive(Args, Clone)]
pub(crate) struct ScheduleArgs {
    /// Passes over the training set.
    #[arg(long, default_value_t = 2)]
    pub(crate) epochs: usize,
    /// Peak learning rate (Adam, cosine decay over the run).
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) learning_rate: f32,
    /// Seed of initialization, batches and their order (and of the split among data owners).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Largest |product| the discrete logarithm finds; a larger one stops training with an
    /// error (never a wrong number). The table takes about 40 bytes per value of the range
    /// divided by 4 (at most 2^23 entries) [default: 2^21 for mlp; 2^24 for lenet5, whose
    /// gradient sums each filter entry over the batch and all 784 positions].
    #[arg(long)]
    pub(crate) dlog_bound: Option<u64>,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    party: PartyArgs,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Hardened mode: fewest non-zero entries of a gradient or label-sum key; a hidden unit
    /// whose key is sparser gets no gradient from that batch.
    #[arg(long, default_value_t = 32)]
    min_nonzero: usize,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Persist the key authority's audit log here (a new file; never overwritten): every
    /// function key issued — forward, gradient, label — hash-chained, written batch by batch.
    /// `blindfold cryptonn audit FILE` verifies it.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Split the training set among K data owners (`--split`): the key authority, the
    /// training server and each owner run as separate processes (`cryptonn authority`,
    /// `server`, `owner`) on loopback, over gRPC with mutual TLS (certificates made for the
    /// run); the report adds the bytes the server exchanged with each party. Each batch holds
    /// one owner's examples. Faithful and plain-labels modes.
    #[arg(long)]
    owners: Option<usize>,
    /// With --owners: the parties in this process instead, every message still passed
    /// through its bytes (a test harness).
    #[arg(long, requires = "owners")]
    in_process: bool,
    /// How the training set is split among `--owners`: iid, dirichlet:ALPHA (class mix drawn
    /// from a Dirichlet), label-skew:K (K classes per owner) or size-skew.
    #[arg(long, default_value = "iid")]
    split: Partition,
}

/// What [`PartyArgs`] come to.
pub(crate) struct Party {
    pub(crate) spec: ArchSpec,
    pub(crate) lenet: bool,
    pub(crate) classes: usize,
    pub(crate) features: usize,
    pub(crate) encoding: FixedPoint,
    pub(crate) batch_size: usize,
    pub(crate) mode: Mode,
    pub(crate) mode_name: &'static str,
}

impl PartyArgs {
    pub(crate) fn resolve(&self) -> Result<Party> {
        let lenet = match self.model.as_str() {
            "mlp" => false,
            "lenet5" => true,
            other => bail!("model {other:?}: CryptoNN training supports mlp and lenet5"),
        };
        if lenet && matches!(self.mode, ModeArg::Hardened) {
            bail!(
                "hardened mode trains the MLP only: a convolution's keys are sparse (26 of 785 entries) and the \
                 label term of deeper networks cannot be summed over the batch inside one product"
            );
        }
        let batch_size = self.batch_size.unwrap_or(if matches!(self.mode, ModeArg::Hardened) { 256 } else { 64 });
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let encoding = FixedPoint::decimal(self.precision).context("--precision")?;
        let spec = ArchSpec::builtin(&self.model)?;
        let (mode, mode_name) = match self.mode {
            ModeArg::Faithful => (Mode::Faithful, "faithful"),
            ModeArg::PlainLabels => (Mode::PlainLabels, "plain-labels"),
            ModeArg::Hardened => (Mode::Hardened, "hardened"),
        };
        Ok(Party {
            lenet,
            classes: spec.classes()?,
            features: spec.input.len(),
            spec,
            encoding,
            batch_size,
            mode,
            mode_name,
        })
    }

    /// The arguments again, for another party's command line.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--model".into(),
            self.model.clone(),
            "--mode".into(),
            self.mode.to_possible_value().expect("no skipped values").get_name().into(),
            "--precision".into(),
            self.precision.to_string(),
        ];
        if let Some(b) = self.batch_size {
            v.extend(["--batch-size".into(), b.to_string()]);
        }
        v
    }
}

impl Party {
    /// Refuses images of another size than the model's input.
    pub(crate) fn check_images(&self, set: &blindfold_data::LabeledImages, data: &DataArgs) -> Result<()> {
        if set.images.rows * set.images.cols != self.features {
            bail!(
                "{} has {}×{} images; the model takes {}",
                data.dataset.name(),
                set.images.rows,
                set.images.cols,
                self.spec.input
            );
        }
        Ok(())
    }
}

impl ScheduleArgs {
    /// The initial model, the training configuration and the discrete-log bound.
    pub(crate) fn config(&self, p: &Party, hardened: Option<usize>) -> Result<(Model, CryptonnConfig, u64)> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        let model = Model::init(p.spec.clone(), &mut blindfold_nn::train::seeded_rng(self.seed))?;
        let cfg = CryptonnConfig {
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            clip_norm: 5.0,
            encoding: p.encoding,
            seed: self.seed,
            hardened,
        };
        Ok((model, cfg, self.dlog_bound.unwrap_or(if p.lenet { 1 << 24 } else { 1 << 21 })))
    }

    /// The arguments again, for another party's command line.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--epochs".into(),
            self.epochs.to_string(),
            "--learning-rate".into(),
            self.learning_rate.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if let Some(b) = self.dlog_bound {
            v.extend(["--dlog-bound".into(), b.to_string()]);
        }
        v
    }
}

/// A training set split among `owners` data owners (`split`, `seed`): each owner's members,
/// the batches over the owners' shards (each batch one owner's, by index into its shard)
/// with each batch's owner, and the same batches by index into the whole set.
pub(crate) struct Shares {
    pub(crate) members: Vec<Vec<usize>>,
    pub(crate) local: FixedBatches,
    pub(crate) owner_of: Vec<usize>,
    pub(crate) global: FixedBatches,
}

impl Shares {
    pub(crate) fn new(
        set: &blindfold_data::LabeledImages,
        owners: usize,
        split: Partition,
        seed: u64,
        batch_size: usize,
    ) -> Result<Self> {
        let members = partition(&set.labels, owners, split, seed)
            .with_context(|| format!("splitting {} examples among {owners} owners ({split})", set.len()))?;
        let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
        let (local, owner_of) = FixedBatches::sharded(&sizes, batch_size, seed);
        let global = local.mapped(&owner_of, &members);
        Ok(Self { members, local, owner_of, global })
    }
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

/// What one epoch of the FE side reports: the model's accuracy, the time and its breakdown,
/// the batches skipped and, with several owners, the bytes per party.
#[derive(Serialize, Deserialize)]
pub(crate) struct EpochOutcome {
    pub(crate) encrypted_accuracy: f64,
    pub(crate) seconds: f64,
    pub(crate) breakdown_seconds: BreakdownRow,
    /// Bytes the training server sent to and received from each party, by party.
    pub(crate) bytes: Option<BTreeMap<String, [u64; 2]>>,
    /// The batches skipped (an owner gone or its batch refused), by index.
    pub(crate) skipped: Vec<usize>,
}

impl EpochOutcome {
    /// The outcome of `fe`'s epoch `epoch` (from 1), which took `seconds`.
    pub(crate) fn of(
        fe: &mut Trainer,
        epoch: usize,
        seconds: f64,
        breakdown: Breakdown,
        test_set: &LabeledImages,
    ) -> Result<Self> {
        Ok(Self {
            encrypted_accuracy: fe.model().accuracy(test_set)?,
            seconds,
            breakdown_seconds: breakdown.into(),
            bytes: None,
            skipped: fe.skipped().iter().filter(|s| s.0 == epoch).map(|s| s.1).collect(),
        })
    }
}

/// The bytes per peer since `before`, by the party's name.
pub(crate) fn bytes_since(
    before: &BTreeMap<Peer, (u64, u64)>,
    now: &BTreeMap<Peer, (u64, u64)>,
) -> BTreeMap<String, [u64; 2]> {
    now.iter()
        .map(|(peer, &(sent, received))| {
            let (s0, r0) = before.get(peer).copied().unwrap_or((0, 0));
            let name = match peer {
                Peer::Authority => "key authority".to_string(),
                Peer::Owner(k) => format!("data owner {k}"),
            };
            (name, [sent - s0, received - r0])
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BreakdownRow {
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
        CryptonnCommand::Authority(a) => crate::cryptonn_net::authority_cmd(a),
        CryptonnCommand::Server(a) => crate::cryptonn_net::server_cmd(a),
        CryptonnCommand::Owner(a) => crate::cryptonn_net::owner_cmd(a),
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
    let p = a.party.resolve()?;
    let mut train_set = a.data.load(Split::Train)?;
    if let Some(n) = a.limit {
        if n == 0 {
            bail!("--limit 0: nothing to train on");
        }
        train_set = train_set.truncate(n);
    }
    let test_set = a.data.load(Split::Test)?;
    p.check_images(&train_set, &a.data)?;
    let hardened = (p.mode == Mode::Hardened).then_some(a.min_nonzero);
    let (model, cfg, bound) = a.schedule.config(&p, hardened)?;
    eprintln!(
        "CryptoNN training, {} mode: {} on {} training images of {} (batches of {}, {} digits); first-layer \
         products through inner-product FE on ristretto255",
        p.mode_name,
        a.party.model,
        train_set.len(),
        a.data.dataset.name(),
        p.batch_size,
        a.party.precision
    );
    let start = Instant::now();
    if let Some(owners) = a.owners {
        if p.mode == Mode::Hardened {
            bail!("--owners runs the faithful and plain-labels modes; hardened mode keeps all parties in one process");
        }
        let shares = Shares::new(&train_set, owners, a.split, a.schedule.seed, p.batch_size)?;
        let sizes: Vec<usize> = shares.members.iter().map(Vec::len).collect();
        eprintln!("{owners} data owners ({}): {sizes:?} examples", a.split);
        let mut twin = Trainer::new(model.clone(), &shares.global, cfg.clone())?;
        let mut plain = PlainProducts::new(&train_set, &shares.global, p.encoding, bound, p.classes);
        let rows = if a.in_process {
            let run = OwnersRun { a: &a, p: &p, train_set: &train_set, shares: &shares, bound };
            let mut fe = Trainer::new(model, &shares.local, cfg)?;
            run.train(&mut fe, &mut twin, &mut plain, &test_set, start)?
        } else {
            let mut run = crate::cryptonn_net::Processes::start(
                &a.data,
                &a.party,
                &a.schedule,
                owners,
                a.split,
                a.limit,
                a.audit_log.as_deref(),
            )?;
            run_epochs(&a, &mut twin, &shares.global, &mut plain, &test_set, |_, pb| {
                pb.finish_and_clear();
                run.next_epoch()
            })
            .and_then(|rows| run.finish().map(|()| rows))?
        };
        return write_report(&a, &p, &train_set, &test_set, rows);
    }
    let batches = FixedBatches::new(train_set.len(), p.batch_size, a.schedule.seed);
    let table = DlogTable::new(bound, (2 * bound + 1).min(1 << 23) as usize)?;
    let mut authority = match p.mode {
        Mode::Hardened => {
            let hidden = model.params(1).context("the first dense layer")?.weight.nrows();
            TrainingAuthority::hardened(p.features, p.batch_size, p.classes, hidden, a.min_nonzero)?
        }
        _ => TrainingAuthority::unrestricted(p.features, p.batch_size, p.mode)?,
    };
    let client = TrainingClient::new(&train_set, p.encoding, p.classes, p.batch_size, &authority.public_keys())?;
    let client = if p.lenet { client.rows_only() } else { client };
    eprintln!("keys, encryption tables and discrete-log table ready in {:.1} s", start.elapsed().as_secs_f64());
    let mut fe = Trainer::new(model.clone(), &batches, cfg.clone())?;
    let mut twin = Trainer::new(model, &batches, cfg)?;
    let mut plain = PlainProducts::new(&train_set, &batches, p.encoding, bound, p.classes);
    let mut products = FeProducts::new(client, &mut authority, table, &batches);
    if let Some(path) = &a.audit_log {
        let mut sink = audit_sink(path)?;
        products.set_audit_sink(Box::new(move |records| sink(records)));
    }
    let rows = run_epochs(&a, &mut twin, &batches, &mut plain, &test_set, |epoch, pb| {
        let t = Instant::now();
        products.start_epoch(epoch as u32 - 1);
        fe.epoch(&batches, &mut products, |done, _| pb.set_position(done as u64))?;
        products.flush_audit().map_err(|e| anyhow::anyhow!("the audit log: {e}"))?;
        EpochOutcome::of(&mut fe, epoch, t.elapsed().as_secs_f64(), products.breakdown, &test_set)
    })?;
    write_report(&a, &p, &train_set, &test_set, rows)
}

/// `cryptonn train --owners K --in-process`: the data owners, the key authority and the
/// training server as parties exchanging messages through their bytes, in this process.
struct OwnersRun<'a> {
    a: &'a TrainArgs,
    p: &'a Party,
    train_set: &'a LabeledImages,
    shares: &'a Shares,
    bound: u64,
}

impl OwnersRun<'_> {
    fn train(
        &self,
        fe: &mut Trainer,
        twin: &mut Trainer,
        plain: &mut PlainProducts<'_>,
        test_set: &LabeledImages,
        start: Instant,
    ) -> Result<Vec<EpochRow>> {
        let (a, p, shares) = (self.a, self.p, self.shares);
        let shards: Vec<_> = shares.members.iter().map(|m| self.train_set.subset(m)).collect();
        let authority = AuthorityParty::new(TrainingAuthority::unrestricted(p.features, p.batch_size, p.mode)?);
        let count = shards.len() as u32;
        let parties = shards
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let shard = Shard { index: k as u32, count };
                OwnerParty::new(k as u32, shard, d, p.encoding, p.classes, p.batch_size, p.lenet)
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
        let owner_ids = shares.owner_of.iter().map(|&k| k as u32).collect();
        let mut products = ServerProducts::new(
            link,
            table,
            shares.local.clone(),
            owner_ids,
            p.features,
            p.classes,
            p.encoding,
            p.mode,
            p.lenet,
        )?;
        eprintln!("keys, encryption tables and discrete-log table ready in {:.1} s", start.elapsed().as_secs_f64());
        let (mut before, mut reported) = (BTreeMap::new(), 0);
        run_epochs(a, twin, &shares.global, plain, test_set, |epoch, pb| {
            let t = Instant::now();
            products.start_epoch(epoch as u32 - 1);
            fe.epoch(&shares.local, &mut products, |done, _| pb.set_position(done as u64))?;
            for report in &products.reports()[reported..] {
                eprintln!("note: {report}");
            }
            reported = products.reports().len();
            let mut outcome = EpochOutcome::of(fe, epoch, t.elapsed().as_secs_f64(), products.breakdown, test_set)?;
            let now = products.link().bytes.clone();
            outcome.bytes = Some(bytes_since(&before, &now));
            before = now;
            Ok(outcome)
        })
    }
}

/// Writes every record it is given to a new audit log at `path` (after its header).
pub(crate) fn audit_sink(path: &std::path::Path) -> Result<impl FnMut(&[AuditRecord]) -> Result<(), String> + Send> {
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

/// The epochs: the FE run's (by `fe_epoch`, given the epoch from 1 and a progress bar), then
/// the twin's on `twin_batches` skipping the batches the FE run skipped, a row each.
fn run_epochs(
    a: &TrainArgs,
    twin: &mut Trainer,
    twin_batches: &FixedBatches,
    plain: &mut PlainProducts<'_>,
    test_set: &LabeledImages,
    mut fe_epoch: impl FnMut(usize, &indicatif::ProgressBar) -> Result<EpochOutcome>,
) -> Result<Vec<EpochRow>> {
    let mut rows = Vec::new();
    println!("epoch  encrypted  plaintext   seconds  encrypt  keys  decrypt  dlog");
    for epoch in 1..=a.schedule.epochs {
        let pb = bar(twin_batches.len() as u64, &format!("epoch {epoch}"));
        let outcome = fe_epoch(epoch, &pb)?;
        pb.finish_and_clear();
        plain.set_unavailable(outcome.skipped.iter().copied());
        let t = Instant::now();
        twin.epoch(twin_batches, plain, |_, _| ())?;
        let plain_seconds = t.elapsed().as_secs_f64();
        let plain_accuracy = twin.model().accuracy(test_set)?;
        let (encrypted_accuracy, b) = (outcome.encrypted_accuracy, outcome.breakdown_seconds);
        if encrypted_accuracy != plain_accuracy {
            eprintln!("note: epoch {epoch}: the FE run and its twin differ ({encrypted_accuracy} vs {plain_accuracy})");
        }
        println!(
            "{epoch:>5}  {:>8.2}%  {:>8.2}%  {:>8.1}  {:>7.1}  {:>4.1}  {:>7.1}  {:>4.1}",
            100.0 * encrypted_accuracy,
            100.0 * plain_accuracy,
            outcome.seconds,
            b.encrypt,
            b.key_derivation,
            b.decrypt,
            b.dlog
        );
        if let Some(bytes) = &outcome.bytes {
            println!("       training server's bytes: {}", bytes_line(bytes));
        }
        let skipped_batches = outcome.bytes.as_ref().map(|_| outcome.skipped.len());
        rows.push(EpochRow {
            epoch,
            encrypted_accuracy,
            plain_accuracy,
            seconds: outcome.seconds,
            plain_seconds,
            breakdown_seconds: b,
            bytes: outcome.bytes,
            skipped_batches,
        });
    }
    Ok(rows)
}

/// Bytes per party, in MB, on one line.
pub(crate) fn bytes_line(bytes: &BTreeMap<String, [u64; 2]>) -> String {
    let mb = |v: u64| v as f64 / 1e6;
    let parties: Vec<String> = bytes
        .iter()
        .map(|(party, [sent, received])| format!("{party} {:.1} MB out, {:.1} MB in", mb(*sent), mb(*received)))
        .collect();
    parties.join("; ")
}

fn write_report(
    a: &TrainArgs,
    p: &Party,
    train_set: &LabeledImages,
    test_set: &LabeledImages,
    rows: Vec<EpochRow>,
) -> Result<()> {
    if let Some(path) = &a.json {
        let report = Report {
            model: a.party.model.clone(),
            mode: p.mode_name,
            dataset: a.data.dataset.name().into(),
            n_train: train_set.len(),
            n_test: test_set.len(),
            batch_size: p.batch_size,
            precision: a.party.precision,
            threads: rayon::current_num_threads(),
            epochs: rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
