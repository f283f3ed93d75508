//! ristretto255 arithmetic on eight points at once with AVX-512 IFMA (52-bit multiply-add),
//! for the server's decryption and discrete logarithms, selected at run time.
//!
//! Field elements of `GF(2^255 − 19)` are five limbs in radix `2^51`, each limb a vector of
//! eight lanes (structure of arrays: lane `k` of every limb is one element). A product of
//! two limbs below `2^52` is split by `vpmadd52luq`/`vpmadd52huq` into its low 52 bits (weight
//! `2^{51(i+j)}`) and high 52 bits (weight `2^{51(i+j)+52}`, twice the next limb's). Points are
//! in extended twisted Edwards coordinates with the Hisil–Wong–Carter–Dawson formulas
//! (Asiacrypt 2008, §3.1, `a = −1`), the same as curve25519-dalek's serial backend; encoding
//! and decoding follow RFC 9496 §4.3, so encodings are byte-for-byte dalek's.
//!
//! Most algorithms here apply the same sequence of operations to all eight lanes (the same
//! bucket, table digit or multiple): the eight lanes are eight ciphertexts under the same
//! function keys. Where the lanes need different entries of a table — eight different keys on
//! one ciphertext ([`Ifma::gather`], scalar loads), or one product split over the lanes with
//! per-lane digits ([`Ifma::straus_per_lane`], masked blends) — each lane reads its own.
//! Inputs and outputs of the decryption paths are public (ciphertexts, keys, decrypted values);
//! encryption ([`Ifma::secret_mul`]) reads every table entry and blends (constant time).

use core::arch::x86_64::__m512i as W;
use curve25519_dalek::ristretto::RistrettoPoint;

