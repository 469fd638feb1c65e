//! Models for real-time scoring: the registry index held open, and decoded models in a cache
//! bounded by the bytes of their files (least recently and least frequently used go first).
//!
//! The index is read again every `refresh`; when its fingerprint changed, the new one replaces
//! the old at once and later lookups use it. Cache entries are keyed by model key *and* file
//! checksum, so a retrained model is a new entry and the old one simply ages out: no request
//! ever mixes a new index with an old model. Storage is blocking (the engine's facade), so
//! every read runs on tokio's blocking pool.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use batchscore_io::Location;
use batchscore_registry::{Model, ModelKey, Registry, RegistryError};

use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    key: ModelKey,
    sha256: String,
}

/// Weighs an entry by its model file's size (the decoded model is of the same order).
#[derive(Debug, Clone)]
struct FileBytes;

impl quick_cache::Weighter<CacheKey, (u64, Arc<Model>)> for FileBytes {
    fn weight(&self, _key: &CacheKey, value: &(u64, Arc<Model>)) -> u64 {
        value.0.max(1)
    }
}

type Cache = quick_cache::sync::Cache<CacheKey, (u64, Arc<Model>), FileBytes>;

/// Why a row's model could not be had.
#[derive(Debug, Clone)]
pub enum ModelError {
    /// No model for this key in the registry.
    Missing(String),
    /// The model file is unreadable or invalid (a per-row error: other rows still score).
    Invalid(String),
    /// Storage is unavailable: the whole request is answered 503.
    Unavailable(String),
}

/// The registry and the model cache.
#[derive(Debug)]
pub struct Models {
    location: Location,
    registry: RwLock<Option<Arc<Registry>>>,
    cache: Cache,
    metrics: Arc<Metrics>,
}

impl Models {
    /// Opens the registry now. An unavailable store leaves the service unready (the refresh
    /// loop keeps trying); any other failure (no registry there, a corrupt index) is returned.
    pub fn open(
        location: Location,
        cache_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistryError> {
        let registry = match Registry::open_existing(location.clone()) {
            Ok(registry) => Some(Arc::new(registry)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %batchscore_io::error_chain(&e), "registry unavailable; not ready until it opens");
                None
            }
            Err(e) => return Err(e),
        };
        // Estimated entries: models of about 1 MB (100 trees of 256 samples).
        let estimated = usize::try_from(cache_bytes >> 20).unwrap_or(1024).clamp(16, 1 << 20);
        Ok(Models {
            location,
            registry: RwLock::new(registry),
            cache: Cache::with_weighter(estimated, cache_bytes.max(1), FileBytes),
            metrics,
        })
    }

    /// The registry as last read, once it has been opened.
    pub fn registry(&self) -> Option<Arc<Registry>> {
        self.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn is_ready(&self) -> bool {
        self.registry().is_some()
    }

    /// Reads the index again (blocking) and swaps it in when it changed. Returns true on a
    /// change.
    pub fn reload(&self) -> Result<bool, RegistryError> {
        let fresh = Registry::open_existing(self.location.clone())?;
        let changed = self.registry().is_none_or(|old| old.fingerprint() != fresh.fingerprint());
        if changed {
            tracing::info!(
                models = fresh.len(),
                fingerprint = &fresh.fingerprint()[..12],
                "registry index loaded"
            );
            *self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Arc::new(fresh));
            self.metrics.registry_reloads.inc();
        }
        Ok(changed)
    }

    /// Reloads the index every `every` until the task is dropped.
    pub async fn refresh_loop(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let models = self.clone();
            match tokio::task::spawn_blocking(move || models.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %batchscore_io::error_chain(&e), "registry index not reloaded; the last one stays in use")
                }
                Err(e) => tracing::error!(error = %e, "registry reload task failed"),
            }
        }
    }

    /// The models for `keys` (one result per key, in order) from `registry`: cached ones at
    /// once, the others read together on the blocking pool and cached.
    pub async fn get_many(
        &self,
        registry: &Arc<Registry>,
        keys: &[ModelKey],
    ) -> Vec<Result<Arc<Model>, ModelError>> {
        let mut out: Vec<Option<Result<Arc<Model>, ModelError>>> = Vec::with_capacity(keys.len());
        let mut misses: Vec<(usize, CacheKey, u64)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(entry) = registry.entry(key) else {
                out.push(Some(Err(ModelError::Missing(format!(
                    "no model for `{key}` in the registry"
                )))));
                continue;
            };
            let cache_key = CacheKey { key: key.clone(), sha256: entry.sha256.clone() };
            match self.cache.get(&cache_key) {
                Some((_, model)) => {
                    self.metrics.model_cache_hits.inc();
                    out.push(Some(Ok(model)));
                }
                None => {
                    self.metrics.model_cache_misses.inc();
                    misses.push((i, cache_key, entry.size));
                    out.push(None);
                }
            }
        }
        if !misses.is_empty() {
            let registry = registry.clone();
            let wanted: Vec<ModelKey> = misses.iter().map(|m| m.1.key.clone()).collect();
            let loaded = match tokio::task::spawn_blocking(move || {
                registry.load_many(&wanted).collect::<Vec<_>>()
            })
            .await
            {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::error!(error = %e, "model load task failed");
                    Vec::new()
                }
            };
            let mut loaded = loaded.into_iter();
            for (i, cache_key, size) in misses {
                let result = match loaded.next() {
                    Some(Ok(model)) => {
                        let model = Arc::new(model);
                        self.cache.insert(cache_key, (size, model.clone()));
                        Ok(model)
                    }
                    Some(Err(e)) if e.is_retryable() => {
                        Err(ModelError::Unavailable(batchscore_io::error_chain(&e)))
                    }
                    Some(Err(e @ RegistryError::NoModel { .. })) => {
                        Err(ModelError::Missing(batchscore_io::error_chain(&e)))
                    }
                    Some(Err(e)) => Err(ModelError::Invalid(batchscore_io::error_chain(&e))),
                    None => Err(ModelError::Invalid("the model could not be read".into())),
                };
                out[i] = Some(result);
            }
            self.metrics
                .model_cache_bytes
                .set(i64::try_from(self.cache.weight()).unwrap_or(i64::MAX));
            self.metrics
                .model_cache_entries
                .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Invalid("not looked up".into()))))
            .collect()
    }
}
