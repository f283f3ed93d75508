//! `blindfold serve` and `blindfold client`: the model holder as a gRPC service, and a client
//! that keeps its secret key and sends only evaluation keys and ciphertexts over the network.

use crate::import::{load_model, ImportArgs};
use crate::infer::ChainArgs;
use crate::progress::bar;
use crate::report::{percentile, Percentiles};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_data::Split;
use blindfold_nn::argmax;
use blindfold_nn::compile::ChainOptions;
use blindfold_protocol::{Client, CompiledModel, Message};
use blindfold_service::{
    serve, serve_coordinator, ClientTls, CoordinatorService, InfoReply, NatsModelHolder, NatsOptions, NatsTls,
    RemoteModelHolder, ServeOptions, ServerTls, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_STORED, DEFAULT_PREFIX,
};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The trained model (blindfold's model file or ONNX).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    import: ImportArgs,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Clients whose evaluation keys are kept; beyond it the least recently used are dropped
    /// (their clients upload again).
    #[arg(long, default_value_t = DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Keep uploaded keys in this directory, by key id, so they survive a restart (clients
    /// need not upload again).
    #[arg(long)]
    key_store: Option<PathBuf>,
    /// Key sets kept in --key-store (or the NATS key store), the oldest dropped first.
    #[arg(long, default_value_t = DEFAULT_MAX_STORED)]
    max_stored: usize,
    /// Also serve as one of several replicas through NATS JetStream at this address (e.g.
    /// nats://127.0.0.1:4222): keys in the engine's object store, shared by every replica
    /// (replaces --key-store), and encrypted images taken from its work queue, each
    /// acknowledged only once its reply is stored. The NATS server needs JetStream and a
    /// max_payload above the plan's request size (scripts/nats.sh starts one).
    #[arg(long, conflicts_with = "key_store")]
    nats: Option<String>,
    #[command(flatten)]
    nats_opts: NatsArgs,
    /// With --nats: how long this replica may hold an image unacknowledged before NATS gives
    /// it to another replica (when this one dies), in milliseconds.
    #[arg(long, default_value_t = 30_000, requires = "nats")]
    ack_wait_ms: u64,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    chain: ChainArgs,
    /// Circuit privacy at this statistical security λ (bits): the circuit ends with a mask
    /// keeping one copy of each score, clients send their public key with their evaluation
    /// keys, and every response is re-randomized and flooded with Gaussian noise sized by a
    /// calibration of the network's error (the plan is refused if the flooding would exceed
    /// 2^-7 per score; the ring and scale grow to make room, so evaluation is slower:
    /// SECURITY.md). Off by default.
    #[arg(long, value_name = "BITS")]
    circuit_privacy: Option<u32>,
}

/// Where on NATS (server and client side).
#[derive(Args)]
struct NatsArgs {
    /// With --nats: prefix of the NATS subjects, streams and key bucket, one per model.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    nats_prefix: String,
    /// With --nats: require TLS, verifying the NATS server's certificate against this CA (PEM).
    #[arg(long, requires = "nats")]
    nats_ca: Option<PathBuf>,
    /// With --nats-ca: this party's certificate chain (PEM), for a NATS server that verifies
    /// its clients; needs --nats-tls-key.
    #[arg(long, requires = "nats_ca", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// This party's private key (PEM).
    #[arg(long, requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    fn tls(&self) -> Option<NatsTls> {
        Some(NatsTls { ca: self.nats_ca.clone()?, identity: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()) })
    }
}

/// How a server (model holder or coordinator) serves: TLS, or plaintext when asked for.
#[derive(Args)]
struct ServerTlsArgs {
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC (no TLS): no server authentication, no integrity of replies.
    /// What crosses the wire is public by design (plan, evaluation keys, ciphertexts), but use
    /// it only on a trusted network or behind a TLS-terminating proxy.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_plaintext: bool,
    /// Log level on stderr: error, warn, info, or debug (one line per request: key id prefix,
    /// bytes, milliseconds, refusals; never key or ciphertext bytes).
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

impl ServerTlsArgs {
    /// Starts the log on stderr, and gives the TLS configuration, or none with
    /// --insecure-plaintext (said on stderr).
    fn server_tls(&self) -> Result<Option<ServerTls>> {
        init_log(self.log_level);
        Ok(match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert_pem: pem(cert)?,
                key_pem: pem(key)?,
                client_ca_pem: self.client_ca.as_deref().map(pem).transpose()?,
            }),
            _ if self.insecure_plaintext => {
                eprintln!(
                    "warning: serving plaintext gRPC (--insecure-plaintext): clients cannot authenticate this server"
                );
                None
            }
            _ => bail!(
                "a server needs a certificate (--tls-cert and --tls-key), or --insecure-plaintext for plaintext gRPC"
            ),
        })
    }
}

