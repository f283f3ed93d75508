//! Single-image encrypted inference: client and model holder.

use blindfold_ckks::serialize::{deserialize, serialize};
use blindfold_ckks::{
    Ciphertext, Context, Decryptor, Encoder, Encryptor, Evaluator, GaloisKeys, KeyGenerator, Preset,
    RelinearizationKey, SeededCiphertext,
};
use blindfold_nn::{ArchSpec, Model};
use blindfold_tensor::{CnnPlan, InputLayout, PlanError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Errors of the inference protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message that is not valid for this party in its current state.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// Bytes that do not decode as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A CKKS error (bad key or ciphertext bytes, parameter mismatch, …).
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
    /// An evaluation-plan error.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

type Result<T> = std::result::Result<T, ProtocolError>;

/// What the model holder publishes so a client can prepare its keys and input: the
/// architecture (no weights), the parameter preset and the input scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// The network architecture.
    pub arch: ArchSpec,
    /// Name of the CKKS preset.
    pub preset: String,
    /// Scale the inputs are encoded at (log2, bits).
    pub log_input_scale: u32,
}

impl PlanInfo {
    /// The preset named in the info.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for an unknown preset name.
    pub fn preset(&self) -> Result<Preset> {
        blindfold_ckks::presets::PRESETS
            .into_iter()
            .find(|p| p.name == self.preset)
            .ok_or_else(|| ProtocolError::Unexpected(format!("unknown parameter preset {}", self.preset)))
    }
}

/// A message between client and model holder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Client → model holder: relinearization and Galois keys (CKKS wire format).
    EvaluationKeys {
        /// Serialized [`RelinearizationKey`].
        #[serde(with = "serde_bytes")]
        relinearization: Vec<u8>,
        /// Serialized [`GaloisKeys`].
        #[serde(with = "serde_bytes")]
        galois: Vec<u8>,
    },
    /// Client → model holder: the packed image, seeded ciphertexts.
    EncryptedImage {
        /// One serialized [`SeededCiphertext`] per input ciphertext of the layout.
        ciphertexts: Vec<serde_bytes::ByteBuf>,
    },
    /// Model holder → client: the encrypted logits.
    EncryptedScores {
        /// Serialized [`Ciphertext`].
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
}

impl Message {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    /// Decodes a message.
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for bytes that are not a message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Message::EvaluationKeys { .. } => "EvaluationKeys",
            Message::EncryptedImage { .. } => "EncryptedImage",
            Message::EncryptedScores { .. } => "EncryptedScores",
        }
    }
}

/// The data owner: holds the secret key, encrypts images, decrypts scores.
pub struct Client {
    ctx: Arc<Context>,
    keygen: KeyGenerator,
    encoder: Encoder,
    encryptor: Encryptor,
    decryptor: Decryptor,
    layout: InputLayout,
    input_scale: f64,
    classes: usize,
}

impl Client {
    /// A client with fresh keys for `info`; returns it with the evaluation-keys message to
    /// send to the model holder. Only the rotations the plan uses get Galois keys.
    ///
    /// # Errors
    /// CKKS and plan errors (an unknown preset, an unsupported architecture).
    pub fn new(info: &PlanInfo) -> Result<(Self, Message)> {
        let params = info.preset()?.parameters()?;
        let ctx = Context::new(&params)?;
        let keygen = KeyGenerator::new(&ctx)?;
        Self::with_keygen(info, ctx, keygen)
    }

    /// Like [`Client::new`] with an existing secret key (e.g. loaded from the client's file).
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_secret_key(info: &PlanInfo, sk: &blindfold_ckks::SecretKey) -> Result<(Self, Message)> {
        let keygen = KeyGenerator::from_secret_key(sk)?;
        let ctx = sk.context().clone();
        Self::with_keygen(info, ctx, keygen)
    }

    fn with_keygen(info: &PlanInfo, ctx: Arc<Context>, mut keygen: KeyGenerator) -> Result<(Self, Message)> {
        let slots = ctx.params().slots();
        let layout = InputLayout::from_arch(&info.arch, slots)?;
        let steps = CnnPlan::rotation_keys_for(&info.arch, slots, ctx.max_level())?;
        let rlk = keygen.relinearization_key();
        let gk = keygen.galois_keys_at_levels(&steps)?;
        let msg = Message::EvaluationKeys {
            relinearization: serialize(&rlk, &ctx)?.to_vec(),
            galois: serialize(&gk, &ctx)?.to_vec(),
        };
        let classes = info.arch.classes().map_err(|e| PlanError::Unsupported(e.to_string()))?;
        let client = Self {
            encoder: Encoder::new(&ctx),
            encryptor: Encryptor::with_secret_key(keygen.secret_key())?,
            decryptor: Decryptor::new(keygen.secret_key()),
            ctx,
            keygen,
            layout,
            input_scale: 2f64.powi(info.log_input_scale as i32),
            classes,
        };
        Ok((client, msg))
    }

    /// A relinearization key and Galois keys for `steps` (rotation step, highest level used),
    /// for another party that evaluates on this client's ciphertexts: the ensemble coordinator
    /// ([`crate::Coordinator::evaluation_key_steps`]). Public keys only.
    ///
    /// # Errors
    /// CKKS errors for a level above the top level.
    pub fn evaluation_keys(&mut self, steps: &[(i64, usize)]) -> Result<Message> {
        let rlk = self.keygen.relinearization_key();
        let gk = self.keygen.galois_keys_at_levels(steps)?;
        Ok(Message::EvaluationKeys {
            relinearization: serialize(&rlk, &self.ctx)?.to_vec(),
            galois: serialize(&gk, &self.ctx)?.to_vec(),
        })
    }

