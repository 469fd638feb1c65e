//! The registry on storage: `index.json` plus one file per model under `models/`.

use std::collections::BTreeMap;

use batchscore_io::Location;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::Verify;
use crate::{Model, ModelKey, RegistryError};

const INDEX: &str = "index.json";
const INDEX_FORMAT: u32 = 1;
/// Model files fetched at once by [`Registry::load_many`].
const LOAD_CONCURRENCY: usize = 16;

/// One model as listed in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub key: ModelKey,
    /// Path of the model file relative to the registry root.
    pub path: String,
    /// Size of the model file in bytes.
    pub size: u64,
    /// SHA-256 of the whole model file.
    pub sha256: String,
    /// The model's version (see [`Model::version`]).
    pub version: String,
    pub detector: String,
    pub features: Vec<String>,
    pub training_rows: u64,
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    models: Vec<IndexEntry>,
}

/// A model registry at a storage location.
#[derive(Debug, Clone)]
pub struct Registry {
    location: Location,
    entries: BTreeMap<ModelKey, IndexEntry>,
    /// SHA-256 of the index as read (empty registry: of nothing), identifying its contents.
    fingerprint: String,
}

impl Registry {
    /// Opens the registry with one read of its index; a location without an index is empty.
    /// Opens a registry that must exist (scoring, inspecting): a missing index is an error
    /// naming the location rather than an empty registry that fails every device.
    pub fn open_existing(location: Location) -> Result<Self, RegistryError> {
        match location.get_opt(INDEX)? {
            None => Err(RegistryError::NotARegistry { url: location.url().to_string() }),
            Some(bytes) => Self::from_index(location, Some(bytes)),
        }
    }

    /// Opens a registry, empty if nothing was written there yet (training into it). One
    /// request, whatever the number of models: the index names them all.
    pub fn open(location: Location) -> Result<Self, RegistryError> {
        let index = location.get_opt(INDEX)?;
        Self::from_index(location, index)
    }

    fn from_index(location: Location, index: Option<bytes::Bytes>) -> Result<Self, RegistryError> {
        let url = location.url_of(INDEX);
        let (entries, fingerprint) = match index {
            None => (BTreeMap::new(), hex::encode(Sha256::digest(b""))),
            Some(bytes) => {
                let file: IndexFile = serde_json::from_slice(&bytes).map_err(|e| {
                    RegistryError::CorruptIndex { url: url.clone(), reason: e.to_string() }
                })?;
                if file.format != INDEX_FORMAT {
                    return Err(RegistryError::CorruptIndex {
                        url,
                        reason: format!("index format {}, expected {INDEX_FORMAT}", file.format),
                    });
                }
                let mut entries = BTreeMap::new();
                for entry in file.models {
                    if entry.path.split('/').any(|p| p == ".." || p.is_empty()) {
                        return Err(RegistryError::CorruptIndex {
                            url,
                            reason: format!("model path `{}` leaves the registry", entry.path),
                        });
                    }
                    entries.insert(entry.key.clone(), entry);
                }
                (entries, hex::encode(Sha256::digest(&bytes)))
            }
        };
        Ok(Self { location, entries, fingerprint })
    }

    /// True when the registry is on a network store: worth fetching models in batches.
    pub fn is_remote(&self) -> bool {
        self.location.is_remote()
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        self.location.url()
    }

