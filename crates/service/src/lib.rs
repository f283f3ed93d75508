//! Network transport for blindfold's roles: a gRPC model-holder service and its client.
//!
//! The service only moves bytes. Each payload is a message of `blindfold_protocol`, decoded
//! and checked by the roles' own state machines ([`ModelHolder::handle_bytes`]); the service
//! adds sessions keyed by the client's key id (a bounded map, the least recently used session
//! evicted first) and limits on every message, taken from the plan. No cryptography here.
//!
//! Service definition: `proto/blindfold/v1/model_holder.proto` (compiled by protox at build
//! time, no system `protoc`). Beside it on the same port: the standard gRPC health service,
//! and `GET /metrics` (HTTP/1.1 or 2) with the service's metrics in the Prometheus/OpenMetrics
//! text format ([`Metrics`]).

use blindfold_protocol::{CompiledModel, Fault, KeyId, Message, ModelHolder, PlanInfo, ProtocolError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status, Streaming};

/// The generated gRPC types and stubs.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("blindfold.v1");
}

mod coordinator;
pub mod cryptonn;
pub use coordinator::{serve_coordinator, CoordinatorService, MISSING_METADATA};
mod nats;
pub use nats::{
    NatsModelHolder, NatsOptions, NatsReply, NatsTls, CLIENT_HEADER, DEFAULT_PREFIX, REQUEST_HEADER, STATUS_HEADER,
};

use proto::model_holder_client::ModelHolderClient;
use proto::model_holder_server::{ModelHolder as ModelHolderRpc, ModelHolderServer};
pub use proto::InfoReply;
use proto::{EvaluateReply, EvaluateRequest, InfoRequest, KeysChunk, UploadKeysReply};

/// Default number of client sessions (evaluation keys) a server keeps: beyond it the least
/// recently used is dropped and its client told to upload again.
pub const DEFAULT_MAX_SESSIONS: usize = 16;

/// Bytes per chunk when the client streams its evaluation keys.
pub const KEY_CHUNK: usize = 1 << 20;

/// HTTP/2 flow-control window per stream, in bytes (the connection's is twice it).
const WINDOW: u32 = 8 << 20;

/// The status for a protocol error: the peer's fault is `INVALID_ARGUMENT`, a setting's
/// `FAILED_PRECONDITION`, anything else `INTERNAL`.
fn status(e: ProtocolError) -> Status {
    match e.fault() {
        Fault::Peer => Status::invalid_argument(e.to_string()),
        Fault::Configuration => Status::failed_precondition(e.to_string()),
        Fault::Caller => Status::internal(e.to_string()),
    }
}

/// A streamed key upload: its bytes (refused past `max`, `RESOURCE_EXHAUSTED`), the
/// EvaluationKeys message they must decode to, and its key id.
async fn receive_keys(mut stream: Streaming<KeysChunk>, max: usize) -> Result<(Vec<u8>, Message, KeyId), Status> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if bytes.len() + chunk.data.len() > max {
            return Err(Status::resource_exhausted(format!(
                "evaluation keys of more than {max} bytes, the most this plan takes"
            )));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let msg = Message::from_bytes_limited(&bytes, max).map_err(status)?;
    let id = KeyId::of(&msg).ok_or_else(|| Status::invalid_argument("UploadKeys takes an EvaluationKeys message"))?;
    Ok((bytes, msg, id))
}

/// `RESOURCE_EXHAUSTED` for a request of more than `max` bytes.
fn check_request_len(len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "a request of {len} bytes, more than the {max} this plan takes"
        )));
    }
    Ok(())
}

/// Sessions by key id, with a use counter for least-recently-used eviction.
struct Sessions {
    map: HashMap<KeyId, (Arc<Mutex<ModelHolder>>, u64)>,
    clock: u64,
    capacity: usize,
}

impl Sessions {
    fn get(&mut self, id: &KeyId) -> Option<Arc<Mutex<ModelHolder>>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(id).map(|(s, used)| {
            *used = clock;
            s.clone()
        })
    }

    /// Adds a session (dropping the least recently used beyond the capacity) and returns it.
    fn insert(&mut self, id: KeyId, session: ModelHolder) -> Arc<Mutex<ModelHolder>> {
        while self.map.len() >= self.capacity.max(1) {
            let oldest = *self.map.iter().min_by_key(|(_, (_, used))| *used).expect("non-empty").0;
            self.map.remove(&oldest);
        }
        self.clock += 1;
        let session = Arc::new(Mutex::new(session));
        self.map.insert(id, (session.clone(), self.clock));
        session
    }
}