#[derive(Args)]
pub(crate) struct CoordinateArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: String,
    /// The model holders' addresses (`blindfold serve`), comma-separated; they must serve the
    /// same architecture on the same parameters.
    #[arg(long, value_delimiter = ',', required = true)]
    holders: Vec<String>,
    /// How long to wait for each holder's reply to an image before leaving it out.
    #[arg(long, default_value_t = 10_000)]
    deadline_ms: u64,
    /// Verify the holders' TLS certificates against this CA (PEM); their addresses are then
    /// https.
    #[arg(long)]
    holders_ca: Option<PathBuf>,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

pub(crate) fn coordinate_cmd(a: CoordinateArgs) -> Result<()> {
    let tls = a.tls.server_tls()?;
    let holders_tls = match &a.holders_ca {
        Some(ca) => Some(ClientTls { ca_pem: pem(ca)?, identity: None, domain: None }),
        None => None,
    };
    let deadline = std::time::Duration::from_millis(a.deadline_ms);
    runtime()?.block_on(async {
        let service = CoordinatorService::connect(&a.holders, holders_tls, deadline)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let listener =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        eprintln!("coordinating {} model holders (the mean of their scores)", a.holders.len());
        serve_coordinator(service, listener, tls).await.map_err(|e| anyhow::anyhow!("serving: {e}"))
    })
}

/// Largest PEM file read (1 MiB).
const MAX_PEM: u64 = 1 << 20;

/// The log on stderr: blindfold's service at `level`, the transport's own (h2, hyper) at warn.
pub(crate) fn init_log(level: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::WARN.min(level))
        .with_target("blindfold_service", level);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

pub(crate) fn pem(path: &std::path::Path) -> Result<Vec<u8>> {
    crate::files::read_file(path, MAX_PEM)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub(crate) fn serve_cmd(a: ServeArgs) -> Result<()> {
    let tls = a.tls.server_tls()?;
    let model = load_model(&a.model, &a.import, None)?.model;
    let opts = ChainOptions { circuit_privacy: a.circuit_privacy.filter(|&l| l > 0), ..a.chain.options() };
    let compiled = CompiledModel::new(&model, &opts).with_context(|| format!("compiling {}", a.model.display()))?;
    let info = compiled.info();
    eprintln!(
        "serving {} ({}, depth {}, {} rotation keys)",
        a.model.display(),
        info.parameters_name(),
        info.depth,
        info.rotation_keys.len()
    );
    if let Some(f) = compiled.flooding() {
        eprintln!(
            "circuit privacy: {}-bit statistical; each score carries Gaussian noise of standard deviation {:.1e}",
            f.lambda, f.width
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime()?.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        eprintln!("clients connect with --server {scheme}://{}", listener.local_addr()?);
        let nats = a.nats.as_ref().map(|url| NatsOptions {
            prefix: a.nats_opts.nats_prefix.clone(),
            ack_wait: std::time::Duration::from_millis(a.ack_wait_ms),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            tls: a.nats_opts.tls(),
            ..NatsOptions::new(url)
        });
        if let Some(url) = &a.nats {
            eprintln!("a replica on NATS at {url} (prefix {})", a.nats_opts.nats_prefix);
        }
        let opts = ServeOptions {
            max_sessions: a.max_sessions,
            tls,
            key_store: a.key_store.clone(),
            max_stored: a.max_stored,
            nats,
        };
        serve(compiled, listener, opts).await.map_err(|e| anyhow::anyhow!("serving: {e}"))
    })
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("to").required(true).args(["server", "nats"]))]
pub(crate) struct ClientArgs {
    /// The model holder's address, e.g. http://127.0.0.1:50051 (https://… with --ca).
    #[arg(long)]
    server: Option<String>,
    /// Go through NATS JetStream instead, to replicas started with `serve --nats` (e.g.
    /// nats://127.0.0.1:4222).
    #[arg(long)]
    nats: Option<String>,
    #[command(flatten)]
    nats_opts: NatsArgs,
    /// Verify the server's TLS certificate against this CA (PEM); the address is then https.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This client's certificate chain (PEM), for servers that require one; needs --tls-key.
    #[arg(long, requires = "tls_key", requires = "ca")]
    tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name in the server's certificate, if not the address's host.
    #[arg(long, requires = "ca")]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Classify test images on the remote model holder: keys made and uploaded once, then
    /// one encrypted image per request; prints and writes a report. Against an ensemble
    /// coordinator (`blindfold coordinate`; also spelled `client … ensemble`), the report names
    /// the holders left out of any reply.
    #[command(alias = "ensemble")]
    Infer(RemoteInferArgs),
    /// Load the model holder: several concurrent clients, each with its own keys and its own
    /// connection, sending encrypted images (made before the clock starts) one request after
    /// another; sustained throughput, latency percentiles, errors, and (with --server-pid)
    /// the server's resident memory after the first and the last thousand requests.
    Load(LoadArgs),
    /// Send malformed requests of every kind a client can get wrong — garbage bytes, truncated
    /// and oversized requests, a reply sent back as a request, unknown key ids, keys given as a
    /// request and a request as keys, keys of other parameters — checking each is refused with its gRPC status, and that
    /// a valid request still classifies correctly after every 50; exits non-zero otherwise.
    Abuse(AbuseArgs),
}

