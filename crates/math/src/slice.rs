//! Element-wise modular operations on residue slices, vectorized with run-time CPU
//! feature dispatch (`pulp`): the loops are compiled for AVX2 / AVX-512 and the best one
//! available is chosen when called.

use crate::modulus::csub;
use crate::Modulus;
use pulp::Arch;

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

/// `a[i] = a[i] · c mod q` for a constant `c < q`.
pub fn mul_scalar_assign(a: &mut [u64], c: u64, q: &Modulus) {
    let c_shoup = q.shoup(c);
    for x in a.iter_mut() {
        *x = q.mul_shoup(*x, c, c_shoup);
    }
}

/// `a[i] = (a[i] - b[i]) · c mod q` for a constant `c < q`.
pub fn sub_mul_scalar_assign(a: &mut [u64], b: &[u64], c: u64, q: &Modulus) {
    let c_shoup = q.shoup(c);
    let qv = q.value();
    for (x, &y) in a.iter_mut().zip(b) {
        *x = q.mul_shoup(*x + qv - y, c, c_shoup);
    }
}

/// Writes into `dst` the residues modulo `q` of the centered representatives (in
/// `(-src_q/2, src_q/2]`) of `src`, which holds residues modulo `src_q`.
pub fn reduce_centered_into(dst: &mut [u64], src: &[u64], src_q: &Modulus, q: &Modulus) {
    let half = src_q.value() >> 1;
    let sq = src_q.value();
    let qv = q.value();
    if sq <= qv {
        // Centered value v = x (x <= half) or x - sq; as a residue mod q: x or x + (q - sq).
        let shift = qv - sq;
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = if x > half { x + shift } else { x };
        }
    } else {
        let shift = qv - q.reduce(sq);
        for (d, &x) in dst.iter_mut().zip(src) {
            let r = q.reduce(x);
            *d = if x > half { q.add(r, shift) } else { r };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_ops_match_scalar() {
        let q = Modulus::new(1_125_899_906_826_241).unwrap();
        let a: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) % q.value()).collect();
        let b: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x12345678abcdef) % q.value()).collect();
        let mut s = a.clone();
        add_assign(&mut s, &b, &q);
        let mut d = a.clone();
        sub_assign(&mut d, &b, &q);
        let mut d2 = a.clone();
        sub_from_assign(&mut d2, &b, &q);
        let mut n = a.clone();
        neg_assign(&mut n, &q);
        let mut m = a.clone();
        mul_scalar_assign(&mut m, 123_456_789, &q);
        let mut sm = a.clone();
        sub_mul_scalar_assign(&mut sm, &b, 987, &q);
        for i in 0..1000 {
            assert_eq!(s[i], q.add(a[i], b[i]));
            assert_eq!(d[i], q.sub(a[i], b[i]));
            assert_eq!(d2[i], q.sub(b[i], a[i]));
            assert_eq!(n[i], q.neg(a[i]));
            assert_eq!(m[i], q.mul(a[i], 123_456_789));
            assert_eq!(sm[i], q.mul(q.sub(a[i], b[i]), 987));
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
    }
}
