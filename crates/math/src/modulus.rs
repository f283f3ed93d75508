//! Word-sized modular arithmetic with Barrett and Shoup reductions.

/// An odd modulus `q` with `3 <= q < 2^62`, with the precomputed constants for Barrett
/// reduction of 128-bit products.
///
/// All methods take operands already reduced to `[0, q)` unless they say otherwise and return
/// values in `[0, q)`. The arithmetic is branch-free on the operand values except where a
/// method is named `_vartime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    q: u64,
    /// floor(2^128 / q), high and low words.
    barrett_hi: u64,
    barrett_lo: u64,
    /// floor(2^64 / q), for one-word reductions.
    barrett64: u64,
}

#[inline(always)]
fn mul_hi(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) >> 64) as u64
}

/// Returns `x - q` if `x >= q`, else `x`, without a data-dependent branch (for `x < 2q`).
#[inline(always)]
pub(crate) fn csub(x: u64, q: u64) -> u64 {
    let d = x.wrapping_sub(q);
    // if x < q, d wraps and its top bit is set (q < 2^62).
    let mask = 0u64.wrapping_sub(d >> 63);
    d.wrapping_add(q & mask)
}

impl Modulus {
    /// Builds the modulus `q`; returns `None` unless `q` is odd and `3 <= q < 2^62`.
    pub fn new(q: u64) -> Option<Self> {
        if q < 3 || q.is_multiple_of(2) || q >= 1 << 62 {
            return None;
        }
        let ratio = u128::MAX / q as u128; // floor((2^128 - 1) / q) == floor(2^128 / q) for odd q
        Some(Self { q, barrett_hi: (ratio >> 64) as u64, barrett_lo: ratio as u64, barrett64: (ratio >> 64) as u64 })
    }

    /// The modulus `q`.
    #[inline(always)]
    pub fn value(&self) -> u64 {
        self.q
    }

    /// Bit length of `q`.
    pub fn bits(&self) -> u32 {
        64 - self.q.leading_zeros()
    }

    /// `a + b mod q`.
    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        csub(a + b, self.q)
    }

    /// `a - b mod q`.
    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        csub(a + self.q - b, self.q)
    }

    /// `-a mod q`.
    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        csub(self.q - a, self.q)
    }

    /// Barrett reduction of a 128-bit value `x < q * 2^64`... in fact any `x < 2^124` works
    /// for `q < 2^62`, which covers every product of two reduced operands.
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x0 = x as u64;
        let x1 = (x >> 64) as u64;
        let carry = mul_hi(x0, self.barrett_lo);
        let t = x0 as u128 * self.barrett_hi as u128 + carry as u128;
        let t2 = x1 as u128 * self.barrett_lo as u128 + (t as u64) as u128;
        let quot = x1.wrapping_mul(self.barrett_hi).wrapping_add((t >> 64) as u64).wrapping_add((t2 >> 64) as u64);
        csub(x0.wrapping_sub(quot.wrapping_mul(self.q)), self.q)
    }

    /// Reduces any `u64` (one-word Barrett: one high product, one low product).
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        let quot = mul_hi(x, self.barrett64);
        // quot >= floor(x/q) - 1, so the remainder is below 2q.
        csub(x.wrapping_sub(quot.wrapping_mul(self.q)), self.q)
    }

    /// Reduces a signed integer to `[0, q)`.
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        let r = self.reduce(x.unsigned_abs());
        let mask = 0u64.wrapping_sub((x < 0) as u64);
        // x < 0: q - r (which is q when r == 0, hence the final csub)
        csub((r & !mask) | ((self.q - r) & mask), self.q)
    }

    /// Reduces a signed 128-bit integer to `[0, q)`.
    pub fn reduce_i128(&self, x: i128) -> u64 {
        let mag = x.unsigned_abs();
        let hi = self.reduce((mag >> 64) as u64);
        // mag mod q = hi * 2^64 + lo mod q
        let r = self.reduce_u128(((hi as u128) << 64) | (mag as u64) as u128);
        if x < 0 {
            self.neg(r)
        } else {
            r
        }
    }

    /// Maps `a` in `[0, q)` to its centered representative in `(-q/2, q/2]`.
    #[inline(always)]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.q >> 1 {
            a as i64 - self.q as i64
        } else {
            a as i64
        }
    }

    /// `a * b mod q`.
    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// The Shoup companion `floor(b * 2^64 / q)` of a constant `b < q`, for [`Self::mul_shoup`].
    #[inline]
    pub fn shoup(&self, b: u64) -> u64 {
        (((b as u128) << 64) / self.q as u128) as u64
    }

    /// `a * b mod q` for a constant `b` with precomputed `b_shoup = self.shoup(b)`.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, b: u64, b_shoup: u64) -> u64 {
        let quot = mul_hi(a, b_shoup);
        csub(a.wrapping_mul(b).wrapping_sub(quot.wrapping_mul(self.q)), self.q)
    }

    /// `a^e mod q` (variable time in the public exponent `e`).
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1 % self.q;
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// Inverse of `a` modulo a prime `q` (Fermat). Returns `None` for `a == 0`.
    pub fn inv(&self, a: u64) -> Option<u64> {
        if a.is_multiple_of(self.q) {
            None
        } else {
            Some(self.pow(a % self.q, self.q - 2))
        }
    }

    /// Reduces `x` (an integer value stored in an `f64`, of any magnitude) modulo `q`.
    ///
    /// Values of magnitude below 2^63 are converted directly; larger ones are split into
    /// their 53-bit mantissa and a power of two, so no precision beyond what `f64` holds is
    /// invented or lost.
    pub fn reduce_f64(&self, x: f64) -> u64 {
        if x.abs() < 9.2e18 {
            return self.reduce_i64(x as i64);
        }
        let bits = x.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1075;
        let mant = (bits & ((1 << 52) - 1)) | (1 << 52);
        let r = self.mul(self.reduce(mant), self.pow(2, exp as u64));
        if x < 0.0 {
            self.neg(r)
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrett_matches_u128_remainder() {
        let q = Modulus::new((1 << 50) - 27).unwrap();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let a = x % q.value();
            let b = x.rotate_left(17) % q.value();
            let expect = (a as u128 * b as u128 % q.value() as u128) as u64;
            assert_eq!(q.mul(a, b), expect);
            assert_eq!(q.mul_shoup(a, b, q.shoup(b)), expect);
            assert_eq!(q.reduce(x), x % q.value());
            let s = x as i64;
            assert_eq!(q.reduce_i64(s), (s as i128).rem_euclid(q.value() as i128) as u64);
            let big = (s as i128) * 1_000_003;
            assert_eq!(q.reduce_i128(big), big.rem_euclid(q.value() as i128) as u64);
        }
    }

    #[test]
    fn reduce_f64_handles_huge_values() {
        let q = Modulus::new(1_152_921_504_606_830_593).unwrap();
        let x = 3.0f64 * 2f64.powi(70);
        let expect = (3u128 << 70) % q.value() as u128;
        assert_eq!(q.reduce_f64(x) as u128, expect);
        assert_eq!(q.reduce_f64(-x) as u128, (q.value() as u128 - expect) % q.value() as u128);
        assert_eq!(q.reduce_f64(-5.0), q.value() - 5);
    }

    #[test]
    fn inverse_and_center() {
        let q = Modulus::new(97).unwrap();
        for a in 1..97 {
            assert_eq!(q.mul(a, q.inv(a).unwrap()), 1);
        }
        assert_eq!(q.inv(0), None);
        assert_eq!(q.center(96), -1);
        assert_eq!(q.center(48), 48);
        assert_eq!(q.center(49), -48);
    }
}
