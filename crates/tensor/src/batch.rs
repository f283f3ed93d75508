//! Batch packing: slot `s` of every ciphertext belongs to image `s`, one ciphertext per
//! feature (CryptoNets, Gilad-Bachrach et al., ICML 2016). A batch of `N/2` images is
//! classified by one evaluation with no rotation at all: a linear layer is a matrix of
//! constants times the vector of feature ciphertexts, an activation acts on each ciphertext.
//!
//! The fast path (nGraph-HE2, Boemer et al., WAHC 2019, §4): a weight multiplies every slot
//! alike, so it is the integer `round(w·q_l)` reduced per prime — no encoding, no NTT — and a
//! whole layer is one modular matrix product per residue with one reduction per output
//! ([`blindfold_ckks::Evaluator::linear_combinations`]); one rescale per output neuron (lazy
//! rescaling); a square feeds the next linear layer unrelinearized and unrescaled, formed
//! inside its sums, and each of that layer's outputs is relinearized once (lazy
//! relinearization). Levels and constants are chosen per layer: such a square spends no level
//! of its own, its rescale merged into the map's — one prime of about scale × constant scale
//! (50 bits) instead of two of the scale's size — and every map's constants are scaled so its
//! sums return to the inputs' scale after its one rescale.

use crate::activation::PolynomialActivation;
use crate::backend::{CkksBackend, PlainBackend};
use crate::error::{CircuitError, Result};
use crate::linear::LinearMap;
use crate::requirements::StageCost;
use blindfold_ckks::{Ciphertext, Evaluator, RelinearizationKey};
use rayon::prelude::*;

/// One stage of a batch circuit.
#[derive(Clone, Debug)]
pub enum BatchStage {
    /// A linear map between feature vectors (convolutions, dense layers, pooling, composed
    /// where no activation lies between them), on ciphertexts at `level`: one level.
    Linear {
        /// The map.
        map: LinearMap,
        /// Input level.
        level: usize,
    },
    /// A polynomial activation on every feature.
    Polynomial(PolynomialActivation),
}

impl BatchStage {
    /// Input level.
    pub fn level(&self) -> usize {
        match self {
            BatchStage::Linear { level, .. } => *level,
            BatchStage::Polynomial(p) => p.level(),
        }
    }

    /// Levels consumed.
    pub fn depth(&self) -> usize {
        match self {
            BatchStage::Linear { .. } => 1,
            BatchStage::Polynomial(p) => p.depth(),
        }
    }

    /// What the stage costs for `features` input ciphertexts (products: plaintext-constant
    /// terms for a linear stage, ciphertext products for an activation).
    pub fn cost(&self, features: usize) -> StageCost {
        match self {
            BatchStage::Linear { map, .. } => StageCost {
                name: format!("linear {}→{} (batch)", map.inputs, map.outputs()),
                levels: 1,
                rotations: 0,
                hoisted_rotations: 0,
                plain_products: map.rows.iter().map(Vec::len).sum(),
                products: 0,
            },
            BatchStage::Polynomial(p) => {
                let c = p.cost();
                StageCost { name: format!("{} ×{features}", c.name), products: c.products * features, ..c }
            }
        }
    }
}

/// A circuit in batch packing: `inputs` feature ciphertexts at `top_level`, the stages, and
/// the outputs of its last linear map.
#[derive(Clone, Debug)]
pub struct BatchCircuit {
    inputs: usize,
    top_level: usize,
    stages: Vec<BatchStage>,
    headroom: f64,
    /// Per stage: a square whose products go to the next linear map unrelinearized and
    /// unrescaled ([`lazy_square`]).
    lazy: Vec<bool>,
}

/// Whether a square should feed `next` unrelinearized and unrescaled: the next map then sums
/// size-3 ciphertexts, relinearizes once per output instead of once per input, and the
/// square spends no level of its own (its rescale merges into the map's). Chosen by cost,
/// counted in passes of one constant over one residue at a nominal level of 4 (the decision
/// must not depend on the chain it shapes; measured at N = 8192 on AVX-512 IFMA: a pass
/// 0.9 µs, a relinearization and rescale about 450 passes per residue): lazy for CryptoNets'
/// 845 → 100 and 100 → 10 maps; eager where a map has few terms per output (a convolution
/// after the square).
fn lazy_square(next: &LinearMap) -> bool {
    const LEVEL: f64 = 4.0;
    let relinearize_rescale = 450.0 * (LEVEL + 1.0);
    let terms = next.rows.iter().map(Vec::len).sum::<usize>() as f64;
    let eager = next.inputs as f64 * relinearize_rescale + terms * 2.0 * LEVEL;
    let lazy = terms * 3.0 * (LEVEL + 1.0) + next.outputs() as f64 * relinearize_rescale;
    lazy < eager
}

