//! Aggregations of several parties' encrypted score vectors into one (an ensemble
//! coordinator's work), written once against [`Backend`]: evaluated on CKKS, on the plaintext
//! twin, and on the [`TraceBackend`], which gives the rotation keys the aggregation needs from
//! the same code.
//!
//! Layout. Each contributor's scores arrive in slots `0..C` (`C` classes; other slots hold
//! whatever its network left there). The polynomial aggregations mask them, move contributor
//! `h` to the window of slots `WINDOW·h ..`, and work on all contributors in one ciphertext.

use crate::backend::{Backend, TraceBackend};
use crate::error::{CircuitError, Result};
use crate::pooling::DoublingPlan;
use crate::requirements::{merge_keys, RotationKey};

/// Slots given to one contributor's scores in the packed polynomial aggregations.
pub const WINDOW: usize = 32;
/// Regions of the vote's packed pairwise differences (one per shift `1..C`, padded).
pub const VOTE_REGIONS: usize = 16;

/// How the scores are combined (the constants are public, per contributor).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Combine {
    /// Arithmetic mean: a sum, the division done exactly through the scale (no level).
    Mean,
    /// `Σ w_h s_h / Σ w_h` over the contributors: one constant product each (one level).
    Weighted {
        /// Weight of each party.
        weights: Vec<f64>,
    },
    /// Mean of `e_j·(c_0 + c_1 Σ_k e_k)` with `e_j = (1 + s_j/R_h)^2`: a polynomial softmax
    /// (four levels).
    SoftmaxMean {
        /// Score bound `R_h` of each party.
        bounds: Vec<f64>,
        /// `[c_0, c_1]`, the linear approximation of `1/Σ e`.
        inverse: [f64; 2],
    },
    /// Mean of `(r_j/(C−1))^2` with the rank `r_j = Σ_{k≠j} (1 + f(a_j − a_k))/2`,
    /// `a = s/(2R_h)`, `f(x) = (3x − x³)/2` (four levels).
    Vote {
        /// Score bound `R_h` of each party.
        bounds: Vec<f64>,
    },
}

/// An aggregation of up to `parties` score vectors of `classes` values in `slots` slots.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregator {
    combine: Combine,
    classes: usize,
    parties: usize,
    slots: usize,
}

impl Aggregator {
    /// An aggregation for `parties` parties of `classes` scores each, on `slots` slots.
    ///
    /// # Errors
    /// [`CircuitError::Layout`] if the polynomial aggregations' windows do not fit (more than
    /// `WINDOW/2` classes, fewer than 2, or more parties than the vote's regions hold);
    /// [`CircuitError::Input`] for constants of the wrong count.
    pub fn new(combine: Combine, classes: usize, parties: usize, slots: usize) -> Result<Self> {
        let count = match &combine {
            Combine::Mean => parties,
            Combine::Weighted { weights } => weights.len(),
            Combine::SoftmaxMean { bounds, .. } | Combine::Vote { bounds } => bounds.len(),
        };
        if parties == 0 || count != parties {
            return Err(CircuitError::Input {
                expected: format!("constants for {parties} parties (at least one)"),
                actual: count.to_string(),
            });
        }
        let a = Self { combine, classes, parties, slots };
        if a.depth() > 1 && (2 * classes > WINDOW || classes < 2 || WINDOW * (parties + 1) > a.region()) {
            return Err(CircuitError::Layout(format!(
                "softmax-mean and vote pack {parties} parties of {classes} classes into windows of {WINDOW} slots: \
                 at most {} parties and 2..={} classes at {slots} slots",
                (a.region() / WINDOW).saturating_sub(1),
                WINDOW / 2
            )));
        }
        Ok(a)
    }

    /// Levels the aggregation consumes: the scores must arrive at least this high.
    pub fn depth(&self) -> usize {
        match self.combine {
            Combine::Mean => 0,
            Combine::Weighted { .. } => 1,
            Combine::SoftmaxMean { .. } | Combine::Vote { .. } => 4,
        }
    }

