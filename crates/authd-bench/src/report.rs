//! Results: merging the per-worker histograms and counters into one summary per worker group,
//! the login-versus-bcrypt ratio, the JSON document printed by `--json`, the human-readable
//! table, and the `--max-error-rate` verdict. Pure code, no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Rpc;
use crate::load::{WorkerStats, new_histogram};

/// Latency percentiles of the successful calls, in microseconds (absent without successes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: round2(h.mean()),
        })
    }
}

/// One worker group's results.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub rpc: &'static str,
    pub concurrency: u32,
    /// Calls completed in the measured window (ok + errors).
    pub requests: u64,
    pub ok: u64,
    /// Failed calls by status code name (INVALID_REPLY: OK with a wrong body).
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second of measured time.
    pub rps: f64,
    pub error_rate: f64,
    pub latency_us: Option<Latency>,
    /// Refresh only: sessions lost and logged in again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relogins: Option<u64>,
}

impl GroupReport {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The login throughput relative to what bcrypt alone allows on the server's cores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoginRatio {
    pub bcrypt_cost: u32,
    /// Median of a few in-process verifies at `bcrypt_cost`.
    pub bcrypt_verify_ms: f64,
    pub server_cores: u32,
    /// server_cores / verify time: the most logins per second bcrypt allows.
    pub bcrypt_bound_rps: f64,
    pub login_rps: f64,
    /// login_rps / bcrypt_bound_rps (1.0 = bcrypt is the only cost).
    pub ratio: f64,
}

impl LoginRatio {
    pub fn new(bcrypt_cost: u32, verify: Duration, server_cores: u32, login_rps: f64) -> Self {
        let secs = verify.as_secs_f64();
        let bound = if secs > 0.0 {
            f64::from(server_cores) / secs
        } else {
            0.0
        };
        let ratio = if bound > 0.0 { login_rps / bound } else { 0.0 };
        Self {
            bcrypt_cost,
            bcrypt_verify_ms: round3(secs * 1e3),
            server_cores,
            bcrypt_bound_rps: round2(bound),
            login_rps: round2(login_rps),
            ratio: round3(ratio),
        }
    }
}

/// The whole run, as printed by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub addr: String,
    /// `mix` or the single RPC.
    pub rpc: &'static str,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub connections: u32,
    /// CPUs this process could run on (its affinity mask).
    pub client_cores: usize,
    /// Threads of the client runtime.
    pub client_threads: usize,
    pub run_id: String,
    pub users: u32,
    pub groups: Vec<GroupReport>,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Set when the run had login workers.
    pub bcrypt_verify_ms: Option<f64>,
    pub login_bcrypt: Option<LoginRatio>,
    /// Unix time (seconds) when the measured window began.
    pub started_at: u64,
}

/// The settings of a run, for the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub addr: String,
    pub mode: &'static str,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub connections: u32,
    pub client_cores: usize,
    pub client_threads: usize,
    pub run_id: String,
    pub users: u32,
    pub started_at: u64,
}

/// Merges the workers' stats into one group per RPC, in `order`.
pub fn groups(
    order: &[(Rpc, u32)],
    workers: Vec<WorkerStats>,
    duration: Duration,
) -> Result<Vec<GroupReport>, String> {
    let secs = duration.as_secs_f64();
    let mut out = Vec::with_capacity(order.len());
    for &(rpc, concurrency) in order {
        let mut hist = new_histogram()?;
        let mut ok = 0u64;
        let mut relogins = 0u64;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for w in workers.iter().filter(|w| w.rpc == rpc) {
            hist.add(&w.hist)
                .map_err(|e| format!("merging histograms: {e}"))?;
            ok += w.ok;
            relogins += w.relogins;
            for (code, n) in &w.errors {
                *errors.entry((*code).to_owned()).or_insert(0) += n;
            }
        }
        let errs: u64 = errors.values().sum();
        let requests = ok + errs;
        out.push(GroupReport {
            rpc: rpc.name(),
            concurrency,
            requests,
            ok,
            errors,
            rps: if secs > 0.0 {
                round2(ok as f64 / secs)
            } else {
                0.0
            },
            error_rate: ratio(errs, requests),
            latency_us: Latency::of(&hist),
            relogins: (rpc == Rpc::Refresh).then_some(relogins),
        });
    }
    Ok(out)
}

