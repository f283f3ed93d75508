//! Slot-wise linear maps given by their diagonals, evaluated baby-step giant-step with hoisted
//! rotations (Halevi–Shoup, CRYPTO 2014 and 2018; Bossuat et al., Eurocrypt 2021, §3).

use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::evaluator::Evaluator;
use crate::keys::GaloisKeys;
use crate::types::{Ciphertext, GaloisKeyRequest, Level, Plaintext};
use crate::Context;
use num_complex::Complex64;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A linear map `y = M·x` on the `n = N/2` complex slots, given by its nonzero diagonals:
/// `y[p] = Σ_d diag_d[p] · x[(p + d) mod n]` (diagonal `d` is read through a rotation of `x`
/// left by `d`).
///
/// Evaluation splits every offset `d` into a baby step `b = d mod n1` and a giant step
/// `g = d - b` (`n1` a power of two): the baby rotations of the input share one decomposition,
/// each giant step's inner sum is one fused plaintext dot product, and the giant rotations share
/// one ModDown (see [`Evaluator::rotate_sum`]). Cost: `|babies| - 1` hoisted rotations plus
/// `|giants| - 1` key switches, `#diagonals` plaintext products; one level.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTransform {
    slots: usize,
    diagonals: BTreeMap<usize, Vec<Complex64>>,
    baby: usize,
}

