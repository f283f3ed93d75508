//! CryptoNN's data owner and key authority as message-in, messages-out state machines: no
//! I/O here. The transport (the in-process harness, network services) moves the bytes and
//! says which party sent them. The authority answers every message with one message; an
//! owner answers with the messages it sends next, and where to. Anything a party will not do
//! gets a [`Message::Refused`] naming the party at fault. The training server is in
//! [`super::server`].

use super::messages::{KeyScalars, Message, Party, PublicKeys, Shard, MAX_MESSAGE_LEN};
use super::{AuditRecord, KeyRequest, Purpose, TrainingAuthority, TrainingClient};
use crate::inference::ProtocolError;
use blindfold_data::LabeledImages;
use blindfold_fe::wire::FeParams;
use blindfold_fe::{febo, FixedPoint};

/// Most keys one request may ask for (`2^16`; LeNet-5 asks 9,600 per batch for its
/// convolution's gradient): bounds the work and memory of one message.
pub const MAX_KEYS_PER_REQUEST: usize = 1 << 16;

/// The key authority as a party: the only holder of the master secret keys. Answers public
/// key requests from anyone, and key requests from the training server only, each key
/// through the authority's policy and into its audit log.
pub struct AuthorityParty {
    authority: TrainingAuthority,
}

impl AuthorityParty {
    /// The party around `authority`.
    pub fn new(authority: TrainingAuthority) -> Self {
        Self { authority }
    }

    /// The authority (its policy state and logs).
    pub fn authority(&self) -> &TrainingAuthority {
        &self.authority
    }

    /// The audit records of the keys issued since the last call ([`TrainingAuthority::take_audit_records`]).
    pub fn take_audit_records(&mut self) -> Vec<AuditRecord> {
        self.authority.take_audit_records()
    }

    /// [`AuthorityParty::handle`] on bytes: a message that does not decode is refused as the
    /// sender's fault. Never panics.
    pub fn handle_bytes(&mut self, from: Party, bytes: &[u8]) -> Vec<u8> {
        match Message::from_bytes(bytes, MAX_MESSAGE_LEN) {
            Ok(msg) => self.handle(from, &msg),
            Err(e) => refused(Party::KeyAuthority, from, &e),
        }
        .to_bytes()
    }

    /// The reply to `msg` from `from`: [`Message::PublicKeys`] to a
    /// [`Message::PublicKeysRequest`]; [`Message::FunctionKeys`] or [`Message::LabelKeys`] to
    /// the training server's requests; otherwise [`Message::Refused`] — a request from
    /// another party, a vector of the wrong length or malformed, more than
    /// [`MAX_KEYS_PER_REQUEST`] keys (all checked before any key is issued), a key the policy
    /// refuses (keys issued before it in the same request stay in the audit log, which may so
    /// list keys never delivered).
    pub fn handle(&mut self, from: Party, msg: &Message) -> Message {
        let reply = match msg {
            Message::PublicKeysRequest => Ok(Message::PublicKeys(self.authority.public_keys())),
            Message::KeyRequests { .. } | Message::LabelKeyRequests { .. } if from != Party::TrainingServer => {
                Err(ProtocolError::Peer(format!("a {from:?} asked for function keys: only the training server may")))
            }
            Message::KeyRequests { epoch, batch, purpose, vectors } => self.issue(*epoch, *batch, *purpose, vectors),
            Message::LabelKeyRequests { epoch, batch, entries } => self.issue_label_keys(*epoch, *batch, entries),
            other => Err(ProtocolError::Peer(format!("a {} is not a message for the key authority", other.kind()))),
        };
        reply.unwrap_or_else(|e| refused(Party::KeyAuthority, from, &e))
    }