pulp::simd_type! {
    /// x86-64-v4 with AVX-512 IFMA.
    pub(crate) struct Ifma {
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

/// Lanes per vector.
pub(crate) const LANES: usize = 8;
const MASK51: u64 = (1 << 51) - 1;
/// `p = 2^255 − 19` in radix 2^51.
const P: [u64; 5] = [MASK51 - 18, MASK51, MASK51, MASK51, MASK51];

/// Eight field elements: limbs below `2^52` (after every operation: below `2^51 + 2^17`).
#[derive(Clone, Copy)]
pub(crate) struct Fe([W; 5]);

/// Eight points in extended coordinates `(X : Y : Z : T)`, `x = X/Z`, `y = Y/Z`, `T = XY/Z`.
#[derive(Clone, Copy)]
pub(crate) struct Point([Fe; 4]);

/// Eight points ready to be added: `(Y + X, Y − X, Z, 2d·T)`.
#[derive(Clone, Copy)]
pub(crate) struct Niels([Fe; 4]);

/// Eight points with `Z = 1`, ready to be added: `(y + x, y − x, 2d·x·y)` (an addition
/// costs one multiplication less than with [`Niels`], and the table a quarter less memory).
#[derive(Clone, Copy)]
pub(crate) struct AffineNiels([Fe; 3]);

/// One point as five 51-bit limbs of each of `(Y + X, Y − X, Z, 2d·T)`: a lane of [`Niels`]
/// stored on its own, for tables read lane by lane ([`Ifma::gather`]).
pub(crate) type NielsLimbs = [[u64; 5]; 4];

/// The identity as [`NielsLimbs`].
const IDENTITY: NielsLimbs = [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0; 5]];

/// The constants of the curve and of RFC 9496, as field elements (computed once).
pub(crate) struct Constants {
    two_d: [u64; 5],
    d: [u64; 5],
    sqrt_m1: [u64; 5],
    invsqrt_a_minus_d: [u64; 5],
}

impl Ifma {
    #[inline(always)]
    fn splat(self, v: u64) -> W {
        self.avx512f._mm512_set1_epi64(v as i64)
    }
    #[inline(always)]
    fn add64(self, a: W, b: W) -> W {
        self.avx512f._mm512_add_epi64(a, b)
    }
    #[inline(always)]
    fn sub64(self, a: W, b: W) -> W {
        self.avx512f._mm512_sub_epi64(a, b)
    }
    #[inline(always)]
    fn and64(self, a: W, b: W) -> W {
        self.avx512f._mm512_and_si512(a, b)
    }
    #[inline(always)]
    fn shr51(self, a: W) -> W {
        self.avx512f._mm512_srli_epi64::<51>(a)
    }
    #[inline(always)]
    fn mul19(self, a: W) -> W {
        let a2 = self.avx512f._mm512_slli_epi64::<1>(a);
        let a16 = self.avx512f._mm512_slli_epi64::<4>(a);
        self.add64(self.add64(a, a2), a16)
    }

    /// One parallel carry: limbs below `2^63` in, below `2^51 + 2^17` out.
    #[inline(always)]
    fn carry(self, z: [W; 5]) -> Fe {
        let m = self.splat(MASK51);
        let c = z.map(|zi| self.shr51(zi));
        let mut r = z.map(|zi| self.and64(zi, m));
        r[0] = self.add64(r[0], self.mul19(c[4]));
        for i in 1..5 {
            r[i] = self.add64(r[i], c[i - 1]);
        }
        Fe(r)
    }

    #[inline(always)]
    fn fe_const(self, limbs: &[u64; 5]) -> Fe {
        Fe(limbs.map(|l| self.splat(l)))
    }

    #[inline(always)]
    fn zero(self) -> Fe {
        self.fe_const(&[0; 5])
    }

    #[inline(always)]
    fn one(self) -> Fe {
        self.fe_const(&[1, 0, 0, 0, 0])
    }

    #[inline(always)]
    pub(crate) fn add(self, a: Fe, b: Fe) -> Fe {
        self.carry(std::array::from_fn(|i| self.add64(a.0[i], b.0[i])))
    }

    /// `a + 4p − b`, carried.
    #[inline(always)]
    pub(crate) fn sub(self, a: Fe, b: Fe) -> Fe {
        self.carry(std::array::from_fn(|i| self.sub64(self.add64(a.0[i], self.splat(4 * P[i])), b.0[i])))
    }

    #[inline(always)]
    fn neg(self, a: Fe) -> Fe {
        self.sub(self.zero(), a)
    }

    #[inline(always)]
    pub(crate) fn mul(self, a: Fe, b: Fe) -> Fe {
        let f = self.avx512f._mm512_setzero_si512();
        let (mut lo, mut hi) = ([f; 9], [f; 9]);
        for i in 0..5 {
            for j in 0..5 {
                lo[i + j] = self.avx512ifma._mm512_madd52lo_epu64(lo[i + j], a.0[i], b.0[j]);
                hi[i + j] = self.avx512ifma._mm512_madd52hi_epu64(hi[i + j], a.0[i], b.0[j]);
            }
        }
        self.fold(lo, hi)
    }

    /// The reduced product from its low and high 52-bit halves per limb position (each below
    /// `2^56`): `z_k = lo_k + 2·hi_{k−1}` (below `2^58`), and `2^255 ≡ 19` folds `z_{k+5}`
    /// into `z_k`.
    #[inline(always)]
    fn fold(self, lo: [W; 9], hi: [W; 9]) -> Fe {
        let f = self.avx512f._mm512_setzero_si512();
        let z = |k: usize| {
            let l = if k < 9 { lo[k] } else { f };
            if k == 0 {
                l
            } else {
                self.add64(l, self.avx512f._mm512_slli_epi64::<1>(hi[k - 1]))
            }
        };
        self.carry(std::array::from_fn(|k| self.add64(z(k), self.mul19(z(k + 5)))))
    }

    /// `a²` with 30 IFMA products instead of 50: the cross products `a_i·a_j` (`i < j`) once,
    /// doubled after accumulation (doubling a limb first would leave the 52-bit inputs).
    #[inline(always)]
    fn square(self, a: Fe) -> Fe {
        let f = self.avx512f._mm512_setzero_si512();
        let (mut lo, mut hi) = ([f; 9], [f; 9]);
        for i in 0..5 {
            for j in i + 1..5 {
                lo[i + j] = self.avx512ifma._mm512_madd52lo_epu64(lo[i + j], a.0[i], a.0[j]);
                hi[i + j] = self.avx512ifma._mm512_madd52hi_epu64(hi[i + j], a.0[i], a.0[j]);
            }
        }
        for k in 0..9 {
            lo[k] = self.avx512f._mm512_slli_epi64::<1>(lo[k]);
            hi[k] = self.avx512f._mm512_slli_epi64::<1>(hi[k]);
        }
        for i in 0..5 {
            lo[2 * i] = self.avx512ifma._mm512_madd52lo_epu64(lo[2 * i], a.0[i], a.0[i]);
            hi[2 * i] = self.avx512ifma._mm512_madd52hi_epu64(hi[2 * i], a.0[i], a.0[i]);
        }
        self.fold(lo, hi)
    }

    #[inline(always)]
    fn square_n(self, mut a: Fe, n: usize) -> Fe {
        for _ in 0..n {
            a = self.square(a);
        }
        a
    }

    /// `a^{(p−5)/8} = a^{2^252 − 3}` (the addition chain of ref10).
    fn pow_p58(self, a: Fe) -> Fe {
        let a2 = self.square(a);
        let a9 = self.mul(self.square_n(a2, 2), a);
        let a11 = self.mul(a9, a2);
        let a_5_0 = self.mul(self.square(a11), a9);
        let a_10_0 = self.mul(self.square_n(a_5_0, 5), a_5_0);
        let a_20_0 = self.mul(self.square_n(a_10_0, 10), a_10_0);
        let a_40_0 = self.mul(self.square_n(a_20_0, 20), a_20_0);
        let a_50_0 = self.mul(self.square_n(a_40_0, 10), a_10_0);
        let a_100_0 = self.mul(self.square_n(a_50_0, 50), a_50_0);
        let a_200_0 = self.mul(self.square_n(a_100_0, 100), a_100_0);
        let a_250_0 = self.mul(self.square_n(a_200_0, 50), a_50_0);
        self.mul(self.square_n(a_250_0, 2), a)
    }

    /// `1/a = a^{p−2} = (a^{(p−5)/8})^8·a^3` (zero stays zero).
    fn invert(self, a: Fe) -> Fe {
        self.mul(self.square_n(self.pow_p58(a), 3), self.mul(self.square(a), a))
    }

    /// The inverses of `values`, lane by lane, by Montgomery's trick (one inversion for the
    /// slice, three multiplications per element); zeros stay zero.
    fn batch_invert(self, values: &mut [Fe]) {
        let zero = self.zero();
        let zeros: Vec<u8> = values.iter().map(|&v| self.eq(v, zero)).collect();
        // prefix[k] = Π_{j<k} v_j (zeros counted as ones).
        let mut prefix = Vec::with_capacity(values.len());
        let mut acc = self.one();
        for (v, &z) in values.iter().zip(&zeros) {
            prefix.push(acc);
            acc = self.mul(acc, self.select(z, *v, self.one()));
        }
        let mut inv = self.invert(acc);
        for ((v, &z), before) in values.iter_mut().zip(&zeros).zip(prefix).rev() {
            let nonzero = self.select(z, *v, self.one());
            *v = self.select(z, self.mul(inv, before), zero);
            inv = self.mul(inv, nonzero);
        }
    }

    /// `a^e` for a little-endian exponent (square and multiply; for constants only).
    fn pow(self, a: Fe, e: &[u8; 32]) -> Fe {
        let mut acc = self.one();
        for bit in (0..256).rev() {
            acc = self.square(acc);
            if (e[bit / 8] >> (bit % 8)) & 1 == 1 {
                acc = self.mul(acc, a);
            }
        }
        acc
    }

    /// The canonical limbs (value in `[0, p)`, limbs below `2^51`).
    #[inline(always)]
    fn canonical(self, a: Fe) -> [W; 5] {
        let m = self.splat(MASK51);
        // q = ⌊(a + 19)/2^255⌋ ∈ {0, 1} (a < 2p), then a + 19q − q·2^255.
        let mut q = self.shr51(self.add64(a.0[0], self.splat(19)));
        for i in 1..5 {
            q = self.shr51(self.add64(a.0[i], q));
        }
        let mut h = a.0;
        h[0] = self.add64(h[0], self.mul19(q));
        for i in 0..4 {
            h[i + 1] = self.add64(h[i + 1], self.shr51(h[i]));
            h[i] = self.and64(h[i], m);
        }
        h[4] = self.and64(h[4], m);
        h
    }

    /// Lanes whose element is odd (RFC 9496's `IS_NEGATIVE`).
    #[inline(always)]
    fn is_negative(self, a: Fe) -> u8 {
        self.avx512f._mm512_test_epi64_mask(self.canonical(a)[0], self.splat(1))
    }

    /// Lanes where `a = b`.
    #[inline(always)]
    fn eq(self, a: Fe, b: Fe) -> u8 {
        let (a, b) = (self.canonical(a), self.canonical(b));
        (0..5).fold(0xff, |m, i| m & self.avx512f._mm512_cmpeq_epi64_mask(a[i], b[i]))
    }

    /// `b` in the lanes of `mask`, `a` elsewhere.
    #[inline(always)]
    fn select(self, mask: u8, a: Fe, b: Fe) -> Fe {
        Fe(std::array::from_fn(|i| self.avx512f._mm512_mask_blend_epi64(mask, a.0[i], b.0[i])))
    }

    #[inline(always)]
    fn abs(self, a: Fe) -> Fe {
        self.select(self.is_negative(a), a, self.neg(a))
    }

    /// RFC 9496 §4.2 `SQRT_RATIO_M1(u, v)`: (lanes where `u/v` is a square, the non-negative
    /// `√(u/v)` or `√(i·u/v)`).
    fn sqrt_ratio_m1(self, u: Fe, v: Fe, c: &Constants) -> (u8, Fe) {
        let v3 = self.mul(self.square(v), v);
        let v7 = self.mul(self.square(v3), v);
        let r = self.mul(self.mul(u, v3), self.pow_p58(self.mul(u, v7)));
        let check = self.mul(v, self.square(r));
        let sqrt_m1 = self.fe_const(&c.sqrt_m1);
        let neg_u = self.neg(u);
        let correct = self.eq(check, u);
        let flipped = self.eq(check, neg_u);
        let flipped_i = self.eq(check, self.mul(neg_u, sqrt_m1));
        let r = self.select(flipped | flipped_i, r, self.mul(sqrt_m1, r));
        (correct | flipped, self.abs(r))
    }

    /// The curve's constants, from their definitions: `d = −121665/121666`,
    /// `√−1 = 2^{(p−1)/4}`, `1/√(a − d)` with `a = −1`.
    fn compute_constants(self) -> Constants {
        let mut p_minus_2 = [0xff; 32];
        p_minus_2[0] = 0xeb;
        p_minus_2[31] = 0x7f;
        // (p − 1)/4 = 2^253 − 5.
        let mut quarter = [0xff; 32];
        quarter[0] = 0xfb;
        quarter[31] = 0x1f;
        let small = |v: u64| self.fe_const(&[v, 0, 0, 0, 0]);
        let d = self.neg(self.mul(small(121665), self.pow(small(121666), &p_minus_2)));
        let sqrt_m1 = self.pow(small(2), &quarter);
        let lane0 = |a: Fe| self.canonical(a).map(|w| pulp::cast::<W, [u64; 8]>(w)[0]);
        let partial =
            Constants { two_d: lane0(self.add(d, d)), d: lane0(d), sqrt_m1: lane0(sqrt_m1), invsqrt_a_minus_d: [0; 5] };
        let a_minus_d = self.sub(self.neg(self.one()), d);
        let (_, invsqrt) = self.sqrt_ratio_m1(self.one(), a_minus_d, &partial);
        Constants { invsqrt_a_minus_d: lane0(invsqrt), ..partial }
    }

    /// The constants, computed on first use.
    pub(crate) fn constants(self) -> &'static Constants {
        static CONSTANTS: std::sync::OnceLock<Constants> = std::sync::OnceLock::new();
        CONSTANTS.get_or_init(|| self.vectorize(|| self.compute_constants()))
    }

    /// Eight 32-byte little-endian field elements, reduced modulo 2^255 (bit 255 dropped).
    fn fe_from_bytes(self, bytes: &[[u8; 32]; LANES]) -> Fe {
        let limbs: [[u64; LANES]; 5] = std::array::from_fn(|k| {
            std::array::from_fn(|lane| {
                let w = |i: usize| u64::from_le_bytes(bytes[lane][8 * i..8 * i + 8].try_into().expect("8 bytes"));
                let bit = 51 * k;
                let (word, shift) = (bit / 64, bit % 64);
                let mut v = w(word) >> shift;
                if shift + 51 > 64 && word + 1 < 4 {
                    v |= w(word + 1) << (64 - shift);
                }
                v & MASK51
            })
        });
        Fe(limbs.map(pulp::cast))
    }

    /// The canonical 32-byte encodings of eight field elements.
    fn fe_to_bytes(self, a: Fe) -> [[u8; 32]; LANES] {
        let limbs = self.canonical(a).map(pulp::cast::<W, [u64; LANES]>);
        std::array::from_fn(|lane| {
            let l = |k: usize| limbs[k][lane] as u128;
            let lo = l(0) | l(1) << 51 | (l(2) & ((1 << 26) - 1)) << 102;
            let hi = l(2) >> 26 | l(3) << 25 | l(4) << 76;
            let mut out = [0u8; 32];
            out[..16].copy_from_slice(&lo.to_le_bytes());
            out[16..].copy_from_slice(&hi.to_le_bytes());
            out
        })
    }

    /// The identity in all lanes.
    #[inline(always)]
    pub(crate) fn identity(self) -> Point {
        Point([self.zero(), self.one(), self.one(), self.zero()])
    }

    #[inline(always)]
    pub(crate) fn to_niels(self, p: &Point, c: &Constants) -> Niels {
        let [x, y, z, t] = p.0;
        Niels([self.add(y, x), self.sub(y, x), z, self.mul(t, self.fe_const(&c.two_d))])
    }

    /// `p + q` (`negate`: `p − q`), complete formulas: 8 multiplications.
    #[inline(always)]
    pub(crate) fn add_niels(self, p: &Point, q: &Niels, negate: bool) -> Point {
        let [x, y, z, t] = p.0;
        let [q_ypx, q_ymx, q_z, q_t2d] = q.0;
        let (q_ypx, q_ymx) = if negate { (q_ymx, q_ypx) } else { (q_ypx, q_ymx) };
        let pp = self.mul(self.add(y, x), q_ypx);
        let mm = self.mul(self.sub(y, x), q_ymx);
        let tt = self.mul(t, q_t2d);
        let zz = self.mul(z, q_z);
        let zz2 = self.add(zz, zz);
        let (cx, cy) = (self.sub(pp, mm), self.add(pp, mm));
        let (cz, ct) =
            if negate { (self.sub(zz2, tt), self.add(zz2, tt)) } else { (self.add(zz2, tt), self.sub(zz2, tt)) };
        Point([self.mul(cx, ct), self.mul(cy, cz), self.mul(cz, ct), self.mul(cx, cy)])
    }

    /// `p + q` (`negate`: `p − q`) for `q` with `Z = 1`: 7 multiplications.
    #[inline(always)]
    pub(crate) fn add_affine(self, p: &Point, q: &AffineNiels, negate: bool) -> Point {
        let [x, y, z, t] = p.0;
        let [q_ypx, q_ymx, q_t2d] = q.0;
        let (q_ypx, q_ymx) = if negate { (q_ymx, q_ypx) } else { (q_ypx, q_ymx) };
        let pp = self.mul(self.add(y, x), q_ypx);
        let mm = self.mul(self.sub(y, x), q_ymx);
        let tt = self.mul(t, q_t2d);
        let zz2 = self.add(z, z);
        let (cx, cy) = (self.sub(pp, mm), self.add(pp, mm));
        let (cz, ct) =
            if negate { (self.sub(zz2, tt), self.add(zz2, tt)) } else { (self.add(zz2, tt), self.sub(zz2, tt)) };
        Point([self.mul(cx, ct), self.mul(cy, cz), self.mul(cz, ct), self.mul(cx, cy)])
    }

    /// `points` with `Z = 1`, sharing one field inversion (Montgomery's trick).
    pub(crate) fn to_affine_niels(self, points: &[Point], c: &Constants) -> Vec<AffineNiels> {
        let mut z_inv: Vec<Fe> = points.iter().map(|p| p.0[2]).collect();
        self.batch_invert(&mut z_inv);
        let two_d = self.fe_const(&c.two_d);
        points
            .iter()
            .zip(z_inv)
            .map(|(p, z_inv)| {
                let (x, y) = (self.mul(p.0[0], z_inv), self.mul(p.0[1], z_inv));
                AffineNiels([self.add(y, x), self.sub(y, x), self.mul(self.mul(x, y), two_d)])
            })
            .collect()
    }

    /// `2p` (Hisil–Wong–Carter–Dawson `dbl-2008-hwcd`, `a = −1`): 4 squarings and 4
    /// multiplications.
    #[inline(always)]
    pub(crate) fn double(self, p: &Point) -> Point {
        let [x, y, z, _] = p.0;
        let (a, b) = (self.square(x), self.square(y));
        let zz = self.square(z);
        let c = self.add(zz, zz);
        let a_plus_b = self.add(a, b);
        let e = self.sub(self.square(self.add(x, y)), a_plus_b);
        let g = self.sub(b, a);
        let f = self.sub(g, c);
        let h = self.neg(a_plus_b);
        Point([self.mul(e, f), self.mul(g, h), self.mul(f, g), self.mul(e, h)])
    }

    #[inline(always)]
    pub(crate) fn add_points(self, p: &Point, q: &Point, c: &Constants) -> Point {
        self.add_niels(p, &self.to_niels(q, c), false)
    }

    /// RFC 9496 §4.3.1: decodes eight encodings; the mask has the lanes that were valid
    /// (invalid lanes hold some point and must not be used).
    pub(crate) fn decode(self, bytes: &[[u8; 32]; LANES], c: &Constants) -> (Point, u8) {
        let canonical = bytes.iter().enumerate().fold(0u8, |m, (lane, b)| {
            // s < p and s even (non-negative).
            let below_p = b[31] < 0x7f || b[1..31].iter().any(|&x| x != 0xff) || b[0] < 0xed;
            m | (u8::from(b[31] >> 7 == 0 && below_p && b[0] & 1 == 0) << lane)
        });
        let s = self.fe_from_bytes(bytes);
        let ss = self.square(s);
        let u1 = self.sub(self.one(), ss);
        let u2 = self.add(self.one(), ss);
        let u2_sqr = self.square(u2);
        let v = self.sub(self.neg(self.mul(self.fe_const(&c.d), self.square(u1))), u2_sqr);
        let (was_square, invsqrt) = self.sqrt_ratio_m1(self.one(), self.mul(v, u2_sqr), c);
        let den_x = self.mul(invsqrt, u2);
        let den_y = self.mul(self.mul(invsqrt, den_x), v);
        let x = self.abs(self.mul(self.add(s, s), den_x));
        let y = self.mul(u1, den_y);
        let t = self.mul(x, y);
        let y_zero = self.eq(y, self.zero());
        let valid = canonical & was_square & !self.is_negative(t) & !y_zero;
        (Point([x, y, self.one(), t]), valid)
    }

    /// RFC 9496 §4.3.2: the canonical encodings of eight points.
    pub(crate) fn encode(self, p: &Point, c: &Constants) -> [[u8; 32]; LANES] {
        let [x0, y0, z0, t0] = p.0;
        let u1 = self.mul(self.add(z0, y0), self.sub(z0, y0));
        let u2 = self.mul(x0, y0);
        let (_, invsqrt) = self.sqrt_ratio_m1(self.one(), self.mul(u1, self.square(u2)), c);
        let den1 = self.mul(invsqrt, u1);
        let den2 = self.mul(invsqrt, u2);
        let z_inv = self.mul(self.mul(den1, den2), t0);
        let sqrt_m1 = self.fe_const(&c.sqrt_m1);
        let (ix0, iy0) = (self.mul(x0, sqrt_m1), self.mul(y0, sqrt_m1));
        let enchanted = self.mul(den1, self.fe_const(&c.invsqrt_a_minus_d));
        let rotate = self.is_negative(self.mul(t0, z_inv));
        let x = self.select(rotate, x0, iy0);
        let y = self.select(rotate, y0, ix0);
        let den_inv = self.select(rotate, den2, enchanted);
        let y = self.select(self.is_negative(self.mul(x, z_inv)), y, self.neg(y));
        self.fe_to_bytes(self.abs(self.mul(den_inv, self.sub(z0, y))))
    }

    /// The RFC 9496 encodings of `2·P` for each of `points`, sharing one field inversion
    /// (Montgomery's trick) instead of an inverse square root per point: encoding a doubled
    /// point needs only the inverses of `e·g` and `f·h` below (the batched double-and-encode
    /// of the Ristretto specification, also curve25519-dalek's `double_and_compress_batch`).
    /// About 25 multiplications per point against about 270 for [`Ifma::encode`].
    pub(crate) fn double_encode_batch(self, points: &[Point], c: &Constants) -> Vec<[[u8; 32]; LANES]> {
        let d = self.fe_const(&c.d);
        // Per point: e = 2XY, f = Z² + dT², g = Y² + X², h = Z² − dT² (2P's coordinates are
        // their products), and e·g, f·h.
        let states: Vec<[Fe; 6]> = points
            .iter()
            .map(|p| {
                let [x, y, z, t] = p.0;
                let (xx, yy, zz) = (self.square(x), self.square(y), self.square(z));
                let dtt = self.mul(self.square(t), d);
                let e = self.mul(x, self.add(y, y));
                let (f, g, h) = (self.add(zz, dtt), self.add(yy, xx), self.sub(zz, dtt));
                [e, f, g, h, self.mul(e, g), self.mul(f, h)]
            })
            .collect();
        let mut inverses: Vec<Fe> = states.iter().map(|[.., eg, fh]| self.mul(*eg, *fh)).collect();
        self.batch_invert(&mut inverses);
        let (sqrt_m1, invsqrt_a_minus_d) = (self.fe_const(&c.sqrt_m1), self.fe_const(&c.invsqrt_a_minus_d));
        states
            .iter()
            .zip(inverses)
            .map(|(&[e, f, g, h, eg, fh], inv)| {
                let (z_inv, t_inv) = (self.mul(eg, inv), self.mul(fh, inv));
                let rotate = self.is_negative(self.mul(eg, z_inv));
                let (e, g, h, magic) = (
                    self.select(rotate, e, g),
                    self.select(rotate, g, self.neg(e)),
                    self.select(rotate, h, self.mul(f, sqrt_m1)),
                    self.select(rotate, invsqrt_a_minus_d, sqrt_m1),
                );
                let g = self.select(self.is_negative(self.mul(self.mul(h, e), z_inv)), g, self.neg(g));
                let s = self.mul(self.sub(h, g), self.mul(magic, self.mul(g, t_inv)));
                self.fe_to_bytes(self.abs(s))
            })
            .collect()
    }

    /// Entry `i` of up to eight rows of dalek points, doubled, in the lanes of `out[i]` (missing
    /// lanes repeat the first row): dalek's batched double-and-encode (one shared inversion
    /// per row), then [`Ifma::decode`]. Doubling is what makes the conversion cheap; every
    /// product computed from these points is doubled too, and its discrete logarithm is
    /// told so.
    pub(crate) fn load_doubled(self, rows: &[&[RistrettoPoint]], c: &Constants) -> Vec<Point> {
        debug_assert!(!rows.is_empty() && rows.len() <= LANES);
        let encoded: Vec<Vec<_>> = rows.iter().map(|r| RistrettoPoint::double_and_compress_batch(*r)).collect();
        (0..rows[0].len())
            .map(|i| {
                let bytes = std::array::from_fn(|lane| encoded.get(lane).unwrap_or(&encoded[0])[i].to_bytes());
                let (p, valid) = self.decode(&bytes, c);
                debug_assert_eq!(valid, 0xff, "dalek encodings decode");
                p
            })
            .collect()
    }

    /// `P, 2P, …, count·P`, ready to be added.
    pub(crate) fn multiples(self, p: &Point, count: usize, c: &Constants) -> Vec<Niels> {
        let first = self.to_niels(p, c);
        let mut m = *p;
        let mut out = vec![first];
        for _ in 1..count {
            m = self.add_niels(&m, &first, false);
            out.push(self.to_niels(&m, c));
        }
        out
    }

    /// `acc ± |d|·P` from the multiples of `P`.
    #[inline(always)]
    pub(crate) fn add_multiple(self, acc: &mut Point, multiples: &[Niels], d: i64) {
        if d != 0 {
            *acc = self.add_niels(acc, &multiples[d.unsigned_abs() as usize - 1], d < 0);
        }
    }

    /// The fixed-base table of `P` for `bits`-bit windows: `d·2^{bits·w}·P` for
    /// `d = 1..2^{bits−1}` (row `w`, entry `d − 1`) and the `⌈254/bits⌉` windows `w` of
    /// `ipfe::signed_digits` (with 5 bits, the layout of `ipfe`'s serial table). Wider windows
    /// cost fewer additions per multiplication and more to build: `ipfe`'s products choose by
    /// the number of keys.
    pub(crate) fn fixed_base_points(self, p: &Point, bits: u32, c: &Constants) -> Vec<Vec<Point>> {
        let half = 1usize << (bits - 1);
        let mut base = *p;
        (0..254u32.div_ceil(bits))
            .map(|_| {
                let step = self.to_niels(&base, c);
                let mut row = Vec::with_capacity(half);
                row.push(base);
                for k in 1..half {
                    row.push(self.add_niels(&row[k - 1], &step, false));
                }
                // 2^bits·base = 2·(2^{bits−1}·base).
                base = self.double(&row[half - 1]);
                row
            })
            .collect()
    }

    /// [`Ifma::fixed_base_points`] with `Z = 1` (one shared inversion), rows of `2^{bits−1}`.
    pub(crate) fn fixed_base_table(self, p: &Point, bits: u32, c: &Constants) -> Vec<Vec<AffineNiels>> {
        let rows = self.fixed_base_points(p, bits, c);
        let affine = self.to_affine_niels(&rows.concat(), c);
        affine.chunks(1 << (bits - 1)).map(<[_]>::to_vec).collect()
    }

    /// `acc ± |d|·P` from the affine multiples of `P` (a row of [`Ifma::fixed_base_table`]).
    #[inline(always)]
    pub(crate) fn add_affine_multiple(self, acc: &mut Point, multiples: &[AffineNiels], d: i64) {
        if d != 0 {
            *acc = self.add_affine(acc, &multiples[d.unsigned_abs() as usize - 1], d < 0);
        }
    }

    /// The eight lanes of `n` as separate points.
    pub(crate) fn split_lanes(self, n: &Niels) -> [NielsLimbs; LANES] {
        let limbs = n.0.map(|fe| fe.0.map(pulp::cast::<W, [u64; LANES]>));
        std::array::from_fn(|lane| std::array::from_fn(|k| std::array::from_fn(|l| limbs[k][l][lane])))
    }

    /// `−n` in the lanes of `negative`, `n` elsewhere.
    #[inline(always)]
    fn negate_lanes(self, n: Niels, negative: u8) -> Niels {
        let [ypx, ymx, z, t2d] = n.0;
        Niels([
            self.select(negative, ypx, ymx),
            self.select(negative, ymx, ypx),
            z,
            self.select(negative, t2d, self.neg(t2d)),
        ])
    }

    /// Per lane, tables of `rows` for [`Ifma::gather`]: row `r` at `r·width`, its entry 0
    /// the identity and entry `m` the row's `m`-th point (`width − 1` points per row).
    pub(crate) fn lane_tables(
        self,
        rows: impl ExactSizeIterator<Item = Vec<Niels>>,
        width: usize,
    ) -> Vec<Vec<NielsLimbs>> {
        let mut tables = vec![vec![IDENTITY; rows.len() * width]; LANES];
        for (r, row) in rows.enumerate() {
            for (m, niels) in row.iter().enumerate() {
                for (table, limbs) in tables.iter_mut().zip(self.split_lanes(niels)) {
                    table[r * width + m + 1] = limbs;
                }
            }
        }
        tables
    }

    /// Lane `k` holds `d_k·P` for its signed digit `d_k` from `row` (entry `m` is `m·P`, the
    /// first the identity: a row of [`Ifma::lane_tables`]): a gather by scalar loads (eight
    /// different table entries, one per lane), for sums whose lanes use different keys.
    #[inline(always)]
    pub(crate) fn gather(self, row: &[NielsLimbs], digits: [i64; LANES]) -> Niels {
        let rows: [&NielsLimbs; LANES] = std::array::from_fn(|lane| &row[digits[lane].unsigned_abs() as usize]);
        let n = Niels(std::array::from_fn(|k| {
            Fe(std::array::from_fn(|l| pulp::cast(std::array::from_fn::<u64, LANES, _>(|lane| rows[lane][k][l]))))
        }));
        let negative = (0..LANES).fold(0u8, |m, lane| m | (u8::from(digits[lane] < 0) << lane));
        self.negate_lanes(n, negative)
    }

    /// `Σ y_i·P_i` by buckets (Pippenger with one window): `n + 2·max|y_i|` additions.
    pub(crate) fn buckets(self, ys: &[i64], points: &[Niels], c: &Constants) -> Point {
        let max = ys.iter().map(|y| y.unsigned_abs()).max().unwrap_or(0) as usize;
        let mut bucket = vec![self.identity(); max + 1];
        for (&y, p) in ys.iter().zip(points) {
            if y != 0 {
                let b = &mut bucket[y.unsigned_abs() as usize];
                *b = self.add_niels(b, p, y < 0);
            }
        }
        let (mut running, mut sum) = (self.identity(), self.identity());
        for b in bucket[1..].iter().rev() {
            running = self.add_points(&running, b, c);
            sum = self.add_points(&sum, &running, c);
        }
        sum
    }

    /// [`Ifma::buckets`] for entries of any size: base-`2^12` digit planes (signed like their
    /// entries), combined by Horner's rule with twelve doublings per plane.
    pub(crate) fn buckets_wide(self, ys: &[i64], points: &[Niels], c: &Constants) -> Point {
        const BITS: u32 = 12;
        let max = ys.iter().map(|y| y.unsigned_abs()).max().unwrap_or(0);
        let planes = (64 - max.leading_zeros()).div_ceil(BITS).max(1);
        let mut acc = self.identity();
        for t in (0..planes).rev() {
            for _ in 0..BITS {
                acc = self.double(&acc);
            }
            let plane: Vec<i64> = ys
                .iter()
                .map(|&y| ((y.unsigned_abs() >> (BITS * t)) & ((1 << BITS) - 1)) as i64 * y.signum())
                .collect();
            acc = self.add_points(&acc, &self.buckets(&plane, points, c), c);
        }
        acc
    }
}

