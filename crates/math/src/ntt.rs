//! Negacyclic NTT over `Z_q[X]/(X^N + 1)`, backed by `tfhe-ntt`.

use crate::Modulus;
use tfhe_ntt::prime64::Plan;

/// Forward and inverse negacyclic number-theoretic transform for one prime `q ≡ 1 mod 2N`.
///
/// The transform of `a` holds the evaluations `a(ψ^{e_j})` at the odd powers of a primitive
/// `2N`-th root of unity `ψ`, in the (bit-reversed) order `tfhe-ntt` produces. Products of
/// polynomials are pointwise products of their transforms. Galois automorphisms
/// `X -> X^g` act on transforms as permutations, see [`NttOperator::galois_permutation`].
///
/// On x86-64 with AVX-512 IFMA the transforms of primes below 2^50 take `tfhe-ntt`'s IFMA
/// path, chosen at run time.
#[derive(Clone)]
pub struct NttOperator {
    plan: Plan,
    modulus: Modulus,
    /// `exponent[j]`: the odd exponent `e_j` (mod 2N) evaluated at transform index `j`.
    exponent: Vec<u32>,
    /// Inverse of `exponent`, indexed by `(e - 1) / 2`.
    index_of_exponent: Vec<u32>,
}

impl core::fmt::Debug for NttOperator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NttOperator")
            .field("n", &self.n())
            .field("q", &self.modulus.value())
            .field("ifma", &self.plan.use_ifma())
            .finish()
    }
}

impl NttOperator {
    /// Builds the transform for degree `n` (a power of two, at least 16) and the prime `q`.
    /// Returns `None` if `q` is not a prime `≡ 1 mod 2n` below 2^62.
    pub fn new(n: usize, q: u64) -> Option<Self> {
        let modulus = Modulus::new(q)?;
        let plan = Plan::try_new(n, q)?;
        // Find which power of a primitive 2N-th root each transform slot evaluates at, by
        // transforming the monomial X: slot j then holds ψ0^{k_j} for ψ0 = slot 0's value.
        let mut x = vec![0u64; n];
        x[1] = 1;
        plan.fwd(&mut x);
        let psi0 = x[0];
        let two_n = 2 * n;
        let mut power_to_exp = std::collections::HashMap::with_capacity(n);
        let mut p = psi0;
        let psi0_sq = modulus.mul(psi0, psi0);
        for k in (1..two_n).step_by(2) {
            power_to_exp.insert(p, k as u32);
            p = modulus.mul(p, psi0_sq);
        }
        let exponent: Vec<u32> = x.iter().map(|v| power_to_exp.get(v).copied()).collect::<Option<_>>()?;
        let mut index_of_exponent = vec![0u32; n];
        for (j, &e) in exponent.iter().enumerate() {
            index_of_exponent[(e as usize - 1) / 2] = j as u32;
        }
        Some(Self { plan, modulus, exponent, index_of_exponent })
    }

    /// Ring degree `N`.
    pub fn n(&self) -> usize {
        self.exponent.len()
    }

    /// The prime modulus.
    pub fn modulus(&self) -> &Modulus {
        &self.modulus
    }

    /// The odd exponents (mod 2N) at which each transform slot evaluates, relative to the
    /// root slot 0 evaluates at. Two operators with equal tables order their slots alike,
    /// so one Galois permutation serves both.
    pub fn slot_exponents(&self) -> &[u32] {
        &self.exponent
    }

    /// Whether `tfhe-ntt` runs this prime on its AVX-512 IFMA path.
    pub fn uses_ifma(&self) -> bool {
        self.plan.use_ifma()
    }

    /// In-place forward transform. Input: `N` coefficients in `[0, q)`; output: evaluations.
    ///
    /// # Panics
    /// If `a.len() != N` (a programming error, never caused by input bytes: callers check
    /// lengths when deserializing).
    #[inline]
    pub fn forward(&self, a: &mut [u64]) {
        self.plan.fwd(a);
    }

