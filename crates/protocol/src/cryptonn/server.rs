//! The training server as a party: it runs `blindfold_nn::cryptonn::Trainer` and gets the
//! first layer's products by messages — batches from the data owners, keys from the key
//! authority — through a [`Link`] the transport implements (no I/O here). With several data
//! owners, each batch holds one owner's examples (`FixedBatches::sharded`); an owner that
//! cannot be reached is dropped and its batches skipped, a batch an owner gets wrong is
//! skipped, and both are reported ([`ServerProducts::reports`]); training goes on with the
//! others.

use super::messages::{FeWire, Message, Party, SparseVector};
use super::training::{key_rows, padded, BatchShape, Breakdown, EncryptedBatch, TrainingServer};
use super::{Mode, Purpose};
use crate::inference::ProtocolError;
use blindfold_fe::{febo, DlogTable, FixedPoint};
use blindfold_nn::cryptonn::{subtract_labels, FirstLayerProducts, FixedBatches};
use ndarray::{Array2, Array3};
use std::collections::BTreeMap;
use std::time::Instant;

/// Whom the training server sends a message to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// The key authority.
    Authority,
    /// The data owner with this id.
    Owner(u32),
}

/// How the training server reaches the other parties: each call delivers one message and
/// returns the reply. An error means the peer could not be reached (or answered nothing
/// that decodes).
pub trait Link {
    /// Sends `msg` to `to` and waits for its reply.
    ///
    /// # Errors
    /// The transport's, when `to` cannot be reached.
    fn exchange(&mut self, to: Peer, msg: &Message) -> Result<Message, ProtocolError>;
}

/// The training server's side of the first layer's products for `Trainer`, over a [`Link`].
pub struct ServerProducts<L: Link> {
    link: L,
    server: TrainingServer,
    /// Each batch's examples, as indices into its owner's shard.
    batches: FixedBatches,
    /// Each batch's owner.
    owners: Vec<u32>,
    features: usize,
    classes: usize,
    encoding: FixedPoint,
    conv: bool,
    generations: [u32; 3],
    epoch: u32,
    step: u32,
    /// Owners that could not be reached, and why.
    dropped: BTreeMap<u32, String>,
    reports: Vec<String>,
    /// Time spent so far (waiting for owners counts as encryption, for the authority as key
    /// derivation).
    pub breakdown: Breakdown,
}

