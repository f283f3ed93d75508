//! CryptoNN's parties as processes: `blindfold cryptonn authority`, `server` and `owner` over
//! gRPC with mutual TLS, and `cryptonn train --owners K`, which starts them all on loopback.

use crate::cryptonn::{bytes_since, EpochOutcome, PartyArgs, ScheduleArgs};
use crate::progress::bar;
use crate::remote::{init_log, pem, runtime};
use crate::DataArgs;
use anyhow::{anyhow, bail, Context as _, Result};
use blindfold_data::{Partition, Split};
use blindfold_fe::DlogTable;
use blindfold_nn::cryptonn::{FixedBatches, Trainer};
use blindfold_protocol::cryptonn::messages::Shard;
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty};
use blindfold_protocol::cryptonn::server::ServerProducts;
use blindfold_protocol::cryptonn::{Mode, TrainingAuthority};
use blindfold_service::cryptonn::{run_owner, serve_authority, ServerIdentity, TrainingServerNet};
use blindfold_service::{ClientTls, ServerTls};
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// TLS of one party: its own certificate (served, and presented when it connects to the
/// others) and the run's CA.
#[derive(Args, Clone)]
pub(crate) struct PartyTlsArgs {
    /// This party's certificate chain (PEM), signed by --ca: served to the parties that
    /// connect to it and presented to those it connects to (mutual TLS). Needs --tls-key.
    #[arg(long, requires = "tls_key", requires = "ca")]
    tls_cert: Option<PathBuf>,
    /// This party's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The run's CA certificate (PEM): every other party's certificate must be signed by it.
    #[arg(long, requires = "tls_cert")]
    ca: Option<PathBuf>,
    /// Plaintext gRPC (no TLS): nothing authenticates the parties and the key authority
    /// gives function keys to any caller. For a trusted network only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "ca"])]
    insecure_plaintext: bool,
}

impl PartyTlsArgs {
    /// For serving: this party's identity, clients required to present one of the CA's.
    fn server(&self) -> Result<Option<ServerTls>> {
        match (&self.tls_cert, &self.tls_key, &self.ca) {
            (Some(c), Some(k), Some(ca)) => {
                Ok(Some(ServerTls { cert_pem: pem(c)?, key_pem: pem(k)?, client_ca_pem: Some(pem(ca)?) }))
            }
            _ if self.insecure_plaintext => {
                eprintln!("warning: plaintext gRPC (--insecure-plaintext): nothing authenticates the parties");
                Ok(None)
            }
            _ => bail!(
                "a party needs its certificate and the run's CA (--tls-cert, --tls-key, --ca), or \
                 --insecure-plaintext for plaintext gRPC"
            ),
        }
    }

    fn to_args(dir: &Path, name: &str) -> Vec<String> {
        let path = |f: String| dir.join(f).display().to_string();
        vec![
            "--tls-cert".into(),
            path(format!("{name}.pem")),
            "--tls-key".into(),
            path(format!("{name}.key")),
            "--ca".into(),
            path("ca.pem".into()),
        ]
    }
}

/// For connecting, from a party's TLS for serving: the CA, and the party's identity.
fn client_tls(tls: &Option<ServerTls>) -> Option<ClientTls> {
    tls.as_ref().map(|t| ClientTls {
        ca_pem: t.client_ca_pem.clone().unwrap_or_default(),
        identity: Some((t.cert_pem.clone(), t.key_pem.clone())),
        domain: None,
    })
}

