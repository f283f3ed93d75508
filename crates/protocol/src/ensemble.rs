//! The coordinator of an encrypted ensemble: combines the encrypted scores of several model
//! holders into one encrypted prediction for the end user.
//!
//! Four aggregations ([`Aggregation`]): the mean and the weighted mean of the scores, which are
//! linear, and two that first pass each holder's scores through a polynomial: a softmax
//! approximation (then the mean), and a vote approximation (then the mean of the votes). The
//! polynomial ones need levels after the network (see [`Aggregation::depth`]) and evaluation
//! keys for the coordinator ([`Coordinator::rotation_keys`]); their constants are public
//! and come from a validation set no holder trained on ([`Calibration`]).
//!
//! Layout. A holder's scores arrive in slots `0..C` (`C` classes; the other slots hold partial
//! sums of the last layer). The polynomial aggregations mask them, move holder `h` to the
//! window of slots `WINDOW·h ..`, and work on all holders in one ciphertext.

use crate::inference::{KeyId, Message, PlanInfo, ProtocolError, Wire};
use blindfold_ckks::{Ciphertext, Context, Evaluator, GaloisKeys, RelinearizationKey};
use blindfold_tensor::aggregation::{VOTE_REGIONS, WINDOW};
use blindfold_tensor::requirements::{key_requests, merge_keys};
use blindfold_tensor::{Aggregator, CkksBackend, Combine, PlainBackend, RotationKey};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::Arc;

type Result<T> = std::result::Result<T, ProtocolError>;

/// How the coordinator combines the holders' scores. Each has a plaintext twin
/// ([`Aggregation::apply_plain`]) that the decrypted result is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Aggregation {
    /// Arithmetic mean of the score vectors: a sum of ciphertexts, the division by the
    /// number of contributors done exactly through the scale (no level, no noise).
    Mean,
    /// `Σ w_h s_h / Σ w_h` over the contributors, with public weights
    /// ([`Calibration::weights`]): one constant multiplication and one rescale (depth 1).
    Weighted,
    /// Mean of a polynomial softmax per holder: `e_j = (1 + s_j/R_h)^2` (the exponential
    /// `exp(2 s_j/R_h)` in its limit form `(1 + x/n)^n` with `n = 2`), normalised by the
    /// linear Chebyshev approximation of `1/Σ_j e_j` on the range seen in validation
    /// ([`Calibration::softmax_inverse`]; with centred logits `Σ_j e_j = C + Σ_j (s_j/R_h)^2`
    /// varies little). Depth 4: mask 1, square 1, normalisation 2.
    SoftmaxMean,
    /// Mean of approximate votes: with `a = s/(2R_h)` and the degree-3 sign approximation
    /// `f(x) = (3x − x³)/2`, class `j`'s rank is `r_j = Σ_{k≠j} (1 + f(a_j − a_k))/2`
    /// (`C − 1` for the top class when the signs are sharp) and the vote is `(r_j/(C−1))^2`.
    /// Depth 4: mask 1, sign 2, square 1. (An exact plurality vote would multiply the `C − 1`
    /// steps instead — depth 7 here — and needs sharper, deeper signs.)
    Vote,
}

