//! Distinct users: a HyperLogLog sketch, mergeable across windows and replicas.
//!
//! Precision 12: 4,096 one-byte registers, standard error about 1.04/√4096 ≈ 1.6%. The caller
//! hashes the user key to 64 bits; the sketch first passes that hash through MurmurHash3's 64-bit
//! finalizer (a bijection, so distinct hashes stay distinct) so that weak hashes, or small
//! integers used as hashes, still spread over all registers. The top 12 bits of the mixed hash
//! pick the register and the rank of the first set bit among the remaining 52 is kept (at most
//! 53). Estimation is the classic one with its small-range correction: linear counting while the
//! raw estimate is at most 2.5·m and some register is still zero. With 64-bit hashes no
//! large-range correction is needed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Precision: log2 of the number of registers.
pub const PRECISION: u32 = 12;

/// Number of registers (4,096).
pub const REGISTERS: usize = 1 << PRECISION;

/// The largest possible register value: 64 - 12 bits of rank, plus one.
const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;

/// Alphabet of the dense encoding: one character per register (values are below 64).
const DENSE_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// MurmurHash3's 64-bit finalizer (a bijection with full avalanche).
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The `(register index, rank)` that [`UserSketch::insert_hash`] applies for the hash `h`: the
/// register at `index` becomes `max(register, rank)`. Lets a lock-free mirror (an array of
/// [`REGISTERS`] atomic bytes updated with `fetch_max`) record users exactly as the sketch would;
/// rebuild the sketch with [`UserSketch::from_registers`]. `index < REGISTERS`, `1 <= rank <= 53`.
#[inline]
pub fn register_update(h: u64) -> (usize, u8) {
    let h = fmix64(h);
    let index = (h >> (64 - PRECISION)) as usize;
    // The guard bit caps the rank at 53 when the low 52 bits are all zero.
    let rank = ((h << PRECISION) | (1 << (PRECISION - 1))).leading_zeros() as u8 + 1;
    (index, rank)
}

/// A HyperLogLog sketch of distinct users (precision 12).
///
/// Serialized (serde) compactly: `{"sparse": [[register, value], ..]}` while few registers are
/// set, else `{"dense": "<4096 characters>"}` with one base64url character per register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSketch {
    registers: Vec<u8>,
}

impl Default for UserSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl UserSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        UserSketch {
            registers: vec![0; REGISTERS],
        }
    }

    /// Adds a user by the 64-bit hash of their key. Inserting the same hash again changes
    /// nothing.
    #[inline]
    pub fn insert_hash(&mut self, h: u64) {
        let (index, rank) = register_update(h);
        let slot = &mut self.registers[index];
        if rank > *slot {
            *slot = rank;
        }
    }

    /// A sketch from raw register values, e.g. read back from an atomic mirror that applied
    /// [`register_update`] with `fetch_max`. `registers` should be [`REGISTERS`] long; a shorter
    /// slice is padded with zeros, entries past the end are ignored, and values above the
    /// largest possible rank (53) are capped to it.
    pub fn from_registers(registers: &[u8]) -> Self {
        let mut sketch = UserSketch::new();
        for (slot, &r) in sketch.registers.iter_mut().zip(registers) {
            *slot = r.min(MAX_RANK);
        }
        sketch
    }

    /// Merges another sketch into this one: afterwards this sketch describes the union.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated number of distinct hashes inserted (rounded).
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in &self.registers {
            // 2^-r, exactly.
            sum += f64::from_bits((1023 - u64::from(r)) << 52);
            zeros += usize::from(r == 0);
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// Whether nothing has been inserted.
    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|&r| r == 0)
    }

    /// Forgets everything inserted.
    pub fn clear(&mut self) {
        self.registers.fill(0);
    }
}

/// The serialized form.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Encoded {
    /// `(register, value)` for each non-zero register.
    Sparse(Vec<(u16, u8)>),
    /// One base64url character per register.
    Dense(String),
}

impl Serialize for UserSketch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let set = self.registers.iter().filter(|&&r| r > 0).count();
        // A sparse pair costs about ten characters in JSON, a dense register one.
        let encoded = if set * 10 <= REGISTERS {
            Encoded::Sparse(
                self.registers
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r > 0)
                    .map(|(i, r)| (i as u16, *r))
                    .collect(),
            )
        } else {
            Encoded::Dense(
                self.registers
                    .iter()
                    .map(|&r| char::from(DENSE_ALPHABET[usize::from(r)]))
                    .collect(),
            )
        };
        encoded.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UserSketch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut sketch = UserSketch::new();
        match Encoded::deserialize(deserializer)? {
            Encoded::Sparse(pairs) => {
                for (i, r) in pairs {
                    let slot = sketch
                        .registers
                        .get_mut(usize::from(i))
                        .ok_or_else(|| D::Error::custom(format!("register {i} out of range")))?;
                    if r > MAX_RANK {
                        return Err(D::Error::custom(format!("register value {r} out of range")));
                    }
                    *slot = (*slot).max(r);
                }
            }
            Encoded::Dense(text) => {
                if text.len() != REGISTERS {
                    return Err(D::Error::custom(format!(
                        "dense sketch has {} registers, expected {REGISTERS}",
                        text.len()
                    )));
                }
                for (slot, ch) in sketch.registers.iter_mut().zip(text.bytes()) {
                    let r = DENSE_ALPHABET
                        .iter()
                        .position(|&a| a == ch)
                        .filter(|&r| r <= usize::from(MAX_RANK))
                        .ok_or_else(|| D::Error::custom("invalid character in dense sketch"))?;
                    *slot = r as u8;
                }
            }
        }
        Ok(sketch)
    }
}