    fn issue(
        &mut self,
        epoch: u32,
        batch: u32,
        purpose: Purpose,
        vectors: &[super::messages::SparseVector],
    ) -> Result<Message, ProtocolError> {
        check_count(vectors.len())?;
        let len = self.authority.vector_len(purpose).ok_or_else(|| {
            ProtocolError::Peer(format!("no key pair issues {purpose:?} keys here (label keys: LabelKeyRequests)"))
        })?;
        vectors.iter().try_for_each(|v| v.check(len))?;
        let generation = self.authority.generation(purpose).unwrap_or(0);
        let mut keys = KeyScalars(Vec::with_capacity(vectors.len()));
        for v in vectors {
            let request = KeyRequest { epoch, batch, purpose, vector: v.to_dense(len)? };
            let key = self
                .authority
                .issue(&request)
                .map_err(|e| ProtocolError::Peer(format!("the policy refuses a {purpose:?} key: {e}")))?;
            keys.0.push(*key.sk_bytes());
        }
        Ok(Message::FunctionKeys { generation, keys })
    }

    fn issue_label_keys(
        &mut self,
        epoch: u32,
        batch: u32,
        entries: &[(super::messages::FeWire<febo::Ciphertext>, i64)],
    ) -> Result<Message, ProtocolError> {
        check_count(entries.len())?;
        let cts: Vec<febo::Ciphertext> =
            entries.iter().map(|(ct, _)| ct.decode(&FeParams { n: 1, generation: 0 })).collect::<Result<_, _>>()?;
        let requests: Vec<(&febo::Ciphertext, i64)> = cts.iter().zip(entries).map(|(ct, (_, a))| (ct, *a)).collect();
        let keys = self
            .authority
            .issue_label_keys(epoch, batch, &requests)
            .map_err(|e| ProtocolError::Peer(format!("label keys refused: {e}")))?;
        let wire = keys.iter().map(|k| super::messages::FeWire::new(k, 0)).collect::<Result<_, _>>()?;
        Ok(Message::LabelKeys(wire))
    }
}

fn check_count(count: usize) -> Result<(), ProtocolError> {
    if count > MAX_KEYS_PER_REQUEST {
        return Err(ProtocolError::Peer(format!("{count} keys in one request, more than {MAX_KEYS_PER_REQUEST}")));
    }
    Ok(())
}

/// The refusal by `me` of a message from `from` for `e`: the sender's fault if `e` is the
/// peer's ([`ProtocolError::fault`]), otherwise `me`'s own (a failure on this side).
fn refused(me: Party, from: Party, e: &ProtocolError) -> Message {
    let fault = if e.fault() == crate::inference::Fault::Peer { from } else { me };
    Message::Refused { fault, reason: e.to_string() }
}

/// A data owner as a party: its shard of the training data and the authority's public keys
/// (never more). It encrypts the examples the training server asks for under the key-pair
/// generations the request names, first fetching newer public keys from the authority when
/// it holds older ones.
pub struct OwnerParty<'a> {
    id: u32,
    shard: Shard,
    data: &'a LabeledImages,
    encoding: FixedPoint,
    classes: usize,
    batch_size: usize,
    /// A convolutional first layer: rows only, no feature columns.
    conv: bool,
    client: Option<TrainingClient<'a>>,
    /// A batch request waiting for newer public keys: (epoch, step, examples, generations).
    pending: Option<(u32, u32, Vec<u32>, [u32; 3])>,
}

/// Outgoing messages with their destinations.
pub type Outgoing = Vec<(Party, Message)>;

impl<'a> OwnerParty<'a> {
    /// Owner `id` holding `data`, shard `shard` of the training set, encrypting batches of up
    /// to `batch_size` examples with `encoding` (`conv`: for a convolutional first layer).
    pub fn new(
        id: u32,
        shard: Shard,
        data: &'a LabeledImages,
        encoding: FixedPoint,
        classes: usize,
        batch_size: usize,
        conv: bool,
    ) -> Self {
        Self { id, shard, data, encoding, classes, batch_size, conv, client: None, pending: None }
    }

    /// The first messages: public keys from the authority, joining the server.
    pub fn start(&self) -> Outgoing {
        let examples = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        vec![
            (Party::KeyAuthority, Message::PublicKeysRequest),
            (
                Party::TrainingServer,
                Message::Join { owner: self.id, shard: self.shard, examples, scale: self.encoding.scale() },
            ),
        ]
    }