    /// The rotations the aggregation makes on scores arriving at `level` of the chain `q`
    /// (with `default_scale`), each at its level: traced from the evaluation itself, with every
    /// party contributing (a party missing removes a rotation, never adds one).
    ///
    /// # Errors
    /// [`CircuitError::TooDeep`] if the scores arrive below the aggregation's depth.
    pub fn rotation_keys(&self, level: usize, q: &[u64], default_scale: f64) -> Result<Vec<RotationKey>> {
        self.check_level(level)?;
        let tracer = TraceBackend::new(q, default_scale);
        let scores: Vec<(usize, crate::backend::Trace)> =
            (0..self.parties).map(|h| (h, crate::backend::Trace { level, scale: default_scale })).collect();
        self.evaluate(&tracer, &scores)?;
        Ok(merge_keys(tracer.rotations(), self.slots))
    }

    fn check_level(&self, level: usize) -> Result<()> {
        if self.depth() > level {
            return Err(CircuitError::TooDeep {
                needed: self.depth(),
                available: level,
                hint: Some(format!(
                    "the aggregation needs {} levels after the network, the scores arrive at level {level}: \
                     use parameters with more levels",
                    self.depth()
                )),
            });
        }
        Ok(())
    }

    /// Combines the scores `(party, scores)` of the parties that contributed (at least one).
    /// The result holds the combined scores in slots `0..C`.
    ///
    /// # Errors
    /// [`CircuitError::Input`] for no scores or an unknown party; backend errors (scores of
    /// different levels or scales, missing keys).
    pub fn evaluate<B: Backend>(&self, be: &B, scores: &[(usize, B::Value)]) -> Result<B::Value> {
        if scores.is_empty() || scores.iter().any(|&(h, _)| h >= self.parties) {
            return Err(CircuitError::Input {
                expected: format!("scores of parties below {}", self.parties),
                actual: format!("{:?}", scores.iter().map(|(h, _)| h).collect::<Vec<_>>()),
            });
        }
        let k = scores.len() as f64;
        match &self.combine {
            Combine::Mean => {
                let mut sum = scores[0].1.clone();
                for (_, s) in &scores[1..] {
                    be.add_assign(&mut sum, s)?;
                }
                be.divide_exact(sum, k)
            }
            Combine::Weighted { weights } => {
                let total: f64 = scores.iter().map(|&(h, _)| weights[h]).sum();
                let mut sum: Option<B::Value> = None;
                for (h, s) in scores {
                    let term = be.mul_const_to(s, weights[*h] / total, be.scale_of(s))?;
                    match &mut sum {
                        Some(acc) => be.add_assign(acc, &term)?,
                        None => sum = Some(term),
                    }
                }
                Ok(sum.expect("at least one contributor"))
            }
            Combine::SoftmaxMean { bounds, inverse } => self.softmax_mean(be, scores, bounds, *inverse),
            Combine::Vote { bounds } => self.vote(be, scores, bounds),
        }
    }

    /// Slots per region of the vote's packed differences.
    fn region(&self) -> usize {
        self.slots / VOTE_REGIONS
    }