/// A constant-time fixed-base table of one point `P` for eight secret scalars at once:
/// `d·16^w·P` for `d = 1..8` and 64 windows, each entry the limbs of `(Y + X, Y − X, Z, 2d·T)`
/// (the same point in every lane, so stored once). About 80 KB.
pub(crate) struct SecretTable {
    entries: Vec<[[u64; 5]; 4]>,
}

/// Signed radix-16 digits in `[−8, 8]` of eight secret values, one vector per window,
/// least significant first (zeroized on drop).
pub(crate) struct SecretDigits(Vec<[i64; LANES]>);

impl Drop for SecretDigits {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl SecretDigits {
    /// The digits of eight values given as little-endian bytes (`bits ≤ 256` significant
    /// bits, below `2^{bits−1}`·…: the top digit absorbs the last carry), each multiplied by
    /// its lane's sign (`negative`): `windows` digits per lane, without a branch on a value.
    pub(crate) fn new(values: &[[u8; 32]; LANES], negative: [bool; LANES], windows: usize) -> Self {
        let mut digits = vec![[0i64; LANES]; windows];
        for lane in 0..LANES {
            let sign = 1 - 2 * i64::from(negative[lane]);
            let mut carry = 0i64;
            for (w, d) in digits.iter_mut().enumerate() {
                let nibble = i64::from(values[lane].get(w / 2).copied().unwrap_or(0) >> (4 * (w % 2)) & 15) + carry;
                // nibble ∈ [0, 16]: above 7, borrow from the next window.
                carry = (nibble + 8) >> 4;
                d[lane] = (nibble - (carry << 4)) * sign;
            }
        }
        Self(digits)
    }
}

impl Ifma {
    /// The [`SecretTable`]s of up to eight points (exact, from their encodings).
    pub(crate) fn secret_tables(self, points: &[RistrettoPoint], c: &Constants) -> Vec<SecretTable> {
        let bytes = std::array::from_fn(|lane| points[lane.min(points.len() - 1)].compress().to_bytes());
        let (mut base, valid) = self.decode(&bytes, c);
        debug_assert_eq!(valid, 0xff);
        let mut tables: Vec<SecretTable> =
            points.iter().map(|_| SecretTable { entries: Vec::with_capacity(64 * 8) }).collect();
        for _ in 0..64 {
            let row = self.multiples(&base, 8, c);
            for niels in &row {
                for (table, limbs) in tables.iter_mut().zip(self.split_lanes(niels)) {
                    table.entries.push(limbs);
                }
            }
            let eight = self.add_niels(&base, &row[6], false);
            base = self.double(&eight);
        }
        tables
    }

