//! CryptoNN's parties over gRPC (`proto/blindfold/v1/cryptonn.proto`): the key authority as
//! a unary service, the training server as a service the data owners connect to with one
//! bidirectional stream each, and the training server's [`Link`] and the data owner's loop
//! over them. Bytes only: every payload is one `blindfold_protocol::cryptonn` message, which
//! the parties' state machines decode and check.
//!
//! Who is who: the authority issues function keys only to a caller presenting the training
//! server's client certificate ([`ServerIdentity::Certificate`], mutual TLS); every other
//! caller is a data owner and gets public keys only.

use crate::proto::key_authority_client::KeyAuthorityClient;
use crate::proto::key_authority_server::{KeyAuthority as KeyAuthorityRpc, KeyAuthorityServer};
use crate::proto::training_server_client::TrainingServerClient;
use crate::proto::training_server_server::{TrainingServer as TrainingServerRpc, TrainingServerServer};
use crate::proto::Envelope;
use crate::{channel, server_builder, ClientTls, ServerTls, WINDOW};
use blindfold_protocol::cryptonn::messages::{Message, Party, Shard};
use blindfold_protocol::cryptonn::parties::{AuthorityParty, OwnerParty};
use blindfold_protocol::cryptonn::server::{Link, Peer};
use blindfold_protocol::cryptonn::AuditRecord;
use blindfold_protocol::ProtocolError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message between CryptoNN's parties (64 MiB): an MNIST batch of 64 with its
/// feature columns is about 3.3 MB, LeNet-5's gradient key request about 10 MB.
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// Most examples a data owner may declare in its Join (`2^22`): the server's batch schedule
/// takes 8 bytes per example, so this bounds what a Join can make it allocate.
pub const MAX_EXAMPLES_PER_OWNER: u32 = 1 << 22;

/// Largest message a data owner sends the authority (a public-key request is a few bytes):
/// anything larger is refused before it is decoded.
const MAX_OWNER_TO_AUTHORITY: usize = 1 << 10;

/// Largest Join message (a few dozen bytes).
const MAX_JOIN: usize = 1 << 10;

/// How long the training server waits for a data owner's answer to one batch request before
/// it drops the owner.
pub const DEFAULT_OWNER_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the authority's audit records go after each request: an error fails the request
/// (no key leaves the authority unlogged).
pub type AuditWriter = Box<dyn FnMut(&[AuditRecord]) -> Result<(), String> + Send>;

/// How the key authority recognises the training server.
pub enum ServerIdentity {
    /// The training server presents this client certificate (DER) over mutual TLS.
    Certificate(Vec<u8>),
    /// Every caller may ask for function keys: for a trusted network only (nothing
    /// authenticates the caller).
    AnyCaller,
}

impl ServerIdentity {
    /// The training server's certificate from its PEM.
    ///
    /// # Errors
    /// PEM without a certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
            .map_err(|e| format!("the training server's certificate: {e}"))?;
        Ok(Self::Certificate(der.to_vec()))
    }
}

fn status(reason: String) -> Status {
    Status::invalid_argument(reason)
}

fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
    Message::from_bytes(bytes, MAX_GRPC_MESSAGE)
}

/// The key authority's service: each request handled by [`AuthorityParty::handle_bytes`],
/// the audit records written before the reply leaves.
struct AuthorityService {
    state: Arc<Mutex<(AuthorityParty, Option<AuditWriter>)>>,
    server: ServerIdentity,
}

