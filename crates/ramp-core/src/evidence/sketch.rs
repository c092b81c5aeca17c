//! Latency histogram for display: log-linear buckets over microseconds (HdrHistogram-style),
//! mergeable by adding counts, with a fixed layout that the proxy can mirror as an array of
//! atomic counters.
//!
//! Layout: values below 2^[`SUB_BITS`] = 128 µs each have their own bucket; above, every power
//! of two is split into 128 equal sub-buckets. A value `v ≥ 128` with highest set bit `m` has
//! `shift = m - 7` and lands in bucket `(shift + 1)·128 + (v >> shift) - 128`, so values up to
//! 255 µs are still exact and every bucket's width is at most 1/128 of its lower edge. The index
//! uses integer operations only (`leading_zeros` and shifts). Values above [`MAX_VALUE`] (2^36 µs,
//! about 19 hours) are recorded as `MAX_VALUE`.
//!
//! Gates against a fixed threshold (`p95_latency < 200ms`) use exact exceedance counters, not
//! this sketch. `pNN_latency not worse than stable` uses its per-bucket counts, which are exact
//! at bucket edges (see `gate::latency_not_worse`). It serves p50/p95/p99 for status, dashboard
//! and reports, and reports each bucket by its upper edge so that a displayed quantile never
//! understates latency.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sub-bucket bits: each power of two is split into 2^7 = 128 buckets (relative error ≤ 1/128).
pub const SUB_BITS: u32 = 7;

/// Values per power of two.
const SUB_COUNT: u64 = 1 << SUB_BITS;

/// The largest value kept, in microseconds (2^36 µs ≈ 19 h); larger values are clamped to it.
pub const MAX_VALUE: u64 = 1 << 36;

/// Number of buckets: enough for every value in `0..=MAX_VALUE` (3,841).
pub const BUCKETS: usize = bucket_index(MAX_VALUE) + 1;

/// The bucket of a value in microseconds (values above [`MAX_VALUE`] go to the last bucket).
/// Integer operations only, so an atomic mirror computes the same index.
#[inline]
pub const fn bucket_index(micros: u64) -> usize {
    let v = if micros > MAX_VALUE {
        MAX_VALUE
    } else {
        micros
    };
    if v < SUB_COUNT {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (((shift as u64 + 1) << SUB_BITS) + (v >> shift) - SUB_COUNT) as usize
}

/// `(lower edge, shift)` of a bucket; buckets below 256 are one value wide.
const fn bucket_geometry(index: usize) -> (u64, u32) {
    let group = (index as u64) >> SUB_BITS;
    if group == 0 {
        return (index as u64, 0);
    }
    let shift = (group - 1) as u32;
    (
        (((index as u64) & (SUB_COUNT - 1)) + SUB_COUNT) << shift,
        shift,
    )
}

/// The smallest value that lands in bucket `index`. Indices at or past [`BUCKETS`] give
/// [`MAX_VALUE`].
pub fn bucket_lower(index: usize) -> u64 {
    if index >= BUCKETS {
        return MAX_VALUE;
    }
    bucket_geometry(index).0
}

/// The value reported for a bucket: its upper edge (inclusive), so that quantiles never
/// understate latency. The last bucket reports [`MAX_VALUE`]; indices at or past [`BUCKETS`] also
/// give [`MAX_VALUE`].
pub fn bucket_upper(index: usize) -> u64 {
    if index >= BUCKETS {
        return MAX_VALUE;
    }
    let (lower, shift) = bucket_geometry(index);
    (lower + (1u64 << shift) - 1).min(MAX_VALUE)
}

/// Errors decoding a histogram.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SketchError {
    /// A sparse pair named a bucket that does not exist in this layout.
    #[error("bucket index {0} out of range")]
    IndexOutOfRange(u32),
}