    /// `Σ_w d_w·16^w·P` per lane from `P`'s table and the lanes' digits (the first
    /// `digits.len()` windows), in constant time: every entry of a window is read and
    /// blended in by a mask, the sign applied by blends.
    pub(crate) fn secret_mul(self, table: &SecretTable, digits: &SecretDigits) -> Point {
        let mut acc = self.identity();
        let zero = self.avx512f._mm512_setzero_si512();
        for (w, d) in digits.0.iter().enumerate() {
            let d: W = pulp::cast(*d);
            let abs = self.avx512f._mm512_abs_epi64(d);
            let negative = self.avx512f._mm512_cmplt_epi64_mask(d, zero);
            let mut sel = Niels([self.one(), self.one(), self.one(), self.zero()]);
            for (e, entry) in table.entries[8 * w..8 * w + 8].iter().enumerate() {
                let m = self.avx512f._mm512_cmpeq_epi64_mask(abs, self.splat(e as u64 + 1));
                for (coord, limbs) in sel.0.iter_mut().zip(entry) {
                    for (v, &l) in coord.0.iter_mut().zip(limbs) {
                        *v = self.avx512f._mm512_mask_blend_epi64(m, *v, self.splat(l));
                    }
                }
            }
            acc = self.add_niels(&acc, &self.negate_lanes(sel, negative), false);
        }
        acc
    }

