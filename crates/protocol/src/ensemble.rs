//! The coordinator of an encrypted ensemble: combines the encrypted scores of several model
//! holders into one encrypted prediction for the end user.

use crate::inference::{Message, PlanInfo, ProtocolError};
use blindfold_ckks::serialize::{deserialize, serialize};
use blindfold_ckks::{Ciphertext, Context, Evaluator};
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
}

impl Aggregation {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
        }
    }

    /// The same combination on plaintext score vectors (all of one length).
    ///
    /// # Panics
    /// If `scores` is empty.
    pub fn apply_plain(self, scores: &[&[f64]]) -> Vec<f64> {
        match self {
            Aggregation::Mean => {
                let mut out = vec![0f64; scores[0].len()];
                for s in scores {
                    out.iter_mut().zip(s.iter()).for_each(|(o, v)| *o += v);
                }
                out.iter().map(|v| v / scores.len() as f64).collect()
            }
        }
    }
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

/// The service coordinator. Holds the CKKS parameters and an evaluator, nothing secret: it
/// cannot be given a secret key or evaluation keys (it accepts only encrypted scores) and
/// never sees a plaintext.
pub struct Coordinator {
    ctx: Arc<Context>,
    eval: Evaluator,
    scores: Vec<Option<Ciphertext>>,
}

impl Coordinator {
    /// A coordinator for `holders` model holders that all serve the plan `info`.
    ///
    /// # Errors
    /// [`ProtocolError::Unexpected`] for no holders or an unknown preset; CKKS errors.
    pub fn new(info: &PlanInfo, holders: usize) -> Result<Self> {
        if holders == 0 {
            return Err(ProtocolError::Unexpected("an ensemble needs at least one model holder".into()));
        }
        let ctx = Context::new(&info.preset()?.parameters()?)?;
        Ok(Self { eval: Evaluator::new(&ctx), ctx, scores: vec![None; holders] })
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
    /// [`ProtocolError::Unexpected`] if no holder replied; CKKS errors if the holders' scores
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
        let Some((first, rest)) = cts.split_first() else {
            return Err(ProtocolError::Unexpected("no model holder sent scores".into()));
        };
        let out = match aggregation {
            Aggregation::Mean => {
                let mut sum = first.clone();
                for ct in rest {
                    self.eval.add_assign(&mut sum, ct)?;
                }
                self.eval.divide_exact(&mut sum, cts.len() as f64)?;
                sum
            }
        };
        let message = Message::EncryptedScores { ciphertext: serialize(&out, &self.ctx)?.to_vec() };
        Ok(Aggregated { message, contributors, missing })
    }
}