    /// The client's secret key (to store it; never send it).
    pub fn secret_key(&self) -> &blindfold_ckks::SecretKey {
        self.keygen.secret_key()
    }

    /// The CKKS context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Encrypts one image given as normalized values (channel-major), packed for the plan.
    ///
    /// # Errors
    /// [`ProtocolError::Plan`] for an image of the wrong size; CKKS encoding errors.
    pub fn encrypt(&mut self, image: &[f64]) -> Result<Message> {
        let packed = self.layout.pack(image)?;
        let pts = packed
            .par_iter()
            .map(|v| self.encoder.encode_real(v, self.ctx.max_level(), self.input_scale))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ciphertexts = self
            .encryptor
            .encrypt_symmetric_batch(&pts)?
            .par_iter()
            .map(|ct| Ok(serde_bytes::ByteBuf::from(serialize(ct, &self.ctx)?.to_vec())))
            .collect::<Result<_>>()?;
        Ok(Message::EncryptedImage { ciphertexts })
    }

    /// Decrypts the scores (logits) of an [`Message::EncryptedScores`].
    ///
    /// The result stays with the client: CKKS decryptions carry noise that depends on the
    /// secret key (see SECURITY.md), so do not send it back to the model holder.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for another message; CKKS errors for bad ciphertext bytes.
    pub fn decrypt_scores(&self, msg: &Message) -> Result<Vec<f64>> {
        let Message::EncryptedScores { ciphertext } = msg else {
            return Err(ProtocolError::Unexpected(format!("client expected EncryptedScores, got {}", msg.kind())));
        };
        let ct: Ciphertext = deserialize(ciphertext, &self.ctx)?;
        let pt = self.decryptor.decrypt(&ct)?;
        Ok(self.encoder.decode_real(&pt)[..self.classes].to_vec())
    }
}

/// The model holder: evaluates its model on the client's ciphertexts with the client's
/// public evaluation keys. Holds no secret key and sees no plaintext input or score.
pub struct ModelHolder {
    plan: CnnPlan,
    eval: Evaluator,
    info: PlanInfo,
    keys: Option<(RelinearizationKey, GaloisKeys)>,
}

impl ModelHolder {
    /// Compiles `model` for `preset` with inputs at scale 2^`log_input_scale`.
    ///
    /// # Errors
    /// CKKS and plan errors (too deep for the preset, unsupported architecture).
    pub fn new(model: &Model, preset: Preset, log_input_scale: u32) -> Result<Self> {
        let params = preset.parameters()?;
        let ctx = Context::new(&params)?;
        let plan = CnnPlan::compile(model, &ctx, 2f64.powi(log_input_scale as i32))?;
        let info = PlanInfo { arch: model.spec().clone(), preset: preset.name.to_string(), log_input_scale };
        Ok(Self { eval: Evaluator::new(&ctx), plan, info, keys: None })
    }

    /// What the client needs to know (no weights).
    pub fn info(&self) -> &PlanInfo {
        &self.info
    }

    /// The compiled plan.
    pub fn plan(&self) -> &CnnPlan {
        &self.plan
    }

    /// Handles one message: stores evaluation keys (no reply), or evaluates an encrypted
    /// image (replies with the encrypted scores).
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for an image before the keys or a message meant for the
    /// client; CKKS errors for bad keys or ciphertexts (parameter mismatch, malformed bytes).
    pub fn handle(&mut self, msg: &Message) -> Result<Option<Message>> {
        let ctx = self.plan.context().clone();
        match msg {
            Message::EvaluationKeys { relinearization, galois } => {
                let rlk: RelinearizationKey = deserialize(relinearization, &ctx)?;
                let gk: GaloisKeys = deserialize(galois, &ctx)?;
                let missing: Vec<i64> = self
                    .plan
                    .rotation_keys()
                    .into_iter()
                    .filter(|&(s, level)| {
                        gk.max_level(ctx.galois_element_for_rotation(s)).is_none_or(|have| have < level)
                    })
                    .map(|(s, _)| s)
                    .collect();
                if !missing.is_empty() {
                    return Err(ProtocolError::Unexpected(format!("Galois keys lack rotation steps {missing:?}")));
                }
                self.keys = Some((rlk, gk));
                Ok(None)
            }
            Message::EncryptedImage { ciphertexts } => {
                let (rlk, gk) = self
                    .keys
                    .as_ref()
                    .ok_or_else(|| ProtocolError::Unexpected("EncryptedImage before EvaluationKeys".into()))?;
                let cts: Vec<Ciphertext> = ciphertexts
                    .iter()
                    .map(|b| Ok(deserialize::<SeededCiphertext>(b, &ctx)?.expand(&ctx)))
                    .collect::<Result<_>>()?;
                let out = self.plan.evaluate(&self.eval, &cts, rlk, gk)?;
                Ok(Some(Message::EncryptedScores { ciphertext: serialize(&out, &ctx)?.to_vec() }))
            }
            other => Err(ProtocolError::Unexpected(format!("model holder does not accept {}", other.kind()))),
        }
    }
}