    /// Per lane, `d·P` for its digit `d ∈ [−8, 8]` from `entry(e) = (e + 1)·P`: every entry
    /// read and blended in by a mask, the sign applied by blends (as in
    /// [`Ifma::secret_mul`], whose entries are single points).
    #[inline(always)]
    fn pick(self, d: W, entry: impl Fn(usize) -> Niels) -> Niels {
        let abs = self.avx512f._mm512_abs_epi64(d);
        let negative = self.avx512f._mm512_cmplt_epi64_mask(d, self.avx512f._mm512_setzero_si512());
        let mut sel = Niels([self.one(), self.one(), self.one(), self.zero()]);
        for e in 0..8 {
            let m = self.avx512f._mm512_cmpeq_epi64_mask(abs, self.splat(e as u64 + 1));
            for (coord, from) in sel.0.iter_mut().zip(entry(e).0) {
                for (v, f) in coord.0.iter_mut().zip(from.0) {
                    *v = self.avx512f._mm512_mask_blend_epi64(m, *v, f);
                }
            }
        }
        self.negate_lanes(sel, negative)
    }

    /// `Σ_j s_j·P_j` with a different scalar in every lane (Straus): `digits[j]` are the
    /// signed radix-16 digits of the eight scalars of `points[j]`, tables `1..8·P_j` per lane.
    /// Public inputs; variable time in which windows are all zero.
    pub(crate) fn straus_per_lane(self, points: &[Point], digits: &[&SecretDigits], c: &Constants) -> Point {
        let tables: Vec<Vec<Niels>> = points.iter().map(|p| self.multiples(p, 8, c)).collect();
        let windows = digits.iter().map(|d| d.0.len()).max().unwrap_or(0);
        let mut acc = self.identity();
        for w in (0..windows).rev() {
            if w + 1 < windows {
                for _ in 0..4 {
                    acc = self.double(&acc);
                }
            }
            for (table, d) in tables.iter().zip(digits) {
                match d.0.get(w) {
                    Some(d) if d.iter().any(|&v| v != 0) => {
                        acc = self.add_niels(&acc, &self.pick(pulp::cast(*d), |e| table[e]), false);
                    }
                    _ => {}
                }
            }
        }
        acc
    }

