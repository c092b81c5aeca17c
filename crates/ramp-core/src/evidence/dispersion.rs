//! Honest rate bounds when errors cluster in time.
//!
//! The exact binomial bounds ([`super::stats`], [`super::confseq`]) assume that requests fail
//! independently. Real errors come in incidents: a bad hour, then quiet. A canary whose
//! long-run error rate sits exactly at a gate's threshold but whose errors arrive in hour-long
//! bursts has a phase total spread far wider than binomial (18.6× the variance in one measured
//! case), and a binomial bound then promotes it about half the time.
//!
//! **Summary.** Per variant and metric, the shell adds each analysis window's `(x, n)` to a
//! [`Dispersion`], which groups consecutive windows into blocks at a few time scales
//! ([`DEFAULT_SCALES`]: 1, 4, 16 and 64 windows, i.e. 1 min to ~1 h at 1-minute windows) and
//! keeps, per scale, five running sums over the closed blocks ([`BlockSums`]): Σx, Σn, Σx²/n,
//! Σ1/n and the block count K. These are additive, so summaries of disjoint stretches of time
//! merge exactly; replicas must merge their windows *before* they are added (x²/n is not
//! additive across replicas of the same block).
//!
//! **Estimate.** Pearson's statistic over the K blocks of a scale,
//! `X² = Σ (x_i - n_i p̂)² / (n_i p̂ (1 - p̂)) = (Σ x_i²/n_i - p̂ Σ x_i) / (p̂ (1 - p̂))`, gives the
//! quasi-binomial dispersion `φ̂ = X² / (K - 1)` (1 for independent requests; Var(total) ≈
//! φ·n p (1 - p) under clustering at that scale).
//!
//! **Test.** Under independence X² has mean K - 1 and variance
//! `V = 2(K - 1) + (1/(p̂(1-p̂)) - 6) · Σ 1/n_i` (the second term matters with few expected
//! events per block, where the plain χ² reference would flag independent data far too often).
//! X²/c with `c = V / (2(K-1))` is referred to χ² with `ν = 2(K-1)²/V` degrees of freedom
//! (Satterthwaite) through the Wilson–Hilferty normal approximation. A scale is *significant*
//! when that test rejects at `level / scales` (Bonferroni over the scales), and needs K ≥ 4
//! blocks and at least one event.
//!
//! **Rule.** If any scale is significant, φ = the largest φ̂ among the significant scales (the
//! longest-correlated scale captures the most variance), and the counts used by the exact
//! bounds become the effective `(x/φ, n/φ)`, rounded so that the bound only gets more
//! conservative ([`effective`]): for an upper bound x up and n down, for a lower bound x down
//! and n up. Otherwise the counts are left alone. `(x/φ, n/φ)` keeps the rate and matches the
//! binomial variance to the observed one: an inflated variance is an honest smaller sample.
//!
//! **Guarantee and price.** This is a moment correction, not an exact bound: it restores the
//! nominal coverage approximately (see `docs/decisions.md`: the phase-end promote rate at the
//! threshold falls from ~50% to near 5% for hour-long incidents) provided blocks at some scale
//! are longer than the incidents; clustering at time scales longer than the largest block
//! (here ~1 h) is not seen. With independent requests it changes nothing except in the rare
//! falsely significant case (≤ `level`), where φ̂ is close to 1.

use serde::{Deserialize, Serialize};

/// Default block lengths, in analysis windows.
pub const DEFAULT_SCALES: [u32; 4] = [1, 4, 16, 64];

/// Default significance level of the over-dispersion test (over all scales together).
pub const DEFAULT_LEVEL: f64 = 0.01;

/// The applied φ is an upper confidence limit for the dispersion at this level, not the point
/// estimate: with a few dozen blocks φ̂ is noisy, and a low φ̂ would make the bound too narrow
/// exactly when it matters.
pub const PHI_CONFIDENCE: f64 = 0.8;

/// Standard normal quantile at [`PHI_CONFIDENCE`].
const Z_PHI: f64 = 0.841_621_233_572_914_3;

/// Running sums over closed blocks at one time scale. Additive: [`BlockSums::merge`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockSums {
    /// Σ x_i: events.
    pub events: u64,
    /// Σ n_i: trials.
    pub trials: u64,
    /// Σ x_i² / n_i.
    pub sum_sq_over_n: f64,
    /// Σ 1 / n_i.
    pub sum_inv_n: f64,
    /// K: blocks with n_i > 0.
    pub blocks: u64,
}

