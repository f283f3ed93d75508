//! Encryption and decryption.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::{expand_uniform, fresh_seed, small_to_ntt, PublicKey, SecretKey};
use crate::types::{Ciphertext, Plaintext};
use blindfold_math::sampler::{self, SecretRng};
use blindfold_math::{slice, Modulus};
use rayon::prelude::*;
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

/// A ciphertext made with the secret key, stored compactly: `c_0` and the 32-byte seed from
/// which `c_1 = a` is expanded. Half the size of a [`Ciphertext`] on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededCiphertext {
    pub(crate) c0: Vec<u64>,
    pub(crate) seed: [u8; 32],
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl SeededCiphertext {
    /// Level of the ciphertext.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Expands `a` from the seed into a full ciphertext.
    pub fn expand(&self, ctx: &Context) -> Ciphertext {
        let c1 = expand_uniform(ctx, &self.seed, 0..=self.level);
        Ciphertext { parts: vec![self.c0.clone(), c1], level: self.level, scale: self.scale }
    }
}

/// Encrypts plaintexts under a public key: anyone may hold one, and it holds no secret.
///
/// Public-key encryption follows CKKS (Cheon–Kim–Kim–Song 2017, §3.4):
/// `(u·b + e_0 + m, u·a + e_1)` with `u` ternary and `e_0, e_1` Gaussian.
pub struct Encryptor {
    ctx: Arc<Context>,
    pk: PublicKey,
    rng: SecretRng,
}

impl Encryptor {
    /// Public-key encryptor.
    ///
    /// # Errors
    /// [`Error::Rng`] if the operating system's random source fails.
    pub fn with_public_key(ctx: &Arc<Context>, pk: &PublicKey) -> Result<Self> {
        let rng = sampler::os_rng().map_err(|e| Error::Rng(e.to_string()))?;
        Ok(Self { ctx: ctx.clone(), pk: pk.clone(), rng })
    }

    /// Replaces the random generator with a seeded one (reproducible tests and known-answer
    /// vectors only).
    pub fn reseed_for_tests(&mut self, seed: [u8; 32]) {
        self.rng = sampler::seeded_rng(seed);
    }

    /// Encrypts with the public key.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a plaintext of other parameters (a level above the top
    /// level, or residues that do not match the ring).
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<Ciphertext> {
        self.ctx.check_plaintext(pt)?;
        let (ctx, pk) = (&self.ctx, &self.pk);
        let n = ctx.n();
        let level = pt.level;
        let u_coeffs = sampler::ternary(&mut self.rng, n);
        let u = small_to_ntt(ctx, &u_coeffs, 0..=level);
        let e0 = sampler::gaussian(&mut self.rng, n);
        let e1 = sampler::gaussian(&mut self.rng, n);
        let mut c0 = small_to_ntt(ctx, &e0, 0..=level);
        let mut c1 = small_to_ntt(ctx, &e1, 0..=level);
        for i in 0..=level {
            let r = i * n..(i + 1) * n;
            ctx.ntt[i].mul_acc(&mut c0[r.clone()], &pk.b[r.clone()], &u[r.clone()]);
            ctx.ntt[i].mul_acc(&mut c1[r.clone()], &pk.a[r.clone()], &u[r.clone()]);
            slice::add_assign(&mut c0[r.clone()], &pt.data[r], &ctx.moduli[i]);
        }
        Ok(Ciphertext { parts: vec![std::mem::take(&mut *c0), std::mem::take(&mut *c1)], level, scale: pt.scale })
    }

    /// Re-randomizes a ciphertext for circuit privacy: adds a fresh encryption of zero under
    /// the public key and floods `c_0` with fresh Gaussian noise of standard deviation
    /// `2^log_sigma` (noise smudging; Gentry 2009, §21; for CKKS, Li–Micciancio,
    /// EUROCRYPT 2021, §5). Decryption gives the same message plus the flooding noise;
    /// the ciphertext is then statistically independent of how it was computed, up to its
    /// message and a statistical distance of at most `√N·B/(2σ)` when the computation's noise
    /// has coefficients below `B` (the Gaussian smudging bound through the KL divergence):
    /// for `λ` bits choose `log_sigma ≥ λ + log2(√N·B)`. The flooding
    /// noise reaches the slots as about `σ·√N/Δ`, so the scale must exceed it by the
    /// precision wanted, and `Q_level` must hold message and noise below half of it.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a ciphertext of other parameters; [`Error::InvalidArgument`]
    /// for one of three parts (relinearize first), or `log_sigma` outside `0..=62`.
    pub fn rerandomize(&mut self, ct: &mut Ciphertext, log_sigma: f64) -> Result<()> {
        self.check_rerandomizable(ct)?;
        if !(0.0..=62.0).contains(&log_sigma) {
            return Err(Error::InvalidArgument(format!("log_sigma = {log_sigma} outside 0..=62")));
        }
        let noise = flooding_noise(&mut self.rng, self.ctx.n(), 2f64.powf(log_sigma));
        self.add_fresh_zero_and(ct, |_, q, i| q.reduce_i128(noise[i]))
    }

