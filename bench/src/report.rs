//! Collecting samples and printing the table.

use std::collections::BTreeMap;

use crate::median;

/// One contender's samples on one workload.
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
}

/// Every figure of a run: workload -> contender -> samples.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: BTreeMap<String, BTreeMap<String, Series>>,
}

impl Report {
    pub fn add(
        &mut self,
        workload: &str,
        contender: &str,
        unit: &'static str,
        higher_is_better: bool,
        v: f64,
    ) {
        let s = self
            .rows
            .entry(workload.to_string())
            .or_default()
            .entry(contender.to_string())
            .or_insert_with(|| Series {
                unit,
                higher_is_better,
                samples: Vec::new(),
            });
        s.samples.push(v);
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

    pub fn print(&self) {
        for (workload, contenders) in &self.rows {
            println!("\n### {workload}\n");
            println!("| contender | median | min | max | unit | aiopg (same runtime) / this |");
            println!("|---|---:|---:|---:|---|---:|");
            for (name, s) in contenders {
                let (m, lo, hi) = Self::summary(s);
                let ratio = self
                    .ratio(workload, name)
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_default();
                println!(
                    "| {name} | {m:.0} | {lo:.0} | {hi:.0} | {} | {ratio} |",
                    s.unit
                );
            }
        }
    }

    /// aiopg's median on the contender's runtime divided by the contender's (inverted where
    /// lower is better), so that above 1.0 always means aiopg is ahead.
    pub fn ratio(&self, workload: &str, contender: &str) -> Option<f64> {
        let row = self.rows.get(workload)?;
        if contender.starts_with("aiopg") {
            return None;
        }
        let runtime = contender.rsplit('/').next().unwrap_or("tokio");
        let runtime = if ["tokio", "async-std", "smol"].contains(&runtime) {
            runtime
        } else {
            "tokio"
        };
        let ours = row.get(&format!("aiopg/{runtime}"))?;
        let theirs = row.get(contender)?;
        let (a, _, _) = Self::summary(ours);
        let (b, _, _) = Self::summary(theirs);
        Some(if ours.higher_is_better { a / b } else { b / a })
    }

    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (wi, (workload, contenders)) in self.rows.iter().enumerate() {
            if wi > 0 {
                out.push(',');
            }
            out.push_str(&format!("\n  \"{workload}\": {{"));
            for (ci, (name, s)) in contenders.iter().enumerate() {
                if ci > 0 {
                    out.push(',');
                }
                let (m, lo, hi) = Self::summary(s);
                let ratio = self
                    .ratio(workload, name)
                    .map(|r| format!("{r:.4}"))
                    .unwrap_or("null".into());
                out.push_str(&format!(
                    "\n    \"{name}\": {{\"unit\": \"{}\", \"median\": {m:.3}, \"min\": {lo:.3}, \"max\": {hi:.3}, \"samples\": {}, \"aiopg_ratio\": {ratio}}}",
                    s.unit,
                    s.samples.len()
                ));
            }
            out.push_str("\n  }");
        }
        out.push_str("\n}\n");
        out
    }
}