#[tonic::async_trait]
impl KeyAuthorityRpc for AuthorityService {
    async fn exchange(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let from = match &self.server {
            ServerIdentity::AnyCaller => Party::TrainingServer,
            ServerIdentity::Certificate(der) => {
                let presented = request.peer_certs();
                let is_server =
                    presented.as_ref().and_then(|c| c.first()).is_some_and(|c| c.as_ref() == der.as_slice());
                if is_server {
                    Party::TrainingServer
                } else {
                    Party::DataOwner
                }
            }
        };
        let bytes = request.into_inner().message;
        if from == Party::DataOwner && bytes.len() > MAX_OWNER_TO_AUTHORITY {
            let reason = format!(
                "a message of {} bytes from a data owner, which may only ask for public keys (at most {MAX_OWNER_TO_AUTHORITY} \
                 bytes)",
                bytes.len()
            );
            return Ok(Response::new(Envelope {
                message: Message::Refused { fault: Party::DataOwner, reason }.to_bytes(),
            }));
        }
        let state = self.state.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let (party, writer) = &mut *guard;
            let reply = party.handle_bytes(from, &bytes);
            let records = party.take_audit_records();
            if let Some(w) = writer {
                if !records.is_empty() {
                    w(&records).map_err(|e| Status::internal(format!("the key authority's audit log: {e}")))?;
                }
            }
            Ok::<_, Status>(reply)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(Envelope { message: reply }))
    }
}

/// Serves the key authority `party` on `listener` until the process ends; `audit` receives
/// every key's audit record before the key is sent.
///
/// # Errors
/// A transport error; certificates or keys that do not parse.
pub async fn serve_authority(
    party: AuthorityParty,
    audit: Option<AuditWriter>,
    server: ServerIdentity,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = AuthorityService { state: Arc::new(Mutex::new((party, audit))), server };
    let rpc = KeyAuthorityServer::new(service)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);
    server_builder(tls)?
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW))
        .add_service(rpc)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

/// A client of the key authority.
#[derive(Clone)]
pub struct AuthorityClient(KeyAuthorityClient<tonic::transport::Channel>);

impl AuthorityClient {
    /// Connects to the authority at `url`.
    ///
    /// # Errors
    /// `UNAVAILABLE` naming the address.
    pub async fn connect(url: &str, tls: Option<ClientTls>) -> Result<Self, Status> {
        let client = KeyAuthorityClient::new(channel(url, tls).await?);
        Ok(Self(client.max_decoding_message_size(MAX_GRPC_MESSAGE).max_encoding_message_size(MAX_GRPC_MESSAGE)))
    }

    /// One message's bytes to the reply's bytes.
    ///
    /// # Errors
    /// The transport's status.
    pub async fn exchange(&mut self, message: Vec<u8>) -> Result<Vec<u8>, Status> {
        Ok(self.0.exchange(Envelope { message }).await?.into_inner().message)
    }
}

/// A connected data owner, as the training server holds it.
struct OwnerConnection {
    shard: Shard,
    examples: u32,
    to_owner: mpsc::Sender<Result<Envelope, Status>>,
    from_owner: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>,
}

/// The owners that joined, and how many are expected.
struct Owners {
    expected: u32,
    /// The fixed-point scale of the run.
    scale: u64,
    joined: BTreeMap<u32, OwnerConnection>,
    /// Set once training starts: later joins are refused.
    closed: bool,
    changed: Arc<tokio::sync::Notify>,
}

/// The training server's service for the data owners.
struct ContributeService(Arc<Mutex<Owners>>);

type EnvelopeStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl TrainingServerRpc for ContributeService {
    type ContributeStream = EnvelopeStream;

    async fn contribute(&self, request: Request<Streaming<Envelope>>) -> Result<Response<EnvelopeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(60), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Join within 60 s"))??
            .ok_or_else(|| status("a data owner's stream ended before its Join".into()))?;
        if first.message.len() > MAX_JOIN {
            return Err(status(format!("fault of the data owner: a first message of {} bytes", first.message.len())));
        }
        let (owner, shard, examples, scale) = match decode(&first.message) {
            Ok(Message::Join { owner, shard, examples, scale }) => (owner, shard, examples, scale),
            Ok(other) => {
                return Err(status(format!("fault of the data owner: a {} where a Join was due", other.kind())))
            }
            Err(e) => return Err(status(format!("fault of the data owner: {e}"))),
        };
        let (to_owner, outbound) = mpsc::channel(2);
        let (forward, from_owner) = mpsc::channel(1);
        {
            let mut owners = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let refuse = |why: String| Err(Status::failed_precondition(format!("fault of the data owner: {why}")));
            if owners.closed {
                return refuse(format!("data owner {owner} joined after training started"));
            }
            if shard.count != owners.expected || shard.index >= shard.count || owner != shard.index {
                return refuse(format!(
                    "data owner {owner} names shard {} of {}: this run has {} shards, one per owner, owner i \
                     holding shard i",
                    shard.index, shard.count, owners.expected
                ));
            }
            // A shard whose owner's stream has ended (before training) may be joined again.
            if owners.joined.get(&owner).is_some_and(|c| !c.to_owner.is_closed()) {
                return refuse(format!("shard {} is held by a data owner already connected", shard.index));
            }
            if examples == 0 || examples > MAX_EXAMPLES_PER_OWNER {
                return refuse(format!(
                    "data owner {owner} declares {examples} examples (1 to {MAX_EXAMPLES_PER_OWNER} per owner)"
                ));
            }
            if scale != owners.scale {
                return refuse(format!(
                    "data owner {owner} encodes at scale {scale}, this run at {} (give every party the same \
                     --precision)",
                    owners.scale
                ));
            }
            let from_owner = Arc::new(tokio::sync::Mutex::new(from_owner));
            owners.joined.insert(owner, OwnerConnection { shard, examples, to_owner, from_owner });
            owners.changed.notify_waiters();
        }
        tracing::info!(owner, examples, "data owner joined");
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(envelope)) => {
                        if forward.send(envelope.message).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        tracing::info!(owner, "data owner's stream ended");
                        break;
                    }
                    Err(s) => {
                        // Also how an owner's connection ends when it exits after training:
                        // a loss during training is reported by the training loop.
                        tracing::info!(owner, "data owner's stream ended: {}", s.message());
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(outbound))))
    }
}

/// The training server's side of the network: its service for the data owners, a client of
/// the authority, and the [`Link`] its training runs over. Its methods block on `runtime`:
/// call them from a thread outside it (never from async code).
pub struct TrainingServerNet {
    runtime: tokio::runtime::Handle,
    owners: Arc<Mutex<Owners>>,
    authority: AuthorityClient,
    /// How long to wait for an owner's answer to one request.
    pub owner_timeout: Duration,
    /// Bytes sent to and received from each peer (messages, without gRPC framing).
    pub bytes: BTreeMap<Peer, (u64, u64)>,
}