    /// The messages `msg` from `from` calls for: an encrypted batch for the server's batch
    /// request (or a public-key request to the authority first, when the request names
    /// newer generations than the owner holds); nothing for public keys or a refusal; a
    /// refusal for anything else — a request from another party than the server, examples
    /// outside the shard or more than a batch, a message not for a data owner.
    pub fn handle(&mut self, from: Party, msg: &Message) -> Outgoing {
        let out = match (from, msg) {
            (Party::KeyAuthority, Message::PublicKeys(keys)) => self.take_keys(keys),
            (Party::TrainingServer, Message::BatchRequest { epoch, step, examples, generations }) => {
                self.request(*epoch, *step, examples, *generations)
            }
            (_, Message::Refused { .. }) => Ok(Vec::new()),
            (_, Message::BatchRequest { .. } | Message::PublicKeys(_)) => {
                Err(ProtocolError::Peer(format!("a {} from a {from:?}", msg.kind())))
            }
            _ => Err(ProtocolError::Peer(format!("a {} is not a message for a data owner", msg.kind()))),
        };
        out.unwrap_or_else(|e| vec![(from, refused(Party::DataOwner, from, &e))])
    }

    fn take_keys(&mut self, keys: &PublicKeys) -> Result<Outgoing, ProtocolError> {
        match &mut self.client {
            Some(client) => client.set_public_keys(keys)?,
            None => {
                let client = TrainingClient::new(self.data, self.encoding, self.classes, self.batch_size, keys)?;
                self.client = Some(if self.conv { client.rows_only() } else { client });
            }
        }
        match self.pending.take() {
            Some((epoch, step, examples, generations)) if generations == keys.generations => {
                self.encrypt(epoch, step, &examples, generations)
            }
            Some((.., generations)) => Ok(vec![(
                Party::TrainingServer,
                refused(
                    Party::DataOwner,
                    Party::TrainingServer,
                    &ProtocolError::Peer(format!(
                        "the batch request names key pairs {generations:?}, the authority's are {:?}",
                        keys.generations
                    )),
                ),
            )]),
            None => Ok(Vec::new()),
        }
    }

    fn request(
        &mut self,
        epoch: u32,
        step: u32,
        examples: &[u32],
        generations: [u32; 3],
    ) -> Result<Outgoing, ProtocolError> {
        if examples.is_empty() || examples.len() > self.batch_size {
            return Err(ProtocolError::Peer(format!(
                "a batch of {} examples (1 to {} here)",
                examples.len(),
                self.batch_size
            )));
        }
        if let Some(&bad) = examples.iter().find(|&&i| i as usize >= self.data.len()) {
            return Err(ProtocolError::Peer(format!(
                "example {bad} of a shard of {} (shard {} of {})",
                self.data.len(),
                self.shard.index,
                self.shard.count
            )));
        }
        if self.client.as_ref().map(TrainingClient::generations) != Some(generations) {
            self.pending = Some((epoch, step, examples.to_vec(), generations));
            return Ok(vec![(Party::KeyAuthority, Message::PublicKeysRequest)]);
        }
        self.encrypt(epoch, step, examples, generations)
    }

    fn encrypt(
        &mut self,
        epoch: u32,
        step: u32,
        examples: &[u32],
        generations: [u32; 3],
    ) -> Result<Outgoing, ProtocolError> {
        let client = self.client.as_mut().ok_or_else(|| ProtocolError::Misuse("no public keys yet".into()))?;
        let indices: Vec<usize> = examples.iter().map(|&i| i as usize).collect();
        let batch = client
            .encrypt_batch(&indices)
            .map_err(|e| ProtocolError::Misuse(format!("data owner {}: encryption failed: {e}", self.id)))?;
        Ok(vec![(Party::TrainingServer, batch.to_message(self.id, epoch, step, generations)?)])
    }
}
