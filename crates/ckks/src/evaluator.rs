//! Homomorphic operations on ciphertexts.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::{GaloisKeys, KeySwitchingKey, RelinearizationKey};
use crate::scratch::{self, Scratch};
use crate::types::{Ciphertext, GaloisElement, Plaintext};
use blindfold_math::{slice, Modulus};
use rayon::prelude::*;
use std::sync::Arc;

/// Scales equal up to floating-point rounding (relative 2^-40).
fn scales_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= a.abs().max(b.abs()) * 9.1e-13
}

/// A polynomial's coefficients prepared for the basis extension of each key-switching digit,
/// with the multiples of `D_j` that center each digit (see [`Evaluator::prepared_coefficients`]).
struct Prepared {
    data: Scratch,
    centering: Vec<Vec<u8>>,
}

/// A ciphertext's `c_1`, decomposed into key-switching digits once and reused for many
/// Galois elements (Halevi–Shoup hoisting, CRYPTO 2018, §5).
pub struct Decomposed {
    level: usize,
    /// Each digit over `Q_level ∪ P` in NTT form, `(level + 1 + α)·N` words.
    digits: Vec<Vec<u64>>,
}

impl Drop for Decomposed {
    fn drop(&mut self) {
        for d in self.digits.drain(..) {
            scratch::recycle(d);
        }
    }
}

/// Evaluates homomorphic operations. Holds only public material (the context); keys are
/// passed per call. `Send + Sync`: one evaluator can serve many threads.
///
/// Levels are explicit: no operation rescales by itself. Multiplications multiply scales;
/// [`Evaluator::rescale`] divides by the dropped prime. Operands of a binary operation must
/// be at the same level ([`Error::LevelMismatch`]) and, for additions, have the same scale
/// ([`Error::ScaleMismatch`]).
///
/// Costs below are for a ciphertext at level `l` (`l+1` primes), `N` the ring degree and
/// `α`, `dnum` the key-switching parameters.
#[derive(Clone, Debug)]
pub struct Evaluator {
    ctx: Arc<Context>,
}

impl Evaluator {
    /// An evaluator for the context.
    pub fn new(ctx: &Arc<Context>) -> Self {
        Self { ctx: ctx.clone() }
    }