/// Levels `stages` consume, a lazy square none.
fn depth_of(stages: &[BatchStage], lazy: &[bool]) -> usize {
    stages.iter().zip(lazy).map(|(s, &l)| if l { 0 } else { s.depth() }).sum()
}

impl BatchCircuit {
    /// A batch circuit of `stages` on `inputs` features at `top_level`. The stages' levels
    /// need only follow one another (each stage at the level the one before leaves); they are
    /// assigned here from `top_level` down, once the squares that feed the next map lazily
    /// are known: such a square spends no level, and the map after it one (a single rescale
    /// by a prime about the size of scale × constants). The last map's results are computed
    /// `headroom` (≥ 1) times smaller and restored exactly through the scale
    /// ([`Evaluator::divide_exact`]): room below `q_0/2` for large outputs.
    ///
    /// # Errors
    /// [`CircuitError::Layout`] if a stage's level or input count does not follow from the
    /// one before, or the circuit does not end with a linear map; [`CircuitError::TooDeep`]
    /// if the stages need more levels than `top_level`.
    pub fn new(inputs: usize, top_level: usize, mut stages: Vec<BatchStage>, headroom: f64) -> Result<Self> {
        if !(headroom.is_finite() && headroom >= 1.0) {
            return Err(CircuitError::Layout(format!("output headroom {headroom}: must be finite and at least 1")));
        }
        let (mut level, mut features) = (stages.first().map_or(0, BatchStage::level), inputs);
        for (i, s) in stages.iter().enumerate() {
            if s.level() != level {
                return Err(CircuitError::Layout(format!("batch stage {i} at level {}, expected {level}", s.level())));
            }
            if let BatchStage::Linear { map, .. } = s {
                if map.inputs != features || map.rows.iter().flatten().any(|&(j, _)| j as usize >= features) {
                    return Err(CircuitError::Layout(format!(
                        "batch stage {i} reads {} features, the stage before gives {features}",
                        map.inputs
                    )));
                }
                features = map.outputs();
            }
            level = level.checked_sub(s.depth()).ok_or_else(|| {
                CircuitError::Layout(format!("batch stage {i} at level {level} needs {} levels", s.depth()))
            })?;
        }
        match stages.last_mut() {
            Some(BatchStage::Linear { map, .. }) => *map = map.clone().scaled(1.0 / headroom, 1.0 / headroom),
            _ => return Err(CircuitError::Layout("a batch circuit ends with a linear map".into())),
        }
        let lazy: Vec<bool> = (0..stages.len())
            .map(|i| match (&stages[i], stages.get(i + 1)) {
                (BatchStage::Polynomial(p), Some(BatchStage::Linear { map, .. })) if p.is_square() => lazy_square(map),
                _ => false,
            })
            .collect();
        let depth = depth_of(&stages, &lazy);
        if depth > top_level {
            return Err(CircuitError::TooDeep { needed: depth, available: top_level, hint: None });
        }
        let mut level = top_level;
        for (i, s) in stages.iter_mut().enumerate() {
            match s {
                BatchStage::Linear { level: l, .. } => {
                    *l = level;
                    level -= 1;
                }
                BatchStage::Polynomial(p) => {
                    *p = PolynomialActivation::monic(p.lower().to_vec(), level)?;
                    if !lazy[i] {
                        level -= p.depth();
                    }
                }
            }
        }
        Ok(Self { inputs, top_level, stages, headroom, lazy })
    }