#[derive(Args)]
struct AbuseArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Malformed requests to send.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Also upload this many distinct clients' keys (the server keeps a bounded number).
    #[arg(long, default_value_t = 0)]
    clients: usize,
    /// The server's process id (same machine): its resident memory is read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests per client.
    #[arg(long, default_value_t = 250)]
    images: usize,
    /// Distinct encrypted images per client, sent in turn (each reply is decrypted and must
    /// give the class the first reply to the same request gave).
    #[arg(long, default_value_t = 8)]
    distinct: usize,
    /// The server's process id (same machine): its resident memory is read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The served model's file (blindfold's or ONNX), here to check every reply against: its
    /// class must be the plaintext model's for the image.
    #[arg(long)]
    check_model: Option<PathBuf>,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one load client saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: usize,
    inconsistent: usize,
    correct: usize,
    disagree: usize,
    duplicates: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.latencies.extend(o.latencies);
        self.errors += o.errors;
        self.inconsistent += o.inconsistent;
        self.correct += o.correct;
        self.disagree += o.disagree;
        self.duplicates += o.duplicates;
    }
}

#[derive(Serialize)]
struct LoadReport {
    server: String,
    clients: usize,
    requests: usize,
    errors: usize,
    /// Replies that decrypted to another class than the first reply to the same request.
    inconsistent: usize,
    /// With --check-model: replies whose class is not the plaintext model's for the image.
    disagree_with_plaintext: Option<usize>,
    /// Second replies to a request already answered (through NATS; 0 over gRPC).
    duplicate_replies: usize,
    encrypted_accuracy: f64,
    images_per_second: f64,
    latency_ms: LoadLatency,
    /// The server's resident memory (MB) after the first 1,000 replies and after the last.
    server_rss_mb: Option<(f64, f64)>,
    parameters: String,
}

#[derive(Serialize)]
struct LoadLatency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Args)]
struct RemoteInferArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Number of test images.
    #[arg(long, default_value_t = 20)]
    n_test: usize,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Send the images on one stream, 64 at a time (encrypted first, decrypted after): the
    /// server's throughput rather than one image's latency. Through NATS: 64 in flight.
    #[arg(long)]
    stream: bool,
    /// Write every image's class here (CSV: image, label, class, and the holders an ensemble
    /// coordinator left out of its reply, separated by ';').
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Use the keys `blindfold keygen` wrote to this directory instead of making new ones (a
    /// client that comes back: the server may hold its keys already).
    #[arg(long)]
    keys: Option<PathBuf>,
}

/// Images per stream in `client infer --stream`.
const STREAM_BATCH: usize = 64;

#[derive(Serialize)]
struct RemoteReport {
    server: String,
    dataset: String,
    n: usize,
    encrypted_accuracy: f64,
    parameters: String,
    depth: usize,
    /// Request to reply, seen by the client (network and server).
    round_trip_ms: Percentiles,
    encrypt_ms_p50: f64,
    decrypt_ms_p50: f64,
    key_upload_ms: f64,
    /// Whether the server (or the NATS key store) held this client's keys before the upload.
    keys_already_held: bool,
    /// Through NATS: second replies to a request already answered (0: each answered once).
    duplicate_replies: usize,
    /// Images classified per second of waiting for the server (requests sent to replies
    /// received), client work excluded.
    images_per_second: f64,
    streamed: bool,
    /// Through an ensemble coordinator: for each holder it left out of some replies, how many.
    holders_left_out: std::collections::BTreeMap<usize, usize>,
    bytes: RemoteBytes,
}