impl TrainingServerNet {
    /// Serves the data owners on `listener` (in `runtime`) for a run of `owners` owners
    /// encoding at fixed-point `scale`, and connects to the authority at `authority_url`.
    ///
    /// # Errors
    /// The authority cannot be reached; certificates or keys that do not parse.
    pub fn start(
        runtime: tokio::runtime::Handle,
        listener: tokio::net::TcpListener,
        tls: Option<ServerTls>,
        owners: u32,
        scale: u64,
        authority_url: &str,
        authority_tls: Option<ClientTls>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let state = Arc::new(Mutex::new(Owners {
            expected: owners,
            scale,
            joined: BTreeMap::new(),
            closed: false,
            changed: Arc::new(tokio::sync::Notify::new()),
        }));
        let rpc = TrainingServerServer::new(ContributeService(state.clone()))
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let builder = runtime.block_on(async { server_builder(tls) })?;
        runtime.spawn(async move {
            // Pings on idle connections: an owner whose host went away is found within 40 s,
            // not at the next request's timeout.
            let served = builder
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .initial_stream_window_size(Some(WINDOW))
                .initial_connection_window_size(Some(2 * WINDOW))
                .add_service(rpc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await;
            if let Err(e) = served {
                tracing::error!("the training server's service stopped: {e}");
            }
        });
        let authority = runtime.block_on(AuthorityClient::connect(authority_url, authority_tls))?;
        Ok(Self { runtime, owners: state, authority, owner_timeout: DEFAULT_OWNER_TIMEOUT, bytes: BTreeMap::new() })
    }

    /// Waits until every expected owner has joined (at most `timeout`), then closes joining;
    /// `progress` is called with the count of owners joined, when one joins and about once a
    /// second. Returns each owner's shard size, by owner id.
    ///
    /// # Errors
    /// Fewer owners than expected joined within `timeout`.
    pub fn wait_for_owners(&self, timeout: Duration, mut progress: impl FnMut(usize)) -> Result<Vec<usize>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (count, changed) = {
                let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
                // An owner whose stream ended before training is not counted.
                owners.joined.retain(|_, c| !c.to_owner.is_closed());
                if owners.joined.len() == owners.expected as usize {
                    owners.closed = true;
                    return Ok(owners.joined.values().map(|c| c.examples as usize).collect());
                }
                (owners.joined.len(), owners.changed.clone())
            };
            progress(count);
            let woke = self.runtime.block_on(async {
                let notified = changed.notified();
                tokio::time::timeout_at(deadline, tokio::time::timeout(Duration::from_secs(1), notified)).await
            });
            if woke.is_err() {
                let expected = self.owners.lock().unwrap_or_else(|e| e.into_inner()).expected;
                return Err(format!("{count} of {expected} data owners joined within {} s", timeout.as_secs()));
            }
        }
    }

    /// The shards of the owners that joined, by owner id.
    pub fn shards(&self) -> Vec<(u32, Shard)> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.joined.iter().map(|(&id, c)| (id, c.shard)).collect()
    }

    /// Ends every owner's stream (training is over), and waits (at most 10 s) for the owners
    /// to close theirs, so that the end reaches them before the process exits.
    pub fn finish(&mut self) {
        let joined = std::mem::take(&mut self.owners.lock().unwrap_or_else(|e| e.into_inner()).joined);
        let streams: Vec<_> = joined.into_values().map(|c| c.from_owner).collect();
        self.runtime.block_on(async {
            let closed = async {
                for stream in streams {
                    while stream.lock().await.recv().await.is_some() {}
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), closed).await;
        });
    }

    fn count(&mut self, peer: Peer, sent: usize, received: usize) {
        let e = self.bytes.entry(peer).or_default();
        (e.0, e.1) = (e.0 + sent as u64, e.1 + received as u64);
    }
}

impl Link for TrainingServerNet {
    fn exchange(&mut self, to: Peer, msg: &Message) -> Result<Message, ProtocolError> {
        let bytes = msg.to_bytes();
        let sent = bytes.len();
        let reply = match to {
            Peer::Authority => {
                let mut client = self.authority.clone();
                self.runtime.block_on(client.exchange(bytes)).map_err(|s| {
                    ProtocolError::Peer(match s.code() {
                        tonic::Code::Unavailable => format!("the key authority could not be reached: {}", s.message()),
                        code => format!("the key authority failed ({code:?}): {}", s.message()),
                    })
                })?
            }
            Peer::Owner(id) => {
                let (to_owner, from_owner) = {
                    let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
                    let c = owners
                        .joined
                        .get(&id)
                        .ok_or_else(|| ProtocolError::Peer(format!("data owner {id} is not connected")))?;
                    (c.to_owner.clone(), c.from_owner.clone())
                };
                let timeout = self.owner_timeout;
                let reply = self.runtime.block_on(async move {
                    let gone = || ProtocolError::Peer(format!("data owner {id} disconnected"));
                    to_owner.send(Ok(Envelope { message: bytes })).await.map_err(|_| gone())?;
                    let mut from_owner = from_owner.lock().await;
                    match tokio::time::timeout(timeout, from_owner.recv()).await {
                        Ok(Some(reply)) => Ok(reply),
                        Ok(None) => Err(gone()),
                        Err(_) => Err(ProtocolError::Peer(format!(
                            "data owner {id} sent no answer in {} s",
                            timeout.as_secs()
                        ))),
                    }
                });
                if reply.is_err() {
                    // Dropped for good: its stream is ended, so it stops waiting.
                    self.owners.lock().unwrap_or_else(|e| e.into_inner()).joined.remove(&id);
                }
                reply?
            }
        };
        self.count(to, sent, reply.len());
        decode(&reply)
    }
}

/// What a data owner did in a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerSummary {
    /// Batches encrypted and sent.
    pub batches: u64,
    /// Requests refused.
    pub refused: u64,
    /// Bytes sent to and received from the training server.
    pub server_bytes: (u64, u64),
    /// Bytes sent to and received from the key authority.
    pub authority_bytes: (u64, u64),
}

