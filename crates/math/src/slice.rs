//! Element-wise modular operations on residue slices, vectorized with run-time CPU
//! feature dispatch (`pulp`): the loops are compiled for AVX2 / AVX-512 and the best one
//! available is chosen when called.

use crate::modulus::csub;
use crate::Modulus;
use pulp::Arch;

/// Moduli below this bound use the AVX-512 IFMA kernels where the CPU has them.
const IFMA_BOUND: u64 = 1 << 50;

/// `a[i] = a[i] + b[i] mod q`.
pub fn add_assign(a: &mut [u64], b: &[u64], q: &Modulus) {
    let q = q.value();
    Arch::new().dispatch(
        #[inline(always)]
        || {
            for (x, &y) in a.iter_mut().zip(b) {
                *x = csub(*x + y, q);
            }
        },
    )
}

/// `a[i] = a[i] - b[i] mod q`.
pub fn sub_assign(a: &mut [u64], b: &[u64], q: &Modulus) {
    let q = q.value();
    Arch::new().dispatch(
        #[inline(always)]
        || {
            for (x, &y) in a.iter_mut().zip(b) {
                *x = csub(*x + q - y, q);
            }
        },
    )
}

/// `a[i] = b[i] - a[i] mod q`.
pub fn sub_from_assign(a: &mut [u64], b: &[u64], q: &Modulus) {
    let q = q.value();
    Arch::new().dispatch(
        #[inline(always)]
        || {
            for (x, &y) in a.iter_mut().zip(b) {
                *x = csub(y + q - *x, q);
            }
        },
    )
}

/// `a[i] = -a[i] mod q`.
pub fn neg_assign(a: &mut [u64], q: &Modulus) {
    let q = q.value();
    Arch::new().dispatch(
        #[inline(always)]
        || {
            for x in a.iter_mut() {
                *x = csub(q - *x, q);
            }
        },
    )
}

/// `a[i] = a[i] · b[i] mod q` (pointwise product, e.g. of NTT-domain polynomials).
pub fn mul_assign(a: &mut [u64], b: &[u64], q: &Modulus) {
    if q.value() < IFMA_BOUND && crate::ifma::mul_assign(a, b, q.value()) {
        return;
    }
    for (x, &y) in a.iter_mut().zip(b) {
        *x = q.mul(*x, y);
    }
}

/// `a[i] = a[i] · c mod q` for a constant `c < q`.
pub fn mul_scalar_assign(a: &mut [u64], c: u64, q: &Modulus) {
    if q.value() < IFMA_BOUND && crate::ifma::sub_mul_scalar(a, None, c, q.value()) {
        return;
    }
    let c_shoup = q.shoup(c);
    for x in a.iter_mut() {
        *x = q.mul_shoup(*x, c, c_shoup);
    }
}

/// `a[i] = (a[i] - b[i]) · c mod q` for a constant `c < q`.
pub fn sub_mul_scalar_assign(a: &mut [u64], b: &[u64], c: u64, q: &Modulus) {
    if q.value() < IFMA_BOUND && crate::ifma::sub_mul_scalar(a, Some(b), c, q.value()) {
        return;
    }
    let c_shoup = q.shoup(c);
    let qv = q.value();
    for (x, &y) in a.iter_mut().zip(b) {
        *x = q.mul_shoup(*x + qv - y, c, c_shoup);
    }
}

/// `dst[i] = dst[i] + (a[i] - b[i]) · c mod q` for a constant `c < q`.
pub fn add_sub_mul_scalar_assign(dst: &mut [u64], a: &[u64], b: &[u64], c: u64, q: &Modulus) {
    if q.value() < IFMA_BOUND && crate::ifma::add_sub_mul_scalar(dst, a, b, c, q.value()) {
        return;
    }
    let c_shoup = q.shoup(c);
    let qv = q.value();
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = csub(*d + q.mul_shoup(x + qv - y, c, c_shoup), qv);
    }
}

