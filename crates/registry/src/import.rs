//! Importing scikit-learn exports: find the interchange files, map their names to model keys,
//! convert and validate every file before any is written (a bad export leaves the registry as
//! it was), then write the models and commit them in one index generation.

use std::collections::BTreeMap;

use batchscore_io::{Location, Storage};
use rayon::prelude::*;

use crate::{EncodedModel, KeyPattern, Model, ModelKey, Registry, RegistryError, import_sklearn};

/// One interchange file to import, and the key its name maps to.
#[derive(Debug, Clone)]
pub struct ImportFile {
    location: Location,
    name: String,
    pub key: ModelKey,
}

impl ImportFile {
    pub fn url(&self) -> String {
        self.location.url_of(&self.name)
    }
}

/// The files an import covers.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub files: Vec<ImportFile>,
    /// Files whose names the key pattern does not match (URLs).
    pub skipped: Vec<String>,
}

impl ImportPlan {
    /// Lists `paths` (directories, whose `.json` files are taken, or single `.json` files) and
    /// maps each file's stem to a key with `pattern`. Two files of one key, or no file at all,
    /// are errors.
    pub fn find(
        storage: &Storage,
        paths: &[String],
        pattern: &KeyPattern,
    ) -> Result<Self, RegistryError> {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for path in paths {
            let (dir, names) = match path.rsplit_once('/') {
                _ if !path.ends_with(".json") => {
                    let dir = storage.open(path)?;
                    let names: Vec<String> = dir
                        .list("")?
                        .into_iter()
                        .map(|e| e.path)
                        .filter(|p| p.ends_with(".json"))
                        .collect();
                    (dir, names)
                }
                Some((dir, name)) => {
                    (storage.open(if dir.is_empty() { "/" } else { dir })?, vec![name.to_string()])
                }
                None => (storage.open(".")?, vec![path.clone()]),
            };
            for name in names {
                let file = name.rsplit('/').next().unwrap_or(&name);
                let stem = file.trim_end_matches(".json");
                match pattern.key_for(stem) {
                    None => skipped.push(dir.url_of(&name)),
                    Some(key) => {
                        let key = key.map_err(|e| RegistryError::ImportSelection {
                            reason: format!("{}: {e}", dir.url_of(&name)),
                        })?;
                        files.push(ImportFile { location: dir.clone(), name, key });
                    }
                }
            }
        }
        let mut seen = BTreeMap::new();
        for file in &files {
            if let Some(other) = seen.insert(file.key.clone(), file.url()) {
                return Err(RegistryError::ImportSelection {
                    reason: format!(
                        "{} and {other} both map to key `{}` (check --key-pattern)",
                        file.url(),
                        file.key
                    ),
                });
            }
        }
        if files.is_empty() {
            return Err(RegistryError::ImportSelection {
                reason: format!(
                    "no interchange file matched `{}` in {}",
                    pattern.as_str(),
                    paths.join(", ")
                ),
            });
        }
        Ok(Self { files, skipped })
    }

    /// Reads and converts every file, in parallel on the caller's rayon pool: the models in
    /// file order, or the reason of every file that failed (each naming its file). Storage
    /// outages are errors of the whole import, not of a file.
    pub fn convert(
        &self,
        features: Option<Vec<String>>,
        created_at: &str,
    ) -> Result<Result<Vec<Model>, Vec<String>>, RegistryError> {
        let converted: Vec<Result<Model, RegistryError>> = self
            .files
            .par_iter()
            .map(|file| {
                let bytes = file.location.get(&file.name)?;
                import_sklearn(
                    &file.url(),
                    &bytes,
                    file.key.clone(),
                    features.clone(),
                    created_at.to_string(),
                )
            })
            .collect();
        let mut models = Vec::with_capacity(converted.len());
        let mut failures = Vec::new();
        for result in converted {
            match result {
                Ok(model) => models.push(model),
                Err(e) if e.class() == batchscore_io::ErrorClass::Unavailable => return Err(e),
                Err(e) => failures.push(crate::error_causes(&e).join(": ")),
            }
        }
        Ok(if failures.is_empty() { Ok(models) } else { Err(failures) })
    }
}

/// Models per pack that an import or a training writes: about 13 MB of forests, few requests to
/// score them from a remote registry, small enough that a pack is cheap to write again.
pub const PACK_MODELS: usize = 256;

/// Writes `models` in packs of neighbouring series (in parallel on the caller's rayon pool)
/// and commits them in one index generation.
pub fn write_models(registry: &mut Registry, models: &[Model]) -> Result<(), RegistryError> {
    let mut ordered: Vec<&Model> = models.iter().collect();
    ordered.sort_by(|a, b| a.meta.key.series_order().cmp(&b.meta.key.series_order()));
    let entries: Vec<Vec<_>> = ordered
        .par_chunks(PACK_MODELS)
        .map(|pack| {
            let encoded = pack.iter().map(|m| EncodedModel::new(m)).collect::<Result<_, _>>()?;
            registry.write_pack(encoded)
        })
        .collect::<Result<_, _>>()?;
    registry.commit(entries.into_iter().flatten().collect())
}
