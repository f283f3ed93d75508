//! Scale-out on NATS JetStream: model-holder replicas that share one key store and one work
//! queue, so any replica serves any client, adding a replica adds capacity, and a replica
//! that dies mid-request loses nothing.
//!
//! What lives in the engine, under a prefix `P` (default `blindfold`; one prefix per model):
//! - **`P_keys`**, a JetStream object store: clients' evaluation keys by key id (hex), the
//!   EvaluationKeys message's bytes. Clients put them; a replica checks them (decoded and
//!   re-hashed like any upload, refused and deleted otherwise) when the client registers them
//!   on `P.keys`, and drops the least recently stored beyond the store's capacity.
//! - **`P_work`**, a work-queue stream on subject `P.work`: one message per encrypted image
//!   (the EncryptedImage message's bytes), headers [`CLIENT_HEADER`] and [`REQUEST_HEADER`],
//!   and `Nats-Msg-Id` = `client.request` so that a client's retried publish is queued once.
//!   Replicas pull from one durable consumer with explicit acknowledgement: a message is
//!   acknowledged only after its reply is stored, so the work of a replica that dies is
//!   redelivered to another after the acknowledgement wait.
//! - **`P_replies`**, a stream on `P.replies.<client>`: the replies, with `Nats-Msg-Id` =
//!   `client.request` too, so a request redelivered after its reply was stored is answered
//!   once (JetStream drops the second reply as a duplicate). Refusals carry
//!   [`STATUS_HEADER`] (a gRPC status code) and the message as payload.
//! - Core request/reply, answered by one replica of the queue group: `P.info` (the plan and
//!   limits, an `InfoReply`) and `P.keys` (register uploaded keys, an `UploadKeysReply`).
//!
//! The service only moves bytes: every payload is checked by the protocol's deserializers in
//! the replica, exactly as on the gRPC path (the same handlers). Tested against nats-server
//! 2.9 (Debian 12): the client is built without the 2.10+ protocol features.

use crate::proto::{InfoReply, UploadKeysReply};
use crate::{KeyStore, State};
use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use async_nats::HeaderMap;
use blindfold_protocol::{KeyId, PlanInfo};
use prost::Message as _;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

/// Header naming the client of a work message and its replies (a token of `[A-Za-z0-9_-]`).
pub const CLIENT_HEADER: &str = "Blindfold-Client";
/// Header naming the request a work message or reply belongs to (a token, as the client's).
pub const REQUEST_HEADER: &str = "Blindfold-Request";
/// Header of a refusal: the gRPC status code, as a decimal number.
pub const STATUS_HEADER: &str = "Blindfold-Status";
/// Queue group of the replicas' core subscriptions.
const QUEUE_GROUP: &str = "replicas";
/// How long JetStream remembers a message id (duplicates within it are dropped).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// Deliveries of a work message before the engine gives up on it.
const MAX_DELIVER: i64 = 5;

/// How a replica works with NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of the subjects, streams and bucket ([`DEFAULT_PREFIX`]); one per model.
    pub prefix: String,
    /// How long a work message may stay unacknowledged before the engine hands it to another
    /// replica (longer than the slowest image, queueing in the replica included).
    pub ack_wait: Duration,
    /// Images this replica evaluates at once.
    pub concurrency: usize,
    /// Bytes the work queue holds at most; a client's publish beyond it is refused.
    pub max_queue_bytes: i64,
    /// TLS to the NATS server, if it requires it.
    pub tls: Option<NatsTls>,
}

/// TLS to a NATS server (rustls): the CA that signed the server's certificate, and this
/// party's own certificate chain and key for a server that verifies its clients (PEM files).
#[derive(Clone, Debug)]
pub struct NatsTls {
    /// CA certificate file.
    pub ca: std::path::PathBuf,
    /// Certificate chain and private key files.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Connects to NATS at `url` (over TLS when given).
async fn connect_nats(url: &str, tls: Option<&NatsTls>) -> Result<async_nats::Client, Status> {
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        options = options.require_tls(true).add_root_certificates(t.ca.clone());
        if let Some((cert, key)) = &t.identity {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    options.connect(url).await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
        unavailable(&format!("connecting to NATS at {url}"), format!("{e}{cause}"))
    })
}