impl<L: Link> ServerProducts<L> {
    /// The server for `batches` (each batch's examples as indices into the shard of the
    /// owner `owners[b]`) of inputs of `features` pixels, labels of `classes` classes, in
    /// `mode`; `conv` for a convolutional first layer. Asks the authority for its public
    /// keys' generations first.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] for hardened mode (it runs in one process only for now) or
    /// one owner per batch missing; the link's error, or [`ProtocolError::Peer`] if the
    /// authority does not answer with its public keys.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut link: L,
        table: DlogTable,
        batches: FixedBatches,
        owners: Vec<u32>,
        features: usize,
        classes: usize,
        encoding: FixedPoint,
        mode: Mode,
        conv: bool,
    ) -> Result<Self, ProtocolError> {
        if mode == Mode::Hardened {
            return Err(ProtocolError::Config("hardened mode runs with all parties in one process only".into()));
        }
        if owners.len() != batches.len() {
            return Err(ProtocolError::Config(format!("{} owners for {} batches", owners.len(), batches.len())));
        }
        let generations = match link.exchange(Peer::Authority, &Message::PublicKeysRequest)? {
            Message::PublicKeys(keys) => keys.generations,
            other => return Err(unexpected("the key authority", "PublicKeys", &other)),
        };
        Ok(Self {
            link,
            server: TrainingServer::new(table),
            batches,
            owners,
            features,
            classes,
            encoding,
            conv,
            generations,
            epoch: 0,
            step: 0,
            dropped: BTreeMap::new(),
            reports: Vec::new(),
            breakdown: Breakdown::default(),
        })
    }

    /// Starts epoch `epoch` (from 0); resets the breakdown.
    pub fn start_epoch(&mut self, epoch: u32) {
        (self.epoch, self.step, self.breakdown) = (epoch, 0, Breakdown::default());
    }

    /// What went wrong with owners so far, one line each: dropped owners, skipped batches.
    pub fn reports(&self) -> &[String] {
        &self.reports
    }

    /// The owners dropped so far, and why.
    pub fn dropped(&self) -> &BTreeMap<u32, String> {
        &self.dropped
    }

    /// The link (e.g. to read its byte counters).
    pub fn link(&self) -> &L {
        &self.link
    }

    /// The link, mutably (e.g. to reach the harness's parties).
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// Asks batch `batch`'s owner for it; `Unavailable` (reported) if the owner is gone or
    /// sends something other than the batch asked for.
    fn fetch(&mut self, batch: usize) -> blindfold_nn::Result<()> {
        let owner = self.owners[batch];
        let examples: Vec<u32> = self.batches.get(batch).iter().map(|&i| i as u32).collect();
        if let Some(why) = self.dropped.get(&owner) {
            return Err(blindfold_nn::Error::Unavailable(format!("data owner {owner} was dropped: {why}")));
        }
        let (epoch, step) = (self.epoch, self.step);
        let request = Message::BatchRequest { epoch, step, examples: examples.clone(), generations: self.generations };
        let reply = match self.link.exchange(Peer::Owner(owner), &request) {
            Ok(reply) => reply,
            Err(e) => {
                let why = e.to_string();
                self.reports.push(format!("epoch {}, step {step}: data owner {owner} dropped: {why}", epoch + 1));
                self.dropped.insert(owner, why.clone());
                return Err(blindfold_nn::Error::Unavailable(why));
            }
        };
        let shape = BatchShape {
            examples: examples.len(),
            features: self.features,
            batch_size: self.batches.batch_size(),
            classes: self.classes,
            generations: self.generations,
        };
        let received = match &reply {
            Message::EncryptedBatch { owner: o, epoch: e, step: s, rows, columns, labels }
                if (*o, *e, *s) == (owner, epoch, step) =>
            {
                EncryptedBatch::from_message(rows, columns.as_ref(), labels, &shape, self.conv)
            }
            Message::EncryptedBatch { owner: o, epoch: e, step: s, .. } => Err(ProtocolError::Peer(format!(
                "a batch of owner {o}, epoch {e}, step {s} for a request to owner {owner}, epoch {epoch}, step {step}"
            ))),
            other => Err(unexpected(&format!("data owner {owner}"), "EncryptedBatch", other)),
        };
        match received {
            Ok(b) => {
                self.server.receive(batch, b);
                Ok(())
            }
            Err(e) => {
                self.reports
                    .push(format!("epoch {}, step {step}: batch of data owner {owner} skipped: {e}", epoch + 1));
                Err(blindfold_nn::Error::Unavailable(e.to_string()))
            }
        }
    }

    /// The authority's keys for `vectors` (dense, each of the key pair's length).
    fn keys(
        &mut self,
        purpose: Purpose,
        vectors: Vec<Vec<i64>>,
    ) -> blindfold_nn::Result<Vec<blindfold_fe::ipfe::FunctionKey>> {
        let start = Instant::now();
        let request = Message::KeyRequests {
            epoch: self.epoch,
            batch: self.step,
            purpose,
            vectors: vectors.iter().map(|v| SparseVector::from_dense(v)).collect(),
        };
        let reply = self.link.exchange(Peer::Authority, &request).map_err(products_error)?;
        let keys = match reply {
            Message::FunctionKeys { generation, keys } if Some(generation) == self.generation(purpose) => {
                keys.keys_for(vectors).map_err(products_error)?
            }
            Message::FunctionKeys { generation, .. } => {
                return Err(products_error(ProtocolError::Peer(format!(
                    "{purpose:?} keys of key pair {generation}, the batch is under {:?}",
                    self.generation(purpose)
                ))))
            }
            other => return Err(products_error(unexpected("the key authority", "FunctionKeys", &other))),
        };
        self.breakdown.key_derivation += start.elapsed();
        Ok(keys)
    }

    fn generation(&self, purpose: Purpose) -> Option<u32> {
        match purpose {
            Purpose::Forward | Purpose::ConvGradient => Some(self.generations[0]),
            Purpose::Gradient => Some(self.generations[1]),
            Purpose::LabelSums => Some(self.generations[2]),
            Purpose::LabelDelta => None,
        }
    }
}