impl Aggregation {
    /// Every aggregation, in table order.
    pub const ALL: [Aggregation; 4] =
        [Aggregation::Mean, Aggregation::Weighted, Aggregation::SoftmaxMean, Aggregation::Vote];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::Weighted => "weighted",
            Aggregation::SoftmaxMean => "softmax-mean",
            Aggregation::Vote => "vote",
        }
    }

    /// Levels the aggregation consumes: the holders' scores must arrive at least this high.
    pub fn depth(self) -> usize {
        match self {
            Aggregation::Mean => 0,
            Aggregation::Weighted => 1,
            Aggregation::SoftmaxMean | Aggregation::Vote => 4,
        }
    }

    /// The circuit of this aggregation for `parties` holders of `classes` scores on `slots`
    /// slots, with the constants of `cal`.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] for a calibration without the constants the aggregation
    /// needs, or holders and classes that do not fit the packed layout.
    pub fn aggregator(self, cal: &Calibration, classes: usize, parties: usize, slots: usize) -> Result<Aggregator> {
        let bounds = || -> Result<Vec<f64>> { (0..parties).map(|h| cal.bound(h)).collect() };
        let combine = match self {
            Aggregation::Mean => Combine::Mean,
            Aggregation::Weighted => {
                Combine::Weighted { weights: (0..parties).map(|h| cal.weight(h)).collect::<Result<_>>()? }
            }
            Aggregation::SoftmaxMean => Combine::SoftmaxMean { bounds: bounds()?, inverse: cal.softmax_inverse },
            Aggregation::Vote => Combine::Vote { bounds: bounds()? },
        };
        Aggregator::new(combine, classes, parties, slots).map_err(|e| ProtocolError::Config(e.to_string()))
    }

    /// The same combination on plaintext score vectors: `scores[i]` (one length, the number
    /// of classes) comes from holder `holders[i]`, whose constants are read from `cal`. The
    /// polynomial aggregations evaluate exactly the polynomials the coordinator evaluates.
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] for no scores, mismatched lengths, or a holder the
    /// calibration does not cover.
    pub fn apply_plain(self, scores: &[&[f64]], holders: &[usize], cal: &Calibration) -> Result<Vec<f64>> {
        let classes = scores.first().map_or(0, |s| s.len());
        if scores.is_empty() || scores.len() != holders.len() || scores.iter().any(|s| s.len() != classes) {
            return Err(ProtocolError::Misuse("apply_plain: one score vector of one length per holder".into()));
        }
        // The twin on the smallest slot count the packed layout fits in (the values do not
        // depend on it).
        let parties = cal.weights.len();
        let slots = (VOTE_REGIONS * WINDOW * (parties + 1)).next_power_of_two();
        let agg = self.aggregator(cal, classes, parties, slots)?;
        let inputs: Vec<(usize, Vec<f64>)> = scores
            .iter()
            .zip(holders)
            .map(|(s, &h)| {
                let mut v = vec![0.0; slots];
                v[..classes].copy_from_slice(s);
                (h, v)
            })
            .collect();
        let out = agg.evaluate(&PlainBackend, &inputs).map_err(|e| ProtocolError::Misuse(e.to_string()))?;
        Ok(out[..classes].to_vec())
    }
}

impl std::fmt::Display for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Aggregation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown aggregation {s:?}: expected mean, weighted, softmax-mean or vote"))
    }
}

/// The public constants of the aggregations, one set per holder, computed from the holders'
/// plaintext scores on a validation set that no holder trained on and that is not scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Weight of each holder in [`Aggregation::Weighted`]: its validation accuracy above
    /// chance, `max(acc − 1/C, 0.01)`.
    pub weights: Vec<f64>,
    /// Each holder's score bound `R_h`: 1.1 × the largest `|s_j|` seen in validation. The
    /// polynomial aggregations divide the scores by it, so their inputs stay in `[-1, 1]`.
    pub score_bounds: Vec<f64>,
    /// The interval on which `Σ_j e_j` of [`Aggregation::SoftmaxMean`] fell in validation
    /// (widened by 20% on each side).
    pub softmax_sum_range: (f64, f64),
    /// Coefficients `c_0, c_1` of `c_0 + c_1 x`, the linear Chebyshev interpolant of `1/x`
    /// on `softmax_sum_range`.
    pub softmax_inverse: [f64; 2],
}

impl Calibration {
    /// Equal weights and no constants for the polynomial aggregations: enough for
    /// [`Aggregation::Mean`] and [`Aggregation::Weighted`] (as the mean).
    pub fn equal(holders: usize) -> Self {
        Self {
            weights: vec![1.0; holders],
            score_bounds: Vec::new(),
            softmax_sum_range: (0.0, 0.0),
            softmax_inverse: [0.0; 2],
        }
    }