/// Default prefix of the NATS subjects, streams and bucket.
pub const DEFAULT_PREFIX: &str = "blindfold";

impl NatsOptions {
    /// Options for `url` with the defaults: prefix [`DEFAULT_PREFIX`], a 30 s acknowledgement
    /// wait, two images at once, a 1 GiB queue.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            ack_wait: Duration::from_secs(30),
            concurrency: 2,
            max_queue_bytes: 1 << 30,
            tls: None,
        }
    }
}

/// The names under one prefix.
#[derive(Clone)]
struct Names {
    prefix: String,
}

impl Names {
    fn new(prefix: &str) -> Result<Self, Status> {
        if !is_token(prefix) {
            return Err(Status::invalid_argument(format!(
                "NATS prefix {prefix:?}: 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(Self { prefix: prefix.into() })
    }
    fn bucket(&self) -> String {
        format!("{}_keys", self.prefix)
    }
    fn work_stream(&self) -> String {
        format!("{}_work", self.prefix)
    }
    fn reply_stream(&self) -> String {
        format!("{}_replies", self.prefix)
    }
    fn work(&self) -> String {
        format!("{}.work", self.prefix)
    }
    fn replies(&self, client: &str) -> String {
        format!("{}.replies.{client}", self.prefix)
    }
    fn info(&self) -> String {
        format!("{}.info", self.prefix)
    }
    fn keys(&self) -> String {
        format!("{}.keys", self.prefix)
    }
}

/// A client or request id, or a prefix: 1 to 64 of `[A-Za-z0-9_-]`.
fn is_token(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{what}: {e}"))
}

/// The key store in the engine's object store: objects named by key id in hex.
pub(crate) struct ObjectKeyStore {
    bucket: jetstream::object_store::ObjectStore,
    capacity: usize,
}

impl ObjectKeyStore {
    /// The stored bytes of `id`, if present and at most `limit` bytes.
    pub(crate) async fn get(&self, id: &KeyId, limit: usize) -> Option<Vec<u8>> {
        let mut object = self.bucket.get(id.to_hex()).await.ok()?;
        if object.info().size > limit {
            return None;
        }
        let mut bytes = Vec::with_capacity(object.info().size);
        (&mut object).take(limit as u64 + 1).read_to_end(&mut bytes).await.ok()?;
        (bytes.len() <= limit).then_some(bytes)
    }

    /// Stores `bytes` under `id` (a no-op if present), then prunes; the key sets held.
    pub(crate) async fn put(&self, id: &KeyId, bytes: &[u8]) -> Result<usize, String> {
        if self.bucket.info(id.to_hex()).await.is_err() {
            self.bucket.put(id.to_hex().as_str(), &mut &bytes[..]).await.map_err(|e| e.to_string())?;
        }
        self.prune().await
    }

    /// Deletes `id` (keys that failed their check).
    async fn delete(&self, id: &KeyId) {
        if let Err(e) = self.bucket.delete(id.to_hex()).await {
            tracing::debug!("deleting refused keys from the key store: {e}");
        }
    }

    /// Drops the least recently stored key sets beyond the capacity; the key sets held.
    async fn prune(&self) -> Result<usize, String> {
        let mut list = self.bucket.list().await.map_err(|e| e.to_string())?;
        let mut objects = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| e.to_string())?;
            if !info.deleted {
                objects.push((info.modified.map(|t| t.unix_timestamp_nanos()), info.name));
            }
        }
        objects.sort();
        let excess = objects.len().saturating_sub(self.capacity.max(1));
        for (_, name) in objects.iter().take(excess) {
            if let Err(e) = self.bucket.delete(name).await {
                tracing::warn!("dropping old keys from the key store: {e}");
            }
        }
        Ok(objects.len() - excess)
    }
}

/// Connects a replica to NATS: creates the bucket and streams if missing, and gives the key
/// store; [`work`] then takes requests.
pub(crate) async fn connect_replica(
    opts: &NatsOptions,
    max_stored: usize,
    max_keys_len: usize,
    max_image_len: usize,
) -> Result<(jetstream::Context, ObjectKeyStore), Status> {
    let names = Names::new(&opts.prefix)?;
    let client = connect_nats(&opts.url, opts.tls.as_ref()).await?;
    // A request must fit in one NATS message, headers included.
    let max_payload = client.server_info().max_payload;
    if max_payload < max_image_len + 4096 {
        return Err(Status::failed_precondition(format!(
            "the NATS server at {} takes messages of at most {max_payload} bytes, and this plan's requests take up to \
             {} bytes: raise max_payload in its configuration (e.g. max_payload: 8MB)",
            opts.url,
            max_image_len + 4096
        )));
    }
    let js = jetstream::new(client);
    let too_small = |what: &str, e: &dyn std::fmt::Display| unavailable(&format!("setting up {what} in JetStream"), e);
    // Room for the stored key sets and one being uploaded.
    let bucket_bytes = ((max_stored.max(1) + 1) * (max_keys_len + (1 << 20))) as i64;
    let bucket = match js.get_object_store(names.bucket()).await {
        Ok(b) => b,
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: names.bucket(),
                description: Some("blindfold: clients' evaluation keys by key id".into()),
                max_bytes: bucket_bytes,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| too_small("the key store", &e))?,
    };
    js.get_or_create_stream(stream::Config {
        name: names.work_stream(),
        description: Some("blindfold: encrypted images waiting for a replica".into()),
        subjects: vec![names.work()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_bytes: opts.max_queue_bytes,
        max_message_size: i32::try_from(max_image_len + 4096).unwrap_or(i32::MAX),
        discard: stream::DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| too_small("the work queue", &e))?;
    js.get_or_create_stream(stream::Config {
        name: names.reply_stream(),
        description: Some("blindfold: encrypted scores, one subject per client".into()),
        subjects: vec![names.replies("*")],
        storage: stream::StorageType::File,
        max_bytes: opts.max_queue_bytes,
        max_age: 2 * DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| too_small("the reply stream", &e))?;
    Ok((js, ObjectKeyStore { bucket, capacity: max_stored }))
}

/// Serves the engine's requests until the process ends: the work queue (`concurrency` images
/// at once) and the core subjects `P.info` and `P.keys`. Survives a restart of the NATS
/// server (the client reconnects; the consumer is re-bound).
pub(crate) async fn work(state: Arc<State>, js: jetstream::Context, opts: NatsOptions) {
    let names = Names::new(&opts.prefix).expect("checked by connect_replica");
    tokio::spawn(answer_core(state.clone(), js.clone(), names.clone()));
    tokio::spawn(watch_queue(state.clone(), js.clone(), names.clone()));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    loop {
        let messages = async {
            let stream = js.get_stream(names.work_stream()).await.map_err(|e| e.to_string())?;
            let consumer = stream
                .get_or_create_consumer(
                    QUEUE_GROUP,
                    pull::Config {
                        durable_name: Some(QUEUE_GROUP.into()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: opts.ack_wait,
                        max_deliver: MAX_DELIVER,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            // Pulls that expire every 10 s with a heartbeat every 2 s: a pull lost in a restart
            // of the NATS server shows as missed heartbeats within seconds, and the consumer is
            // bound again (instead of waiting for the pull to expire).
            consumer
                .stream()
                .max_messages_per_batch(opts.concurrency.max(1))
                .expires(Duration::from_secs(10))
                .heartbeat(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let mut messages = match messages.await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("binding to the work queue: {e}; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!("taking work from {}", names.work());
        while let Some(next) = messages.next().await {
            match next {
                Ok(message) => {
                    let permit = permits.clone().acquire_owned().await.expect("never closed");
                    let (state, js, names) = (state.clone(), js.clone(), names.clone());
                    tokio::spawn(async move {
                        answer_work(&state, &js, &names, message).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("the work queue: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps `blindfold_queue_depth` at the work queue's pending and unacknowledged images.
async fn watch_queue(state: Arc<State>, js: jetstream::Context, names: Names) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(stream) = js.get_stream(names.work_stream()).await else { continue };
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>(QUEUE_GROUP).await else { continue };
        if let Ok(info) = consumer.info().await {
            state.metrics.queue_depth.set((info.num_pending + info.num_ack_pending as u64) as i64);
        }
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// Evaluates one work message, stores its reply (once per request id), then acknowledges it.
async fn answer_work(state: &State, js: &jetstream::Context, names: &Names, message: jetstream::Message) {
    let client = header(message.headers.as_ref(), CLIENT_HEADER).filter(|c| is_token(c));
    let request = header(message.headers.as_ref(), REQUEST_HEADER).filter(|r| is_token(r));
    let (Some(client), Some(request)) = (client, request) else {
        tracing::warn!("a work message without a valid {CLIENT_HEADER} and {REQUEST_HEADER}: dropped");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let result = state.evaluate_bytes(message.payload.to_vec()).await;
    state.metrics.call("NatsEvaluate", &result);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{client}.{request}").as_str());
    headers.insert(REQUEST_HEADER, request);
    let payload = match result {
        Ok(reply) => reply.into(),
        Err(s) => {
            headers.insert(STATUS_HEADER, (s.code() as i32).to_string().as_str());
            s.message().to_string().into()
        }
    };
    let stored = match js.publish_with_headers(names.replies(client), headers, payload).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let ack = match stored {
        Ok(()) => message.ack().await,
        Err(e) => {
            tracing::warn!("storing a reply: {e}; the request goes back to the queue");
            message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await
        }
    };
    if let Err(e) = ack {
        tracing::warn!("acknowledging a work message: {e} (it may be redelivered; its reply is stored once)");
    }
}

/// Answers `P.info` and `P.keys` (one replica of the queue group each time).
async fn answer_core(state: Arc<State>, js: jetstream::Context, names: Names) {
    let client = js.client();
    let (info, keys) = match (
        client.queue_subscribe(names.info(), QUEUE_GROUP.into()).await,
        client.queue_subscribe(names.keys(), QUEUE_GROUP.into()).await,
    ) {
        (Ok(i), Ok(k)) => (i, k),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("subscribing to {}: {e}", names.info());
            return;
        }
    };
    let mut requests = info.merge(keys);
    while let Some(m) = requests.next().await {
        let Some(reply_to) = m.reply.clone() else { continue };
        let (state, client, is_info) = (state.clone(), client.clone(), m.subject.as_str() == names.info());
        tokio::spawn(async move {
            let result = if is_info {
                Ok(state.info_reply().encode_to_vec())
            } else {
                let r = register_keys(&state, &m.payload).await;
                state.metrics.call("NatsRegisterKeys", &r);
                r.map(|present| UploadKeysReply { key_id: Vec::new(), already_present: present }.encode_to_vec())
            };
            let (headers, payload) = reply_parts(result);
            if let Err(e) = client.publish_with_headers(reply_to, headers, payload.into()).await {
                tracing::warn!("answering a core request: {e}");
            }
        });
    }
}

fn reply_parts(result: Result<Vec<u8>, Status>) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    match result {
        Ok(bytes) => (headers, bytes),
        Err(s) => {
            headers.insert(STATUS_HEADER, (s.code() as i32).to_string().as_str());
            (headers, s.message().as_bytes().to_vec())
        }
    }
}

/// Checks the keys a client stored under `id_hex` and opens its session; whether this replica
/// held them already. Keys that fail the check are deleted from the store.
async fn register_keys(state: &State, id_hex: &[u8]) -> Result<bool, Status> {
    let id = std::str::from_utf8(id_hex)
        .ok()
        .and_then(|h| KeyId::from_hex(h).ok())
        .ok_or_else(|| Status::invalid_argument("P.keys takes a key id in hex"))?;
    if state.sessions().get(&id).is_some() {
        return Ok(true);
    }
    let Some(KeyStore::Nats(store)) = &state.store else {
        return Err(Status::internal("this replica has no NATS key store"));
    };
    if let Err(e) = state.session_from_store(&id).await {
        store.delete(&id).await;
        return Err(e);
    }
    let held = store.prune().await.map_err(|e| Status::internal(format!("the key store: {e}")))?;
    state.metrics.stored_keys.set(held as i64);
    Ok(false)
}

/// One request's outcome through NATS: the reply (or the replica's refusal), and the time from
/// the request's publish to its reply.
pub type NatsReply = (Result<Vec<u8>, Status>, Duration);

/// A client of model-holder replicas through NATS: the plan, keys put in the shared key store
/// once, then encrypted images through the work queue, replies matched by request id.
pub struct NatsModelHolder {
    js: jetstream::Context,
    names: Names,
    bucket: jetstream::object_store::ObjectStore,
    id: String,
    /// Requests sent so far (the next request's id).
    sent: u64,
    /// Requests answered so far, to count a second reply to any of them.
    answered: HashSet<u64>,
    duplicates: usize,
    replies: pull::Ordered,
    timeout: Duration,
}

impl NatsModelHolder {
    /// Connects to the engine at `url` under `prefix` (over TLS when given), as a new client
    /// (a fresh client id).
    ///
    /// # Errors
    /// `UNAVAILABLE` when NATS cannot be reached or no replica has set up the streams.
    pub async fn connect(url: &str, prefix: &str, tls: Option<&NatsTls>) -> Result<Self, Status> {
        let names = Names::new(prefix)?;
        let client = connect_nats(url, tls).await?;
        let js = jetstream::new(client);
        let missing = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!(
                "no blindfold replica has set up {prefix} on {url} ({e}): start `blindfold serve --nats {url}`"
            ))
        };
        let bucket = js.get_object_store(names.bucket()).await.map_err(|e| missing(&e))?;
        let replies = js.get_stream(names.reply_stream()).await.map_err(|e| missing(&e))?;
        let inbox = js.client().new_inbox();
        let id = inbox.rsplit('.').next().filter(|t| is_token(t)).unwrap_or("client").to_string();
        let replies = replies
            .create_consumer(pull::OrderedConfig { filter_subject: names.replies(&id), ..Default::default() })
            .await
            .map_err(|e| unavailable("subscribing to replies", e))?
            .messages()
            .await
            .map_err(|e| unavailable("subscribing to replies", e))?;
        Ok(Self {
            js,
            names,
            bucket,
            id,
            sent: 0,
            answered: HashSet::new(),
            duplicates: 0,
            replies,
            timeout: Duration::from_secs(120),
        })
    }

    /// The longest wait for any reply while requests are outstanding (default 120 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Replies received for a request already answered, so far (0 when each request is
    /// answered once).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// A core request to one replica. "No responders" (no replica subscribed yet, e.g. while
    /// replicas start or reconnect) is retried for up to 10 s.
    async fn core_request(&mut self, subject: String, payload: Vec<u8>) -> Result<Vec<u8>, Status> {
        let client = self.js.client();
        let mut tries = 0;
        let m = loop {
            let request = client.request(subject.clone(), payload.clone().into());
            let sent = tokio::time::timeout(Duration::from_secs(60), request)
                .await
                .map_err(|_| Status::deadline_exceeded(format!("no replica answered {subject} in 60 s")))?;
            match sent {
                Ok(m) => break m,
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(Status::unavailable(format!("no replica answers {subject}: {e}"))),
            }
        };
        match header(m.headers.as_ref(), STATUS_HEADER) {
            None => Ok(m.payload.to_vec()),
            Some(code) => Err(refusal(code, &m.payload)),
        }
    }

    /// The replicas' plan and limits (as [`crate::RemoteModelHolder::info`]).
    ///
    /// # Errors
    /// `UNAVAILABLE` without a replica; `INVALID_ARGUMENT` for a plan that does not parse.
    pub async fn info(&mut self) -> Result<(PlanInfo, InfoReply), Status> {
        let bytes = self.core_request(self.names.info(), Vec::new()).await?;
        let reply = InfoReply::decode(bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("a replica's info does not decode: {e}")))?;
        let plan = crate::parse_plan(&reply)?;
        Ok((plan, reply))
    }

    /// Puts the client's evaluation keys (an EvaluationKeys message's bytes) in the shared
    /// key store unless they are there, and has a replica check them; whether the store held
    /// them already.
    ///
    /// # Errors
    /// The replica's refusal (`INVALID_ARGUMENT` for keys that do not check), `UNAVAILABLE`.
    pub async fn upload_keys(&mut self, keys: &[u8]) -> Result<bool, Status> {
        let msg = blindfold_protocol::Message::from_bytes(keys).map_err(crate::status)?;
        let id =
            KeyId::of(&msg).ok_or_else(|| Status::invalid_argument("upload_keys takes an EvaluationKeys message"))?;
        let present = self.bucket.info(id.to_hex()).await.is_ok_and(|i| !i.deleted);
        if !present {
            self.bucket
                .put(id.to_hex().as_str(), &mut &keys[..])
                .await
                .map_err(|e| Status::resource_exhausted(format!("storing the keys in the engine's key store: {e}")))?;
        }
        self.core_request(self.names.keys(), id.to_hex().into_bytes()).await?;
        Ok(present)
    }

    /// One request's bytes to the reply's bytes.
    ///
    /// # Errors
    /// The replica's refusal (`NOT_FOUND`: upload the keys again), `DEADLINE_EXCEEDED`.
    pub async fn evaluate(&mut self, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.evaluate_many(vec![request], 1).await?.pop().expect("one reply per request").0
    }

    /// Sends `requests` through the work queue, at most `in_flight` unanswered at a time, and
    /// waits for every reply. Each reply in order: the scores or the replica's refusal, and
    /// the time from the request's publish to its reply.
    ///
    /// # Errors
    /// `UNAVAILABLE` when a publish fails, `RESOURCE_EXHAUSTED` when the queue is full;
    /// `DEADLINE_EXCEEDED` when no reply arrives for the timeout while requests are
    /// outstanding. A replica's refusal of one request is that request's reply, not an error.
    pub async fn evaluate_many(&mut self, requests: Vec<Vec<u8>>, in_flight: usize) -> Result<Vec<NatsReply>, Status> {
        let (n, first) = (requests.len(), self.sent);
        let mut replies: Vec<Option<NatsReply>> = (0..n).map(|_| None).collect();
        let mut published = Vec::with_capacity(n);
        let mut pending = requests.into_iter();
        let mut answered = 0;
        while answered < n {
            while published.len() < n && published.len() - answered < in_flight.max(1) {
                let request = self.sent.to_string();
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{}.{request}", self.id).as_str());
                headers.insert(CLIENT_HEADER, self.id.as_str());
                headers.insert(REQUEST_HEADER, request.as_str());
                let payload = pending.next().expect("n requests").into();
                let ack = self.js.publish_with_headers(self.names.work(), headers, payload).await;
                ack.map_err(|e| unavailable("queueing a request", e))?
                    .await
                    .map_err(|e| Status::resource_exhausted(format!("the work queue refused a request: {e}")))?;
                published.push(Instant::now());
                self.sent += 1;
            }
            let message = tokio::time::timeout(self.timeout, self.replies.next())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "{} requests unanswered after {} s",
                        published.len() - answered,
                        self.timeout.as_secs()
                    ))
                })?
                .ok_or_else(|| Status::unavailable("the reply stream ended"))?
                .map_err(|e| unavailable("the reply stream", e))?;
            let Some(request) = header(message.headers.as_ref(), REQUEST_HEADER).and_then(|r| r.parse::<u64>().ok())
            else {
                continue;
            };
            if !self.answered.insert(request) {
                self.duplicates += 1;
                continue;
            }
            let Some(slot) = request.checked_sub(first).and_then(|i| replies.get_mut(i as usize)) else {
                continue;
            };
            let result = match header(message.headers.as_ref(), STATUS_HEADER) {
                None => Ok(message.payload.to_vec()),
                Some(code) => Err(refusal(code, &message.payload)),
            };
            *slot = Some((result, published[(request - first) as usize].elapsed()));
            answered += 1;
        }
        Ok(replies.into_iter().map(|r| r.expect("all answered")).collect())
    }

    /// Waits `wait` for replies no request is waiting for (a second reply to a request
    /// answered before) and counts them into [`NatsModelHolder::duplicates`].
    pub async fn drain(&mut self, wait: Duration) -> usize {
        let before = self.duplicates;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(wait, self.replies.next()).await {
            let request = header(message.headers.as_ref(), REQUEST_HEADER).and_then(|r| r.parse::<u64>().ok());
            if request.is_some_and(|r| !self.answered.insert(r)) {
                self.duplicates += 1;
            }
        }
        self.duplicates - before
    }
}

/// A refusal carried in [`STATUS_HEADER`] and the payload.
fn refusal(code: &str, payload: &[u8]) -> Status {
    let code = code.parse::<i32>().map(Code::from_i32).unwrap_or(Code::Unknown);
    Status::new(code, String::from_utf8_lossy(&payload[..payload.len().min(4096)]).into_owned())
}