/// Binds `addr` and says where on stdout (`listening on ADDR`, the first line).
fn listen(rt: &tokio::runtime::Runtime, addr: &str) -> Result<tokio::net::TcpListener> {
    use std::io::Write as _;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("listening on {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    Ok(listener)
}

#[derive(Args)]
pub(crate) struct AuthorityArgs {
    /// Address to serve on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: String,
    #[command(flatten)]
    party: PartyArgs,
    /// The training server's certificate (PEM): only a caller presenting it over mutual TLS
    /// gets function keys. Required with TLS.
    #[arg(long)]
    server_cert: Option<PathBuf>,
    /// Persist the audit log here (a new file; never overwritten): every function key,
    /// hash-chained, written before it is sent. `blindfold cryptonn audit FILE` verifies it.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    #[command(flatten)]
    tls: PartyTlsArgs,
}

pub(crate) fn authority_cmd(a: AuthorityArgs) -> Result<()> {
    let p = a.party.resolve()?;
    if p.mode == Mode::Hardened {
        bail!("hardened mode keeps all parties in one process (`cryptonn train --mode hardened`)");
    }
    init_log(tracing::Level::INFO);
    let tls = a.tls.server()?;
    let server = match (&a.server_cert, &tls) {
        (Some(path), Some(_)) => {
            ServerIdentity::from_pem(&pem(path)?).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        (None, Some(_)) => bail!("--server-cert: the training server's certificate, the only one function keys go to"),
        (Some(_), None) => bail!("--server-cert needs TLS (--tls-cert, --tls-key, --ca)"),
        (None, None) => ServerIdentity::AnyCaller,
    };
    let audit = match &a.audit_log {
        Some(path) => Some(Box::new(crate::cryptonn::audit_sink(path)?) as blindfold_service::cryptonn::AuditWriter),
        None => None,
    };
    let party = AuthorityParty::new(TrainingAuthority::unrestricted(p.features, p.batch_size, p.mode)?);
    let rt = runtime()?;
    let listener = listen(&rt, &a.listen)?;
    eprintln!(
        "key authority for {} (vectors of {} and {}), {} mode",
        a.party.model, p.features, p.batch_size, p.mode_name
    );
    rt.block_on(serve_authority(party, audit, server, listener, tls)).map_err(|e| anyhow!("the key authority: {e}"))
}

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Address the data owners connect to (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50062")]
    listen: String,
    /// The key authority (https://HOST:PORT; http:// with --insecure-plaintext).
    #[arg(long)]
    authority: String,
    /// Data owners to wait for, holding shards 0 to K−1.
    #[arg(long)]
    owners: u32,
    #[command(flatten)]
    party: PartyArgs,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// The test set the accuracy is measured on (public data; the server never sees the
    /// training set in the clear).
    #[command(flatten)]
    data: DataArgs,
    /// Seconds to wait for every data owner to join.
    #[arg(long, default_value_t = 600)]
    join_timeout: u64,
    /// Seconds to wait for an owner's batch before dropping the owner (training goes on with
    /// the others).
    #[arg(long, default_value_t = 300)]
    owner_timeout: u64,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print each epoch's outcome as one JSON line on stdout (for `train --owners`).
    #[arg(long, hide = true)]
    epoch_lines: bool,
    #[command(flatten)]
    tls: PartyTlsArgs,
}

pub(crate) fn server_cmd(a: ServerArgs) -> Result<()> {
    use std::io::Write as _;
    let p = a.party.resolve()?;
    if p.mode == Mode::Hardened {
        bail!("hardened mode keeps all parties in one process (`cryptonn train --mode hardened`)");
    }
    if a.owners == 0 {
        bail!("--owners 0: nobody to train on");
    }
    let test_set = a.data.load(Split::Test)?;
    p.check_images(&test_set, &a.data)?;
    let (model, cfg, bound) = a.schedule.config(&p, None)?;
    init_log(tracing::Level::INFO);
    let rt = runtime()?;
    let listener = listen(&rt, &a.listen)?;
    let tls = a.tls.server()?;
    let client = client_tls(&tls);
    let mut net = TrainingServerNet::start(
        rt.handle().clone(),
        listener,
        tls,
        a.owners,
        p.encoding.scale(),
        &a.authority,
        client,
    )
    .map_err(|e| anyhow!("{e}"))?;
    net.owner_timeout = Duration::from_secs(a.owner_timeout);
    let table = DlogTable::new(bound, (2 * bound + 1).min(1 << 23) as usize)?;
    let mut last = usize::MAX;
    let sizes = net
        .wait_for_owners(Duration::from_secs(a.join_timeout), |n| {
            if n != last {
                eprintln!("{n} of {} data owners joined", a.owners);
                last = n;
            }
        })
        .map_err(|e| anyhow!(e))?;
    eprintln!("{} data owners: {sizes:?} examples", a.owners);
    let (batches, owner_of) = FixedBatches::sharded(&sizes, p.batch_size, a.schedule.seed);
    let owner_ids = owner_of.iter().map(|&k| k as u32).collect();
    let mut products =
        ServerProducts::new(net, table, batches.clone(), owner_ids, p.features, p.classes, p.encoding, p.mode, p.lenet)
            .map_err(|e| anyhow!("{e}"))?;
    let mut fe = Trainer::new(model, &batches, cfg)?;
    let (mut before, mut reported, mut rows) = (BTreeMap::new(), 0, Vec::new());
    for epoch in 1..=a.schedule.epochs {
        let pb = bar(batches.len() as u64, &format!("epoch {epoch}"));
        let t = Instant::now();
        products.start_epoch(epoch as u32 - 1);
        fe.epoch(&batches, &mut products, |done, _| pb.set_position(done as u64))?;
        pb.finish_and_clear();
        for report in &products.reports()[reported..] {
            eprintln!("note: {report}");
        }
        reported = products.reports().len();
        let mut outcome = EpochOutcome::of(&mut fe, epoch, t.elapsed().as_secs_f64(), products.breakdown, &test_set)?;
        let now = products.link().bytes.clone();
        let bytes = bytes_since(&before, &now);
        before = now;
        eprintln!(
            "epoch {epoch}: {:.2}% in {:.1} s ({} batches skipped); bytes: {}",
            100.0 * outcome.encrypted_accuracy,
            outcome.seconds,
            outcome.skipped.len(),
            crate::cryptonn::bytes_line(&bytes)
        );
        outcome.bytes = Some(bytes);
        if a.epoch_lines {
            println!("{}", serde_json::to_string(&outcome)?);
            std::io::stdout().flush()?;
        }
        rows.push(outcome);
    }
    products.link_mut().finish();
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `I/K`: shard I (from 0) of K.
#[derive(Clone, Copy)]
pub(crate) struct ShardArg(Shard);

impl std::str::FromStr for ShardArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected I/K, shard I (from 0) of K, e.g. 0/3");
        let (i, k) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<u32>().map_err(|_| bad())?, k.trim().parse::<u32>().map_err(|_| bad())?);
        if index >= count {
            return Err(format!("shard {index} of {count}: shards are numbered from 0 to {}", count.saturating_sub(1)));
        }
        Ok(Self(Shard { index, count }))
    }
}