    /// Calibrates from validation scores: `scores[h][i]` is holder `h`'s score vector for
    /// validation image `i`, whose label is `labels[i]`.
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] for no holders, no images, ragged input, or scores
    /// that are all zero.
    pub fn from_validation(scores: &[Vec<Vec<f64>>], labels: &[u8]) -> Result<Self> {
        let bad = || ProtocolError::Misuse("calibration needs every holder's scores for every validation image".into());
        let classes = scores.first().and_then(|s| s.first()).map_or(0, Vec::len);
        if classes < 2
            || labels.is_empty()
            || scores.iter().any(|s| s.len() != labels.len() || s.iter().any(|v| v.len() != classes))
        {
            return Err(bad());
        }
        let mut cal = Self::equal(scores.len());
        for (h, s) in scores.iter().enumerate() {
            let correct = s.iter().zip(labels).filter(|(v, &l)| argmax(v) == l as usize).count();
            cal.weights[h] = (correct as f64 / labels.len() as f64 - 1.0 / classes as f64).max(0.01);
            let bound = s.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
            if bound == 0.0 {
                return Err(ProtocolError::Misuse(format!("holder {h}: every validation score is zero")));
            }
            cal.score_bounds.push(1.1 * bound);
        }
        let (mut lo, mut hi) = (f64::INFINITY, 0f64);
        for (h, s) in scores.iter().enumerate() {
            for v in s {
                let sum: f64 = cal.softmax_numerators(h, v)?.iter().sum();
                (lo, hi) = (lo.min(sum), hi.max(sum));
            }
        }
        cal.softmax_sum_range = (0.8 * lo, 1.2 * hi);
        cal.softmax_inverse = chebyshev_inverse_linear(0.8 * lo, 1.2 * hi);
        Ok(cal)
    }

    fn weight(&self, h: usize) -> Result<f64> {
        self.weights.get(h).copied().ok_or_else(|| ProtocolError::Config(format!("no weight for holder {h}")))
    }

    fn bound(&self, h: usize) -> Result<f64> {
        self.score_bounds.get(h).copied().ok_or_else(|| {
            ProtocolError::Config(format!(
                "no score bound for holder {h}: softmax-mean and vote need a calibration (Calibration::from_validation)"
            ))
        })
    }

    /// `(1 + s_j/R_h)^2`.
    fn softmax_numerators(&self, h: usize, s: &[f64]) -> Result<Vec<f64>> {
        let r = self.bound(h)?;
        Ok(s.iter().map(|v| (1.0 + v / r).powi(2)).collect())
    }
}

