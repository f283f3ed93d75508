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
    /// `Q mod p_j`.
    q_mod_p: Vec<u64>,
    /// `1/q_i` in floating point.
    q_inv_f64: Vec<f64>,
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
        let q_mod_p =
            to.iter().map(|pj| from.iter().fold(1u64, |acc, qi| pj.mul(acc, pj.reduce(qi.value())))).collect();
        let q_inv_f64 = from.iter().map(|qi| 1.0 / qi.value() as f64).collect();
        Self { from: from.to_vec(), to: to.to_vec(), q_hat_inv, q_hat_mod_p, q_mod_p, q_inv_f64 }
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
        let bound = self.from.iter().map(Modulus::value).max().unwrap_or(0);
        for (o, j) in targets.enumerate() {
            crate::slice::dot_scalar(&mut output[o * n..(o + 1) * n], &y, &self.q_hat_mod_p[j], &self.to[j], bound);
        }
    }

    /// The multiple `u` of `Q` that the fast conversion of each coefficient of a
    /// [`BasisConverter::prepare`]d input adds, estimated as `round(Σ_i y_i/q_i)` in floating
    /// point (Halevi–Polyakov–Shoup, CT-RSA 2019, §2.2): what
    /// [`BasisConverter::convert_prepared_centered`] subtracts. It depends on the input only,
    /// so one estimate serves every target. Empty for one source prime (that conversion is
    /// centered already).
    pub fn centering(&self, prepared: &[u64]) -> Vec<u8> {
        let k = self.from.len();
        if k == 1 {
            return Vec::new();
        }
        let n = prepared.len() / k;
        let y: Vec<&[u64]> = prepared.chunks_exact(n).collect();
        (0..n)
            .map(|c| {
                let estimate: f64 = y.iter().zip(&self.q_inv_f64).map(|(yi, inv)| yi[c] as f64 * inv).sum();
                estimate.round() as u8
            })
            .collect()
    }

    /// [`BasisConverter::convert_prepared`] made exact on the centered representative in
    /// `(-Q/2, Q/2]` for several source primes too, by subtracting the multiples of `Q` given
    /// by [`BasisConverter::centering`] of the same input. A misestimate can only happen
    /// within about `2^-50·Q` of `±Q/2`, where both representatives are equally centered.
    /// ModDown needs this: the uncentered conversion leaves an error of mean about
    /// `-(k+1)/2` in every coefficient, which a decoder turns into large errors in the slots
    /// near the root 1.
    ///
    /// # Panics
    /// As [`BasisConverter::convert_prepared`], and if `centering` is neither empty (one
    /// source prime) nor one entry per coefficient.
    pub fn convert_prepared_centered(
        &self,
        prepared: &[u64],
        centering: &[u8],
        targets: core::ops::Range<usize>,
        output: &mut [u64],
    ) {
        self.convert_prepared(prepared, targets.clone(), output);
        let k = self.from.len();
        if k == 1 {
            return;
        }
        let n = prepared.len() / k;
        assert_eq!(centering.len(), n, "one centering entry per coefficient");
        for (o, j) in targets.enumerate() {
            let pj = &self.to[j];
            let multiples: Vec<u64> = (0..=k as u64).map(|m| pj.mul(pj.reduce(m), self.q_mod_p[j])).collect();
            for (out, &u) in output[o * n..(o + 1) * n].iter_mut().zip(centering) {
                *out = pj.sub(*out, multiples[u as usize]);
            }
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

    #[test]
    fn conversion_from_primes_above_52_bits_to_small_primes_is_exact() {
        // The vectorized kernels multiply 52-bit lanes: 60-bit source residues must not take
        // that path (they did, and key switching with 60-bit digits came out wrong).
        let qs: Vec<Modulus> =
            ntt_primes(60, 16, 2, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let ps: Vec<Modulus> =
            ntt_primes(45, 16, 2, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let conv = BasisConverter::new(&qs, &ps);
        let big_q: u128 = qs.iter().map(|q| q.value() as u128).product();
        let xs: Vec<u128> = (0..16u128).map(|i| big_q / 17 * i + i * 0x1234_5678_9abc_def1).collect();
        let mut input = vec![0u64; 2 * 16];
        for (i, q) in qs.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                input[i * 16 + c] = (x % q.value() as u128) as u64;
            }
        }
        let mut prepared = vec![0u64; input.len()];
        conv.prepare(&input, &mut prepared);
        let mut out = vec![0u64; 2 * 16];
        conv.convert_prepared_centered(&prepared, &conv.centering(&prepared), 0..2, &mut out);
        for (j, p) in ps.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                let centered = if x > big_q / 2 { x as i128 - big_q as i128 } else { x as i128 };
                assert_eq!(out[j * 16 + c], centered.rem_euclid(p.value() as i128) as u64, "value {c}, prime {j}");
            }
        }
    }

    #[test]
    fn centered_conversion_is_exact_on_the_centered_representative() {
        let qs: Vec<Modulus> =
            ntt_primes(30, 16, 2, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let ps: Vec<Modulus> =
            ntt_primes(40, 16, 3, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let conv = BasisConverter::new(&qs, &ps);
        let big_q: i128 = qs.iter().map(|q| q.value() as i128).product();
        // Values across (-Q/2, Q/2] and zero; within 2^-40·Q of ±Q/2 either representative may
        // come out (both are equally centered), so the ends stay that far inside.
        let margin = big_q >> 40;
        let xs: Vec<i128> =
            (0..16i128).map(|i| -big_q / 2 + margin + i * ((big_q - 2 * margin) / 15)).chain([0]).collect();
        let n = xs.len();
        let mut input = vec![0u64; 2 * n];
        for (i, q) in qs.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                input[i * n + c] = x.rem_euclid(q.value() as i128) as u64;
            }
        }
        let mut prepared = vec![0u64; input.len()];
        conv.prepare(&input, &mut prepared);
        let mut out = vec![0u64; 3 * n];
        conv.convert_prepared_centered(&prepared, &conv.centering(&prepared), 0..3, &mut out);
        for (j, p) in ps.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                assert_eq!(out[j * n + c], x.rem_euclid(p.value() as i128) as u64, "value {x}, prime {j}");
            }
        }
    }
}
