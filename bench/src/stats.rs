//! Medians and spread (p10/p90, nearest rank) of repeated measurements, and the
//! interleaving loop that collects them.

/// Median and spread of one series of samples.
///
/// ```
/// use sd_launch_bench::stats::Summary;
/// let s = Summary::of(&[5.0, 1.0, 4.0, 2.0, 3.0]);
/// assert_eq!((s.median, s.p10, s.p90, s.n), (3.0, 1.0, 5.0, 5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the two middle samples for an even count).
    pub median: f64,
    /// 10th percentile, nearest rank.
    pub p10: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarize `samples`; all fields are NaN (and `n` 0) for an empty slice.
    ///
    /// ```
    /// assert!(sd_launch_bench::stats::Summary::of(&[]).median.is_nan());
    /// ```
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary {
                median: f64::NAN,
                p10: f64::NAN,
                p90: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let rank = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            median,
            p10: rank(0.10),
            p90: rank(0.90),
            n,
        }
    }
}

/// Run every measurement in `ways` once per round, in turn (A B C A B C ...), for `rounds`
/// rounds, and return one sample series per way. A failed measurement is recorded as NaN
/// (left out of the summary) and its error is kept.
///
/// ```
/// use sd_launch_bench::stats::interleave;
/// let mut a = || Ok(1.0);
/// let mut b = || Ok(2.0);
/// let (series, errors) = interleave(3, &mut [&mut a, &mut b]);
/// assert_eq!(series, vec![vec![1.0; 3], vec![2.0; 3]]);
/// assert!(errors.is_empty());
/// ```
pub fn interleave(
    rounds: usize,
    ways: &mut [&mut dyn FnMut() -> std::io::Result<f64>],
) -> (Vec<Vec<f64>>, Vec<String>) {
    let mut series = vec![Vec::with_capacity(rounds); ways.len()];
    let mut errors = Vec::new();
    for _ in 0..rounds {
        for (i, way) in ways.iter_mut().enumerate() {
            match way() {
                Ok(x) => series[i].push(x),
                Err(e) => {
                    series[i].push(f64::NAN);
                    errors.push(e.to_string());
                }
            }
        }
    }
    (series, errors)
}
