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
        cast(s.avx512f._mm512_and_si512(cast(r), s.avx512f._mm512_set1_epi64(((1u64 << 52) - 1) as i64)))
    }

    #[inline(always)]
    fn csub(s: Ifma, x: u64x8, q: u64x8) -> u64x8 {
        cast(s.avx512f._mm512_min_epu64(cast(x), s.avx512f._mm512_sub_epi64(cast(x), cast(q))))
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
                    let t: u64x8 =
                        cast(s.avx512f._mm512_sub_epi64(s.avx512f._mm512_add_epi64(cast(*x), cast(qv)), cast(*y)));
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

    /// `dst[i] = [centered(src[i] mod src_q)] mod q` for `src_q < 2^52`, `q < 2^50`:
    /// Barrett reduction in 52-bit lanes (the Shoup kernel with constant 1), then the shift
    /// of values above `src_q/2`. Returns false without IFMA.
    pub fn reduce_centered(dst: &mut [u64], src: &[u64], src_q: u64, q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let shoup_one = (1u128 << 52) as u64 / q;
        let m = crate::Modulus::new(q).expect("odd modulus");
        let shift = q - m.reduce(src_q);
        s.vectorize(
            #[inline(always)]
            || {
                let (d8, d_tail) = pulp::as_arrays_mut::<8, _>(dst);
                let (s8, s_tail) = pulp::as_arrays::<8, _>(src);
                let qv: u64x8 = cast(s.avx512f._mm512_set1_epi64(q as i64));
                let neg_q: u64x8 = cast(s.avx512f._mm512_set1_epi64(q.wrapping_neg() as i64));
                let one: u64x8 = cast(s.avx512f._mm512_set1_epi64(1));
                let sh: u64x8 = cast(s.avx512f._mm512_set1_epi64(shoup_one as i64));
                let half = s.avx512f._mm512_set1_epi64((src_q >> 1) as i64);
                let shiftv = s.avx512f._mm512_set1_epi64(shift as i64);
                for (d, x) in d8.iter_mut().zip(s8) {
                    let r = csub(s, mul_shoup52(s, cast(*x), one, sh, neg_q), qv);
                    let above = s.avx512f._mm512_cmpgt_epu64_mask(cast(*x), half);
                    let r = s.avx512f._mm512_mask_add_epi64(cast(r), above, cast(r), shiftv);
                    *d = cast(csub(s, cast(r), qv));
                }
                let half = src_q >> 1;
                for (d, &x) in d_tail.iter_mut().zip(s_tail) {
                    let r = m.reduce(x);
                    *d = if x > half { m.add(r, shift) } else { r };
                }
            },
        );
        true
    }

    /// `outs[k][i] = Σ_j d_j[i]·bs[k]_j[i] mod q` for `q < 2^50` and at most 16 terms:
    /// 52-bit products accumulated without reduction (low halves below 2^56, high halves below
    /// 2^52), one reduction per output. False without IFMA.
    pub fn dot<const K: usize>(outs: &mut [&mut [u64]; K], d: &[&[u64]], bs: [&[&[u64]]; K], q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let m = crate::Modulus::new(q).expect("odd modulus");
        let two52 = m.reduce(1u64 << 52);
        let two52_shoup = (((two52 as u128) << 52) / q as u128) as u64;
        let shoup_one = (1u128 << 52) as u64 / q;
        let n = outs[0].len();
        let d8 = split8(d);
        let b8: [Vec<&[[u64; 8]]>; K] = bs.map(split8);
        let chunks = n / 8;
        {
            let mut o8: [&mut [[u64; 8]]; K] = outs.each_mut().map(|o| pulp::as_arrays_mut::<8, _>(o).0);
            s.vectorize(
                #[inline(always)]
                || {
                    let zero: u64x8 = cast(s.avx512f._mm512_setzero_si512());
                    let k = Consts::new(s, q, two52, two52_shoup, shoup_one);
                    for c in 0..chunks {
                        let mut lo = [zero; K];
                        let mut hi = [zero; K];
                        for j in 0..d8.len() {
                            let dv = d8[j][c];
                            for t in 0..K {
                                let bv = b8[t][j][c];
                                lo[t] = cast(s.avx512ifma._mm512_madd52lo_epu64(cast(lo[t]), cast(dv), cast(bv)));
                                hi[t] = cast(s.avx512ifma._mm512_madd52hi_epu64(cast(hi[t]), cast(dv), cast(bv)));
                            }
                        }
                        for t in 0..K {
                            o8[t][c] = cast(k.finish(s, hi[t], lo[t]));
                        }
                    }
                },
            );
        }
        for (t, out) in outs.iter_mut().enumerate() {
            for i in chunks * 8..n {
                let x = (0..d.len()).fold(0u128, |acc, j| acc + d[j][i] as u128 * bs[t][j][i] as u128);
                out[i] = m.reduce_u128(x);
            }
        }
        true
    }

    /// `out[i] = Σ_j d_j[i]·w_j mod q` for constants `w_j < q < 2^50` (up to 16 terms), with
    /// the lazy reduction of [`dot`]. False without IFMA.
    pub fn dot_scalar(out: &mut [u64], d: &[&[u64]], w: &[u64], q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let m = crate::Modulus::new(q).expect("odd modulus");
        let two52 = m.reduce(1u64 << 52);
        let two52_shoup = (((two52 as u128) << 52) / q as u128) as u64;
        let shoup_one = (1u128 << 52) as u64 / q;
        let n = out.len();
        let d8 = split8(d);
        let chunks = n / 8;
        {
            let (o8, _) = pulp::as_arrays_mut::<8, _>(&mut *out);
            s.vectorize(
                #[inline(always)]
                || {
                    let zero: u64x8 = cast(s.avx512f._mm512_setzero_si512());
                    let k = Consts::new(s, q, two52, two52_shoup, shoup_one);
                    let wv: Vec<u64x8> = w.iter().map(|&x| cast(s.avx512f._mm512_set1_epi64(x as i64))).collect();
                    for c in 0..chunks {
                        let (mut lo, mut hi) = (zero, zero);
                        for j in 0..d8.len() {
                            let dv = d8[j][c];
                            lo = cast(s.avx512ifma._mm512_madd52lo_epu64(cast(lo), cast(dv), cast(wv[j])));
                            hi = cast(s.avx512ifma._mm512_madd52hi_epu64(cast(hi), cast(dv), cast(wv[j])));
                        }
                        o8[c] = cast(k.finish(s, hi, lo));
                    }
                },
            );
        }
        for i in chunks * 8..n {
            let x = (0..d.len()).fold(0u128, |acc, j| acc + d[j][i] as u128 * w[j] as u128);
            out[i] = m.reduce_u128(x);
        }
        true
    }

    /// `outs[r][i] = Σ_{(j, w) ∈ rows[r]} x[j][i]·w mod q` for `x[j][i], w < q < 2^50`, any
    /// number of terms: a matrix of constants times a matrix of residues. Blocks of 64
    /// coefficients stay in registers while every row reads the inputs' block (which stays
    /// in cache across rows); 52-bit products accumulate without reduction, the high halves
    /// folded back below `q` as often as `q`'s size needs (every 8 terms at 50 bits, every
    /// 4,000 below 2^26 bits of product). With `y`, the inputs are the products
    /// `x[j][i]·y[j][i] mod q`, formed block by block and never stored. False without IFMA or
    /// for lengths not a multiple of 64.
    pub fn matmul_scalar(
        outs: &mut [&mut [u64]],
        x: &[&[u64]],
        y: Option<&[&[u64]]>,
        rows: &[&[(u32, u64)]],
        q: u64,
    ) -> bool {
        const B: usize = 8; // vectors of 8 lanes per block
        let Some(s) = Ifma::try_new() else { return false };
        let n = x.first().map_or(0, |v| v.len());
        if !n.is_multiple_of(8 * B) {
            return false;
        }
        let m = crate::Modulus::new(q).expect("odd modulus");
        let two52 = m.reduce(1u64 << 52);
        let two52_shoup = (((two52 as u128) << 52) / q as u128) as u64;
        let shoup_one = (1u128 << 52) as u64 / q;
        // Terms between folds: the low halves stay below 2^64 (each adds < 2^52), the high
        // ones below 2^52 - 2^50 - 32 (each adds < 2^(2·bits - 52) for operands below q).
        let hi_bits = (2 * (64 - q.leading_zeros())).saturating_sub(52);
        let period = ((1u64 << 51) >> hi_bits).clamp(1, 4000) as usize;
        let x8 = split8(x);
        let y8 = y.map(split8);
        let barrett = Barrett::new(q);
        let mut o8: Vec<&mut [[u64; 8]]> = outs.iter_mut().map(|o| pulp::as_arrays_mut::<8, _>(o).0).collect();
        s.vectorize(
            #[inline(always)]
            || {
                let zero: u64x8 = cast(s.avx512f._mm512_setzero_si512());
                let mask52: u64x8 = cast(s.avx512f._mm512_set1_epi64(((1u64 << 52) - 1) as i64));
                let k = Consts::new(s, q, two52, two52_shoup, shoup_one);
                // Each block of every input, copied together: the inputs are separate
                // allocations whose blocks share their address bits below the page size and
                // would evict one another from the same cache sets.
                let mut block = vec![zero; x8.len() * B];
                for c in (0..n / 8).step_by(B) {
                    match &y8 {
                        None => {
                            for (dst, src) in block.chunks_exact_mut(B).zip(&x8) {
                                for (d, v) in dst.iter_mut().zip(&src[c..c + B]) {
                                    *d = cast(*v);
                                }
                            }
                        }
                        Some(y8) => {
                            for ((dst, a), b) in block.chunks_exact_mut(B).zip(&x8).zip(y8) {
                                for ((d, u), v) in dst.iter_mut().zip(&a[c..c + B]).zip(&b[c..c + B]) {
                                    *d = barrett.mul(s, cast(*u), cast(*v));
                                }
                            }
                        }
                    }
                    for (row, out) in rows.iter().zip(o8.iter_mut()) {
                        let (mut lo, mut hi) = ([zero; B], [zero; B]);
                        let fold = |lo: &mut [u64x8; B], hi: &mut [u64x8; B]| {
                            for b in 0..B {
                                let h: u64x8 = cast(
                                    s.avx512f
                                        ._mm512_add_epi64(cast(hi[b]), s.avx512f._mm512_srli_epi64::<52>(cast(lo[b]))),
                                );
                                lo[b] = cast(s.avx512f._mm512_and_si512(cast(lo[b]), cast(mask52)));
                                hi[b] = csub(s, mul_shoup52(s, h, k.one, k.shoup_one, k.neg_q), k.q);
                            }
                        };
                        for terms in row.chunks(period) {
                            for &(j, w) in terms {
                                let wv: u64x8 = cast(s.avx512f._mm512_set1_epi64(w as i64));
                                let xs = &block[j as usize * B..(j as usize + 1) * B];
                                for b in 0..B {
                                    lo[b] =
                                        cast(s.avx512ifma._mm512_madd52lo_epu64(cast(lo[b]), cast(xs[b]), cast(wv)));
                                    hi[b] =
                                        cast(s.avx512ifma._mm512_madd52hi_epu64(cast(hi[b]), cast(xs[b]), cast(wv)));
                                }
                            }
                            fold(&mut lo, &mut hi);
                        }
                        for b in 0..B {
                            out[c + b] = cast(k.finish(s, hi[b], lo[b]));
                        }
                    }
                }
            },
        );
        true
    }

    fn split8<'a>(v: &[&'a [u64]]) -> Vec<&'a [[u64; 8]]> {
        v.iter().map(|x| pulp::as_arrays::<8, _>(x).0).collect()
    }

    /// Broadcast constants of the lazy reduction in [`dot_pair`].
    #[derive(Clone, Copy)]
    struct Consts {
        q: u64x8,
        neg_q: u64x8,
        one: u64x8,
        shoup_one: u64x8,
        two52: u64x8,
        two52_shoup: u64x8,
    }

    impl Consts {
        #[inline(always)]
        fn new(s: Ifma, q: u64, two52: u64, two52_shoup: u64, shoup_one: u64) -> Self {
            let b = |x: u64| -> u64x8 { cast(s.avx512f._mm512_set1_epi64(x as i64)) };
            Self {
                q: b(q),
                neg_q: b(q.wrapping_neg()),
                one: b(1),
                shoup_one: b(shoup_one),
                two52: b(two52),
                two52_shoup: b(two52_shoup),
            }
        }

        /// `(hi·2^52 + lo) mod q` for `hi < 2^52 - 16`, `lo < 2^56`.
        #[inline(always)]
        fn finish(self, s: Ifma, hi: u64x8, lo: u64x8) -> u64x8 {
            let hi: u64x8 = cast(s.avx512f._mm512_add_epi64(cast(hi), s.avx512f._mm512_srli_epi64::<52>(cast(lo))));
            let lo: u64x8 =
                cast(s.avx512f._mm512_and_si512(cast(lo), s.avx512f._mm512_set1_epi64(((1u64 << 52) - 1) as i64)));
            let r_hi = csub(s, mul_shoup52(s, hi, self.two52, self.two52_shoup, self.neg_q), self.q);
            let r_lo = csub(s, mul_shoup52(s, lo, self.one, self.shoup_one, self.neg_q), self.q);
            csub(s, cast(s.avx512f._mm512_add_epi64(cast(r_hi), cast(r_lo))), self.q)
        }
    }

    /// `a[i] = a[i]·b[i] mod q` for `a, b < q < 2^50`: Barrett reduction of the 100-bit
    /// product with `μ = floor(2^(β+51)/q)`, `β = bits(q)`: the quotient estimate from the top
    /// bits is at most 3 below the true one, so two conditional subtractions finish.
    /// False without IFMA.
    pub fn mul_assign(a: &mut [u64], b: &[u64], q: u64) -> bool {
        let Some(s) = Ifma::try_new() else { return false };
        let m = crate::Modulus::new(q).expect("odd modulus");
        let barrett = Barrett::new(q);
        s.vectorize(
            #[inline(always)]
            || {
                let (a8, a_tail) = pulp::as_arrays_mut::<8, _>(a);
                let (b8, b_tail) = pulp::as_arrays::<8, _>(b);
                for (x, y) in a8.iter_mut().zip(b8) {
                    *x = cast(barrett.mul(s, cast(*x), cast(*y)));
                }
                for (x, &y) in a_tail.iter_mut().zip(b_tail) {
                    *x = m.mul(*x, y);
                }
            },
        );
        true
    }

    /// Constants of the Barrett product of [`mul_assign`].
    #[derive(Clone, Copy)]
    struct Barrett {
        q: u64,
        beta: u32,
        mu: u64,
    }

    impl Barrett {
        fn new(q: u64) -> Self {
            let beta = 64 - q.leading_zeros();
            Self { q, beta, mu: ((1u128 << (beta + 51)) / q as u128) as u64 }
        }

        /// `x·y mod q` for `x, y < q < 2^50`.
        #[inline(always)]
        fn mul(self, s: Ifma, x: u64x8, y: u64x8) -> u64x8 {
            let f = s.avx512f;
            let zero = f._mm512_setzero_si512();
            let qv: u64x8 = cast(f._mm512_set1_epi64(self.q as i64));
            let two_q: u64x8 = cast(f._mm512_set1_epi64((2 * self.q) as i64));
            let neg_q = f._mm512_set1_epi64(self.q.wrapping_neg() as i64);
            let mask52 = f._mm512_set1_epi64(((1u64 << 52) - 1) as i64);
            let lo = s.avx512ifma._mm512_madd52lo_epu64(zero, cast(x), cast(y));
            let hi = s.avx512ifma._mm512_madd52hi_epu64(zero, cast(x), cast(y));
            // c1 = floor(x·y / 2^(β-1)) < 2^(β+1)
            let c1 = f._mm512_and_si512(
                f._mm512_or_si512(
                    f._mm512_srlv_epi64(lo, f._mm512_set1_epi64((self.beta - 1) as i64)),
                    f._mm512_sllv_epi64(hi, f._mm512_set1_epi64((53 - self.beta) as i64)),
                ),
                mask52,
            );
            let quot = s.avx512ifma._mm512_madd52hi_epu64(zero, c1, f._mm512_set1_epi64(self.mu as i64));
            let r = f._mm512_and_si512(s.avx512ifma._mm512_madd52lo_epu64(lo, quot, neg_q), mask52);
            csub(s, csub(s, cast(r), two_q), qv)
        }
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
                                s.avx512f._mm512_sub_epi64(s.avx512f._mm512_add_epi64(cast(*x), cast(qv)), cast(*y)),
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
    pub fn reduce_centered(_: &mut [u64], _: &[u64], _: u64, _: u64) -> bool {
        false
    }
    pub fn mul_assign(_: &mut [u64], _: &[u64], _: u64) -> bool {
        false
    }
    pub fn dot_scalar(_: &mut [u64], _: &[&[u64]], _: &[u64], _: u64) -> bool {
        false
    }
    pub fn dot<const K: usize>(_: &mut [&mut [u64]; K], _: &[&[u64]], _: [&[&[u64]]; K], _: u64) -> bool {
        false
    }
    pub fn matmul_scalar(
        _: &mut [&mut [u64]],
        _: &[&[u64]],
        _: Option<&[&[u64]]>,
        _: &[&[(u32, u64)]],
        _: u64,
    ) -> bool {
        false
    }
}

pub(crate) use imp::{add_sub_mul_scalar, dot, dot_scalar, matmul_scalar, mul_assign, reduce_centered, sub_mul_scalar};
