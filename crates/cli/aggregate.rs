//! `batchscore aggregate`: readings to interval aggregates, one committed dataset per run.

use anyhow::Result;
use chrono::Utc;

use batchscore_io::Storage;
use batchscore_scheduler::RunReport;

use crate::cli::{AggregateArgs, SummaryFormat};
use crate::config::ConfigFile;
use crate::printer::{Printer, thousands};
use crate::progress::Reporter;
use crate::settings;

pub fn aggregate(
    args: &AggregateArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let spec = settings::aggregate_spec(args, config, storage, Utc::now())?;
    let reporter = Reporter::new(crate::commands::interactive(printer), "aggregate");
    let report = batchscore_scheduler::transform(&spec, &reporter)?;
    match args.summary {
        SummaryFormat::Json => printer.out(&serde_json::to_string_pretty(&report.manifest)?),
        SummaryFormat::Text => printer.out(&render_summary(&report, spec.threads)),
    }
    Ok(0)
}

fn render_summary(r: &RunReport, threads: usize) -> String {
    let t = &r.manifest.totals;
    let readings: u64 = r.manifest.devices.iter().map(|d| d.rows).sum();
    let secs = r.elapsed.as_secs_f64();
    let state = if r.complete {
        "complete: _SUCCESS written"
    } else {
        "shard committed; waiting for other shards"
    };
    let what =
        if r.manifest.devices.iter().any(|d| d.sensor.is_some()) { "series  " } else { "devices " };
    let mut lines = vec![
        format!("batchscore aggregate {}  [{}]  ({state})", r.run_id, r.manifest.scope),
        format!("  output    {}/  (read it with --input {}/)", r.output_url, r.output_url),
        format!("  {what}  {}", thousands(t.devices_scored)),
        format!("  rows      {} readings into {} windows", thousands(readings), thousands(t.rows)),
        format!(
            "  units     {} of {} in the plan ({} already committed by an earlier attempt), {} part files",
            t.units, r.plan_units, r.units_skipped, t.parts
        ),
        format!(
            "  time      {secs:.2} s, {} windows written now on {threads} threads",
            thousands(r.rows_scored_now),
        ),
    ];
    if t.duplicate_rows > 0 {
        lines.insert(
            4,
            format!(
                "  note      {} readings repeat the (device, sensor, timestamp) of another",
                thousands(t.duplicate_rows)
            ),
        );
    }
    lines.extend(crate::commands::sensors_warning(r));
    lines.join("\n")
}