/// The model-holder service: one compiled model shared by every client session.
pub struct ModelHolderService(Arc<State>);

/// What the service's handlers share (with the tasks of streamed evaluations).
struct State {
    model: Arc<CompiledModel>,
    plan_json: String,
    sessions: Mutex<Sessions>,
    store: Option<KeyStore>,
    metrics: Metrics,
}

/// Labels of a finished call: the RPC and its gRPC status code (`Ok`, `NotFound`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CallLabels {
    rpc: &'static str,
    code: String,
}

/// What the service counts, served at `GET /metrics`: calls by RPC and status
/// (`blindfold_requests_total`), the time to evaluate one image
/// (`blindfold_evaluate_seconds`, a histogram), images being evaluated or waiting for a
/// thread (`blindfold_in_flight`), client sessions in memory (`blindfold_sessions`) and key
/// sets in the key store (`blindfold_stored_keys`), and for a NATS replica the images waiting
/// in the shared work queue or held unacknowledged by any replica (`blindfold_queue_depth`,
/// refreshed every 2 s). Sizes and counts only: never a key id's
/// bytes, a key or a ciphertext.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    calls: prometheus_client::metrics::family::Family<CallLabels, prometheus_client::metrics::counter::Counter>,
    evaluate_seconds: prometheus_client::metrics::histogram::Histogram,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    sessions: prometheus_client::metrics::gauge::Gauge,
    stored_keys: prometheus_client::metrics::gauge::Gauge,
    queue_depth: prometheus_client::metrics::gauge::Gauge,
}

impl Metrics {
    fn new() -> Self {
        use prometheus_client::metrics::histogram::exponential_buckets;
        let mut registry = prometheus_client::registry::Registry::with_prefix("blindfold");
        let m = Self {
            calls: Default::default(),
            evaluate_seconds: prometheus_client::metrics::histogram::Histogram::new(exponential_buckets(
                0.005, 2.0, 12,
            )),
            in_flight: Default::default(),
            sessions: Default::default(),
            stored_keys: Default::default(),
            queue_depth: Default::default(),
            registry: Default::default(),
        };
        registry.register("requests", "Calls by RPC and gRPC status", m.calls.clone());
        registry.register(
            "evaluate_seconds",
            "Time to evaluate one image, queueing included",
            m.evaluate_seconds.clone(),
        );
        registry.register("in_flight", "Images being evaluated or waiting for a thread", m.in_flight.clone());
        registry.register("sessions", "Client sessions (evaluation keys) in memory", m.sessions.clone());
        registry.register("stored_keys", "Key sets in the key store (on disk or in NATS)", m.stored_keys.clone());
        registry.register(
            "queue_depth",
            "NATS replicas: images waiting in the work queue or held unacknowledged",
            m.queue_depth.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a finished call.
    fn call<T>(&self, rpc: &'static str, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => "Ok".to_string(),
            Err(s) => {
                tracing::debug!(rpc, code = ?s.code(), "refused: {}", s.message());
                format!("{:?}", s.code())
            }
        };
        self.calls.get_or_create(&CallLabels { rpc, code }).inc();
    }

    /// The metrics in the OpenMetrics text format.
    fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl ModelHolderService {
    /// A service for `model` keeping at most `max_sessions` clients' keys in memory.
    pub fn new(model: Arc<CompiledModel>, max_sessions: usize) -> Self {
        Self(Arc::new(State::new(model, max_sessions, None)))
    }

    /// Largest gRPC message the service accepts: a request of the plan, or a key chunk.
    pub fn max_message_len(&self) -> usize {
        self.0.model.max_image_len().max(KEY_CHUNK) + 1024
    }
}

impl State {
    fn new(model: Arc<CompiledModel>, max_sessions: usize, store: Option<KeyStore>) -> Self {
        Self {
            plan_json: serde_json::to_string(model.info()).expect("plans serialize"),
            model,
            sessions: Mutex::new(Sessions { map: HashMap::new(), clock: 0, capacity: max_sessions }),
            store,
            metrics: Metrics::new(),
        }
    }

    /// A session for the keys `msg` carries (decoded and checked off the async threads).
    async fn open_session(&self, msg: Message) -> Result<ModelHolder, Status> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            let mut session = ModelHolder::new(model);
            session.handle(&msg).map(|_| session)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info_reply(&self) -> InfoReply {
        InfoReply {
            plan_json: self.plan_json.clone(),
            max_keys_bytes: self.model.max_keys_len() as u64,
            max_request_bytes: self.model.max_image_len() as u64,
            parameter_fingerprint: self.model.context().params().fingerprint().to_vec(),
        }
    }

    /// A session for keys not in memory, from the key store if it holds them (e.g. after a
    /// restart, or uploaded through another replica); `NOT_FOUND` otherwise.
    async fn session_from_store(&self, key_id: &KeyId) -> Result<Arc<Mutex<ModelHolder>>, Status> {
        let unknown = || Status::not_found(format!("unknown key id {key_id}: upload again"));
        let limit = self.model.max_keys_len();
        let bytes = match &self.store {
            Some(store) => store.get(key_id, limit).await.ok_or_else(unknown)?,
            None => return Err(unknown()),
        };
        let keys = Message::from_bytes_limited(&bytes, limit).map_err(status)?;
        if KeyId::of(&keys) != Some(*key_id) {
            return Err(Status::not_found(format!(
                "the key store holds other keys under key id {key_id}: upload again"
            )));
        }
        let session = self.open_session(keys).await?;
        Ok(self.insert_session(*key_id, session))
    }

    /// Keeps a client's session (the least recently used dropped beyond the capacity).
    fn insert_session(&self, id: KeyId, session: ModelHolder) -> Arc<Mutex<ModelHolder>> {
        let mut sessions = self.sessions();
        let session = sessions.insert(id, session);
        self.metrics.sessions.set(sessions.map.len() as i64);
        session
    }
}

#[tonic::async_trait]
impl ModelHolderRpc for ModelHolderService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        Ok(Response::new(self.0.info_reply()))
    }

