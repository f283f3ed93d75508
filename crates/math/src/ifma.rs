//! AVX-512 IFMA kernels (52-bit multiply-add) for multiplication by a constant modulo primes
//! below 2^50, selected at run time; other CPUs use the scalar Shoup code in `slice`.

#[cfg(target_arch = "x86_64")]
mod imp {
    use pulp::{cast, u64x8};

    pulp::simd_type! {
        /// x86-64-v4 with AVX-512 IFMA.
        pub struct Ifma {
            pub sse: "sse",
            pub sse2: "sse2",
            pub fxsr: "fxsr",
            pub sse3: "sse3",
            pub ssse3: "ssse3",
            pub sse4_1: "sse4.1",
            pub sse4_2: "sse4.2",
            pub popcnt: "popcnt",
            pub avx: "avx",
            pub avx2: "avx2",
            pub bmi1: "bmi1",
            pub bmi2: "bmi2",
            pub fma: "fma",
            pub lzcnt: "lzcnt",
            pub avx512f: "avx512f",
            pub avx512bw: "avx512bw",
            pub avx512cd: "avx512cd",
            pub avx512dq: "avx512dq",
            pub avx512vl: "avx512vl",
            pub avx512ifma: "avx512ifma",
        }
    }

    /// Shoup multiplication in 52-bit lanes: `a·c mod q` in `[0, 2q)` for `a < 2^52`,
    /// `c < q < 2^50`, `c_shoup = floor(c·2^52 / q)`.
    #[inline(always)]
    fn mul_shoup52(s: Ifma, a: u64x8, c: u64x8, c_shoup: u64x8, neg_q: u64x8) -> u64x8 {
        let zero = cast(s.avx512f._mm512_setzero_si512());
        let quot: u64x8 = cast(s.avx512ifma._mm512_madd52hi_epu64(zero, cast(a), cast(c_shoup)));
        let lo: u64x8 = cast(s.avx512ifma._mm512_madd52lo_epu64(zero, cast(a), cast(c)));
        // lo - quot·q mod 2^52
        let r: u64x8 = cast(s.avx512ifma._mm512_madd52lo_epu64(cast(lo), cast(quot), cast(neg_q)));
        cast(
            s.avx512f
                ._mm512_and_si512(cast(r), s.avx512f._mm512_set1_epi64(((1u64 << 52) - 1) as i64)),
        )
    }

    #[inline(always)]
    fn csub(s: Ifma, x: u64x8, q: u64x8) -> u64x8 {
        cast(
            s.avx512f
                ._mm512_min_epu64(cast(x), s.avx512f._mm512_sub_epi64(cast(x), cast(q))),
        )
    }

    /// `dst[i] = dst[i] + (a[i] - b[i])·c mod q`; returns false if IFMA is unavailable.
    pub fn add_sub_mul_scalar(dst: &mut [u64], a: &[u64], b: &[u64], c: u64, q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let c_shoup = (((c as u128) << 52) / q as u128) as u64;
        s.vectorize(
            #[inline(always)]
            || {
                let (d8, d_tail) = pulp::as_arrays_mut::<8, _>(dst);
                let (a8, a_tail) = pulp::as_arrays::<8, _>(a);
                let (b8, b_tail) = pulp::as_arrays::<8, _>(b);
                let qv: u64x8 = cast(s.avx512f._mm512_set1_epi64(q as i64));
                let neg_q: u64x8 = cast(s.avx512f._mm512_set1_epi64(q.wrapping_neg() as i64));
                let cv: u64x8 = cast(s.avx512f._mm512_set1_epi64(c as i64));
                let csv: u64x8 = cast(s.avx512f._mm512_set1_epi64(c_shoup as i64));
                for ((d, x), y) in d8.iter_mut().zip(a8).zip(b8) {
                    let t: u64x8 = cast(
                        s.avx512f
                            ._mm512_sub_epi64(s.avx512f._mm512_add_epi64(cast(*x), cast(qv)), cast(*y)),
                    );
                    let p = csub(s, mul_shoup52(s, t, cv, csv, neg_q), qv);
                    let sum: u64x8 = cast(s.avx512f._mm512_add_epi64(cast(*d), cast(p)));
                    *d = cast(csub(s, sum, qv));
                }
                let m = crate::Modulus::new(q).expect("odd modulus");
                for ((d, &x), &y) in d_tail.iter_mut().zip(a_tail).zip(b_tail) {
                    *d = m.add(*d, m.mul(m.sub(x, y), c));
                }
            },
        );
        true
    }

    /// `a[i] = (a[i] - b[i])·c mod q` (with `b` empty: `a[i]·c`); false without IFMA.
    pub fn sub_mul_scalar(a: &mut [u64], b: Option<&[u64]>, c: u64, q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let c_shoup = (((c as u128) << 52) / q as u128) as u64;
        s.vectorize(
            #[inline(always)]
            || {
                let qv: u64x8 = cast(s.avx512f._mm512_set1_epi64(q as i64));
                let neg_q: u64x8 = cast(s.avx512f._mm512_set1_epi64(q.wrapping_neg() as i64));
                let cv: u64x8 = cast(s.avx512f._mm512_set1_epi64(c as i64));
                let csv: u64x8 = cast(s.avx512f._mm512_set1_epi64(c_shoup as i64));
                let m = crate::Modulus::new(q).expect("odd modulus");
                let (a8, a_tail) = pulp::as_arrays_mut::<8, _>(a);
                match b {
                    Some(b) => {
                        let (b8, b_tail) = pulp::as_arrays::<8, _>(b);
                        for (x, y) in a8.iter_mut().zip(b8) {
                            let t: u64x8 = cast(
                                s.avx512f
                                    ._mm512_sub_epi64(s.avx512f._mm512_add_epi64(cast(*x), cast(qv)), cast(*y)),
                            );
                            *x = cast(csub(s, mul_shoup52(s, t, cv, csv, neg_q), qv));
                        }
                        for (x, &y) in a_tail.iter_mut().zip(b_tail) {
                            *x = m.mul(m.sub(*x, y), c);
                        }
                    }
                    None => {
                        for x in a8.iter_mut() {
                            *x = cast(csub(s, mul_shoup52(s, cast(*x), cv, csv, neg_q), qv));
                        }
                        for x in a_tail.iter_mut() {
                            *x = m.mul(*x, c);
                        }
                    }
                }
            },
        );
        true
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub fn add_sub_mul_scalar(_: &mut [u64], _: &[u64], _: &[u64], _: u64, _: u64) -> bool {
        false
    }
    pub fn sub_mul_scalar(_: &mut [u64], _: Option<&[u64]>, _: u64, _: u64) -> bool {
        false
    }
}

pub(crate) use imp::{add_sub_mul_scalar, sub_mul_scalar};