impl LinearTransform {
    /// A map on `slots` slots from its diagonals (offset in `0..slots` → `slots` values); the
    /// baby-step count `n1` is the power of two that needs the fewest rotations.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `slots` is not a power of two, there is no diagonal, an
    /// offset is not below `slots`, or a diagonal has another length or a non-finite value.
    pub fn new(slots: usize, diagonals: BTreeMap<usize, Vec<Complex64>>) -> Result<Self> {
        if !slots.is_power_of_two() || diagonals.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "a linear transform needs a power-of-two slot count and at least one diagonal (got {slots} slots, {} diagonals)",
                diagonals.len()
            )));
        }
        for (&d, v) in &diagonals {
            if d >= slots || v.len() != slots || v.iter().any(|c| !(c.re.is_finite() && c.im.is_finite())) {
                return Err(Error::InvalidArgument(format!(
                    "diagonal {d}: offsets must be below {slots}, with {slots} finite values"
                )));
            }
        }
        let cost = |n1: usize| {
            let babies: std::collections::BTreeSet<usize> = diagonals.keys().map(|d| d % n1).collect();
            let giants: std::collections::BTreeSet<usize> = diagonals.keys().map(|d| d - d % n1).collect();
            babies.len() + giants.len()
        };
        let baby =
            (0..=slots.trailing_zeros()).map(|k| 1usize << k).min_by_key(|&n1| (cost(n1), n1)).expect("slots ≥ 1");
        Ok(Self { slots, diagonals, baby })
    }

    /// Number of slots the map acts on.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The diagonals, offset → values.
    pub fn diagonals(&self) -> &BTreeMap<usize, Vec<Complex64>> {
        &self.diagonals
    }

    /// `M·x` on plain values (`x.len() == slots`): the twin of the homomorphic evaluation.
    ///
    /// # Panics
    /// If `x` has another length than [`LinearTransform::slots`].
    pub fn apply(&self, x: &[Complex64]) -> Vec<Complex64> {
        assert_eq!(x.len(), self.slots, "input length");
        let n = self.slots;
        let mut y = vec![Complex64::new(0.0, 0.0); n];
        for (&d, diag) in &self.diagonals {
            for (p, out) in y.iter_mut().enumerate() {
                *out += diag[p] * x[(p + d) % n];
            }
        }
        y
    }

    /// `self ∘ other`: first `other`, then `self` (the diagonals of the product).
    ///
    /// # Panics
    /// If the slot counts differ.
    pub fn compose(&self, other: &LinearTransform) -> Result<LinearTransform> {
        assert_eq!(self.slots, other.slots, "slot counts");
        let n = self.slots;
        let mut out: BTreeMap<usize, Vec<Complex64>> = BTreeMap::new();
        for (&da, a) in &self.diagonals {
            for (&db, b) in &other.diagonals {
                let entry = out.entry((da + db) % n).or_insert_with(|| vec![Complex64::new(0.0, 0.0); n]);
                for (p, e) in entry.iter_mut().enumerate() {
                    *e += a[p] * b[(p + da) % n];
                }
            }
        }
        out.retain(|_, v| v.iter().any(|c| c.norm() > 0.0));
        LinearTransform::new(n, out)
    }

    /// The map on `slots` slots (a multiple of [`LinearTransform::slots`]) that applies
    /// `self` to every block of `self.slots()` consecutive slots of an input periodic with
    /// that period: the diagonals repeated, the offsets unchanged (a rotation by `d` of a
    /// periodic vector is the rotation of one period, repeated).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `slots` is a power of two at least
    /// [`LinearTransform::slots`].
    pub fn tiled(&self, slots: usize) -> Result<LinearTransform> {
        if !slots.is_power_of_two() || slots < self.slots {
            return Err(Error::InvalidArgument(format!("cannot tile a map on {} slots to {slots}", self.slots)));
        }
        let diagonals = self.diagonals.iter().map(|(&d, v)| (d, v.iter().copied().cycle().take(slots).collect()));
        LinearTransform::new(slots, diagonals.collect())
    }

    /// Row `p` of the map multiplied by `u[p]` (`diag(u)·M`).
    ///
    /// # Panics
    /// If `u` has another length than [`LinearTransform::slots`].
    pub fn rows_scaled(mut self, u: &[Complex64]) -> Self {
        assert_eq!(u.len(), self.slots, "row factors");
        self.diagonals.values_mut().for_each(|v| v.iter_mut().zip(u).for_each(|(x, f)| *x *= f));
        self
    }

    /// Multiplies every entry by `c`.
    pub fn scaled(mut self, c: f64) -> Self {
        self.diagonals.values_mut().flat_map(|v| v.iter_mut()).for_each(|x| *x *= c);
        self
    }

    fn split(&self) -> BTreeMap<usize, Vec<(usize, usize)>> {
        let mut giants: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for &d in self.diagonals.keys() {
            let b = d % self.baby;
            giants.entry(d - b).or_default().push((b, d));
        }
        giants
    }

    /// Rotation steps the evaluation uses (baby and giant steps, the identity left out).
    pub fn rotations(&self) -> Vec<i64> {
        let mut steps: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
        for (g, terms) in self.split() {
            steps.insert(g as i64);
            steps.extend(terms.iter().map(|&(b, _)| b as i64));
        }
        steps.remove(&0);
        steps.into_iter().collect()
    }

    /// The Galois keys an evaluation at `level` needs.
    pub fn key_requests(&self, ctx: &Context, level: Level) -> Vec<GaloisKeyRequest> {
        self.rotations().into_iter().map(|s| ctx.rotation_key_request(s, level)).collect()
    }

    /// Encodes the rotated diagonals at `level` with scale `scale` (usually the prime `q_level`,
    /// so that the rescale after the products leaves the ciphertext's scale unchanged).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the slot count is not the encoder's, or as
    /// [`Encoder::encode`].
    pub fn encode(&self, encoder: &Encoder, level: usize, scale: f64) -> Result<EncodedLinearTransform> {
        if encoder.slots() != self.slots {
            return Err(Error::InvalidArgument(format!(
                "a linear transform on {} slots cannot be encoded for {} slots",
                self.slots,
                encoder.slots()
            )));
        }
        let n = self.slots;
        let split = self.split();
        let mut babies: Vec<usize> = split.values().flatten().map(|&(b, _)| b).collect();
        babies.sort_unstable();
        babies.dedup();
        let groups = split
            .into_iter()
            .map(|(g, terms)| {
                let pts = terms
                    .into_iter()
                    .map(|(b, d)| {
                        // Rotated right by g: pt[q] = diag[q - g].
                        let diag = &self.diagonals[&d];
                        let rotated: Vec<Complex64> = (0..n).map(|q| diag[(q + n - g) % n]).collect();
                        let k = babies.binary_search(&b).expect("baby step listed");
                        let coeffs = encoder.embed(&rotated, scale)?;
                        let diagonal = if coeffs.iter().all(|c| c.abs() < 2f64.powi(62)) {
                            Diagonal::Coefficients(coeffs.iter().map(|&c| c as i64).collect())
                        } else {
                            Diagonal::Encoded(encoder.encode(&rotated, level, scale)?)
                        };
                        Ok((k, diagonal))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((g as i64, pts))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EncodedLinearTransform {
            encoder: encoder.clone(),
            babies: babies.into_iter().map(|b| b as i64).collect(),
            groups,
            level,
            scale,
        })
    }
}

/// One rotated diagonal: its integer coefficients (one word each, transformed per prime when
/// used: `l + 1` times smaller than the plaintext) or, if they do not fit in 62 bits, the
/// plaintext itself.
enum Diagonal {
    Coefficients(Vec<i64>),
    Encoded(Plaintext),
}

/// A [`LinearTransform`] encoded for one level and scale, ready for
/// [`Evaluator::linear_transform`]. The diagonals are held as integer coefficients and
/// transformed for the primes of the level one giant step at a time during the evaluation
/// (bootstrapping at N = 2^16 holds about 400 of them: 0.2 GB instead of 3.7 GB).
pub struct EncodedLinearTransform {
    encoder: Encoder,
    babies: Vec<i64>,
    /// Per giant step: the terms `(index into babies, rotated diagonal)`.
    groups: Vec<(i64, Vec<(usize, Diagonal)>)>,
    level: usize,
    scale: f64,
}

impl EncodedLinearTransform {
    /// The level the diagonals were encoded at (the input ciphertext's level).
    pub fn level(&self) -> usize {
        self.level
    }
    /// The scale the diagonals were encoded with.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl Evaluator {
    /// `M·x` for the encoded map `m` (baby-step giant-step, hoisted baby rotations, one shared
    /// ModDown for the giant rotations), rescaled: the result is at `level - 1` with scale
    /// `x.scale · m.scale / q_level`.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`] unless `x` is at the level `m` was encoded for;
    /// [`Error::MissingGaloisKey`], [`Error::CiphertextSize`].
    pub fn linear_transform(&self, x: &Ciphertext, m: &EncodedLinearTransform, gk: &GaloisKeys) -> Result<Ciphertext> {
        if x.level != m.level {
            return Err(Error::LevelMismatch { op: "linear_transform", lhs: x.level, rhs: m.level });
        }
        let rotated = self.rotate_hoisted(x, &m.babies, gk)?;
        let refs: Vec<&Ciphertext> = rotated.iter().collect();
        let inner = m
            .groups
            .iter()
            .map(|(_, terms)| {
                let pts: Vec<(usize, std::borrow::Cow<'_, Plaintext>)> = terms
                    .par_iter()
                    .map(|(k, d)| {
                        let pt = match d {
                            Diagonal::Coefficients(c) => {
                                std::borrow::Cow::Owned(m.encoder.plaintext_from_coefficients(c, m.level, m.scale))
                            }
                            Diagonal::Encoded(pt) => std::borrow::Cow::Borrowed(pt),
                        };
                        (*k, pt)
                    })
                    .collect();
                let group: Vec<(usize, &Plaintext)> = pts.iter().map(|(k, pt)| (*k, pt.as_ref())).collect();
                Ok(self.dot_plain_groups(&refs, &[group])?.pop().expect("one group"))
            })
            .collect::<Result<Vec<_>>>()?;
        let inner_refs: Vec<&Ciphertext> = inner.iter().collect();
        let giants: Vec<i64> = m.groups.iter().map(|(g, _)| *g).collect();
        let mut out = self.rotate_sum(&inner_refs, &giants, gk)?;
        self.rescale_assign(&mut out)?;
        Ok(out)
    }
}