    async fn upload_keys(&self, request: Request<Streaming<KeysChunk>>) -> Result<Response<UploadKeysReply>, Status> {
        let result = self.0.upload_keys(request.into_inner()).await;
        self.0.metrics.call("UploadKeys", &result);
        result.map(Response::new)
    }

    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<EvaluateReply>, Status> {
        let result = self.0.evaluate_bytes(request.into_inner().request).await;
        self.0.metrics.call("Evaluate", &result);
        Ok(Response::new(EvaluateReply { reply: result? }))
    }

    type EvaluateStreamStream = ReplyStream;

    async fn evaluate_stream(
        &self,
        request: Request<Streaming<EvaluateRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut requests = request.into_inner();
        let service = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let next = match requests.message().await {
                    Ok(Some(r)) => service.evaluate_bytes(r.request).await.map(|reply| EvaluateReply { reply }),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                service.metrics.call("EvaluateStream", &next);
                let stop = next.is_err();
                if tx.send(next).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// The replies of [`ModelHolderRpc::evaluate_stream`].
pub type ReplyStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EvaluateReply, Status>> + Send>>;

impl State {
    /// Receives a client's evaluation keys and opens its session (a no-op for keys held).
    #[tracing::instrument(name = "UploadKeys", skip_all, fields(key_id, bytes, already_present))]
    async fn upload_keys(&self, stream: Streaming<KeysChunk>) -> Result<UploadKeysReply, Status> {
        let (bytes, msg, id) = receive_keys(stream, self.model.max_keys_len()).await?;
        let span = tracing::Span::current();
        span.record("key_id", tracing::field::display(id)).record("bytes", bytes.len());
        let held = self.sessions().get(&id).is_some();
        span.record("already_present", held);
        tracing::debug!("keys received");
        if held {
            return Ok(UploadKeysReply { key_id: id.0.to_vec(), already_present: true });
        }
        let session = self.open_session(msg).await?;
        self.insert_session(id, session);
        if let Some(store) = &self.store {
            let stored =
                store.put(&id, &bytes).await.map_err(|e| Status::internal(format!("storing the keys: {e}")))?;
            self.metrics.stored_keys.set(stored as i64);
        }
        Ok(UploadKeysReply { key_id: id.0.to_vec(), already_present: false })
    }

    /// One EncryptedImage message's bytes to its EncryptedScores message's bytes.
    #[tracing::instrument(name = "Evaluate", skip_all, fields(key_id, bytes = bytes.len()))]
    async fn evaluate_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
        check_request_len(bytes.len(), self.model.max_image_len())?;
        let msg = Message::from_bytes_limited(&bytes, self.model.max_image_len()).map_err(status)?;
        let Message::EncryptedImage { key_id, .. } = &msg else {
            return Err(Status::invalid_argument("Evaluate takes an EncryptedImage message"));
        };
        let key_id = *key_id;
        tracing::Span::current().record("key_id", tracing::field::display(key_id));
        let found = self.sessions().get(&key_id);
        let session = match found {
            Some(s) => s,
            None => self.session_from_store(&key_id).await?,
        };
        let (in_flight, started) = (self.metrics.in_flight.clone(), std::time::Instant::now());
        in_flight.inc();
        let reply = tokio::task::spawn_blocking(move || {
            // The session's lock is taken here, outside the thread pool, so that a worker
            // waiting inside one evaluation can pick up another without blocking on a lock.
            let mut holder = session.lock().unwrap_or_else(|e| e.into_inner());
            // The whole evaluation on one of rayon's workers: its parallel loops then start
            // there, instead of each being handed from this thread to the pool and back.
            let holder: &mut ModelHolder = &mut holder;
            let reply = rayon::scope(|_| holder.handle(&msg));
            in_flight.dec();
            reply
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?
        .ok_or_else(|| Status::internal("the model holder sent no reply"))?;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.evaluate_seconds.observe(seconds);
        let reply = reply.to_bytes();
        tracing::debug!(ms = seconds * 1e3, reply_bytes = reply.len(), "evaluated");
        Ok(reply)
    }
}

/// TLS for the server: its certificate chain and private key (PEM), and optionally the CA
/// whose certificates clients must present (mutual TLS).
pub struct ServerTls {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA certificate clients must be signed by (PEM); `None`: any client may connect.
    pub client_ca_pem: Option<Vec<u8>>,
}

/// TLS for the client: the CA that signed the server's certificate (PEM), optionally the
/// client's own certificate and key for servers that require them, and the name to verify the
/// server's certificate against (default: the URL's host).
#[derive(Clone)]
pub struct ClientTls {
    /// CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name in the server's certificate, if not the URL's host.
    pub domain: Option<String>,
}

/// How a model holder serves.
pub struct ServeOptions {
    /// Clients whose keys are kept in memory ([`DEFAULT_MAX_SESSIONS`]).
    pub max_sessions: usize,
    /// TLS, if any.
    pub tls: Option<ServerTls>,
    /// A directory where uploaded keys are kept by key id, so they survive a restart (the
    /// client need not upload again); `None`: memory only.
    pub key_store: Option<PathBuf>,
    /// Key sets kept in the directory (or the NATS key store), the least recently stored
    /// dropped first ([`DEFAULT_MAX_STORED`]).
    pub max_stored: usize,
    /// Also take work from NATS JetStream, as one of several replicas sharing the engine's
    /// key store (which then replaces `key_store`); see [`NatsOptions`].
    pub nats: Option<NatsOptions>,
}

/// Default number of key sets kept in a key store directory.
pub const DEFAULT_MAX_STORED: usize = 64;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS,
            tls: None,
            key_store: None,
            max_stored: DEFAULT_MAX_STORED,
            nats: None,
        }
    }
}

/// Serves `model` on `listener` until the process ends, with the standard gRPC health
/// service beside it; over TLS (rustls) when `opts.tls` is given; and, with `opts.nats`, as a
/// replica taking work from NATS JetStream too.
///
/// # Errors
/// A transport error, certificates or keys that do not parse, a key store that cannot be
/// created, a NATS server that cannot be reached or set up.
pub async fn serve(
    model: Arc<CompiledModel>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut replica = None;
    let store = match (opts.key_store, &opts.nats) {
        (_, Some(nats)) => {
            let (js, store) = nats::connect_replica(nats, opts.max_stored, model.max_keys_len(), model.max_image_len())
                .await
                .map_err(|s| s.message().to_string())?;
            replica = Some((js, nats.clone()));
            Some(KeyStore::Nats(Box::new(store)))
        }
        (Some(dir), None) => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating the key store {}: {e}", dir.display()))?;
            Some(KeyStore::Dir(DirKeyStore { dir, capacity: opts.max_stored }))
        }
        (None, None) => None,
    };
    let state = Arc::new(State::new(model, opts.max_sessions, store));
    if let Some((js, nats)) = replica {
        tokio::spawn(nats::work(state.clone(), js, nats));
    }
    let service = ModelHolderService(state.clone());
    let max = service.max_message_len();
    let server = ModelHolderServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ModelHolderServer<ModelHolderService>>().await;
    let builder = server_builder(opts.tls)?;
    // Windows large enough for a whole request in flight (the 64 KiB default takes a dozen
    // round trips per image), and no Nagle delay on small replies.
    let metrics = axum::routing::get(move || {
        let state = state.clone();
        async move {
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            ([(axum::http::header::CONTENT_TYPE, content_type)], state.metrics.text())
        }
    });
    let routes = tonic::service::Routes::new(health_service).add_service(server);
    let routes = tonic::service::Routes::from(routes.into_axum_router().route("/metrics", metrics));
    builder
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW))
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