#[derive(Serialize)]
struct RemoteBytes {
    eval_keys: usize,
    request: usize,
    reply: usize,
}

/// Where a client sends its work: one model holder over gRPC, or replicas through NATS.
#[derive(Clone)]
enum Target {
    Grpc { url: String, tls: Option<ClientTls> },
    Nats { url: String, prefix: String, tls: Option<NatsTls> },
}

impl Target {
    fn of(a: &ClientArgs) -> Result<Self> {
        Ok(match (&a.server, &a.nats) {
            (Some(url), _) => Self::Grpc { url: url.clone(), tls: client_tls(a)? },
            (None, Some(url)) => {
                Self::Nats { url: url.clone(), prefix: a.nats_opts.nats_prefix.clone(), tls: a.nats_opts.tls() }
            }
            (None, None) => bail!("give --server or --nats"),
        })
    }

    fn name(&self) -> String {
        match self {
            Self::Grpc { url, .. } => url.clone(),
            Self::Nats { url, prefix, .. } => format!("{url} (NATS, prefix {prefix})"),
        }
    }

    async fn connect(&self) -> Result<Remote, tonic::Status> {
        Ok(match self {
            Self::Grpc { url, tls } => Remote::Grpc(RemoteModelHolder::connect(url.clone(), tls.clone()).await?),
            Self::Nats { url, prefix, tls } => {
                Remote::Nats(Box::new(NatsModelHolder::connect(url, prefix, tls.as_ref()).await?))
            }
        })
    }
}

/// A connection to a [`Target`].
enum Remote {
    Grpc(RemoteModelHolder),
    Nats(Box<NatsModelHolder>),
}

impl Remote {
    async fn info(&mut self) -> Result<(blindfold_protocol::PlanInfo, InfoReply), tonic::Status> {
        match self {
            Self::Grpc(r) => r.info().await,
            Self::Nats(r) => r.info().await,
        }
    }

    async fn upload_keys(&mut self, keys: &[u8]) -> Result<bool, tonic::Status> {
        match self {
            Self::Grpc(r) => r.upload_keys(keys).await,
            Self::Nats(r) => r.upload_keys(keys).await,
        }
    }

    async fn evaluate(&mut self, request: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        match self {
            Self::Grpc(r) => r.evaluate(request).await,
            Self::Nats(r) => r.evaluate(request).await,
        }
    }

    /// The requests on one stream (several in flight through NATS), or one at a time, each
    /// reply with the holders an ensemble coordinator left out of it.
    async fn send(
        &mut self,
        requests: Vec<Vec<u8>>,
        stream: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<usize>)>, tonic::Status> {
        let in_flight = if stream { STREAM_BATCH } else { 1 };
        match self {
            Self::Grpc(r) if stream => {
                Ok(r.evaluate_stream(requests).await?.into_iter().map(|r| (r, Vec::new())).collect())
            }
            Self::Grpc(r) => {
                let mut replies = Vec::with_capacity(requests.len());
                for request in requests {
                    replies.push(r.evaluate_reporting(request).await?);
                }
                Ok(replies)
            }
            Self::Nats(r) => r
                .evaluate_many(requests, in_flight)
                .await?
                .into_iter()
                .map(|(reply, _)| Ok((reply?, Vec::new())))
                .collect(),
        }
    }

    /// Second replies to a request already answered (through NATS; 0 over gRPC), after
    /// waiting `wait` for stragglers.
    async fn duplicates(&mut self, wait: std::time::Duration) -> usize {
        match self {
            Self::Grpc(_) => 0,
            Self::Nats(r) => {
                r.drain(wait).await;
                r.duplicates()
            }
        }
    }
}

fn client_tls(a: &ClientArgs) -> Result<Option<ClientTls>> {
    Ok(match &a.ca {
        Some(ca) => Some(ClientTls {
            ca_pem: pem(ca)?,
            identity: match (&a.tls_cert, &a.tls_key) {
                (Some(c), Some(k)) => Some((pem(c)?, pem(k)?)),
                _ => None,
            },
            domain: a.tls_domain.clone(),
        }),
        None => None,
    })
}

