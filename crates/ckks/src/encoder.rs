//! Canonical-embedding encoder ("special FFT" of Cheon–Kim–Kim–Song 2017, §3.1–3.2).

use crate::context::Context;
use crate::error::{Error, Result};
use crate::types::Plaintext;
use blindfold_math::{slice, Modulus};
use num_complex::Complex64;
use rayon::prelude::*;
use std::f64::consts::PI;
use std::sync::Arc;

/// Encodes vectors of up to `N/2` complex numbers into plaintext polynomials and back.
///
/// Slot `j` holds the evaluation of the plaintext polynomial `m(X)/Δ` at `ζ^{5^j}`, where
/// `ζ = exp(iπ/N)` is a primitive `2N`-th root of unity (CKKS canonical embedding with the
/// slots ordered by powers of 5, so that `X -> X^5` rotates the slots left by one).
/// Encoding is the inverse map rounded to integer coefficients: `O(N log N)` special FFT.
#[derive(Clone, Debug)]
pub struct Encoder {
    ctx: Arc<Context>,
    /// Twiddle factors of the special FFT, stage by stage: for the butterflies of length
    /// `len` (half `h = len/2`), entries `h-1 .. len-1` hold `ζ_len^{5^j mod 4len}` for `j < h`,
    /// with `ζ_len = exp(2πi/4len)`. The inverse FFT uses their conjugates.
    twiddles: Vec<Complex64>,
}

fn bit_reverse<T>(v: &mut [T]) {
    let n = v.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            v.swap(i, j);
        }
    }
}

impl Encoder {
    /// An encoder for the context's ring.
    pub fn new(ctx: &Arc<Context>) -> Self {
        let slots = ctx.n() / 2;
        let mut twiddles = Vec::with_capacity(slots);
        let mut len = 2;
        while len <= slots {
            let lenq = 4 * len;
            let mut g = 1usize; // 5^j mod 4len
            for _ in 0..len / 2 {
                twiddles.push(Complex64::from_polar(1.0, 2.0 * PI * g as f64 / lenq as f64));
                g = g * 5 % lenq;
            }
            len <<= 1;
        }
        Self { ctx: ctx.clone(), twiddles }
    }

    /// Number of slots, `N/2`.
    pub fn slots(&self) -> usize {
        self.ctx.n() / 2
    }

