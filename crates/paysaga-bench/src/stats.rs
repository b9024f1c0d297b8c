//! Percentiles over measured samples (exact: samples are sorted, nearest-rank).

use serde::Serialize;

/// Latency percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// Percentiles of samples given in microseconds; `None` without samples.
    pub fn from_micros(mut micros: Vec<u64>) -> Option<Percentiles> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let n = micros.len();
        let rank = |p: f64| -> f64 {
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            micros[idx] as f64 / 1000.0
        };
        let sum: u128 = micros.iter().map(|&m| u128::from(m)).sum();
        Some(Percentiles {
            n,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: micros[n - 1] as f64 / 1000.0,
            mean_ms: sum as f64 / n as f64 / 1000.0,
        })
    }

    /// `p50 / p95 / p99 / max` for the table.
    pub fn short(&self) -> String {
        format!(
            "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms, self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let p = Percentiles::from_micros((1..=100).map(|i| i * 1000).collect());
        let p = p.expect("samples");
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert!(Percentiles::from_micros(Vec::new()).is_none());
    }
}
