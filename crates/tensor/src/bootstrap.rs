//! Bootstrapping as a circuit stage: the ciphertext goes back up to the levels a
//! bootstrappable preset leaves, so a circuit can be deeper than any chain.
//!
//! The stage declares what the compiler needs to place it — its input level (any: it drops to
//! level 0 first), its output level ([`BootstrapPreset::levels_left`]), its Galois keys
//! ([`BootstrapStage::key_requests`], from the DFTs' requirements without encoding anything)
//! and whether it needs the sparse-secret encapsulation keys — and evaluates as
//! [`blindfold_ckks::Evaluator::bootstrap`] on CKKS. Its plaintext twin models the precision
//! loss: it refuses slots outside `[-1, 1]` (where the stated precision does not hold and, far
//! enough out, the encrypted result is wrong) and rounds each slot to the preset's
//! [`BootstrapPreset::precision_bits`] — an error of the same order as the encrypted
//! bootstrap's (at most half its stated worst case), not the same error.

use crate::backend::Backend;
use crate::error::{CircuitError, Result};
use crate::requirements::StageCost;
use blindfold_ckks::{BootstrapPreset, Bootstrapper, Context, GaloisKeyRequest};
use std::sync::Arc;

/// Largest slot magnitude a bootstrap's stated precision holds for.
pub const BOOTSTRAP_INPUT_BOUND: f64 = 1.0;

/// A bootstrap with a bootstrappable preset (see the module documentation).
#[derive(Clone)]
pub struct BootstrapStage {
    preset: BootstrapPreset,
    level: usize,
    plan: Option<Arc<Bootstrapper>>,
}

impl std::fmt::Debug for BootstrapStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapStage")
            .field("preset", &self.preset.name)
            .field("level", &self.level)
            .field("encoded", &self.plan.is_some())
            .finish()
    }
}

impl BootstrapStage {
    /// A bootstrap of ciphertexts at `level` with `preset` (whose parameters the circuit
    /// must run under).
    pub fn new(preset: BootstrapPreset, level: usize) -> Self {
        Self { preset, level, plan: None }
    }

    /// Input level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Level of the result: the levels the preset leaves for computation.
    pub fn output_level(&self) -> usize {
        self.preset.levels_left()
    }

    /// The preset.
    pub fn preset(&self) -> &BootstrapPreset {
        &self.preset
    }

    /// Nonzero coefficients of the ephemeral sparse secret, if the preset encapsulates: the
    /// client then makes [`blindfold_ckks::KeyGenerator::encapsulation_keys`] with at most
    /// this weight.
    pub fn sparse_secret(&self) -> Option<usize> {
        self.preset.sparse_secret
    }

    /// The Galois keys the bootstrap uses, each at its level (the plan's, once encoded).
    ///
    /// # Errors
    /// [`CircuitError::Ckks`] if `ctx`'s chain is too short for the preset's configuration.
    pub fn key_requests(&self, ctx: &Context) -> Result<Vec<GaloisKeyRequest>> {
        match &self.plan {
            Some(plan) => Ok(plan.key_requests()),
            None => Ok(self.preset.config().key_requests(ctx)?),
        }
    }

    /// What the stage costs: the levels it consumes from the top of the chain (it returns to
    /// [`BootstrapStage::output_level`]).
    pub fn cost(&self) -> StageCost {
        let c = self.preset.config();
        StageCost {
            name: format!("bootstrap ({})", self.preset.name),
            levels: c.depth(),
            rotations: 0,
            hoisted_rotations: 0,
            plain_products: 0,
            products: 0,
        }
    }

    /// Plans the bootstrap for `ctx` (encodes the DFT matrices; about 3 s and 0.2 GB at
    /// N = 2^16).
    ///
    /// # Errors
    /// [`CircuitError::Input`] if `ctx` is not the preset's parameters; CKKS errors.
    pub fn encode(&mut self, ctx: &Arc<Context>) -> Result<()> {
        self.encode_sharing(ctx, &mut Vec::new())
    }

    /// [`BootstrapStage::encode`], reusing a plan of the same preset from `plans` (and adding
    /// its own): a circuit's bootstraps share one.
    pub(crate) fn encode_sharing(&mut self, ctx: &Arc<Context>, plans: &mut Vec<Arc<Bootstrapper>>) -> Result<()> {
        let params = self.preset.parameters()?;
        if ctx.params().fingerprint() != params.fingerprint() {
            return Err(CircuitError::Input {
                expected: format!("the parameters of {}", self.preset.name),
                actual: format!("N = {}, top level {}", ctx.n(), ctx.max_level()),
            });
        }
        let config = self.preset.config();
        let plan = match plans.iter().find(|p| *p.config() == config) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(Bootstrapper::new(ctx, config)?);
                plans.push(p.clone());
                p
            }
        };
        self.plan = Some(plan);
        Ok(())
    }

    /// The plan, once encoded.
    ///
    /// # Errors
    /// [`CircuitError::NotEncoded`] before [`BootstrapStage::encode`].
    pub fn plan(&self) -> Result<&Bootstrapper> {
        self.plan.as_deref().ok_or(CircuitError::NotEncoded)
    }

    /// The plaintext twin: each slot rounded to [`BootstrapPreset::precision_bits`].
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a slot outside `[-1, 1]`
    /// ([`BOOTSTRAP_INPUT_BOUND`]), naming it.
    pub fn apply_twin(&self, v: &[f64]) -> Result<Vec<f64>> {
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| x.is_nan() || x.abs() > BOOTSTRAP_INPUT_BOUND) {
            return Err(CircuitError::Input {
                expected: format!(
                    "bootstrap inputs within [-{BOOTSTRAP_INPUT_BOUND}, {BOOTSTRAP_INPUT_BOUND}] (the range {}'s precision holds for; scale the values down before the bootstrap)",
                    self.preset.name
                ),
                actual: format!("{x} in slot {i}"),
            });
        }
        let unit = 2f64.powi(self.preset.precision_bits as i32);
        Ok(v.iter().map(|x| (x * unit).round() / unit).collect())
    }

    /// Evaluates the bootstrap.
    ///
    /// # Errors
    /// Backend errors.
    pub fn evaluate<B: Backend>(&self, be: &B, x: &B::Value) -> Result<B::Value> {
        be.bootstrap(x, self)
    }
}
