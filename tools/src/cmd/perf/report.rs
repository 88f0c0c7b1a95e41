//! What a run measured and how it is printed: latency percentiles from the HDR
//! histogram, the produce and consume summaries as a table or one JSON object.
//! Rendering only: nothing here measures or decides a run's outcome but `failure`.

use std::time::Duration;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::OutputFormat;
use crate::output::Table;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// The summary of a histogram of microseconds (`None` if it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": ms(self.p50_us),
            "p99": ms(self.p99_us),
            "p99_9": ms(self.p999_us),
            "max": ms(self.max_us),
            "mean": round3(self.mean_us / 1000.0),
        })
    }

    fn row(&self, name: &str) -> Vec<String> {
        vec![
            name.to_owned(),
            self.count.to_string(),
            format!("{:.3}", self.p50_us as f64 / 1000.0),
            format!("{:.3}", self.p99_us as f64 / 1000.0),
            format!("{:.3}", self.p999_us as f64 / 1000.0),
            format!("{:.3}", self.max_us as f64 / 1000.0),
            format!("{:.3}", self.mean_us / 1000.0),
        ]
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A histogram of microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds (at least 1, saturating at the histogram's top).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// What producers counted toward the report, the load generators' one tally: the
/// warm-up left out, failures always in.
#[derive(Debug)]
pub struct Tally {
    pub hist: Histogram<u64>,
    pub acked: u64,
    pub bytes: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            hist: new_histogram(),
            acked: 0,
            bytes: 0,
            failed: 0,
            first_error: None,
        }
    }
}

impl Tally {
    /// `records` records of `bytes_each` acknowledged `us` microseconds after sending.
    pub fn ack(&mut self, records: u64, bytes_each: u64, us: u64) {
        self.hist.saturating_record_n(us.max(1), records);
        self.acked += records;
        self.bytes += records * bytes_each;
    }

    /// `records` records failed; the first error is kept.
    pub fn fail(&mut self, records: u64, error: impl std::fmt::Display) {
        self.failed += records;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn merge(&mut self, other: Tally) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.acked += other.acked;
        self.bytes += other.bytes;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The `perf produce` report of what was counted over `elapsed`.
    pub fn into_report(self, topic: String, elapsed: Duration) -> ProduceReport {
        ProduceReport {
            mode: "produce",
            topic,
            records: self.acked,
            failed: self.failed,
            bytes: self.bytes,
            elapsed,
            ack_latency: Latency::from_histogram(&self.hist),
            consumed: None,
            e2e_latency: None,
            first_error: self.first_error,
        }
    }
}

/// What `perf produce` and `perf end-to-end` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ProduceReport {
    /// `produce` or `end-to-end`.
    pub mode: &'static str,
    pub topic: String,
    /// Records acknowledged.
    pub records: u64,
    /// Records that failed.
    pub failed: u64,
    /// Key and value bytes acknowledged.
    pub bytes: u64,
    /// First send to last acknowledgement.
    pub elapsed: Duration,
    pub ack_latency: Option<Latency>,
    /// `end-to-end` only: records the consumer saw, and their latency.
    pub consumed: Option<u64>,
    pub e2e_latency: Option<Latency>,
    pub first_error: Option<String>,
}

/// What `perf consume` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeReport {
    pub topic: String,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Either report.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Produce(ProduceReport),
    Consume(ConsumeReport),
}

pub(super) fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(super) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    mb(bytes) / elapsed.as_secs_f64().max(1e-9)
}

impl Report {
    /// A produce run's report made the report of an end-to-end run: the records the
    /// consumer saw and their produce→consume latencies in `hist`.
    pub fn into_end_to_end(self, consumed: u64, hist: &Histogram<u64>) -> anyhow::Result<Self> {
        let Report::Produce(mut r) = self else {
            return Err(anyhow!("an end-to-end run needs a produce report"));
        };
        r.mode = "end-to-end";
        r.consumed = Some(consumed);
        r.e2e_latency = Latency::from_histogram(hist);
        Ok(Report::Produce(r))
    }

