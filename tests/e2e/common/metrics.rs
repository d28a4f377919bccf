//! One scrape of the proxy's `/metrics`: every line checked to be Prometheus text, then parsed
//! with `prometheus-parse`, with lookups by metric name and labels.

use prometheus_parse::{HistogramCount, LineInfo, Sample, Scrape, Value};

/// One scrape of `/metrics`.
pub struct Metrics {
    pub text: String,
    pub scrape: Scrape,
}

impl Metrics {
    /// Parses the exposition text; every non-empty line must be a recognised comment or sample.
    pub fn parse(text: &str) -> Metrics {
        for line in text.lines() {
            match LineInfo::parse(line) {
                LineInfo::Ignored => panic!("unparseable metrics line {line:?}"),
                LineInfo::Sample { value, .. } => assert!(
                    value.parse::<f64>().is_ok(),
                    "metrics line with a non-numeric value: {line:?}"
                ),
                _ => {}
            }
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse metrics");
        Metrics {
            text: text.to_string(),
            scrape,
        }
    }

    /// Samples of metric `name` whose labels include `labels`.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect()
    }

    /// The value of the one sample of `name` with `labels` (counter, gauge or untyped).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.samples(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        match &found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    /// The buckets of histogram `name`.
    pub fn histogram(&self, name: &str) -> Vec<HistogramCount> {
        let found = self.samples(name, &[]);
        assert_eq!(found.len(), 1, "histogram {name}: {found:?}");
        match &found[0].value {
            Value::Histogram(buckets) => buckets.clone(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}