/// `[c_0, c_1]` of the line interpolating `1/x` at the two Chebyshev nodes `x_0, x_1` of
/// `[lo, hi]`: `c_1 = −1/(x_0 x_1)`, `c_0 = 1/x_0 + 1/x_1`.
fn chebyshev_inverse_linear(lo: f64, hi: f64) -> [f64; 2] {
    let (mid, half) = (0.5 * (lo + hi), 0.5 * (hi - lo) * std::f64::consts::FRAC_1_SQRT_2);
    let (x0, x1) = (mid - half, mid + half);
    [1.0 / x0 + 1.0 / x1, -1.0 / (x0 * x1)]
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// An aggregated prediction, with who contributed to it.
#[derive(Clone, Debug)]
pub struct Aggregated {
    /// The encrypted combined scores, for the end user ([`Message::EncryptedScores`]).
    pub message: Message,
    /// Holders whose scores are in the result.
    pub contributors: Vec<usize>,
    /// Holders whose scores did not arrive (failed or timed out): left out, and said so.
    pub missing: Vec<usize>,
}

/// The service coordinator. Holds the CKKS parameters, an evaluator and, for the polynomial
/// aggregations, the end user's public evaluation keys; nothing that can decrypt: secret
/// keys have no message, and [`Coordinator::receive`] accepts only encrypted scores. It never
/// sees a plaintext.
pub struct Coordinator {
    ctx: Arc<Context>,
    eval: Evaluator,
    cal: Calibration,
    classes: usize,
    /// Level at which the holders' scores arrive (top level minus the network's depth).
    score_level: usize,
    keys: Option<(RelinearizationKey, GaloisKeys)>,
    scores: Vec<Option<Ciphertext>>,
    /// The end user's evaluation keys named by the first scores of the current image: every
    /// holder's scores must name the same.
    key_id: Option<KeyId>,
}

impl Coordinator {
    /// A coordinator for `holders` model holders that all serve the plan `info`, with equal
    /// weights ([`Calibration::equal`]).
    ///
    /// # Errors
    /// [`ProtocolError::Config`] for no holders or an unknown preset; CKKS errors.
    pub fn new(info: &PlanInfo, holders: usize) -> Result<Self> {
        Self::with_calibration(info, Calibration::equal(holders))
    }

    /// A coordinator for `cal.weights.len()` holders with the public constants `cal`.
    ///
    /// # Errors
    /// As [`Coordinator::new`]; also for a calibration whose lists differ in length.
    pub fn with_calibration(info: &PlanInfo, cal: Calibration) -> Result<Self> {
        let holders = cal.weights.len();
        if holders == 0 {
            return Err(ProtocolError::Config("an ensemble needs at least one model holder".into()));
        }
        if !cal.score_bounds.is_empty() && cal.score_bounds.len() != holders {
            return Err(ProtocolError::Config("calibration: one score bound per holder".into()));
        }
        let ctx = Context::new(&info.parameters()?)?;
        let classes = info.arch.classes()?;
        let score_level = ctx.max_level().saturating_sub(info.depth);
        Ok(Self {
            eval: Evaluator::new(&ctx),
            ctx,
            cal,
            classes,
            score_level,
            keys: None,
            scores: vec![None; holders],
            key_id: None,
        })
    }

    /// The public constants in use.
    pub fn calibration(&self) -> &Calibration {
        &self.cal
    }

    /// The rotations, each with a level it is made at, that the end user must generate Galois
    /// keys for, with a relinearization key, so that the coordinator can run `aggregations`
    /// ([`crate::Client::evaluation_keys_for`]): traced from the aggregations' own evaluation.
    /// Empty for the linear ones.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] if an aggregation needs more levels than the scores
    /// arrive with, or the holders or classes do not fit the packed layout.
    pub fn rotation_keys(&self, aggregations: &[Aggregation]) -> Result<Vec<RotationKey>> {
        let mut keys = Vec::new();
        for &agg in aggregations {
            keys.extend(self.keys_of(agg, self.score_level)?);
        }
        Ok(merge_keys(keys, self.slots()))
    }

    fn aggregator(&self, agg: Aggregation) -> Result<Aggregator> {
        agg.aggregator(&self.cal, self.classes, self.scores.len(), self.slots())
    }

    /// The rotation keys of `agg` on scores arriving at `level`.
    fn keys_of(&self, agg: Aggregation, level: usize) -> Result<Vec<RotationKey>> {
        let p = self.ctx.params();
        self.aggregator(agg)?.rotation_keys(level, p.q(), p.default_scale()).map_err(|e| self.refused(agg, e))
    }

    fn refused(&self, agg: Aggregation, e: blindfold_tensor::CircuitError) -> ProtocolError {
        match e {
            blindfold_tensor::CircuitError::TooDeep { .. } => ProtocolError::Config(format!(
                "aggregation {agg} needs {} levels after the network, the scores arrive at level {}: \
                 use a parameter preset with more levels (N16384_DEPTH9_128BIT)",
                agg.depth(),
                self.score_level
            )),
            blindfold_tensor::CircuitError::MissingKeys(_) => ProtocolError::Misuse(format!(
                "{agg} needs the end user's evaluation keys first (Coordinator::set_evaluation_keys)"
            )),
            blindfold_tensor::CircuitError::Ckks(e) => ProtocolError::Ckks(e),
            e => ProtocolError::Config(format!("aggregation {agg}: {e}")),
        }
    }

    /// Accepts the end user's public evaluation keys ([`Message::EvaluationKeys`]), needed by
    /// the polynomial aggregations.
    ///
    /// # Errors
    /// [`ProtocolError::Peer`] for any other message; CKKS errors for keys of other
    /// parameters or malformed bytes.
    pub fn set_evaluation_keys(&mut self, msg: &Message) -> Result<()> {
        let Message::EvaluationKeys { relinearization, galois, .. } = msg else {
            return Err(ProtocolError::Peer(format!("expected EvaluationKeys, got {}", msg.kind())));
        };
        let rlk = relinearization.decode(&self.ctx)?;
        let gk = galois.decode(&self.ctx)?;
        self.keys = Some((rlk, gk));
        Ok(())
    }

    /// Accepts holder `holder`'s reply for the current image.
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] for an unknown holder; [`ProtocolError::Peer`] for a second
    /// reply from one holder, scores computed with other evaluation keys than the other holders' of this image, or
    /// any message other than [`Message::EncryptedScores`]; CKKS errors for scores made
    /// under other parameters ([`blindfold_ckks::Error::ParameterMismatch`]) or malformed
    /// bytes. A refused message changes nothing.
    pub fn receive(&mut self, holder: usize, msg: &Message) -> Result<()> {
        let holders = self.scores.len();
        let slot = self
            .scores
            .get_mut(holder)
            .ok_or_else(|| ProtocolError::Misuse(format!("holder {holder} of an ensemble of {holders}")))?;
        let Message::EncryptedScores { key_id, ciphertext } = msg else {
            return Err(ProtocolError::Peer(format!(
                "the coordinator accepts only EncryptedScores, got {}",
                msg.kind()
            )));
        };
        if slot.is_some() {
            return Err(ProtocolError::Peer(format!("holder {holder} already sent its scores")));
        }
        if self.key_id.is_some_and(|k| k != *key_id) {
            return Err(ProtocolError::Peer(format!(
                "holder {holder} computed with evaluation keys {key_id}, the others with {}",
                self.key_id.expect("checked")
            )));
        }
        *slot = Some(ciphertext.decode(&self.ctx)?);
        self.key_id = Some(*key_id);
        Ok(())
    }

    /// Combines the scores received so far and resets for the next image. Holders that sent
    /// nothing are listed in [`Aggregated::missing`]; the result is never silently partial.
    ///
    /// # Errors
    /// [`ProtocolError::Misuse`] if no holder replied or the aggregation's evaluation keys are
    /// missing; [`ProtocolError::Config`] if the scores arrive too low for the aggregation; CKKS errors if the holders' scores
    /// differ in level or scale (holders compiled for other settings).
    pub fn aggregate(&mut self, aggregation: Aggregation) -> Result<Aggregated> {
        let holders = self.scores.len();
        let received = std::mem::replace(&mut self.scores, vec![None; holders]);
        let key_id = self.key_id.take();
        let (mut contributors, mut missing) = (Vec::new(), Vec::new());
        let mut cts = Vec::new();
        for (h, s) in received.into_iter().enumerate() {
            match s {
                Some(ct) => {
                    contributors.push(h);
                    cts.push(ct);
                }
                None => missing.push(h),
            }
        }
        let Some(key_id) = key_id.filter(|_| !cts.is_empty()) else {
            return Err(ProtocolError::Misuse("no model holder sent scores".into()));
        };
        let level = cts[0].level();
        let declared = key_requests(&self.keys_of(aggregation, level)?, &self.ctx);
        let (rlk, gk) = match &self.keys {
            Some((r, g)) => (Some(r), Some(g)),
            None => (None, None),
        };
        let be = CkksBackend::with_keys(&self.eval, rlk, gk, &declared);
        let scores: Vec<(usize, Ciphertext)> = contributors.iter().copied().zip(cts).collect();
        let out = self.aggregator(aggregation)?.evaluate(&be, &scores).map_err(|e| self.refused(aggregation, e))?;
        let message = Message::EncryptedScores { key_id, ciphertext: Wire::new(&out, &self.ctx)? };
        Ok(Aggregated { message, contributors, missing })
    }

    fn slots(&self) -> usize {
        self.ctx.params().slots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inverse_line_interpolates_at_the_chebyshev_nodes() {
        let (lo, hi) = (8.0, 18.0);
        let [c0, c1] = chebyshev_inverse_linear(lo, hi);
        let half = 0.5 * (hi - lo) * std::f64::consts::FRAC_1_SQRT_2;
        for x in [13.0 - half, 13.0 + half] {
            assert!(((c0 + c1 * x) * x - 1.0).abs() < 1e-12, "node {x}");
        }
        // And it is a usable inverse over the whole interval.
        for x in [8.0, 10.0, 13.0, 16.0, 18.0] {
            assert!(((c0 + c1 * x) * x - 1.0).abs() < 0.15, "{x}: {}", (c0 + c1 * x) * x);
        }
    }

    /// The closed forms of the polynomial aggregations, for one holder's scores.
    fn softmax_closed_form(cal: &Calibration, h: usize, s: &[f64]) -> Vec<f64> {
        let e = cal.softmax_numerators(h, s).unwrap();
        let sum: f64 = e.iter().sum();
        let [c0, c1] = cal.softmax_inverse;
        e.iter().map(|v| c0 * v + c1 * (v * sum)).collect()
    }

    fn vote_closed_form(cal: &Calibration, h: usize, s: &[f64]) -> Vec<f64> {
        let r = cal.bound(h).unwrap();
        let c = s.len();
        let a: Vec<f64> = s.iter().map(|v| v / (2.0 * r)).collect();
        (0..c)
            .map(|j| {
                let rank: f64 = (1..c)
                    .map(|k| {
                        let d = a[j] - a[(j + k) % c];
                        0.5 / (c - 1) as f64 + d * (3.0 - d * d) / (4 * (c - 1)) as f64
                    })
                    .sum();
                rank * rank
            })
            .collect()
    }

    #[test]
    fn the_twin_of_each_aggregation_is_its_closed_form() {
        let scores: Vec<Vec<Vec<f64>>> = (0..3)
            .map(|h| (0..40).map(|i| (0..10).map(|j| ((j * 7 + h * 3 + i * 5) % 11) as f64 - 5.0).collect()).collect())
            .collect();
        let labels: Vec<u8> = (0..40).map(|i| (i % 10) as u8).collect();
        let cal = Calibration::from_validation(&scores, &labels).unwrap();
        let (holders, image) = (vec![0usize, 2], 7);
        let s: Vec<&[f64]> = holders.iter().map(|&h| scores[h][image].as_slice()).collect();
        let mean = |f: &dyn Fn(usize, &[f64]) -> Vec<f64>, weight: &dyn Fn(usize) -> f64| -> Vec<f64> {
            let total: f64 = holders.iter().map(|&h| weight(h)).sum();
            (0..10).map(|j| holders.iter().zip(&s).map(|(&h, v)| weight(h) * f(h, v)[j]).sum::<f64>() / total).collect()
        };
        let want = [
            (Aggregation::Mean, mean(&|_, v| v.to_vec(), &|_| 1.0)),
            (Aggregation::Weighted, mean(&|_, v| v.to_vec(), &|h| cal.weights[h])),
            (Aggregation::SoftmaxMean, mean(&|h, v| softmax_closed_form(&cal, h, v), &|_| 1.0)),
            (Aggregation::Vote, mean(&|h, v| vote_closed_form(&cal, h, v), &|_| 1.0)),
        ];
        for (agg, want) in want {
            let got = agg.apply_plain(&s, &holders, &cal).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12 * w.abs().max(1.0), "{agg}: twin {got:?} vs closed form {want:?}");
            }
        }
    }
}
