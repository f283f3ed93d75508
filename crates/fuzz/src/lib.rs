//! Never-panic harnesses for everything blindfold reads from outside.
//!
//! Each target takes untrusted bytes and must return (an error or a value), never panic and
//! never allocate beyond the bounds the readers document (SECURITY.md, "Limits on what a
//! party reads"). [`Corpus::new`] makes one valid object of every kind (the seeds); the
//! property tests in `tests/never_panic.rs` mutate them (bit flips, truncations, huge
//! varints, spliced headers) and feed every target. CI runs a fixed number of cases; the same
//! harness runs longer on demand:
//!
//! ```text
//! BLINDFOLD_FUZZ_CASES=100000 cargo test --release -p blindfold-fuzz
//! ```

use blindfold_nn::compile::{self, ChainOptions};
use blindfold_nn::{ArchSpec, Model};
use blindfold_protocol::{Aggregation, Client, CompiledModel, Coordinator, Message, ModelHolder, PlanInfo};
use rand_core::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One valid object of every kind a party reads, and the parties that read them.
pub struct Corpus {
    /// The compiled model (`tenseal-cnn1`, untrained weights, `N8192_DEPTH5_128BIT`).
    pub model: Arc<CompiledModel>,
    /// A client whose keys the corpus's messages carry.
    pub client: Client,
    /// [`Message::EvaluationKeys`] of [`Corpus::client`].
    pub keys: Vec<u8>,
    /// [`Message::EncryptedImage`] of one image.
    pub image: Vec<u8>,
    /// [`Message::EncryptedScores`] of that image.
    pub scores: Vec<u8>,
    /// The model file (safetensors).
    pub model_file: Vec<u8>,
    /// The plan the model holder publishes, as JSON.
    pub plan: Vec<u8>,
    /// An IDX3 image file of 4 images of 28×28 pixels.
    pub idx_images: Vec<u8>,
    /// An IDX1 label file of 4 labels.
    pub idx_labels: Vec<u8>,
    /// A CryptoNN audit log of 6 keys (`blindfold cryptonn train --audit-log`).
    pub audit_log: Vec<u8>,
    /// A CryptoNN message: a key authority's public keys.
    pub cryptonn_message: Vec<u8>,
    /// A model holder session that holds the client's keys (decoding them once, not per case).
    holder: Mutex<ModelHolder>,
    dir: PathBuf,
}

impl Corpus {
    /// Builds the seeds (a few seconds: key generation and one encrypted evaluation).
    ///
    /// # Panics
    /// If the valid objects cannot be made (a bug, not an input).
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("blindfold-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let arch = ArchSpec::builtin("tenseal-cnn1").expect("built-in");
        let net = Model::init(arch, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).expect("init");
        let model_path = dir.join("seed.safetensors");
        net.save(&model_path, &Default::default()).expect("save");
        let compiled = CompiledModel::new(&net, &ChainOptions::default()).expect("compiles");
        let (mut client, keys) = Client::new(compiled.info()).expect("client");
        let mut holder = ModelHolder::new(compiled.clone());
        holder.handle(&keys).expect("keys");
        let image = client.encrypt(&[0.5; 784]).expect("encrypt").to_bytes();
        let scores = holder.handle_bytes(&image).expect("evaluates").expect("reply");
        let idx = |dims: &[u32], data: &[u8]| {
            let mut b = vec![0, 0, 8, dims.len() as u8];
            dims.iter().for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
            b.extend_from_slice(data);
            b
        };
        Self {
            plan: serde_json::to_vec(compiled.info()).expect("plan"),
            model: compiled,
            client,
            keys: keys.to_bytes(),
            image,
            scores,
            model_file: std::fs::read(&model_path).expect("model file"),
            idx_images: idx(&[4, 28, 28], &[7; 4 * 784]),
            idx_labels: idx(&[4], &[1, 2, 3, 4]),
            audit_log: audit_log(),
            cryptonn_message: cryptonn_message(),
            holder: Mutex::new(holder),
            dir,
        }
    }

