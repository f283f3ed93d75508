//! BFV on the same RNS core: exact integer arithmetic modulo a plaintext modulus `t`, with
//! SIMD batching (Brakerski, CRYPTO 2012; Fan–Vercauteren, ePrint 2012/144; batching by
//! Smart–Vercauteren, DCC 2014).
//!
//! A BFV ciphertext is a [`Ciphertext`] of the chain's top level (scale 1, never rescaled)
//! decrypting to `Δ·m + e` with `Δ = ⌊Q/t⌋`, where the plaintext polynomial `m` holds `N`
//! slot values modulo a prime `t ≡ 1 mod 2N` (its transform modulo `t`). Additions, products
//! with integer constants ([`crate::Evaluator::linear_combinations`] at constant scale 1) and key
//! switching ([`crate::Evaluator::relinearize`]) are the CKKS evaluator's own; what BFV adds is the
//! encoding, decryption `m = round(t·x/Q) mod t`, and the ciphertext product, computed exactly
//! over the integers in an auxiliary basis `B` and scaled by `t/Q` (the RNS variant of
//! Halevi–Polyakov–Shoup, CT-RSA 2019, with exact base conversions; see [`BfvContext::multiply`]).
//!
//! Correctness needs the noise below `Q/(2t)`: [`BfvDecryptor::noise_budget_bits`] reports
//! the margin left.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::SecretKey;
use crate::scratch::{self, Scratch};
use crate::types::{Ciphertext, Plaintext};
use crate::Decryptor;
use blindfold_math::primes::ntt_primes;
use blindfold_math::BasisConverter;
use blindfold_math::NttOperator;
use blindfold_math::{slice, Modulus};
use rayon::prelude::*;
use std::sync::Arc;

/// The BFV layer over a CKKS [`Context`]: the plaintext modulus, its transform, and the
/// auxiliary basis of the ciphertext product.
pub struct BfvContext {
    ctx: Arc<Context>,
    t: Modulus,
    t_ntt: NttOperator,
    /// `Δ = ⌊Q/t⌋ mod q_i` for the top level's primes.
    delta: Vec<u64>,
    /// The auxiliary primes `B` (`log2 B ≥ log2 Q + log2 t + log2 N + 4`), below 2^50.
    aux: Vec<Modulus>,
    aux_ntt: Vec<NttOperator>,
    q_to_aux: BasisConverter,
    aux_to_q: BasisConverter,
    q_to_t: BasisConverter,
    /// `[Q^{-1}]_{b_j}`.
    q_inv_aux: Vec<u64>,
    /// `[Q^{-1}]_t`.
    q_inv_t: u64,
}

impl std::fmt::Debug for BfvContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BfvContext")
            .field("n", &self.ctx.n())
            .field("t", &self.t.value())
            .field("aux_primes", &self.aux.len())
            .finish()
    }
}

