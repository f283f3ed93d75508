//! Fixed-point encoding of real numbers as the integers FE works on (CryptoNN §V: two decimal
//! digits for pixels and weights; its follow-up NN-EMD used raw pixels and four digits).

use crate::{FeError, Result};

/// Real numbers as integers at a fixed scale: `v ↦ round(v · scale)`. Negative values are
/// negative integers (negative exponents in the group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    scale: u64,
}

/// Largest magnitude an encoded value may have (`2^53`: every such integer is an exact `f64`).
const MAX_ENCODED: f64 = 9_007_199_254_740_992.0;

impl FixedPoint {
    /// `digits` decimal digits: scale `10^digits`.
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] for more than 15 digits.
    pub fn decimal(digits: u32) -> Result<Self> {
        if digits > 15 {
            return Err(FeError::InvalidArgument(format!("{digits} decimal digits (at most 15)")));
        }
        Ok(Self { scale: 10u64.pow(digits) })
    }

    /// An integer scale (1 encodes integers such as raw pixels as they are).
    ///
    /// # Errors
    /// [`FeError::InvalidArgument`] for scale 0.
    pub fn with_scale(scale: u64) -> Result<Self> {
        if scale == 0 {
            return Err(FeError::InvalidArgument("scale 0".into()));
        }
        Ok(Self { scale })
    }

    /// The scale.
    pub fn scale(self) -> u64 {
        self.scale
    }

    /// `round(v · scale)`.
    ///
    /// # Errors
    /// [`FeError::Encoding`] for a value that is not finite or whose encoding exceeds 2^53.
    pub fn encode(self, v: f64) -> Result<i64> {
        let x = (v * self.scale as f64).round();
        if !x.is_finite() || x.abs() > MAX_ENCODED {
            return Err(FeError::Encoding(format!("{v} at scale {}", self.scale)));
        }
        Ok(x as i64)
    }

    /// Encodes every value of `v`.
    ///
    /// # Errors
    /// As [`FixedPoint::encode`].
    pub fn encode_all(self, v: &[f64]) -> Result<Vec<i64>> {
        v.iter().map(|&x| self.encode(x)).collect()
    }

    /// The real number an encoded value stands for.
    pub fn decode(self, x: i64) -> f64 {
        x as f64 / self.scale as f64
    }

    /// The real number an inner product of a vector at this scale with one at `other`'s
    /// scale stands for: `x / (scale · other.scale)`.
    pub fn decode_product(self, x: i64, other: FixedPoint) -> f64 {
        x as f64 / (self.scale as f64 * other.scale as f64)
    }
}