#[cfg(test)]
// Measurement-only tests print their figures and time themselves.
#[allow(clippy::print_stdout, clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// splitmix64: a good stream of distinct 64-bit hashes.
    fn splitmix64(i: u64) -> u64 {
        let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn sketch_of(range: std::ops::Range<u64>) -> UserSketch {
        let mut s = UserSketch::new();
        for i in range {
            s.insert_hash(splitmix64(i));
        }
        s
    }

    fn rel_err(est: u64, n: u64) -> f64 {
        (est as f64 - n as f64).abs() / n as f64
    }

    #[test]
    fn estimates_are_close() {
        let s = sketch_of(0..100);
        assert!(rel_err(s.estimate(), 100) <= 0.02, "100: {}", s.estimate());
        for n in [1_000u64, 10_000, 100_000] {
            let s = sketch_of(0..n);
            let e = s.estimate();
            println!(
                "n = {n}: estimate {e} ({:+.2}%)",
                100.0 * (e as f64 - n as f64) / n as f64
            );
            assert!(rel_err(e, n) <= 0.05, "{n}: {e}");
        }
        // Over many independent sets of the same size, the error stays within about 3 standard
        // errors (1.6% each), including around the switch from linear counting (n ≈ 10k).
        for n in [5_000u64, 10_000, 12_000, 20_000, 50_000] {
            for k in 0..10u64 {
                let e = sketch_of(k * 1_000_000..k * 1_000_000 + n).estimate();
                assert!(rel_err(e, n) <= 0.06, "{n} (set {k}): {e}");
            }
        }
    }

    #[test]
    fn small_counts() {
        let mut s = UserSketch::new();
        assert!(s.is_empty());
        assert_eq!(s.estimate(), 0);
        s.insert_hash(1);
        s.insert_hash(2);
        assert!(!s.is_empty());
        assert_eq!(s.estimate(), 2);
        // Raw small integers spread over the registers thanks to the finalizer.
        let mut s = UserSketch::new();
        for i in 0..50 {
            s.insert_hash(i);
        }
        assert_eq!(s.estimate(), 50);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn duplicates_do_not_count() {
        let once = sketch_of(0..5_000);
        let mut thrice = sketch_of(0..5_000);
        for _ in 0..2 {
            for i in 0..5_000 {
                thrice.insert_hash(splitmix64(i));
            }
        }
        assert_eq!(thrice, once);
        assert_eq!(thrice.estimate(), once.estimate());
    }

    #[test]
    fn merge_is_union() {
        let mut a = sketch_of(0..30_000);
        let b = sketch_of(20_000..60_000);
        let union = sketch_of(0..60_000);
        a.merge(&b);
        assert_eq!(a, union);
        assert_eq!(a.estimate(), union.estimate());
        let mut c = b.clone();
        c.merge(&UserSketch::default());
        assert_eq!(c, b);
    }

    #[test]
    fn atomic_mirror_equals_insert_hash() {
        use std::sync::atomic::{AtomicU8, Ordering};
        let mirror: Vec<AtomicU8> = (0..REGISTERS).map(|_| AtomicU8::new(0)).collect();
        let mut direct = UserSketch::new();
        // Include the edge hashes (rank capped at 53) and repeated hashes.
        let hashes = (0..20_000u64)
            .map(splitmix64)
            .chain([0, u64::MAX, 1, 1 << 52])
            .chain((0..1_000u64).map(splitmix64));
        for h in hashes {
            let (index, rank) = register_update(h);
            assert!(index < REGISTERS);
            assert!((1..=MAX_RANK).contains(&rank));
            mirror[index].fetch_max(rank, Ordering::Relaxed);
            direct.insert_hash(h);
        }
        let registers: Vec<u8> = mirror.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        let rebuilt = UserSketch::from_registers(&registers);
        assert_eq!(rebuilt, direct);
        assert_eq!(rebuilt.estimate(), direct.estimate());
        // Short slices are padded, long ones truncated, out-of-range values capped.
        assert!(UserSketch::from_registers(&[]).is_empty());
        let mut long = vec![0u8; REGISTERS + 5];
        long[0] = 200;
        long[REGISTERS + 1] = 3;
        let capped = UserSketch::from_registers(&long);
        assert_eq!(capped.registers[0], MAX_RANK);
        assert_eq!(capped.registers.len(), REGISTERS);
    }

    #[test]
    fn serde_round_trip() {
        for n in [0u64, 10, 300, 5_000, 100_000] {
            let s = sketch_of(0..n);
            let json = serde_json::to_string(&s).unwrap();
            let back: UserSketch = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "n = {n}");
            assert!(json.len() <= 4_200, "n = {n}: {} bytes", json.len());
            if n >= 5_000 {
                assert!(json.starts_with(r#"{"dense":""#));
            } else {
                assert!(json.starts_with(r#"{"sparse":["#));
            }
        }
        assert!(serde_json::from_str::<UserSketch>(r#"{"sparse":[[4096,1]]}"#).is_err());
        assert!(serde_json::from_str::<UserSketch>(r#"{"sparse":[[1,54]]}"#).is_err());
        assert!(serde_json::from_str::<UserSketch>(r#"{"dense":"AAA"}"#).is_err());
        let bad = "!".repeat(REGISTERS);
        assert!(serde_json::from_str::<UserSketch>(&format!(r#"{{"dense":"{bad}"}}"#)).is_err());
    }
}