impl Report {
    pub fn new(info: RunInfo, groups: Vec<GroupReport>, login: Option<LoginRatio>) -> Self {
        let requests = groups.iter().map(|g| g.requests).sum();
        let ok = groups.iter().map(|g| g.ok).sum();
        let errors = groups.iter().map(GroupReport::errors_total).sum();
        Self {
            addr: info.addr,
            rpc: info.mode,
            duration_s: round3(info.duration.as_secs_f64()),
            warmup_s: round3(info.warmup.as_secs_f64()),
            timeout_s: round3(info.timeout.as_secs_f64()),
            connections: info.connections,
            client_cores: info.client_cores,
            client_threads: info.client_threads,
            run_id: info.run_id,
            users: info.users,
            groups,
            requests,
            ok,
            errors,
            error_rate: ratio(errors, requests),
            bcrypt_verify_ms: login.as_ref().map(|l| l.bcrypt_verify_ms),
            login_bcrypt: login,
            started_at: info.started_at,
        }
    }

    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| format!("JSON: {e}"))
    }

    /// `Err` with a reason when the error rate is above `max`.
    pub fn check_error_rate(&self, max: Option<f64>) -> Result<(), String> {
        match max {
            Some(max) if self.error_rate > max => Err(format!(
                "error rate {:.4} ({} of {} calls) is above --max-error-rate {max}",
                self.error_rate, self.errors, self.requests
            )),
            _ => Ok(()),
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "authd-bench: {} against {}: {} s measured after {} s warm-up, {} connection(s), \
             client on {} core(s), run {}",
            self.rpc,
            self.addr,
            self.duration_s,
            self.warmup_s,
            self.connections,
            self.client_cores,
            self.run_id
        );
        let _ = writeln!(
            s,
            "{:<9} {:>7} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "rpc",
            "workers",
            "requests",
            "ok",
            "errors",
            "ok/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean"
        );
        for g in &self.groups {
            let lat = |f: fn(&Latency) -> f64| {
                g.latency_us
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |l| fmt_us(f(l)))
            };
            let _ = writeln!(
                s,
                "{:<9} {:>7} {:>9} {:>9} {:>7} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                g.rpc,
                g.concurrency,
                g.requests,
                g.ok,
                g.errors_total(),
                g.rps,
                lat(|l| l.p50 as f64),
                lat(|l| l.p90 as f64),
                lat(|l| l.p99 as f64),
                lat(|l| l.p999 as f64),
                lat(|l| l.max as f64),
                lat(|l| l.mean),
            );
            if !g.errors.is_empty() {
                let list: Vec<String> = g.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(s, "  {} errors: {}", g.rpc, list.join(", "));
            }
            if let Some(n) = g.relogins.filter(|&n| n > 0) {
                let _ = writeln!(s, "  {} sessions lost and logged in again: {n}", g.rpc);
            }
        }
        if let Some(l) = &self.login_bcrypt {
            let _ = writeln!(
                s,
                "bcrypt verify at cost {}: {:.1} ms (median, in-process); bound for {} server \
                 core(s): {:.2} logins/s; measured {:.2} logins/s = {:.2} of the bound",
                l.bcrypt_cost,
                l.bcrypt_verify_ms,
                l.server_cores,
                l.bcrypt_bound_rps,
                l.login_rps,
                l.ratio
            );
        }
        let _ = writeln!(
            s,
            "total: {} calls, {} ok, {} errors (error rate {:.4})",
            self.requests, self.ok, self.errors, self.error_rate
        );
        s
    }
}