pub(crate) fn client_cmd(a: ClientArgs) -> Result<()> {
    let args = match &a.command {
        ClientCommand::Infer(args) => args,
        ClientCommand::Load(load) => return load_cmd(&a, load),
        ClientCommand::Abuse(abuse) => return abuse_cmd(&a, abuse),
    };
    let test = args.data.load(Split::Test)?.truncate(args.n_test);
    if test.is_empty() {
        bail!("--n-test 0: nothing to classify");
    }
    let (target, json) = (Target::of(&a)?, args.json.clone());
    let report = runtime()?.block_on(async move {
        let mut remote = target.connect().await?;
        let (plan, limits) = remote.info().await?;
        let (mut client, keys) = match &args.keys {
            Some(dir) => {
                let (client, made_for) = crate::files::load_client_and_plan(dir)?;
                if made_for != plan {
                    bail!("the keys in {} were made for another plan than the server's", dir.display());
                }
                let keys = crate::files::read_file(&dir.join("eval.keys"), limits.max_keys_bytes)?;
                (client, keys)
            }
            None => {
                let (client, keys) = Client::new(&plan).context("the server's plan")?;
                (client, keys.to_bytes())
            }
        };
        let t = Instant::now();
        let keys_already_held = remote.upload_keys(&keys).await?;
        let key_upload_ms = t.elapsed().as_secs_f64() * 1e3;
        let pb = bar(test.len() as u64, "remote");
        let (mut correct, mut rtt, mut enc, mut dec, mut sizes) = (0, Vec::new(), Vec::new(), Vec::new(), (0, 0));
        let mut waited = 0f64;
        let mut left_out = std::collections::BTreeMap::new();
        let mut csv = String::from("image,label,class,left_out\n");
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let batch = if args.stream { STREAM_BATCH } else { 1 };
        for start in (0..test.len()).step_by(batch) {
            let idx: Vec<usize> = (start..(start + batch).min(test.len())).collect();
            let mut encrypt = || -> Result<Vec<Vec<u8>>> {
                idx.iter().map(|&i| Ok(client.encrypt_pixels(test.images.image(i))?.to_bytes())).collect()
            };
            let t0 = Instant::now();
            let requests = encrypt()?;
            let request_len = requests[0].len();
            let t1 = Instant::now();
            let replies = match remote.send(requests, args.stream).await {
                // The server dropped this client's keys (a restart, or more clients than it
                // keeps): upload them again and send the images again, once.
                Err(s) if s.code() == tonic::Code::NotFound => {
                    remote.upload_keys(&keys).await?;
                    remote.send(encrypt()?, args.stream).await?
                }
                r => r?,
            };
            let t2 = Instant::now();
            for (&i, (reply, missing)) in idx.iter().zip(&replies) {
                for &h in missing {
                    *left_out.entry(h).or_insert(0usize) += 1;
                }
                let scores = client.decrypt_scores(&Message::from_bytes(reply)?)?;
                let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
                let class = argmax(&s32);
                correct += usize::from(class == test.labels[i] as usize);
                let missing: Vec<String> = missing.iter().map(usize::to_string).collect();
                csv += &format!("{i},{},{class},{}\n", test.labels[i], missing.join(";"));
            }
            let t3 = Instant::now();
            let k = idx.len() as f64;
            enc.push(ms(t0, t1) / k);
            rtt.push(ms(t1, t2) / k);
            dec.push(ms(t2, t3) / k);
            waited += (t2 - t1).as_secs_f64();
            sizes = (request_len, replies.first().map_or(0, |r| r.0.len()));
            pb.inc(idx.len() as u64);
        }
        pb.finish_and_clear();
        let duplicate_replies = remote.duplicates(std::time::Duration::ZERO).await;
        if let Some(path) = &args.predictions {
            std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        }
        anyhow::Ok(RemoteReport {
            server: target.name(),
            dataset: args.data.dataset.to_string(),
            n: test.len(),
            encrypted_accuracy: correct as f64 / test.len() as f64,
            parameters: plan.parameters_name(),
            depth: plan.depth,
            round_trip_ms: Percentiles { p50: percentile(&mut rtt, 0.5), p95: percentile(&mut rtt, 0.95) },
            encrypt_ms_p50: percentile(&mut enc, 0.5),
            decrypt_ms_p50: percentile(&mut dec, 0.5),
            key_upload_ms,
            keys_already_held,
            duplicate_replies,
            images_per_second: test.len() as f64 / waited.max(1e-9),
            streamed: args.stream,
            holders_left_out: left_out,
            bytes: RemoteBytes { eval_keys: keys.len(), request: sizes.0, reply: sizes.1 },
        })
    })?;
    println!("{:<22} {}", "server", report.server);
    println!("{:<22} {} ({} images)", "dataset", report.dataset, report.n);
    println!("{:<22} {:.2}%", "encrypted accuracy", 100.0 * report.encrypted_accuracy);
    println!(
        "{:<22} p50 {:.1} ms, p95 {:.1} ms per image (network and server{})",
        "round trip",
        report.round_trip_ms.p50,
        report.round_trip_ms.p95,
        if report.streamed { ", averaged over each stream of 64" } else { "" }
    );
    println!("{:<22} {:.1} images/s", "throughput", report.images_per_second);
    println!("{:<22} encrypt {:.1} ms, decrypt {:.1} ms (p50)", "client", report.encrypt_ms_p50, report.decrypt_ms_p50);
    println!(
        "{:<22} keys {:.1} MB once ({:.0} ms), request {:.2} MB, reply {:.2} MB",
        "on the wire",
        report.bytes.eval_keys as f64 / 1e6,
        report.key_upload_ms,
        report.bytes.request as f64 / 1e6,
        report.bytes.reply as f64 / 1e6
    );
    println!("{:<22} {}, depth {}", "parameters", report.parameters, report.depth);
    if report.keys_already_held {
        println!("{:<22} the server held this client's keys already: not uploaded again", "keys");
    }
    if report.duplicate_replies > 0 {
        println!("{:<22} {} second replies to requests already answered", "duplicates", report.duplicate_replies);
    }
    for (h, n) in &report.holders_left_out {
        println!(
            "{:<22} holder {h} left out of {n} of {} replies (failed or missed the deadline)",
            "ensemble", report.n
        );
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The resident memory of process `pid`, in MB (Linux).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1e3)
}