impl BfvContext {
    /// BFV with plaintext modulus `t` on `ctx`'s ring and its whole chain `Q = q_0···q_L`
    /// (the special primes serve key switching, as for CKKS; security is `ctx`'s).
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if `t` is not a prime `≡ 1 mod 2N` below 2^61 distinct from
    /// the chain's primes, or leaves less than 20 bits between `Q/t` and the fresh noise.
    pub fn new(ctx: &Arc<Context>, t: u64) -> Result<Arc<Self>> {
        let n = ctx.n();
        let level = ctx.max_level();
        let q: Vec<Modulus> = ctx.moduli[..=level].to_vec();
        let t_ntt = NttOperator::new(n, t).filter(|_| t < 1 << 61 && q.iter().all(|qi| qi.value() != t)).ok_or_else(|| {
            Error::InvalidParameters(format!(
                "plaintext modulus {t}: BFV batching needs a prime ≡ 1 mod 2N = {} below 2^61, not one of the chain's primes",
                2 * n
            ))
        })?;
        let tm = *t_ntt.modulus();
        let log_q: f64 = q.iter().map(|m| (m.value() as f64).log2()).sum();
        let log_t = (t as f64).log2();
        if log_q - log_t < 20.0 + (n as f64).log2() {
            return Err(Error::InvalidParameters(format!(
                "plaintext modulus of {log_t:.1} bits leaves {:.1} bits of Q/t for noise: too few for N = {n}",
                log_q - log_t
            )));
        }
        // Q mod t and Δ mod q_i = -(Q mod t)·t^{-1} mod q_i.
        let q_mod_t = q.iter().fold(1u64, |acc, qi| tm.mul(acc, tm.reduce(qi.value())));
        let delta = q
            .iter()
            .map(|qi| qi.neg(qi.mul(qi.reduce(q_mod_t), qi.inv(qi.reduce(t)).expect("t is not q_i"))))
            .collect();
        // B: NTT primes below 2^50 (the IFMA kernels' range) outside Q, P and t, enough for
        // |t·x·y/Q| with |x|, |y| ≤ Q/2.
        let need = log_q + log_t + (n as f64).log2() + 4.0;
        let mut exclude: Vec<u64> = ctx.moduli.iter().map(Modulus::value).collect();
        exclude.push(t);
        let count = (need / 49.0).ceil() as usize;
        let aux_primes = ntt_primes(50, n, count, &exclude)
            .ok_or_else(|| Error::InvalidParameters("not enough 50-bit primes for the auxiliary basis".into()))?;
        let aux: Vec<Modulus> = aux_primes.iter().map(|&b| Modulus::new(b).expect("prime")).collect();
        let aux_ntt = aux_primes.iter().map(|&b| NttOperator::new(n, b).expect("NTT prime")).collect();
        let q_inv =
            |m: &Modulus| m.inv(q.iter().fold(1u64, |acc, qi| m.mul(acc, m.reduce(qi.value())))).expect("coprime");
        let q_inv_aux = aux.iter().map(q_inv).collect();
        let q_inv_t = q_inv(&tm);
        Ok(Arc::new(Self {
            ctx: ctx.clone(),
            t: tm,
            t_ntt,
            delta,
            q_to_aux: BasisConverter::new(&q, &aux),
            aux_to_q: BasisConverter::new(&aux, &q),
            q_to_t: BasisConverter::new(&q, &[tm]),
            aux,
            aux_ntt,
            q_inv_aux,
            q_inv_t,
        }))
    }

    /// `count` plaintext primes of `bits` bits for `ctx`'s ring (`≡ 1 mod 2N`, none of its
    /// chain or special primes), largest first: the CRT components of a plaintext space.
    ///
    /// # Errors
    /// [`Error::InvalidParameters`] if there are fewer such primes.
    pub fn plaintext_primes(ctx: &Context, bits: u32, count: usize) -> Result<Vec<u64>> {
        let exclude: Vec<u64> = ctx.moduli.iter().map(Modulus::value).collect();
        ntt_primes(bits, ctx.n(), count, &exclude).ok_or_else(|| {
            Error::InvalidParameters(format!("fewer than {count} primes of {bits} bits ≡ 1 mod 2N = {}", 2 * ctx.n()))
        })
    }

    /// The CKKS context underneath (ring, chain, keys).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The plaintext modulus `t`.
    pub fn plaintext_modulus(&self) -> u64 {
        self.t.value()
    }

    /// Slots per plaintext: `N`.
    pub fn slots(&self) -> usize {
        self.ctx.n()
    }

    fn level(&self) -> usize {
        self.ctx.max_level()
    }

    /// Encodes `values` (each below `t`; at most `N`, the rest zero) as the plaintext `Δ·m`
    /// to encrypt with [`crate::SymmetricEncryptor`] or [`crate::Encryptor`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for more than `N` values or one not below `t`.
    pub fn encode(&self, values: &[u64]) -> Result<Plaintext> {
        let n = self.ctx.n();
        if values.len() > n || values.iter().any(|&v| v >= self.t.value()) {
            return Err(Error::InvalidArgument(format!("BFV encodes up to {n} values below t = {}", self.t.value())));
        }
        let mut m = vec![0u64; n];
        m[..values.len()].copy_from_slice(values);
        self.t_ntt.backward(&mut m);
        let level = self.level();
        let mut data = vec![0u64; (level + 1) * n];
        data.par_chunks_exact_mut(n).enumerate().for_each(|(i, d)| {
            let qi = &self.ctx.moduli[i];
            for (o, &c) in d.iter_mut().zip(&m) {
                *o = qi.mul(qi.reduce(c), self.delta[i]);
            }
            self.ctx.ntt[i].forward(d);
        });
        Ok(Plaintext { data, level, scale: 1.0 })
    }