    /// The eight lanes' points added together, the sum in every lane.
    pub(crate) fn sum_lanes(self, p: &Point, c: &Constants) -> Point {
        let f = self.avx512f;
        let rotate = |p: &Point, k: usize| {
            Point(p.0.map(|fe| {
                Fe(fe.0.map(|w| match k {
                    4 => f._mm512_alignr_epi64::<4>(w, w),
                    2 => f._mm512_alignr_epi64::<2>(w, w),
                    _ => f._mm512_alignr_epi64::<1>(w, w),
                }))
            }))
        };
        let p = self.add_points(p, &rotate(p, 4), c);
        let p = self.add_points(&p, &rotate(&p, 2), c);
        self.add_points(&p, &rotate(&p, 1), c)
    }

    /// Lane `lane` of each of `points`, eight to a vector (lanes past the end: the identity).
    pub(crate) fn transpose_lane(self, points: &[Point], lane: usize) -> Vec<Point> {
        const ONE: [u64; 5] = [1, 0, 0, 0, 0];
        points
            .chunks(LANES)
            .map(|chunk| {
                Point(std::array::from_fn(|k| {
                    Fe(std::array::from_fn(|l| {
                        pulp::cast(std::array::from_fn::<u64, LANES, _>(|to| match chunk.get(to) {
                            Some(p) => pulp::cast::<W, [u64; LANES]>(p.0[k].0[l])[lane],
                            None if k == 1 || k == 2 => ONE[l],
                            None => 0,
                        }))
                    }))
                }))
            })
            .collect()
    }