    /// Identifies the registry's contents: changes whenever a model is added or replaced.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Every model in the index, by key.
    pub fn entries(&self) -> impl Iterator<Item = &IndexEntry> {
        self.entries.values()
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the registry holds no model.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index entry for `key`.
    pub fn entry(&self, key: &ModelKey) -> Option<&IndexEntry> {
        self.entries.get(key)
    }

    /// Reads, checks against the index, and decodes the model for `key`.
    ///
    /// The file's SHA-256 must match the index, which vouches for every byte, so only the
    /// structural checks run after it (see [`Registry::verify`] for all of them).
    pub fn load(&self, key: &ModelKey) -> Result<Model, RegistryError> {
        self.load_with(key, Verify::Structure)
    }

    /// Loads the model for `key` with every check, both hashes included (`models verify`).
    pub fn verify(&self, key: &ModelKey) -> Result<Model, RegistryError> {
        self.load_with(key, Verify::Full)
    }

    /// Loads several models, fetching their files concurrently (one request each, a bounded
    /// number in flight): on a remote registry the latency of one request is paid once per
    /// batch, not once per model. Each model is decoded when the iterator reaches it, so only
    /// one decoded model is held at a time. Results are in the order of `keys`.
    pub fn load_many<'a>(
        &'a self,
        keys: &'a [ModelKey],
    ) -> impl Iterator<Item = Result<Model, RegistryError>> + 'a {
        let paths: Vec<&str> =
            keys.iter().filter_map(|k| self.entries.get(k).map(|e| e.path.as_str())).collect();
        let mut fetched = self.location.get_many(&paths, LOAD_CONCURRENCY).into_iter();
        keys.iter().map(move |key| {
            let entry = self.entry_or_missing(key)?;
            let bytes = fetched.next().ok_or_else(|| RegistryError::NoModel {
                key: key.to_string(),
                registry: self.location.url().to_string(),
            })??;
            self.decode(key, entry, bytes, Verify::Structure)
        })
    }

    fn entry_or_missing(&self, key: &ModelKey) -> Result<&IndexEntry, RegistryError> {
        self.entries.get(key).ok_or_else(|| RegistryError::NoModel {
            key: key.to_string(),
            registry: self.location.url().to_string(),
        })
    }

    fn load_with(&self, key: &ModelKey, verify: Verify) -> Result<Model, RegistryError> {
        let entry = self.entry_or_missing(key)?;
        let bytes = self.location.get(&entry.path)?;
        self.decode(key, entry, bytes, verify)
    }

    fn decode(
        &self,
        key: &ModelKey,
        entry: &IndexEntry,
        bytes: bytes::Bytes,
        verify: Verify,
    ) -> Result<Model, RegistryError> {
        let url = self.location.url_of(&entry.path);
        let corrupt = |reason: String| RegistryError::Corrupt { url: url.clone(), reason };
        if bytes.len() as u64 != entry.size {
            return Err(corrupt(format!("{} bytes, the index says {}", bytes.len(), entry.size)));
        }
        if hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
            return Err(corrupt("file checksum differs from the index".into()));
        }
        let model = Model::decode_with(&url, &bytes, verify)?;
        if &model.meta.key != key {
            return Err(RegistryError::KeyMismatch {
                url,
                expected: key.to_string(),
                found: model.meta.key.to_string(),
            });
        }
        Ok(model)
    }

    /// Writes a model file and returns its index entry; the index changes only on
    /// [`Registry::commit`], so readers never see an entry whose file is not written yet.
    pub fn write_model(&self, model: &Model) -> Result<IndexEntry, RegistryError> {
        let bytes = model.encode()?;
        let path = format!("models/{}.bsm", model.meta.key);
        self.location.put(&path, bytes.clone())?;
        Ok(IndexEntry {
            key: model.meta.key.clone(),
            path,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            version: model.version().to_string(),
            detector: model.meta.detector.clone(),
            features: model.meta.features.clone(),
            training_rows: model.meta.training.rows,
            created_at: model.meta.created_at.clone(),
        })
    }

    /// Adds or replaces entries and writes the index in one atomic put.
    pub fn commit(&mut self, entries: Vec<IndexEntry>) -> Result<(), RegistryError> {
        for entry in entries {
            self.entries.insert(entry.key.clone(), entry);
        }
        let file =
            IndexFile { format: INDEX_FORMAT, models: self.entries.values().cloned().collect() };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| RegistryError::Encode { key: INDEX.into(), reason: e.to_string() })?;
        self.fingerprint = hex::encode(Sha256::digest(&bytes));
        self.location.put(INDEX, bytes.into())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::small_model;
    use batchscore_io::Storage;
    use bytes::Bytes;

    #[test]
    fn write_commit_open_load() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://reg").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        assert!(reg.is_empty());
        let empty = reg.fingerprint().to_string();
        let entries = (0..3).map(|k| reg.write_model(&small_model(k)).unwrap()).collect();
        reg.commit(entries).unwrap();
        assert_ne!(reg.fingerprint(), empty);
        let reg = Registry::open(loc.clone()).unwrap();
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.load(&ModelKey::device(1)).unwrap(), small_model(1));
        assert_eq!(reg.verify(&ModelKey::device(1)).unwrap(), small_model(1));
        assert!(matches!(reg.load(&ModelKey::device(9)), Err(RegistryError::NoModel { .. })));

        // A damaged file is caught by the index checksum, and says which file.
        loc.put("models/2.bsm", Bytes::from_static(b"garbage")).unwrap();
        let err = reg.load(&ModelKey::device(2)).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }));
        assert!(err.to_string().contains("models/2.bsm"), "{err}");
        // Another key's (valid) file in this key's place is caught too.
        let other = small_model(0).encode().unwrap();
        loc.put("models/1.bsm", other.clone()).unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let mut entry = reg.entry(&ModelKey::device(1)).unwrap().clone();
        entry.size = other.len() as u64;
        entry.sha256 = hex::encode(Sha256::digest(&other));
        reg.commit(vec![entry]).unwrap();
        assert!(matches!(reg.load(&ModelKey::device(1)), Err(RegistryError::KeyMismatch { .. })));
    }

    #[test]
    fn corrupt_index_is_an_error() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://badidx").unwrap();
        loc.put(INDEX, Bytes::from_static(b"{not json")).unwrap();
        assert!(matches!(Registry::open(loc), Err(RegistryError::CorruptIndex { .. })));
    }
}