/// A server builder with TLS when given (the client CA too, for mutual TLS).
fn server_builder(tls: Option<ServerTls>) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(t.cert_pem, t.key_pem));
        if let Some(ca) = t.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    Ok(builder)
}

/// Where uploaded keys are kept beyond the sessions in memory.
enum KeyStore {
    /// A directory of this replica's.
    Dir(DirKeyStore),
    /// The engine's object store, shared by every replica.
    Nats(Box<nats::ObjectKeyStore>),
}

impl KeyStore {
    /// The stored bytes of `id`, if present and at most `limit` bytes.
    async fn get(&self, id: &KeyId, limit: usize) -> Option<Vec<u8>> {
        match self {
            Self::Dir(d) => d.get(id, limit),
            Self::Nats(n) => n.get(id, limit).await,
        }
    }

    /// Stores `bytes` under `id`, dropping the oldest beyond the capacity; the key sets held.
    async fn put(&self, id: &KeyId, bytes: &[u8]) -> Result<usize, String> {
        match self {
            Self::Dir(d) => d.put(id, bytes).map_err(|e| e.to_string()),
            Self::Nats(n) => n.put(id, bytes).await,
        }
    }
}

/// Uploaded evaluation keys on disk, one file per key id (`<id in hex>.keys`, the
/// EvaluationKeys message's bytes), the oldest dropped beyond `capacity`. Files are checked
/// like any upload when they are loaded.
struct DirKeyStore {
    dir: PathBuf,
    capacity: usize,
}