/// `K` inner products over `k <= 16` terms sharing the left operands:
/// `outs[t][i] = Σ_j d[j][i]·bs[t][j][i] mod q`, each reduced once. With `K = 2` and a key's
/// two halves as `bs`, this is the core of key switching; with `k = 1` a pointwise product.
/// Operands in `[0, q)`.
///
/// # Panics
/// If `k > 16` or the slices differ in length.
pub fn dot<const K: usize>(mut outs: [&mut [u64]; K], d: &[&[u64]], bs: [&[&[u64]]; K], q: &Modulus) {
    let n = outs[0].len();
    assert!(d.len() <= 16 && bs.iter().all(|b| b.len() == d.len()));
    assert!(
        outs.iter().all(|o| o.len() == n) && d.iter().chain(bs.iter().flat_map(|b| b.iter())).all(|x| x.len() == n)
    );
    if q.value() < IFMA_BOUND && crate::ifma::dot(&mut outs, d, bs, q.value()) {
        return;
    }
    for (t, out) in outs.iter_mut().enumerate() {
        for i in 0..n {
            let x = (0..d.len()).fold(0u128, |acc, j| acc + d[j][i] as u128 * bs[t][j][i] as u128);
            out[i] = q.reduce_u128(x);
        }
    }
}

/// `out[i] = Σ_j d[j][i]·w[j] mod q` for constants `w[j] < q`, operands `d[j][i] < d_bound
/// ≤ 2^62` and `k <= 16` terms (the core of fast basis conversion, where `d` holds residues
/// modulo other primes: `d_bound` is the largest of them).
///
/// # Panics
/// If `k > 16`, the lengths differ or `d_bound > 2^62`.
pub fn dot_scalar(out: &mut [u64], d: &[&[u64]], w: &[u64], q: &Modulus, d_bound: u64) {
    assert!(d.len() <= 16 && d.len() == w.len() && d.iter().all(|x| x.len() == out.len()));
    assert!(d_bound <= 1 << 62, "operands above 2^62");
    // The IFMA kernel multiplies 52-bit lanes: operands must fit.
    if q.value() < IFMA_BOUND && d_bound <= 1 << 52 && crate::ifma::dot_scalar(out, d, w, q.value()) {
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let x = (0..d.len()).fold(0u128, |acc, j| acc + d[j][i] as u128 * w[j] as u128);
        *o = q.reduce_u128(x);
    }
}

/// `outs[r][i] = Σ_{(j, w) ∈ rows[r]} x[j][i]·w mod q`: every row of a sparse matrix of
/// constants `w < q` times the residue vectors `x[j]` (operands in `[0, q)`), any number of
/// terms per row, one reduction per output where the CPU allows (AVX-512 IFMA, `q < 2^50`),
/// else a 128-bit sum per output. The core of a linear layer in batch packing, where every
/// slot of input `j` is one image's feature `j`.
///
/// # Panics
/// If `outs` and `rows` differ in number, a term's index is outside `x`, or the slices
/// differ in length.
pub fn matmul_scalar(outs: &mut [&mut [u64]], x: &[&[u64]], rows: &[&[(u32, u64)]], q: &Modulus) {
    matmul(outs, x, None, rows, q);
}

/// [`matmul_scalar`] on the products `x[j][i]·y[j][i] mod q` (operands in `[0, q)`), formed
/// a block at a time and never stored: a linear layer on squares (`x = y`) or on the
/// cross terms of a tensor product, without materializing them.
///
/// # Panics
/// As [`matmul_scalar`], or if `x` and `y` differ in number.
pub fn matmul_scalar_products(
    outs: &mut [&mut [u64]],
    x: &[&[u64]],
    y: &[&[u64]],
    rows: &[&[(u32, u64)]],
    q: &Modulus,
) {
    assert_eq!(x.len(), y.len(), "one y per x");
    matmul(outs, x, Some(y), rows, q);
}

