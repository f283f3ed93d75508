//! Polynomial activations at minimum depth.
//!
//! The stage evaluates a *monic* polynomial `x^d + c_{d-1} x^{d-1} + … + c_0` slot-wise: the
//! compiler moves the activation's leading coefficient into the weights of the linear stages
//! around it (`blindfold_nn::compile`), which costs nothing and saves the level a constant
//! multiplication would take. Depth `ceil(log2 d)`:
//!
//! * `d = 1`: `x + c_0` (no level);
//! * `d = 2`: `x·(x + c_1) + c_0` (one product, one level);
//! * `d = 3`: `x·(x² + c_2 x + c_1) + c_0` (two levels: `x²` and `c_2 x` share the first);
//! * `d = 4`: `x²·(x² + c_3 x + c_2) + (c_1 x + c_0)` (two levels).
//!
//! This is the Paterson–Stockmeyer split with baby steps `{x, x²}` (Paterson–Stockmeyer,
//! SIAM J. Comput. 1973; as in Lattigo's polynomial evaluator, with constants folded into
//! scale-matched constant products, so no level is spent on them).

use crate::backend::Backend;
use crate::error::{CircuitError, Result};
use crate::requirements::StageCost;

/// Highest degree the stage evaluates.
pub const MAX_DEGREE: usize = 4;

/// A monic polynomial activation (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct PolynomialActivation {
    level: usize,
    /// `c_0 … c_{d-1}`; the leading coefficient 1 is implied.
    lower: Vec<f64>,
}

impl PolynomialActivation {
    /// The monic polynomial with lower coefficients `lower` (`c_0` first; its degree is
    /// `lower.len()`), on ciphertexts at `level`.
    ///
    /// # Errors
    /// [`CircuitError::Unsupported`] for degree 0 or above [`MAX_DEGREE`], or a non-finite
    /// coefficient.
    pub fn monic(lower: Vec<f64>, level: usize) -> Result<Self> {
        if lower.is_empty() || lower.len() > MAX_DEGREE || lower.iter().any(|c| !c.is_finite()) {
            return Err(CircuitError::Unsupported(format!(
                "polynomial activations of degree 1 to {MAX_DEGREE} with finite coefficients (got degree {})",
                lower.len()
            )));
        }
        Ok(Self { level, lower })
    }

    /// Degree.
    pub fn degree(&self) -> usize {
        self.lower.len()
    }

    /// Levels consumed: `ceil(log2 d)`.
    pub fn depth(&self) -> usize {
        match self.degree() {
            1 => 0,
            2 => 1,
            _ => 2,
        }
    }

    /// Input level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The lower coefficients `c_0 … c_{d−1}` (the leading one is 1).
    pub fn lower(&self) -> &[f64] {
        &self.lower
    }

    /// Whether the polynomial is `x²`.
    pub fn is_square(&self) -> bool {
        self.lower == [0.0, 0.0]
    }

    /// The monic polynomial at `x`.
    pub fn apply(&self, x: f64) -> f64 {
        self.lower.iter().rev().fold(1.0, |acc, &c| acc * x + c)
    }

    /// What the stage costs.
    pub fn cost(&self) -> StageCost {
        let c = &self.lower;
        let name = match c.len() {
            _ if self.is_square() => "x²".to_string(),
            d => format!("monic polynomial of degree {d}"),
        };
        StageCost {
            name,
            levels: self.depth(),
            rotations: 0,
            hoisted_rotations: 0,
            plain_products: 0,
            products: match c.len() {
                1 => 0,
                2 => 1,
                _ => 2,
            },
        }
    }

    /// Evaluates the polynomial slot-wise.
    ///
    /// # Errors
    /// Backend errors.
    pub fn evaluate<B: Backend>(&self, be: &B, x: &B::Value) -> Result<B::Value> {
        let c = &self.lower;
        let with_const = |v: B::Value, k: f64| if k == 0.0 { Ok(v) } else { be.add_const(&v, k) };
        match c.len() {
            1 => be.add_const(x, c[0]),
            2 => {
                let y = if c[1] == 0.0 { be.square_rescale(x)? } else { be.mul_rescale(x, &be.add_const(x, c[1])?)? };
                with_const(y, c[0])
            }
            d => {
                // u = x² + c_{d-1} x + c_{d-2}, one level below x.
                let x2 = be.square_rescale(x)?;
                let mut u = x2.clone();
                if c[d - 1] != 0.0 {
                    u = be.add(&u, &be.mul_const_to(x, c[d - 1], be.scale_of(&x2))?)?;
                }
                u = with_const(u, c[d - 2])?;
                if d == 3 {
                    return with_const(be.mul_rescale(x, &u)?, c[0]);
                }
                let y = be.mul_rescale(&x2, &u)?;
                if c[1] == 0.0 {
                    return with_const(y, c[0]);
                }
                let lin = be.drop_to(&be.mul_const_to(x, c[1], be.scale_of(&y))?, &y)?;
                with_const(be.add(&y, &lin)?, c[0])
            }
        }
    }
}