#[derive(Args)]
pub(crate) struct OwnerArgs {
    /// The training server (https://HOST:PORT; http:// with --insecure-plaintext).
    #[arg(long)]
    server: String,
    /// The key authority, for its public keys.
    #[arg(long)]
    authority: String,
    /// This owner's shard, I/K: shard I (from 0) of the training set split K ways by
    /// --split and --seed; it is also the owner's id.
    #[arg(long)]
    shard: ShardArg,
    #[command(flatten)]
    data: DataArgs,
    /// Split the first N training images only (as every owner of the run does).
    #[arg(long)]
    limit: Option<usize>,
    /// How the training set is split: iid, dirichlet:ALPHA, label-skew:K or size-skew.
    #[arg(long, default_value = "iid")]
    split: Partition,
    /// Seed of the split.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The training files in --data-dir are this owner's own data: use them whole, as owner
    /// I of K, instead of shard I of a split.
    #[arg(long, conflicts_with_all = ["split", "limit"])]
    own_data: bool,
    #[command(flatten)]
    party: PartyArgs,
    #[command(flatten)]
    tls: PartyTlsArgs,
}

pub(crate) fn owner_cmd(a: OwnerArgs) -> Result<()> {
    let p = a.party.resolve()?;
    let mut train_set = a.data.load(Split::Train)?;
    if let Some(n) = a.limit {
        train_set = train_set.truncate(n);
    }
    p.check_images(&train_set, &a.data)?;
    init_log(tracing::Level::INFO);
    let Shard { index, count } = a.shard.0;
    let data = if a.own_data {
        train_set
    } else {
        let members = blindfold_data::partition(&train_set.labels, count as usize, a.split, a.seed)
            .with_context(|| format!("splitting {} examples {count} ways ({})", train_set.len(), a.split))?;
        train_set.subset(&members[index as usize])
    };
    eprintln!("data owner {index}: shard {index} of {count}, {} examples of {}", data.len(), a.data.dataset.name());
    let mut owner = OwnerParty::new(index, a.shard.0, &data, p.encoding, p.classes, p.batch_size, p.lenet);
    let tls = client_tls(&a.tls.server()?);
    let rt = runtime()?;
    let summary = run_owner(rt.handle(), &mut owner, &a.server, tls.clone(), &a.authority, tls)
        .map_err(|s| anyhow!("data owner {index}: {}", s.message()))?;
    eprintln!(
        "data owner {index}: {} batches sent, {} requests refused; {:.1} MB to the server, {:.1} MB from it; \
         {:.1} kB from the key authority",
        summary.batches,
        summary.refused,
        summary.server_bytes.0 as f64 / 1e6,
        summary.server_bytes.1 as f64 / 1e6,
        summary.authority_bytes.1 as f64 / 1e3
    );
    Ok(())
}