/// A reply of the wrong kind from `who`: a refusal passed on with its reason.
fn unexpected(who: &str, wanted: &str, got: &Message) -> ProtocolError {
    match got {
        Message::Refused { fault, reason } => {
            ProtocolError::Peer(format!("{who} refused (fault of the {fault:?}): {reason}"))
        }
        other => ProtocolError::Peer(format!("{who} sent a {} where a {wanted} was due", other.kind())),
    }
}

fn products_error(e: impl std::error::Error + Send + Sync + 'static) -> blindfold_nn::Error {
    blindfold_nn::Error::Products(Box::new(e))
}

impl<L: Link> FirstLayerProducts for ServerProducts<L> {
    fn forward(&mut self, batch: usize, weights: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        self.step += 1;
        let start = Instant::now();
        self.fetch(batch)?;
        self.breakdown.encrypt += start.elapsed();
        let keys = self.keys(Purpose::Forward, weights.rows().into_iter().map(|r| r.to_vec()).collect())?;
        self.server.forward(batch, &keys, &mut self.breakdown).map_err(products_error)
    }

    fn gradient(&mut self, batch: usize, deltas: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        let size = self.batches.batch_size();
        let padded = deltas.rows().into_iter().map(|r| padded(r, size)).collect();
        let keys = self.keys(Purpose::Gradient, padded)?;
        self.server.gradient(batch, &keys, &mut self.breakdown).map_err(products_error)
    }

    fn output_delta(&mut self, batch: usize, probabilities: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        if let Some(labels) = self.server.clear_labels(batch).map_err(products_error)? {
            return subtract_labels(probabilities, labels, self.encoding);
        }
        let start = Instant::now();
        let labels = self.server.encrypted_labels(batch).map_err(products_error)?;
        let entries = labels
            .iter()
            .zip(probabilities.iter())
            .map(|(ct, &a)| FeWire::new(ct, 0).map(|ct| (ct, a)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(products_error)?;
        let request = Message::LabelKeyRequests { epoch: self.epoch, batch: self.step, entries };
        let keys: Vec<febo::FunctionKey> =
            match self.link.exchange(Peer::Authority, &request).map_err(products_error)? {
                Message::LabelKeys(keys) if keys.len() == probabilities.len() => keys
                    .iter()
                    .map(|k| k.decode(&blindfold_fe::wire::FeParams { n: 1, generation: 0 }))
                    .collect::<Result<_, _>>()
                    .map_err(products_error)?,
                other => return Err(products_error(unexpected("the key authority", "LabelKeys", &other))),
            };
        self.breakdown.key_derivation += start.elapsed();
        let start = Instant::now();
        let deltas = self.server.label_deltas(batch, &keys, probabilities.dim()).map_err(products_error)?;
        self.breakdown.decrypt += start.elapsed();
        Ok(deltas)
    }

    fn summed_products(&mut self, batch: usize, keys: &Array3<i64>) -> blindfold_nn::Result<Vec<i64>> {
        let vectors = key_rows(keys).collect();
        let issued = self.keys(Purpose::ConvGradient, vectors)?;
        self.server.summed_products(batch, &issued, &mut self.breakdown).map_err(products_error)
    }

    fn label_sums(&mut self, _: usize, _: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        Err(products_error(ProtocolError::Config("hardened mode runs with all parties in one process only".into())))
    }

    fn gradient_with_labels(&mut self, _: usize, _: &Array2<i64>) -> blindfold_nn::Result<Array2<i64>> {
        Err(products_error(ProtocolError::Config("hardened mode runs with all parties in one process only".into())))
    }
}

/// The in-process harness: the parties' state machines in one process, every message
/// encoded to bytes and decoded on the other side, as a transport would; counts the bytes
/// each way per peer. For tests and for comparing with the networked parties.
pub struct LocalLink<'a> {
    authority: super::parties::AuthorityParty,
    owners: BTreeMap<u32, super::parties::OwnerParty<'a>>,
    /// Bytes sent to and received from each peer.
    pub bytes: BTreeMap<Peer, (u64, u64)>,
    audit_sink: Option<super::training::AuditSink<'a>>,
}

impl<'a> LocalLink<'a> {
    /// The harness with `authority` and `owners` (each has sent its first messages:
    /// [`super::parties::OwnerParty::start`] is delivered here).
    ///
    /// # Errors
    /// An owner's refusal of the authority's public keys.
    pub fn new(
        mut authority: super::parties::AuthorityParty,
        owners: Vec<super::parties::OwnerParty<'a>>,
    ) -> Result<Self, ProtocolError> {
        let mut map = BTreeMap::new();
        for mut owner in owners {
            let mut id = None;
            for (to, msg) in owner.start() {
                match (to, &msg) {
                    (Party::KeyAuthority, _) => {
                        let reply = decode(&authority.handle_bytes(Party::DataOwner, &msg.to_bytes()))?;
                        if let Some((_, Message::Refused { reason, .. })) =
                            owner.handle(Party::KeyAuthority, &reply).first()
                        {
                            return Err(ProtocolError::Peer(reason.clone()));
                        }
                    }
                    (_, Message::Join { owner, .. }) => id = Some(*owner),
                    _ => {}
                }
            }
            let id = id.ok_or_else(|| ProtocolError::Misuse("an owner that does not join".into()))?;
            map.insert(id, owner);
        }
        Ok(Self { authority, owners: map, bytes: BTreeMap::new(), audit_sink: None })
    }

