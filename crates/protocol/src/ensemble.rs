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

use crate::inference::{Message, PlanInfo, ProtocolError};
use blindfold_ckks::serialize::{deserialize, serialize};
use blindfold_ckks::{Ciphertext, Context, Encoder, Evaluator, GaloisKeys, RelinearizationKey};
use blindfold_tensor::RotationKey;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::Arc;

type Result<T> = std::result::Result<T, ProtocolError>;

/// Slots given to one holder's scores in the packed polynomial aggregations.
const WINDOW: usize = 32;
/// Regions of the vote's packed pairwise differences (one per shift `1..C`, padded).
const VOTE_REGIONS: usize = 16;
/// Levels the polynomial aggregations consume after the network.
const POLYNOMIAL_DEPTH: usize = 4;

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
            Aggregation::SoftmaxMean | Aggregation::Vote => POLYNOMIAL_DEPTH,
        }
    }

    /// The same combination on plaintext score vectors: `scores[i]` (one length, the number
    /// of classes) comes from holder `holders[i]`, whose constants are read from `cal`. The
    /// polynomial aggregations evaluate exactly the polynomials the coordinator evaluates.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for no scores, mismatched lengths, or a holder the
    /// calibration does not cover.
    pub fn apply_plain(self, scores: &[&[f64]], holders: &[usize], cal: &Calibration) -> Result<Vec<f64>> {
        let classes = scores.first().map_or(0, |s| s.len());
        if scores.is_empty() || scores.len() != holders.len() || scores.iter().any(|s| s.len() != classes) {
            return Err(ProtocolError::Unexpected("apply_plain: one score vector of one length per holder".into()));
        }
        let mut out = vec![0f64; classes];
        let mut total = 0.0;
        for (s, &h) in scores.iter().zip(holders) {
            let (weight, term) = match self {
                Aggregation::Mean => (1.0, s.to_vec()),
                Aggregation::Weighted => (cal.weight(h)?, s.to_vec()),
                Aggregation::SoftmaxMean => (1.0, cal.softmax_plain(h, s)?),
                Aggregation::Vote => (1.0, cal.vote_plain(h, s)?),
            };
            out.iter_mut().zip(&term).for_each(|(o, t)| *o += weight * t);
            total += weight;
        }
        out.iter_mut().for_each(|o| *o /= total);
        Ok(out)
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
    /// [`ProtocolError::Unexpected`] for no holders, no images, ragged input, or scores
    /// that are all zero.
    pub fn from_validation(scores: &[Vec<Vec<f64>>], labels: &[u8]) -> Result<Self> {
        let bad =
            || ProtocolError::Unexpected("calibration needs every holder's scores for every validation image".into());
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
                return Err(ProtocolError::Unexpected(format!("holder {h}: every validation score is zero")));
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
        self.weights.get(h).copied().ok_or_else(|| ProtocolError::Unexpected(format!("no weight for holder {h}")))
    }

    fn bound(&self, h: usize) -> Result<f64> {
        self.score_bounds.get(h).copied().ok_or_else(|| {
            ProtocolError::Unexpected(format!(
                "no score bound for holder {h}: softmax-mean and vote need a calibration (Calibration::from_validation)"
            ))
        })
    }

    /// `(1 + s_j/R_h)^2`.
    fn softmax_numerators(&self, h: usize, s: &[f64]) -> Result<Vec<f64>> {
        let r = self.bound(h)?;
        Ok(s.iter().map(|v| (1.0 + v / r).powi(2)).collect())
    }

    fn softmax_plain(&self, h: usize, s: &[f64]) -> Result<Vec<f64>> {
        let e = self.softmax_numerators(h, s)?;
        let sum: f64 = e.iter().sum();
        let [c0, c1] = self.softmax_inverse;
        Ok(e.iter().map(|v| c0 * v + c1 * (v * sum)).collect())
    }

    fn vote_plain(&self, h: usize, s: &[f64]) -> Result<Vec<f64>> {
        let r = self.bound(h)?;
        let c = s.len();
        let a: Vec<f64> = s.iter().map(|v| v / (2.0 * r)).collect();
        Ok((0..c)
            .map(|j| {
                let rank: f64 = (1..c)
                    .map(|k| {
                        let d = a[j] - a[(j + k) % c];
                        0.5 / (c - 1) as f64 + d * (3.0 - d * d) / (4 * (c - 1)) as f64
                    })
                    .sum();
                rank * rank
            })
            .collect())
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
    encoder: Encoder,
    cal: Calibration,
    classes: usize,
    /// Level at which the holders' scores arrive (top level minus the network's depth).
    score_level: usize,
    keys: Option<(RelinearizationKey, GaloisKeys)>,
    scores: Vec<Option<Ciphertext>>,
}

impl Coordinator {
    /// A coordinator for `holders` model holders that all serve the plan `info`, with equal
    /// weights ([`Calibration::equal`]).
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for no holders or an unknown preset; CKKS errors.
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
            return Err(ProtocolError::Unexpected("an ensemble needs at least one model holder".into()));
        }
        if !cal.score_bounds.is_empty() && cal.score_bounds.len() != holders {
            return Err(ProtocolError::Unexpected("calibration: one score bound per holder".into()));
        }
        let ctx = Context::new(&info.parameters()?)?;
        let classes = info.arch.classes()?;
        let score_level = ctx.max_level().saturating_sub(info.depth);
        Ok(Self {
            eval: Evaluator::new(&ctx),
            encoder: Encoder::new(&ctx),
            ctx,
            cal,
            classes,
            score_level,
            keys: None,
            scores: vec![None; holders],
        })
    }

    /// The public constants in use.
    pub fn calibration(&self) -> &Calibration {
        &self.cal
    }

    /// Rotation steps, each with a level it is used at, that the end user must generate Galois
    /// keys for, with a relinearization key, so that the coordinator can run `aggregations`
    /// ([`crate::Client::evaluation_keys_for`]; a step listed twice gets one key, at the higher
    /// level). Empty for the linear ones.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] if an aggregation needs more levels than the scores
    /// arrive with, or the holders or classes do not fit the packed layout.
    pub fn rotation_keys(&self, aggregations: &[Aggregation]) -> Result<Vec<RotationKey>> {
        let mut steps: Vec<(i64, usize)> = Vec::new();
        for &agg in aggregations {
            self.check_depth(agg, self.score_level)?;
            if agg.depth() < POLYNOMIAL_DEPTH {
                continue;
            }
            self.check_layout()?;
            let l = self.score_level;
            let k = self.scores.len() as i64;
            let w = WINDOW as i64;
            steps.extend((1..k).map(|h| (-w * h, l - 1)));
            steps.extend((1..k).map(|h| (w * h, l - POLYNOMIAL_DEPTH)));
            let c = self.classes as i64;
            match agg {
                Aggregation::SoftmaxMean => {
                    steps.push((-c, l - 2));
                    steps.extend(doubling_steps(self.classes, 1).into_iter().map(|s| (s, l - 2)));
                }
                _ => {
                    let r = self.region() as i64;
                    let replicas =
                        doubling_steps(self.classes - 1, -r).into_iter().chain(doubling_steps(self.classes - 1, 1 - r));
                    steps.extend([(-c, l - 1), (1, l - 1)].into_iter().chain(replicas.map(|s| (s, l - 1))));
                    steps.extend((0..4).map(|b| (r << b, l - 3)));
                }
            }
        }
        Ok(steps.into_iter().map(|(step, level)| RotationKey { step, level }).collect())
    }

    /// Accepts the end user's public evaluation keys ([`Message::EvaluationKeys`]), needed by
    /// the polynomial aggregations.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for any other message; CKKS errors for keys of other
    /// parameters or malformed bytes.
    pub fn set_evaluation_keys(&mut self, msg: &Message) -> Result<()> {
        let Message::EvaluationKeys { relinearization, galois } = msg else {
            return Err(ProtocolError::Unexpected(format!("expected EvaluationKeys, got {}", msg.kind())));
        };
        let rlk: RelinearizationKey = deserialize(relinearization, &self.ctx)?;
        let gk: GaloisKeys = deserialize(galois, &self.ctx)?;
        self.keys = Some((rlk, gk));
        Ok(())
    }

    /// Accepts holder `holder`'s reply for the current image.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for an unknown holder, a second reply from one holder,
    /// or any message other than [`Message::EncryptedScores`]; CKKS errors for scores made
    /// under other parameters ([`blindfold_ckks::Error::ParameterMismatch`]) or malformed
    /// bytes. A refused message changes nothing.
    pub fn receive(&mut self, holder: usize, msg: &Message) -> Result<()> {
        let holders = self.scores.len();
        let slot = self
            .scores
            .get_mut(holder)
            .ok_or_else(|| ProtocolError::Unexpected(format!("holder {holder} of an ensemble of {holders}")))?;
        let Message::EncryptedScores { ciphertext } = msg else {
            return Err(ProtocolError::Unexpected(format!(
                "the coordinator accepts only EncryptedScores, got {}",
                msg.kind()
            )));
        };
        if slot.is_some() {
            return Err(ProtocolError::Unexpected(format!("holder {holder} already sent its scores")));
        }
        *slot = Some(deserialize(ciphertext, &self.ctx)?);
        Ok(())
    }

    /// Combines the scores received so far and resets for the next image. Holders that sent
    /// nothing are listed in [`Aggregated::missing`]; the result is never silently partial.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] if no holder replied, the scores arrive too low for the
    /// aggregation, or its evaluation keys are missing; CKKS errors if the holders' scores
    /// differ in level or scale (holders compiled for other settings).
    pub fn aggregate(&mut self, aggregation: Aggregation) -> Result<Aggregated> {
        let holders = self.scores.len();
        let received = std::mem::replace(&mut self.scores, vec![None; holders]);
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
        if cts.is_empty() {
            return Err(ProtocolError::Unexpected("no model holder sent scores".into()));
        }
        self.check_depth(aggregation, cts[0].level())?;
        let out = match aggregation {
            Aggregation::Mean => self.mean(&cts)?,
            Aggregation::Weighted => self.weighted(&cts, &contributors)?,
            Aggregation::SoftmaxMean => self.softmax_mean(&cts, &contributors)?,
            Aggregation::Vote => self.vote(&cts, &contributors)?,
        };
        let message = Message::EncryptedScores { ciphertext: serialize(&out, &self.ctx)?.to_vec() };
        Ok(Aggregated { message, contributors, missing })
    }

    fn check_depth(&self, agg: Aggregation, level: usize) -> Result<()> {
        if agg.depth() > level {
            return Err(ProtocolError::Unexpected(format!(
                "aggregation {agg} needs {} levels after the network, the scores arrive at level {level}: \
                 use a parameter preset with more levels (N16384_DEPTH9_128BIT)",
                agg.depth()
            )));
        }
        Ok(())
    }

    fn slots(&self) -> usize {
        self.ctx.params().slots()
    }

    /// Slots per region of the vote's packed differences.
    fn region(&self) -> usize {
        self.slots() / VOTE_REGIONS
    }

    fn check_layout(&self) -> Result<()> {
        let k = self.scores.len();
        if 2 * self.classes > WINDOW || self.classes < 2 || WINDOW * (k + 1) > self.region() {
            return Err(ProtocolError::Unexpected(format!(
                "softmax-mean and vote pack {k} holders of {} classes into windows of {WINDOW} slots: \
                 at most {} holders and 2..={} classes at this ring",
                self.classes,
                self.region() / WINDOW - 1,
                WINDOW / 2
            )));
        }
        Ok(())
    }

    fn keys(&self) -> Result<&(RelinearizationKey, GaloisKeys)> {
        self.keys.as_ref().ok_or_else(|| {
            ProtocolError::Unexpected("softmax-mean and vote need the end user's evaluation keys first".into())
        })
    }

    fn mean(&self, cts: &[Ciphertext]) -> Result<Ciphertext> {
        let mut sum = cts[0].clone();
        for ct in &cts[1..] {
            self.eval.add_assign(&mut sum, ct)?;
        }
        self.eval.divide_exact(&mut sum, cts.len() as f64)?;
        Ok(sum)
    }

    fn weighted(&self, cts: &[Ciphertext], contributors: &[usize]) -> Result<Ciphertext> {
        let weights = contributors.iter().map(|&h| self.cal.weight(h)).collect::<Result<Vec<_>>>()?;
        let total: f64 = weights.iter().sum();
        let q = self.prime(cts[0].level());
        let mut sum: Option<Ciphertext> = None;
        for (ct, w) in cts.iter().zip(&weights) {
            let term = self.eval.multiply_const(ct, w / total, q)?;
            match &mut sum {
                Some(s) => self.eval.add_assign(s, &term)?,
                None => sum = Some(term),
            }
        }
        Ok(self.eval.rescale(&sum.expect("at least one contributor"))?)
    }

    fn prime(&self, level: usize) -> f64 {
        self.ctx.params().q()[level] as f64
    }

    /// Contributor `i`'s scores in slots `0..C`, times `factors[i]`, the rest zeroed, moved to
    /// window `h`, all holders summed, at the default scale: one level.
    fn pack(&self, cts: &[Ciphertext], contributors: &[usize], factors: &[f64]) -> Result<Ciphertext> {
        let (_, gk) = self.keys()?;
        let level = cts[0].level();
        let masked = cts
            .iter()
            .zip(factors)
            .map(|(ct, &factor)| {
                let mut v = vec![0.0; self.slots()];
                v[..self.classes].fill(factor);
                // The plaintext's scale takes the scores' scale (whatever the network left)
                // to the default scale after the rescale.
                let scale = self.ctx.params().default_scale() * self.prime(level) / ct.scale();
                let pt = self.encoder.encode_real(&v, level, scale)?;
                Ok(self.eval.rescale(&self.eval.multiply_plain(ct, &pt)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Ciphertext> = masked.iter().collect();
        let steps: Vec<i64> = contributors.iter().map(|&h| -((WINDOW * h) as i64)).collect();
        Ok(self.eval.rotate_sum(&refs, &steps, gk)?)
    }

    /// The mean over windows: window `h` brought to slots `0..C` and summed, divided by the
    /// number of contributors.
    fn unpack_mean(&self, ct: &Ciphertext, contributors: &[usize]) -> Result<Ciphertext> {
        let (_, gk) = self.keys()?;
        let refs = vec![ct; contributors.len()];
        let steps: Vec<i64> = contributors.iter().map(|&h| (WINDOW * h) as i64).collect();
        let mut out = self.eval.rotate_sum(&refs, &steps, gk)?;
        self.eval.divide_exact(&mut out, contributors.len() as f64)?;
        Ok(out)
    }

    /// Plaintext holding `value` in the first `C` slots of every contributor's window.
    fn window_constant(
        &self,
        value: f64,
        contributors: &[usize],
        like: &Ciphertext,
    ) -> Result<blindfold_ckks::Plaintext> {
        let mut v = vec![0.0; self.slots()];
        for &h in contributors {
            v[WINDOW * h..WINDOW * h + self.classes].fill(value);
        }
        Ok(self.encoder.encode_real(&v, like.level(), like.scale())?)
    }

    fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (rlk, _) = self.keys()?;
        let level = a.level().min(b.level());
        let a = self.eval.drop_to_level(a, level)?;
        let b = self.eval.drop_to_level(b, level)?;
        Ok(self.eval.rescale(&self.eval.multiply_relin(&a, &b, rlk)?)?)
    }

    /// `value · a` one level down, at scale `target` exactly.
    fn times_const(&self, a: &Ciphertext, value: f64, target: f64) -> Result<Ciphertext> {
        let q = self.prime(a.level());
        Ok(self.eval.rescale(&self.eval.multiply_const(a, value, target * q / a.scale())?)?)
    }

    /// `c·a·b` two levels below `a` (`b` at most one level below it), at scale `target`
    /// exactly: the constant goes in at the scale that lands the product on `target`, so a
    /// small `c` costs no precision.
    fn scaled_product(&self, a: &Ciphertext, c: f64, b: &Ciphertext, target: f64) -> Result<Ciphertext> {
        let q = self.prime(a.level() - 1);
        self.multiply(&self.times_const(a, c, target * q / b.scale())?, b)
    }

    /// `Σ_{k<count} rot(ct, k·unit)` by doubling: about `2·log2(count)` rotations
    /// ([`doubling_plan`]).
    fn sum_of_rotations(&self, ct: &Ciphertext, count: usize, unit: i64) -> Result<Ciphertext> {
        let (_, gk) = self.keys()?;
        let (doubling, combine) = doubling_plan(count, unit);
        let mut blocks = vec![ct.clone()];
        for step in doubling {
            let last = blocks.last().expect("non-empty");
            blocks.push(self.eval.add(last, &self.eval.rotate(last, step, gk)?)?);
        }
        let mut acc: Option<Ciphertext> = None;
        for (b, step) in combine {
            let part = if step == 0 { blocks[b].clone() } else { self.eval.rotate(&blocks[b], step, gk)? };
            match &mut acc {
                Some(a) => self.eval.add_assign(a, &part)?,
                None => acc = Some(part),
            }
        }
        Ok(acc.expect("count >= 1"))
    }

    /// `ct + rot(ct, −C)`: slots `C..2C` of each window repeat `0..C` (the rest of the
    /// window must be zero).
    fn repeat_window(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        let (_, gk) = self.keys()?;
        Ok(self.eval.add(ct, &self.eval.rotate(ct, -(self.classes as i64), gk)?)?)
    }

    /// `numerator / R_h` for each contributor `h`.
    fn bound_factors(&self, contributors: &[usize], numerator: f64) -> Result<Vec<f64>> {
        contributors.iter().map(|&h| Ok(numerator / self.cal.bound(h)?)).collect()
    }

    fn softmax_mean(&self, cts: &[Ciphertext], contributors: &[usize]) -> Result<Ciphertext> {
        let factors = self.bound_factors(contributors, 1.0)?;
        let packed = self.pack(cts, contributors, &factors)?;
        let one = self.window_constant(1.0, contributors, &packed)?;
        let u = self.eval.add_plain(&packed, &one)?;
        let e = self.multiply(&u, &u)?;
        let sum = self.sum_of_rotations(&self.repeat_window(&e)?, self.classes, 1)?;
        // e·(c_0 + c_1 Σ) = c_0 e + (c_1 e)·Σ, both terms landing on the default scale.
        let [c0, c1] = self.cal.softmax_inverse;
        let target = self.ctx.params().default_scale();
        let mut p = self.scaled_product(&e, c1, &sum, target)?;
        let c0e = self.eval.drop_to_level(&self.times_const(&e, c0, target)?, p.level())?;
        self.eval.add_assign(&mut p, &c0e)?;
        self.unpack_mean(&p, contributors)
    }

    fn vote(&self, cts: &[Ciphertext], contributors: &[usize]) -> Result<Ciphertext> {
        let (_, gk) = self.keys()?;
        let factors = self.bound_factors(contributors, 0.5)?;
        let a = self.pack(cts, contributors, &factors)?;
        let shifts = self.classes - 1;
        let region = self.region() as i64;
        // Region k−1 of `d`: a_j − a_{(j+k) mod C}, for k = 1..C.
        let same = self.sum_of_rotations(&a, shifts, -region)?;
        let shifted = self.sum_of_rotations(&self.eval.rotate(&self.repeat_window(&a)?, 1, gk)?, shifts, 1 - region)?;
        let d = self.eval.sub(&same, &shifted)?;
        // step(d)/(C−1) = 1/(2(C−1)) + d(3 − d²)/(4(C−1)).
        let scale = 4.0 * shifts as f64;
        let d2 = self.multiply(&d, &d)?;
        let three = self.encoder.encode_real(&vec![3.0; self.slots()], d2.level(), d2.scale())?;
        let g = self.eval.add_plain(&self.eval.negate(&d2)?, &three)?;
        let mut t = self.scaled_product(&d, 1.0 / scale, &g, self.ctx.params().default_scale())?;
        let mut half = vec![0.0; self.slots()];
        half[..shifts * region as usize].fill(0.5 / shifts as f64);
        let half = self.encoder.encode_real(&half, t.level(), t.scale())?;
        self.eval.add_plain_assign(&mut t, &half)?;
        // Rank: the regions summed into region 0.
        for b in (0..4).rev() {
            let r = self.eval.rotate(&t, region << b, gk)?;
            self.eval.add_assign(&mut t, &r)?;
        }
        self.unpack_mean(&self.multiply(&t, &t)?, contributors)
    }
}

/// How [`Coordinator::sum_of_rotations`] builds `Σ_{k<count} rot(ct, k·unit)`: the doubling
/// steps (block `b+1` = block `b` + its rotation by `2^b·unit`, so block `b` sums `2^b` copies),
/// then, per set bit `b` of `count`, block `b` rotated by the copies already placed.
fn doubling_plan(count: usize, unit: i64) -> (Vec<i64>, Vec<(usize, i64)>) {
    let mut doubling = Vec::new();
    while 1usize << (doubling.len() + 1) <= count {
        doubling.push(unit * (1i64 << doubling.len()));
    }
    let mut combine = Vec::new();
    let mut placed = 0i64;
    for b in (0..=doubling.len()).rev() {
        if count & (1 << b) != 0 {
            combine.push((b, placed * unit));
            placed += 1 << b;
        }
    }
    (doubling, combine)
}

/// The rotation steps [`doubling_plan`] uses.
fn doubling_steps(count: usize, unit: i64) -> Vec<i64> {
    let (doubling, combine) = doubling_plan(count, unit);
    doubling.into_iter().chain(combine.into_iter().map(|(_, s)| s).filter(|&s| s != 0)).collect()
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

    #[test]
    fn the_doubling_plan_places_every_copy_once() {
        assert_eq!(doubling_steps(10, 1), vec![1, 2, 4, 8]);
        assert_eq!(doubling_steps(16, 1), vec![1, 2, 4, 8]);
        assert_eq!(doubling_steps(3, 1), vec![1, 2]);
        assert_eq!(doubling_steps(9, -100), vec![-100, -200, -400, -800]);
        // Follow the plan on copy offsets: every k < count exactly once.
        for count in 1..40 {
            let (doubling, combine) = doubling_plan(count, 1);
            let mut blocks = vec![vec![0i64]];
            for step in doubling {
                let last = blocks.last().unwrap().clone();
                blocks.push(last.iter().copied().chain(last.iter().map(|k| k + step)).collect());
            }
            let mut all: Vec<i64> = combine.iter().flat_map(|&(b, s)| blocks[b].iter().map(move |k| k + s)).collect();
            all.sort();
            assert_eq!(all, (0..count as i64).collect::<Vec<_>>(), "count {count}");
        }
    }
}