    /// Slot values → "coefficients" (complex form), in place: the inverse special FFT.
    fn fft_special_inv(&self, vals: &mut [Complex64]) {
        let size = vals.len();
        debug_assert_eq!(size, self.slots());
        let mut len = size;
        while len >= 2 {
            let lenh = len / 2;
            let tw = &self.twiddles[lenh - 1..len - 1];
            for chunk in vals.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for ((x, y), w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let (u, v) = (*x + *y, (*x - *y) * w.conj());
                    *x = u;
                    *y = v;
                }
            }
            len = lenh;
        }
        bit_reverse(vals);
        let inv = 1.0 / size as f64;
        for v in vals.iter_mut() {
            *v *= inv;
        }
    }

    /// "Coefficients" (complex form) → slot values, in place: the special FFT.
    fn fft_special(&self, vals: &mut [Complex64]) {
        let size = vals.len();
        debug_assert_eq!(size, self.slots());
        bit_reverse(vals);
        let mut len = 2;
        while len <= size {
            let lenh = len / 2;
            let tw = &self.twiddles[lenh - 1..len - 1];
            for chunk in vals.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for ((x, y), w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let (u, v) = (*x, *y * w);
                    *x = u + v;
                    *y = u - v;
                }
            }
            len <<= 1;
        }
    }

    /// Integer coefficients (as `f64`) of `Δ·m(X)` for the slot values `values` (zero-padded
    /// to `N/2`): the rounded inverse canonical embedding.
    ///
    /// # Errors
    /// [`Error::Encoding`] if there are more than `N/2` values or a value is not finite.
    pub fn embed(&self, values: &[Complex64], scale: f64) -> Result<Vec<f64>> {
        let slots = self.slots();
        if values.len() > slots {
            return Err(Error::Encoding(format!("{} values for {slots} slots", values.len())));
        }
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(Error::Encoding(format!("scale {scale} must be finite and at least 1")));
        }
        if values.iter().any(|v| !(v.re.is_finite() && v.im.is_finite())) {
            return Err(Error::Encoding("values must be finite".into()));
        }
        let mut vals = vec![Complex64::new(0.0, 0.0); slots];
        vals[..values.len()].copy_from_slice(values);
        self.fft_special_inv(&mut vals);
        let mut coeffs = vec![0f64; 2 * slots];
        for (i, v) in vals.iter().enumerate() {
            coeffs[i] = (v.re * scale).round();
            coeffs[i + slots] = (v.im * scale).round();
        }
        Ok(coeffs)
    }

    /// Encodes complex slot values at `level` with scale Δ = `scale` (a real number ≥ 1;
    /// usually [`crate::Parameters::default_scale`], or a prime of the chain so that a later
    /// rescale restores the scale exactly).
    ///
    /// Input shorter than `N/2` is zero-padded.
    ///
    /// # Errors
    /// [`Error::Encoding`] for more than `N/2` values, non-finite values, or scaled values
    /// whose coefficients would not fit below `Q_level / 2`; [`Error::LevelTooLow`]-style
    /// [`Error::InvalidArgument`] if `level > L`.
    pub fn encode(&self, values: &[Complex64], level: usize, scale: f64) -> Result<Plaintext> {
        if level > self.ctx.max_level() {
            return Err(Error::InvalidArgument(format!("level {level} above the top level {}", self.ctx.max_level())));
        }
        let coeffs = self.embed(values, scale)?;
        let n = self.ctx.n();
        let log_q: f64 = self.ctx.moduli[..=level].iter().map(|q| (q.value() as f64).log2()).sum();
        let max = coeffs.iter().fold(0f64, |m, c| m.max(c.abs()));
        if max > 0.0 && max.log2() >= log_q - 1.0 {
            return Err(Error::Encoding(format!(
                "scaled values reach 2^{:.1}, beyond Q_{level}/2 = 2^{:.1}: lower the scale or the values",
                max.log2(),
                log_q - 1.0
            )));
        }
        let mut data = vec![0u64; (level + 1) * n];
        if max < (1u64 << 51) as f64 {
            // Signed coefficients as residues modulo the odd number M = 2^52 - 1; their
            // centered lift is the coefficient itself, reduced into each prime by the
            // vectorized centered reduction.
            let m = Modulus::new((1 << 52) - 1).expect("odd");
            let lifted: Vec<u64> = coeffs
                .iter()
                .map(|&c| {
                    let v = c as i64;
                    (v as u64).wrapping_add(m.value() & ((v >> 63) as u64))
                })
                .collect();
            data.par_chunks_exact_mut(n).enumerate().for_each(|(i, res)| {
                slice::reduce_centered_into(res, &lifted, &m, &self.ctx.moduli[i]);
                self.ctx.ntt[i].forward(res);
            });
        } else {
            data.par_chunks_exact_mut(n).enumerate().for_each(|(i, res)| {
                let q = &self.ctx.moduli[i];
                for (r, &c) in res.iter_mut().zip(&coeffs) {
                    *r = q.reduce_f64(c);
                }
                self.ctx.ntt[i].forward(res);
            });
        }
        Ok(Plaintext { data, level, scale })
    }

    /// The plaintext at `level` with the integer coefficients `coeffs` (as made by
    /// [`Encoder::embed`]) and scale `scale`: each residue reduced and transformed.
    pub(crate) fn plaintext_from_coefficients(&self, coeffs: &[i64], level: usize, scale: f64) -> Plaintext {
        let n = self.ctx.n();
        let mut data = vec![0u64; (level + 1) * n];
        data.par_chunks_exact_mut(n).enumerate().for_each(|(i, res)| {
            blindfold_math::sampler::small_to_residues(coeffs, &self.ctx.moduli[i], res);
            self.ctx.ntt[i].forward(res);
        });
        Plaintext { data, level, scale }
    }

    /// Encodes real slot values (imaginary parts zero); see [`Encoder::encode`].
    ///
    /// # Errors
    /// As [`Encoder::encode`].
    pub fn encode_real(&self, values: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        let c: Vec<Complex64> = values.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        self.encode(&c, level, scale)
    }

    /// Decodes all `N/2` complex slots of a plaintext (dividing by its scale).
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a plaintext of other parameters.
    pub fn decode(&self, pt: &Plaintext) -> Result<Vec<Complex64>> {
        self.ctx.check_plaintext(pt)?;
        let n = self.ctx.n();
        let mut data = zeroize::Zeroizing::new(pt.data.clone());
        self.ctx.backward(&mut data);
        let coeffs: Vec<f64> = if pt.level == 0 {
            let q = &self.ctx.moduli[0];
            data.iter().map(|&x| q.center(x) as f64).collect()
        } else {
            let mut residues = vec![0u64; pt.level + 1];
            (0..n)
                .map(|j| {
                    for (i, r) in residues.iter_mut().enumerate() {
                        *r = data[i * n + j];
                    }
                    self.ctx.crt_to_f64(&residues)
                })
                .collect()
        };
        Ok(self.decode_coefficients(&coeffs, pt.scale))
    }

    /// Slot values of the polynomial with (integer-valued) coefficients `coeffs`, divided by
    /// `scale`: the canonical embedding.
    pub fn decode_coefficients(&self, coeffs: &[f64], scale: f64) -> Vec<Complex64> {
        let slots = self.slots();
        let mut vals: Vec<Complex64> =
            (0..slots).map(|i| Complex64::new(coeffs[i] / scale, coeffs[i + slots] / scale)).collect();
        self.fft_special(&mut vals);
        vals
    }

    /// Decodes the real parts of all `N/2` slots.
    ///
    /// # Errors
    /// As [`Encoder::decode`].
    pub fn decode_real(&self, pt: &Plaintext) -> Result<Vec<f64>> {
        Ok(self.decode(pt)?.into_iter().map(|c| c.re).collect())
    }
}