/// `cryptonn train --owners K`: the authority, the server and K owners as child processes on
/// loopback, over mutual TLS with certificates made for the run (in a directory removed at
/// the end). Every child is killed if the run stops early.
pub(crate) struct Processes {
    /// The certificates and keys; removed when dropped.
    dir: tempfile::TempDir,
    authority: Child,
    server: Child,
    server_out: std::io::Lines<BufReader<ChildStdout>>,
    /// Kept open: the authority's stdout after its address.
    _authority_out: std::io::Lines<BufReader<ChildStdout>>,
    owners: Vec<Child>,
}

impl Processes {
    pub(crate) fn start(
        data: &DataArgs,
        party: &PartyArgs,
        schedule: &ScheduleArgs,
        owners: usize,
        split: Partition,
        limit: Option<usize>,
        audit_log: Option<&Path>,
    ) -> Result<Self> {
        // A new directory of a random name, readable by this user only.
        let tempdir = tempfile::Builder::new()
            .prefix("blindfold-cryptonn-")
            .tempdir()
            .context("creating a directory for the run's certificates")?;
        let dir = tempdir.path().to_path_buf();
        certificates(&dir, owners)?;
        let exe = std::env::current_exe().context("finding this program")?;
        let mut data_args = vec!["--dataset".to_string(), data.dataset.name().to_string()];
        if let Some(d) = &data.data_dir {
            data_args.extend(["--data-dir".into(), d.display().to_string()]);
        }
        let spawn = |args: Vec<String>, stdout: Stdio| {
            Command::new(&exe).arg("cryptonn").args(&args).stdout(stdout).stdin(Stdio::null()).spawn()
        };
        let mut args: Vec<String> = vec!["authority".into(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(party.to_args());
        args.extend(PartyTlsArgs::to_args(&dir, "authority"));
        args.extend(["--server-cert".into(), dir.join("server.pem").display().to_string()]);
        if let Some(log) = audit_log {
            args.extend(["--audit-log".into(), log.display().to_string()]);
        }
        let mut authority = spawn(args, Stdio::piped()).context("starting the key authority")?;
        let kill = |c: &mut Child| {
            let _ = c.kill();
            let _ = c.wait();
        };
        let mut authority_out = BufReader::new(authority.stdout.take().expect("piped")).lines();
        let authority_url = match parse_address(authority_out.next()) {
            Ok(port) => format!("https://localhost:{port}"),
            Err(e) => {
                kill(&mut authority);
                return Err(e.context("the key authority"));
            }
        };
        let mut args: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--authority".into(),
            authority_url.clone(),
            "--owners".into(),
            owners.to_string(),
            "--epoch-lines".into(),
        ];
        args.extend(party.to_args());
        args.extend(schedule.to_args());
        args.extend(data_args.clone());
        args.extend(PartyTlsArgs::to_args(&dir, "server"));
        let mut server = match spawn(args, Stdio::piped()) {
            Ok(s) => s,
            Err(e) => {
                kill(&mut authority);
                return Err(anyhow!(e).context("starting the training server"));
            }
        };
        let mut this = Self {
            dir: tempdir,
            server_out: BufReader::new(server.stdout.take().expect("piped")).lines(),
            _authority_out: authority_out,
            authority,
            server,
            owners: Vec::new(),
        };
        let server_url =
            format!("https://localhost:{}", parse_address(this.server_out.next()).context("the training server")?);
        for k in 0..owners {
            let mut args: Vec<String> = vec![
                "owner".into(),
                "--server".into(),
                server_url.clone(),
                "--authority".into(),
                authority_url.clone(),
                "--shard".into(),
                format!("{k}/{owners}"),
                "--split".into(),
                split.to_string(),
                "--seed".into(),
                schedule.seed.to_string(),
            ];
            if let Some(n) = limit {
                args.extend(["--limit".into(), n.to_string()]);
            }
            args.extend(party.to_args());
            args.extend(data_args.clone());
            args.extend(PartyTlsArgs::to_args(this.dir.path(), &format!("owner-{k}")));
            this.owners.push(spawn(args, Stdio::null()).with_context(|| format!("starting data owner {k}"))?);
        }
        Ok(this)
    }

    /// The training server's outcome of its next epoch.
    pub(crate) fn next_epoch(&mut self) -> Result<EpochOutcome> {
        match self.server_out.next() {
            Some(Ok(line)) => {
                serde_json::from_str(&line).with_context(|| format!("the training server's report {line:?}"))
            }
            _ => {
                let status = self.server.wait()?;
                bail!("the training server stopped ({status}) before the last epoch; its errors are above")
            }
        }
    }

    /// Waits for the server and the owners to finish, then stops the authority.
    pub(crate) fn finish(mut self) -> Result<()> {
        let status = self.server.wait()?;
        if !status.success() {
            bail!("the training server ended with {status}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (k, owner) in self.owners.iter_mut().enumerate() {
            loop {
                match owner.try_wait()? {
                    Some(s) if !s.success() => eprintln!("note: data owner {k} ended with {s}"),
                    Some(_) => {}
                    None if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    None => eprintln!("note: data owner {k} still running after the server ended: stopped"),
                }
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in self.owners.iter_mut().chain([&mut self.server, &mut self.authority]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The port in a child's first stdout line, `listening on ADDR`.
fn parse_address(line: Option<std::io::Result<String>>) -> Result<u16> {
    let line = line.transpose()?.ok_or_else(|| anyhow!("stopped before listening; its errors are above"))?;
    line.strip_prefix("listening on ")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .ok_or_else(|| anyhow!("printed {line:?} where `listening on ADDR` was due"))
}

/// A CA for the run and a certificate for `localhost` signed by it for each party
/// (`authority`, `server`, `owner-K`), as `NAME.pem` and `NAME.key` in `dir`; the CA's key is
/// dropped once they are made.
fn certificates(dir: &Path, owners: usize) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    let names =
        ["authority".to_string(), "server".to_string()].into_iter().chain((0..owners).map(|k| format!("owner-{k}")));
    for name in names {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        write_private(&dir.join(format!("{name}.key")), key.serialize_pem().as_bytes())?;
    }
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}
