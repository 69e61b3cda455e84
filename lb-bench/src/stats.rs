//! Figures over repeated runs.

/// The median of `values` (the mean of the middle two for an even count); None when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// The `p`th percentile of `sorted` (ascending) by the nearest-rank method; None when empty.
pub(crate) fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// A contender against a baseline measured in the same repetitions: the geometric mean of the
/// run-by-run ratios, with a 95% confidence interval (Student's t on the ratios' logarithms).
/// The runs of a repetition share the machine's moment (the bench alternates the contenders
/// within each), so pairing them takes the machine's drift out of the comparison; the interval
/// says whether the difference is larger than what the runs' scatter alone would give.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub(crate) struct PairedRatio {
    pub(crate) runs: usize,
    pub(crate) geomean: f64,
    /// The interval's bounds; None with a single pair (no scatter to judge it by).
    pub(crate) low: Option<f64>,
    pub(crate) high: Option<f64>,
}

impl PairedRatio {
    /// `(contender, baseline)` figures of each repetition; pairs with a figure that is not
    /// positive and finite are left out. None without a pair.
    pub(crate) fn of(pairs: &[(f64, f64)]) -> Option<Self> {
        let logs: Vec<f64> = pairs
            .iter()
            .filter(|(a, b)| a.is_finite() && b.is_finite() && *a > 0.0 && *b > 0.0)
            .map(|(a, b)| (a / b).ln())
            .collect();
        let n = logs.len();
        if n == 0 {
            return None;
        }
        let mean = logs.iter().sum::<f64>() / n as f64;
        let half_width = (n >= 2).then(|| {
            let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (variance / n as f64).sqrt()
        });
        Some(Self {
            runs: n,
            geomean: mean.exp(),
            low: half_width.map(|h| (mean - h).exp()),
            high: half_width.map(|h| (mean + h).exp()),
        })
    }

    /// `lower` or `higher` when the whole interval is on one side of 1.0, else `no difference
    /// measured`; `one pair: no interval` without one.
    pub(crate) fn verdict(&self) -> &'static str {
        match (self.low, self.high) {
            (None, _) | (_, None) => "one pair: no interval",
            (_, Some(high)) if high < 1.0 => "lower",
            (Some(low), _) if low > 1.0 => "higher",
            _ => "no difference measured",
        }
    }
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (a two-sided 95%
/// interval); the normal's 1.96 past the table.
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    df.checked_sub(1)
        .and_then(|i| TABLE.get(i))
        .copied()
        .unwrap_or(1.96)
}

#[cfg(test)]
mod tests {
    use super::{median, nearest_rank, PairedRatio};

    #[test]
    fn a_paired_ratio_is_the_geometric_mean_with_its_interval() {
        let pairs = [(90.0, 100.0), (110.0, 100.0), (100.0, 100.0)];
        let paired = PairedRatio::of(&pairs).unwrap();
        assert_eq!(paired.runs, 3);
        let logs = [0.9f64.ln(), 1.1f64.ln(), 0.0];
        let mean = logs.iter().sum::<f64>() / 3.0;
        assert!((paired.geomean - mean.exp()).abs() < 1e-12);
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let high = (mean + 4.303 * sd / 3f64.sqrt()).exp();
        assert!((paired.high.unwrap() - high).abs() < 1e-12);
        assert_eq!(paired.verdict(), "no difference measured");
    }

    #[test]
    fn a_steady_loss_is_lower_and_a_single_pair_has_no_interval() {
        let pairs = [(95.0, 100.0), (96.0, 100.0), (94.0, 100.0), (95.5, 100.0)];
        let paired = PairedRatio::of(&pairs).unwrap();
        assert!(paired.high.unwrap() < 1.0, "{paired:?}");
        assert_eq!(paired.verdict(), "lower");
        let gain = PairedRatio::of(&[(150.0, 100.0), (152.0, 100.0), (149.0, 100.0)]).unwrap();
        assert_eq!(gain.verdict(), "higher");

        let single = PairedRatio::of(&[(50.0, 100.0), (0.0, 100.0), (f64::NAN, 1.0)]).unwrap();
        assert_eq!((single.runs, single.geomean), (1, 0.5));
        assert_eq!((single.low, single.high), (None, None));
        assert_eq!(single.verdict(), "one pair: no interval");
        assert_eq!(PairedRatio::of(&[]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&sorted, 50.0), Some(50));
        assert_eq!(nearest_rank(&sorted, 99.0), Some(99));
        assert_eq!(nearest_rank(&[7], 99.0), Some(7));
        assert_eq!(nearest_rank(&[], 99.0), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }
}