    /// In-place inverse transform, including the `1/N` factor.
    #[inline]
    pub fn backward(&self, a: &mut [u64]) {
        self.plan.inv(a);
        self.plan.normalize(a);
    }

    /// `acc += a ⊙ b` pointwise (transform domain).
    #[inline]
    pub fn mul_acc(&self, acc: &mut [u64], a: &[u64], b: &[u64]) {
        self.plan.mul_accumulate(acc, a, b);
    }

    /// `out = a ⊙ b` pointwise (transform domain).
    #[inline]
    pub fn mul(&self, out: &mut [u64], a: &[u64], b: &[u64]) {
        out.fill(0);
        self.plan.mul_accumulate(out, a, b);
    }

    /// The permutation `π` with `NTT(a(X^g))[j] = NTT(a)[π[j]]`, for an odd Galois element
    /// `g` (taken mod 2N).
    ///
    /// # Panics
    /// If `g` is even.
    pub fn galois_permutation(&self, g: u64) -> Vec<u32> {
        assert!(g % 2 == 1, "Galois elements are odd");
        let two_n = 2 * self.n() as u64;
        self.exponent
            .iter()
            .map(|&e| {
                let target = (e as u64 * (g % two_n)) % two_n;
                self.index_of_exponent[(target as usize - 1) / 2]
            })
            .collect()
    }
}

/// Applies `X -> X^g` to a polynomial in coefficient form (reference implementation,
/// `O(N)`): `out[i·g mod N] = ±a[i]` with the sign from `X^N = -1`.
pub fn automorphism_coefficients(a: &[u64], g: u64, q: &Modulus) -> Vec<u64> {
    let n = a.len() as u64;
    let mut out = vec![0u64; a.len()];
    for (i, &c) in a.iter().enumerate() {
        let t = (i as u64 * g) % (2 * n);
        if t < n {
            out[t as usize] = c;
        } else {
            out[(t - n) as usize] = q.neg(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primes::ntt_primes;

    fn naive_negacyclic(a: &[u64], b: &[u64], q: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = q.mul(a[i], b[j]);
                if i + j < n {
                    out[i + j] = q.add(out[i + j], p);
                } else {
                    out[i + j - n] = q.sub(out[i + j - n], p);
                }
            }
        }
        out
    }

    fn pseudo_random(n: usize, q: u64, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 11) % q
            })
            .collect()
    }

    #[test]
    fn product_matches_schoolbook() {
        for bits in [30u32, 49, 50, 60] {
            let n = 256;
            let q = ntt_primes(bits, n, 1, &[]).unwrap()[0];
            let op = NttOperator::new(n, q).unwrap();
            let a = pseudo_random(n, q, 1);
            let b = pseudo_random(n, q, 2);
            let expect = naive_negacyclic(&a, &b, op.modulus());
            let (mut fa, mut fb) = (a.clone(), b.clone());
            op.forward(&mut fa);
            op.forward(&mut fb);
            let mut prod = vec![0; n];
            op.mul(&mut prod, &fa, &fb);
            op.backward(&mut prod);
            assert_eq!(prod, expect, "bits = {bits}");
            op.backward(&mut fa);
            assert_eq!(fa, a);
        }
    }

    #[test]
    fn galois_permutation_matches_coefficient_automorphism() {
        let n = 1024;
        let q = ntt_primes(50, n, 1, &[]).unwrap()[0];
        let op = NttOperator::new(n, q).unwrap();
        let a = pseudo_random(n, q, 7);
        for g in [5u64, 25, 2 * n as u64 - 1, 3125] {
            let expect = automorphism_coefficients(&a, g, op.modulus());
            let mut fa = a.clone();
            op.forward(&mut fa);
            let perm = op.galois_permutation(g);
            let mut out: Vec<u64> = perm.iter().map(|&j| fa[j as usize]).collect();
            op.backward(&mut out);
            assert_eq!(out, expect, "g = {g}");
        }
    }
}