    /// Lane `lane` of `p` in lane `lane` of `into`, the other lanes of `into` kept.
    pub(crate) fn blend_lane(self, into: &Point, p: &Point, lane: usize) -> Point {
        let m = 1u8 << lane;
        Point(std::array::from_fn(|k| self.select(m, into.0[k], p.0[k])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::ristretto::CompressedRistretto;
    use curve25519_dalek::scalar::Scalar;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn random_points(n: usize, seed: u64) -> Vec<RistrettoPoint> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| RistrettoPoint::mul_base(&Scalar::random(&mut rng))).collect()
    }

    fn encodings(points: &[RistrettoPoint]) -> [[u8; 32]; LANES] {
        std::array::from_fn(|i| points[i].compress().to_bytes())
    }

    #[test]
    fn decode_then_encode_is_dalek_encoding() {
        let Some(s) = Ifma::try_new() else { return };
        let c = s.constants();
        for seed in 0..4 {
            let points = random_points(LANES, seed);
            let bytes = encodings(&points);
            let (p, valid) = s.vectorize(|| s.decode(&bytes, c));
            assert_eq!(valid, 0xff);
            assert_eq!(s.vectorize(|| s.encode(&p, c)), bytes);
        }
        // The identity and the basepoint.
        let mut points = random_points(LANES, 9);
        points[0] = RistrettoPoint::default();
        points[1] = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        let bytes = encodings(&points);
        let (p, valid) = s.vectorize(|| s.decode(&bytes, c));
        assert_eq!(valid, 0xff);
        assert_eq!(s.vectorize(|| s.encode(&p, c)), bytes);
    }

    #[test]
    fn sums_match_dalek() {
        let Some(s) = Ifma::try_new() else { return };
        let c = s.constants();
        let (a, b) = (random_points(LANES, 1), random_points(LANES, 2));
        let (pa, _) = s.decode(&encodings(&a), c);
        let (pb, _) = s.decode(&encodings(&b), c);
        let nb = s.to_niels(&pb, c);
        let sum = s.vectorize(|| s.encode(&s.add_niels(&pa, &nb, false), c));
        let diff = s.vectorize(|| s.encode(&s.add_niels(&pa, &nb, true), c));
        let double = s.vectorize(|| s.encode(&s.add_points(&pa, &pa, c), c));
        let dbl = s.vectorize(|| s.encode(&s.double(&s.double(&pa)), c));
        for lane in 0..LANES {
            assert_eq!(dbl[lane], (a[lane] * Scalar::from(4u8)).compress().to_bytes(), "doubling formula");
            assert_eq!(sum[lane], (a[lane] + b[lane]).compress().to_bytes());
            assert_eq!(diff[lane], (a[lane] - b[lane]).compress().to_bytes());
            assert_eq!(double[lane], (a[lane] + a[lane]).compress().to_bytes());
        }
        let rows = [&a[0..1], &a[1..2], &a[2..3]];
        let doubled = s.vectorize(|| s.encode(&s.load_doubled(&rows, c)[0], c));
        for lane in 0..LANES {
            assert_eq!(doubled[lane], (a[lane.min(3) % 3] * Scalar::from(2u8)).compress().to_bytes());
        }
    }

    /// The batched double-and-encode gives dalek's encodings of `2P`, the identity and
    /// points whose doubles are the identity included.
    #[test]
    fn double_encode_batch_matches_dalek() {
        let Some(s) = Ifma::try_new() else { return };
        let c = s.constants();
        let mut points = random_points(3 * LANES, 11);
        points[0] = RistrettoPoint::default();
        points[9] = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        points[17] = RistrettoPoint::default();
        let lanes: Vec<Point> =
            points.chunks(LANES).map(|chunk| s.vectorize(|| s.decode(&encodings(chunk), c).0)).collect();
        let encoded = s.vectorize(|| s.double_encode_batch(&lanes, c));
        let dalek = RistrettoPoint::double_and_compress_batch(&points);
        for (i, expected) in dalek.iter().enumerate() {
            assert_eq!(encoded[i / LANES][i % LANES], expected.to_bytes(), "point {i}");
        }
        // A representative of the identity other than (0, 1): (0, −1), whose double is (0, 1).
        let identity = s.vectorize(|| s.decode(&[RistrettoPoint::default().compress().to_bytes(); LANES], c).0);
        let minus = s.vectorize(|| Point([identity.0[0], s.neg(identity.0[1]), identity.0[2], identity.0[3]]));
        assert_eq!(s.vectorize(|| s.double_encode_batch(&[minus], c))[0], [[0u8; 32]; LANES]);
    }

    #[test]
    fn invalid_encodings_are_refused_like_dalek() {
        let Some(s) = Ifma::try_new() else { return };
        let c = s.constants();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let valid_point = random_points(1, 6)[0].compress().to_bytes();
        for round in 0..16 {
            let mut bytes: [[u8; 32]; LANES] = std::array::from_fn(|_| {
                let mut b = [0u8; 32];
                rand_core::Rng::fill_bytes(&mut rng, &mut b);
                b
            });
            bytes[0] = valid_point;
            bytes[1] = [0xff; 32];
            bytes[2] = {
                // p itself: non-canonical zero.
                let mut b = [0xff; 32];
                b[0] = 0xed;
                b[31] = 0x7f;
                b
            };
            if round % 2 == 0 {
                bytes[3][0] |= 1; // negative s
            }
            let (_, valid) = s.vectorize(|| s.decode(&bytes, c));
            for (lane, b) in bytes.iter().enumerate() {
                let dalek = CompressedRistretto(*b).decompress().is_some();
                assert_eq!(valid >> lane & 1 == 1, dalek, "lane {lane}: {b:?}");
            }
        }
    }
}
