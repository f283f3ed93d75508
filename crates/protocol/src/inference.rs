//! Single-image encrypted inference: client and model holder.

use blindfold_ckks::serialize::{deserialize, serialize};
use blindfold_ckks::{
    Ciphertext, Context, Decryptor, Encoder, Encryptor, Evaluator, GaloisKeys, KeyGenerator, Parameters,
    ParametersLiteral, RelinearizationKey, SeededCiphertext,
};
use blindfold_nn::compile::{self, ChainOptions, Compiled};
use blindfold_nn::{ArchSpec, Model};
use blindfold_tensor::requirements::key_requests;
use blindfold_tensor::{Circuit, Layout, Packing, RotationKey};
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
    /// A model without an encrypted form, or a circuit error.
    #[error(transparent)]
    Model(#[from] blindfold_nn::Error),
}

type Result<T> = std::result::Result<T, ProtocolError>;

/// What the model holder publishes so a client can prepare its keys and input: the
/// architecture (no weights), the CKKS parameters the circuit was compiled for, the input
/// scale, and what the circuit needs of the client's keys.
///
/// The client does not take the key list on trust: it builds the circuit's structure from the
/// architecture itself and refuses a plan whose published keys or depth differ
/// ([`Client::new`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// The network architecture.
    pub arch: ArchSpec,
    /// The CKKS parameters (checked against the 128-bit bound by whoever builds them).
    pub parameters: ParametersLiteral,
    /// Scale the inputs are encrypted at (the top prime of the chain).
    pub input_scale: f64,
    /// Multiplicative depth of the circuit: the scores arrive at `top level − depth`.
    pub depth: usize,
    /// Whether the circuit needs a relinearization key.
    pub relinearization: bool,
    /// The rotations the circuit makes, each at the highest level it is made at.
    pub rotation_keys: Vec<RotationKey>,
}

impl PlanInfo {
    /// The checked parameters of the plan.
    ///
    /// # Errors
    /// [`ProtocolError::Ckks`] for parameters that are malformed or not 128-bit secure.
    pub fn parameters(&self) -> Result<Parameters> {
        Ok(Parameters::new(self.parameters.clone())?)
    }

    /// A short name of the plan's parameters ([`PlanInfo::name_of`]).
    pub fn parameters_name(&self) -> String {
        Self::name_of(&self.parameters)
    }

    /// A short name of parameters: ring degree, depth and scale bits, e.g.
    /// `N8192_DEPTH5_SCALE29_128BIT` (the name of a released preset when they are one).
    pub fn name_of(p: &ParametersLiteral) -> String {
        if let Some(preset) = blindfold_ckks::presets::PRESETS.iter().find(|q| &q.literal() == p) {
            return preset.name.to_string();
        }
        format!(
            "N{}_DEPTH{}_SCALE{}_128BIT",
            1u64 << p.log_n.min(63),
            p.log_q.len().saturating_sub(1),
            p.log_default_scale
        )
    }

    /// The plan of `arch`'s circuit on the parameters `opts` choose, without the weights: what
    /// a client that knows only the architecture expects (the model holder's
    /// [`CompiledModel::info`] equals it for the same options).
    ///
    /// # Errors
    /// As [`CompiledModel::new`].
    pub fn for_architecture(arch: &ArchSpec, opts: &ChainOptions) -> Result<Self> {
        Self::for_parameters(arch, &compile::parameters(arch, opts)?)
    }

    /// The plan of `arch`'s circuit on `params`, without the weights (as
    /// [`PlanInfo::for_architecture`]; the model holder's [`CompiledModel::with_parameters`]
    /// publishes the same).
    ///
    /// # Errors
    /// As [`CompiledModel::with_parameters`].
    pub fn for_parameters(arch: &ArchSpec, params: &Parameters) -> Result<Self> {
        let ctx = Context::new(params)?;
        let c = compile::circuit(arch, None, params.slots(), ctx.max_level())?;
        Ok(Self {
            arch: arch.clone(),
            parameters: params.literal().clone(),
            input_scale: compile::input_scale(&ctx),
            depth: c.depth(),
            relinearization: c.relinearizes(),
            rotation_keys: c.rotation_keys(),
        })
    }
}

/// A model compiled for encrypted inference, shared (`Arc`) by every client session of a
/// model holder: the circuit with its plaintexts encoded, its context, and what it publishes.
#[derive(Debug)]
pub struct CompiledModel {
    compiled: Compiled,
    info: PlanInfo,
}

