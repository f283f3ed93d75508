//! Polynomials in the Chebyshev basis and their homomorphic evaluation with exact scale
//! management (Bossuat–Mouchet–Troncoso-Pastoriza–Hubaux, Eurocrypt 2021, §4.2: baby steps
//! `T_1 … T_{m-1}`, giant steps `T_m, T_{2m}, T_{4m} …`, recursive division by the giant steps).

use crate::error::{Error, Result};
use crate::evaluator::Evaluator;
use crate::keys::RelinearizationKey;
use crate::types::Ciphertext;
use std::collections::BTreeMap;

/// `p(x) = Σ_i c_i T_i(x)` on `[-1, 1]`, `T_i` the Chebyshev polynomials of the first kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ChebyshevPolynomial {
    coeffs: Vec<f64>,
}

impl ChebyshevPolynomial {
    /// From coefficients `c_0, c_1, …` (trailing zeros dropped).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no coefficient or a non-finite one.
    pub fn new(mut coeffs: Vec<f64>) -> Result<Self> {
        if coeffs.is_empty() || coeffs.iter().any(|c| !c.is_finite()) {
            return Err(Error::InvalidArgument("a polynomial needs finite coefficients".into()));
        }
        while coeffs.len() > 1 && coeffs.last() == Some(&0.0) {
            coeffs.pop();
        }
        Ok(Self { coeffs })
    }

    /// The interpolant of `f` of degree `degree` at the `degree + 1` Chebyshev nodes of the first
    /// kind on `[-1, 1]` (near-minimax for smooth `f`; Trefethen, *Approximation Theory and
    /// Approximation Practice*, ch. 3–4).
    pub fn interpolate(f: impl Fn(f64) -> f64, degree: usize) -> Self {
        let n = degree + 1;
        let nodes: Vec<f64> = (0..n).map(|k| (std::f64::consts::PI * (k as f64 + 0.5) / n as f64).cos()).collect();
        let values: Vec<f64> = nodes.iter().map(|&x| f(x)).collect();
        let coeffs = (0..n)
            .map(|j| {
                let s: f64 = (0..n)
                    .map(|k| values[k] * (std::f64::consts::PI * j as f64 * (k as f64 + 0.5) / n as f64).cos())
                    .sum();
                s * if j == 0 { 1.0 } else { 2.0 } / n as f64
            })
            .collect();
        Self { coeffs }
    }

    /// The coefficients `c_0, c_1, …`.
    pub fn coefficients(&self) -> &[f64] {
        &self.coeffs
    }

    /// Degree.
    pub fn degree(&self) -> usize {
        self.coeffs.len() - 1
    }

    /// `p(x)` (Clenshaw's recurrence).
    pub fn evaluate(&self, x: f64) -> f64 {
        let (mut b1, mut b2) = (0.0, 0.0);
        for &c in self.coeffs[1..].iter().rev() {
            let b = 2.0 * x * b1 - b2 + c;
            b2 = b1;
            b1 = b;
        }
        x * b1 - b2 + self.coeffs[0]
    }

    /// Levels [`Evaluator::evaluate_chebyshev`] consumes: `ceil(log2(degree + 1))` (at least
    /// one), whatever the baby steps (they change the number of products only).
    pub fn depth(&self) -> usize {
        depth(&self.coeffs, 2)
    }
}

/// Level cost of building `T_i` from `T_1 = x`.
fn power_depth(i: usize) -> usize {
    if i <= 1 {
        0
    } else {
        (usize::BITS - (i - 1).leading_zeros()) as usize
    }
}

fn degree_of(c: &[f64]) -> usize {
    c.iter().rposition(|&x| x != 0.0).unwrap_or(0)
}

/// `p = q·T_m + r` for `m` a power of two with `m ≤ deg p < 2m`, from
/// `T_i = 2·T_m·T_{i-m} - T_{2m-i}` (`i > m`).
fn divide(c: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let d = degree_of(c);
    let mut q = vec![0.0; d - m + 1];
    let mut r: Vec<f64> = c[..m].to_vec();
    q[0] = c[m];
    for i in m + 1..=d {
        q[i - m] = 2.0 * c[i];
        r[2 * m - i] -= c[i];
    }
    (q, r)
}

fn depth(c: &[f64], baby: usize) -> usize {
    let d = degree_of(c);
    if d < baby {
        // Σ c_i T_i, one level for the constants.
        return (1..=d).filter(|&i| c[i] != 0.0).map(power_depth).max().unwrap_or(0) + 1;
    }
    let m = 1usize << (usize::BITS - 1 - d.leading_zeros());
    let (q, r) = divide(c, m);
    (depth(&q, baby).max(power_depth(m)) + 1).max(depth(&r, baby))
}

/// The powers `T_i(x)` computed so far, each at its own level and scale.
struct Powers<'a> {
    eval: &'a Evaluator,
    rlk: &'a RelinearizationKey,
    t: BTreeMap<usize, Ciphertext>,
}