    /// The final summary: a table, or one JSON object (one line).
    pub fn render(&self, format: OutputFormat) -> String {
        match (self, format) {
            (Report::Produce(r), OutputFormat::Table) => {
                let mut out = format!(
                    "{} {} records ({:.2} MB) to '{}' in {:.3} s: {:.1} records/s, {:.2} MB/s\n",
                    if r.mode == "produce" {
                        "Produced"
                    } else {
                        "End-to-end: produced"
                    },
                    r.records,
                    mb(r.bytes),
                    r.topic,
                    r.elapsed.as_secs_f64(),
                    per_sec(r.records, r.elapsed),
                    mb_per_sec(r.bytes, r.elapsed),
                );
                if let Some(consumed) = r.consumed {
                    out.push_str(&format!("Consumed {consumed} of them.\n"));
                }
                if r.failed > 0 {
                    out.push_str(&format!(
                        "{} records failed; first error: {}\n",
                        r.failed,
                        r.first_error.as_deref().unwrap_or("unknown")
                    ));
                }
                let mut t =
                    Table::new(&["LATENCY(ms)", "COUNT", "P50", "P99", "P99.9", "MAX", "MEAN"]);
                if let Some(l) = &r.ack_latency {
                    t.row(l.row("produce-ack"));
                }
                if let Some(l) = &r.e2e_latency {
                    t.row(l.row("end-to-end"));
                }
                if r.ack_latency.is_some() || r.e2e_latency.is_some() {
                    out.push_str(&t.render());
                }
                out
            }
            (Report::Produce(r), OutputFormat::Json) => {
                let mut v = json!({
                    "mode": r.mode,
                    "topic": r.topic,
                    "records": r.records,
                    "failed": r.failed,
                    "bytes": r.bytes,
                    "elapsed_s": round3(r.elapsed.as_secs_f64()),
                    "records_per_sec": round3(per_sec(r.records, r.elapsed)),
                    "mb_per_sec": round3(mb_per_sec(r.bytes, r.elapsed)),
                    "ack_latency_ms": r.ack_latency.as_ref().map(Latency::json),
                });
                if r.mode != "produce" {
                    v["consumed"] = json!(r.consumed);
                    v["end_to_end_latency_ms"] = json!(r.e2e_latency.as_ref().map(Latency::json));
                }
                if let Some(e) = &r.first_error {
                    v["first_error"] = json!(e);
                }
                format!("{v}\n")
            }
            (Report::Consume(r), OutputFormat::Table) => format!(
                "Consumed {} records ({:.2} MB) from '{}' in {:.3} s: {:.1} records/s, {:.2} MB/s\n",
                r.records,
                mb(r.bytes),
                r.topic,
                r.elapsed.as_secs_f64(),
                per_sec(r.records, r.elapsed),
                mb_per_sec(r.bytes, r.elapsed),
            ),
            (Report::Consume(r), OutputFormat::Json) => format!(
                "{}\n",
                json!({
                    "mode": "consume",
                    "topic": r.topic,
                    "records": r.records,
                    "bytes": r.bytes,
                    "elapsed_s": round3(r.elapsed.as_secs_f64()),
                    "records_per_sec": round3(per_sec(r.records, r.elapsed)),
                    "mb_per_sec": round3(mb_per_sec(r.bytes, r.elapsed)),
                })
            ),
        }
    }