/// A latency histogram in microseconds with the fixed layout described in the module docs.
///
/// Serialized (serde) in its sparse form, `{"max": .., "buckets": [[index, count], ..]}`, which
/// round-trips exactly.
///
/// It also keeps the range of non-empty buckets (`lo..hi`, exactly: counts only grow), so a
/// merge, a scan or a clear touches only the buckets that were used: a 100 ms batch holds a
/// few dozen of the 3,841, and merging batches into a phase's evidence ten times a second would
/// otherwise move ~60 KB each time (measured: 70% of `ramp simulate` with 1 s batches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    /// First non-empty bucket (`BUCKETS` when empty).
    lo: usize,
    /// One past the last non-empty bucket (0 when empty).
    hi: usize,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            lo: BUCKETS,
            hi: 0,
        }
    }

    /// Widens the non-empty range to bucket `i` (which just became non-empty).
    #[inline]
    fn touch(&mut self, i: usize) {
        self.lo = self.lo.min(i);
        self.hi = self.hi.max(i + 1);
    }

    /// Recomputes the non-empty range from the counts.
    fn rescan(&mut self) {
        match self.counts.iter().position(|&c| c > 0) {
            Some(first) => {
                self.lo = first;
                self.hi = self.counts.iter().rposition(|&c| c > 0).unwrap_or(first) + 1;
            }
            None => {
                self.lo = BUCKETS;
                self.hi = 0;
            }
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, micros: u64) {
        self.record_n(micros, 1);
    }

    /// Records `n` occurrences of a value.
    pub fn record_n(&mut self, micros: u64, n: u64) {
        if n == 0 {
            return;
        }
        let v = micros.min(MAX_VALUE);
        let i = bucket_index(v);
        let slot = &mut self.counts[i];
        *slot = slot.saturating_add(n);
        self.total = self.total.saturating_add(n);
        self.max = self.max.max(v);
        self.touch(i);
    }

    /// Adds `n` values to bucket `i` (clamped to the last) when only the bucket is known, as
    /// with [`LatencyHistogram::from_counts`]: the maximum becomes at least the bucket's upper
    /// edge. For recorders that precompute buckets (the simulator).
    #[inline]
    pub fn record_bucket(&mut self, i: usize, n: u64) {
        if n == 0 {
            return;
        }
        let i = i.min(BUCKETS - 1);
        let slot = &mut self.counts[i];
        *slot = slot.saturating_add(n);
        self.total = self.total.saturating_add(n);
        if i + 1 > self.hi {
            self.max = bucket_upper(i);
        }
        self.touch(i);
    }

    /// A histogram from per-bucket counts in this layout (the proxy's atomic mirror). The exact
    /// maximum is not known there, so it is taken as the upper edge of the highest non-empty
    /// bucket. `counts` should be [`BUCKETS`] long; a shorter slice is padded with zeros and any
    /// entries past the end are added to the last bucket.
    pub fn from_counts(counts: &[u64]) -> Self {
        let mut h = Self::new();
        for (i, &c) in counts.iter().enumerate() {
            let slot = &mut h.counts[i.min(BUCKETS - 1)];
            *slot = slot.saturating_add(c);
            h.total = h.total.saturating_add(c);
        }
        h.rescan();
        h.max = h.top_bucket().map_or(0, bucket_upper);
        h
    }

    /// Per-bucket counts, [`BUCKETS`] long.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Adds another histogram's counts to this one (exact: merging equals recording both).
    pub fn merge(&mut self, other: &Self) {
        if other.lo >= other.hi {
            return;
        }
        let (lo, hi) = (other.lo, other.hi);
        for (a, b) in self.counts[lo..hi].iter_mut().zip(&other.counts[lo..hi]) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(other.total);
        self.max = self.max.max(other.max);
        self.lo = self.lo.min(lo);
        self.hi = self.hi.max(hi);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest recorded value (clamped to [`MAX_VALUE`]); 0 when empty. For histograms
    /// rebuilt from counts alone, the upper edge of the highest non-empty bucket.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `q` quantile (q in [0, 1], clamped; NaN gives None), None when empty. Nearest rank on
    /// buckets: the bucket holding the value of rank `max(1, ⌈q·count⌉)`, reported as its upper
    /// edge capped at [`LatencyHistogram::max`]. The answer is never below the true quantile and
    /// at most 1/128 above it.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 || q.is_nan() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate().skip(self.lo) {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(bucket_upper(i).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Forgets everything recorded.
    pub fn clear(&mut self) {
        if self.lo < self.hi {
            self.counts[self.lo..self.hi].fill(0);
        }
        self.total = 0;
        self.max = 0;
        self.lo = BUCKETS;
        self.hi = 0;
    }

    /// Compact sparse encoding for journals: `(index, count)` for each non-empty bucket, in
    /// index order.
    pub fn to_sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .skip(self.lo)
            .take(self.hi.saturating_sub(self.lo))
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect()
    }

    /// Rebuilds a histogram from [`LatencyHistogram::to_sparse`] pairs (repeated indices add up).
    /// As with [`LatencyHistogram::from_counts`], the maximum is taken as the upper edge of the
    /// highest non-empty bucket.
    pub fn from_sparse(pairs: &[(u32, u64)]) -> Result<Self, SketchError> {
        let mut h = Self::new();
        for &(i, c) in pairs {
            let slot = h
                .counts
                .get_mut(i as usize)
                .ok_or(SketchError::IndexOutOfRange(i))?;
            *slot = slot.saturating_add(c);
            h.total = h.total.saturating_add(c);
        }
        h.rescan();
        h.max = h.top_bucket().map_or(0, bucket_upper);
        Ok(h)
    }

    /// The highest non-empty bucket.
    fn top_bucket(&self) -> Option<usize> {
        (self.lo < self.hi).then(|| self.hi - 1)
    }
}

