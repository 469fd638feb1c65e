//! `batchscore report`: the HTML or JSON report of a complete run.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use batchscore_features::{RunReport, report::html};
use batchscore_io::Storage;

use crate::cli::{ReportArgs, ReportFormat};
use crate::config::ConfigFile;
use crate::printer::Printer;
use crate::runs::output_location;
use crate::usage::UsageError;

/// A `--to` that names a local directory, or ends in `/`, names no file to write.
fn check_target(to: &str) -> Result<(), UsageError> {
    if to.trim().is_empty() {
        return Err(UsageError("--to is empty: name the file to write, or `-` for stdout".into()));
    }
    let local = match to.strip_prefix("file://") {
        Some(path) => Some(path),
        None if !to.contains("://") => Some(to),
        None => None,
    };
    if to.ends_with('/') || local.is_some_and(|p| std::path::Path::new(p).is_dir()) {
        return Err(UsageError(format!(
            "--to {to} is a directory: name the file to write, e.g. {}/report.html",
            to.trim_end_matches('/')
        )));
    }
    Ok(())
}

pub fn report(
    args: &ReportArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let started = Instant::now();
    let output = output_location(args.output.as_deref(), config, storage)?;
    let (run_dir, manifest) = batchscore_scheduler::completed_run(&output, &args.run_id)?;
    // Checked before the run is read: a wrong --to is a usage error, not a failure after minutes.
    if let Some(to) = args.to.as_deref() {
        check_target(to)?;
    }
    let report = RunReport::build(&output, &run_dir, &manifest)?;
    let (text, name) = match args.format {
        ReportFormat::Html => (html::render(&report)?, "report.html"),
        ReportFormat::Json => (serde_json::to_string_pretty(&report)? + "\n", "report.json"),
    };
    let bytes = text.into_bytes();
    let size = bytes.len();
    let to = match args.to.as_deref() {
        Some("-") => {
            std::io::stdout()
                .lock()
                .write_all(&bytes)
                .context("cannot write the report to stdout")?;
            return Ok(0);
        }
        Some(url) => {
            // A file or URL: its directory is the location, its name the object.
            let (dir, file) = url.rsplit_once('/').unwrap_or((".", url));
            let dir = if dir.is_empty() { "/" } else { dir };
            let location = storage.open(dir)?;
            location.put(file, bytes.into())?;
            location.url_of(file)
        }
        None => {
            // Beside the run's other tables, out of the way of readers of its folder. Reports
            // can be rebuilt: a later one replaces the earlier.
            let dir = batchscore_scheduler::tables_dir(&output, &manifest.run_id)?;
            dir.put(name, bytes.into())?;
            dir.url_of(name)
        }
    };
    printer.out(&format!(
        "report of run {} ({} rows, {} series) written to {to}: {:.1} KB in {:.2} s",
        report.run_id,
        crate::printer::thousands(report.totals.rows),
        crate::printer::thousands(report.totals.devices_scored + report.totals.devices_failed),
        size as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    ));
    Ok(0)
}