impl BlockSums {
    /// Adds one block (ignored when n = 0; x is clamped to n).
    pub fn add_block(&mut self, x: u64, n: u64) {
        if n == 0 {
            return;
        }
        let x = x.min(n);
        self.events += x;
        self.trials += n;
        self.sum_sq_over_n += (x as f64) * (x as f64) / n as f64;
        self.sum_inv_n += 1.0 / n as f64;
        self.blocks += 1;
    }

    /// Adds another summary of a disjoint set of blocks.
    pub fn merge(&mut self, other: &BlockSums) {
        self.events += other.events;
        self.trials += other.trials;
        self.sum_sq_over_n += other.sum_sq_over_n;
        self.sum_inv_n += other.sum_inv_n;
        self.blocks += other.blocks;
    }

    /// Pearson's X² over the blocks, or None with fewer than 2 blocks or no events (or only
    /// events).
    pub fn pearson(&self) -> Option<f64> {
        if self.blocks < 2 || self.events == 0 || self.events >= self.trials {
            return None;
        }
        let p = self.events as f64 / self.trials as f64;
        let x2 = (self.sum_sq_over_n - p * self.events as f64) / (p * (1.0 - p));
        Some(x2.max(0.0))
    }

    /// The dispersion estimate `X² / (K - 1)`.
    pub fn phi_hat(&self) -> Option<f64> {
        self.pearson().map(|x2| x2 / (self.blocks - 1) as f64)
    }

    /// The upper [`PHI_CONFIDENCE`] confidence limit for φ, `X² / χ²_{K-1}(1 - PHI_CONFIDENCE)`
    /// (quantile by Wilson–Hilferty), treating X²/φ as χ² with K - 1 degrees of freedom.
    pub fn phi_upper(&self) -> Option<f64> {
        let x2 = self.pearson()?;
        let nu = (self.blocks - 1) as f64;
        let s = (2.0 / (9.0 * nu)).sqrt();
        let q = nu * (1.0 - 2.0 / (9.0 * nu) - Z_PHI * s).max(0.05).powi(3);
        Some(x2 / q)
    }

    /// One-sided test of over-dispersion: the approximate p-value of X² under independence
    /// (module documentation), or None when it cannot be computed (K < 4, no events).
    pub fn p_value(&self) -> Option<f64> {
        if self.blocks < 4 {
            return None;
        }
        let x2 = self.pearson()?;
        let p = self.events as f64 / self.trials as f64;
        let df = (self.blocks - 1) as f64;
        let k = self.blocks as f64;
        let extra = (1.0 / (p * (1.0 - p)) - 6.0) * self.sum_inv_n * (k - 1.0) / k;
        let v = (2.0 * df + extra).max(1e-9 * df);
        let c = v / (2.0 * df);
        let nu = 2.0 * df * df / v;
        // Wilson–Hilferty: (Y/ν)^(1/3) ~ N(1 - 2/(9ν), 2/(9ν)) for Y ~ χ²_ν.
        let y = x2 / c;
        let s2 = 2.0 / (9.0 * nu);
        let z = ((y / nu).cbrt() - (1.0 - s2)) / s2.sqrt();
        Some(normal_sf(z))
    }
}

/// Upper tail of the standard normal, `P(Z > z)`, via the complementary error function
/// (W. J. Cody's rational approximations as in Numerical Recipes' `erfcc`, relative error
/// below 1.2e-7: ample for a significance test).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

/// One time scale: closed blocks and the block being filled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// Windows per block.
    pub windows: u32,
    /// Sums over the closed blocks.
    pub sums: BlockSums,
    /// Events in the open block.
    pub open_events: u64,
    /// Trials in the open block.
    pub open_trials: u64,
    /// Windows in the open block.
    pub open_windows: u32,
}

/// The per-variant, per-metric summary: block sums at several time scales.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispersion {
    /// One entry per scale, shortest first.
    pub scales: Vec<Scale>,
}

impl Default for Dispersion {
    fn default() -> Self {
        Self::new()
    }
}

/// What the dispersion test found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// The factor applied (1 when not significant): the upper confidence limit for φ.
    pub phi: f64,
    /// Windows per block of the scale that set φ (None when not significant).
    pub scale: Option<u32>,
    /// That scale's p-value.
    pub p_value: Option<f64>,
    /// Blocks at that scale.
    pub blocks: u64,
    /// φ̂ at every scale (None where it cannot be computed), shortest first.
    pub phi_hats: Vec<Option<f64>>,
}

