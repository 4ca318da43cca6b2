//! `bluepoll compare PEER.json OURS.json`: puts a fio run and a bluepoll run of the same job side
//! by side, with ratios (ours / peer) for IOPS and completion-latency percentiles.
//!
//! Both files are fio-shaped JSON. With several jobs, IOPS add up and each percentile is the
//! worst job's, so a tail is never hidden by averaging.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The figures compared for one direction of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// IOPS, summed over the jobs.
    pub iops: f64,
    /// Median completion latency, ns (the worst job's).
    pub p50: f64,
    /// 99th-percentile completion latency, ns (the worst job's).
    pub p99: f64,
    /// 99.9th-percentile completion latency, ns (the worst job's).
    pub p999: f64,
}

/// Reads the figures of `dir` ("read" or "write") from fio-shaped JSON; None if no I/O was done.
pub fn figures(doc: &Value, dir: &str) -> Option<Figures> {
    let jobs = doc.get("jobs")?.as_array()?;
    let mut f = Figures::default();
    let mut any = false;
    for job in jobs {
        let d = job.get(dir)?;
        if d.get("total_ios").and_then(Value::as_u64).unwrap_or(0) == 0 {
            continue;
        }
        any = true;
        f.iops += d.get("iops").and_then(Value::as_f64).unwrap_or(0.0);
        let pct = |key: &str| {
            d.get("clat_ns")
                .and_then(|c| c.get("percentile"))
                .and_then(|p| p.get(key))
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        f.p50 = f.p50.max(pct("50.000000"));
        f.p99 = f.p99.max(pct("99.000000"));
        f.p999 = f.p999.max(pct("99.900000"));
    }
    any.then_some(f)
}

fn load(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{path}'"))?;
    // fio may print warnings before the JSON document; start at the first '{'.
    let start = text
        .find('{')
        .with_context(|| format!("'{path}' holds no JSON object"))?;
    serde_json::from_str(&text[start..]).with_context(|| format!("'{path}' is not fio JSON"))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The comparison table as text.
pub fn table(peer_label: &str, peer: &Value, ours_label: &str, ours: &Value) -> Result<String> {
    let mut out = format!(
        "{:<22}{:>18}{:>18}{:>10}\n",
        "metric", peer_label, ours_label, "ratio"
    );
    let mut rows = 0;
    for dir in ["read", "write"] {
        let (Some(a), Some(b)) = (figures(peer, dir), figures(ours, dir)) else {
            continue;
        };
        let ratio = |x: f64, y: f64| {
            if x > 0.0 {
                format!("{:.2}", y / x)
            } else {
                "-".into()
            }
        };
        out.push_str(&format!(
            "{:<22}{:>18}{:>18}{:>10}\n",
            format!("{dir} IOPS"),
            bluepoll_base::units::format_count(a.iops),
            bluepoll_base::units::format_count(b.iops),
            ratio(a.iops, b.iops)
        ));
        for (name, x, y) in [
            ("p50", a.p50, b.p50),
            ("p99", a.p99, b.p99),
            ("p99.9", a.p999, b.p999),
        ] {
            out.push_str(&format!(
                "{:<22}{:>18}{:>18}{:>10}\n",
                format!("{dir} clat {name}"),
                fmt_ns(x),
                fmt_ns(y),
                ratio(x, y)
            ));
        }
        rows += 1;
    }
    if rows == 0 {
        bail!("the two runs have no direction with I/O in common");
    }
    out.push_str(
        "ratio = second / first; above 1 is better for IOPS, below 1 is better for latency\n",
    );
    Ok(out)
}

/// Entry point of `bluepoll compare`.
pub fn run(args: &[String]) -> Result<()> {
    let mut labels = ("fio".to_string(), "bluepoll".to_string());
    let mut files = Vec::new();
    for arg in args {
        if let Some(v) = arg.strip_prefix("--peer-label=") {
            labels.0 = v.to_string();
        } else if let Some(v) = arg.strip_prefix("--label=") {
            labels.1 = v.to_string();
        } else if arg.starts_with("--") {
            bail!("unknown option '{arg}' (compare takes --peer-label=, --label=)");
        } else {
            files.push(arg.clone());
        }
    }
    let [peer, ours] = files.as_slice() else {
        bail!("usage: bluepoll compare PEER.json OURS.json [--peer-label=NAME] [--label=NAME]");
    };
    print!(
        "{}",
        table(&labels.0, &load(peer)?, &labels.1, &load(ours)?)?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run_json(iops: f64, p99: f64) -> Value {
        json!({"jobs": [{"read": {"total_ios": 10, "iops": iops,
            "clat_ns": {"percentile": {"50.000000": 100, "99.000000": p99, "99.900000": 900}}},
            "write": {"total_ios": 0, "iops": 0.0}}]})
    }

    #[test]
    fn ratios_are_ours_over_peer() {
        let t = table(
            "fio",
            &run_json(100.0, 400.0),
            "bluepoll",
            &run_json(250.0, 200.0),
        )
        .unwrap();
        assert!(t.contains("read IOPS"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("read IOPS") && l.trim_end().ends_with("2.50")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("read clat p99 ") && l.trim_end().ends_with("0.50")),
            "{t}"
        );
        assert!(!t.contains("write IOPS"));
    }

    #[test]
    fn disjoint_runs_are_an_error() {
        let w = json!({"jobs": [{"read": {"total_ios": 0}, "write": {"total_ios": 0}}]});
        assert!(table("a", &w, "b", &w).is_err());
    }
}
