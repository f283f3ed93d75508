//! Circuits: the one description of an encrypted computation.
//!
//! A [`Circuit`] is the client's input packing followed by a sequence of stages. Everything
//! about the computation derives from it: the depth, the rotation keys with their levels
//! ([`Circuit::rotation_keys`]), the cost report, the CKKS evaluation and the plaintext twin —
//! so an evaluation cannot ask for a key the circuit did not declare (the CKKS backend refuses
//! any other, [`crate::CircuitError::UndeclaredKey`]).

use crate::activation::PolynomialActivation;
use crate::backend::{Backend, CkksBackend, PlainBackend};
use crate::bootstrap::BootstrapStage;
use crate::error::{CircuitError, Result};
use crate::layout::{Layout, Packing};
use crate::linear::{LinearBuilder, LinearTransform};
use crate::pooling::RotationSum;
use crate::requirements::{key_requests, merge_keys, RotationKey, StageCost};
use blindfold_ckks::{
    BootstrapKeys, Ciphertext, Context, Encoder, Evaluator, GaloisKeyRequest, GaloisKeys, RelinearizationKey,
};

/// One stage of a circuit.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Stage {
    /// A linear map (convolution, dense layer): one level.
    Linear(LinearTransform),
    /// Sums of rotations (pooling): no level.
    RotationSum(RotationSum),
    /// A polynomial activation: `ceil(log2 degree)` levels.
    Polynomial(PolynomialActivation),
    /// A bootstrap: from any level back up to the levels its preset leaves.
    Bootstrap(BootstrapStage),
}

impl Stage {
    /// Level of the stage's input.
    pub fn level(&self) -> usize {
        match self {
            Stage::Linear(s) => s.level(),
            Stage::RotationSum(s) => s.level(),
            Stage::Polynomial(s) => s.level(),
            Stage::Bootstrap(s) => s.level(),
        }
    }

    /// Levels of computation the stage consumes (a bootstrap none: it raises the level).
    pub fn depth(&self) -> usize {
        match self {
            Stage::Linear(_) => 1,
            Stage::RotationSum(_) | Stage::Bootstrap(_) => 0,
            Stage::Polynomial(s) => s.depth(),
        }
    }

    /// Level of the stage's result.
    pub fn output_level(&self) -> usize {
        match self {
            Stage::Bootstrap(s) => s.output_level(),
            s => s.level().saturating_sub(s.depth()),
        }
    }

    /// The rotations the stage makes, each at the level it is made at.
    pub fn rotation_keys(&self) -> Vec<RotationKey> {
        match self {
            Stage::Linear(s) => s.rotation_keys(),
            Stage::RotationSum(s) => s.rotation_keys(),
            // A bootstrap's Galois keys include the conjugation: see `Circuit::key_requests`.
            Stage::Polynomial(_) | Stage::Bootstrap(_) => Vec::new(),
        }
    }

    /// Whether the stage multiplies ciphertexts (and needs the relinearization key).
    pub fn relinearizes(&self) -> bool {
        match self {
            Stage::Polynomial(p) => p.depth() > 0,
            Stage::Bootstrap(_) => true,
            Stage::Linear(_) | Stage::RotationSum(_) => false,
        }
    }

    /// What the stage costs.
    pub fn cost(&self) -> StageCost {
        match self {
            Stage::Linear(s) => s.cost(),
            Stage::RotationSum(s) => s.cost(),
            Stage::Polynomial(s) => s.cost(),
            Stage::Bootstrap(s) => s.cost(),
        }
    }

    fn name(&self) -> String {
        match self {
            Stage::Linear(s) => s.name().to_string(),
            Stage::RotationSum(s) => s.name().to_string(),
            Stage::Polynomial(s) => s.cost().name,
            Stage::Bootstrap(s) => s.cost().name,
        }
    }

