//! object_store's local backend writes a file as a staging file, `NAME#DIGITS`, then renames
//! or links it into place. A process killed in between leaves the staging file behind, and a
//! completed run sweeps those; a concurrent attempt may then find its own staging file gone.

use crate::IoError;

/// object_store's local staging names: `NAME#DIGITS` (it refuses such names for objects).
fn is_staging_name(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((stem, suffix)) => {
            !stem.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Removes the staging files below `dir`; returns how many. A directory or file that vanishes
/// meanwhile is not an error.
pub(crate) fn remove_under(dir: std::path::PathBuf) -> Result<usize, std::io::Error> {
    let mut removed = 0;
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(removed)
}

/// Checks that files can be made in the directory a local write of `target` would make its
/// staging file in (or the nearest one that exists). object_store's local backend retries a
/// create that fails with "not found" after making the parent directories, forever when the
/// directory exists but makes no files (procfs and sysfs answer so: `--to /proc/version` hung).
pub(crate) fn probe_dir_of(target: &std::path::Path) -> Result<(), std::io::Error> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(mut dir) = target.parent() else { return Ok(()) };
    while !dir.exists() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return Ok(()),
        }
    }
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".batchscore-probe-{}-{n}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot make files in {}: {e}", dir.display()),
        )),
    }
}

/// Whether a local write failed because a file it had made is gone: object_store reports a
/// staging file removed before its link into place as "not found", or as a failed rename whose
/// cause is the operating system's "no such file" (seen when a completed attempt swept the
/// staging file of a concurrent one).
pub(crate) fn vanished(error: &IoError) -> bool {
    match error {
        IoError::NotFound { .. } => true,
        IoError::Storage { source, .. } => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
            while let Some(e) = cause {
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                {
                    return true;
                }
                cause = e.source();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_name_hash_digits() {
        assert!(is_staging_name("part-00000.parquet#1") && is_staging_name("x#12"));
        assert!(!is_staging_name("part#a") && !is_staging_name("#1") && !is_staging_name("p#"));
    }

    /// Regression: a create-only write whose staging file a concurrent attempt swept failed
    /// with "Unable to rename file: No such file or directory" instead of writing again (two
    /// attempts of one run on local disk, one completing while the other wrote a receipt).
    #[test]
    fn a_swept_staging_file_is_written_again() {
        #[derive(Debug)]
        struct Rename(std::io::Error);
        impl std::fmt::Display for Rename {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "Unable to rename file: {}", self.0)
            }
        }
        impl std::error::Error for Rename {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let failed = |kind| {
            let source = Rename(std::io::Error::new(kind, "staging file"));
            let source =
                object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) };
            IoError::storage("/tmp/x/_receipts/part-00005.json", source)
        };
        assert!(vanished(&failed(std::io::ErrorKind::NotFound)));
        assert!(!vanished(&failed(std::io::ErrorKind::PermissionDenied)));
        assert!(vanished(&IoError::NotFound { url: "x".into() }));
    }

    /// Regression: `report --to /proc/version` hung (object_store's local backend retried the
    /// staging file's create forever); a directory that makes no files is now an error.
    #[test]
    fn a_directory_that_makes_no_files_is_refused() {
        let err = probe_dir_of(std::path::Path::new("/proc/version")).unwrap_err();
        assert!(err.to_string().contains("cannot make files in /proc"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        probe_dir_of(&dir.path().join("a/b/c.parquet")).unwrap();
        assert!(!dir.path().join("a").exists(), "the probe makes no directories");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nor leaves files");
    }
}