/// Which bound the effective counts feed: rounding is chosen to make that bound wider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// An upper bound ("rate below t"): x rounded up, n down.
    Upper,
    /// A lower bound ("rate above t"): x rounded down, n up.
    Lower,
}

impl Dispersion {
    /// A summary at [`DEFAULT_SCALES`].
    pub fn new() -> Self {
        Self::with_scales(&DEFAULT_SCALES)
    }

    /// A summary at the given block lengths (in windows; zeros are dropped).
    pub fn with_scales(windows: &[u32]) -> Self {
        Dispersion {
            scales: windows
                .iter()
                .filter(|w| **w > 0)
                .map(|&w| Scale {
                    windows: w,
                    sums: BlockSums::default(),
                    open_events: 0,
                    open_trials: 0,
                    open_windows: 0,
                })
                .collect(),
        }
    }

    /// Adds one analysis window's counts (x clamped to n; a window with n = 0 still counts as
    /// time passing within the open blocks).
    pub fn add_window(&mut self, x: u64, n: u64) {
        let x = x.min(n);
        for s in &mut self.scales {
            s.open_events += x;
            s.open_trials += n;
            s.open_windows += 1;
            if s.open_windows >= s.windows {
                s.sums.add_block(s.open_events, s.open_trials);
                s.open_events = 0;
                s.open_trials = 0;
                s.open_windows = 0;
            }
        }
    }

    /// Runs the test at significance `level` (over all scales together) and returns the factor
    /// to apply, see the module documentation.
    pub fn assess(&self, level: f64) -> Assessment {
        let per_scale = level / self.scales.len().max(1) as f64;
        let mut out = Assessment {
            phi: 1.0,
            scale: None,
            p_value: None,
            blocks: 0,
            phi_hats: self.scales.iter().map(|s| s.sums.phi_hat()).collect(),
        };
        for s in &self.scales {
            let (Some(pv), Some(phi)) = (s.sums.p_value(), s.sums.phi_upper()) else {
                continue;
            };
            if pv < per_scale && phi > out.phi {
                out.phi = phi;
                out.scale = Some(s.windows);
                out.p_value = Some(pv);
                out.blocks = s.sums.blocks;
            }
        }
        out
    }

    /// The counts to hand to the exact bounds: `effective(x, n, φ, side)` with φ from
    /// [`Dispersion::assess`] at `level`, together with the assessment (for the explanation).
    pub fn adjust(&self, x: u64, n: u64, level: f64, side: Side) -> ((u64, u64), Assessment) {
        let a = self.assess(level);
        (effective(x, n, a.phi, side), a)
    }
}

/// `(x/φ, n/φ)` rounded so that the corresponding bound is at least as wide as with the exact
/// fractions: for [`Side::Upper`] x up and n down, for [`Side::Lower`] x down and n up (and
/// x ≤ n kept). φ ≤ 1 (or NaN) leaves the counts unchanged.
pub fn effective(x: u64, n: u64, phi: f64, side: Side) -> (u64, u64) {
    let x = x.min(n);
    if phi.is_nan() || phi <= 1.0 {
        return (x, n);
    }
    let (xf, nf) = (x as f64 / phi, n as f64 / phi);
    match side {
        Side::Upper => {
            let ne = nf.floor() as u64;
            let xe = (xf.ceil() as u64).min(ne);
            (xe, ne)
        }
        Side::Lower => {
            let ne = (nf.ceil() as u64).min(n);
            let xe = (xf.floor() as u64).min(ne);
            (xe, ne)
        }
    }
}

