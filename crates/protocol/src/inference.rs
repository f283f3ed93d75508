//! Single-image encrypted inference: client and model holder.

use blindfold_ckks::serialize::{deserialize, deserialize_with_limit, galois_keys_max_size, serialize, WireObject};
use blindfold_ckks::{
    Ciphertext, Context, Decryptor, Encoder, Encryptor, Evaluator, GaloisKeys, KeyGenerator, Parameters,
    ParametersLiteral, PublicKey, RelinearizationKey, SeededCiphertext, SymmetricEncryptor,
};
use blindfold_nn::compile::{self, ChainOptions, Compiled};
use blindfold_nn::{ArchSpec, Model};
use blindfold_tensor::requirements::key_requests;
use blindfold_tensor::{Circuit, Layout, Packing, PlainBackend, RotationKey};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Errors of the protocols, each saying whose fault it is ([`ProtocolError::fault`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The other party sent something this party refuses: a message of the wrong kind or at
    /// the wrong time, counts or keys that do not fit the plan, a plan that is not its
    /// architecture's, scores for other keys.
    #[error("refused from the other party: {0}")]
    Peer(String),
    /// Bytes that do not decode as a message (the other party's fault).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Scores that do not decrypt to logits: made for another key, or corrupted (the other
    /// party's fault, or a mismatched key file).
    #[error("the scores cannot be decrypted with this key or are corrupted: {0}")]
    Undecryptable(String),
    /// The caller used the API out of order or with arguments that do not fit (e.g. an
    /// image before any keys, an unknown holder index).
    #[error("misuse: {0}")]
    Misuse(String),
    /// A setting does not fit: parameters, calibration, an aggregation too deep for the
    /// levels left.
    #[error("configuration: {0}")]
    Config(String),
    /// A CKKS error (bad key or ciphertext bytes, parameter mismatch, …).
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
    /// A model without an encrypted form, or a circuit error.
    #[error(transparent)]
    Model(#[from] blindfold_nn::Error),
}

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The other party misbehaved (or its bytes were damaged on the way): refuse and report
    /// to it.
    Peer,
    /// The caller of this library misused it: a bug on this side.
    Caller,
    /// A setting (parameters, model, calibration) does not fit: fix the configuration.
    Configuration,
}

impl ProtocolError {
    /// Whose fault the error is. CKKS errors about bytes (malformed objects, parameter
    /// mismatches) are the peer's, other CKKS errors the caller's.
    pub fn fault(&self) -> Fault {
        use blindfold_ckks::Error as E;
        match self {
            Self::Peer(_) | Self::Malformed(_) | Self::Undecryptable(_) => Fault::Peer,
            Self::Ckks(E::Malformed { .. } | E::ParameterMismatch { .. }) => Fault::Peer,
            Self::Misuse(_) | Self::Ckks(_) => Fault::Caller,
            Self::Config(_) | Self::Model(_) => Fault::Configuration,
        }
    }
}

/// Largest magnitude a decrypted score may have (`10^6`): logits of trained networks are far
/// below it.
pub const MAX_SCORE: f64 = 1e6;

/// Largest difference between the copies of one score that the output layout repeats
/// across the slots ([`blindfold_tensor::Layout::replica_spread`]) in a correct decryption:
/// `0.5`. The copies differ by the CKKS error (about `10^-3` in blindfold's plans); a
/// ciphertext decrypted with another key, or corrupted, is uniform modulo `q_0` in every
/// slot, so its copies differ by up to `q_0 / Δ` (`2^6` and more).
pub const MAX_REPLICA_SPREAD: f64 = 0.5;

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
    /// Circuit privacy at this statistical security λ (bits), or `None`: the circuit ends
    /// with a mask that keeps one copy of each score, the client sends its public key, and
    /// the model holder re-randomizes and floods every response ([`CompiledModel::new`]).
    #[serde(default)]
    pub circuit_privacy: Option<u32>,
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
        Self::for_plan(arch, &compile::parameters(arch, opts)?, opts.circuit_privacy)
    }

    /// The plan of `arch`'s circuit on `params`, without the weights (as
    /// [`PlanInfo::for_architecture`]; the model holder's [`CompiledModel::with_parameters`]
    /// publishes the same).
    ///
    /// # Errors
    /// As [`CompiledModel::with_parameters`].
    pub fn for_parameters(arch: &ArchSpec, params: &Parameters) -> Result<Self> {
        Self::for_plan(arch, params, None)
    }

    fn for_plan(arch: &ArchSpec, params: &Parameters, circuit_privacy: Option<u32>) -> Result<Self> {
        let ctx = Context::new(params)?;
        let c = structure(arch, &ctx, circuit_privacy.is_some())?;
        Ok(Self {
            arch: arch.clone(),
            parameters: params.literal().clone(),
            input_scale: compile::input_scale(&ctx),
            depth: c.depth(),
            relinearization: c.relinearizes(),
            rotation_keys: c.rotation_keys(),
            circuit_privacy,
        })
    }
}