impl CompiledModel {
    /// Compiles `model` on the parameters its depth needs ([`ChainOptions`]).
    ///
    /// # Errors
    /// [`ProtocolError::Model`] for a model without an encrypted form or too deep for any
    /// 128-bit chain.
    pub fn new(model: &Model, opts: &ChainOptions) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from_compiled(Compiled::new(model, opts)?)))
    }

    /// Compiles `model` on given parameters (the network takes the top levels; the rest are
    /// left, e.g. for an ensemble's aggregation).
    ///
    /// # Errors
    /// As [`CompiledModel::new`].
    pub fn with_parameters(model: &Model, params: &Parameters) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from_compiled(Compiled::with_parameters(model, params)?)))
    }

    fn from_compiled(compiled: Compiled) -> Self {
        let c = &compiled.circuit;
        let info = PlanInfo {
            arch: compiled.arch.clone(),
            parameters: compiled.ctx.params().literal().clone(),
            input_scale: c.input_scale().expect("compiled circuits are encoded"),
            depth: c.depth(),
            relinearization: c.relinearizes(),
            rotation_keys: c.rotation_keys(),
        };
        Self { compiled, info }
    }

    /// What the client needs to know (no weights).
    pub fn info(&self) -> &PlanInfo {
        &self.info
    }

    /// The circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.compiled.circuit
    }

    /// The CKKS context.
    pub fn context(&self) -> &Arc<Context> {
        &self.compiled.ctx
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
    /// How to pack an image, and where the scores come out: from the circuit's structure,
    /// which the client builds from the architecture (no weights).
    packing: Packing,
    output: Layout,
    info: PlanInfo,
}

impl Client {
    /// A client with a fresh secret key for `info`; returns it with the evaluation-keys
    /// message to send to the model holder (Galois keys for exactly the circuit's rotations,
    /// each at its level).
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for a plan whose published keys or depth are not those
    /// of its architecture's circuit; CKKS errors for parameters that are not 128-bit secure;
    /// [`ProtocolError::Model`] for an architecture without an encrypted form.
    pub fn new(info: &PlanInfo) -> Result<(Self, Message)> {
        let ctx = Context::new(&info.parameters()?)?;
        let keygen = KeyGenerator::new(&ctx)?;
        let mut client = Self::with_keygen(info, ctx, keygen)?;
        let keys = client.evaluation_keys()?;
        Ok((client, keys))
    }

    /// A client with an existing secret key (e.g. loaded from the client's file); makes no
    /// keys until asked ([`Client::evaluation_keys`]).
    ///
    /// # Errors
    /// As [`Client::new`]; [`ProtocolError::Unexpected`] if the key belongs to other
    /// parameters.
    pub fn with_secret_key(info: &PlanInfo, sk: &blindfold_ckks::SecretKey) -> Result<Self> {
        if sk.context().params() != &info.parameters()? {
            return Err(ProtocolError::Unexpected(
                "the secret key was made for other parameters than the plan's".into(),
            ));
        }
        let keygen = KeyGenerator::from_secret_key(sk)?;
        Self::with_keygen(info, sk.context().clone(), keygen)
    }

    fn with_keygen(info: &PlanInfo, ctx: Arc<Context>, keygen: KeyGenerator) -> Result<Self> {
        if !(info.input_scale.is_finite() && info.input_scale >= 2.0 && info.input_scale < 2f64.powi(62)) {
            return Err(ProtocolError::Unexpected(format!("input scale {} is not usable", info.input_scale)));
        }
        let circuit = compile::circuit(&info.arch, None, ctx.params().slots(), ctx.max_level())?;
        if circuit.rotation_keys() != info.rotation_keys
            || circuit.depth() != info.depth
            || circuit.relinearizes() != info.relinearization
        {
            return Err(ProtocolError::Unexpected(
                "the plan's published keys or depth are not those of its architecture's circuit".into(),
            ));
        }
        Ok(Self {
            encoder: Encoder::new(&ctx),
            encryptor: Encryptor::with_secret_key(keygen.secret_key())?,
            decryptor: Decryptor::new(keygen.secret_key()),
            ctx,
            keygen,
            packing: circuit.packing().clone(),
            output: circuit.output().clone(),
            info: info.clone(),
        })
    }

    /// The evaluation-keys message for the plan's circuit: a relinearization key if it needs
    /// one, and Galois keys for its rotations, each level-limited.
    ///
    /// # Errors
    /// CKKS errors.
    pub fn evaluation_keys(&mut self) -> Result<Message> {
        let keys = self.info.rotation_keys.clone();
        self.evaluation_keys_for(&keys)
    }