fn load_cmd(a: &ClientArgs, args: &LoadArgs) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if args.clients == 0 || args.images == 0 || args.distinct == 0 {
        bail!("--clients, --images and --distinct must be at least 1");
    }
    let test = args.data.load(Split::Test)?;
    let target = Target::of(a)?;
    // The plaintext model's class for each image the clients send.
    let plain: Option<Vec<usize>> = match &args.check_model {
        Some(path) => {
            let mut model = load_model(path, &Default::default(), None)?.model;
            let n = (args.clients * args.distinct).min(test.len());
            let images: Vec<&[u8]> = (0..n).map(|i| test.images.image(i)).collect();
            let logits = model.logits(&images).with_context(|| format!("running {} in plaintext", path.display()))?;
            Some(logits.rows().into_iter().map(|r| argmax(r.as_slice().expect("row-major"))).collect())
        }
        None => None,
    };
    let report = runtime()?.block_on(async {
        let (plan, _) = target.connect().await?.info().await?;
        // Keys and requests first, off the clock.
        let pb = bar(args.clients as u64, "keys and requests");
        let mut prepared = Vec::with_capacity(args.clients);
        for c in 0..args.clients {
            let (mut client, keys) = Client::new(&plan).context("the server's plan")?;
            let requests = (0..args.distinct)
                .map(|j| {
                    let i = (c * args.distinct + j) % test.len();
                    let expected = plain.as_ref().map(|p| p[i]);
                    Ok((test.labels[i] as usize, expected, client.encrypt_pixels(test.images.image(i))?.to_bytes()))
                })
                .collect::<Result<Vec<_>>>()?;
            prepared.push((client, keys.to_bytes(), requests));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let done = Arc::new(AtomicUsize::new(0));
        let first_rss = Arc::new(std::sync::Mutex::new(None));
        let start = Instant::now();
        let tasks: Vec<_> = prepared
            .into_iter()
            .map(|(client, keys, requests)| {
                let (target, done, first_rss) = (target.clone(), done.clone(), first_rss.clone());
                let (images, pid) = (args.images, args.server_pid);
                tokio::spawn(async move {
                    let mut remote = target.connect().await?;
                    remote.upload_keys(&keys).await?;
                    let mut tally = Tally::default();
                    let mut classes: Vec<Option<usize>> = vec![None; requests.len()];
                    for k in 0..images {
                        let (label, expected, request) = &requests[k % requests.len()];
                        let t = Instant::now();
                        let reply = remote.evaluate(request.clone()).await;
                        tally.latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        if done.fetch_add(1, Ordering::SeqCst) + 1 == 1000 {
                            *first_rss.lock().expect("not poisoned") = pid.and_then(rss_mb);
                        }
                        let class = reply.ok().and_then(|r| {
                            let scores = client.decrypt_scores(&Message::from_bytes(&r).ok()?).ok()?;
                            Some(argmax(&scores.iter().map(|&v| v as f32).collect::<Vec<_>>()))
                        });
                        let Some(class) = class else {
                            tally.errors += 1;
                            continue;
                        };
                        let first = classes[k % requests.len()].get_or_insert(class);
                        tally.inconsistent += usize::from(*first != class);
                        tally.correct += usize::from(class == *label);
                        tally.disagree += usize::from(expected.is_some_and(|e| e != class));
                    }
                    // Any second reply to a request comes within the acknowledgement wait.
                    tally.duplicates = remote.duplicates(std::time::Duration::from_secs(1)).await;
                    anyhow::Ok(tally)
                })
            })
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            all.add(t.await??);
        }
        let Tally { mut latencies, errors, inconsistent, correct, disagree, duplicates } = all;
        let seconds = start.elapsed().as_secs_f64();
        let requests = latencies.len();
        let last_rss = args.server_pid.and_then(rss_mb);
        let first_rss = *first_rss.lock().expect("not poisoned");
        anyhow::Ok(LoadReport {
            server: target.name(),
            clients: args.clients,
            requests,
            errors,
            inconsistent,
            disagree_with_plaintext: plain.is_some().then_some(disagree),
            duplicate_replies: duplicates,
            encrypted_accuracy: correct as f64 / requests.max(1) as f64,
            images_per_second: requests as f64 / seconds,
            latency_ms: LoadLatency {
                p50: percentile(&mut latencies, 0.5),
                p99: percentile(&mut latencies, 0.99),
                max: percentile(&mut latencies, 1.0),
            },
            server_rss_mb: first_rss.zip(last_rss),
            parameters: plan.parameters_name(),
        })
    })?;
    println!("{:<22} {}", "server", report.server);
    println!(
        "{:<22} {} clients, {} requests, {} errors, {} inconsistent replies, {} answered twice",
        "load", report.clients, report.requests, report.errors, report.inconsistent, report.duplicate_replies
    );
    if let Some(d) = report.disagree_with_plaintext {
        println!("{:<22} {d} replies disagree with the plaintext model", "checked");
    }
    println!("{:<22} {:.1} images/s sustained", "throughput", report.images_per_second);
    println!(
        "{:<22} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (p99/p50 {:.2})",
        "latency",
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.latency_ms.max,
        report.latency_ms.p99 / report.latency_ms.p50.max(1e-9)
    );
    println!("{:<22} {:.2}%", "encrypted accuracy", 100.0 * report.encrypted_accuracy);
    if let Some((first, last)) = report.server_rss_mb {
        println!("{:<22} {first:.0} MB after 1,000 replies, {last:.0} MB after the last", "server memory");
    }
    println!("{:<22} {}", "parameters", report.parameters);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let disagree = report.disagree_with_plaintext.unwrap_or(0);
    if report.errors + report.inconsistent + report.duplicate_replies + disagree > 0 {
        bail!(
            "under load: {} errors, {} inconsistent replies, {} answered twice, {disagree} disagreeing with the plaintext \
             model",
            report.errors,
            report.inconsistent,
            report.duplicate_replies
        );
    }
    Ok(())
}