/// The circuit of `arch` on `ctx` without weights (what a client builds), masked to one copy
/// of each score for circuit privacy.
fn structure(arch: &ArchSpec, ctx: &Context, masked: bool) -> Result<Circuit> {
    let c = compile::circuit(arch, None, ctx.params().slots(), ctx.max_level())?;
    Ok(if masked { c.with_output_mask().map_err(blindfold_nn::Error::from)? } else { c })
}

/// Safety factor on the measured noise of [`CompiledModel::new`]'s calibration: the flooding
/// is sized for 4 times the largest error norm seen.
pub const CALIBRATION_MARGIN: f64 = 4.0;

/// Widest flooding circuit privacy accepts, as the standard deviation it adds to each
/// decrypted score: `2^-7` (about 0.008, below what changes a trained network's argmax in
/// practice, and 64 standard deviations below [`MAX_REPLICA_SPREAD`]).
pub const MAX_FLOODING_WIDTH: f64 = 1.0 / 128.0;

/// Sizes the flooding of circuit privacy at `lambda` bits for `compiled` (see
/// [`CompiledModel::new`]): runs the circuit under a throwaway key on three images and
/// measures the decrypted error against the plaintext twin.
fn calibrate(compiled: &Compiled, lambda: u32) -> Result<Flooding> {
    let (ctx, circuit) = (&compiled.ctx, &compiled.circuit);
    let circuit_err = |e: blindfold_tensor::CircuitError| ProtocolError::Model(e.into());
    let mut keygen = KeyGenerator::new(ctx)?;
    let rlk = keygen.relinearization_key();
    let gk = keygen.galois_keys(&circuit.key_requests(ctx).map_err(circuit_err)?)?;
    let (eval, encoder) = (Evaluator::new(ctx), Encoder::new(ctx));
    let mut encryptor = SymmetricEncryptor::new(keygen.secret_key())?;
    let decryptor = Decryptor::new(keygen.secret_key());
    let pixels = compiled.arch.input.len();
    let random = |t: u8| -> Vec<u8> {
        (0..pixels.div_ceil(32) as u64)
            .flat_map(|b| Sha256::new().chain_update([t]).chain_update(b.to_le_bytes()).finalize())
            .take(pixels)
            .collect()
    };
    let input_scale = circuit.input_scale().ok_or(circuit_err(blindfold_tensor::CircuitError::NotEncoded))?;
    let (mut norm, mut scale) = (0f64, 1f64);
    for image in [random(0), random(1), vec![255; pixels]] {
        let x: Vec<f64> = compiled.arch.normalization.apply(&image).into_iter().map(f64::from).collect();
        let packed = circuit.packing().pack(&x).map_err(circuit_err)?;
        let cts = packed
            .iter()
            .map(|v| Ok(encryptor.encrypt(&encoder.encode_real(v, ctx.max_level(), input_scale)?)?.expand(ctx)))
            .collect::<Result<Vec<_>>>()?;
        let out = circuit.evaluate(&eval, &cts, &rlk, &gk).map_err(circuit_err)?;
        let twin = circuit.evaluate_on(&PlainBackend, &packed).map_err(circuit_err)?;
        let slots = encoder.decode(&decryptor.decrypt(&out)?)?;
        let e2: f64 = slots.iter().zip(&twin).map(|(z, t)| (z.re - t).powi(2) + z.im.powi(2)).sum();
        norm = norm.max(e2.sqrt());
        scale = out.scale();
    }
    // Per score: σ·√(N/2)/Δ with σ = width·Δ·√(2/N) per coefficient.
    let width = 2f64.powi(lambda as i32 - 1) * CALIBRATION_MARGIN * norm;
    let sigma = width * scale * (2.0 / ctx.n() as f64).sqrt();
    Ok(Flooding { lambda, log_sigma: sigma.log2().max(0.0), width, error_norm: norm })
}