    /// Re-randomizes a ciphertext for circuit privacy with noise of any width: adds a fresh
    /// encryption of zero under the public key and floods `c_0` with noise uniform on the
    /// integers of `[-2^log_bound, 2^log_bound)`, drawn exactly (whole 64-bit words, reduced
    /// into every residue). For a computation whose noise has coefficients below `B`, the
    /// flooded noise of `k` ciphertexts is within statistical distance `k·N·B / 2^(log_bound+1)`
    /// of the flooding alone (`|e| / 2T` per coefficient for a shift `e` of a uniform on `2T`
    /// integers). Suited to BFV, whose noise lies far above 2^62 in absolute terms: decryption
    /// stays exact while `Q/(2t)` exceeds the flooding plus the noise.
    ///
    /// # Errors
    /// As [`Encryptor::rerandomize`]; [`Error::InvalidArgument`] if `2^log_bound` is not below
    /// a quarter of the ciphertext's modulus.
    pub fn rerandomize_uniform(&mut self, ct: &mut Ciphertext, log_bound: u32) -> Result<()> {
        self.check_rerandomizable(ct)?;
        let log_q: f64 = self.ctx.moduli[..=ct.level].iter().map(|q| (q.value() as f64).log2()).sum();
        if f64::from(log_bound) + 2.0 > log_q {
            return Err(Error::InvalidArgument(format!(
                "flooding of 2^{log_bound} does not fit a modulus of 2^{log_q:.1} (at most a quarter of it)"
            )));
        }
        use rand_core::Rng;
        let words = (log_bound as usize + 1).div_ceil(64);
        let n = self.ctx.n();
        // Each sample: log_bound + 1 random bits, minus 2^log_bound.
        let mut bits = vec![0u64; n * words];
        bits.iter_mut().for_each(|w| *w = self.rng.next_u64());
        let top = (log_bound + 1) % 64;
        if top != 0 {
            bits.iter_mut().skip(words - 1).step_by(words).for_each(|w| *w &= (1u64 << top) - 1);
        }
        let ctx = self.ctx.clone();
        let moduli = &ctx.moduli[..=ct.level];
        // Per prime: 2^(64j) mod q and 2^log_bound mod q.
        let powers: Vec<(Vec<u64>, u64)> = moduli
            .iter()
            .map(|q| {
                let w = q.reduce_u128(1u128 << 64);
                let pw: Vec<u64> = std::iter::successors(Some(1u64), |&p| Some(q.mul(p, w))).take(words).collect();
                (pw, q.pow(2, u64::from(log_bound)))
            })
            .collect();
        let result = self.add_fresh_zero_and(ct, |l, q, i| {
            let (pw, offset) = &powers[l];
            let v = bits[i * words..(i + 1) * words]
                .iter()
                .zip(pw)
                .fold(0u64, |acc, (&b, &p)| q.add(acc, q.reduce_u128(u128::from(b) * u128::from(p))));
            q.sub(v, *offset)
        });
        bits.zeroize();
        result
    }

    fn check_rerandomizable(&self, ct: &Ciphertext) -> Result<()> {
        self.ctx.check_ciphertext(ct)?;
        if ct.parts.len() != 2 {
            return Err(Error::InvalidArgument("rerandomize: relinearize the ciphertext first".into()));
        }
        Ok(())
    }

    /// `ct += Enc_pk(0)`, and `c_0 += e` for the flooding coefficients `e_j mod q_l = flood(l, q_l, j)`.
    fn add_fresh_zero_and(
        &mut self,
        ct: &mut Ciphertext,
        flood: impl Fn(usize, &Modulus, usize) -> u64 + Sync,
    ) -> Result<()> {
        let level = ct.level;
        let n = self.ctx.n();
        let zero = Plaintext { data: vec![0; (level + 1) * n], level, scale: ct.scale };
        let fresh = self.encrypt(&zero)?;
        let ctx = &self.ctx;
        let (c0, c1) = ct.parts.split_at_mut(1);
        c0[0].par_chunks_exact_mut(n).zip(c1[0].par_chunks_exact_mut(n)).enumerate().for_each(|(i, (a0, a1))| {
            let (q, r) = (&ctx.moduli[i], i * n..(i + 1) * n);
            let mut e: Vec<u64> = (0..n).map(|j| flood(i, q, j)).collect();
            ctx.ntt[i].forward(&mut e);
            slice::add_assign(a0, &e, q);
            slice::add_assign(a0, &fresh.parts[0][r.clone()], q);
            slice::add_assign(a1, &fresh.parts[1][r], q);
        });
        Ok(())
    }
}