impl DirKeyStore {
    fn path(&self, id: &KeyId) -> PathBuf {
        self.dir.join(format!("{}.keys", id.to_hex()))
    }

    /// Stores `bytes` under `id` (written to a temporary name, then renamed), then drops the
    /// oldest files beyond the capacity; returns how many key sets the store holds.
    fn put(&self, id: &KeyId, bytes: &[u8]) -> std::io::Result<usize> {
        let tmp = self.dir.join(format!("{}.tmp", id.to_hex()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.path(id))?;
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "keys"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(self.capacity.max(1));
        let kept = files.len() - excess;
        for (_, p) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(p);
        }
        Ok(kept)
    }

    /// The stored bytes of `id`, if present and at most `limit` bytes.
    fn get(&self, id: &KeyId, limit: usize) -> Option<Vec<u8>> {
        let path = self.path(id);
        let len = std::fs::metadata(&path).ok()?.len();
        if len > limit as u64 {
            return None;
        }
        std::fs::read(path).ok()
    }
}

impl ClientTls {
    /// The transport's TLS configuration.
    fn config(self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.ca_pem));
        if let Some((cert, key)) = self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(d) = self.domain {
            config = config.domain_name(d);
        }
        config
    }
}

/// A gRPC channel to `url` (`http://127.0.0.1:50051`, or `https://…` with `tls`), with large
/// flow-control windows and no Nagle delay.
///
/// # Errors
/// `UNAVAILABLE` naming the address (refused connection, failed TLS handshake);
/// `INVALID_ARGUMENT` for a URL that does not parse.
async fn channel(url: &str, tls: Option<ClientTls>) -> Result<tonic::transport::Channel, Status> {
    let unavailable = |e: tonic::transport::Error| {
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
        Status::unavailable(format!("cannot connect to {url}: {e}{cause}"))
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Status::invalid_argument(format!("{url} is not a server address: {e}")))?;
    if let Some(t) = tls {
        endpoint = endpoint.tls_config(t.config()).map_err(unavailable)?;
    }
    endpoint
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(unavailable)
}