/// A model compiled for encrypted inference, shared (`Arc`) by every client session of a
/// model holder: the circuit with its plaintexts encoded, its context, and what it publishes.
#[derive(Debug)]
pub struct CompiledModel {
    compiled: Compiled,
    info: PlanInfo,
    /// Circuit privacy: `log2` of the standard deviation of the Gaussian flooding added to
    /// `c_0` of every response, and what it adds to each decrypted score.
    flooding: Option<Flooding>,
}

/// The flooding of a circuit-private plan ([`CompiledModel::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flooding {
    /// The statistical security λ (bits) it is sized for.
    pub lambda: u32,
    /// `log2 σ` of the Gaussian noise added to each coefficient of `c_0`.
    pub log_sigma: f64,
    /// Standard deviation it adds to each decrypted score (real part of a slot):
    /// `σ·√(N/2)/Δ`.
    pub width: f64,
    /// Largest `ℓ2` norm of the computation's error seen in calibration (over every slot,
    /// real and imaginary parts, in score units).
    pub error_norm: f64,
}

impl CompiledModel {
    /// Compiles `model` on the parameters its depth needs ([`ChainOptions`]).
    ///
    /// # Errors
    /// [`ProtocolError::Model`] for a model without an encrypted form or too deep for any
    /// 128-bit chain.
    ///
    /// With `opts.circuit_privacy = Some(λ)` the circuit ends with a mask keeping one copy of
    /// each score (one more level) and every response is re-randomized with the client's
    /// public key and flooded with Gaussian noise of standard deviation `σ` per coefficient
    /// ([`ModelHolder::handle`]). `σ` is sized from a calibration: the model holder runs the
    /// circuit under a throwaway key on three inputs (two of random pixels, one of white
    /// pixels, through the architecture's normalization), measures the `ℓ2` norm `‖e‖` of
    /// the decrypted error against the plaintext twin over every slot, and takes
    /// `σ = 2^(λ−1)·M·Δ·‖e‖·√(2/N)` with margin `M` = [`CALIBRATION_MARGIN`] — so the
    /// response's noise vector is within statistical distance `‖e_coef‖/(2σ) ≤ 2^-λ` of the
    /// flooding alone (Gaussian shift bound; `‖e_coef‖ = Δ·‖e‖·√(2/N)` by the canonical
    /// embedding's isometry). Each score then carries noise of standard deviation
    /// `2^(λ−1)·M·‖e‖`; a plan whose flooding would exceed [`MAX_FLOODING_WIDTH`] is refused.
    /// Without `opts.log_n` the rings 2^13, 2^14, 2^15 are tried in turn (a larger ring has
    /// larger scales and so a smaller error); without `opts.scale_bits`, each first at
    /// [`compile::FAST_SCALE_BITS`], then at its largest scale.
    ///
    /// # Errors
    /// [`ProtocolError::Model`] for a model without an encrypted form or too deep for any
    /// 128-bit chain; [`ProtocolError::Config`] for circuit privacy no ring allows.
    pub fn new(model: &Model, opts: &ChainOptions) -> Result<Arc<Self>> {
        let Some(lambda) = opts.circuit_privacy else {
            return Ok(Arc::new(Self::from_compiled(Compiled::new(model, opts)?, None)));
        };
        if !(1..=128).contains(&lambda) {
            return Err(ProtocolError::Config(format!("circuit privacy of {lambda} bits (1 to 128)")));
        }
        let rings = opts.log_n.map_or(vec![13, 14, 15], |l| vec![l]);
        let mut compile_error: Option<ProtocolError> = None;
        // The largest λ a ring allows, and that ring, over the rings tried.
        let mut best: Option<(f64, u32)> = None;
        // Unless the scale is given: the fastest scale first, then the most precise.
        let scales = match opts.scale_bits {
            Some(s) => vec![Some(s)],
            None => vec![Some(compile::FAST_SCALE_BITS), None],
        };
        let candidates = rings.iter().flat_map(|&log_n| scales.iter().map(move |&scale_bits| (log_n, scale_bits)));
        for (log_n, scale_bits) in candidates {
            let compiled = match Compiled::new(model, &ChainOptions { log_n: Some(log_n), scale_bits, ..*opts }) {
                Ok(c) => c,
                Err(e) => {
                    compile_error = compile_error.or(Some(e.into()));
                    continue;
                }
            };
            let flooding = calibrate(&compiled, lambda)?;
            if flooding.width <= MAX_FLOODING_WIDTH {
                return Ok(Arc::new(Self::from_compiled(compiled, Some(flooding))));
            }
            let bits = (1.0 + (MAX_FLOODING_WIDTH / (CALIBRATION_MARGIN * flooding.error_norm)).log2()).floor();
            if best.is_none_or(|(b, _)| bits > b) {
                best = Some((bits, log_n));
            }
        }
        let larger = if opts.log_n.is_some_and(|l| l < 15) { ", a larger ring (--log-n)" } else { "" };
        Err(match best {
            Some((bits, log_n)) => ProtocolError::Config(format!(
                "circuit privacy at λ = {lambda} would flood every score with noise beyond a standard deviation of \
                 {MAX_FLOODING_WIDTH}: the network's error allows λ up to {} (at N = 2^{log_n}); choose a lower \
                 λ{larger} or a shallower network",
                bits.max(0.0)
            )),
            None => compile_error.unwrap_or_else(|| ProtocolError::Config("no ring to try".into())),
        })
    }