    /// The error to exit with after the summary, if records failed.
    pub(super) fn failure(&self) -> Option<anyhow::Error> {
        match self {
            Report::Produce(r) if r.failed > 0 => Some(anyhow!(
                "{} record(s) were not stored; first error: {}",
                r.failed,
                r.first_error.as_deref().unwrap_or("unknown")
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> Histogram<u64> {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us * 10);
        }
        h
    }

    fn latency() -> Latency {
        Latency::from_histogram(&histogram()).unwrap()
    }

    #[test]
    fn a_tally_counts_every_record_and_keeps_the_first_error() {
        let mut a = Tally::default();
        a.ack(3, 100, 2_000);
        a.fail(2, "refused");
        let mut b = Tally::default();
        b.ack(1, 100, 0);
        b.fail(1, "later");
        a.merge(b);
        assert_eq!((a.acked, a.bytes, a.failed), (4, 400, 3));
        assert_eq!(a.hist.len(), 4, "one latency sample per record");
        assert_eq!(a.hist.min(), 1, "a zero latency counts as 1 us");
        let r = a.into_report("t".into(), Duration::from_secs(2));
        assert_eq!((r.records, r.failed, r.bytes), (4, 3, 400));
        assert_eq!(r.first_error.as_deref(), Some("refused"));
        assert_eq!(r.ack_latency.map(|l| l.count), Some(4));
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        assert_eq!(Latency::from_histogram(&new_histogram()), None);
        let l = latency();
        assert_eq!(l.count, 1000);
        // 3 significant digits.
        assert!(l.p50_us.abs_diff(5000) <= 5, "{l:?}");
        assert!(l.p99_us.abs_diff(9900) <= 10, "{l:?}");
        assert!(l.p999_us.abs_diff(9990) <= 10, "{l:?}");
        assert!(l.max_us.abs_diff(10_000) <= 10, "{l:?}");
        assert!((l.mean_us - 5005.0).abs() < 10.0, "{l:?}");
        let mut h = new_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    fn produce_report() -> ProduceReport {
        ProduceReport {
            mode: "produce",
            topic: "p1".into(),
            records: 20_000,
            failed: 0,
            bytes: 20_480_000,
            elapsed: Duration::from_secs(2),
            ack_latency: Some(latency()),
            consumed: None,
            e2e_latency: None,
            first_error: None,
        }
    }

    #[test]
    fn the_produce_summary_renders_as_a_table() {
        let out = Report::Produce(produce_report()).render(OutputFormat::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Produced 20000 records (20.48 MB) to 'p1' in 2.000 s: 10000.0 records/s, 10.24 MB/s"
        );
        assert!(
            lines[1].starts_with("LATENCY(ms)") && lines[1].contains("P99.9"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("produce-ack") && lines[2].contains("1000"),
            "{out}"
        );
        assert!(
            lines[2].contains("5.0") && lines[2].contains("10.0"),
            "{out}"
        );
        assert_eq!(lines.len(), 3, "{out}");

        let mut r = produce_report();
        r.failed = 3;
        r.first_error = Some("timed out".into());
        let report = Report::Produce(r);
        assert!(
            report
                .render(OutputFormat::Table)
                .contains("3 records failed; first error: timed out")
        );
        assert!(
            report
                .failure()
                .unwrap()
                .to_string()
                .contains("3 record(s) were not stored")
        );
        assert!(Report::Produce(produce_report()).failure().is_none());
    }

    #[test]
    fn the_produce_summary_renders_as_one_json_object() {
        let out = Report::Produce(produce_report()).render(OutputFormat::Json);
        assert_eq!(out.lines().count(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mode"], "produce");
        assert_eq!(v["topic"], "p1");
        assert_eq!(v["records"], 20_000);
        assert_eq!(v["failed"], 0);
        assert_eq!(v["bytes"], 20_480_000);
        assert_eq!(v["elapsed_s"], 2.0);
        assert_eq!(v["records_per_sec"], 10_000.0);
        assert_eq!(v["mb_per_sec"], 10.24);
        let ack = &v["ack_latency_ms"];
        assert_eq!(ack["count"], 1000);
        for field in ["p50", "p99", "p99_9", "max", "mean"] {
            assert!(ack[field].as_f64().unwrap() > 0.0, "{field}: {ack}");
        }
        assert!(ack["p50"].as_f64().unwrap() < ack["p99"].as_f64().unwrap());
        assert!(v.get("end_to_end_latency_ms").is_none() && v.get("first_error").is_none());
    }

    #[test]
    fn the_end_to_end_summary_has_both_latencies() {
        let report = Report::Produce(produce_report())
            .into_end_to_end(19_999, &histogram())
            .unwrap();
        let table = report.render(OutputFormat::Table);
        assert!(
            table.starts_with("End-to-end: produced 20000 records"),
            "{table}"
        );
        assert!(table.contains("Consumed 19999 of them."), "{table}");
        assert!(
            table.contains("\nproduce-ack") && table.contains("\nend-to-end"),
            "{table}"
        );
        let v: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(v["mode"], "end-to-end");
        assert_eq!(v["consumed"], 19_999);
        assert_eq!(v["end_to_end_latency_ms"]["count"], 1000);
        let consume = Report::Consume(ConsumeReport {
            topic: "p1".into(),
            records: 1,
            bytes: 1,
            elapsed: Duration::from_secs(1),
        });
        assert!(consume.into_end_to_end(1, &histogram()).is_err());
    }

    #[test]
    fn the_consume_summary_renders() {
        let report = Report::Consume(ConsumeReport {
            topic: "p1".into(),
            records: 5000,
            bytes: 5_000_000,
            elapsed: Duration::from_millis(500),
        });
        assert_eq!(
            report.render(OutputFormat::Table),
            "Consumed 5000 records (5.00 MB) from 'p1' in 0.500 s: 10000.0 records/s, 10.00 MB/s\n"
        );
        let v: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(v["mode"], "consume");
        assert_eq!(
            (v["records"].as_u64(), v["records_per_sec"].as_f64()),
            (Some(5000), Some(10_000.0))
        );
        assert_eq!(v["mb_per_sec"], 10.0);
        assert!(report.failure().is_none());
    }
}