/// The plan in a server's [`InfoReply`], checked against the parameter fingerprint beside it.
fn parse_plan(reply: &InfoReply) -> Result<PlanInfo, Status> {
    let plan: PlanInfo = serde_json::from_str(&reply.plan_json)
        .map_err(|e| Status::invalid_argument(format!("the server's plan does not parse: {e}")))?;
    let params = plan.parameters().map_err(|e| Status::invalid_argument(format!("the server's plan: {e}")))?;
    if params.fingerprint().as_slice() != reply.parameter_fingerprint.as_slice() {
        return Err(Status::invalid_argument("the server's parameter fingerprint is not its plan's parameters'"));
    }
    Ok(plan)
}

/// A client of a remote model holder (cheap to clone: clones share one connection).
#[derive(Clone)]
pub struct RemoteModelHolder {
    inner: ModelHolderClient<tonic::transport::Channel>,
}

impl RemoteModelHolder {
    /// Connects to `url` (`http://127.0.0.1:50051`, or `https://…` with `tls`).
    ///
    /// # Errors
    /// A transport error naming the address (refused connection, failed TLS handshake).
    pub async fn connect(url: String, tls: Option<ClientTls>) -> Result<Self, Status> {
        let channel = channel(&url, tls).await?;
        let inner = ModelHolderClient::new(channel);
        Ok(Self { inner: inner.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20) })
    }

    /// The server's plan and limits.
    ///
    /// # Errors
    /// The server's status; `INVALID_ARGUMENT` for a plan that does not parse.
    pub async fn info(&mut self) -> Result<(PlanInfo, InfoReply), Status> {
        let reply = self.inner.info(InfoRequest {}).await?.into_inner();
        Ok((parse_plan(&reply)?, reply))
    }

    /// Streams the client's evaluation keys (an [`Message::EvaluationKeys`] message's bytes);
    /// returns whether the server held them already.
    ///
    /// # Errors
    /// The server's status.
    pub async fn upload_keys(&mut self, keys: &[u8]) -> Result<bool, Status> {
        let chunks: Vec<KeysChunk> = keys.chunks(KEY_CHUNK).map(|c| KeysChunk { data: c.to_vec() }).collect();
        let reply = self.inner.upload_keys(tokio_stream::iter(chunks)).await?.into_inner();
        Ok(reply.already_present)
    }

    /// Many requests on one stream; the replies in order.
    ///
    /// # Errors
    /// The status of the first request the server refused (the stream ends there).
    pub async fn evaluate_stream(&mut self, requests: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Status> {
        let outgoing = tokio_stream::iter(requests.into_iter().map(|request| EvaluateRequest { request }));
        let mut replies = self.inner.evaluate_stream(outgoing).await?.into_inner();
        let mut out = Vec::new();
        while let Some(r) = replies.message().await? {
            out.push(r.reply);
        }
        Ok(out)
    }

    /// One request's bytes to the reply's bytes.
    ///
    /// # Errors
    /// The server's status (`NOT_FOUND` when it does not hold the keys: upload them again).
    pub async fn evaluate(&mut self, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        Ok(self.evaluate_reporting(request).await?.0)
    }

    /// [`RemoteModelHolder::evaluate`], with the holders an ensemble coordinator left out of
    /// the reply ([`MISSING_METADATA`]; empty from a single model holder).
    ///
    /// # Errors
    /// As [`RemoteModelHolder::evaluate`]; `INVALID_ARGUMENT` for metadata that does not parse.
    pub async fn evaluate_reporting(&mut self, request: Vec<u8>) -> Result<(Vec<u8>, Vec<usize>), Status> {
        let response = self.inner.evaluate(EvaluateRequest { request }).await?;
        let missing = match response.metadata().get(MISSING_METADATA) {
            None => Vec::new(),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.split(',').map(|h| h.trim().parse().ok()).collect::<Option<Vec<usize>>>())
                .ok_or_else(|| Status::invalid_argument("the coordinator's list of missing holders does not parse"))?,
        };
        Ok((response.into_inner().reply, missing))
    }
}