    /// The context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn check(&self, c: &Ciphertext) -> Result<()> {
        self.ctx.check_ciphertext(c)
    }

    fn check_plain(&self, pt: &Plaintext) -> Result<()> {
        self.ctx.check_plaintext(pt)
    }

    pub(crate) fn check_key(&self, key: &KeySwitchingKey, what: &'static str, level: usize) -> Result<()> {
        if &key.fingerprint != self.ctx.params().fingerprint() {
            return Err(Error::ForeignObject { what, reason: "parameter fingerprint differs".into() });
        }
        if level > key.max_level {
            return Err(Error::KeyLevel { what, max_level: key.max_level, level });
        }
        Ok(())
    }

    fn same_level(op: &'static str, a: usize, b: usize) -> Result<()> {
        if a != b {
            return Err(Error::LevelMismatch { op, lhs: a, rhs: b });
        }
        Ok(())
    }

    fn same_scale(op: &'static str, a: f64, b: f64) -> Result<()> {
        if !scales_match(a, b) {
            return Err(Error::ScaleMismatch { op, lhs: a, rhs: b });
        }
        Ok(())
    }

    fn residues(&self, level: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
        let n = self.ctx.n();
        (0..=level).map(move |i| (i, i * n..(i + 1) * n))
    }

    /// `a += b` slot-wise. Sizes may differ (the result has the larger size).
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine("add", a, b, slice::add_assign)
    }

    /// `a = a ∘ b` polynomial by polynomial for a residue-wise `kernel` (addition or
    /// subtraction), after the shape, level and scale checks; sizes may differ.
    fn combine(
        &self,
        op: &'static str,
        a: &mut Ciphertext,
        b: &Ciphertext,
        kernel: fn(&mut [u64], &[u64], &Modulus),
    ) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        Self::same_level(op, a.level, b.level)?;
        Self::same_scale(op, a.scale, b.scale)?;
        while a.parts.len() < b.parts.len() {
            a.parts.push(scratch::vec_zeroed(a.parts[0].len()));
        }
        for (pa, pb) in a.parts.iter_mut().zip(&b.parts) {
            for (i, r) in self.residues(a.level) {
                kernel(&mut pa[r.clone()], &pb[r], &self.ctx.moduli[i]);
            }
        }
        Ok(())
    }

    /// `a + b` slot-wise. Cost: `(l+1)·N` modular additions per polynomial.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a -= b` slot-wise.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine("sub", a, b, slice::sub_assign)
    }

    /// `a - b` slot-wise.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `-a` slot-wise.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a ciphertext of other parameters.
    pub fn negate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        let mut out = a.clone();
        for p in out.parts.iter_mut() {
            for (i, r) in self.residues(a.level) {
                slice::neg_assign(&mut p[r], &self.ctx.moduli[i]);
            }
        }
        Ok(out)
    }

    /// `a += pt` slot-wise.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn add_plain_assign(&self, a: &mut Ciphertext, pt: &Plaintext) -> Result<()> {
        self.check(a)?;
        self.check_plain(pt)?;
        Self::same_level("add_plain", a.level, pt.level)?;
        Self::same_scale("add_plain", a.scale, pt.scale)?;
        for (i, r) in self.residues(a.level) {
            slice::add_assign(&mut a.parts[0][r.clone()], &pt.data[r], &self.ctx.moduli[i]);
        }
        Ok(())
    }

    /// `a + pt` slot-wise.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`].
    pub fn add_plain(&self, a: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// `a + c` in every slot, at `a`'s level and scale, without encoding a plaintext: a
    /// constant polynomial `round(c·Δ)` is the same value at every NTT point.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `c·Δ` is not finite.
    pub fn add_const_assign(&self, a: &mut Ciphertext, c: f64) -> Result<()> {
        self.check(a)?;
        let k = (c * a.scale).round();
        if !k.is_finite() {
            return Err(Error::InvalidArgument(format!("constant {c} at scale {} is not finite", a.scale)));
        }
        for (i, r) in self.residues(a.level) {
            let q = &self.ctx.moduli[i];
            let v = q.reduce_f64(k);
            a.parts[0][r].iter_mut().for_each(|x| *x = q.add(*x, v));
        }
        Ok(())
    }

    /// `a ⊙ pt` slot-wise; the scale becomes `a.scale · pt.scale` (rescale afterwards).
    /// Cost: `size·(l+1)·N` modular products.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`].
    pub fn multiply_plain(&self, a: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.multiply_plain_assign(&mut out, pt)?;
        Ok(out)
    }

    /// [`Evaluator::multiply_plain`] in place (no allocation).
    ///
    /// # Errors
    /// [`Error::LevelMismatch`].
    pub fn multiply_plain_assign(&self, a: &mut Ciphertext, pt: &Plaintext) -> Result<()> {
        self.check(a)?;
        self.check_plain(pt)?;
        Self::same_level("multiply_plain", a.level, pt.level)?;
        for p in a.parts.iter_mut() {
            for (i, r) in self.residues(pt.level) {
                slice::mul_assign(&mut p[r.clone()], &pt.data[r], &self.ctx.moduli[i]);
            }
        }
        a.scale *= pt.scale;
        Ok(())
    }

    /// `acc += a ⊙ pt` slot-wise, for sums of products rescaled once (no new allocation).
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`] (`acc.scale` must equal
    /// `a.scale · pt.scale`), [`Error::CiphertextSize`] if the sizes differ.
    pub fn multiply_plain_acc(&self, acc: &mut Ciphertext, a: &Ciphertext, pt: &Plaintext) -> Result<()> {
        self.check(acc)?;
        self.check(a)?;
        self.check_plain(pt)?;
        Self::same_level("multiply_plain_acc", a.level, pt.level)?;
        Self::same_level("multiply_plain_acc", acc.level, a.level)?;
        Self::same_scale("multiply_plain_acc", acc.scale, a.scale * pt.scale)?;
        if acc.parts.len() != a.parts.len() {
            return Err(Error::CiphertextSize {
                op: "multiply_plain_acc",
                expected: acc.parts.len(),
                actual: a.parts.len(),
            });
        }
        for (o, p) in acc.parts.iter_mut().zip(&a.parts) {
            for (i, r) in self.residues(a.level) {
                self.ctx.ntt[i].mul_acc(&mut o[r.clone()], &p[r.clone()], &pt.data[r]);
            }
        }
        Ok(())
    }

    /// Multiplies every slot by the real constant `value`, encoded as the integer
    /// `round(value · const_scale)` (no encoding, no NTT). The scale becomes
    /// `a.scale · const_scale`; pass the prime about to be dropped (`q_l`) as `const_scale`
    /// to keep the scale exact after the next rescale.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `value · const_scale` is not finite or `const_scale < 1`.
    pub fn multiply_const(&self, a: &Ciphertext, value: f64, const_scale: f64) -> Result<Ciphertext> {
        self.check(a)?;
        let k = (value * const_scale).round();
        if !(k.is_finite() && const_scale >= 1.0 && const_scale.is_finite()) {
            return Err(Error::InvalidArgument(format!("constant {value} at scale {const_scale} is not finite")));
        }
        let mut out = a.clone();
        for p in out.parts.iter_mut() {
            for (i, r) in self.residues(a.level) {
                let q = &self.ctx.moduli[i];
                slice::mul_scalar_assign(&mut p[r], q.reduce_f64(k), q);
            }
        }
        out.scale = a.scale * const_scale;
        Ok(out)
    }

    /// Divides every slot by `divisor > 0` exactly, by multiplying the scale by it: no noise,
    /// no level, no arithmetic on the polynomials (the encoded magnitudes are unchanged, so
    /// the absolute precision of the slots improves by the same factor). Turns a sum of `k`
    /// ciphertexts into their mean.
    ///
    /// # Errors
    /// [`Error::ForeignObject`]; [`Error::InvalidArgument`] unless `divisor` is finite and
    /// positive.
    pub fn divide_exact(&self, a: &mut Ciphertext, divisor: f64) -> Result<()> {
        self.check(a)?;
        if !(divisor.is_finite() && divisor > 0.0) {
            return Err(Error::InvalidArgument(format!("divide_exact by {divisor}: must be finite and positive")));
        }
        a.scale *= divisor;
        Ok(())
    }

    /// Multiplies every slot by the integer `k`; the scale is unchanged.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a ciphertext of other parameters.
    pub fn multiply_integer(&self, a: &Ciphertext, k: i64) -> Result<Ciphertext> {
        self.check(a)?;
        let mut out = a.clone();
        for p in out.parts.iter_mut() {
            for (i, r) in self.residues(a.level) {
                let q = &self.ctx.moduli[i];
                slice::mul_scalar_assign(&mut p[r], q.reduce_i64(k), q);
            }
        }
        Ok(out)
    }

    /// Tensor product of two size-2 ciphertexts: a size-3 ciphertext
    /// `(a_0 b_0, a_0 b_1 + a_1 b_0, a_1 b_1)` of scale `a.scale · b.scale`, decrypting under
    /// `(1, s, s²)`. Relinearize with [`Evaluator::relinearize`] (it can be deferred past
    /// additions of other size-3 ciphertexts). Cost: `4(l+1)N` modular products.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::CiphertextSize`].
    pub fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        self.check(b)?;
        Self::same_level("multiply", a.level, b.level)?;
        for c in [a, b] {
            if c.parts.len() != 2 {
                return Err(Error::CiphertextSize { op: "multiply", expected: 2, actual: c.parts.len() });
            }
        }
        let len = a.parts[0].len();
        let n = self.ctx.n();
        let (mut d0, mut d1, mut d2) = (scratch::vec_zeroed(len), scratch::vec_zeroed(len), scratch::vec_zeroed(len));
        let outs = d0.par_chunks_exact_mut(n).zip(d1.par_chunks_exact_mut(n)).zip(d2.par_chunks_exact_mut(n));
        outs.enumerate().for_each(|(i, ((d0, d1), d2))| {
            let r = i * n..(i + 1) * n;
            let (a0, a1) = (&a.parts[0][r.clone()], &a.parts[1][r.clone()]);
            let (b0, b1) = (&b.parts[0][r.clone()], &b.parts[1][r]);
            // Single products go through tfhe-ntt's Barrett kernel (two IFMA products per
            // lane), cheaper than the lazy multi-term reduction of `slice::dot` here.
            let op = &self.ctx.ntt[i];
            op.mul_acc(d0, a0, b0);
            op.mul_acc(d1, a0, b1);
            op.mul_acc(d1, a1, b0);
            op.mul_acc(d2, a1, b1);
        });
        Ok(Ciphertext { parts: vec![d0, d1, d2], level: a.level, scale: a.scale * b.scale })
    }

    /// `a²` as a size-3 ciphertext.
    ///
    /// # Errors
    /// [`Error::CiphertextSize`].
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        if a.parts.len() != 2 {
            return Err(Error::CiphertextSize { op: "square", expected: 2, actual: a.parts.len() });
        }
        self.multiply(a, a)
    }

    /// Relinearizes a size-3 ciphertext back to size 2 with the relinearization key (hybrid
    /// key switching of `c_2`). Cost: one key switch, `(l+1) + dnum·(l+1+α-α') + 2(α+l+1)`
    /// NTTs (about 30 at N = 8192, l = 3, α = 1).
    ///
    /// # Errors
    /// [`Error::CiphertextSize`] unless `a` has 3 polynomials.
    pub fn relinearize(&self, a: &Ciphertext, rlk: &RelinearizationKey) -> Result<Ciphertext> {
        self.check(a)?;
        self.check_key(&rlk.0, "relinearization key", a.level)?;
        if a.parts.len() != 3 {
            return Err(Error::CiphertextSize { op: "relinearize", expected: 3, actual: a.parts.len() });
        }
        let mut out =
            Ciphertext { parts: vec![a.parts[0].clone(), a.parts[1].clone()], level: a.level, scale: a.scale };
        self.key_switch_add(&a.parts[2], a.level, &rlk.0, &mut out);
        Ok(out)
    }

    /// [`Evaluator::relinearize`] in place: `a` becomes size 2.
    ///
    /// # Errors
    /// [`Error::CiphertextSize`] unless `a` has 3 polynomials (then `a` is unchanged).
    pub fn relinearize_assign(&self, a: &mut Ciphertext, rlk: &RelinearizationKey) -> Result<()> {
        self.check(a)?;
        self.check_key(&rlk.0, "relinearization key", a.level)?;
        if a.parts.len() != 3 {
            return Err(Error::CiphertextSize { op: "relinearize", expected: 3, actual: a.parts.len() });
        }
        let c2 = a.parts.pop().expect("three parts");
        let level = a.level;
        self.key_switch_add(&c2, level, &rlk.0, a);
        Ok(())
    }

    /// `multiply` followed by `relinearize`.
    ///
    /// # Errors
    /// As [`Evaluator::multiply`].
    pub fn multiply_relin(&self, a: &Ciphertext, b: &Ciphertext, rlk: &RelinearizationKey) -> Result<Ciphertext> {
        let mut out = self.multiply(a, b)?;
        self.relinearize_assign(&mut out, rlk)?;
        Ok(out)
    }

    /// Divides by the last prime `q_l` with rounding: level `l → l-1`, scale `Δ → Δ/q_l`
    /// (tracked exactly). Cost: `size·(1 + l)` NTTs.
    ///
    /// # Errors
    /// [`Error::LevelTooLow`] at level 0.
    pub fn rescale(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        let l = a.level;
        if l == 0 {
            return Err(Error::LevelTooLow { op: "rescale", needed: 1, level: 0 });
        }
        let n = self.ctx.n();
        let parts = a
            .parts
            .iter()
            .map(|p| {
                let mut out = scratch::vec_overwritten(l * n);
                out.copy_from_slice(&p[..l * n]);
                self.rescale_poly(&p[l * n..], &mut out, l);
                out
            })
            .collect();
        Ok(Ciphertext { parts, level: l - 1, scale: a.scale / self.ctx.moduli[l].value() as f64 })
    }

    /// [`Evaluator::rescale`] in place (no allocation).
    ///
    /// # Errors
    /// [`Error::LevelTooLow`] at level 0.
    pub fn rescale_assign(&self, a: &mut Ciphertext) -> Result<()> {
        self.check(a)?;
        let l = a.level;
        if l == 0 {
            return Err(Error::LevelTooLow { op: "rescale", needed: 1, level: 0 });
        }
        let n = self.ctx.n();
        for p in a.parts.iter_mut() {
            let (low, last) = p.split_at_mut(l * n);
            self.rescale_poly(last, low, l);
            p.truncate(l * n);
        }
        a.level = l - 1;
        a.scale /= self.ctx.moduli[l].value() as f64;
        Ok(())
    }

    /// `low_i = (low_i - [last]_{q_i}) · q_l^{-1}` for the residues `i < l` of one polynomial,
    /// `last` being its residue modulo `q_l` (NTT form throughout).
    fn rescale_poly(&self, last: &[u64], low: &mut [u64], l: usize) {
        let ql = &self.ctx.moduli[l];
        let mut coeff = Scratch::copy_of(last);
        self.ctx.ntt[l].backward(&mut coeff);
        low.par_chunks_exact_mut(self.ctx.n()).enumerate().for_each(|(i, low)| {
            let qi = &self.ctx.moduli[i];
            let mut tmp = Scratch::overwritten(self.ctx.n());
            slice::reduce_centered_into(&mut tmp, &coeff, ql, qi);
            self.ctx.ntt[i].forward(&mut tmp);
            slice::sub_mul_scalar_assign(low, &tmp, self.ctx.rescale_inv[l][i].0, qi);
        });
    }

    /// Drops the primes above `level` without dividing (the scale is unchanged). Used to
    /// bring an operand down to the level of another.
    ///
    /// # Errors
    /// [`Error::LevelTooLow`] if `level > a.level`.
    pub fn drop_to_level(&self, a: &Ciphertext, level: usize) -> Result<Ciphertext> {
        self.check(a)?;
        if level > a.level {
            return Err(Error::LevelTooLow { op: "drop_to_level", needed: level, level: a.level });
        }
        let n = self.ctx.n();
        Ok(Ciphertext { parts: a.parts.iter().map(|p| p[..(level + 1) * n].to_vec()).collect(), level, scale: a.scale })
    }

    /// Drops a plaintext's primes above `level`.
    ///
    /// # Errors
    /// [`Error::LevelTooLow`] if `level > pt.level`.
    pub fn drop_plaintext_to_level(&self, pt: &Plaintext, level: usize) -> Result<Plaintext> {
        self.check_plain(pt)?;
        if level > pt.level {
            return Err(Error::LevelTooLow { op: "drop_plaintext_to_level", needed: level, level: pt.level });
        }
        Ok(Plaintext { data: pt.data[..(level + 1) * self.ctx.n()].to_vec(), level, scale: pt.scale })
    }

    /// Rotates the slots left by `step` (right if negative): slot `j` of the result is slot
    /// `j + step mod N/2` of `a`. Needs the Galois key of `5^step mod 2N`. Cost: one key
    /// switch.
    ///
    /// # Errors
    /// [`Error::MissingGaloisKey`], [`Error::CiphertextSize`].
    pub fn rotate(&self, a: &Ciphertext, step: i64, gk: &GaloisKeys) -> Result<Ciphertext> {
        let g = self.ctx.galois_element_for_rotation(step);
        self.apply_galois(a, g, gk)
    }

    /// Complex conjugation of every slot (Galois element `2N-1`).
    ///
    /// # Errors
    /// [`Error::MissingGaloisKey`], [`Error::CiphertextSize`].
    pub fn conjugate(&self, a: &Ciphertext, gk: &GaloisKeys) -> Result<Ciphertext> {
        self.apply_galois(a, self.ctx.galois_element_for_conjugation(), gk)
    }

    /// Applies the automorphism `X -> X^g` and switches the key back to `s`.
    ///
    /// # Errors
    /// [`Error::MissingGaloisKey`], [`Error::CiphertextSize`].
    pub fn apply_galois(&self, a: &Ciphertext, g: GaloisElement, gk: &GaloisKeys) -> Result<Ciphertext> {
        self.check(a)?;
        if a.parts.len() != 2 {
            return Err(Error::CiphertextSize { op: "rotate", expected: 2, actual: a.parts.len() });
        }
        if g == GaloisElement::IDENTITY {
            return Ok(a.clone());
        }
        let (key, perm) = gk.get(g)?;
        self.check_key(key, "Galois key", a.level)?;
        // With the key held as π⁻¹(k): π(c_0 + KS(c_1; π⁻¹(k))).
        let len = a.parts[0].len();
        let mut c0 = scratch::vec_overwritten(len);
        c0.copy_from_slice(&a.parts[0]);
        let mut t = Ciphertext { parts: vec![c0, scratch::vec_zeroed(len)], level: a.level, scale: a.scale };
        self.key_switch_add(&a.parts[1], a.level, key, &mut t);
        Ok(self.permuted(&t, perm))
    }

    /// `π(a)` slot-wise for the NTT permutation `perm` (no key switch: for parts that are
    /// already under the right key).
    fn permuted(&self, a: &Ciphertext, perm: &[u32]) -> Ciphertext {
        let len = a.parts[0].len();
        let parts = a
            .parts
            .iter()
            .map(|p| {
                let mut out = scratch::vec_overwritten(len);
                out.par_chunks_exact_mut(self.ctx.n())
                    .zip(p.par_chunks_exact(self.ctx.n()))
                    .for_each(|(o, i)| slice::permute_into(o, i, perm));
                out
            })
            .collect();
        Ciphertext { parts, level: a.level, scale: a.scale }
    }

    /// Rotations of `a` by every step of `steps`, sharing one decomposition of `c_1`
    /// (hoisting): each extra rotation costs a permutation, `2·dnum·(l+1+α)` pointwise
    /// products and a ModDown, instead of a full key switch.
    ///
    /// # Errors
    /// [`Error::MissingGaloisKey`] (before any work), [`Error::CiphertextSize`].
    pub fn rotate_hoisted(&self, a: &Ciphertext, steps: &[i64], gk: &GaloisKeys) -> Result<Vec<Ciphertext>> {
        let elements: Vec<GaloisElement> = steps.iter().map(|&s| self.ctx.galois_element_for_rotation(s)).collect();
        for &g in &elements {
            if g != GaloisElement::IDENTITY {
                self.check_key(&gk.get(g)?.0, "Galois key", a.level)?;
            }
        }
        if elements.iter().all(|&g| g == GaloisElement::IDENTITY) {
            return Ok(steps.iter().map(|_| a.clone()).collect());
        }
        let dec = self.decompose(a)?;
        elements.iter().map(|&g| self.apply_galois_hoisted(a, &dec, g, gk)).collect()
    }

    /// Decomposes `c_1` of a size-2 ciphertext for hoisted rotations.
    ///
    /// # Errors
    /// [`Error::CiphertextSize`] unless `a` has 2 polynomials.
    pub fn decompose(&self, a: &Ciphertext) -> Result<Decomposed> {
        self.check(a)?;
        if a.parts.len() != 2 {
            return Err(Error::CiphertextSize { op: "rotate", expected: 2, actual: a.parts.len() });
        }
        Ok(self.decompose_poly(&a.parts[1], a.level))
    }

    /// Applies `X -> X^g` to `a` using a decomposition of its `c_1` made by
    /// [`Evaluator::decompose`].
    ///
    /// # Errors
    /// [`Error::MissingGaloisKey`]; [`Error::LevelMismatch`] if `dec` belongs to another level.
    pub fn apply_galois_hoisted(
        &self,
        a: &Ciphertext,
        dec: &Decomposed,
        g: GaloisElement,
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        Self::same_level("apply_galois_hoisted", a.level, dec.level)?;
        if g == GaloisElement::IDENTITY {
            return Ok(a.clone());
        }
        let (key, perm) = gk.get(g)?;
        self.check_key(key, "Galois key", a.level)?;
        let ctx = &self.ctx;
        let n = ctx.n();
        let level = a.level;
        let ext = level + 1 + ctx.num_special();
        // The key is held as π⁻¹(k): the digits are multiplied unpermuted, the result
        // permuted once (π(c_0 + Σ_j d_j·π⁻¹(k_j) / P)).
        let mut acc0 = Scratch::overwritten(ext * n);
        let mut acc1 = Scratch::overwritten(ext * n);
        let accs = acc0.par_chunks_exact_mut(n).zip(acc1.par_chunks_exact_mut(n));
        accs.enumerate().for_each(|(pos, (acc0, acc1))| {
            let r = pos * n..(pos + 1) * n;
            let d: Vec<&[u64]> = dec.digits.iter().map(|digit| &digit[r.clone()]).collect();
            self.dot_key(acc0, acc1, &d, key, level, pos);
        });
        let len = (level + 1) * n;
        let mut c0 = scratch::vec_overwritten(len);
        c0.copy_from_slice(&a.parts[0]);
        let mut t = Ciphertext { parts: vec![c0, scratch::vec_zeroed(len)], level, scale: a.scale };
        self.mod_down_add(&mut acc0, level, &mut t.parts[0]);
        self.mod_down_add(&mut acc1, level, &mut t.parts[1]);
        Ok(self.permuted(&t, perm))
    }

    /// Digit `j` of `c` at extended position `pos` (NTT form): a copy of `c`'s residue when
    /// `q_pos` belongs to the digit, otherwise the basis extension of the digit's residues
    /// (given prepared, see [`Evaluator::prepared_coefficients`], in `coeff`) to that prime,
    /// transformed.
    fn digit_residue(&self, coeff: &Prepared, c: &[u64], level: usize, j: usize, pos: usize, out: &mut [u64]) {
        let ctx = &self.ctx;
        let n = ctx.n();
        let alpha_d = ctx.params().alpha();
        let (lo, hi) = (j * alpha_d, ((j + 1) * alpha_d).min(level + 1));
        if (lo..hi).contains(&pos) {
            out.copy_from_slice(&c[pos * n..(pos + 1) * n]);
            return;
        }
        // The converter's targets are the positions 0..lo, then hi..ext.
        let t = if pos < lo { pos } else { pos - (hi - lo) };
        ctx.decompose[level][j].0.convert_prepared_centered(
            &coeff.data[lo * n..hi * n],
            &coeff.centering[j],
            t..t + 1,
            out,
        );
        ctx.extended_ntt(level, pos).forward(out);
    }

    /// The coefficient form of `c` (level `l`) prepared for basis extension of every digit
    /// (see [`blindfold_math::BasisConverter::prepare`]), with each digit's centering: done
    /// once per key switch, shared by all target primes. The digits are extended exactly on
    /// their centered representatives (`|d_j| ≤ D_j/2`): the fast conversion alone would add up
    /// to `α - 1` multiples of `D_j`, multiplying the key-switching noise `Σ_j d_j·e_j/P` by
    /// up to `α` with a heavy tail in the slots.
    fn prepared_coefficients(&self, c: &[u64], level: usize) -> Prepared {
        let ctx = &self.ctx;
        let n = ctx.n();
        let mut coeff = Scratch::copy_of(&c[..(level + 1) * n]);
        ctx.backward(&mut coeff);
        let alpha_d = ctx.params().alpha();
        let digits = ctx.decompose[level].len();
        if alpha_d == 1 {
            // One-prime digits convert from the coefficients directly, centered.
            return Prepared { data: coeff, centering: vec![Vec::new(); digits] };
        }
        let mut prepared = Scratch::overwritten(coeff.len());
        let centering = prepared
            .par_chunks_mut(alpha_d * n)
            .zip(&ctx.decompose[level])
            .enumerate()
            .map(|(j, (out, (conv, _)))| {
                conv.prepare(&coeff[j * alpha_d * n..j * alpha_d * n + out.len()], out);
                conv.centering(out)
            })
            .collect();
        Prepared { data: prepared, centering }
    }

    /// Splits `c` (NTT, level `l`) into digits over `Q_l ∪ P` (NTT form).
    fn decompose_poly(&self, c: &[u64], level: usize) -> Decomposed {
        let ctx = &self.ctx;
        let n = ctx.n();
        let ext = level + 1 + ctx.num_special();
        let coeff = self.prepared_coefficients(c, level);
        let digits = (0..ctx.decompose[level].len())
            .into_par_iter()
            .map(|j| {
                let mut digit = scratch::vec_overwritten(ext * n);
                digit.par_chunks_exact_mut(n).enumerate().for_each(|(pos, out)| {
                    self.digit_residue(&coeff, c, level, j, pos, out);
                });
                digit
            })
            .collect();
        Decomposed { level, digits }
    }

    /// `out0 = Σ_j d_j·b_j`, `out1 = Σ_j d_j·a_j` at extended position `pos` (one fused
    /// pass, one reduction per coefficient).
    fn dot_key(
        &self,
        out0: &mut [u64],
        out1: &mut [u64],
        d: &[&[u64]],
        key: &KeySwitchingKey,
        level: usize,
        pos: usize,
    ) {
        let n = self.ctx.n();
        let full = self.ctx.extended_to_full(level, pos);
        // Position of this prime in the key's own basis (q_0…q_{max_level}, then P).
        let k = if pos <= level { pos } else { key.max_level + 1 + (pos - level - 1) };
        let kr = k * n..(k + 1) * n;
        let b: Vec<&[u64]> = key.digits[..d.len()].iter().map(|kd| &kd.b[kr.clone()]).collect();
        let a: Vec<&[u64]> = key.digits[..d.len()].iter().map(|kd| &kd.a[kr.clone()]).collect();
        slice::dot([out0, out1], d, [&b, &a], &self.ctx.moduli[full]);
    }

    /// Key-switches `c` (NTT, level `l`) with `key` and adds the result to `out`'s first two
    /// polynomials.
    ///
    /// The special primes' products come first and go back to coefficients; then each
    /// `q_i` in turn gets its products, its share of the ModDown and its output residue, so
    /// the products over `Q_l` never exist in full (the working set stays in cache).
    pub(crate) fn key_switch_add(&self, c: &[u64], level: usize, key: &KeySwitchingKey, out: &mut Ciphertext) {
        let ctx = &self.ctx;
        let n = ctx.n();
        let special = ctx.num_special();
        let coeff = self.prepared_coefficients(c, level);
        let digits = ctx.decompose[level].len();
        let (mut p0, mut p1) = (Scratch::overwritten(special * n), Scratch::overwritten(special * n));
        let mut residues = Scratch::overwritten(digits * n);
        for k in 0..special {
            let r = k * n..(k + 1) * n;
            self.digit_products(&coeff, c, level, key, level + 1 + k, &mut residues, &mut p0[r.clone()], &mut p1[r]);
        }
        let (prep0, prep1) =
            rayon::join(|| self.mod_down_prepare(level, &mut p0), || self.mod_down_prepare(level, &mut p1));
        let len = (level + 1) * n;
        let (o0, o1) = out.parts.split_at_mut(1);
        let outs = o0[0][..len].par_chunks_exact_mut(n).zip(o1[0][..len].par_chunks_exact_mut(n));
        outs.enumerate().for_each(|(i, (o0, o1))| {
            let mut residues = Scratch::overwritten(digits * n);
            let mut tmp = Scratch::overwritten(3 * n);
            let (t, conv) = tmp.split_at_mut(2 * n);
            let (t0, t1) = t.split_at_mut(n);
            self.digit_products(&coeff, c, level, key, i, &mut residues, t0, t1);
            self.mod_down_residue(level, i, &prep0, t0, o0, conv);
            self.mod_down_residue(level, i, &prep1, t1, o1, conv);
        });
    }

    /// The key products at extended position `pos`: `out0 = Σ_j d_j·b_j`, `out1 = Σ_j d_j·a_j`
    /// over the digits `d_j` of `c` there (borrowed from `c` for the digit holding `q_pos`,
    /// otherwise basis-extended into `residues` and transformed).
    fn digit_products(
        &self,
        coeff: &Prepared,
        c: &[u64],
        level: usize,
        key: &KeySwitchingKey,
        pos: usize,
        residues: &mut [u64],
        out0: &mut [u64],
        out1: &mut [u64],
    ) {
        let n = self.ctx.n();
        let own = (pos <= level).then_some(pos / self.ctx.params().alpha());
        residues.par_chunks_exact_mut(n).enumerate().filter(|(j, _)| Some(*j) != own).for_each(|(j, r)| {
            self.digit_residue(coeff, c, level, j, pos, r);
        });
        let d: Vec<&[u64]> = residues
            .chunks_exact(n)
            .enumerate()
            .map(|(j, r)| if Some(j) == own { &c[pos * n..(pos + 1) * n] } else { r })
            .collect();
        self.dot_key(out0, out1, &d, key, level, pos);
    }

    /// The inner products of `c`'s digits with `key`, over `Q_l ∪ P` before the division by
    /// `P`, written to (or, with `accumulate`, added to) `acc0` and `acc1`. Works one residue
    /// position at a time: the digits' residues at that position are formed (borrowed, or
    /// basis-extended and transformed) and multiplied into the key in one fused pass.
    fn key_switch_ext(
        &self,
        c: &[u64],
        level: usize,
        key: &KeySwitchingKey,
        acc0: &mut [u64],
        acc1: &mut [u64],
        accumulate: bool,
    ) {
        let ctx = &self.ctx;
        let n = ctx.n();
        let ext = level + 1 + ctx.num_special();
        let digits = ctx.decompose[level].len();
        let coeff = self.prepared_coefficients(c, level);
        let accs = acc0[..ext * n].par_chunks_exact_mut(n).zip(acc1[..ext * n].par_chunks_exact_mut(n));
        accs.enumerate().for_each(|(pos, (acc0, acc1))| {
            let mut residues = Scratch::overwritten(digits * n);
            if accumulate {
                let mut tmp = Scratch::overwritten(2 * n);
                let (t0, t1) = tmp.split_at_mut(n);
                self.digit_products(&coeff, c, level, key, pos, &mut residues, t0, t1);
                let q = &ctx.moduli[ctx.extended_to_full(level, pos)];
                slice::add_assign(acc0, t0, q);
                slice::add_assign(acc1, t1, q);
            } else {
                self.digit_products(&coeff, c, level, key, pos, &mut residues, acc0, acc1);
            }
        });
    }

    /// `Σ_i rot(cts[i], steps[i])`: rotations that are only summed share one division by
    /// `P` (lazy ModDown): each term costs its decomposition and key products, the sum one
    /// ModDown. Used for the giant steps of baby-step giant-step linear maps.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`], [`Error::MissingGaloisKey`],
    /// [`Error::CiphertextSize`], [`Error::InvalidArgument`] for no terms or mismatched
    /// lengths.
    pub fn rotate_sum(&self, cts: &[&Ciphertext], steps: &[i64], gk: &GaloisKeys) -> Result<Ciphertext> {
        if cts.is_empty() || cts.len() != steps.len() {
            return Err(Error::InvalidArgument("rotate_sum needs one step per ciphertext".into()));
        }
        let first = cts[0];
        for c in cts {
            self.check(c)?;
            Self::same_level("rotate_sum", first.level, c.level)?;
            Self::same_scale("rotate_sum", first.scale, c.scale)?;
            if c.parts.len() != 2 {
                return Err(Error::CiphertextSize { op: "rotate_sum", expected: 2, actual: c.parts.len() });
            }
        }
        let ctx = &self.ctx;
        let n = ctx.n();
        let level = first.level;
        let len = (level + 1) * n;
        let ext = (level + 1 + ctx.num_special()) * n;
        let mut out =
            Ciphertext { parts: vec![scratch::vec_zeroed(len), scratch::vec_zeroed(len)], level, scale: first.scale };
        let mut acc0 = Scratch::overwritten(ext);
        let mut acc1 = Scratch::overwritten(ext);
        let (mut t0, mut t1) = (Scratch::overwritten(ext), Scratch::overwritten(ext));
        let mut switched = false;
        let mut permuted = Scratch::overwritten(len);
        for (c, &step) in cts.iter().zip(steps) {
            let g = ctx.galois_element_for_rotation(step);
            if g == GaloisElement::IDENTITY {
                for (i, r) in self.residues(level) {
                    slice::add_assign(&mut out.parts[0][r.clone()], &c.parts[0][r.clone()], &ctx.moduli[i]);
                    slice::add_assign(&mut out.parts[1][r.clone()], &c.parts[1][r], &ctx.moduli[i]);
                }
                continue;
            }
            let (key, perm) = gk.get(g)?;
            self.check_key(key, "Galois key", level)?;
            for (i, r) in self.residues(level) {
                slice::permute_into(&mut permuted[r.clone()], &c.parts[0][r.clone()], perm);
                slice::add_assign(&mut out.parts[0][r.clone()], &permuted[r.clone()], &ctx.moduli[i]);
            }
            // The key is held as π⁻¹(k): switch c_1 unpermuted, permute the products into the
            // sum (over Q_l ∪ P, before the shared ModDown).
            self.key_switch_ext(&c.parts[1], level, key, &mut t0, &mut t1, false);
            let positions = acc0.par_chunks_exact_mut(n).zip(acc1.par_chunks_exact_mut(n));
            positions.zip(t0.par_chunks_exact(n).zip(t1.par_chunks_exact(n))).enumerate().for_each(
                |(pos, ((a0, a1), (s0, s1)))| {
                    if switched {
                        let q = &ctx.moduli[ctx.extended_to_full(level, pos)];
                        let mut p = Scratch::overwritten(n);
                        slice::permute_into(&mut p, s0, perm);
                        slice::add_assign(a0, &p, q);
                        slice::permute_into(&mut p, s1, perm);
                        slice::add_assign(a1, &p, q);
                    } else {
                        slice::permute_into(a0, s0, perm);
                        slice::permute_into(a1, s1, perm);
                    }
                },
            );
            switched = true;
        }
        if switched {
            self.mod_down_add(&mut acc0, level, &mut out.parts[0]);
            self.mod_down_add(&mut acc1, level, &mut out.parts[1]);
        }
        Ok(out)
    }

    /// `Σ_i cts[i] ⊙ pts[i]` in one fused pass per residue (products accumulated with one
    /// reduction each, up to 16 terms per pass); the scale is `cts[0].scale · pts[0].scale`.
    ///
    /// # Errors
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`] (all products must share one
    /// scale), [`Error::CiphertextSize`], [`Error::InvalidArgument`] for no terms or
    /// mismatched lengths.
    pub fn dot_plain(&self, cts: &[&Ciphertext], pts: &[&Plaintext]) -> Result<Ciphertext> {
        if cts.is_empty() || cts.len() != pts.len() {
            return Err(Error::InvalidArgument("dot_plain needs one plaintext per ciphertext".into()));
        }
        let group: Vec<(usize, &Plaintext)> = pts.iter().copied().enumerate().collect();
        Ok(self.dot_plain_groups(cts, &[group])?.pop().expect("one group"))
    }

    /// For each group `g`, `Σ_{(k, pt) ∈ groups[g]} cts[k] ⊙ pt`: the inner sums of a
    /// baby-step giant-step linear map (`cts` the baby steps, one group per giant step) in one
    /// pass per residue, so each input residue is read once for every group instead of once
    /// per group. Same arithmetic as [`Evaluator::dot_plain`] on each group.
    ///
    /// # Errors
    /// As [`Evaluator::dot_plain`], for any group; [`Error::InvalidArgument`] for an index
    /// outside `cts` or an empty group.
    pub fn dot_plain_groups(
        &self,
        cts: &[&Ciphertext],
        groups: &[Vec<(usize, &Plaintext)>],
    ) -> Result<Vec<Ciphertext>> {
        let first = cts.first().ok_or_else(|| Error::InvalidArgument("dot_plain_groups needs ciphertexts".into()))?;
        for c in cts {
            self.check(c)?;
            Self::same_level("dot_plain_groups", first.level, c.level)?;
            if c.parts.len() != 2 {
                return Err(Error::CiphertextSize { op: "dot_plain_groups", expected: 2, actual: c.parts.len() });
            }
        }
        let mut scales = Vec::with_capacity(groups.len());
        for g in groups {
            let &(k0, p0) = g.first().ok_or_else(|| Error::InvalidArgument("an empty group".into()))?;
            for &(k, p) in g {
                let c = cts.get(k).ok_or_else(|| Error::InvalidArgument(format!("term index {k} of {}", cts.len())))?;
                self.check_plain(p)?;
                Self::same_level("dot_plain_groups", c.level, p.level)?;
                Self::same_scale("dot_plain_groups", cts[k0].scale * p0.scale, c.scale * p.scale)?;
            }
            scales.push(cts[k0].scale * p0.scale);
        }
        let level = first.level;
        let n = self.ctx.n();
        let len = (level + 1) * n;
        let mut outs: Vec<(Vec<u64>, Vec<u64>)> =
            groups.iter().map(|_| (scratch::vec_overwritten(len), scratch::vec_overwritten(len))).collect();
        // Per residue, every group's output slices.
        let mut per_residue: Vec<Vec<(&mut [u64], &mut [u64])>> = (0..=level).map(|_| Vec::new()).collect();
        for (o0, o1) in outs.iter_mut() {
            for (i, (a, b)) in o0.chunks_exact_mut(n).zip(o1.chunks_exact_mut(n)).enumerate() {
                per_residue[i].push((a, b));
            }
        }
        per_residue.into_par_iter().enumerate().for_each(|(i, group_outs)| {
            let r = i * n..(i + 1) * n;
            let q = &self.ctx.moduli[i];
            let mut tmp = Scratch::overwritten(2 * n);
            for (g, (o0, o1)) in groups.iter().zip(group_outs) {
                for (chunk_i, chunk) in g.chunks(16).enumerate() {
                    let d: Vec<&[u64]> = chunk.iter().map(|(_, p)| &p.data[r.clone()]).collect();
                    let b0: Vec<&[u64]> = chunk.iter().map(|&(k, _)| &cts[k].parts[0][r.clone()]).collect();
                    let b1: Vec<&[u64]> = chunk.iter().map(|&(k, _)| &cts[k].parts[1][r.clone()]).collect();
                    if chunk_i == 0 {
                        slice::dot([&mut *o0, &mut *o1], &d, [&b0, &b1], q);
                    } else {
                        let (t0, t1) = tmp.split_at_mut(n);
                        slice::dot([t0, t1], &d, [&b0, &b1], q);
                        slice::add_assign(o0, t0, q);
                        slice::add_assign(o1, t1, q);
                    }
                }
            }
        });
        Ok(outs
            .into_iter()
            .zip(scales)
            .map(|((o0, o1), scale)| Ciphertext { parts: vec![o0, o1], level, scale })
            .collect())
    }

    /// For every row `r`: `Σ_{(j, w) ∈ rows[r]} w·cts[j] + bias[r]` in every slot, each weight
    /// multiplying as the integer `round(w · const_scale)` reduced per prime (a constant in
    /// every slot is a constant polynomial: no encoding, no NTT), each row one modular sum with
    /// one reduction per coefficient ([`blindfold_math::slice::matmul_scalar`]). No rescale:
    /// the results have scale `Δ · const_scale` for the inputs' common scale `Δ`, their
    /// level, and their size (2, or 3 for unrelinearized products: relinearize the sums). An
    /// empty row gives the bias alone (a trivial encryption of a public constant). The core of
    /// a linear layer in batch packing, where slot `s` of input `j` is image `s`'s feature `j`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no inputs, `rows` and `bias` of different lengths, a
    /// term index outside `cts`, or a weight or bias that is not finite at this scale;
    /// [`Error::LevelMismatch`], [`Error::ScaleMismatch`], [`Error::CiphertextSize`] for
    /// inputs that differ; [`Error::ForeignObject`].
    pub fn linear_combinations(
        &self,
        cts: &[&Ciphertext],
        rows: &[Vec<(u32, f64)>],
        bias: &[f64],
        const_scale: f64,
    ) -> Result<Vec<Ciphertext>> {
        self.combinations(cts, rows, bias, const_scale, false)
    }

    /// [`Evaluator::linear_combinations`] of the squares `cts[j]²`, neither stored nor
    /// relinearized: the tensor product's parts `(c0², 2·c0·c1, c1²)` of each input are formed
    /// a block at a time inside the modular sum
    /// ([`blindfold_math::slice::matmul_scalar_products`]). The results have size 3 (relinearize
    /// the sums), scale `Δ² · const_scale`, the inputs' level. A square activation followed by
    /// a linear layer in batch packing, at the cost of the linear layer alone.
    ///
    /// # Errors
    /// As [`Evaluator::linear_combinations`]; [`Error::CiphertextSize`] for inputs of size
    /// other than 2.
    pub fn linear_combinations_of_squares(
        &self,
        cts: &[&Ciphertext],
        rows: &[Vec<(u32, f64)>],
        bias: &[f64],
        const_scale: f64,
    ) -> Result<Vec<Ciphertext>> {
        self.combinations(cts, rows, bias, const_scale, true)
    }

    fn combinations(
        &self,
        cts: &[&Ciphertext],
        rows: &[Vec<(u32, f64)>],
        bias: &[f64],
        const_scale: f64,
        squares: bool,
    ) -> Result<Vec<Ciphertext>> {
        let op = if squares { "linear_combinations_of_squares" } else { "linear_combinations" };
        let first = cts.first().ok_or_else(|| Error::InvalidArgument(format!("{op} needs inputs")))?;
        if squares && first.parts.len() != 2 {
            return Err(Error::CiphertextSize { op, expected: 2, actual: first.parts.len() });
        }
        if rows.len() != bias.len() {
            return Err(Error::InvalidArgument(format!("{} rows but {} biases", rows.len(), bias.len())));
        }
        for c in cts {
            self.check(c)?;
            Self::same_level(op, first.level, c.level)?;
            Self::same_scale(op, first.scale, c.scale)?;
            if c.parts.len() != first.parts.len() {
                return Err(Error::CiphertextSize { op, expected: first.parts.len(), actual: c.parts.len() });
            }
        }
        if !(const_scale.is_finite() && const_scale >= 1.0) {
            return Err(Error::InvalidArgument(format!("constant scale {const_scale}: must be finite and at least 1")));
        }
        let round = |v: f64, scale: f64| -> Result<f64> {
            let k = (v * scale).round();
            if k.is_finite() {
                Ok(k)
            } else {
                Err(Error::InvalidArgument(format!("the constant {v} at scale {scale} is not finite")))
            }
        };
        let mut weights: Vec<Vec<(u32, f64)>> = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for &(j, w) in row {
                if j as usize >= cts.len() {
                    return Err(Error::InvalidArgument(format!("term index {j} of {} inputs", cts.len())));
                }
                r.push((j, round(w, const_scale)?));
            }
            weights.push(r);
        }
        let in_scale = if squares { first.scale * first.scale } else { first.scale };
        let out_scale = in_scale * const_scale;
        let biases: Vec<f64> = bias.iter().map(|&b| round(b, out_scale)).collect::<Result<_>>()?;
        let (level, n) = (first.level, self.ctx.n());
        let size = if squares { 3 } else { first.parts.len() };
        let mut outs: Vec<Vec<Vec<u64>>> =
            rows.iter().map(|_| (0..size).map(|_| scratch::vec_overwritten((level + 1) * n)).collect()).collect();
        // One task per (polynomial, residue), each with every row's output slice.
        let mut tasks: Vec<Vec<&mut [u64]>> = (0..size * (level + 1)).map(|_| Vec::with_capacity(rows.len())).collect();
        for out in outs.iter_mut() {
            for (k, part) in out.iter_mut().enumerate() {
                for (i, r) in part.chunks_exact_mut(n).enumerate() {
                    tasks[k * (level + 1) + i].push(r);
                }
            }
        }
        // The constants modulo each prime, shared by every polynomial; for squares, doubled
        // for the cross term 2·c0·c1.
        type Rows = Vec<Vec<(u32, u64)>>;
        let consts: Vec<[Rows; 2]> = (0..=level)
            .into_par_iter()
            .map(|i| {
                let q = &self.ctx.moduli[i];
                let once: Rows =
                    weights.iter().map(|row| row.iter().map(|&(j, w)| (j, q.reduce_f64(w))).collect()).collect();
                let doubled: Rows = if squares {
                    once.iter().map(|row| row.iter().map(|&(j, c)| (j, q.add(c, c))).collect()).collect()
                } else {
                    Vec::new()
                };
                [once, doubled]
            })
            .collect();
        tasks.into_par_iter().enumerate().for_each(|(t, mut task)| {
            let (k, i) = (t / (level + 1), t % (level + 1));
            let q = &self.ctx.moduli[i];
            let r = i * n..(i + 1) * n;
            let part = |p: usize| -> Vec<&[u64]> { cts.iter().map(|c| &c.parts[p][r.clone()]).collect() };
            let doubled = squares && k == 1;
            let refs: Vec<&[(u32, u64)]> = consts[i][usize::from(doubled)].iter().map(Vec::as_slice).collect();
            if squares {
                // Part k of x²: c0·c0, c0·c1 (weights doubled), c1·c1.
                let (a, b) = ([0, 0, 1][k], [0, 1, 1][k]);
                slice::matmul_scalar_products(&mut task, &part(a), &part(b), &refs, q);
            } else {
                slice::matmul_scalar(&mut task, &part(k), &refs, q);
            }
            if k == 0 {
                // A constant polynomial is the same constant at every NTT point.
                for (o, &b) in task.iter_mut().zip(&biases) {
                    if b != 0.0 {
                        let b = q.reduce_f64(b);
                        o.iter_mut().for_each(|v| *v = q.add(*v, b));
                    }
                }
            }
        });
        Ok(outs.into_iter().map(|parts| Ciphertext { parts, level, scale: out_scale }).collect())
    }

    /// `dest += round(x / P)` from `Q_l ∪ P` to `Q_l`, NTT form in and out (the `P` part of
    /// `x` is overwritten).
    fn mod_down_add(&self, x: &mut [u64], level: usize, dest: &mut [u64]) {
        let n = self.ctx.n();
        let (xq, p_part) = x.split_at_mut((level + 1) * n);
        let prepared = self.mod_down_prepare(level, p_part);
        dest.par_chunks_exact_mut(n).zip(xq.par_chunks_exact(n)).enumerate().for_each(|(i, (dest, x))| {
            self.mod_down_residue(level, i, &prepared, x, dest, &mut Scratch::overwritten(n));
        });
    }

    /// First half of a ModDown, shared by every `q_i`: the part of a value over `Q_l ∪ P`
    /// that lies over `P` (NTT form, overwritten) brought back to coefficients and prepared
    /// for conversion, with its centering (see [`blindfold_math::BasisConverter::prepare`]
    /// and [`blindfold_math::BasisConverter::centering`]).
    fn mod_down_prepare(&self, level: usize, p_part: &mut [u64]) -> (Scratch, Vec<u8>) {
        let ctx = &self.ctx;
        p_part.par_chunks_exact_mut(ctx.n()).enumerate().for_each(|(k, r)| ctx.ntt[ctx.special_index(k)].backward(r));
        let mut prepared = Scratch::overwritten(p_part.len());
        ctx.mod_down[level].prepare(p_part, &mut prepared);
        let centering = ctx.mod_down[level].centering(&prepared);
        (prepared, centering)
    }

    /// Residue `i` of a ModDown: `dest += (x - [p]_{q_i}) · P^{-1} mod q_i`, NTT form, where
    /// `x` is the value's residue modulo `q_i` and `(prepared, centering)` its `P` part from
    /// [`Evaluator::mod_down_prepare`]; `conv` (length `N`) is scratch space.
    fn mod_down_residue(
        &self,
        level: usize,
        i: usize,
        (prepared, centering): &(Scratch, Vec<u8>),
        x: &[u64],
        dest: &mut [u64],
        conv: &mut [u64],
    ) {
        let ctx = &self.ctx;
        ctx.mod_down[level].convert_prepared_centered(prepared, centering, i..i + 1, conv);
        ctx.ntt[i].forward(conv);
        slice::add_sub_mul_scalar_assign(dest, x, conv, ctx.p_inv_mod_q[i], &ctx.moduli[i]);
    }
}
