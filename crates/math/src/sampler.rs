//! Samplers for secrets, errors and uniform polynomials.
//!
//! Secret-dependent samplers are constant-time: no table lookup indexed by a secret and no
//! branch on a secret value. Rejection sampling leaks only how many draws were rejected,
//! which is independent of the accepted value.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroizing;

use crate::Modulus;

/// Standard deviation of the error distribution fixed by the HomomorphicEncryption.org
/// standard (Albrecht et al. 2018, §2.1): σ = 8/√(2π) ≈ 3.19.
pub const ERROR_STD_DEV: f64 = 3.2;

/// Error samples are cut at 6σ (the probability of a larger draw is below 2^-26 per
/// coefficient... and the truncated distribution is what the table describes).
pub const ERROR_BOUND: i64 = 19;

/// A ChaCha20 generator whose state is overwritten when it is dropped.
///
/// Its state regenerates everything it has drawn and will draw (secret keys, noise), so it
/// is secret material: it has no `Debug` and no `Clone`, and dropping it replaces the key,
/// counter and output buffer with those of the all-zero seed (`rand_chacha` offers no
/// zeroization of its own).
pub struct SecretRng(ChaCha20Rng);

impl rand_core::TryRng for SecretRng {
    type Error = core::convert::Infallible;
    #[inline]
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    #[inline]
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    #[inline]
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SecretRng {}

impl Drop for SecretRng {
    fn drop(&mut self) {
        self.0 = ChaCha20Rng::from_seed([0; 32]);
        // Keeps the overwrite from being optimized away as a dead store.
        std::hint::black_box(&mut self.0);
    }
}

/// A ChaCha20 generator seeded with 32 bytes from the operating system.
///
/// # Errors
/// If the operating system's random source fails.
pub fn os_rng() -> Result<SecretRng, getrandom::Error> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut())?;
    Ok(SecretRng(ChaCha20Rng::from_seed(*seed)))
}

/// A ChaCha20 generator from a 32-byte seed (for expanding seeded polynomials and for
/// reproducible tests).
pub fn seeded_rng(seed: [u8; 32]) -> SecretRng {
    SecretRng(ChaCha20Rng::from_seed(seed))
}

/// `n` coefficients uniform in `{-1, 0, 1}`.
pub fn ternary<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Zeroizing<Vec<i64>> {
    let mut out = Zeroizing::new(vec![0i64; n]);
    let mut buf = Zeroizing::new([0u8; 64]);
    let mut pos = buf.len();
    for c in out.iter_mut() {
        // Rejection of 255 makes the byte uniform on [0, 255) = 3·85 values.
        let b = loop {
            if pos == buf.len() {
                rng.fill_bytes(buf.as_mut());
                pos = 0;
            }
            let b = buf[pos];
            pos += 1;
            if b != 255 {
                break b;
            }
        };
        // `% 3` by a constant compiles to multiply-and-shift: no data-dependent timing.
        *c = (b % 3) as i64 - 1;
    }
    out
}

/// `n` ternary coefficients with exactly `h` nonzero (a sparse secret): the positions are a
/// uniform `h`-subset (a partial Fisher–Yates shuffle), the signs uniform.
///
/// The positions are drawn with rejection (Lemire), whose timing depends only on how many
/// draws were rejected; the shuffle's memory accesses follow the secret positions, so this
/// sampler is meant for ephemeral secrets made once on the client (bootstrapping's
/// sparse-secret encapsulation), not for values an attacker can time repeatedly.
///
/// # Panics
/// If `h > n`.
pub fn ternary_sparse<R: Rng + ?Sized>(rng: &mut R, n: usize, h: usize) -> Zeroizing<Vec<i64>> {
    assert!(h <= n, "{h} nonzero coefficients among {n}");
    let mut order: Zeroizing<Vec<u32>> = Zeroizing::new((0..n as u32).collect());
    for i in 0..h {
        // Uniform j in [i, n) by Lemire's method.
        let span = (n - i) as u64;
        let j = loop {
            let m = u128::from(rng.next_u64()) * u128::from(span);
            if (m as u64) >= span.wrapping_neg() % span {
                break i + (m >> 64) as usize;
            }
        };
        order.swap(i, j);
    }
    let mut out = Zeroizing::new(vec![0i64; n]);
    for &pos in &order[..h] {
        out[pos as usize] = if rng.next_u32() & 1 == 0 { 1 } else { -1 };
    }
    out
}

/// Cumulative distribution table of the rounded Gaussian of standard deviation
/// [`ERROR_STD_DEV`] on `[-ERROR_BOUND, ERROR_BOUND]`, scaled to 2^64.
fn gaussian_cdt() -> [u64; (2 * ERROR_BOUND) as usize] {
    let weight = |x: i64| (-(x * x) as f64 / (2.0 * ERROR_STD_DEV * ERROR_STD_DEV)).exp();
    let total: f64 = (-ERROR_BOUND..=ERROR_BOUND).map(weight).sum();
    let mut cdt = [0u64; (2 * ERROR_BOUND) as usize];
    let mut acc = 0.0;
    for (i, x) in (-ERROR_BOUND..ERROR_BOUND).enumerate() {
        acc += weight(x) / total;
        cdt[i] = (acc * 18_446_744_073_709_551_616.0).min(u64::MAX as f64) as u64;
    }
    cdt
}