impl Powers<'_> {
    fn get(&mut self, i: usize) -> Result<&Ciphertext> {
        self.build(i)?;
        Ok(&self.t[&i])
    }

    /// `T_i = 2·T_a·T_b - T_{a-b}`, `a` the largest power of two below `i` (or `a = b = i/2`):
    /// level `ceil(log2 i)` below `x`. `T_{a-b}` is brought to the product's scale by an
    /// integer multiple before the one rescale.
    fn build(&mut self, i: usize) -> Result<()> {
        if self.t.contains_key(&i) {
            return Ok(());
        }
        let a = if i.is_power_of_two() { i / 2 } else { 1 << (usize::BITS - 1 - i.leading_zeros()) };
        let b = i - a;
        self.build(a)?;
        self.build(b)?;
        let e = self.eval;
        let (ta, tb) = (&self.t[&a], &self.t[&b]);
        let level = ta.level.min(tb.level);
        let mut prod = e.multiply(&e.drop_to_level(ta, level)?, &e.drop_to_level(tb, level)?)?;
        prod = e.multiply_integer(&prod, 2)?;
        if a == b {
            e.add_const_assign(&mut prod, -1.0)?;
        } else {
            self.build(a - b)?;
            let t = &self.t[&(a - b)];
            let t = e.drop_to_level(t, level)?;
            let t = e.multiply_const(&t, 1.0, prod.scale / t.scale)?;
            e.sub_assign(&mut prod, &t)?;
        }
        e.relinearize_assign(&mut prod, self.rlk)?;
        e.rescale_assign(&mut prod)?;
        self.t.insert(i, prod);
        Ok(())
    }

    /// `Σ_i c_i T_i` at `level` with scale exactly `scale` (one rescale; every `T_i` used must
    /// lie above `level`).
    fn leaf(&mut self, c: &[f64], level: usize, scale: f64) -> Result<Ciphertext> {
        let e = self.eval;
        let q = e.context().moduli[level + 1].value() as f64;
        let target = scale * q;
        let mut acc: Option<Ciphertext> = None;
        for (i, &ci) in c.iter().enumerate().skip(1) {
            if ci == 0.0 {
                continue;
            }
            let t = e.drop_to_level(self.get(i)?, level + 1)?;
            let term = e.multiply_const(&t, ci, target / t.scale)?;
            match acc.as_mut() {
                Some(acc) => e.add_assign(acc, &term)?,
                None => acc = Some(term),
            }
        }
        let mut acc = match acc {
            Some(acc) => acc,
            None => {
                let t = e.drop_to_level(self.get(1)?, level + 1)?;
                e.multiply_const(&t, 0.0, target / t.scale)?
            }
        };
        e.add_const_assign(&mut acc, c[0])?;
        e.rescale_assign(&mut acc)?;
        Ok(acc)
    }

    /// `p` at `level` with scale exactly `scale`. A polynomial of degree below `baby` is one
    /// leaf (`Σ c_i T_i`, one rescale) when its powers lie above `level`; otherwise (on the
    /// division chain that sets the depth) it is divided further, down to degree-1 leaves,
    /// which keeps the depth at `ceil(log2(deg + 1))` for any `baby`.
    fn eval(&mut self, c: &[f64], level: usize, scale: f64, baby: usize) -> Result<Ciphertext> {
        let d = degree_of(c);
        let top = self.t[&1].level;
        let fits = (1..=d).filter(|&i| c[i] != 0.0).all(|i| top - power_depth(i) > level);
        if d <= 1 || (d < baby && fits) {
            return self.leaf(&c[..=d], level, scale);
        }
        let m = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let (q, r) = divide(c, m);
        let e = self.eval;
        let q_next = e.context().moduli[level + 1].value() as f64;
        let tm_scale = self.get(m)?.scale;
        let qct = self.eval(&q, level + 1, scale * q_next / tm_scale, baby)?;
        let tm = e.drop_to_level(self.get(m)?, level + 1)?;
        let mut out = e.multiply(&qct, &tm)?;
        e.relinearize_assign(&mut out, self.rlk)?;
        e.rescale_assign(&mut out)?;
        if degree_of(&r) > 0 {
            let rct = self.eval(&r, level, scale, baby)?;
            e.add_assign(&mut out, &rct)?;
        } else {
            e.add_const_assign(&mut out, r[0])?;
        }
        Ok(out)
    }
}

impl Evaluator {
    /// `p(x)` slot-wise for `x` with slots in `[-1, 1]` (real parts; the imaginary parts must be
    /// zero), baby steps `T_1 … T_{baby-1}` (`baby` a power of two ≥ 2: about `baby + deg/baby`
    /// ciphertext products instead of `deg/2` with `baby = 2`; the depth does not change).
    ///
    /// The result has scale exactly `scale` and level `x.level - p.depth()`.
    ///
    /// # Errors
    /// [`Error::LevelTooLow`] if `x` has fewer levels than the depth; [`Error::InvalidArgument`]
    /// for a `baby` that is not a power of two ≥ 2 or a non-positive `scale`;
    /// [`Error::CiphertextSize`] unless `x` has two polynomials.
    pub fn evaluate_chebyshev(
        &self,
        x: &Ciphertext,
        p: &ChebyshevPolynomial,
        scale: f64,
        baby: usize,
        rlk: &RelinearizationKey,
    ) -> Result<Ciphertext> {
        self.context().check_ciphertext(x)?;
        if !(baby.is_power_of_two() && baby >= 2 && scale.is_finite() && scale >= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "evaluate_chebyshev: baby = {baby} must be a power of two ≥ 2 and scale = {scale} at least 1"
            )));
        }
        if x.size() != 2 {
            return Err(Error::CiphertextSize { op: "evaluate_chebyshev", expected: 2, actual: x.size() });
        }
        let need = p.depth();
        if x.level < need {
            return Err(Error::LevelTooLow { op: "evaluate_chebyshev", needed: need, level: x.level });
        }
        let mut powers = Powers { eval: self, rlk, t: BTreeMap::from([(1, x.clone())]) };
        powers.eval(&p.coeffs, x.level - need, scale, baby)
    }
}