    fn evaluate<B: Backend>(&self, be: &B, inputs: &[B::Value]) -> Result<B::Value> {
        let one = || {
            inputs.first().filter(|_| inputs.len() == 1).ok_or_else(|| CircuitError::Input {
                expected: "one ciphertext".into(),
                actual: inputs.len().to_string(),
            })
        };
        match self {
            Stage::Linear(s) => s.evaluate(be, inputs),
            Stage::RotationSum(s) => s.evaluate(be, one()?),
            Stage::Polynomial(s) => s.evaluate(be, one()?),
            Stage::Bootstrap(s) => s.evaluate(be, one()?),
        }
    }
}

/// A compiled encrypted computation: the client's packing, the stages, where the result's
/// values lie.
#[derive(Clone, Debug)]
pub struct Circuit {
    packing: Packing,
    slots: usize,
    top_level: usize,
    stages: Vec<Stage>,
    output: Layout,
    input_scale: Option<f64>,
    masked: bool,
}

impl Circuit {
    /// A circuit of `stages` on inputs packed by `packing` at `top_level`, whose result has
    /// layout `output`.
    ///
    /// # Errors
    /// [`CircuitError::TooDeep`] if the stages need more levels than `top_level` (or, with
    /// bootstraps, than the level a stage starts at);
    /// [`CircuitError::Layout`] if a stage's level does not follow from the one before.
    pub fn new(packing: Packing, top_level: usize, stages: Vec<Stage>, output: Layout) -> Result<Self> {
        let depth: usize = stages.iter().map(Stage::depth).sum();
        if depth > top_level && !stages.iter().any(|s| matches!(s, Stage::Bootstrap(_))) {
            return Err(CircuitError::TooDeep { needed: depth, available: top_level, hint: None });
        }
        let mut level = top_level;
        for s in &stages {
            if s.level() != level {
                return Err(CircuitError::Layout(format!(
                    "stage {} at level {}, expected {level}",
                    s.name(),
                    s.level()
                )));
            }
            if s.depth() > level {
                let hint = Some(format!("stage {} starts at level {level}: bootstrap before it", s.name()));
                return Err(CircuitError::TooDeep { needed: s.depth(), available: level, hint });
            }
            level = s.output_level();
        }
        let slots = output.slots;
        Ok(Self { packing, slots, top_level, stages, output, input_scale: None, masked: false })
    }

    /// The circuit followed by one more linear stage that multiplies its result by a 0/1
    /// mask: one copy of each result value stays (at the output layout's slot of each
    /// feature), every other slot becomes zero (replicas, partial sums). Costs one level. A
    /// model holder returns only what the client is to learn this way (circuit privacy,
    /// with re-randomization and flooding; SECURITY.md).
    ///
    /// # Errors
    /// [`CircuitError::TooDeep`] if the result is at level 0;
    /// [`CircuitError::Layout`] for a circuit of several output ciphertexts or one already
    /// encoded.
    pub fn with_output_mask(mut self) -> Result<Self> {
        if self.input_scale.is_some() || self.output.cts != 1 {
            return Err(CircuitError::Layout(
                "an output mask needs an unencoded circuit with one output ciphertext".into(),
            ));
        }
        let level = self.output_level();
        if level == 0 {
            return Err(CircuitError::TooDeep {
                needed: self.depth() + 1,
                available: self.top_level,
                hint: Some("the output mask takes one more level".into()),
            });
        }
        let mut b = LinearBuilder::new(&self.output);
        for f in 0..self.output.len() {
            b.add(b.slot_of(f), f, 0, 1.0);
        }
        self.stages.push(Stage::Linear(b.finish("mask to the result slots".into(), level, Vec::new(), 1.0)));
        self.output = Layout { period: self.output.slots, grid: None, ..self.output };
        self.masked = true;
        Ok(self)
    }

    /// Whether the result holds one copy of each value and zeros elsewhere
    /// ([`Circuit::with_output_mask`]).
    pub fn masks_output(&self) -> bool {
        self.masked
    }