    /// Hands the authority's audit records to `sink` after every request it answers (without
    /// a sink they stay with the authority: [`LocalLink::authority_mut`]).
    pub fn set_audit_sink(&mut self, sink: super::training::AuditSink<'a>) {
        self.audit_sink = Some(sink);
    }

    /// The authority (its audit records).
    pub fn authority_mut(&mut self) -> &mut super::parties::AuthorityParty {
        &mut self.authority
    }

    /// Owner `id` goes away: later messages to it fail.
    pub fn disconnect(&mut self, id: u32) {
        self.owners.remove(&id);
    }

    fn count(&mut self, peer: Peer, sent: usize, received: usize) {
        let e = self.bytes.entry(peer).or_default();
        (e.0, e.1) = (e.0 + sent as u64, e.1 + received as u64);
    }
}

fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
    Message::from_bytes(bytes, super::messages::MAX_MESSAGE_LEN)
}

impl Link for LocalLink<'_> {
    fn exchange(&mut self, to: Peer, msg: &Message) -> Result<Message, ProtocolError> {
        let bytes = msg.to_bytes();
        let reply = match to {
            Peer::Authority => {
                let reply = self.authority.handle_bytes(Party::TrainingServer, &bytes);
                if let Some(sink) = &mut self.audit_sink {
                    sink(&self.authority.take_audit_records())
                        .map_err(|e| ProtocolError::Config(format!("the audit log: {e}")))?;
                }
                reply
            }
            Peer::Owner(id) => {
                let owner = self
                    .owners
                    .get_mut(&id)
                    .ok_or_else(|| ProtocolError::Peer(format!("data owner {id} is not connected")))?;
                let mut pending = owner.handle(Party::TrainingServer, &decode(&bytes)?);
                // The owner may first ask the authority for newer public keys.
                loop {
                    match pending.pop() {
                        Some((Party::TrainingServer, reply)) => break reply.to_bytes(),
                        Some((Party::KeyAuthority, request)) => {
                            let keys = decode(&self.authority.handle_bytes(Party::DataOwner, &request.to_bytes()))?;
                            pending.extend(owner.handle(Party::KeyAuthority, &keys));
                        }
                        Some(_) | None => {
                            return Err(ProtocolError::Peer(format!("data owner {id} answered nothing")));
                        }
                    }
                }
            }
        };
        self.count(to, bytes.len(), reply.len());
        decode(&reply)
    }
}