/// Runs data owner `owner`: public keys from the authority, then joins the training server at
/// `server_url` and answers its batch requests until the server ends the stream.
/// Encryption runs on this thread (call from a blocking context with `runtime`).
///
/// # Errors
/// A party cannot be reached, or the server refuses the Join (its status names why).
pub fn run_owner(
    runtime: &tokio::runtime::Handle,
    owner: &mut OwnerParty<'_>,
    server_url: &str,
    server_tls: Option<ClientTls>,
    authority_url: &str,
    authority_tls: Option<ClientTls>,
) -> Result<OwnerSummary, Status> {
    let mut authority = runtime.block_on(AuthorityClient::connect(authority_url, authority_tls))?;
    let mut server = runtime.block_on(async {
        let client = TrainingServerClient::new(channel(server_url, server_tls).await?);
        Ok::<_, Status>(client.max_decoding_message_size(MAX_GRPC_MESSAGE).max_encoding_message_size(MAX_GRPC_MESSAGE))
    })?;
    let mut summary = OwnerSummary::default();
    let (tx, rx) = mpsc::channel(2);
    // Delivers `out`: to the authority (its replies handled in turn), to the server. The
    // owner's refusal of the authority's public keys ends the owner before it joins; once it
    // serves, it goes to the server instead, whose request waited for those keys.
    let mut deliver = |out: Vec<(Party, Message)>,
                       owner: &mut OwnerParty<'_>,
                       summary: &mut OwnerSummary,
                       serving: bool| {
        let mut queue: VecDeque<_> = out.into();
        while let Some((to, msg)) = queue.pop_front() {
            let bytes = msg.to_bytes();
            match (to, &msg) {
                (Party::KeyAuthority, Message::Refused { reason, .. }) => {
                    if !serving {
                        return Err(Status::failed_precondition(format!("the key authority's public keys: {reason}")));
                    }
                    queue.push_back((Party::TrainingServer, msg));
                }
                (Party::KeyAuthority, _) => {
                    let sent = bytes.len() as u64;
                    let reply = runtime.block_on(authority.exchange(bytes))?;
                    summary.authority_bytes.0 += sent;
                    summary.authority_bytes.1 += reply.len() as u64;
                    let reply =
                        decode(&reply).map_err(|e| Status::invalid_argument(format!("the key authority: {e}")))?;
                    queue.extend(owner.handle(Party::KeyAuthority, &reply));
                }
                _ => {
                    match &msg {
                        Message::EncryptedBatch { .. } => summary.batches += 1,
                        Message::Refused { reason, .. } => {
                            summary.refused += 1;
                            tracing::warn!("refused the training server's request: {reason}");
                        }
                        _ => {}
                    }
                    summary.server_bytes.0 += bytes.len() as u64;
                    runtime
                        .block_on(tx.send(Envelope { message: bytes }))
                        .map_err(|_| Status::unavailable("the training server closed the stream"))?;
                }
            }
        }
        Ok::<_, Status>(())
    };
    let start = owner.start();
    let (to_authority, to_server): (Vec<_>, Vec<_>) = start.into_iter().partition(|(p, _)| *p == Party::KeyAuthority);
    deliver(to_authority, owner, &mut summary, false)?;
    deliver(to_server, owner, &mut summary, false)?;
    let mut inbound =
        runtime.block_on(server.contribute(tokio_stream::wrappers::ReceiverStream::new(rx)))?.into_inner();
    while let Some(envelope) = runtime.block_on(inbound.message())? {
        summary.server_bytes.1 += envelope.message.len() as u64;
        let out = match decode(&envelope.message) {
            Ok(msg) => owner.handle(Party::TrainingServer, &msg),
            Err(e) => {
                vec![(Party::TrainingServer, Message::Refused { fault: Party::TrainingServer, reason: e.to_string() })]
            }
        };
        deliver(out, owner, &mut summary, true)?;
    }
    Ok(summary)
}