/// `n` samples of the discrete Gaussian error of standard deviation [`ERROR_STD_DEV`],
/// truncated to `[-ERROR_BOUND, ERROR_BOUND]`, by a constant-time scan of the whole
/// cumulative table for every sample.
pub fn gaussian<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Zeroizing<Vec<i64>> {
    let cdt = gaussian_cdt();
    let mut words = Zeroizing::new(vec![0u64; n]);
    for w in words.iter_mut() {
        *w = rng.next_u64();
    }
    let mut out = Zeroizing::new(vec![-ERROR_BOUND; n]);
    // Table entry by table entry across all samples, so the comparisons vectorize.
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || {
            for &t in cdt.iter() {
                for (c, &u) in out.iter_mut().zip(words.iter()) {
                    // (u >= t) without a branch.
                    *c += (u >= t) as i64;
                }
            }
        },
    );
    out
}

/// Fills `out` with values uniform in `[0, q)`, by Lemire's nearly divisionless method
/// (ACM TOMS 2019): the high half of `r·q` for a random word `r`, rejecting the few `r`
/// that would bias it. Primes below 2^32 take 32-bit words, larger ones 64-bit words.
/// Used for public polynomials (expanded from seeds), so its timing is not secret.
pub fn uniform_mod<R: Rng + ?Sized>(rng: &mut R, q: &Modulus, out: &mut [u64]) {
    let qv = q.value();
    let wide = qv >= 1 << 32;
    let word = if wide { 8 } else { 4 };
    let threshold = if wide { qv.wrapping_neg() % qv } else { ((1u64 << 32) - qv) % qv };
    // Words are drawn in blocks of at most the number of values still missing, so exactly
    // the words the one-at-a-time method would draw are consumed, in the same order.
    let mut bytes = [0u8; 2048];
    let mut filled = 0;
    while filled < out.len() {
        let want = (out.len() - filled).min(bytes.len() / word);
        let block = &mut bytes[..want * word];
        rng.fill_bytes(block);
        for w in block.chunks_exact(word) {
            let (value, low) = if wide {
                let m = u64::from_le_bytes(w.try_into().expect("8 bytes")) as u128 * qv as u128;
                ((m >> 64) as u64, m as u64)
            } else {
                let m = u32::from_le_bytes(w.try_into().expect("4 bytes")) as u64 * qv;
                (m >> 32, m & 0xffff_ffff)
            };
            if low >= threshold {
                out[filled] = value;
                filled += 1;
            }
        }
    }
}

/// Writes small signed integers into a residue slice modulo `q`, branch-free.
pub fn small_to_residues(values: &[i64], q: &Modulus, out: &mut [u64]) {
    let qv = q.value();
    let bound = values.iter().fold(0u64, |m, v| m.max(v.unsigned_abs()));
    if bound < qv {
        // |v| < q: add q to negative values, with a mask (vectorizes, no branch on the value).
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(values) {
                    *o = (v as u64).wrapping_add(qv & ((v >> 63) as u64));
                }
            },
        );
    } else {
        for (o, &v) in out.iter_mut().zip(values) {
            *o = q.reduce_i64(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_is_balanced() {
        let mut rng = seeded_rng([1; 32]);
        let s = ternary(&mut rng, 30_000);
        let counts = [-1i64, 0, 1].map(|v| s.iter().filter(|&&x| x == v).count());
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sparse_ternary_has_exact_weight_and_spread() {
        let mut rng = seeded_rng([4; 32]);
        let (mut by_quarter, mut plus) = ([0usize; 4], 0usize);
        for _ in 0..200 {
            let s = ternary_sparse(&mut rng, 4096, 64);
            assert_eq!(s.iter().filter(|&&x| x != 0).count(), 64);
            assert!(s.iter().all(|x| x.abs() <= 1));
            for (i, &x) in s.iter().enumerate().filter(|(_, x)| **x != 0) {
                by_quarter[i / 1024] += 1;
                plus += usize::from(x == 1);
            }
        }
        // 12 800 nonzeros: 3 200 per quarter and 6 400 positive, give or take 4σ.
        assert!(by_quarter.iter().all(|c| (2_990..3_410).contains(c)), "{by_quarter:?}");
        assert!((6_115..6_685).contains(&plus), "{plus}");
    }

    #[test]
    fn gaussian_has_expected_moments() {
        let mut rng = seeded_rng([2; 32]);
        let e = gaussian(&mut rng, 100_000);
        let mean = e.iter().sum::<i64>() as f64 / e.len() as f64;
        let var = e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - ERROR_STD_DEV).abs() < 0.05, "sd {}", var.sqrt());
        assert!(e.iter().all(|x| x.abs() <= ERROR_BOUND));
    }

    #[test]
    fn uniform_is_in_range_and_unbiased() {
        for qv in [97u64, 536_690_689, 68_719_230_977] {
            let q = Modulus::new(qv).unwrap();
            let mut out = vec![0; 20_000];
            uniform_mod(&mut seeded_rng([3; 32]), &q, &mut out);
            assert!(out.iter().all(|&x| x < qv));
            // Each quarter of [0, q) gets about a quarter of the samples.
            let mut quarters = [0usize; 4];
            for &x in &out {
                quarters[(x as u128 * 4 / qv as u128) as usize] += 1;
            }
            assert!(quarters.iter().all(|&c| (4_600..5_400).contains(&c)), "{qv}: {quarters:?}");
        }
        let q = Modulus::new(97).unwrap();
        let mut out = vec![0; 10_000];
        uniform_mod(&mut seeded_rng([4; 32]), &q, &mut out);
        assert!(out.contains(&0) && out.contains(&96));
    }
}
