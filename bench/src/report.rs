//! The results: one [`Row`] per comparison, printed as a markdown table and written as
//! `report.json` (one object per row).

use serde_json::{Value, json};

use crate::stats::Summary;

/// One comparison: ours against one baseline.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured, e.g. "1. launch to first response, lighttpd".
    pub name: String,
    /// Unit of both medians, e.g. "ms".
    pub unit: String,
    /// Our way.
    pub ours: Summary,
    /// The alternative's name, e.g. "(a) self-bind + poll connect every 10 ms".
    pub baseline_name: String,
    /// The alternative.
    pub baseline: Summary,
    /// Extra facts for the reader (failures, added ms, how it was run).
    pub note: String,
}

impl Row {
    /// ours / baseline (NaN when the baseline is 0 or missing).
    ///
    /// ```
    /// use sd_launch_bench::{Row, stats::Summary};
    /// let row = Row { name: "x".into(), unit: "ms".into(), ours: Summary::of(&[1.0]),
    ///     baseline_name: "y".into(), baseline: Summary::of(&[4.0]), note: String::new() };
    /// assert_eq!(row.ratio(), 0.25);
    /// ```
    pub fn ratio(&self) -> f64 {
        if self.baseline.median == 0.0 {
            f64::NAN
        } else {
            self.ours.median / self.baseline.median
        }
    }

    /// The `report.json` object: `{"name", "ours": {"median", "unit", ...}, "baseline":
    /// {"name", "median", ...}, "ratio", "note"}` (NaN becomes `null`).
    ///
    /// ```
    /// use sd_launch_bench::{Row, stats::Summary};
    /// let row = Row { name: "x".into(), unit: "ms".into(), ours: Summary::of(&[1.0]),
    ///     baseline_name: "y".into(), baseline: Summary::of(&[0.0]), note: String::new() };
    /// let json = row.to_json();
    /// assert_eq!(json["ours"]["unit"], "ms");
    /// assert!(json["ratio"].is_null()); // baseline median 0
    /// ```
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "ours": {
                "median": num(self.ours.median),
                "unit": self.unit,
                "p10": num(self.ours.p10),
                "p90": num(self.ours.p90),
                "n": self.ours.n,
            },
            "baseline": {
                "name": self.baseline_name,
                "median": num(self.baseline.median),
                "p10": num(self.baseline.p10),
                "p90": num(self.baseline.p90),
                "n": self.baseline.n,
            },
            "ratio": num(self.ratio()),
            "note": self.note,
        })
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Format a value with about 3 significant digits.
///
/// ```
/// assert_eq!(sd_launch_bench::report::fmt(12.345), "12.3");
/// assert_eq!(sd_launch_bench::report::fmt(f64::NAN), "-");
/// ```
pub fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(s: &Summary) -> String {
    format!("{} [{}–{}]", fmt(s.median), fmt(s.p10), fmt(s.p90))
}

/// The markdown table of `rows`.
///
/// ```
/// assert!(sd_launch_bench::report::markdown(&[]).starts_with("| row |"));
/// ```
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| row | unit | ours median [p10–p90] | baseline | baseline median [p10–p90] | ratio | notes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.unit,
            cell(&r.ours),
            r.baseline_name,
            cell(&r.baseline),
            fmt(r.ratio()),
            r.note.replace('|', "/"),
        ));
    }
    out
}

/// The whole `report.json` document: an array of row objects.
///
/// ```
/// assert_eq!(sd_launch_bench::report::json(&[]).trim(), "[]");
/// ```
pub fn json(rows: &[Row]) -> String {
    let all: Vec<Value> = rows.iter().map(Row::to_json).collect();
    serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into()) + "\n"
}
