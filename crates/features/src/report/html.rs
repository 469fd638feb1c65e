//! The report as one self-contained HTML page: inline CSS and SVG, no script, no external
//! resource.

use std::fmt::Write;

use super::{RunReport, charts};
use crate::FeaturesError;

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1000px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}\
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.significant{background:#fbe3e3}.moderate{background:#fdf3d8}.note{color:#666;font-size:13px}\
figure{margin:8px 0}svg{max-width:100%;height:auto}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn float(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

/// A table with a header row; cells are escaped, `n:`-prefixed cells are right-aligned.
fn table(
    out: &mut String,
    id: &str,
    head: &[&str],
    rows: impl Iterator<Item = (Option<String>, Vec<String>)>,
) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for (class, cells) in rows {
        match class {
            Some(class) => {
                let _ = write!(out, "<tr class=\"{}\">", escape(&class));
            }
            None => out.push_str("<tr>"),
        }
        for cell in cells {
            match cell.strip_prefix("n:") {
                Some(number) => {
                    let _ = write!(out, "<td class=\"n\">{}</td>", escape(number));
                }
                None => {
                    let _ = write!(out, "<td>{}</td>", escape(&cell));
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn figure(out: &mut String, id: &str, svg: &str, caption: &str) {
    let _ = write!(
        out,
        "<figure id=\"{id}\">{svg}<figcaption class=\"note\">{}</figcaption></figure>",
        escape(caption)
    );
}

/// The page.
pub fn render(r: &RunReport) -> Result<String, FeaturesError> {
    let mut out = String::new();
    let title = format!("batchscore run {}", r.run_id);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = write!(out, "<h1>{}</h1>", escape(&title));
    summary(&mut out, r);
    per_hour(&mut out, r)?;
    top_series(&mut out, r)?;
    scores(&mut out, r)?;
    timelines(&mut out, r)?;
    drift(&mut out, r);
    failures(&mut out, r);
    out.push_str("</body></html>\n");
    Ok(out)
}

fn summary(out: &mut String, r: &RunReport) {
    let t = &r.totals;
    let pct = if t.rows > 0 { 100.0 * t.anomalies as f64 / t.rows as f64 } else { 0.0 };
    out.push_str("<section id=\"summary\"><h2>Run</h2>");
    let rows = [
        ("output", r.url.clone()),
        (
            "time range",
            format!("{} to {}", r.from.as_deref().unwrap_or("–"), r.to.as_deref().unwrap_or("–")),
        ),
        ("rows scored", thousands(t.rows)),
        ("anomalies", format!("{} ({pct:.2} %)", thousands(t.anomalies))),
        (
            "series",
            format!(
                "{} scored, {} failed, {} without input",
                thousands(t.devices_scored),
                thousands(t.devices_failed),
                thousands(t.devices_no_input)
            ),
        ),
        ("duplicate rows", thousands(t.duplicate_rows)),
        ("units / parts", format!("{} / {}", t.units, t.parts)),
        ("shards", r.shard_count.to_string()),
        (
            "drift",
            r.drift
                .as_ref()
                .map(|d| d.summary.line())
                .unwrap_or_else(|| "not measured (run of an older build)".into()),
        ),
    ];
    table(
        out,
        "summary-table",
        &["", ""],
        rows.into_iter().map(|(k, v)| (None, vec![k.to_string(), v])),
    );
    let timings: Vec<String> = r.timings_ms.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
    if !timings.is_empty() {
        let _ = write!(out, "<p class=\"note\">Timings: {}</p>", escape(&timings.join(", ")));
    }
    out.push_str("</section>");
}

fn per_hour(out: &mut String, r: &RunReport) -> Result<(), FeaturesError> {
    out.push_str("<section id=\"per-hour\"><h2>Anomalies per hour</h2>");
    if r.per_hour.is_empty() {
        out.push_str("<p class=\"note\">No rows were scored.</p>");
    } else {
        figure(
            out,
            "per-hour-chart",
            &charts::per_hour(&r.per_hour)?,
            "Anomalous rows per hour (UTC), all series.",
        );
    }
    out.push_str("</section>");
    Ok(())
}

fn top_series(out: &mut String, r: &RunReport) -> Result<(), FeaturesError> {
    let _ = write!(
        out,
        "<section id=\"top-series\"><h2>Highest anomaly rates ({} series)</h2>",
        r.top_series.len()
    );
    if !r.top_series.is_empty() {
        figure(
            out,
            "top-series-chart",
            &charts::top_series(&r.top_series)?,
            "Share of each series' rows flagged as anomalies.",
        );
        let rows = r.top_series.iter().map(|s| {
            (
                None,
                vec![
                    s.key.clone(),
                    format!("n:{}", thousands(s.rows)),
                    format!("n:{}", thousands(s.anomalies)),
                    format!("n:{:.2} %", s.anomaly_rate * 100.0),
                    format!("n:{}", float(s.min_score, 4)),
                    format!("n:{}", float(s.mean_score, 4)),
                ],
            )
        });
        table(
            out,
            "top-series-table",
            &["model", "rows", "anomalies", "rate", "lowest score", "mean score"],
            rows,
        );
    }
    out.push_str("</section>");
    Ok(())
}

fn scores(out: &mut String, r: &RunReport) -> Result<(), FeaturesError> {
    out.push_str("<section id=\"scores\"><h2>Score distribution</h2>");
    match &r.scores {
        Some(h) => {
            let counted = if h.rows_counted < r.totals.rows {
                format!("an even sample of {} of {} rows", thousands(h.rows_counted), thousands(r.totals.rows))
            } else {
                format!("all {} rows", thousands(h.rows_counted))
            };
            figure(out, "scores-chart", &charts::scores(h)?, &format!("Scores of normal and anomalous rows, {counted}."));
        }
        None => out.push_str("<p class=\"note\">The parts carry no scores (the reference output profile writes predictions only).</p>"),
    }
    out.push_str("</section>");
    Ok(())
}

fn timelines(out: &mut String, r: &RunReport) -> Result<(), FeaturesError> {
    let _ = write!(
        out,
        "<section id=\"timelines\"><h2>Timelines of the {} worst series</h2>",
        r.timelines.len()
    );
    for (i, t) in r.timelines.iter().enumerate() {
        let how = if t.bucketed { "lowest score per time bucket" } else { "every row" };
        let caption = format!(
            "{}: {} rows, {} anomalies (red); line: {how}.",
            t.key,
            thousands(t.rows),
            thousands(t.anomalies)
        );
        figure(out, &format!("timeline-{i}"), &charts::timeline(t)?, &caption);
    }
    out.push_str("</section>");
    Ok(())
}

fn drift(out: &mut String, r: &RunReport) {
    out.push_str("<section id=\"drift\"><h2>Drift against training</h2>");
    match &r.drift {
        None => out.push_str("<p class=\"note\">This run has no drift table.</p>"),
        Some(d) => {
            let s = &d.summary;
            let _ = write!(
                out,
                "<p>{}. Features by PSI band: {} stable (&lt; 0.1), {} moderate (0.1–0.25), {} significant (&gt; 0.25). \
                 The {} rows of the highest PSI of {} in <code>{}</code>; figures come from the decile bins stored at training \
                 (<code>psi_decile</code>, <code>wasserstein_norm_q</code>).</p>",
                escape(&s.line()),
                s.features_stable,
                s.features_moderate,
                s.features_significant,
                d.rows.len(),
                d.rows_total,
                escape(&s.table)
            );
            let rows = d.rows.iter().map(|row| {
                let class = matches!(row.status.as_str(), "significant" | "moderate")
                    .then(|| row.status.clone());
                (
                    class,
                    vec![
                        row.key.clone(),
                        row.feature.clone().unwrap_or_default(),
                        row.status.clone(),
                        format!("n:{}", thousands(row.rows)),
                        format!("n:{}", float(row.psi, 3)),
                        format!("n:{}", float(row.wasserstein_norm, 3)),
                        format!("n:{}", float(row.mean_shift_sd, 2)),
                    ],
                )
            });
            table(
                out,
                "drift-table",
                &[
                    "model",
                    "feature",
                    "status",
                    "rows",
                    "PSI",
                    "Wasserstein / sd",
                    "mean shift (sd)",
                ],
                rows,
            );
        }
    }
    out.push_str("</section>");
}

fn failures(out: &mut String, r: &RunReport) {
    let _ = write!(out, "<section id=\"failures\"><h2>Failed series ({})</h2>", r.failures_total);
    if r.failures.is_empty() {
        out.push_str("<p class=\"note\">No series failed.</p>");
    } else {
        let rows = r.failures.iter().map(|f| {
            (
                None,
                vec![
                    f.key.clone(),
                    format!("n:{}", thousands(f.rows)),
                    f.stage.clone().unwrap_or_default(),
                    f.reason.clone().unwrap_or_default(),
                ],
            )
        });
        table(out, "failures-table", &["model", "rows", "stage", "reason"], rows);
        if r.failures_total > r.failures.len() as u64 {
            let _ = write!(
                out,
                "<p class=\"note\">The first {} of {}; all are in the run's failures tables.</p>",
                r.failures.len(),
                r.failures_total
            );
        }
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
