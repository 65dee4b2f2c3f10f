//! Which replica set a key belongs to: weighted rendezvous hashing over the
//! replica sets of the committed topology (`cohort route KEY`, `GET
//! /v1/route`). A pure function of the key and the sets, with no I/O.
//!
//! Every node, on every platform and in every version, must send a key to
//! the same set: the hash is SHA-256 of a versioned, length-prefixed input,
//! and the logarithm the weighting needs is computed here with IEEE-754's
//! correctly rounded `+ - * /` only, never the platform's `ln` (libm
//! implementations differ in the last bit, which can flip a near tie).
//!
//! Each set's score for a key is `weight / -ln(u)`, `u` uniform in (0, 1)
//! from the hash of (set, key); the highest score wins (Schindelhauer and
//! Schomaker's "logarithmic method"). A set's share of the keys is its
//! weight over the sum of the weights; adding a set moves only the keys it
//! wins, and removing one moves only its own keys, to the others.

use sha2::{Digest, Sha256};

/// Bumped only if the mapping itself changes (every key could move).
const DOMAIN: &[u8] = b"cohort-route-v1\0";

/// A set's score for `key`: the set with the highest score gets the key. A
/// weight of 0 (or less, or not a number) scores 0 and never wins.
pub fn score(key: &[u8], set: &str, weight: f64) -> f64 {
    if weight.is_nan() || weight <= 0.0 {
        return 0.0;
    }
    weight / -ln(unit_interval(hash(key, set)))
}

/// The set that gets `key` among `(name, weight)`: the highest score, the
/// smaller name on an exact tie (so the order of `sets` never matters).
/// `None` when no set has a positive weight.
pub fn pick<'a>(key: &[u8], sets: impl IntoIterator<Item = (&'a str, f64)>) -> Option<&'a str> {
    let mut best: Option<(f64, &'a str)> = None;
    for (name, weight) in sets {
        let s = score(key, name, weight);
        if s <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((top, top_name)) => s > top || (s == top && name < top_name),
        };
        if better {
            best = Some((s, name));
        }
    }
    best.map(|(_, name)| name)
}

/// The first 8 bytes of SHA-256(DOMAIN, len(set), set, key), big-endian.
fn hash(key: &[u8], set: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update((set.len() as u64).to_be_bytes());
    hasher.update(set.as_bytes());
    hasher.update(key);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The top 52 bits as a double strictly inside (0, 1): never 0 (whose log
/// is -inf) nor 1 (whose log is 0). 52, not 53: `2^53 - 0.5` is not a
/// double and would round to 1.
fn unit_interval(h: u64) -> f64 {
    ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64
}

/// The natural logarithm of a positive, finite, normal `x`, the same bits
/// on every IEEE-754 platform: `x = m·2^e` with `m` in [√½, √2), then
/// `ln m = 2·atanh(s)`, `s = (m-1)/(m+1)`, `|s| < 0.172`, summed as a
/// fixed series (16 terms: the last is below 1e-25 of the first).
fn ln(x: f64) -> f64 {
    debug_assert!(x.is_normal() && x > 0.0, "{x}");
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // The mantissa with the exponent of 1.0: m in [1, 2).
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for k in 0..16 {
        sum += term / (2 * k + 1) as f64;
        term *= s2;
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_agrees_with_the_platform_within_rounding() {
        let mut x = 1e-300_f64;
        while x < 1.0 {
            let (ours, std) = (ln(x), x.ln());
            assert!(
                (ours - std).abs() <= 4.0 * f64::EPSILON * std.abs().max(1.0),
                "ln({x}) = {ours}, std says {std}"
            );
            x *= 1.37;
        }
        for h in [0, 1, u64::MAX, 1 << 63, 12345678901234567] {
            let u = unit_interval(h);
            assert!(u > 0.0 && u < 1.0, "{h} -> {u}");
            assert!(ln(u) < 0.0);
        }
    }

    /// Pins the mapping: these must never change, on any platform or in any
    /// version (a change moves keys between replica sets of live clusters).
    #[test]
    fn the_mapping_is_pinned() {
        assert_eq!(hash(b"", ""), 0x2ce7_fdd2_dada_85df, "{:#x}", hash(b"", ""));
        let sets = [("s1", 1.0), ("s2", 1.0), ("s3", 2.0), ("s4", 0.5)];
        let got: Vec<&str> = ["user:1", "user:2", "user:3", "order:77", "", "ключ"]
            .iter()
            .map(|k| pick(k.as_bytes(), sets).unwrap())
            .collect();
        // Cross-checked with an independent implementation (Python's
        // hashlib and math.log).
        assert_eq!(got, ["s4", "s4", "s1", "s3", "s3", "s1"]);
        // One ulp above what glibc's `log` gives (…b420): exactly the
        // difference this module's own `ln` exists to rule out.
        assert_eq!(
            score(b"user:1", "s1", 1.0).to_bits(),
            0x4020_7b5f_b5c6_b421,
            "{:#x}",
            score(b"user:1", "s1", 1.0).to_bits()
        );
    }

    #[test]
    fn no_positive_weight_routes_nowhere() {
        assert_eq!(pick(b"k", []), None);
        assert_eq!(pick(b"k", [("a", 0.0), ("b", -1.0), ("c", f64::NAN)]), None);
        assert_eq!(pick(b"k", [("a", 0.0), ("b", 3.0)]), Some("b"));
    }

    #[test]
    fn the_order_of_the_sets_does_not_matter() {
        let sets = [("a", 1.0), ("b", 2.0), ("c", 1.5), ("d", 1.0)];
        let mut reversed = sets;
        reversed.reverse();
        for i in 0..2_000 {
            let key = format!("key-{i}");
            assert_eq!(pick(key.as_bytes(), sets), pick(key.as_bytes(), reversed));
        }
    }
}