fn matmul(outs: &mut [&mut [u64]], x: &[&[u64]], y: Option<&[&[u64]]>, rows: &[&[(u32, u64)]], q: &Modulus) {
    let n = outs.first().map_or(0, |o| o.len());
    assert!(outs.len() == rows.len() && outs.iter().all(|o| o.len() == n) && x.iter().all(|v| v.len() == n));
    assert!(y.is_none_or(|y| y.iter().all(|v| v.len() == n)), "y's lengths differ");
    assert!(rows.iter().flat_map(|r| r.iter()).all(|&(j, _)| (j as usize) < x.len()), "term index outside the inputs");
    if q.value() < IFMA_BOUND && crate::ifma::matmul_scalar(outs, x, y, rows, q.value()) {
        return;
    }
    // Blocks of 64 coefficients: every input's block (or product block) formed once, then
    // every row summed over it.
    const BLOCK: usize = 64;
    let mut buf = vec![0u64; x.len() * BLOCK];
    for start in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - start);
        for (j, b) in buf.chunks_exact_mut(BLOCK).enumerate() {
            let xs = &x[j][start..start + len];
            match y {
                None => b[..len].copy_from_slice(xs),
                Some(y) => {
                    b.iter_mut().zip(xs).zip(&y[j][start..start + len]).for_each(|((d, &u), &v)| *d = q.mul(u, v))
                }
            }
        }
        for (row, out) in rows.iter().zip(outs.iter_mut()) {
            for (i, o) in out[start..start + len].iter_mut().enumerate() {
                // Products are below 2^122 (q ≤ 2^61): fold every two terms to stay below 2^124.
                let mut acc = 0u128;
                for (t, &(j, w)) in row.iter().enumerate() {
                    acc += buf[j as usize * BLOCK + i] as u128 * w as u128;
                    if t % 2 == 1 {
                        acc = q.reduce_u128(acc) as u128;
                    }
                }
                *o = q.reduce_u128(acc);
            }
        }
    }
}

/// `dst[i] = src[perm[i]]`: a Galois automorphism applied to NTT slots.
///
/// # Panics
/// If the lengths differ or are not a power of two.
pub fn permute_into(dst: &mut [u64], src: &[u64], perm: &[u32]) {
    let n = src.len();
    assert!(n.is_power_of_two() && dst.len() == n && perm.len() == n);
    let mask = n - 1;
    // The mask lets the compiler prove every index in bounds, so the loop becomes AVX-512
    // gathers (the permutation entries are below n already).
    Arch::new().dispatch(
        #[inline(always)]
        || {
            for (d, &p) in dst.iter_mut().zip(perm) {
                *d = src[p as usize & mask];
            }
        },
    )
}