    /// Encodes signed values, each in `[-(t-1)/2, (t-1)/2]` (`t` is odd).
    ///
    /// # Errors
    /// As [`BfvContext::encode`].
    pub fn encode_signed(&self, values: &[i64]) -> Result<Plaintext> {
        let t = self.t.value() as i64;
        if values.iter().any(|&v| v < -(t / 2) || v > t / 2) {
            return Err(Error::InvalidArgument(format!("BFV signed values lie in [-(t-1)/2, (t-1)/2], t = {t}")));
        }
        self.encode(&values.iter().map(|&v| self.t.reduce_i64(v)).collect::<Vec<_>>())
    }

    /// `a += c` in every slot for the integer `c` (the constant polynomial `Δ·[c]_t`).
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a ciphertext of another context or level.
    pub fn add_constant(&self, a: &mut Ciphertext, c: i128) -> Result<()> {
        self.check(a)?;
        let n = self.ctx.n();
        let c = c.rem_euclid(i128::from(self.t.value())) as u64;
        for (i, part) in a.parts[0].chunks_exact_mut(n).enumerate() {
            let qi = &self.ctx.moduli[i];
            let k = qi.mul(qi.reduce(c), self.delta[i]);
            part.iter_mut().for_each(|v| *v = qi.add(*v, k));
        }
        Ok(())
    }

    fn check(&self, a: &Ciphertext) -> Result<()> {
        self.ctx.check_ciphertext(a)?;
        if a.level != self.level() {
            return Err(Error::ForeignObject {
                what: "BFV ciphertext",
                reason: format!("at level {}, BFV ciphertexts stay at the top level {}", a.level, self.level()),
            });
        }
        Ok(())
    }

