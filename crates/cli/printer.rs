//! The one place the binary writes for humans: results to stdout, notes to stderr.

use std::io::Write;

/// Writes command results and notes; `quiet` silences notes, never results.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub quiet: bool,
}

impl Printer {
    /// A result line (summary, listing): always on stdout.
    pub fn out(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth failing the job for.
        let _ = writeln!(stdout, "{text}");
    }

    /// A problem (a failed file, a failed device): on stderr even when quiet, since quiet
    /// silences progress, not the reasons for a nonzero exit.
    pub fn problem(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// A note for the person at the terminal (stderr), unless quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where a table a manifest records is, for people: manifests record the run's tables
/// relative to the output (`_runs/RUN_ID/drift.parquet`), runs of earlier builds relative to
/// the run's folder; `run_url` is the run's folder.
pub fn table_url(run_url: &str, table: &str) -> String {
    let run_url = run_url.trim_end_matches('/');
    match run_url.rsplit_once('/') {
        Some((output, _)) if table.starts_with("_runs/") => format!("{output}/{table}"),
        _ => format!("{run_url}/{table}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }

    #[test]
    fn tables_beside_the_run_or_in_it() {
        let run = "az://c/out/run-1/";
        assert_eq!(
            super::table_url(run, "_runs/run-1/drift.parquet"),
            "az://c/out/_runs/run-1/drift.parquet"
        );
        assert_eq!(super::table_url(run, "drift.parquet"), "az://c/out/run-1/drift.parquet");
    }
}
