//! Progress for humans: an indicatif bar on a terminal, plain log lines otherwise.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batchscore_scheduler::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Reports units, rows/s and devices through one bar or through `tracing` lines.
#[derive(Debug)]
pub struct Reporter {
    bar: Option<ProgressBar>,
    what: &'static str,
    started: Mutex<Instant>,
    units_total: AtomicU64,
    units_done: AtomicU64,
    rows: AtomicU64,
    devices: AtomicU64,
}

impl Reporter {
    /// A bar when `interactive`, log lines otherwise; `what` names the job in messages.
    pub fn new(interactive: bool, what: &'static str) -> Self {
        let bar = interactive.then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} units, {msg} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            what,
            started: Mutex::new(Instant::now()),
            units_total: AtomicU64::new(0),
            units_done: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            devices: AtomicU64::new(0),
        }
    }

    fn rate(&self, rows: u64) -> f64 {
        let elapsed = self.started.lock().map(|s| s.elapsed()).unwrap_or_default().as_secs_f64();
        if elapsed > 0.0 { rows as f64 / elapsed } else { 0.0 }
    }
}

impl Progress for Reporter {
    fn start(&self, units: usize, rows: u64) {
        if let Ok(mut s) = self.started.lock() {
            *s = Instant::now();
        }
        self.units_total.store(units as u64, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.set_length(units as u64),
            None => tracing::info!(job = self.what, units, planned_rows = rows, "started"),
        }
    }

    fn unit_done(&self, rows: u64, devices: usize, skipped: bool) {
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let devices = self.devices.fetch_add(devices as u64, Ordering::Relaxed) + devices as u64;
        let done = self.units_done.fetch_add(1, Ordering::Relaxed) + 1;
        let rate = self.rate(rows);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{devices} devices, {rows} rows, {rate:.0} rows/s"));
            }
            None => tracing::info!(
                job = self.what,
                units_done = done,
                units = self.units_total.load(Ordering::Relaxed),
                devices,
                rows,
                rows_per_s = rate.round(),
                skipped,
                "unit done"
            ),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