    /// The product of two size-2 BFV ciphertexts: a size-3 ciphertext of `a·b` slot-wise
    /// modulo `t` (relinearize it with [`crate::Evaluator::relinearize`]).
    ///
    /// Computed exactly: each polynomial's centered representative is extended from `Q` to the
    /// auxiliary basis `B` (exact base conversion, [`BasisConverter::convert_prepared_centered`]),
    /// the tensor product `(a_0 b_0, a_0 b_1 + a_1 b_0, a_1 b_1)` is formed in `Q ∪ B`, where it
    /// does not wrap, and `w = round(t·d/Q) = (t·d − [t·d]_Q)/Q` is computed in `B` from the
    /// exact centered conversion of `[t·d]_Q`, then converted back to `Q`.
    ///
    /// # Errors
    /// [`Error::CiphertextSize`] for inputs that are not size 2; [`Error::ForeignObject`].
    pub fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        for c in [a, b] {
            self.check(c)?;
            if c.parts.len() != 2 {
                return Err(Error::CiphertextSize { op: "BFV multiply", expected: 2, actual: c.parts.len() });
            }
        }
        let ea: Vec<Scratch> = a.parts.iter().map(|p| self.extend(p)).collect();
        let eb_owned: Vec<Scratch>;
        let eb = if std::ptr::eq(a, b) {
            &ea
        } else {
            eb_owned = b.parts.iter().map(|p| self.extend(p)).collect();
            &eb_owned
        };
        let (n, lq, lb) = (self.ctx.n(), self.level() + 1, self.aux.len());
        // Tensor product over Q ∪ B (NTT form), then each output scaled by t/Q.
        let mut d: Vec<Scratch> = (0..3).map(|_| Scratch::overwritten((lq + lb) * n)).collect();
        {
            let [d0, d1, d2] = &mut d[..] else { unreachable!() };
            d0.par_chunks_exact_mut(n)
                .zip(d1.par_chunks_exact_mut(n))
                .zip(d2.par_chunks_exact_mut(n))
                .enumerate()
                .for_each(|(r, ((o0, o1), o2))| {
                    let ntt = self.ntt_of(r);
                    let s = r * n..(r + 1) * n;
                    let (a0, a1, b0, b1) = (&ea[0][s.clone()], &ea[1][s.clone()], &eb[0][s.clone()], &eb[1][s]);
                    ntt.mul(o0, a0, b0);
                    ntt.mul(o1, a0, b1);
                    ntt.mul_acc(o1, a1, b0);
                    ntt.mul(o2, a1, b1);
                });
        }
        let parts = d.into_par_iter().map(|p| self.scale_down(p)).collect();
        Ok(Ciphertext { parts, level: self.level(), scale: 1.0 })
    }

    /// `a²` (see [`BfvContext::multiply`]).
    ///
    /// # Errors
    /// As [`BfvContext::multiply`].
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.multiply(a, a)
    }

    fn ntt_of(&self, r: usize) -> &NttOperator {
        let lq = self.level() + 1;
        if r < lq {
            &self.ctx.ntt[r]
        } else {
            &self.aux_ntt[r - lq]
        }
    }

    /// A polynomial over `Q` (NTT form) extended to `Q ∪ B` (NTT form), its centered
    /// representative in `B`.
    fn extend(&self, p: &[u64]) -> Scratch {
        let (n, lq, lb) = (self.ctx.n(), self.level() + 1, self.aux.len());
        let mut out = Scratch::overwritten((lq + lb) * n);
        out[..lq * n].copy_from_slice(p);
        let mut coeffs = Scratch::copy_of(p);
        coeffs.par_chunks_exact_mut(n).enumerate().for_each(|(i, c)| self.ctx.ntt[i].backward(c));
        let mut prepared = Scratch::overwritten(lq * n);
        self.q_to_aux.prepare(&coeffs, &mut prepared);
        let centering = self.q_to_aux.centering(&prepared);
        let aux_part = &mut out[lq * n..];
        aux_part.par_chunks_exact_mut(n).enumerate().for_each(|(j, o)| {
            self.q_to_aux.convert_prepared_centered(&prepared, &centering, j..j + 1, o);
            self.aux_ntt[j].forward(o);
        });
        out
    }

    /// `round(t·d/Q)` over `Q` (NTT form) for `d` over `Q ∪ B` (NTT form, consumed).
    fn scale_down(&self, mut d: Scratch) -> Vec<u64> {
        let (n, lq) = (self.ctx.n(), self.level() + 1);
        d.par_chunks_exact_mut(n).enumerate().for_each(|(r, c)| self.ntt_of(r).backward(c));
        let (dq, db) = d.split_at_mut(lq * n);
        // [t·d]_Q, centered, converted exactly to B.
        let t = self.t.value();
        dq.par_chunks_exact_mut(n).enumerate().for_each(|(i, c)| {
            let qi = &self.ctx.moduli[i];
            slice::mul_scalar_assign(c, qi.reduce(t), qi);
        });
        let mut prepared = Scratch::overwritten(lq * n);
        self.q_to_aux.prepare(dq, &mut prepared);
        let centering = self.q_to_aux.centering(&prepared);
        // w = (t·d − [t·d]_Q)·Q^{-1} in B.
        db.par_chunks_exact_mut(n).enumerate().for_each(|(j, w)| {
            let bj = &self.aux[j];
            let mut conv = Scratch::overwritten(n);
            self.q_to_aux.convert_prepared_centered(&prepared, &centering, j..j + 1, &mut conv);
            let tb = bj.reduce(t);
            for (x, &c) in w.iter_mut().zip(conv.iter()) {
                *x = bj.mul(bj.sub(bj.mul(*x, tb), c), self.q_inv_aux[j]);
            }
        });
        // Back to Q, exactly (|w| < B/2), then NTT form.
        let mut prepared = Scratch::overwritten(db.len());
        self.aux_to_q.prepare(db, &mut prepared);
        let centering = self.aux_to_q.centering(&prepared);
        let mut out = scratch::vec_overwritten(lq * n);
        out.par_chunks_exact_mut(n).enumerate().for_each(|(i, o)| {
            self.aux_to_q.convert_prepared_centered(&prepared, &centering, i..i + 1, o);
            self.ctx.ntt[i].forward(o);
        });
        out
    }
}

/// BFV decryption (client side).
pub struct BfvDecryptor {
    bfv: Arc<BfvContext>,
    inner: Decryptor,
}

impl BfvDecryptor {
    /// A decryptor holding a copy of the secret key (zeroized on drop).
    pub fn new(bfv: &Arc<BfvContext>, sk: &SecretKey) -> Self {
        Self { bfv: bfv.clone(), inner: Decryptor::new(sk) }
    }

