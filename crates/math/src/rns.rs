//! Residue-number-system basis conversion.

use crate::slice::reduce_centered_into;
use crate::Modulus;

/// Converts polynomials from residues modulo `Q = q_0···q_{k-1}` to residues modulo other
/// primes `p_0, …, p_{m-1}` (coefficient domain).
///
/// With one source prime the conversion is exact on the centered representative in
/// `(-q_0/2, q_0/2]`. With several it is the fast basis conversion of Bajard–Eynard–Hasan–
/// Zucca (SAC 2016), `Σ_i [x_i·(Q/q_i)^{-1}]_{q_i} · (Q/q_i) mod p_j`, which returns
/// `x + u·Q` for some integer `0 <= u < k`: the approximation hybrid key switching tolerates
/// (Han–Ki, CT-RSA 2020, §3).
#[derive(Clone, Debug)]
pub struct BasisConverter {
    from: Vec<Modulus>,
    to: Vec<Modulus>,
    /// `[(Q/q_i)^{-1}]_{q_i}` and its Shoup companion.
    q_hat_inv: Vec<(u64, u64)>,
    /// `q_hat_mod_p[j][i] = (Q/q_i) mod p_j`.
    q_hat_mod_p: Vec<Vec<u64>>,
}

impl BasisConverter {
    /// Conversion from the primes `from` to the primes `to` (all distinct primes).
    pub fn new(from: &[Modulus], to: &[Modulus]) -> Self {
        let q_hat_inv = from
            .iter()
            .enumerate()
            .map(|(i, qi)| {
                let prod = from
                    .iter()
                    .enumerate()
                    .filter(|&(l, _)| l != i)
                    .fold(1u64, |acc, (_, ql)| qi.mul(acc, qi.reduce(ql.value())));
                let inv = qi.inv(prod).expect("distinct primes");
                (inv, qi.shoup(inv))
            })
            .collect();
        let q_hat_mod_p = to
            .iter()
            .map(|pj| {
                (0..from.len())
                    .map(|i| {
                        from.iter()
                            .enumerate()
                            .filter(|&(l, _)| l != i)
                            .fold(1u64, |acc, (_, ql)| pj.mul(acc, pj.reduce(ql.value())))
                    })
                    .collect()
            })
            .collect();
        Self { from: from.to_vec(), to: to.to_vec(), q_hat_inv, q_hat_mod_p }
    }

    /// Converts `input` (`k` residue polynomials of degree `n`, concatenated) into `output`
    /// (`m` residue polynomials, concatenated).
    ///
    /// # Panics
    /// If the slice lengths are not `k·n` and `m·n` for the same `n`.
    pub fn convert(&self, input: &[u64], output: &mut [u64]) {
        self.convert_to(input, 0..self.to.len(), output);
    }

    /// Like [`BasisConverter::convert`], for the target primes `targets` only (a range of
    /// indices into the target list), written to `output` in that order.
    ///
    /// # Panics
    /// If the slice lengths do not match `k·n` and `targets.len()·n`.
    pub fn convert_to(&self, input: &[u64], targets: core::ops::Range<usize>, output: &mut [u64]) {
        let mut prepared = vec![0u64; input.len()];
        self.prepare(input, &mut prepared);
        self.convert_prepared(&prepared, targets, output);
    }

    /// First half of a conversion, shared by every target: a copy of `input` for one source
    /// prime, the scaled residues `[x_i·(Q/q_i)^{-1}]_{q_i}` for several.
    ///
    /// # Panics
    /// If `prepared.len() != input.len()` or the length is not a multiple of `k`.
    pub fn prepare(&self, input: &[u64], prepared: &mut [u64]) {
        let k = self.from.len();
        let n = input.len() / k;
        assert!(input.len() == k * n && prepared.len() == input.len());
        if k == 1 {
            prepared.copy_from_slice(input);
            return;
        }
        for (i, qi) in self.from.iter().enumerate() {
            let r = i * n..(i + 1) * n;
            prepared[r.clone()].copy_from_slice(&input[r.clone()]);
            crate::slice::mul_scalar_assign(&mut prepared[r], self.q_hat_inv[i].0, qi);
        }
    }

    /// Second half of a conversion: the residues modulo the targets `targets` of a
    /// [`BasisConverter::prepare`]d input.
    ///
    /// # Panics
    /// If the slice lengths do not match `k·n` and `targets.len()·n`.
    pub fn convert_prepared(&self, prepared: &[u64], targets: core::ops::Range<usize>, output: &mut [u64]) {
        let k = self.from.len();
        let n = prepared.len() / k;
        assert_eq!(prepared.len(), k * n);
        assert_eq!(output.len(), targets.len() * n);
        if k == 1 {
            for (o, pj) in output.chunks_exact_mut(n).zip(&self.to[targets]) {
                reduce_centered_into(o, prepared, &self.from[0], pj);
            }
            return;
        }
        let y: Vec<&[u64]> = prepared.chunks_exact(n).collect();
        for (o, j) in targets.enumerate() {
            crate::slice::dot_scalar(&mut output[o * n..(o + 1) * n], &y, &self.q_hat_mod_p[j], &self.to[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primes::ntt_primes;

    #[test]
    fn fast_conversion_is_exact_up_to_small_multiple_of_q() {
        let qs: Vec<Modulus> =
            ntt_primes(40, 16, 3, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let ps: Vec<Modulus> =
            ntt_primes(50, 16, 2, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let conv = BasisConverter::new(&qs, &ps);
        // x < 2^100 chosen per coefficient; residues mod each q.
        let xs: Vec<u128> = (0..16u128).map(|i| (i * 0x1234_5678_9abc_def1_2345) % (1u128 << 100)).collect();
        let mut input = vec![0u64; 3 * 16];
        for (i, q) in qs.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                input[i * 16 + c] = (x % q.value() as u128) as u64;
            }
        }
        let mut out = vec![0u64; 2 * 16];
        conv.convert(&input, &mut out);
        let big_q: u128 = qs.iter().map(|q| q.value() as u128).product::<u128>();
        let _ = big_q; // Q ~ 2^120 fits u128
        for (j, p) in ps.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                let got = out[j * 16 + c];
                let ok = (0..3u128).any(|u| {
                    let v = (x % p.value() as u128 + u * (big_q % p.value() as u128)) % p.value() as u128;
                    v as u64 == got
                });
                assert!(ok, "coefficient {c} prime {j}");
            }
        }
    }
}