#[cfg(test)]
// Measurement-only tests print their figures.
#[allow(clippy::print_stdout, clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn pearson_matches_direct_formula() {
        let blocks = [(3u64, 100u64), (0, 80), (7, 120), (1, 100), (2, 90)];
        let mut s = BlockSums::default();
        for &(x, n) in &blocks {
            s.add_block(x, n);
        }
        let (tx, tn) = (13.0, 490.0);
        let p = tx / tn;
        let direct: f64 = blocks
            .iter()
            .map(|&(x, n)| {
                let e = n as f64 * p;
                (x as f64 - e).powi(2) / (e * (1.0 - p))
            })
            .sum();
        assert!((s.pearson().unwrap() - direct).abs() < 1e-9);
        assert!((s.phi_hat().unwrap() - direct / 4.0).abs() < 1e-9);
        // Merging halves equals adding all.
        let mut a = BlockSums::default();
        let mut b = BlockSums::default();
        for (i, &(x, n)) in blocks.iter().enumerate() {
            if i % 2 == 0 {
                a.add_block(x, n)
            } else {
                b.add_block(x, n)
            }
        }
        a.merge(&b);
        assert_eq!(a.events, s.events);
        assert_eq!(a.blocks, s.blocks);
        assert!((a.pearson().unwrap() - s.pearson().unwrap()).abs() < 1e-9);
        // Degenerate inputs.
        let mut z = BlockSums::default();
        z.add_block(0, 10);
        z.add_block(0, 0);
        assert_eq!(z.blocks, 1);
        assert_eq!(z.pearson(), None);
    }

    #[test]
    fn normal_tail_known_values() {
        for &(z, want) in &[
            (0.0, 0.5),
            (1.644_853_626_951_472, 0.05),
            (2.326_347_874_040_841, 0.01),
            (-1.0, 0.841_344_746_068_543),
            (4.0, 3.167_124_183_311_99e-5),
        ] {
            let got = normal_sf(z);
            assert!(
                (got - want).abs() < 2e-7 * want.max(1e-3),
                "{z}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn effective_counts_round_conservatively() {
        assert_eq!(effective(10, 1000, 1.0, Side::Upper), (10, 1000));
        assert_eq!(effective(10, 1000, 0.5, Side::Upper), (10, 1000));
        assert_eq!(effective(10, 1000, f64::NAN, Side::Lower), (10, 1000));
        assert_eq!(effective(10, 1000, 3.0, Side::Upper), (4, 333));
        assert_eq!(effective(10, 1000, 3.0, Side::Lower), (3, 334));
        assert_eq!(effective(5, 5, 100.0, Side::Upper), (0, 0));
        assert_eq!(effective(5, 5, 2.0, Side::Lower), (2, 3));
        let (x, n) = effective(999, 1000, 7.0, Side::Upper);
        assert!(x <= n);
    }

    #[test]
    fn blocks_close_at_their_scale() {
        let mut d = Dispersion::with_scales(&[1, 4, 0]);
        assert_eq!(d.scales.len(), 2);
        for i in 0..10u64 {
            d.add_window(i % 3, 100);
        }
        assert_eq!(d.scales[0].sums.blocks, 10);
        assert_eq!(d.scales[1].sums.blocks, 2);
        assert_eq!(d.scales[1].open_windows, 2);
        assert_eq!(d.scales[1].sums.trials, 800);
        let json = serde_json::to_string(&d).unwrap();
        let back: Dispersion = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    /// xorshift64* for the synthetic streams below.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            let q = 1.0 - p;
            let mut pmf = q.powf(n as f64);
            let u = self.uniform();
            let (mut cdf, mut x) = (pmf, 0u64);
            while u > cdf && x < n {
                pmf *= (n - x) as f64 / (x + 1) as f64 * p / q;
                x += 1;
                cdf += pmf;
            }
            x
        }
    }

    /// Independent requests with few expected events per block: the test rarely fires (the
    /// sparse-data variance term keeps it near its level), and φ̂ stays near 1.
    #[test]
    fn independent_data_is_left_alone() {
        let mut flagged = 0;
        let runs = 200;
        for seed in 1..=runs as u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut d = Dispersion::new();
            for _ in 0..1440 {
                let x = rng.binomial(600, 0.001);
                d.add_window(x, 600);
            }
            let a = d.assess(0.05);
            flagged += usize::from(a.phi > 1.0);
            if a.phi > 1.0 {
                assert!(a.phi < 3.5, "{a:?}");
            }
        }
        println!("independent: flagged {flagged}/{runs}");
        assert!(flagged <= 25, "{flagged}");
    }

    /// Hour-long incidents: the 64-window scale sees them and φ ≈ the variance inflation of
    /// the phase total.
    #[test]
    fn hour_long_incidents_are_detected() {
        let mut rng = Rng(0xDEAD_BEEF);
        let mut found = 0;
        for _ in 0..50 {
            let mut d = Dispersion::new();
            for _ in 0..24 {
                let rate = if rng.uniform() < 0.1 {
                    0.0031
                } else {
                    0.000767
                };
                for _ in 0..60 {
                    d.add_window(rng.binomial(600, rate), 600);
                }
            }
            let a = d.assess(DEFAULT_LEVEL);
            found += usize::from(a.phi > 2.0);
        }
        assert!(found >= 40, "{found}");
    }
}
