//! CryptoNN's parties as message-in, message-out state machines: no I/O here. The transport
//! (the in-process harness, network services) moves the bytes and says which party sent
//! them; each party answers every message with one message, a [`Message::Refused`] naming
//! the party at fault for anything it will not do.

use super::messages::{KeyScalars, Message, Party, MAX_MESSAGE_LEN};
use super::{AuditRecord, KeyRequest, Purpose, TrainingAuthority};
use crate::inference::ProtocolError;
use blindfold_fe::febo;
use blindfold_fe::wire::FeParams;

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
            Err(e) => refused(from, &e),
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
        reply.unwrap_or_else(|e| refused(from, &e))
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

/// The refusal of a message from `from` for `e`: the sender's fault.
fn refused(from: Party, e: &ProtocolError) -> Message {
    Message::Refused { fault: from, reason: e.to_string() }
}