    /// The slot values `m = round(t·(c_0 + c_1 s [+ c_2 s²])/Q) mod t`, each in `[0, t)`.
    ///
    /// # Errors
    /// As [`Decryptor::decrypt`]; [`Error::ForeignObject`] for a ciphertext below the top level.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<u64>> {
        Ok(self.slots_of(&self.phase(ct)?))
    }

    /// The slot values of a phase `x` (coefficient form over `Q`).
    fn slots_of(&self, x: &[u64]) -> Vec<u64> {
        let bfv = &self.bfv;
        let (n, t) = (bfv.ctx.n(), &bfv.t);
        // m = (t·x − [t·x]_Q)/Q ≡ −[t·x]_Q·Q^{-1} (mod t).
        // The phase and everything derived from it is as secret as the key: zeroized.
        let mut tx = zeroize::Zeroizing::new(x.to_vec());
        for (i, c) in tx.chunks_exact_mut(n).enumerate() {
            let qi = &bfv.ctx.moduli[i];
            slice::mul_scalar_assign(c, qi.reduce(t.value()), qi);
        }
        let mut prepared = zeroize::Zeroizing::new(vec![0u64; tx.len()]);
        bfv.q_to_t.prepare(&tx, &mut prepared);
        let centering = bfv.q_to_t.centering(&prepared);
        let mut m = vec![0u64; n];
        bfv.q_to_t.convert_prepared_centered(&prepared, &centering, 0..1, &mut m);
        for v in m.iter_mut() {
            *v = t.neg(t.mul(*v, bfv.q_inv_t));
        }
        bfv.t_ntt.forward(&mut m);
        m
    }

    /// Slot values as signed integers in `[-(t-1)/2, (t-1)/2]`.
    ///
    /// # Errors
    /// As [`BfvDecryptor::decrypt`].
    pub fn decrypt_signed(&self, ct: &Ciphertext) -> Result<Vec<i64>> {
        Ok(self.decrypt(ct)?.into_iter().map(|v| self.bfv.t.center(v)).collect())
    }

    /// Bits of noise budget left: `log2(Q/(2t)) − log2 ‖e‖∞` for the ciphertext's noise `e`
    /// (0 when the decryption may already be wrong).
    ///
    /// # Errors
    /// As [`BfvDecryptor::decrypt`].
    pub fn noise_budget_bits(&self, ct: &Ciphertext) -> Result<f64> {
        let x = self.phase(ct)?;
        let bfv = &self.bfv;
        let n = bfv.ctx.n();
        let m = self.slots_of(&x);
        // e = x − Δ·m, with m's polynomial.
        let mut mp = m;
        bfv.t_ntt.backward(&mut mp);
        let mut e = zeroize::Zeroizing::new(x.to_vec());
        for (i, c) in e.chunks_exact_mut(n).enumerate() {
            let qi = &bfv.ctx.moduli[i];
            for (v, &mc) in c.iter_mut().zip(&mp) {
                *v = qi.sub(*v, qi.mul(qi.reduce(mc), bfv.delta[i]));
            }
        }
        let level = bfv.level();
        let max = (0..n)
            .map(|k| {
                let residues: Vec<u64> = (0..=level).map(|i| e[i * n + k]).collect();
                bfv.ctx.crt_to_f64(&residues).abs()
            })
            .fold(1.0f64, f64::max);
        let log_q: f64 = bfv.ctx.moduli[..=level].iter().map(|q| (q.value() as f64).log2()).sum();
        Ok((log_q - 1.0 - (bfv.t.value() as f64).log2() - max.log2()).max(0.0))
    }

    /// `c_0 + c_1 s (+ c_2 s²)` over `Q`, coefficient form.
    fn phase(&self, ct: &Ciphertext) -> Result<zeroize::Zeroizing<Vec<u64>>> {
        self.bfv.check(ct)?;
        let pt = self.inner.decrypt(ct)?;
        let n = self.bfv.ctx.n();
        let mut x = zeroize::Zeroizing::new(pt.data.clone());
        for (i, c) in x.chunks_exact_mut(n).enumerate() {
            self.bfv.ctx.ntt[i].backward(c);
        }
        Ok(x)
    }
}
