//! Polynomial approximations of ReLU for encrypted inference.
//!
//! `relu-polyD` is the least-squares fit of degree `D` of `max(x, 0)` on an interval `[lo, hi]`
//! under the uniform weight, computed in closed form: on `t = (x − m)/r ∈ [−1, 1]` (`m`, `r` the
//! interval's centre and half-width) the normal equations have the Hilbert-like Gram matrix
//! `∫ t^{j+k} dt` and the right-hand side `∫_{t_0}^{1} t^j (m + r t) dt` with `t_0 = −m/r`
//! clamped to `[−1, 1]`. On `[−1, 1]` the fit of degree 2 is `3/32 + x/2 + 15x²/32` (the
//! Legendre expansion of `|x|`, halved, plus `x/2`). The interval is the pre-activation range
//! observed in training ([`crate::train`] refits it every epoch, with the polynomial in the
//! loop), so the fit is accurate where the values actually fall.

use crate::error::{Error, Result};

/// Highest degree of a ReLU fit.
pub const MAX_RELU_DEGREE: usize = 4;

/// Power-basis coefficients (constant first, `degree + 1` of them) of the least-squares fit of
/// ReLU of `degree` on `[lo, hi]`.
///
/// # Errors
/// [`Error::Architecture`] for a degree outside `1..=4` or an interval that is empty, not
/// finite, or does not contain 0 strictly inside (ReLU would be linear on it).
pub fn relu_fit(degree: usize, lo: f64, hi: f64) -> Result<Vec<f64>> {
    if !(1..=MAX_RELU_DEGREE).contains(&degree) {
        return Err(Error::Architecture(format!("ReLU fits of degree 1 to {MAX_RELU_DEGREE}, not {degree}")));
    }
    if !(lo.is_finite() && hi.is_finite() && lo < 0.0 && hi > 0.0) {
        return Err(Error::Architecture(format!("ReLU fit range [{lo}, {hi}] must be finite and contain 0 inside")));
    }
    let (m, r) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    let t0 = (-m / r).clamp(-1.0, 1.0);
    let n = degree + 1;
    // Normal equations G a = b on t ∈ [−1, 1].
    let mut g = vec![vec![0f64; n + 1]; n];
    for (j, row) in g.iter_mut().enumerate() {
        for (k, v) in row.iter_mut().take(n).enumerate() {
            *v = if (j + k) % 2 == 0 { 2.0 / (j + k + 1) as f64 } else { 0.0 };
        }
        let p = |e: usize| (1.0 - t0.powi(e as i32)) / e as f64;
        row[n] = m * p(j + 1) + r * p(j + 2);
    }
    // Gaussian elimination with partial pivoting (the matrix is symmetric positive definite).
    for c in 0..n {
        let pivot = (c..n).max_by(|&a, &b| g[a][c].abs().total_cmp(&g[b][c].abs())).expect("non-empty");
        g.swap(c, pivot);
        for rr in 0..n {
            if rr != c {
                let f = g[rr][c] / g[c][c];
                for k in c..=n {
                    g[rr][k] -= f * g[c][k];
                }
            }
        }
    }
    let a: Vec<f64> = (0..n).map(|j| g[j][n] / g[j][j]).collect();
    // q(t) = Σ a_k t^k with t = (x − m)/r, expanded in powers of x.
    let mut coeffs = vec![0f64; n];
    for (k, &ak) in a.iter().enumerate() {
        // ((x − m)/r)^k = r^{−k} Σ_i C(k, i) x^i (−m)^{k−i}
        let mut binom = 1.0;
        for i in 0..=k {
            coeffs[i] += ak * binom * (-m).powi((k - i) as i32) / r.powi(k as i32);
            binom = binom * (k - i) as f64 / (i + 1) as f64;
        }
    }
    Ok(coeffs)
}

/// `Σ_i c_i x^i`.
pub fn eval_poly(coeffs: &[f64], x: f64) -> f64 {
    coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degree_two_on_the_unit_interval_is_the_closed_form() {
        let c = relu_fit(2, -1.0, 1.0).unwrap();
        for (got, want) in c.iter().zip([3.0 / 32.0, 0.5, 15.0 / 32.0]) {
            assert!((got - want).abs() < 1e-12, "{c:?}");
        }
        // Scaling: ReLU(x) = B·ReLU(x/B), so the fit on [−B, B] is B·q(x/B).
        let b = relu_fit(2, -4.0, 4.0).unwrap();
        assert!((b[0] - 4.0 * 3.0 / 32.0).abs() < 1e-12 && (b[2] - 15.0 / 128.0).abs() < 1e-12, "{b:?}");
    }

    #[test]
    fn fits_minimize_the_squared_error() {
        for degree in 1..=4 {
            let (lo, hi) = (-3.0, 5.0);
            let c = relu_fit(degree, lo, hi).unwrap();
            let err = |c: &[f64]| -> f64 {
                (0..=4000)
                    .map(|i| lo + (hi - lo) * i as f64 / 4000.0)
                    .map(|x| (eval_poly(c, x) - x.max(0.0)).powi(2))
                    .sum()
            };
            let best = err(&c);
            // Any perturbation of a coefficient increases the error.
            for k in 0..=degree {
                for d in [-1e-3, 1e-3] {
                    let mut p = c.clone();
                    p[k] += d;
                    assert!(err(&p) > best, "degree {degree}: coefficient {k} is not optimal");
                }
            }
            // Higher degrees fit better.
            if degree > 1 {
                assert!(best < err(&relu_fit(degree - 1, lo, hi).unwrap()) + 1e-9);
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(relu_fit(2, 1.0, 3.0).is_err());
        assert!(relu_fit(2, -1.0, f64::INFINITY).is_err());
        assert!(relu_fit(5, -1.0, 1.0).is_err());
        assert!(relu_fit(0, -1.0, 1.0).is_err());
    }
}