/// `n` samples of a rounded Gaussian of standard deviation `sigma` (Box–Muller on 53-bit
/// uniforms), for noise flooding: fresh, independent of any secret, not constant-time.
///
/// A double's 53 bits leave gaps between the values `σ·g` can take once `σ·g` exceeds 2^53
/// (steps of 8 near 2^56): a flooding sample confined to multiples of 8 would let the
/// decryptor read the flooded noise modulo 8. Above 2^32 each sample is therefore the sum,
/// in integers, of a Gaussian of standard deviation `√(σ² − 2^48)` and one of `2^24` (fine
/// enough to be exact at every integer) that fills the first one's gaps; the sum has
/// standard deviation `σ`.
fn flooding_noise(rng: &mut SecretRng, n: usize, sigma: f64) -> Vec<i128> {
    use rand_core::Rng;
    let mut gaussian = |sigma: f64| {
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / 9_007_199_254_740_993.0;
        let u2 = (rng.next_u64() >> 11) as f64 / 9_007_199_254_740_992.0;
        (sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()).round() as i128
    };
    const FINE: f64 = (1u64 << 24) as f64;
    if sigma <= (1u64 << 32) as f64 {
        return (0..n).map(|_| gaussian(sigma)).collect();
    }
    let coarse = (sigma * sigma - FINE * FINE).sqrt();
    (0..n).map(|_| gaussian(coarse) + gaussian(FINE)).collect()
}

/// Encrypts plaintexts with the secret key (the client): `(-a·s + e + m, a)` with `a`
/// expanded from a fresh seed, stored as [`SeededCiphertext`]s (half the size on the wire).
/// Holds a copy of the secret key, zeroized on drop; a separate type from the public-key
/// [`Encryptor`], so no public-key encryptor can carry a secret key.
pub struct SymmetricEncryptor {
    sk: SecretKey,
    rng: SecretRng,
}

impl SymmetricEncryptor {
    /// Secret-key encryptor.
    ///
    /// # Errors
    /// [`Error::Rng`] if the operating system's random source fails.
    pub fn new(sk: &SecretKey) -> Result<Self> {
        let rng = sampler::os_rng().map_err(|e| Error::Rng(e.to_string()))?;
        Ok(Self { sk: SecretKey::from_coefficients(&sk.ctx, sk.coeffs.clone()), rng })
    }

    /// Encrypts into the compact seeded form.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a plaintext of other parameters.
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<SeededCiphertext> {
        self.sk.ctx.check_plaintext(pt)?;
        let seed = fresh_seed(&mut self.rng);
        Ok(encrypt_seeded(&self.sk, pt, seed, &mut self.rng))
    }

    /// [`SymmetricEncryptor::encrypt`] of several plaintexts, in parallel: each gets its own
    /// seed and its own noise generator, both drawn from this encryptor's generator.
    ///
    /// # Errors
    /// [`Error::ForeignObject`] for a plaintext of other parameters.
    pub fn encrypt_batch(&mut self, pts: &[Plaintext]) -> Result<Vec<SeededCiphertext>> {
        for pt in pts {
            self.sk.ctx.check_plaintext(pt)?;
        }
        let seeds: Vec<([u8; 32], Zeroizing<[u8; 32]>)> =
            pts.iter().map(|_| (fresh_seed(&mut self.rng), Zeroizing::new(fresh_seed(&mut self.rng)))).collect();
        let sk = &self.sk;
        Ok(pts
            .par_iter()
            .zip(seeds)
            .map(|(pt, (seed, noise_seed))| encrypt_seeded(sk, pt, seed, &mut sampler::seeded_rng(*noise_seed)))
            .collect())
    }
}

/// `(-a·s + e + m, seed)` with `a` expanded from `seed` and `e` drawn from `rng`.
fn encrypt_seeded(sk: &SecretKey, pt: &Plaintext, seed: [u8; 32], rng: &mut SecretRng) -> SeededCiphertext {
    let ctx = &sk.ctx;
    let n = ctx.n();
    let level = pt.level;
    let a = expand_uniform(ctx, &seed, 0..=level);
    let e = Zeroizing::new(sampler::gaussian(rng, n));
    // c0 starts as the noise (secret) and is public once a·s and the message are in.
    let mut c0 = std::mem::take(&mut *small_to_ntt(ctx, &e, 0..=level));
    c0.par_chunks_exact_mut(n).enumerate().for_each(|(i, c)| {
        let r = i * n..(i + 1) * n;
        let mut prod = Zeroizing::new(vec![0u64; n]); // a·s: secret
        ctx.ntt[i].mul(&mut prod, &a[r.clone()], &sk.ntt[r.clone()]);
        slice::sub_assign(c, &prod, &ctx.moduli[i]);
        slice::add_assign(c, &pt.data[r], &ctx.moduli[i]);
    });
    SeededCiphertext { c0, seed, level, scale: pt.scale }
}

