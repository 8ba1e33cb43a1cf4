//! Repetition statistics. Every figure the suite reports is the median of several repetitions
//! with its spread (min–max), and every comparison is taken per repetition (subject and baseline
//! measured back to back in the same repetition) before the median is taken, so slow drift of a
//! shared machine cancels out instead of landing on one side.

use serde::Serialize;

/// The median of a set of repetitions and how far they spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Number of repetitions behind the figure.
    pub n: usize,
}

impl Spread {
    /// Summarises `values`; `None` when there is nothing finite to summarise.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: median_of_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }

    /// The same figure in another unit (`factor` multiplies every field).
    pub fn scaled(self, factor: f64) -> Spread {
        Spread {
            median: self.median * factor,
            min: self.min * factor,
            max: self.max * factor,
            n: self.n,
        }
    }
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Per-repetition `subject / baseline`, summarised. Pairs where the baseline is zero are skipped.
pub fn paired_ratio(subject: &[f64], baseline: &[f64]) -> Option<Spread> {
    let ratios: Vec<f64> = subject
        .iter()
        .zip(baseline)
        .filter(|(_, b)| **b != 0.0)
        .map(|(s, b)| s / b)
        .collect();
    Spread::of(&ratios)
}

/// Per-repetition `subject - baseline`, summarised.
pub fn paired_difference(subject: &[f64], baseline: &[f64]) -> Option<Spread> {
    let diffs: Vec<f64> = subject.iter().zip(baseline).map(|(s, b)| s - b).collect();
    Spread::of(&diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    }

    #[test]
    fn spread_is_min_to_max() {
        let s = Spread::of(&[5.0, 1.0, 9.0, 2.0, 7.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 5.0, 9.0, 5));
    }

    #[test]
    fn nothing_finite_is_no_figure() {
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN, f64::INFINITY]).is_none());
        assert_eq!(Spread::of(&[f64::NAN, 4.0]).unwrap().n, 1);
    }

    #[test]
    fn ratio_is_taken_per_repetition_before_the_median() {
        // Medians of the sides are 20 and 10 (ratio 2), but per-pair ratios are 1, 3, 4: the
        // median of those (3) is what the suite reports.
        let subject = [10.0, 30.0, 40.0];
        let baseline = [10.0, 10.0, 10.0];
        let r = paired_ratio(&subject, &baseline).unwrap();
        assert_eq!((r.min, r.median, r.max), (1.0, 3.0, 4.0));
    }

    #[test]
    fn ratio_skips_zero_baselines() {
        let r = paired_ratio(&[1.0, 2.0], &[0.0, 1.0]).unwrap();
        assert_eq!((r.median, r.n), (2.0, 1));
    }

    #[test]
    fn difference_is_taken_per_repetition() {
        let d = paired_difference(&[1.2, 1.5, 1.1], &[1.0, 1.0, 1.0]).unwrap();
        assert!((d.median - 0.2).abs() < 1e-9);
        assert!((d.max - 0.5).abs() < 1e-9);
    }

    #[test]
    fn scaling_keeps_the_count() {
        let s = Spread::of(&[1.0, 2.0]).unwrap().scaled(1000.0);
        assert_eq!((s.min, s.median, s.max, s.n), (1000.0, 1500.0, 2000.0, 2));
    }
}