    /// Each contributor's scores in slots `0..C`, times `factor(h)`, the rest zeroed, moved to
    /// window `h`, all summed, at the default scale: one level.
    fn pack<B: Backend>(
        &self,
        be: &B,
        scores: &[(usize, B::Value)],
        factor: impl Fn(usize) -> f64,
    ) -> Result<B::Value> {
        let masked = scores
            .iter()
            .map(|(h, s)| {
                let mut v = vec![0.0; self.slots];
                v[..self.classes].fill(factor(*h));
                be.mul_values_to(s, &v, be.default_scale())
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&B::Value> = masked.iter().collect();
        let steps: Vec<i64> = scores.iter().map(|&(h, _)| -((WINDOW * h) as i64)).collect();
        be.rotate_sum(&refs, &steps)
    }

    /// The mean over windows: window `h` brought to slots `0..C` and summed, divided by the
    /// number of contributors.
    fn unpack_mean<B: Backend>(&self, be: &B, x: &B::Value, scores: &[(usize, B::Value)]) -> Result<B::Value> {
        let refs = vec![x; scores.len()];
        let steps: Vec<i64> = scores.iter().map(|&(h, _)| (WINDOW * h) as i64).collect();
        be.divide_exact(be.rotate_sum(&refs, &steps)?, scores.len() as f64)
    }

    /// `value` in the first `C` slots of every contributor's window.
    fn window_values(&self, value: f64, scores: &[(usize, impl Sized)]) -> Vec<f64> {
        let mut v = vec![0.0; self.slots];
        for &(h, _) in scores {
            v[WINDOW * h..WINDOW * h + self.classes].fill(value);
        }
        v
    }

    /// `c·a·b` two levels below `a` (`b` at most one level below it), at scale `target`
    /// exactly: the constant goes in at the scale that lands the product on `target`, so a
    /// small `c` costs no precision.
    fn scaled_product<B: Backend>(&self, be: &B, a: &B::Value, c: f64, b: &B::Value, target: f64) -> Result<B::Value> {
        let q = be.prime(be.level_of(a).saturating_sub(1));
        be.mul_rescale(&be.mul_const_to(a, c, target * q / be.scale_of(b))?, b)
    }

    /// `x + rot(x, −C)`: slots `C..2C` of each window repeat `0..C` (the rest of the window
    /// must be zero).
    fn repeat_window<B: Backend>(&self, be: &B, x: &B::Value) -> Result<B::Value> {
        be.add(x, &be.rotate(x, -(self.classes as i64))?)
    }

    fn softmax_mean<B: Backend>(
        &self,
        be: &B,
        scores: &[(usize, B::Value)],
        bounds: &[f64],
        [c0, c1]: [f64; 2],
    ) -> Result<B::Value> {
        let packed = self.pack(be, scores, |h| 1.0 / bounds[h])?;
        let u = be.add_values(&packed, &self.window_values(1.0, scores))?;
        let e = be.square_rescale(&u)?;
        let sum = DoublingPlan::new(self.classes, 1).apply(be, &self.repeat_window(be, &e)?)?;
        // e·(c_0 + c_1 Σ) = c_0 e + (c_1 e)·Σ, both terms landing on the default scale.
        let target = be.default_scale();
        let mut p = self.scaled_product(be, &e, c1, &sum, target)?;
        let c0e = be.drop_to(&be.mul_const_to(&e, c0, target)?, &p)?;
        be.add_assign(&mut p, &c0e)?;
        self.unpack_mean(be, &p, scores)
    }

    fn vote<B: Backend>(&self, be: &B, scores: &[(usize, B::Value)], bounds: &[f64]) -> Result<B::Value> {
        let a = self.pack(be, scores, |h| 0.5 / bounds[h])?;
        let shifts = self.classes - 1;
        let region = self.region() as i64;
        // Region k−1 of `d`: a_j − a_{(j+k) mod C}, for k = 1..C.
        let same = DoublingPlan::new(shifts, -region).apply(be, &a)?;
        let shifted = be.rotate(&self.repeat_window(be, &a)?, 1)?;
        let shifted = DoublingPlan::new(shifts, 1 - region).apply(be, &shifted)?;
        let d = be.sub(&same, &shifted)?;
        // step(d)/(C−1) = 1/(2(C−1)) + d(3 − d²)/(4(C−1)).
        let d2 = be.square_rescale(&d)?;
        let g = be.add_const(&be.negate(&d2)?, 3.0)?;
        let t = self.scaled_product(be, &d, 1.0 / (4.0 * shifts as f64), &g, be.default_scale())?;
        let mut half = vec![0.0; self.slots];
        half[..shifts * region as usize].fill(0.5 / shifts as f64);
        let mut t = be.add_values(&t, &half)?;
        // Rank: the regions summed into region 0.
        for b in (0..VOTE_REGIONS.trailing_zeros()).rev() {
            let r = be.rotate(&t, region << b)?;
            be.add_assign(&mut t, &r)?;
        }
        self.unpack_mean(be, &be.square_rescale(&t)?, scores)
    }
}