/// The serialized form: the exact maximum and the non-empty buckets.
#[derive(Serialize, Deserialize)]
struct SparseForm {
    max: u64,
    buckets: Vec<(u32, u64)>,
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SparseForm {
            max: self.max,
            buckets: self.to_sparse(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = SparseForm::deserialize(deserializer)?;
        let mut h = Self::from_sparse(&form.buckets).map_err(serde::de::Error::custom)?;
        // Keep the recorded maximum when it is consistent with the counts.
        h.max = match h.top_bucket() {
            None => 0,
            Some(top) => form.max.clamp(bucket_lower(top), bucket_upper(top)),
        };
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        assert_eq!(BUCKETS, 3841);
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(127), 127);
        assert_eq!(bucket_index(128), 128);
        assert_eq!(bucket_index(255), 255);
        assert_eq!(bucket_index(256), 256);
        assert_eq!(bucket_index(257), 256);
        assert_eq!(bucket_index(MAX_VALUE), BUCKETS - 1);
        assert_eq!(bucket_index(MAX_VALUE + 1), BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), MAX_VALUE);
        assert_eq!(bucket_upper(BUCKETS + 7), MAX_VALUE);
        // Buckets tile the value range: each starts right after the previous one ends.
        for i in 1..BUCKETS {
            assert_eq!(bucket_lower(i), bucket_upper(i - 1) + 1, "bucket {i}");
            assert_eq!(bucket_index(bucket_lower(i)), i);
            assert_eq!(bucket_index(bucket_upper(i)), i);
        }
    }

    #[test]
    fn exact_below_128() {
        let mut h = LatencyHistogram::new();
        for v in 0..128u64 {
            assert_eq!(bucket_lower(bucket_index(v)), v);
            assert_eq!(bucket_upper(bucket_index(v)), v);
            h.record(v);
        }
        for v in 0..128u64 {
            // Rank v + 1 of 128 values 0..=127 is v.
            assert_eq!(h.quantile((v + 1) as f64 / 128.0), Some(v));
        }
    }

    #[test]
    fn quantiles_of_uniform() {
        let mut h = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000);
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p95 = h.quantile(0.95).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((5000.0..=5050.0).contains(&p50), "{p50}");
        assert!((9500.0..=9595.0).contains(&p95), "{p95}");
        assert!((9900.0..=9999.0).contains(&p99), "{p99}");
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.quantile(1.0), Some(10_000));
        assert_eq!(h.quantile(f64::NAN), None);
        assert_eq!(LatencyHistogram::new().quantile(0.5), None);
    }

    #[test]
    fn clamps_large_values() {
        let mut h = LatencyHistogram::new();
        h.record(u64::MAX);
        assert_eq!(h.max(), MAX_VALUE);
        assert_eq!(h.counts()[BUCKETS - 1], 1);
        assert_eq!(h.quantile(0.5), Some(MAX_VALUE));
    }

    #[test]
    fn merge_equals_recording_both() {
        let (mut a, mut b, mut both) = (
            LatencyHistogram::new(),
            LatencyHistogram::new(),
            LatencyHistogram::new(),
        );
        for v in (0..50_000u64).map(|i| i * i % 1_000_003) {
            if v % 3 == 0 {
                a.record(v);
            } else {
                b.record_n(v, 2);
            }
        }
        for v in (0..50_000u64).map(|i| i * i % 1_000_003) {
            if v % 3 == 0 {
                both.record(v);
            } else {
                both.record_n(v, 2);
            }
        }
        a.merge(&b);
        assert_eq!(a, both);
        a.clear();
        assert_eq!(a, LatencyHistogram::default());
    }

    #[test]
    fn sparse_and_counts_round_trip() {
        let mut h = LatencyHistogram::new();
        for v in [3u64, 3, 900, 1_000_000, 250_000] {
            h.record(v);
        }
        let sparse = h.to_sparse();
        assert_eq!(sparse.len(), 4);
        let back = LatencyHistogram::from_sparse(&sparse).unwrap();
        assert_eq!(back.counts(), h.counts());
        assert_eq!(back.count(), 5);
        // Without the exact maximum, the top bucket's upper edge stands in (never lower).
        assert!(back.max() >= h.max() && back.max() <= h.max() + h.max() / 128);
        let mirror = LatencyHistogram::from_counts(h.counts());
        assert_eq!(mirror, back);
        assert_eq!(
            LatencyHistogram::from_sparse(&[(5, 1), (BUCKETS as u32, 1)]),
            Err(SketchError::IndexOutOfRange(BUCKETS as u32))
        );
        // Short and long count slices.
        assert_eq!(
            LatencyHistogram::from_counts(&[0, 2]).quantile(1.0),
            Some(1)
        );
        let mut long = vec![0u64; BUCKETS + 2];
        long[BUCKETS + 1] = 4;
        assert_eq!(
            LatencyHistogram::from_counts(&long).counts()[BUCKETS - 1],
            4
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut h = LatencyHistogram::new();
        for v in [0u64, 17, 4_000, 4_001, 123_456_789] {
            h.record(v);
        }
        let json = serde_json::to_string(&h).unwrap();
        let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        let empty: LatencyHistogram =
            serde_json::from_str(&serde_json::to_string(&LatencyHistogram::new()).unwrap())
                .unwrap();
        assert_eq!(empty, LatencyHistogram::new());
        let bad = r#"{"max":1,"buckets":[[99999,1]]}"#;
        assert!(serde_json::from_str::<LatencyHistogram>(bad).is_err());
        // An inconsistent maximum is pulled into the top bucket.
        let odd: LatencyHistogram =
            serde_json::from_str(r#"{"max":5,"buckets":[[300,1]]}"#).unwrap();
        assert_eq!(odd.max(), bucket_lower(300));
    }

    proptest! {
        /// The non-empty range the histogram keeps is exactly the one its counts have, after
        /// any mix of records, merges, clears and round trips.
        #[test]
        fn the_kept_range_is_exact(
            a in proptest::collection::vec(0u64..MAX_VALUE * 2, 0..40),
            b in proptest::collection::vec(0u64..5_000_000, 0..40),
            clear_a in any::<bool>(),
        ) {
            let mut x = LatencyHistogram::new();
            for v in &a { x.record(*v); }
            if clear_a { x.clear(); }
            let mut y = LatencyHistogram::new();
            for v in &b { y.record(*v); }
            x.merge(&y);
            let mut fresh = x.clone();
            fresh.rescan();
            prop_assert_eq!((x.lo, x.hi), (fresh.lo, fresh.hi));
            let back = LatencyHistogram::from_sparse(&x.to_sparse()).unwrap();
            prop_assert_eq!(back.counts(), x.counts());
            prop_assert_eq!((back.lo, back.hi), (x.lo, x.hi));
            let mirror = LatencyHistogram::from_counts(x.counts());
            prop_assert_eq!(mirror.quantile(0.95), back.quantile(0.95));
        }

        #[test]
        fn relative_error_at_most_1_128(v in 0u64..=MAX_VALUE) {
            let i = bucket_index(v);
            let (lo, hi) = (bucket_lower(i), bucket_upper(i));
            prop_assert!(lo <= v && v <= hi);
            prop_assert!((hi - v) as f64 <= v as f64 / 128.0, "{} in [{}, {}]", v, lo, hi);
        }

        #[test]
        fn index_monotone(a in any::<u64>(), b in any::<u64>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(bucket_index(lo) <= bucket_index(hi));
        }

        #[test]
        fn quantile_never_understates(
            values in proptest::collection::vec(0u64..5_000_000, 1..300),
            q in 0.0f64..=1.0,
        ) {
            let mut h = LatencyHistogram::new();
            for &v in &values {
                h.record(v);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1];
            let got = h.quantile(q).unwrap();
            prop_assert!(got >= exact, "{} vs {}", got, exact);
            prop_assert!((got - exact) as f64 <= exact as f64 / 128.0, "{} vs {}", got, exact);
        }
    }
}