/// `850µs`, `12.3ms`, `1.25s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(rpc: Rpc, oks: &[u64], errors: &[&'static str]) -> WorkerStats {
        let mut w = WorkerStats::new(rpc).unwrap();
        for &us in oks {
            w.record_ok(Duration::from_micros(us));
        }
        for e in errors {
            w.record_error(e);
        }
        w
    }

    fn info() -> RunInfo {
        RunInfo {
            addr: "http://127.0.0.1:50051".into(),
            mode: "mix",
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            connections: 1,
            client_cores: 1,
            client_threads: 1,
            run_id: "abc".into(),
            users: 4,
            started_at: 1_700_000_000,
        }
    }

    #[test]
    fn merges_workers_per_group() {
        let workers = vec![
            worker(Rpc::Validate, &[100, 200], &[]),
            worker(Rpc::Login, &[250_000], &["UNAVAILABLE"]),
            worker(Rpc::Validate, &[300, 400], &["INVALID_REPLY"]),
        ];
        let g = groups(
            &[(Rpc::Validate, 2), (Rpc::Login, 1)],
            workers,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].rpc, "validate");
        assert_eq!(g[0].ok, 4);
        assert_eq!(g[0].requests, 5);
        assert_eq!(g[0].rps, 2.0);
        assert_eq!(g[0].errors.get("INVALID_REPLY"), Some(&1));
        let lat = g[0].latency_us.as_ref().unwrap();
        assert!((199..=201).contains(&lat.p50), "{}", lat.p50);
        assert!((399..=401).contains(&lat.max));
        assert_eq!(g[1].ok, 1);
        assert_eq!(g[1].errors.get("UNAVAILABLE"), Some(&1));
        assert_eq!(g[1].error_rate, 0.5);
    }

    #[test]
    fn json_shape() {
        let g = groups(
            &[(Rpc::Validate, 16), (Rpc::Login, 4)],
            vec![
                worker(
                    Rpc::Validate,
                    &[100, 200, 300],
                    &["UNAVAILABLE", "UNAVAILABLE"],
                ),
                worker(Rpc::Login, &[], &[]),
            ],
            Duration::from_secs(10),
        )
        .unwrap();
        let login = LoginRatio::new(12, Duration::from_millis(250), 1, 3.0);
        let r = Report::new(info(), g, Some(login));
        let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        for key in [
            "addr",
            "rpc",
            "duration_s",
            "warmup_s",
            "connections",
            "client_cores",
            "groups",
            "bcrypt_verify_ms",
            "error_rate",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["rpc"], "mix");
        assert_eq!(v["bcrypt_verify_ms"], 250.0);
        assert_eq!(v["login_bcrypt"]["bcrypt_bound_rps"], 4.0);
        assert_eq!(v["login_bcrypt"]["ratio"], 0.75);
        let g0 = &v["groups"][0];
        assert_eq!(g0["rpc"], "validate");
        assert_eq!(g0["concurrency"], 16);
        assert_eq!(g0["requests"], 5);
        assert_eq!(g0["ok"], 3);
        assert_eq!(g0["errors"]["UNAVAILABLE"], 2);
        assert_eq!(g0["rps"], 0.3);
        for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(g0["latency_us"][p].is_number(), "missing {p}");
        }
        // A group without successes has no latencies.
        assert!(v["groups"][1]["latency_us"].is_null());
        assert_eq!(v["requests"], 5);
        assert_eq!(v["errors"], 2);

        let text = r.to_text();
        assert!(text.contains("validate"));
        assert!(text.contains("UNAVAILABLE=2"));
        assert!(text.contains("bcrypt verify at cost 12"));
    }

    #[test]
    fn error_rate_verdict() {
        let ok = Report::new(
            info(),
            groups(
                &[(Rpc::Health, 1)],
                vec![worker(Rpc::Health, &[10], &[])],
                Duration::from_secs(1),
            )
            .unwrap(),
            None,
        );
        assert!(ok.check_error_rate(Some(0.0)).is_ok());
        assert!(ok.check_error_rate(None).is_ok());
        let bad = Report::new(
            info(),
            groups(
                &[(Rpc::Health, 1)],
                vec![worker(Rpc::Health, &[10], &["INTERNAL"])],
                Duration::from_secs(1),
            )
            .unwrap(),
            None,
        );
        assert!(bad.check_error_rate(Some(0.0)).is_err());
        assert!(bad.check_error_rate(Some(0.5)).is_ok());
        assert!(bad.check_error_rate(None).is_ok());
    }

    #[test]
    fn formats_latencies() {
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(12_345.0), "12.35ms");
        assert_eq!(fmt_us(1_250_000.0), "1.25s");
    }
}