fn abuse_cmd(a: &ClientArgs, args: &AbuseArgs) -> Result<()> {
    use tonic::Code;
    let test = args.data.load(Split::Test)?.truncate(1);
    if test.is_empty() {
        bail!("the dataset has no test image");
    }
    let Some(server) = &a.server else {
        bail!("abuse tests one gRPC model holder: give --server");
    };
    let tls = client_tls(a)?;
    runtime()?.block_on(async {
        let mut remote = RemoteModelHolder::connect(server.clone(), tls).await?;
        let (plan, limits) = remote.info().await?;
        let (mut client, keys) = Client::new(&plan).context("the server's plan")?;
        let keys = keys.to_bytes();
        remote.upload_keys(&keys).await?;
        let request = client.encrypt_pixels(test.images.image(0))?.to_bytes();
        let class_of = |reply: &[u8]| -> Result<usize> {
            let scores = client.decrypt_scores(&Message::from_bytes(reply)?)?;
            Ok(argmax(&scores.iter().map(|&v| v as f32).collect::<Vec<_>>()))
        };
        let reply = remote.evaluate(request.clone()).await?;
        let expected = class_of(&reply)?;
        // A stranger's request (keys never uploaded) and keys of other parameters.
        let (mut stranger, _) = Client::new(&plan)?;
        let unknown = stranger.encrypt_pixels(test.images.image(0))?.to_bytes();
        let other_plan = blindfold_protocol::PlanInfo::for_architecture(
            &plan.arch,
            &blindfold_nn::compile::ChainOptions { log_n: Some(plan.parameters.log_n + 1), ..Default::default() },
        )?;
        let (_, other_keys) = Client::new(&other_plan)?;
        let other_keys = other_keys.to_bytes();
        let mut state = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [
            "garbage",
            "truncated",
            "a reply as a request",
            "oversized",
            "unknown key id",
            "keys as a request",
            "request as keys",
            "keys of other parameters",
        ];
        let mut tally: Vec<(usize, usize)> = vec![(0, 0); kinds.len()];
        let pb = bar(args.requests as u64, "malformed");
        for k in 0..args.requests {
            let kind = k % kinds.len();
            let (status, want) = match kind {
                0 => {
                    let n = 1 + next() as usize % 4096;
                    (remote.evaluate((0..n).map(|_| next() as u8).collect()).await.err(), Code::InvalidArgument)
                }
                1 => {
                    let cut = next() as usize % request.len();
                    (remote.evaluate(request[..cut].to_vec()).await.err(), Code::InvalidArgument)
                }
                2 => (remote.evaluate(reply.clone()).await.err(), Code::InvalidArgument),
                3 => (
                    remote.evaluate(vec![0; limits.max_request_bytes as usize + 1]).await.err(),
                    Code::ResourceExhausted,
                ),
                4 => (remote.evaluate(unknown.clone()).await.err(), Code::NotFound),
                5 => {
                    // Keys are larger than any request: refused by gRPC's frame limit.
                    (remote.evaluate(keys.clone()).await.err(), Code::OutOfRange)
                }
                6 => (remote.upload_keys(&request).await.err(), Code::InvalidArgument),
                _ => (remote.upload_keys(&other_keys).await.err(), Code::InvalidArgument),
            };
            let code = status.as_ref().map(|s| s.code());
            if code == Some(want) {
                tally[kind].0 += 1;
            } else {
                tally[kind].1 += 1;
                eprintln!("{}: expected {want:?}, got {:?}", kinds[kind], status.map(|s| s.to_string()));
            }
            if k % 50 == 49 {
                let class = class_of(&remote.evaluate(request.clone()).await?)?;
                if class != expected {
                    bail!(
                        "after {} malformed requests the server classifies the image as {class}, before as {expected}",
                        k + 1
                    );
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        for (kind, (ok, wrong)) in kinds.iter().zip(&tally) {
            println!("{kind:<26} {ok} refused with the right status, {wrong} not");
        }
        let rss = |when: &str| {
            if let Some(mb) = args.server_pid.and_then(rss_mb) {
                println!("{:<26} {mb:.0} MB {when}", "server memory");
            }
        };
        rss("after the malformed requests");
        if args.clients > 0 {
            let pb = bar(args.clients as u64, "clients' keys");
            for _ in 0..args.clients {
                let (_, keys) = Client::new(&plan)?;
                remote.upload_keys(&keys.to_bytes()).await?;
                pb.inc(1);
            }
            pb.finish_and_clear();
            rss(&format!("after {} more clients' keys", args.clients));
        }
        // The first client's keys may have been evicted: upload again (what clients do).
        let last = match remote.evaluate(request.clone()).await {
            Err(s) if s.code() == Code::NotFound => {
                remote.upload_keys(&keys).await?;
                remote.evaluate(request.clone()).await?
            }
            r => r?,
        };
        if class_of(&last)? != expected {
            bail!("the server classifies the image differently after the abuse");
        }
        let wrong: usize = tally.iter().map(|t| t.1).sum();
        if wrong > 0 {
            bail!("{wrong} malformed requests were not refused with the right status");
        }
        println!("the server is alive and classifies a valid request as before");
        anyhow::Ok(())
    })
}
