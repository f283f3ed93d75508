//! Deterministic generation of NTT-friendly primes.

use crate::Modulus;

/// Deterministic Miller–Rabin primality test, exact for every `n < 2^64`
/// (bases: the first twelve primes; Jaeschke 1993, Sorenson–Webster 2015).
pub fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let d = (n - 1) >> (n - 1).trailing_zeros();
    let s = (n - 1).trailing_zeros();
    let mulmod = |a: u64, b: u64| (a as u128 * b as u128 % n as u128) as u64;
    'witness: for a in BASES {
        let mut x = 1u64;
        let (mut base, mut e) = (a, d);
        while e > 0 {
            if e & 1 == 1 {
                x = mulmod(x, base);
            }
            base = mulmod(base, base);
            e >>= 1;
        }
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mulmod(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// The `count` largest primes `p < 2^bits` with `p ≡ 1 (mod 2n)` that are not in `exclude`,
/// in decreasing order. Deterministic: the same arguments always give the same primes.
///
/// Returns `None` if `bits` is outside `[2·log2(2n), 61]` or if too few such primes exist
/// above `2^(bits-1)` (every returned prime has exactly `bits` bits).
pub fn ntt_primes(bits: u32, n: usize, count: usize, exclude: &[u64]) -> Option<Vec<u64>> {
    let m = 2 * n as u64;
    if !(2..=61).contains(&bits) || !m.is_power_of_two() || (m.trailing_zeros() + 1) >= bits {
        return None;
    }
    let lower = 1u64 << (bits - 1);
    // Largest candidate below 2^bits congruent to 1 mod m.
    let mut candidate = (1u64 << bits) - m + 1;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if candidate <= lower {
            return None;
        }
        if is_prime(candidate) && !exclude.contains(&candidate) {
            debug_assert!(Modulus::new(candidate).is_some());
            out.push(candidate);
        }
        candidate -= m;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primality_matches_trial_division() {
        let trial = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        for n in 0..20_000 {
            assert_eq!(is_prime(n), trial(n), "n = {n}");
        }
        // Strong pseudoprimes to several small bases.
        assert!(!is_prime(3_215_031_751));
        assert!(!is_prime(3_825_123_056_546_413_051));
        assert!(is_prime((1 << 61) - 1));
    }

    #[test]
    fn ntt_primes_are_congruent_and_distinct() {
        let ps = ntt_primes(40, 8192, 5, &[]).unwrap();
        assert_eq!(ps.len(), 5);
        for w in ps.windows(2) {
            assert!(w[0] > w[1]);
        }
        for &p in &ps {
            assert!(is_prime(p));
            assert_eq!(p % 16384, 1);
            assert_eq!(64 - p.leading_zeros(), 40);
        }
        let more = ntt_primes(40, 8192, 2, &ps[..1]).unwrap();
        assert_eq!(more[0], ps[1]);
        assert!(ntt_primes(15, 8192, 1, &[]).is_none());
    }
}