    /// Per level consumed, from the top down: whether a linear map fed by a lazy square
    /// consumes it (its prime should be about scale × constant scale, the square's rescale
    /// merged into the map's) rather than anything else (a prime about the scale).
    pub fn wide_levels(&self) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.depth());
        for (i, s) in self.stages.iter().enumerate() {
            match s {
                BatchStage::Linear { .. } => out.push(self.fed_by_lazy_square(i)),
                _ if self.lazy[i] => {}
                BatchStage::Polynomial(p) => out.extend(std::iter::repeat_n(false, p.depth())),
            }
        }
        out
    }

    /// The factor the last map's results are computed smaller by (see [`BatchCircuit::new`]).
    pub fn headroom(&self) -> f64 {
        self.headroom
    }

    /// Number of input features (ciphertexts per batch).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Number of outputs (result ciphertexts per batch).
    pub fn outputs(&self) -> usize {
        match self.stages.last() {
            Some(BatchStage::Linear { map, .. }) => map.outputs(),
            _ => 0,
        }
    }

    /// Level of the input ciphertexts.
    pub fn top_level(&self) -> usize {
        self.top_level
    }

    /// Whether stage `i` is a linear map whose inputs are squared lazily (by the stage before).
    fn fed_by_lazy_square(&self, i: usize) -> bool {
        i > 0 && self.lazy[i - 1]
    }

    /// Levels consumed (a lazy square none).
    pub fn depth(&self) -> usize {
        depth_of(&self.stages, &self.lazy)
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[BatchStage] {
        &self.stages
    }

    /// Whether the circuit needs the relinearization key (it never needs Galois keys).
    pub fn relinearizes(&self) -> bool {
        self.stages.iter().any(|s| s.depth() > 0 && matches!(s, BatchStage::Polynomial(_)))
    }

    /// The most residue polynomials (of `N` coefficients each) alive at once while a batch is
    /// expanded and [`BatchCircuit::evaluate`] runs, counted at the top level: the seeded
    /// request beside its expansion, then the inputs, the stage's inputs and its outputs
    /// (size 3 where a lazy square feeds a map). Times `8·N` bytes: a lower bound on a batch's
    /// memory (per-thread scratch comes on top).
    pub fn peak_residues(&self) -> usize {
        let inputs = 2 * self.inputs;
        let (mut x, mut features, mut peak) = (0, self.inputs, 3 * self.inputs);
        for (i, s) in self.stages.iter().enumerate() {
            match s {
                BatchStage::Linear { map, .. } => {
                    let out = map.outputs() * if self.fed_by_lazy_square(i) { 3 } else { 2 };
                    peak = peak.max(inputs + x + out);
                    (x, features) = (2 * map.outputs(), map.outputs());
                }
                _ if self.lazy[i] => {}
                BatchStage::Polynomial(_) => {
                    peak = peak.max(inputs + x + 2 * features);
                    x = 2 * features;
                }
            }
        }
        peak * (self.top_level + 1)
    }

    /// What each stage costs.
    pub fn costs(&self) -> Vec<StageCost> {
        let mut features = self.inputs;
        self.stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = s.cost(features);
                if self.lazy[i] {
                    c.name += " (lazy: relinearized and rescaled after the next map)";
                }
                if let BatchStage::Linear { map, .. } = s {
                    features = map.outputs();
                }
                c
            })
            .collect()
    }

    /// The plaintext twin: `inputs[f]` holds feature `f` of every image (one value per
    /// image); returns the outputs the same way.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of features or images of different counts.
    pub fn evaluate_plain(&self, inputs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        self.check_inputs(inputs.len())?;
        let images = inputs.first().map_or(0, Vec::len);
        if inputs.iter().any(|f| f.len() != images) {
            return Err(CircuitError::Input {
                expected: format!("{images} values per feature"),
                actual: "features of different lengths".into(),
            });
        }
        let mut x = inputs.to_vec();
        for s in &self.stages {
            x = match s {
                BatchStage::Linear { map, .. } => map
                    .rows
                    .par_iter()
                    .zip(&map.bias)
                    .map(|(row, &b)| {
                        let mut out = vec![b; images];
                        for &(j, w) in row {
                            out.iter_mut().zip(&x[j as usize]).for_each(|(o, v)| *o += w * v);
                        }
                        out
                    })
                    .collect(),
                BatchStage::Polynomial(p) => {
                    x.into_par_iter().map(|f| p.evaluate(&PlainBackend, &f)).collect::<Result<_>>()?
                }
            };
        }
        x.iter_mut().flatten().for_each(|v| *v *= self.headroom);
        Ok(x)
    }

    /// Evaluates the circuit on the client's feature ciphertexts (top level, one scale) with
    /// the relinearization key only; returns one ciphertext per output.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for a wrong number of ciphertexts; CKKS errors (level, scale
    /// or parameter mismatch) for ciphertexts that are not the circuit's inputs.
    pub fn evaluate(
        &self,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        rlk: &RelinearizationKey,
    ) -> Result<Vec<Ciphertext>> {
        self.evaluate_observed(eval, inputs, rlk, |_, _| {})
    }

    /// [`BatchCircuit::evaluate`], calling `observe(stage index, seconds)` after each stage
    /// (for progress bars and per-layer timings).
    ///
    /// # Errors
    /// As [`BatchCircuit::evaluate`].
    pub fn evaluate_observed(
        &self,
        eval: &Evaluator,
        inputs: &[Ciphertext],
        rlk: &RelinearizationKey,
        mut observe: impl FnMut(usize, f64),
    ) -> Result<Vec<Ciphertext>> {
        self.check_inputs(inputs.len())?;
        let be = CkksBackend::with_keys(eval, Some(rlk), None, &[]);
        let mut owned: Option<Vec<Ciphertext>> = None;
        for (i, s) in self.stages.iter().enumerate() {
            let t = std::time::Instant::now();
            let x: &[Ciphertext] = owned.as_deref().unwrap_or(inputs);
            let next = match s {
                BatchStage::Linear { map, level } => {
                    // Inputs above the stage's level are brought down by extra rescales.
                    let pending = x.first().map_or(0, |c| c.level().saturating_sub(*level));
                    let refs: Vec<&Ciphertext> = x.iter().collect();
                    // Constants at the scale that brings the sums back to the inputs' scale
                    // after one rescale by q_level (a lazy square's inputs enter squared).
                    // A lazy square is formed inside the sums, never stored.
                    let squared = self.fed_by_lazy_square(i);
                    let scale = x.first().map_or(1.0, Ciphertext::scale);
                    let in_scale = if squared { scale * scale } else { scale };
                    let target = inputs.first().map_or(1.0, Ciphertext::scale);
                    let const_scale = target * eval.context().params().q()[*level] as f64 / in_scale;
                    let mut out = if squared {
                        eval.linear_combinations_of_squares(&refs, &map.rows, &map.bias, const_scale)?
                    } else {
                        eval.linear_combinations(&refs, &map.rows, &map.bias, const_scale)?
                    };
                    out.par_iter_mut().try_for_each(|c| normalize(eval, rlk, c, 1 + pending))?;
                    out
                }
                // x², neither relinearized nor rescaled until the next linear map has summed it.
                _ if self.lazy[i] => {
                    observe(i, t.elapsed().as_secs_f64());
                    continue;
                }
                BatchStage::Polynomial(p) => x
                    .par_iter()
                    .map(|c| {
                        let (mut c, pending) = (c.clone(), c.level().saturating_sub(p.level()));
                        normalize(eval, rlk, &mut c, pending)?;
                        p.evaluate(&be, &c)
                    })
                    .collect::<Result<_>>()?,
            };
            owned = Some(next);
            observe(i, t.elapsed().as_secs_f64());
        }
        let mut out = owned.ok_or_else(|| CircuitError::Layout("a batch circuit without stages".into()))?;
        for c in &mut out {
            eval.divide_exact(c, 1.0 / self.headroom)?;
        }
        Ok(out)
    }

    fn check_inputs(&self, n: usize) -> Result<()> {
        if n != self.inputs {
            return Err(CircuitError::Input {
                expected: format!("{} feature ciphertexts", self.inputs),
                actual: n.to_string(),
            });
        }
        Ok(())
    }
}

/// Rescales `c` `rescales` times, relinearizing a size-3 ciphertext just before the last
/// rescale (whose rounding would otherwise be multiplied by `s²`: 4.8e-2 against 2.8e-4 of
/// CryptoNets' largest output), or at the end when there is no rescale.
fn normalize(eval: &Evaluator, rlk: &RelinearizationKey, c: &mut Ciphertext, rescales: usize) -> Result<()> {
    for k in 0..rescales {
        if k + 1 == rescales && c.size() == 3 {
            eval.relinearize_assign(c, rlk)?;
        }
        eval.rescale_assign(c)?;
    }
    if c.size() == 3 {
        eval.relinearize_assign(c, rlk)?;
    }
    Ok(())
}