    /// Compiles `model` on given parameters (the network takes the top levels; the rest are
    /// left, e.g. for an ensemble's aggregation).
    ///
    /// # Errors
    /// As [`CompiledModel::new`].
    pub fn with_parameters(model: &Model, params: &Parameters) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::from_compiled(Compiled::with_parameters(model, params)?, None)))
    }

    fn from_compiled(compiled: Compiled, flooding: Option<Flooding>) -> Self {
        let c = &compiled.circuit;
        let info = PlanInfo {
            arch: compiled.arch.clone(),
            parameters: compiled.ctx.params().literal().clone(),
            input_scale: c.input_scale().expect("compiled circuits are encoded"),
            depth: c.depth(),
            relinearization: c.relinearizes(),
            rotation_keys: c.rotation_keys(),
            circuit_privacy: flooding.map(|f| f.lambda),
        };
        Self { compiled, info, flooding }
    }

    /// The flooding of every response, for a plan with circuit privacy.
    pub fn flooding(&self) -> Option<&Flooding> {
        self.flooding.as_ref()
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

    /// Largest evaluation-keys message the plan allows, in bytes: a relinearization key and
    /// one Galois key per declared rotation, each at most the size of a top-level key.
    pub fn max_keys_len(&self) -> usize {
        let ctx = self.context();
        RelinearizationKey::max_size(ctx)
            + galois_keys_max_size(ctx, self.info.rotation_keys.len())
            + PublicKey::max_size(ctx)
            + 64
    }

    /// Largest image message the plan allows, in bytes: its number of input ciphertexts, each
    /// a seeded ciphertext at the top level.
    pub fn max_image_len(&self) -> usize {
        let cts = self.circuit().packing().ciphertexts();
        cts * (SeededCiphertext::max_size(self.context()) + 10) + 64
    }

    /// Largest message a model holder of this plan accepts ([`ModelHolder::handle_bytes`]):
    /// the larger of [`CompiledModel::max_keys_len`] and [`CompiledModel::max_image_len`].
    pub fn max_message_len(&self) -> usize {
        self.max_keys_len().max(self.max_image_len())
    }
}

/// The wire form ([`blindfold_ckks::serialize`]) of a public CKKS object of type `T`, as it
/// travels inside a [`Message`]: made only from a `T: WireObject`, so a message field typed
/// `Wire<T>` cannot carry a secret key (`SecretKey` is not a wire object), and read back only
/// through the checked deserializer. The bytes are decoded when a party reads them, never
/// trusted before.
///
/// ```compile_fail,E0277
/// # fn f(sk: &blindfold_ckks::SecretKey, ctx: &blindfold_ckks::Context) {
/// // A secret key has no wire form: no message can carry one.
/// let _ = blindfold_protocol::Wire::new(sk, ctx);
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Wire<T> {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: WireObject> Wire<T> {
    /// Serializes `obj`, made under `ctx`'s parameters.
    ///
    /// # Errors
    /// As [`blindfold_ckks::serialize::serialize`].
    pub fn new(obj: &T, ctx: &Context) -> Result<Self> {
        Ok(Self { bytes: serialize(obj, ctx)?.to_vec(), kind: std::marker::PhantomData })
    }

    /// Checks and decodes the object for `ctx`'s parameters, within `T`'s default size limit.
    ///
    /// # Errors
    /// As [`blindfold_ckks::serialize::deserialize`].
    pub fn decode(&self, ctx: &Arc<Context>) -> Result<T> {
        Ok(deserialize(&self.bytes, ctx)?)
    }

    /// [`Wire::decode`] within `limit` bytes.
    ///
    /// # Errors
    /// As [`blindfold_ckks::serialize::deserialize_with_limit`].
    pub fn decode_with_limit(&self, ctx: &Arc<Context>, limit: usize) -> Result<T> {
        Ok(deserialize_with_limit(&self.bytes, ctx, limit)?)
    }
}

impl<T> Wire<T> {
    /// The serialized bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<T> Clone for Wire<T> {
    fn clone(&self) -> Self {
        Self { bytes: self.bytes.clone(), kind: std::marker::PhantomData }
    }
}

impl<T> PartialEq for Wire<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> std::fmt::Debug for Wire<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wire<{}>({} bytes)", std::any::type_name::<T>().rsplit("::").next().unwrap_or("?"), self.bytes.len())
    }
}