/// Writes into `dst` the residues modulo `q` of the centered representatives (in
/// `(-src_q/2, src_q/2]`) of `src`, which holds residues modulo `src_q`.
pub fn reduce_centered_into(dst: &mut [u64], src: &[u64], src_q: &Modulus, q: &Modulus) {
    let half = src_q.value() >> 1;
    let sq = src_q.value();
    let qv = q.value();
    // Centered value v = x (x <= half) or x - sq, i.e. x + (q - sq mod q) mod q: computed
    // with a mask rather than a branch (the sign of each coefficient is unpredictable).
    let shift = qv - q.reduce(sq);
    if sq <= qv {
        Arch::new().dispatch(
            #[inline(always)]
            || {
                for (d, &x) in dst.iter_mut().zip(src) {
                    let mask = 0u64.wrapping_sub((x > half) as u64);
                    *d = csub(x + (shift & mask), qv);
                }
            },
        )
    } else if sq < (1 << 52) && qv < IFMA_BOUND && crate::ifma::reduce_centered(dst, src, sq, qv) {
        // done by the IFMA kernel
    } else {
        for (d, &x) in dst.iter_mut().zip(src) {
            let mask = 0u64.wrapping_sub((x > half) as u64);
            *d = csub(q.reduce(x) + (shift & mask), qv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_ops_match_scalar() {
        for bits in [20u32, 33, 40, 49, 50, 55] {
            slice_ops_match_scalar_for(Modulus::new(crate::primes::ntt_primes(bits, 16, 1, &[]).unwrap()[0]).unwrap());
        }
    }

    fn slice_ops_match_scalar_for(q: Modulus) {
        let a: Vec<u64> = (0..1003u64).map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) % q.value()).collect();
        let b: Vec<u64> = (0..1003u64).map(|i| i.wrapping_mul(0x12345678abcdef) % q.value()).collect();
        let mut p = a.clone();
        mul_assign(&mut p, &b, &q);
        for i in 0..a.len() {
            assert_eq!(p[i], q.mul(a[i], b[i]));
        }
        let top = vec![q.value() - 1; 19];
        let mut p = top.clone();
        mul_assign(&mut p, &top, &q);
        assert!(p.iter().all(|&x| x == 1));
        let mut s = a.clone();
        add_assign(&mut s, &b, &q);
        let mut d = a.clone();
        sub_assign(&mut d, &b, &q);
        let mut d2 = a.clone();
        sub_from_assign(&mut d2, &b, &q);
        let mut n = a.clone();
        neg_assign(&mut n, &q);
        let mut m = a.clone();
        let c = 123_456_789 % q.value();
        mul_scalar_assign(&mut m, c, &q);
        let mut sm = a.clone();
        sub_mul_scalar_assign(&mut sm, &b, 987, &q);
        for i in 0..1003 {
            assert_eq!(s[i], q.add(a[i], b[i]));
            assert_eq!(d[i], q.sub(a[i], b[i]));
            assert_eq!(d2[i], q.sub(b[i], a[i]));
            assert_eq!(n[i], q.neg(a[i]));
            assert_eq!(m[i], q.mul(a[i], c));
            assert_eq!(sm[i], q.mul(q.sub(a[i], b[i]), 987));
        }
        let mut asm = b.clone();
        add_sub_mul_scalar_assign(&mut asm, &a, &s, 555, &q);
        for i in 0..1003 {
            assert_eq!(asm[i], q.add(b[i], q.mul(q.sub(a[i], s[i]), 555)));
        }
    }

    #[test]
    fn dot_matches_u128_reference() {
        for bits in [30u32, 49, 50, 58] {
            let q = Modulus::new(crate::primes::ntt_primes(bits, 16, 1, &[]).unwrap()[0]).unwrap();
            for k in [1usize, 3, 16] {
                let n = 67; // not a multiple of 8: exercises the tail
                let gen = |s: u64| -> Vec<u64> {
                    (0..n as u64)
                        .map(|i| (i + 1).wrapping_mul(s).wrapping_mul(0x9e3779b97f4a7c15) % q.value())
                        .collect()
                };
                let mut ds: Vec<Vec<u64>> = (0..k).map(|j| gen(3 * j as u64 + 1)).collect();
                ds[0][5] = q.value() - 1; // extremes
                let bs: Vec<Vec<u64>> = (0..k)
                    .map(|j| {
                        vec![q.value() - 1; n]
                            .into_iter()
                            .zip(gen(3 * j as u64 + 2))
                            .map(|(m, g)| if j == 0 { m } else { g })
                            .collect()
                    })
                    .collect();
                let as_: Vec<Vec<u64>> = (0..k).map(|j| gen(3 * j as u64 + 3)).collect();
                fn r(v: &[Vec<u64>]) -> Vec<&[u64]> {
                    v.iter().map(|x| x.as_slice()).collect()
                }
                let (mut o0, mut o1) = (vec![0; n], vec![0; n]);
                dot([&mut o0, &mut o1], &r(&ds), [&r(&bs), &r(&as_)], &q);
                let mut single = vec![0; n];
                dot([&mut single], &r(&ds), [&r(&bs)], &q);
                assert_eq!(single, o0);
                for i in 0..n {
                    let e0 =
                        (0..k).fold(0u128, |acc, j| (acc + ds[j][i] as u128 * bs[j][i] as u128) % q.value() as u128);
                    let e1 =
                        (0..k).fold(0u128, |acc, j| (acc + ds[j][i] as u128 * as_[j][i] as u128) % q.value() as u128);
                    assert_eq!((o0[i] as u128, o1[i] as u128), (e0, e1), "bits {bits} k {k} i {i}");
                }
            }
        }
    }

    #[test]
    fn matmul_scalar_matches_u128_reference() {
        for bits in [30u32, 45, 49, 58, 61] {
            let q = Modulus::new(crate::primes::ntt_primes(bits, 16, 1, &[]).unwrap()[0]).unwrap();
            // 128: the blocked kernel; 67: the scalar path.
            for n in [128usize, 67] {
                let inputs = 300;
                let xs: Vec<Vec<u64>> = (0..inputs as u64)
                    .map(|j| {
                        (0..n as u64)
                            .map(|i| {
                                if j % 7 == 0 {
                                    q.value() - 1
                                } else {
                                    (i + 1).wrapping_mul(j + 3).wrapping_mul(0x9e3779b97f4a7c15) % q.value()
                                }
                            })
                            .collect()
                    })
                    .collect();
                // Rows of 0, 1, 9 and 300 terms, with the largest constant and repeated inputs.
                let rows: Vec<Vec<(u32, u64)>> = [0usize, 1, 9, 300]
                    .iter()
                    .map(|&k| {
                        (0..k as u64)
                            .map(|t| {
                                (
                                    (t * 37 % inputs as u64) as u32,
                                    if t % 5 == 0 {
                                        q.value() - 1
                                    } else {
                                        t.wrapping_mul(0x12345678abcdef) % q.value()
                                    },
                                )
                            })
                            .collect()
                    })
                    .collect();
                let x: Vec<&[u64]> = xs.iter().map(Vec::as_slice).collect();
                let r: Vec<&[(u32, u64)]> = rows.iter().map(Vec::as_slice).collect();
                let mut outs = vec![vec![7u64; n]; rows.len()];
                let mut o: Vec<&mut [u64]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                matmul_scalar(&mut o, &x, &r, &q);
                for (row, out) in rows.iter().zip(&outs) {
                    for i in 0..n {
                        let e = row.iter().fold(0u128, |acc, &(j, w)| {
                            (acc + xs[j as usize][i] as u128 * w as u128) % q.value() as u128
                        });
                        assert_eq!(out[i] as u128, e, "bits {bits} n {n} terms {}", row.len());
                    }
                }
                // On products x[j]·y[j] (y = x reversed): the fused squares and cross terms.
                let y: Vec<&[u64]> = x.iter().rev().copied().collect();
                let mut o: Vec<&mut [u64]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                matmul_scalar_products(&mut o, &x, &y, &r, &q);
                for (row, out) in rows.iter().zip(&outs) {
                    for i in 0..n {
                        let e = row.iter().fold(0u128, |acc, &(j, w)| {
                            let p = x[j as usize][i] as u128 * y[j as usize][i] as u128 % q.value() as u128;
                            (acc + p * w as u128) % q.value() as u128
                        });
                        assert_eq!(out[i] as u128, e, "products: bits {bits} n {n} terms {}", row.len());
                    }
                }
            }
        }
    }

    #[test]
    fn centered_reduction_between_moduli() {
        let small = Modulus::new(97).unwrap();
        let big = Modulus::new(1_000_003).unwrap();
        let src: Vec<u64> = (0..97).collect();
        let mut dst = vec![0; 97];
        reduce_centered_into(&mut dst, &src, &small, &big);
        for (x, d) in src.iter().zip(&dst) {
            assert_eq!(*d, big.reduce_i64(small.center(*x)));
        }
        let src: Vec<u64> = (0..1000).map(|i| i * 1000).collect();
        let mut dst = vec![0; 1000];
        reduce_centered_into(&mut dst, &src, &big, &small);
        for (x, d) in src.iter().zip(&dst) {
            assert_eq!(*d, small.reduce_i64(big.center(*x)));
        }
        // Large moduli on both sides, every path (IFMA below 2^52 and 2^50, scalar Barrett).
        for (sb, tb) in [(51u32, 40u32), (50, 49), (60, 45), (40, 50)] {
            let s = Modulus::new(crate::primes::ntt_primes(sb, 16, 1, &[]).unwrap()[0]).unwrap();
            let t = Modulus::new(crate::primes::ntt_primes(tb, 16, 1, &[]).unwrap()[0]).unwrap();
            let src: Vec<u64> = (0..4096u64)
                .map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) % s.value())
                .chain([0, 1, s.value() - 1, s.value() / 2, s.value() / 2 + 1])
                .collect();
            let mut dst = vec![0; src.len()];
            reduce_centered_into(&mut dst, &src, &s, &t);
            for (x, d) in src.iter().zip(&dst) {
                assert_eq!(*d, t.reduce_i64(s.center(*x)), "{sb}->{tb} x={x}");
            }
        }
    }
}