    /// The seeds, by name.
    pub fn seeds(&self) -> Vec<(&'static str, &[u8])> {
        vec![
            ("keys", &self.keys),
            ("image", &self.image),
            ("scores", &self.scores),
            ("model file", &self.model_file),
            ("plan", &self.plan),
            ("idx images", &self.idx_images),
            ("idx labels", &self.idx_labels),
            ("audit log", &self.audit_log),
            ("cryptonn message", &self.cryptonn_message),
        ]
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        // One file per thread: tests running side by side share the corpus.
        let path = self.dir.join(format!("{name}-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
        std::fs::write(&path, bytes).expect("temporary file");
        path
    }

    /// Every target on `bytes`: decoding a message; a model holder handling it, before and
    /// after it holds the client's keys; an ensemble coordinator receiving it and aggregating;
    /// the client decrypting it; reading it as a model file, a plan (and compiling the plan's
    /// architecture, as a client does), an architecture, and IDX image and label files.
    /// Returns how many targets accepted the bytes.
    pub fn run_all(&self, bytes: &[u8]) -> usize {
        let mut accepted = 0;
        let mut count = |ok: bool| accepted += usize::from(ok);
        let msg = Message::from_bytes(bytes);
        count(msg.is_ok());
        let mut fresh = ModelHolder::new(self.model.clone());
        count(fresh.handle_bytes(bytes).is_ok());
        {
            let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
            count(holder.handle_bytes(bytes).is_ok());
            if holder.key_id() != self.client.key_id() {
                // Other valid keys replaced the session's: restore them for the next case.
                holder.handle_bytes(&self.keys).expect("valid keys");
            }
        }
        if let Ok(msg) = msg {
            let mut coordinator = Coordinator::new(self.model.info(), 2).expect("coordinator");
            count(coordinator.receive(1, &msg).is_ok());
            count(coordinator.aggregate(Aggregation::Mean).is_ok());
            count(self.client.decrypt_scores(&msg).is_ok());
            count(self.client.decrypt_ensemble_scores(&msg).is_ok());
        }
        count(model_file(&self.file("m.safetensors", bytes)));
        count(plan(bytes));
        count(serde_json::from_slice::<ArchSpec>(bytes).is_ok_and(|a| a.shapes().is_ok()));
        count(blindfold_data::read_images(&self.file("images-idx3-ubyte", bytes)).is_ok());
        count(blindfold_data::read_labels(&self.file("labels-idx1-ubyte", bytes)).is_ok());
        count(blindfold_protocol::cryptonn::verify_log(bytes).is_ok());
        count(cryptonn_message_works(bytes));
        accepted
    }
}

impl Default for Corpus {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Corpus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Loads a model file and compiles it, as a model holder does.
/// An audit log of six keys: three forward, three gradient, for inputs of 4 features.
fn audit_log() -> Vec<u8> {
    use blindfold_protocol::cryptonn::{KeyRequest, Mode, Purpose, TrainingAuthority, AUDIT_MAGIC};
    let mut authority = TrainingAuthority::unrestricted(4, 5, Mode::PlainLabels).expect("authority");
    for (i, purpose) in [Purpose::Forward, Purpose::Gradient].into_iter().cycle().take(6).enumerate() {
        let vector = (0..5).map(|j| (i * 5 + j) as i64 - 7).collect();
        authority.issue(&KeyRequest { epoch: 0, batch: i as u32 / 2, purpose, vector }).expect("key");
    }
    let mut log = AUDIT_MAGIC.to_vec();
    authority.take_audit_records().iter().for_each(|r| log.extend(r.to_bytes()));
    log
}

/// The public keys of a faithful-mode authority for inputs of 4 features, batches of 5.
fn cryptonn_message() -> Vec<u8> {
    use blindfold_protocol::cryptonn::{messages::Message, Mode, TrainingAuthority};
    let authority = TrainingAuthority::unrestricted(4, 5, Mode::Faithful).expect("authority");
    Message::PublicKeys(authority.public_keys()).to_bytes()
}

/// Decodes a CryptoNN message and, for public keys, each key as a data owner does.
fn cryptonn_message_works(bytes: &[u8]) -> bool {
    use blindfold_fe::wire::FeParams;
    use blindfold_fe::{febo, ipfe};
    use blindfold_protocol::cryptonn::messages::{Message, MAX_MESSAGE_LEN};
    match Message::from_bytes(bytes, MAX_MESSAGE_LEN) {
        Ok(Message::PublicKeys(keys)) => {
            let [forward, gradient, _] = keys.generations;
            keys.forward.decode(&FeParams { n: 5, generation: forward }).is_ok_and(|_: ipfe::MasterPublicKey| true)
                && keys.gradient.is_some_and(|k| {
                    k.decode(&FeParams { n: 5, generation: gradient }).is_ok_and(|_: ipfe::MasterPublicKey| true)
                })
                && keys.labels.is_some_and(|k| {
                    k.decode(&FeParams { n: 1, generation: 0 }).is_ok_and(|_: febo::MasterPublicKey| true)
                })
        }
        other => other.is_ok(),
    }
}

fn model_file(path: &Path) -> bool {
    Model::load(path).is_ok_and(|(m, _)| CompiledModel::new(&m, &ChainOptions::default()).is_ok())
}

/// Reads a plan and builds its circuit's structure from the architecture, as a client does
/// before it makes keys (without the key generation itself).
fn plan(bytes: &[u8]) -> bool {
    let Ok(info) = serde_json::from_slice::<PlanInfo>(bytes) else { return false };
    let Ok(params) = info.parameters() else { return false };
    let Ok(ctx) = blindfold_ckks::Context::new(&params) else { return false };
    compile::circuit(&info.arch, None, params.slots(), ctx.max_level()).is_ok()
}

/// Mutates `seed` by `edits`: each `(position, kind, value)` flips bits, truncates, inserts a
/// huge varint, or overwrites with `0xff` at `position` (taken modulo the length).
pub fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(pos, kind, value) in edits {
        let i = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        match kind % 5 {
            0 | 1 if i < b.len() => b[i] ^= value.max(1),
            2 => b.truncate(i),
            3 => {
                b.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x7f]);
            }
            _ => {
                let end = (i + 8).min(b.len());
                b[i..end].fill(0xff);
            }
        }
    }
    b
}
