//! Collecting samples and printing the tables.

use std::collections::BTreeMap;

/// One child's result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub value: f64,
    pub rss_mb: f64,
}

impl Sample {
    /// Parses a child's `RESULT ops=.. secs=.. rss_kb=..` line into a rate.
    pub fn parse(stdout: &str) -> Option<Sample> {
        let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
        let get = |k: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}="))?.parse().ok())
        };
        let ops = get("ops")?;
        let secs = get("secs")?;
        // Memory is reported as growth over the resident set once connected, when the child
        // says what that was.
        let start_kb = stdout
            .lines()
            .find(|l| l.starts_with("START "))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("rss_kb=")?.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Some(Sample {
            value: if secs > 0.0 { ops / secs } else { 0.0 },
            rss_mb: (get("rss_kb")? - start_kb) / 1024.0,
        })
    }

    pub fn value(v: f64) -> Sample {
        Sample {
            value: v,
            rss_mb: 0.0,
        }
    }

    pub fn rss(s: &Sample) -> Sample {
        Sample {
            value: s.rss_mb,
            rss_mb: s.rss_mb,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Series {
    unit: &'static str,
    samples: Vec<f64>,
}

/// Every figure of a run: (workload, layout) -> contender -> samples.
#[derive(Debug, Default)]
pub struct Report {
    rows: BTreeMap<(String, String), BTreeMap<String, Series>>,
    lower_better: Vec<String>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    pub fn add(
        &mut self,
        workload: &str,
        layout: &str,
        contender: &str,
        s: Sample,
        unit: &'static str,
    ) {
        let series = self
            .rows
            .entry((workload.to_string(), layout.to_string()))
            .or_default()
            .entry(contender.to_string())
            .or_insert_with(|| Series {
                unit,
                samples: Vec::new(),
            });
        series.samples.push(s.value);
    }

    /// Marks a workload whose figures are better when lower (instructions, memory).
    pub fn lower_is_better(&mut self, workload: &str) {
        if !self.lower_better.iter().any(|w| w == workload) {
            self.lower_better.push(workload.to_string());
        }
    }

    fn is_lower_better(&self, workload: &str) -> bool {
        workload.contains("RSS") || self.lower_better.iter().any(|w| w == workload)
    }

    fn summary(s: &Series) -> (f64, f64, f64) {
        let mut v = s.samples.clone();
        let m = median(&mut v);
        (
            m,
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
        )
    }

    /// aiopg's median on the same runtime (tokio for runtime-less contenders) against the
    /// contender's, oriented so that above 1.0 means aiopg is ahead.
    fn ratio(&self, key: &(String, String), contender: &str) -> Option<f64> {
        if contender.starts_with("aiopg") {
            return None;
        }
        let row = self.rows.get(key)?;
        let rt = contender
            .rsplit('/')
            .next()
            .filter(|r| ["tokio", "async-std", "smol"].contains(r));
        // pgbench's pipeline mode sends one Sync per batch: read it against aiopg's explicit
        // pipeline, which does the same.
        let ours = if contender.starts_with("pgbench pipeline") {
            row.get("aiopg-pipeline/tokio")?
        } else if contender.contains("-tasks/") {
            // Queries from many tasks sharing one connection: against aiopg doing the same.
            row.get(&format!("aiopg-tasks/{}", rt.unwrap_or("tokio")))?
        } else {
            row.get(&format!("aiopg/{}", rt.unwrap_or("tokio")))?
        };
        let (a, _, _) = Self::summary(ours);
        let (b, _, _) = Self::summary(row.get(contender)?);
        Some(if self.is_lower_better(&key.0) {
            b / a
        } else {
            a / b
        })
    }

    pub fn print(&self) {
        for (key, contenders) in &self.rows {
            println!("\n### {} ({})\n", key.0, key.1);
            println!("| contender | median | min | max | unit | aiopg ratio |");
            println!("|---|---:|---:|---:|---|---:|");
            for (name, s) in contenders {
                let (m, lo, hi) = Self::summary(s);
                let ratio = self
                    .ratio(key, name)
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_default();
                println!(
                    "| {name} | {m:.0} | {lo:.0} | {hi:.0} | {} | {ratio} |",
                    s.unit
                );
            }
        }
        println!("\naiopg ratio: aiopg on the same runtime (tokio for runtime-less contenders) against that contender; above 1.00x means aiopg is ahead.");
    }

    pub fn to_json(&self) -> String {
        let mut out = String::from("[");
        let mut first = true;
        for (key, contenders) in &self.rows {
            for (name, s) in contenders {
                let (m, lo, hi) = Self::summary(s);
                let ratio = self
                    .ratio(key, name)
                    .map(|r| format!("{r:.4}"))
                    .unwrap_or("null".into());
                out.push_str(if first { "\n  " } else { ",\n  " });
                first = false;
                out.push_str(&format!(
                    "{{\"workload\": \"{}\", \"layout\": \"{}\", \"contender\": \"{name}\", \"unit\": \"{}\", \"median\": {m:.3}, \"min\": {lo:.3}, \"max\": {hi:.3}, \"samples\": {}, \"aiopg_ratio\": {ratio}}}",
                    key.0, key.1, s.unit, s.samples.len()
                ));
            }
        }
        out.push_str("\n]\n");
        out
    }
}