/// Decrypts ciphertexts with the secret key (client side).
pub struct Decryptor {
    sk: SecretKey,
}

impl Decryptor {
    /// A decryptor holding a copy of the secret key (zeroized on drop).
    pub fn new(sk: &SecretKey) -> Self {
        Self { sk: SecretKey::from_coefficients(&sk.ctx, sk.coeffs.clone()) }
    }

    /// `c_0 + c_1·s (+ c_2·s²)` at the ciphertext's level and scale.
    ///
    /// The result still carries the encryption noise: if decrypted values leave the client,
    /// see [`Decryptor::decrypt_flooded`] and SECURITY.md (Li–Micciancio 2021).
    ///
    /// # Errors
    /// [`Error::CiphertextSize`] for a ciphertext of fewer than 2 or more than 3 parts;
    /// [`Error::ForeignObject`] for a ciphertext of other parameters.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        if !(2..=3).contains(&ct.parts.len()) {
            return Err(Error::CiphertextSize { op: "decrypt", expected: 2, actual: ct.parts.len() });
        }
        let ctx = &self.sk.ctx;
        ctx.check_ciphertext(ct)?;
        let n = ctx.n();
        let mut m = ct.parts[0].clone();
        let mut s2 = Zeroizing::new(vec![0u64; n]);
        for i in 0..=ct.level {
            let r = i * n..(i + 1) * n;
            let s = &self.sk.ntt[r.clone()];
            ctx.ntt[i].mul_acc(&mut m[r.clone()], &ct.parts[1][r.clone()], s);
            if ct.parts.len() == 3 {
                ctx.ntt[i].mul(&mut s2, s, s);
                ctx.ntt[i].mul_acc(&mut m[r.clone()], &ct.parts[2][r], &s2);
            }
        }
        Ok(Plaintext { data: m, level: ct.level, scale: ct.scale })
    }

    /// Decrypts and adds fresh Gaussian noise of standard deviation `2^log_sigma` to every
    /// coefficient (noise flooding) before the result is decoded and shared, so the
    /// decryption does not expose the ciphertext's own noise, which depends on the secret key
    /// (Li–Micciancio, EUROCRYPT 2021, §5). Choose `log_sigma` above the noise bound of the
    /// computation by the statistical security wanted; the flooding costs that many bits of
    /// precision.
    ///
    /// # Errors
    /// As [`Decryptor::decrypt`]; [`Error::InvalidArgument`] if `log_sigma` is not in `0..=60`.
    pub fn decrypt_flooded(&self, ct: &Ciphertext, log_sigma: u32) -> Result<Plaintext> {
        if log_sigma > 60 {
            return Err(Error::InvalidArgument(format!("log_sigma = {log_sigma} above 60")));
        }
        let mut pt = self.decrypt(ct)?;
        let ctx = &self.sk.ctx;
        let n = ctx.n();
        let mut rng = sampler::os_rng().map_err(|e| Error::Rng(e.to_string()))?;
        let noise = flooding_noise(&mut rng, n, 2f64.powi(log_sigma as i32));
        for i in 0..=pt.level {
            let q = &ctx.moduli[i];
            let mut e: Vec<u64> = noise.iter().map(|&x| q.reduce_i128(x)).collect();
            ctx.ntt[i].forward(&mut e);
            slice::add_assign(&mut pt.data[i * n..(i + 1) * n], &e, q);
        }
        Ok(pt)
    }
}

#[cfg(test)]
mod tests {
    use super::flooding_noise;
    use blindfold_math::sampler;

    /// Wide flooding reaches every residue class: a double's gaps above 2^53 would otherwise
    /// confine the samples to multiples of 8 or more, and the decryptor would read the
    /// flooded noise modulo 8.
    #[test]
    fn wide_flooding_samples_fill_the_integers() {
        let mut rng = sampler::seeded_rng([3; 32]);
        for log_sigma in [20, 40, 56, 62] {
            let samples = flooding_noise(&mut rng, 1 << 14, 2f64.powi(log_sigma));
            let mut classes = [0usize; 16];
            samples.iter().for_each(|&x| classes[x.rem_euclid(16) as usize] += 1);
            // 1,024 expected per class.
            assert!(
                classes.iter().all(|&c| (850..1200).contains(&c)),
                "σ = 2^{log_sigma}: residues mod 16 {classes:?}"
            );
            let std = (samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
            assert!(
                (std.log2() - f64::from(log_sigma)).abs() < 0.05,
                "σ = 2^{log_sigma}: sample deviation 2^{:.3}",
                std.log2()
            );
        }
    }
}