    /// A relinearization key and Galois keys for `keys`, for another party that evaluates on
    /// this client's ciphertexts: the ensemble coordinator
    /// ([`crate::Coordinator::rotation_keys`]). Public keys only.
    ///
    /// # Errors
    /// CKKS errors for a level above the top level.
    pub fn evaluation_keys_for(&mut self, keys: &[RotationKey]) -> Result<Message> {
        let rlk = self.keygen.relinearization_key();
        let gk = self.keygen.galois_keys(&key_requests(keys, &self.ctx))?;
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

    /// The plan the client serves.
    pub fn info(&self) -> &PlanInfo {
        &self.info
    }

    /// Encrypts one image of 8-bit pixels (channel-major), normalized as the architecture
    /// says ([`blindfold_nn::Normalization::apply`], the model's own normalization).
    ///
    /// # Errors
    /// As [`Client::encrypt`].
    pub fn encrypt_pixels(&mut self, pixels: &[u8]) -> Result<Message> {
        let x: Vec<f64> = self.info.arch.normalization.apply(pixels).into_iter().map(f64::from).collect();
        self.encrypt(&x)
    }

    /// Encrypts one image given as normalized values (channel-major), packed for the circuit.
    ///
    /// # Errors
    /// [`ProtocolError::Model`] for an image of the wrong size; CKKS encoding errors.
    pub fn encrypt(&mut self, image: &[f64]) -> Result<Message> {
        let packed = self.packing.pack(image).map_err(blindfold_nn::Error::from)?;
        let (level, scale) = (self.ctx.max_level(), self.info.input_scale);
        let pts = packed
            .par_iter()
            .map(|v| self.encoder.encode_real(v, level, scale))
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
        Ok(self.output.unpack(&[self.encoder.decode_real(&pt)]))
    }
}

/// The model holder: evaluates its model on the client's ciphertexts with the client's
/// public evaluation keys. Holds no secret key and sees no plaintext input or score.
pub struct ModelHolder {
    model: Arc<CompiledModel>,
    eval: Evaluator,
    keys: Option<(RelinearizationKey, GaloisKeys)>,
}

impl ModelHolder {
    /// A session of the compiled model (shared by every session).
    pub fn new(model: Arc<CompiledModel>) -> Self {
        Self { eval: Evaluator::new(model.context()), model, keys: None }
    }

    /// What the client needs to know (no weights).
    pub fn info(&self) -> &PlanInfo {
        self.model.info()
    }

    /// The compiled model.
    pub fn model(&self) -> &Arc<CompiledModel> {
        &self.model
    }

    /// Handles one message: stores evaluation keys (no reply), or evaluates an encrypted
    /// image (replies with the encrypted scores).
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for keys that lack a rotation the circuit needs, an image
    /// before the keys or a message meant for the client; CKKS errors for bad keys or
    /// ciphertexts (parameter mismatch, malformed bytes).
    pub fn handle(&mut self, msg: &Message) -> Result<Option<Message>> {
        let ctx = self.model.context().clone();
        let circuit = self.model.circuit();
        match msg {
            Message::EvaluationKeys { relinearization, galois } => {
                let rlk: RelinearizationKey = deserialize(relinearization, &ctx)?;
                let gk: GaloisKeys = deserialize(galois, &ctx)?;
                let missing = gk.missing(&circuit.key_requests(&ctx));
                if !missing.is_empty() {
                    let steps: Vec<String> = circuit
                        .rotation_keys()
                        .iter()
                        .filter(|k| missing.iter().any(|m| m.element == ctx.galois_element_for_rotation(k.step)))
                        .map(|k| format!("{} at level {}", k.step, k.level))
                        .collect();
                    return Err(ProtocolError::Unexpected(format!(
                        "Galois keys lack rotation steps {} (client's fault: keys made for another plan)",
                        steps.join(", ")
                    )));
                }
                self.keys = Some((rlk, gk));
                Ok(None)
            }
            Message::EncryptedImage { ciphertexts } => {
                let (rlk, gk) = self
                    .keys
                    .as_ref()
                    .ok_or_else(|| ProtocolError::Unexpected("EncryptedImage before EvaluationKeys".into()))?;
                let expected = circuit.packing().ciphertexts();
                if ciphertexts.len() != expected {
                    return Err(ProtocolError::Unexpected(format!(
                        "EncryptedImage with {} ciphertexts, the plan takes {expected}",
                        ciphertexts.len()
                    )));
                }
                let cts: Vec<Ciphertext> = ciphertexts
                    .iter()
                    .map(|b| Ok(deserialize::<SeededCiphertext>(b, &ctx)?.expand(&ctx)))
                    .collect::<Result<_>>()?;
                if let Some(ct) = cts.iter().find(|c| c.level() != ctx.max_level()) {
                    return Err(ProtocolError::Unexpected(format!(
                        "input ciphertext at level {}, the plan takes level {}",
                        ct.level(),
                        ctx.max_level()
                    )));
                }
                let out = circuit.evaluate(&self.eval, &cts, rlk, gk).map_err(blindfold_nn::Error::from)?;
                Ok(Some(Message::EncryptedScores { ciphertext: serialize(&out, &ctx)?.to_vec() }))
            }
            other => Err(ProtocolError::Unexpected(format!("model holder does not accept {}", other.kind()))),
        }
    }
}