    /// The client's input packing.
    pub fn packing(&self) -> &Packing {
        &self.packing
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Level of the input ciphertexts.
    pub fn top_level(&self) -> usize {
        self.top_level
    }

    /// Multiplicative depth: the levels of computation consumed (bootstraps excluded); without
    /// bootstraps the result is at `top_level − depth`.
    pub fn depth(&self) -> usize {
        self.stages.iter().map(Stage::depth).sum()
    }

    /// Level of the result.
    pub fn output_level(&self) -> usize {
        self.stages.last().map_or(self.top_level, Stage::output_level)
    }

    /// Nonzero coefficients of the sparse secret the circuit's bootstraps encapsulate in (the
    /// smallest, if they differ): the client makes
    /// [`blindfold_ckks::KeyGenerator::encapsulation_keys`] with this weight. `None` if no
    /// bootstrap needs them.
    pub fn sparse_secret(&self) -> Option<usize> {
        self.bootstraps().filter_map(BootstrapStage::sparse_secret).min()
    }

    fn bootstraps(&self) -> impl Iterator<Item = &BootstrapStage> {
        self.stages.iter().filter_map(|s| match s {
            Stage::Bootstrap(b) => Some(b),
            _ => None,
        })
    }

    /// Where the result's values lie in the output ciphertext's slots.
    pub fn output(&self) -> &Layout {
        &self.output
    }

    /// Number of result values (the logits of a network).
    pub fn outputs(&self) -> usize {
        self.output.len()
    }

    /// Every rotation the circuit makes, one per Galois element, each at the highest level it
    /// is made at: the Galois keys to generate (each only as large as its level needs), and
    /// only these.
    pub fn rotation_keys(&self) -> Vec<RotationKey> {
        merge_keys(self.stages.iter().flat_map(Stage::rotation_keys), self.slots)
    }

    /// The Galois keys to generate for `ctx`, one per element at the highest level it is used
    /// at: [`Circuit::rotation_keys`] and every bootstrap's ([`BootstrapStage::key_requests`]).
    ///
    /// # Errors
    /// [`CircuitError::Ckks`] if a bootstrap's preset does not fit `ctx`'s chain.
    pub fn key_requests(&self, ctx: &Context) -> Result<Vec<GaloisKeyRequest>> {
        let mut requests = key_requests(&self.rotation_keys(), ctx);
        for b in self.bootstraps() {
            for r in b.key_requests(ctx)? {
                match requests.iter_mut().find(|k| k.element == r.element) {
                    Some(k) => k.level = k.level.max(r.level),
                    None => requests.push(r),
                }
            }
        }
        Ok(requests)
    }

    /// Whether the circuit needs the relinearization key.
    pub fn relinearizes(&self) -> bool {
        self.stages.iter().any(Stage::relinearizes)
    }

    /// What each stage costs.
    pub fn costs(&self) -> Vec<StageCost> {
        self.stages.iter().map(Stage::cost).collect()
    }

    /// The scale the inputs are encrypted at, once encoded.
    pub fn input_scale(&self) -> Option<f64> {
        self.input_scale
    }

    /// Encodes every plaintext of the circuit for `ctx`, with inputs encrypted at
    /// `input_scale` at the top level.
    ///
    /// # Errors
    /// [`CircuitError::TooDeep`] if `ctx` has fewer levels than the circuit was built for;
    /// CKKS encoding errors.
    pub fn encode(&mut self, ctx: &std::sync::Arc<Context>, input_scale: f64) -> Result<()> {
        if ctx.max_level() != self.top_level || ctx.params().slots() != self.slots {
            return Err(CircuitError::Input {
                expected: format!("parameters with top level {} and {} slots", self.top_level, self.slots),
                actual: format!("top level {} and {} slots", ctx.max_level(), ctx.params().slots()),
            });
        }
        let encoder = Encoder::new(ctx);
        let q = ctx.params().q();
        let mut scale = input_scale;
        let mut plans = Vec::new();
        for s in &mut self.stages {
            let level = s.level();
            scale = match s {
                Stage::Linear(l) => l.encode(&encoder, q, scale)?,
                Stage::RotationSum(_) => scale,
                Stage::Polynomial(p) => polynomial_scale(p, scale, q, level),
                Stage::Bootstrap(b) => {
                    b.encode_sharing(ctx, &mut plans)?;
                    scale
                }
            };
        }
        self.input_scale = Some(input_scale);
        Ok(())
    }

    /// Evaluates the circuit on any backend, starting from the packed inputs.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of inputs; backend errors, with
    /// [`CircuitError::UndeclaredKey`] and [`CircuitError::UndeclaredElement`] naming the
    /// stage.
    pub fn evaluate_on<B: Backend>(&self, be: &B, inputs: &[B::Value]) -> Result<B::Value> {
        if inputs.len() != self.packing.ciphertexts() {
            return Err(CircuitError::Input {
                expected: format!("{} input ciphertexts", self.packing.ciphertexts()),
                actual: inputs.len().to_string(),
            });
        }
        let mut value: Option<B::Value> = None;
        for s in &self.stages {
            let x = match &value {
                Some(v) => std::slice::from_ref(v),
                None => inputs,
            };
            let out = s.evaluate(be, x).map_err(|e| match e {
                CircuitError::UndeclaredKey { step, level, .. } => {
                    CircuitError::UndeclaredKey { stage: s.name(), step, level }
                }
                CircuitError::UndeclaredElement { element, level, .. } => {
                    CircuitError::UndeclaredElement { stage: s.name(), element, level }
                }
                e => e,
            })?;
            value = Some(out);
        }
        value.ok_or_else(|| CircuitError::Layout("a circuit without stages".into()))
    }

    /// Evaluates the circuit on the client's ciphertexts (at the top level and the input
    /// scale) with public keys only; returns the result ciphertext, whose slots
    /// [`Circuit::output`] holds the values.
    ///
    /// # Errors
    /// [`CircuitError::NotEncoded`] for a circuit that was not encoded; as
    /// [`Circuit::evaluate_on`].
    pub fn evaluate(
        &self,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        rlk: &RelinearizationKey,
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        self.evaluate_with(eval, inputs, &BootstrapKeys { relinearization: rlk, galois: gk, encapsulation: None })
    }

    /// [`Circuit::evaluate`] with every kind of evaluation key, the sparse-secret
    /// encapsulation keys of [`Circuit::sparse_secret`] included.
    ///
    /// # Errors
    /// As [`Circuit::evaluate`]; [`CircuitError::MissingKeys`] for a bootstrap that needs the
    /// encapsulation keys without them.
    pub fn evaluate_with(
        &self,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        keys: &BootstrapKeys<'_>,
    ) -> Result<Ciphertext> {
        if self.input_scale.is_none() {
            return Err(CircuitError::NotEncoded);
        }
        let be = CkksBackend::new(eval, keys.relinearization, keys.galois, &self.key_requests(eval.context())?)
            .with_encapsulation(keys.encapsulation);
        self.evaluate_on(&be, inputs)
    }

    /// The plaintext twin: the same computation on slot vectors, returning the result values
    /// (read from the output layout).
    ///
    /// # Errors
    /// As [`Circuit::evaluate_on`].
    pub fn evaluate_plain(&self, inputs: &[Vec<f64>]) -> Result<Vec<f64>> {
        let out = self.evaluate_on(&PlainBackend, inputs)?;
        Ok(self.output.unpack(&[out]))
    }

    /// The result values in decoded output slots.
    pub fn read_output(&self, slots: &[f64]) -> Vec<f64> {
        self.output.unpack(&[slots.to_vec()])
    }
}

/// Scale after a polynomial stage whose input has `scale` at `level` (the scale of its
/// top-degree product; constants land on it).
fn polynomial_scale(p: &PolynomialActivation, scale: f64, q: &[u64], level: usize) -> f64 {
    let after = |s: f64, l: usize| s * s / q[l] as f64;
    match p.degree() {
        1 => scale,
        2 => after(scale, level),
        3 => scale * after(scale, level) / q[level - 1] as f64,
        _ => {
            let x2 = after(scale, level);
            x2 * x2 / q[level - 1] as f64
        }
    }
}