/// A message between client and model holder (and, for scores, the ensemble coordinator).
/// Its fields are typed by the public objects they carry ([`Wire`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Client → model holder: relinearization and Galois keys.
    EvaluationKeys {
        /// The relinearization key.
        relinearization: Wire<RelinearizationKey>,
        /// The Galois keys.
        galois: Wire<GaloisKeys>,
        /// The public key, for a plan with circuit privacy (the model holder re-randomizes
        /// each response with an encryption of zero under it).
        public: Option<Wire<PublicKey>>,
    },
    /// Client → model holder: the packed image, seeded ciphertexts.
    EncryptedImage {
        /// The evaluation keys the image is to be evaluated with ([`KeyId`]).
        key_id: KeyId,
        /// One seeded ciphertext per input ciphertext of the layout.
        ciphertexts: Vec<Wire<SeededCiphertext>>,
    },
    /// Model holder → client: the encrypted logits.
    EncryptedScores {
        /// The evaluation keys the scores were computed with: the client refuses scores made
        /// for keys other than its own.
        key_id: KeyId,
        /// The scores.
        ciphertext: Wire<Ciphertext>,
    },
}

/// Default bound on the size of a message read by [`Message::from_bytes`]: 4 GiB. A party
/// that knows its plan bounds messages far more tightly ([`CompiledModel::max_message_len`]).
pub const MAX_MESSAGE_LEN: usize = 1 << 32;

impl Message {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    /// Decodes a message of at most [`MAX_MESSAGE_LEN`] bytes.
    ///
    /// # Errors
    /// As [`Message::from_bytes_limited`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_limited(bytes, MAX_MESSAGE_LEN)
    }

    /// Decodes a message of at most `limit` bytes. The size is checked before anything is
    /// decoded, so the decoder never allocates more than the input's size.
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for bytes that are not exactly one message (trailing
    /// bytes included) or more than `limit` bytes.
    pub fn from_bytes_limited(bytes: &[u8], limit: usize) -> Result<Self> {
        if bytes.len() > limit {
            return Err(ProtocolError::Malformed(format!(
                "{} bytes, more than the {limit} bytes a message may have here",
                bytes.len()
            )));
        }
        let (msg, rest) = postcard::take_from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Malformed(format!("{} trailing bytes after the message", rest.len())));
        }
        Ok(msg)
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Message::EvaluationKeys { .. } => "EvaluationKeys",
            Message::EncryptedImage { .. } => "EncryptedImage",
            Message::EncryptedScores { .. } => "EncryptedScores",
        }
    }
}

/// Names a client's evaluation keys: SHA-256 of the serialized relinearization key followed
/// by the serialized Galois keys (and public key, if any) of an [`Message::EvaluationKeys`].
/// Requests and responses carry it, so a model holder never evaluates an image with another
/// client's keys and a client refuses scores computed for other keys (which would decrypt to
/// noise).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The id of the keys of an [`Message::EvaluationKeys`] (`None` for another message).
    pub fn of(msg: &Message) -> Option<Self> {
        let Message::EvaluationKeys { relinearization, galois, public } = msg else { return None };
        let mut h = Sha256::new();
        h.update((relinearization.bytes().len() as u64).to_le_bytes());
        h.update(relinearization.bytes());
        h.update(galois.bytes());
        if let Some(pk) = public {
            h.update(pk.bytes());
        }
        Some(Self(h.finalize().into()))
    }

    /// Lower-case hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`KeyId::to_hex`]'s form.
    ///
    /// # Errors
    /// [`ProtocolError::Malformed`] for anything but 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || ProtocolError::Malformed(format!("key id {s:?} is not 64 hexadecimal digits"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

