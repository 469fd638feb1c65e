//! The TOML config file: typed, unknown keys rejected, every key optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use batchscore_scheduler::{InputColumns, OutputFormat, OutputProfile};
use serde::Deserialize;

use crate::usage::UsageError;

/// A parsed config file. See `configs/sample.toml` for every key, documented.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub paths: PathsSection,
    pub columns: Option<InputColumns>,
    pub select: SelectSection,
    pub run: RunSection,
    pub train: TrainSection,
    pub sample: Option<SampleSection>,
    pub storage: StorageSection,
    pub serve: ServeSection,
    /// `batchscore aggregate`: windows, statistics, pivot (see `configs/sample.toml`).
    pub aggregate: Option<batchscore_features::AggregateConfig>,
    /// Directory of the file, for relative paths.
    #[serde(skip)]
    pub base: Option<PathBuf>,
    /// The file this config was read from (`None`: no file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsSection {
    pub input: Option<String>,
    pub registry: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectSection {
    pub devices: Option<String>,
    /// Long layout: sensor names, e.g. "1,2,5".
    pub sensors: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub last: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub threads: Option<usize>,
    pub max_failed: Option<String>,
    pub shard_count: Option<u32>,
    pub shard_index_env: Option<String>,
    pub min_part_rows: Option<u64>,
    pub max_part_rows: Option<u64>,
    /// `scored` or `reference`.
    pub profile: Option<OutputProfile>,
    /// `parquet` or `csv`.
    pub output_format: Option<OutputFormat>,
    /// Apply `[aggregate]` to each device's readings before scoring.
    pub aggregate: Option<bool>,
    /// Measure drift (default true).
    pub drift: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub threads: Option<usize>,
    /// `iforest` or `pca`.
    pub detector: Option<String>,
    /// PCA components: a count or a variance share.
    pub components: Option<String>,
    /// PCA: standardise features first.
    pub standardize: Option<bool>,
    pub n_estimators: Option<usize>,
    pub max_samples: Option<String>,
    pub max_features: Option<String>,
    pub bootstrap: Option<bool>,
    pub contamination: Option<String>,
    pub seed: Option<u64>,
    pub features: Option<Vec<String>>,
    pub unit_rows: Option<u64>,
}

/// `batchscore serve`: the same keys as its flags, without the leading dashes.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub api_keys_file: Option<String>,
    pub entra_tenant: Option<String>,
    pub jwt_jwks_url: Option<String>,
    pub jwt_issuers: Option<Vec<String>>,
    pub jwt_audiences: Option<Vec<String>>,
    pub model_cache: Option<String>,
    pub registry_refresh: Option<String>,
    pub max_body: Option<String>,
    pub max_rows: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub queue_wait: Option<String>,
    pub request_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub run_workers: Option<usize>,
    pub max_queued_runs: Option<usize>,
    pub poll_after: Option<u64>,
}

/// Remote storage: object_store options (credentials, endpoints), retries, limits.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// object_store option keys to values, e.g. `azure_storage_account_name = "acct"`.
    pub options: BTreeMap<String, toml::Value>,
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<String>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub max_concurrent_requests: Option<usize>,
    pub multipart_part_size: Option<String>,
}

/// Option values may be credentials: show the keys only.
impl std::fmt::Debug for StorageSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSection")
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("multipart_part_size", &self.multipart_part_size)
            .finish()
    }
}

/// The embedded demo: generate the sample and train its models on first use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    /// Generate `dir` and train `paths.registry` when they are missing.
    pub generate_if_missing: bool,
    /// Where the sample lives: readings in DIR/readings/, labels in DIR/labels.parquet.
    pub dir: String,
    pub devices: u32,
    pub sensors: usize,
    pub rows_per_device: usize,
    pub seed: u64,
}

/// The name a config file is discovered by, as uv finds `uv.toml` and ruff `ruff.toml`.
pub const DISCOVERED_NAME: &str = "batchscore.toml";

impl ConfigFile {
    /// The config of this invocation: the file named by `--config` (or `BATCHSCORE_CONFIG`),
    /// else the first `batchscore.toml` in `cwd` or one of its parents, else none.
    pub fn resolve(named: Option<&str>, discover: bool, cwd: &Path) -> Result<Self, UsageError> {
        if let Some(path) = named {
            return Self::load(path);
        }
        if discover {
            for dir in cwd.ancestors() {
                let candidate = dir.join(DISCOVERED_NAME);
                if candidate.is_file() {
                    return Self::load(&candidate.display().to_string());
                }
            }
        }
        Ok(Self::default())
    }

    /// Reads and parses a config file.
    pub fn load(path: &str) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read config file {path}: {e}")))?;
        let mut config: ConfigFile =
            toml::from_str(&text).map_err(|e| UsageError(format!("config file {path}: {e}")))?;
        config.base = Path::new(path).parent().map(Path::to_path_buf);
        config.path = Some(PathBuf::from(path));
        Ok(config)
    }

    /// Resolves a location from the file: plain relative paths are relative to the file.
    pub fn location(&self, value: &Option<String>) -> Option<String> {
        let value = value.as_ref()?;
        if value.contains("://") || Path::new(value).is_absolute() {
            return Some(value.clone());
        }
        match &self.base {
            Some(base) if !base.as_os_str().is_empty() => {
                Some(base.join(value).display().to_string())
            }
            _ => Some(value.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_discovered_in_the_directory_or_a_parent() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        assert!(ConfigFile::resolve(None, true, &nested).unwrap().path.is_none());
        std::fs::write(dir.path().join(DISCOVERED_NAME), "[paths]\ninput = \"in\"\n").unwrap();
        let found = ConfigFile::resolve(None, true, &nested).unwrap();
        assert_eq!(found.path.as_deref(), Some(dir.path().join(DISCOVERED_NAME).as_path()));
        assert_eq!(
            found.location(&found.paths.input).unwrap(),
            dir.path().join("in").display().to_string()
        );
        assert!(ConfigFile::resolve(None, false, &nested).unwrap().path.is_none(), "--no-config");
        let named = dir.path().join("other.toml");
        std::fs::write(&named, "").unwrap();
        let chosen =
            ConfigFile::resolve(Some(&named.display().to_string()), true, &nested).unwrap();
        assert_eq!(chosen.path.as_deref(), Some(named.as_path()));
    }

    #[test]
    fn rejects_unknown_keys_and_resolves_relative_paths() {
        let err = toml::from_str::<ConfigFile>("[run]\nthreads = 2\nthread = 3\n").unwrap_err();
        assert!(err.to_string().contains("thread"), "{err}");
        let mut c: ConfigFile =
            toml::from_str("[paths]\ninput = \"../data\"\noutput = \"memory://x\"\n").unwrap();
        c.base = Some(PathBuf::from("configs"));
        assert_eq!(c.location(&c.paths.input).unwrap(), "configs/../data");
        assert_eq!(c.location(&c.paths.output).unwrap(), "memory://x");
    }
}