/// The data owner: holds the secret key, encrypts images, decrypts scores.
pub struct Client {
    ctx: Arc<Context>,
    keygen: KeyGenerator,
    encoder: Encoder,
    encryptor: SymmetricEncryptor,
    decryptor: Decryptor,
    /// The evaluation keys the model holder has (set when they are made, or by
    /// [`Client::set_key_id`] for keys made earlier).
    key_id: Option<KeyId>,
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
    /// [`ProtocolError::Peer`] for a plan whose published keys or depth are not those
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
    /// keys until asked ([`Client::evaluation_keys`]), or is told which keys the model holder
    /// has ([`Client::set_key_id`]).
    ///
    /// # Errors
    /// As [`Client::new`]; [`ProtocolError::Misuse`] if the key belongs to other
    /// parameters.
    pub fn with_secret_key(info: &PlanInfo, sk: &blindfold_ckks::SecretKey) -> Result<Self> {
        if sk.context().params() != &info.parameters()? {
            return Err(ProtocolError::Misuse("the secret key was made for other parameters than the plan's".into()));
        }
        let keygen = KeyGenerator::from_secret_key(sk)?;
        Self::with_keygen(info, sk.context().clone(), keygen)
    }

    fn with_keygen(info: &PlanInfo, ctx: Arc<Context>, keygen: KeyGenerator) -> Result<Self> {
        if !(info.input_scale.is_finite() && info.input_scale >= 2.0 && info.input_scale < 2f64.powi(62)) {
            return Err(ProtocolError::Peer(format!("input scale {} is not usable", info.input_scale)));
        }
        let circuit = structure(&info.arch, &ctx, info.circuit_privacy.is_some())?;
        if circuit.rotation_keys() != info.rotation_keys
            || circuit.depth() != info.depth
            || circuit.relinearizes() != info.relinearization
        {
            return Err(ProtocolError::Peer(
                "the plan's published keys or depth are not those of its architecture's circuit".into(),
            ));
        }
        Ok(Self {
            encoder: Encoder::new(&ctx),
            encryptor: SymmetricEncryptor::new(keygen.secret_key())?,
            decryptor: Decryptor::new(keygen.secret_key()),
            key_id: None,
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
        let msg = self.evaluation_keys_for(&keys)?;
        self.key_id = KeyId::of(&msg);
        Ok(msg)
    }

    /// The id of the evaluation keys this client's requests name, if any are set.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// Names the evaluation keys the model holder has for this client (made earlier from the
    /// same secret key, e.g. by `blindfold keygen`).
    pub fn set_key_id(&mut self, id: KeyId) {
        self.key_id = Some(id);
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
        let public = match self.info.circuit_privacy {
            Some(_) => Some(Wire::new(&self.keygen.public_key(), &self.ctx)?),
            None => None,
        };
        Ok(Message::EvaluationKeys {
            relinearization: Wire::new(&rlk, &self.ctx)?,
            galois: Wire::new(&gk, &self.ctx)?,
            public,
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
    /// [`ProtocolError::Model`] for an image of the wrong size; CKKS encoding errors;
    /// [`ProtocolError::Misuse`] before the client has evaluation keys
    /// ([`Client::evaluation_keys`] or [`Client::set_key_id`]).
    pub fn encrypt(&mut self, image: &[f64]) -> Result<Message> {
        let key_id = self.key_id.ok_or_else(|| {
            ProtocolError::Misuse("no evaluation keys yet: make them or name them (set_key_id) first".into())
        })?;
        let packed = self.packing.pack(image).map_err(blindfold_nn::Error::from)?;
        let (level, scale) = (self.ctx.max_level(), self.info.input_scale);
        let pts = packed
            .par_iter()
            .map(|v| self.encoder.encode_real(v, level, scale))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ciphertexts =
            self.encryptor.encrypt_batch(&pts)?.par_iter().map(|ct| Wire::new(ct, &self.ctx)).collect::<Result<_>>()?;
        Ok(Message::EncryptedImage { key_id, ciphertexts })
    }

    /// Decrypts the scores (logits) of a model holder's [`Message::EncryptedScores`].
    ///
    /// The result stays with the client: CKKS decryptions carry noise that depends on the
    /// secret key (see SECURITY.md), so do not send it back to the model holder.
    ///
    /// # Errors
    /// [`ProtocolError::Peer`] for another message, or scores computed for other
    /// evaluation keys than this client's; CKKS errors for bad ciphertext bytes;
    /// [`ProtocolError::Undecryptable`] for a ciphertext at another level than the plan's
    /// output, copies of a score that disagree ([`MAX_REPLICA_SPREAD`]), or scores that are
    /// not finite or beyond [`MAX_SCORE`] (what another key or a corrupted ciphertext
    /// decrypts to).
    pub fn decrypt_scores(&self, msg: &Message) -> Result<Vec<f64>> {
        let ct = self.scores_ciphertext(msg)?;
        let level = self.ctx.max_level().checked_sub(self.info.depth);
        if Some(ct.level()) != level {
            return Err(ProtocolError::Undecryptable(format!(
                "scores at level {}, the plan's output is at level {}",
                ct.level(),
                level.map_or("(none)".into(), |l| l.to_string())
            )));
        }
        let slots = [self.encoder.decode_real(&self.decryptor.decrypt(&ct)?)?];
        let spread = self.output.replica_spread(&slots);
        if spread.is_nan() || spread > MAX_REPLICA_SPREAD {
            return Err(ProtocolError::Undecryptable(format!(
                "copies of one score differ by {spread:e} (at most {MAX_REPLICA_SPREAD} for a correct decryption)"
            )));
        }
        if self.info.circuit_privacy.is_some() {
            // A masked result: every other slot holds zero plus the flooding.
            let stray = self.output.stray(&slots);
            if stray.is_nan() || stray > MAX_REPLICA_SPREAD {
                return Err(ProtocolError::Undecryptable(format!(
                    "a slot outside the scores holds {stray:e} (at most {MAX_REPLICA_SPREAD} for a correct decryption)"
                )));
            }
        }
        checked_scores(self.output.unpack(&slots))
    }

    /// Decrypts the combined scores of an ensemble coordinator ([`crate::Aggregated`]): as
    /// [`Client::decrypt_scores`], at any level below the holders' output and without the
    /// check of copies (the polynomial aggregations keep one copy of each score).
    ///
    /// # Errors
    /// As [`Client::decrypt_scores`].
    pub fn decrypt_ensemble_scores(&self, msg: &Message) -> Result<Vec<f64>> {
        let ct = self.scores_ciphertext(msg)?;
        let slots = [self.encoder.decode_real(&self.decryptor.decrypt(&ct)?)?];
        checked_scores(self.output.unpack(&slots))
    }

    /// The ciphertext of a [`Message::EncryptedScores`] made for this client's keys.
    fn scores_ciphertext(&self, msg: &Message) -> Result<Ciphertext> {
        let Message::EncryptedScores { key_id, ciphertext } = msg else {
            return Err(ProtocolError::Peer(format!("client expected EncryptedScores, got {}", msg.kind())));
        };
        if Some(*key_id) != self.key_id {
            return Err(ProtocolError::Peer(format!(
                "scores computed with evaluation keys {key_id}, this client's are {}: a response for another client",
                self.key_id.map_or("not set".into(), |k| k.to_string())
            )));
        }
        ciphertext.decode(&self.ctx)
    }
}

/// `scores` if every one is finite and at most [`MAX_SCORE`] in magnitude.
fn checked_scores(scores: Vec<f64>) -> Result<Vec<f64>> {
    if let Some(s) = scores.iter().find(|s| !(s.is_finite() && s.abs() <= MAX_SCORE)) {
        return Err(ProtocolError::Undecryptable(format!(
            "a score of {s:e}, beyond any logit (|score| <= {MAX_SCORE:e})"
        )));
    }
    Ok(scores)
}

/// The model holder: evaluates its model on the client's ciphertexts with the client's
/// public evaluation keys. Holds no secret key and sees no plaintext input or score.
pub struct ModelHolder {
    model: Arc<CompiledModel>,
    eval: Evaluator,
    keys: Option<SessionKeys>,
}

/// A client's evaluation keys as a model holder's session keeps them.
struct SessionKeys {
    id: KeyId,
    relinearization: RelinearizationKey,
    galois: GaloisKeys,
    /// Re-randomizes responses under the client's public key (circuit privacy).
    encryptor: Option<Encryptor>,
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

    /// The id of the evaluation keys this session holds, if any.
    pub fn key_id(&self) -> Option<KeyId> {
        self.keys.as_ref().map(|k| k.id)
    }

    /// [`ModelHolder::handle`] of a message's bytes, refusing more than
    /// [`CompiledModel::max_message_len`] bytes before decoding anything: the memory a message
    /// can take is bounded by the plan (its bytes, then at most twice that once its seeded
    /// polynomials are expanded, plus the evaluation's working set).
    ///
    /// # Errors
    /// As [`Message::from_bytes_limited`] and [`ModelHolder::handle`].
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let msg = Message::from_bytes_limited(bytes, self.model.max_message_len())?;
        Ok(self.handle(&msg)?.map(|m| m.to_bytes()))
    }

    /// Handles one message: stores evaluation keys (no reply), or evaluates an encrypted
    /// image (replies with the encrypted scores).
    ///
    /// # Errors
    /// [`ProtocolError::Peer`] for keys that lack a rotation the circuit needs, an image
    /// before the keys, an image for other keys than this session's, an image of the wrong
    /// number of ciphertexts or a message meant for the client; CKKS errors for bad keys or
    /// ciphertexts (parameter mismatch, malformed bytes, sizes beyond the plan's).
    pub fn handle(&mut self, msg: &Message) -> Result<Option<Message>> {
        let ctx = self.model.context().clone();
        let circuit = self.model.circuit();
        match msg {
            Message::EvaluationKeys { relinearization, galois, public } => {
                let encryptor = match (self.model.flooding, public) {
                    (Some(_), Some(pk)) => Some(Encryptor::with_public_key(&ctx, &pk.decode(&ctx)?)?),
                    (Some(_), None) => {
                        return Err(ProtocolError::Peer(
                            "the plan has circuit privacy: evaluation keys must include the client's public key".into(),
                        ))
                    }
                    (None, _) => None,
                };
                let rlk = relinearization.decode(&ctx)?;
                let limit = galois_keys_max_size(&ctx, self.info().rotation_keys.len());
                let gk = galois.decode_with_limit(&ctx, limit)?;
                let declared = circuit.key_requests(&ctx).map_err(|e| ProtocolError::Config(e.to_string()))?;
                let missing = gk.missing(&declared);
                if !missing.is_empty() {
                    let steps: Vec<String> = circuit
                        .rotation_keys()
                        .iter()
                        .filter(|k| missing.iter().any(|m| m.element == ctx.galois_element_for_rotation(k.step)))
                        .map(|k| format!("{} at level {}", k.step, k.level))
                        .collect();
                    return Err(ProtocolError::Peer(format!(
                        "Galois keys lack rotation steps {} (client's fault: keys made for another plan)",
                        steps.join(", ")
                    )));
                }
                let id = KeyId::of(msg).expect("evaluation keys");
                self.keys = Some(SessionKeys { id, relinearization: rlk, galois: gk, encryptor });
                Ok(None)
            }
            Message::EncryptedImage { key_id, ciphertexts } => {
                let keys = self
                    .keys
                    .as_mut()
                    .ok_or_else(|| ProtocolError::Peer("EncryptedImage before EvaluationKeys".into()))?;
                let id = &keys.id;
                if key_id != id {
                    return Err(ProtocolError::Peer(format!(
                        "EncryptedImage for evaluation keys {key_id}, this session holds {id} (another client's, \
                         or corrupted): upload the keys first"
                    )));
                }
                let expected = circuit.packing().ciphertexts();
                if ciphertexts.len() != expected {
                    return Err(ProtocolError::Peer(format!(
                        "EncryptedImage with {} ciphertexts, the plan takes {expected}",
                        ciphertexts.len()
                    )));
                }
                // Every ciphertext is checked (bytes, level) before any is expanded.
                let seeded: Vec<SeededCiphertext> =
                    ciphertexts.iter().map(|c| c.decode(&ctx)).collect::<Result<_>>()?;
                if let Some(ct) = seeded.iter().find(|c| c.level() != ctx.max_level()) {
                    return Err(ProtocolError::Peer(format!(
                        "input ciphertext at level {}, the plan takes level {}",
                        ct.level(),
                        ctx.max_level()
                    )));
                }
                let cts: Vec<Ciphertext> = seeded.iter().map(|c| c.expand(&ctx)).collect();
                let mut out = circuit
                    .evaluate(&self.eval, &cts, &keys.relinearization, &keys.galois)
                    .map_err(blindfold_nn::Error::from)?;
                if let (Some(flooding), Some(encryptor)) = (&self.model.flooding, keys.encryptor.as_mut()) {
                    encryptor.rerandomize(&mut out, flooding.log_sigma)?;
                }
                Ok(Some(Message::EncryptedScores { key_id: keys.id, ciphertext: Wire::new(&out, &ctx)? }))
            }
            other => Err(ProtocolError::Peer(format!("model holder does not accept {}", other.kind()))),
        }
    }
}
