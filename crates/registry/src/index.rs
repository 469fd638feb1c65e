//! The registry on storage: `index.json`, its generations under `_index/`, and immutable model
//! objects: packs of the models written together, `packs/SHA256.fN.pack`, and single models,
//! `models/KEY/VERSION.fN.bsm`.
//!
//! A pack is the model files of one training unit or import chunk laid end to end, named by
//! the SHA-256 of its bytes; the index gives each model's offset and size in it. Scoring
//! 10,000 models from a remote registry then costs a ranged GET per group of neighbouring
//! models (object_store coalesces adjacent ranges), not a GET per model.
//!
//! Model objects are written create-only at a path named by their content hash, so an object
//! never changes once written: a job that opened the registry before a retraining keeps
//! loading exactly the models it planned with. The index changes by generations: a commit
//! writes `_index/N.json` create-only; if another writer took generation N first, the commit
//! merges its entries onto that one and tries N + 1, so concurrent trainings never lose each
//! other's models. `index.json` then receives the new generation's bytes (one GET opens a
//! registry) and is brought forward to any later generation written meanwhile, so it ends at
//! the newest one whichever writer finishes last.

use std::collections::BTreeMap;

use batchscore_io::Location;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::Verify;
use crate::{FORMAT_VERSION, Model, ModelKey, RegistryError};

const INDEX: &str = "index.json";
/// Index format 3 adds model offsets inside packs, format 2 the generation; format 1 indexes
/// (no generation) are read as generation 0.
const INDEX_FORMAT: u32 = 3;
const OLDEST_INDEX_FORMAT: u32 = 1;
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
    /// Where the model file starts inside `path` when `path` is a pack; `None`: `path` is the
    /// model file alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl IndexEntry {
    /// The model file's bytes inside its object, when the object is a pack.
    fn range(&self) -> Option<std::ops::Range<u64>> {
        self.offset.map(|offset| offset..offset + self.size)
    }
}

/// Where a model's object lives: `models/KEY/VERSION.fN.bsm`, N the file format. The version is
/// the content's hash, which does not change with the file format, so without N a model written
/// again by a build of a newer format (the remedy the refusal of an older file names) would find
/// the older file in its place and keep it.
fn model_path(model: &Model) -> String {
    format!("models/{}/{}.f{FORMAT_VERSION}.bsm", model.meta.key, model.version())
}

/// Where a pack lives: named by its bytes' SHA-256, so an object found at that name holds
/// exactly those bytes, and by the file format of the models inside.
fn pack_path(sha256: &str) -> String {
    format!("packs/{sha256}.f{FORMAT_VERSION}.pack")
}

/// A model encoded for writing: its file, and the index entry of it as a model object.
#[derive(Debug, Clone)]
pub struct EncodedModel {
    entry: IndexEntry,
    file: bytes::Bytes,
}

impl EncodedModel {
    /// Encodes `model`: a few tens of KB where the decoded forest takes several times that,
    /// so trained models wait for their pack in this form.
    pub fn new(model: &Model) -> Result<Self, RegistryError> {
        let file = model.encode()?;
        let entry = IndexEntry {
            key: model.meta.key.clone(),
            path: model_path(model),
            size: file.len() as u64,
            sha256: hex::encode(Sha256::digest(&file)),
            version: model.version().to_string(),
            detector: model.meta.detector.clone(),
            features: model.meta.features.clone(),
            training_rows: model.meta.training.rows,
            created_at: model.meta.created_at.clone(),
            offset: None,
        };
        Ok(Self { entry, file })
    }
}

/// Parses and checks an index (`index.json` or a generation).
fn parse_index(url: &str, bytes: &[u8]) -> Result<IndexFile, RegistryError> {
    let corrupt = |reason: String| RegistryError::CorruptIndex { url: url.to_string(), reason };
    let file: IndexFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if !(OLDEST_INDEX_FORMAT..=INDEX_FORMAT).contains(&file.format) {
        return Err(corrupt(format!(
            "index format {}, this build reads {OLDEST_INDEX_FORMAT} to {INDEX_FORMAT}",
            file.format
        )));
    }
    for entry in &file.models {
        if entry.path.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(corrupt(format!("model path `{}` leaves the registry", entry.path)));
        }
        if entry.offset.is_some_and(|o| o.checked_add(entry.size).is_none()) {
            return Err(corrupt(format!("model `{}` lies past the end of any object", entry.key)));
        }
    }
    Ok(file)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    #[serde(default)]
    generation: u64,
    models: Vec<IndexEntry>,
}

/// Where generation `n` of the index is kept.
fn generation_path(n: u64) -> String {
    format!("_index/{n:020}.json")
}

/// A model registry at a storage location.
#[derive(Debug, Clone)]
pub struct Registry {
    location: Location,
    entries: BTreeMap<ModelKey, IndexEntry>,
    /// The index generation read (0: none, or a format-1 index).
    generation: u64,
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
        let Some(bytes) = index else {
            let fingerprint = hex::encode(Sha256::digest(b""));
            return Ok(Self { location, entries: BTreeMap::new(), generation: 0, fingerprint });
        };
        let file = parse_index(&url, &bytes)?;
        Ok(Self {
            location,
            entries: file.models.into_iter().map(|e| (e.key.clone(), e)).collect(),
            generation: file.generation,
            fingerprint: hex::encode(Sha256::digest(&bytes)),
        })
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

    /// Loads several models, fetching their files together: the models of one pack in one
    /// call that coalesces neighbouring ranges into single requests, lone model files
    /// concurrently (a bounded number in flight). On a remote registry the latency of a
    /// request is paid once per group of models, not once per model. Each model is decoded
    /// when the iterator reaches it, so only one decoded model is held at a time. Results are
    /// in the order of `keys`.
    pub fn load_many<'a>(
        &'a self,
        keys: &'a [ModelKey],
    ) -> impl Iterator<Item = Result<Model, RegistryError>> + 'a {
        self.load_group(keys, Verify::Structure)
    }

    /// Loads several models like [`Registry::load_many`] (one ranged request per pack met),
    /// with every check of [`Registry::verify`].
    pub fn verify_many<'a>(
        &'a self,
        keys: &'a [ModelKey],
    ) -> impl Iterator<Item = Result<Model, RegistryError>> + 'a {
        self.load_group(keys, Verify::Full)
    }

    fn load_group<'a>(
        &'a self,
        keys: &'a [ModelKey],
        verify: Verify,
    ) -> impl Iterator<Item = Result<Model, RegistryError>> + 'a {
        let entries: Vec<Option<&IndexEntry>> = keys.iter().map(|k| self.entries.get(k)).collect();
        let mut fetched: Vec<Option<Result<bytes::Bytes, batchscore_io::IoError>>> =
            (0..keys.len()).map(|_| None).collect();
        let lone: Vec<usize> =
            (0..keys.len()).filter(|&i| entries[i].is_some_and(|e| e.offset.is_none())).collect();
        let paths: Vec<&str> =
            lone.iter().filter_map(|&i| entries[i].map(|e| e.path.as_str())).collect();
        for (&i, got) in lone.iter().zip(self.location.get_many(&paths, LOAD_CONCURRENCY)) {
            fetched[i] = Some(got);
        }
        let mut packs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Some(entry) = entry.filter(|e| e.offset.is_some()) {
                packs.entry(entry.path.as_str()).or_default().push(i);
            }
        }
        for (path, members) in packs {
            let ranges: Vec<std::ops::Range<u64>> =
                members.iter().filter_map(|&i| entries[i].and_then(IndexEntry::range)).collect();
            // A failed pack read leaves its models to be fetched one by one below, each
            // with its own error.
            if let Ok(parts) = self.location.get_ranges(path, &ranges) {
                for (&i, part) in members.iter().zip(parts) {
                    fetched[i] = Some(Ok(part));
                }
            }
        }
        keys.iter().zip(entries).zip(fetched).map(move |((key, entry), fetched)| {
            let entry = entry.ok_or_else(|| self.missing(key))?;
            let bytes = match fetched {
                Some(got) => got?,
                None => self.fetch(entry)?,
            };
            self.decode(key, entry, bytes, verify)
        })
    }

    /// A model file's bytes: its object, or its range of a pack.
    fn fetch(&self, entry: &IndexEntry) -> Result<bytes::Bytes, RegistryError> {
        Ok(match entry.range() {
            None => self.location.get(&entry.path)?,
            Some(range) => self.location.get_range(&entry.path, range)?,
        })
    }

    fn missing(&self, key: &ModelKey) -> RegistryError {
        RegistryError::NoModel { key: key.to_string(), registry: self.location.url().to_string() }
    }

    fn load_with(&self, key: &ModelKey, verify: Verify) -> Result<Model, RegistryError> {
        let entry = self.entries.get(key).ok_or_else(|| self.missing(key))?;
        let bytes = self.fetch(entry)?;
        self.decode(key, entry, bytes, verify)
    }

    fn decode(
        &self,
        key: &ModelKey,
        entry: &IndexEntry,
        bytes: bytes::Bytes,
        verify: Verify,
    ) -> Result<Model, RegistryError> {
        let url = match entry.offset {
            None => self.location.url_of(&entry.path),
            Some(offset) => format!("{} (at byte {offset})", self.location.url_of(&entry.path)),
        };
        let corrupt = |reason: String| RegistryError::Corrupt { url: url.clone(), reason };
        if bytes.len() as u64 != entry.size {
            return Err(corrupt(format!("{} bytes, the index says {}", bytes.len(), entry.size)));
        }
        // The hot path hashes the file once, for its own payload checksum; `models verify`
        // also matches the index's whole-file checksum.
        if verify == Verify::Full && hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
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
        // Scores carry the version: a file of another version in this entry's place must not
        // lend them the entry's.
        if model.version() != entry.version {
            return Err(corrupt(format!(
                "holds version {}, the index says {}",
                model.version(),
                entry.version
            )));
        }
        Ok(model)
    }

    /// Writes a model's immutable object and returns its index entry; the index changes only
    /// on [`Registry::commit`], so readers never see an entry whose file is not written yet.
    pub fn write_model(&self, model: &Model) -> Result<IndexEntry, RegistryError> {
        self.write_one(EncodedModel::new(model)?)
    }

    /// Writes an encoded model as its own object at `models/KEY/VERSION.fN.bsm`.
    ///
    /// Create-only: when an object of this name exists (a model of this version and file
    /// format, written by an earlier or a concurrent training of the same data), it stays, and
    /// the entry describes it, not the bytes just encoded, which differ in the creation time.
    fn write_one(&self, encoded: EncodedModel) -> Result<IndexEntry, RegistryError> {
        let EncodedModel { mut entry, file } = encoded;
        if self.location.put_if_absent(&entry.path, file)? {
            return Ok(entry);
        }
        let existing = self.location.get(&entry.path)?;
        let url = self.location.url_of(&entry.path);
        let stored = Model::decode(&url, &existing)?;
        if stored.meta.key != entry.key || stored.version() != entry.version {
            let reason = format!(
                "holds model `{}` version {}, its name says `{}` version {}",
                stored.meta.key,
                stored.version(),
                entry.key,
                entry.version
            );
            return Err(RegistryError::Corrupt { url, reason });
        }
        entry.size = existing.len() as u64;
        entry.sha256 = hex::encode(Sha256::digest(&existing));
        entry.created_at = stored.meta.created_at;
        Ok(entry)
    }

    /// Writes models as one pack (their files end to end, in the order given) and returns
    /// their index entries; like [`Registry::write_model`], the index changes only on
    /// [`Registry::commit`]. A single model is written as a model object.
    ///
    /// Create-only at a name that is the pack's SHA-256: a pack found there (the same models
    /// written by an earlier attempt) holds these very bytes.
    pub fn write_pack(&self, models: Vec<EncodedModel>) -> Result<Vec<IndexEntry>, RegistryError> {
        if models.len() == 1 {
            return models.into_iter().map(|m| self.write_one(m)).collect();
        }
        let mut pack = Vec::with_capacity(models.iter().map(|m| m.file.len()).sum());
        let mut entries = Vec::with_capacity(models.len());
        for EncodedModel { mut entry, file } in models {
            entry.offset = Some(pack.len() as u64);
            pack.extend_from_slice(&file);
            entries.push(entry);
        }
        let path = pack_path(&hex::encode(Sha256::digest(&pack)));
        self.location.put_if_absent(&path, bytes::Bytes::from(pack))?;
        for entry in &mut entries {
            entry.path.clone_from(&path);
        }
        Ok(entries)
    }

    /// Adds or replaces `entries` in a new index generation, merged onto whatever generation
    /// another writer committed meanwhile, and publishes it as `index.json`.
    pub fn commit(&mut self, entries: Vec<IndexEntry>) -> Result<(), RegistryError> {
        let mut base = self.entries.clone();
        let mut generation = self.generation;
        loop {
            let mut merged = base;
            for entry in &entries {
                merged.insert(entry.key.clone(), entry.clone());
            }
            let next = generation + 1;
            let file = IndexFile {
                format: INDEX_FORMAT,
                generation: next,
                models: merged.values().cloned().collect(),
            };
            let bytes =
                bytes::Bytes::from(serde_json::to_vec_pretty(&file).map_err(|e| {
                    RegistryError::Encode { key: INDEX.into(), reason: e.to_string() }
                })?);
            if self.location.put_if_absent(&generation_path(next), bytes.clone())? {
                self.publish(next, bytes.clone())?;
                self.entries = merged;
                self.generation = next;
                self.fingerprint = hex::encode(Sha256::digest(&bytes));
                return Ok(());
            }
            // Another writer committed generation `next` first: build on its entries.
            let path = generation_path(next);
            let theirs = parse_index(&self.location.url_of(&path), &self.location.get(&path)?)?;
            tracing::debug!(generation = next, "index generation taken by another writer; merging");
            base = theirs.models.into_iter().map(|e| (e.key.clone(), e)).collect();
            generation = next;
        }
    }

    /// Writes generation `n` to `index.json`, then moves it forward to every later generation
    /// found: a slower writer of an older generation must not leave `index.json` behind.
    fn publish(&self, mut n: u64, mut bytes: bytes::Bytes) -> Result<(), RegistryError> {
        loop {
            self.location.put(INDEX, bytes)?;
            match self.location.get_opt(&generation_path(n + 1))? {
                None => return Ok(()),
                Some(newer) => {
                    n += 1;
                    bytes = newer;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::small_model;
    use batchscore_io::Storage;
    use bytes::Bytes;

    fn path_of(reg: &Registry, key: i64) -> String {
        reg.entry(&ModelKey::device(key)).unwrap().path.clone()
    }

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
        assert_eq!(reg.generation, 1);
        assert_eq!(reg.load(&ModelKey::device(1)).unwrap(), small_model(1));
        assert_eq!(reg.verify(&ModelKey::device(1)).unwrap(), small_model(1));
        assert!(matches!(reg.load(&ModelKey::device(9)), Err(RegistryError::NoModel { .. })));
        let path = path_of(&reg, 2);
        assert_eq!(path, format!("models/2/{}.f{FORMAT_VERSION}.bsm", small_model(2).version()));

        // A damaged file is caught, and says which file.
        loc.put(&path, Bytes::from_static(b"garbage")).unwrap();
        let err = reg.load(&ModelKey::device(2)).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }));
        assert!(err.to_string().contains(&path), "{err}");
        // Another key's (valid) file in this key's place is caught too.
        let other = small_model(0).encode().unwrap();
        let path1 = path_of(&reg, 1);
        loc.put(&path1, other.clone()).unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let mut entry = reg.entry(&ModelKey::device(1)).unwrap().clone();
        entry.size = other.len() as u64;
        entry.sha256 = hex::encode(Sha256::digest(&other));
        reg.commit(vec![entry]).unwrap();
        assert!(matches!(reg.load(&ModelKey::device(1)), Err(RegistryError::KeyMismatch { .. })));
    }

    /// Regression: training the same data again (same version, a later creation time) kept the
    /// first object but indexed the checksum of the bytes it did not write, so `models verify`
    /// called every model corrupt.
    #[test]
    fn writing_a_model_again_indexes_the_object_that_stays() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://again").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let first = reg.write_model(&small_model(1)).unwrap();
        reg.commit(vec![first.clone()]).unwrap();
        let mut later = small_model(1);
        later.meta.created_at = "2031-06-01T00:00:00Z".into();
        assert_eq!(later.version(), small_model(1).version());
        let again = reg.write_model(&later).unwrap();
        assert_eq!(again, first);
        reg.commit(vec![again]).unwrap();
        let reg = Registry::open(loc.clone()).unwrap();
        assert_eq!(reg.verify(&ModelKey::device(1)).unwrap(), small_model(1));
        // An object whose name promises another model than it holds is an error, not an entry.
        let path = model_path(&small_model(3));
        loc.put(&path, small_model(2).encode().unwrap()).unwrap();
        let err = reg.write_model(&small_model(3)).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&path), "{err}");
    }

    /// Regression: a damaged model whose index entry was edited to match was loaded on the hot
    /// path and scored under the intact model's version.
    #[test]
    fn a_damaged_model_with_a_matching_index_entry_is_refused() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://damaged").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let entry = reg.write_model(&small_model(4)).unwrap();
        reg.commit(vec![entry.clone()]).unwrap();
        let mut bytes = loc.get(&entry.path).unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        loc.put(&entry.path, Bytes::from(bytes.clone())).unwrap();
        let edited = IndexEntry { sha256: hex::encode(Sha256::digest(&bytes)), ..entry.clone() };
        reg.commit(vec![edited]).unwrap();
        let err = reg.load(&ModelKey::device(4)).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // An entry that states another version than its file holds is refused as well.
        let intact = reg.write_model(&small_model(5)).unwrap();
        let wrong = IndexEntry { version: "0".repeat(16), ..intact };
        reg.commit(vec![wrong]).unwrap();
        let err = reg.load(&ModelKey::device(5)).unwrap_err();
        assert!(err.to_string().contains("the index says 0000"), "{err}");
    }

    fn encoded(keys: std::ops::Range<i64>) -> Vec<EncodedModel> {
        keys.map(|k| EncodedModel::new(&small_model(k)).unwrap()).collect()
    }

    #[test]
    fn packed_models_load_alone_and_together_and_each_names_its_damage() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://packs").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let mut entries = reg.write_pack(encoded(0..4)).unwrap();
        // Written again (a retried unit): the same pack, the same entries.
        assert_eq!(reg.write_pack(encoded(0..4)).unwrap(), entries);
        entries.push(reg.write_model(&small_model(9)).unwrap());
        reg.commit(entries.clone()).unwrap();
        let pack = entries[0].path.clone();
        assert!(pack.starts_with("packs/") && pack.ends_with(".f4.pack"), "{pack}");
        assert!(entries[..4].iter().all(|e| e.path == pack));
        let offsets: Vec<Option<u64>> = entries.iter().map(|e| e.offset).collect();
        let mut at = 0;
        for (e, offset) in entries[..4].iter().zip(&offsets) {
            assert_eq!(*offset, Some(at));
            at += e.size;
        }
        assert_eq!(offsets[4], None, "a lone model is its own object");
        assert_eq!(loc.list("packs").unwrap().len(), 1);

        let reg = Registry::open(loc.clone()).unwrap();
        for k in [0, 3, 9] {
            assert_eq!(reg.verify(&ModelKey::device(k)).unwrap(), small_model(k));
        }
        let keys: Vec<ModelKey> = [3, 9, 7, 0, 1].map(ModelKey::device).to_vec();
        let loaded: Vec<Result<Model, RegistryError>> = reg.load_many(&keys).collect();
        assert_eq!(loaded[0].as_ref().unwrap(), &small_model(3));
        assert_eq!(loaded[1].as_ref().unwrap(), &small_model(9));
        assert!(matches!(loaded[2], Err(RegistryError::NoModel { .. })));
        assert_eq!(loaded[3].as_ref().unwrap(), &small_model(0));
        assert_eq!(loaded[4].as_ref().unwrap(), &small_model(1));

        // A flipped byte inside the second model fails that model alone, and says where.
        let mut bytes = loc.get(&pack).unwrap().to_vec();
        let second = entries[1].offset.unwrap() as usize;
        bytes[second + entries[1].size as usize - 1] ^= 0x01;
        loc.put(&pack, Bytes::from(bytes)).unwrap();
        let loaded: Vec<Result<Model, RegistryError>> =
            reg.load_many(&[0, 1, 2].map(ModelKey::device)).collect();
        assert!(loaded[0].is_ok() && loaded[2].is_ok());
        let err = loaded[1].as_ref().unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{pack} (at byte {second})")), "{err}");
        assert!(reg.verify(&ModelKey::device(1)).is_err());
        let verified: Vec<Result<Model, RegistryError>> =
            reg.verify_many(&[0, 1, 2].map(ModelKey::device)).collect();
        assert!(verified[0].is_ok() && verified[1].is_err() && verified[2].is_ok());
        // A pack cut short: every model past the cut fails, each with its own error.
        let bytes = loc.get(&pack).unwrap();
        loc.put(&pack, bytes.slice(..second + 10)).unwrap();
        let loaded: Vec<Result<Model, RegistryError>> =
            reg.load_many(&[0, 2, 3].map(ModelKey::device)).collect();
        assert!(loaded[0].is_ok());
        assert!(loaded[1].is_err() && loaded[2].is_err());
    }

    #[test]
    fn an_index_entry_past_any_object_is_a_corrupt_index() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://past").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let mut entries = reg.write_pack(encoded(0..2)).unwrap();
        entries[1].offset = Some(u64::MAX - 3);
        reg.commit(entries).unwrap();
        let err = Registry::open(loc).unwrap_err();
        assert!(matches!(err, RegistryError::CorruptIndex { .. }), "{err}");
    }

    #[test]
    fn concurrent_commits_keep_each_others_entries() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://concurrent").unwrap();
        let mut seed = Registry::open(loc.clone()).unwrap();
        let entry = seed.write_model(&small_model(0)).unwrap();
        seed.commit(vec![entry]).unwrap();
        // Two trainings open the same generation and commit one after the other.
        let mut a = Registry::open(loc.clone()).unwrap();
        let mut b = Registry::open(loc.clone()).unwrap();
        let ea = a.write_model(&small_model(1)).unwrap();
        a.commit(vec![ea]).unwrap();
        let eb = b.write_model(&small_model(2)).unwrap();
        b.commit(vec![eb]).unwrap();
        let reg = Registry::open(loc.clone()).unwrap();
        let keys: Vec<String> = reg.entries().map(|e| e.key.to_string()).collect();
        assert_eq!(keys, ["0", "1", "2"]);
        assert_eq!(reg.generation, 3);
        // A slower writer that publishes an older generation last: index.json still ends at
        // the newest generation.
        let old = loc.get(&generation_path(2)).unwrap();
        a.publish(2, old).unwrap();
        assert_eq!(Registry::open(loc).unwrap().len(), 3);
    }

    #[test]
    fn retraining_never_changes_what_an_open_registry_loads() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://retrain").unwrap();
        let mut reg = Registry::open(loc.clone()).unwrap();
        let entry = reg.write_model(&small_model(7)).unwrap();
        reg.commit(vec![entry]).unwrap();
        let running = Registry::open(loc.clone()).unwrap();
        // A retraining writes a new version of key 7 and commits it.
        let mut retrained = small_model(7);
        let params = batchscore_detectors::IsolationForestParams {
            n_estimators: 3,
            seed: 99,
            ..Default::default()
        };
        retrained = crate::Model::isolation_forest(
            retrained.meta.key.clone(),
            &params,
            retrained.meta.features.clone(),
            retrained.meta.training.clone(),
            params.clone().check().unwrap().fit(&[&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]]).unwrap(),
            "2026-02-01T00:00:00Z".into(),
        )
        .unwrap();
        assert_ne!(retrained.version(), small_model(7).version());
        let mut trainer = Registry::open(loc.clone()).unwrap();
        let entry = trainer.write_model(&retrained).unwrap();
        trainer.commit(vec![entry]).unwrap();
        assert_eq!(running.load(&ModelKey::device(7)).unwrap(), small_model(7), "the old version");
        let reopened = Registry::open(loc).unwrap();
        assert_eq!(reopened.load(&ModelKey::device(7)).unwrap().version(), retrained.version());
    }

    #[test]
    fn corrupt_and_unknown_indexes_are_errors() {
        let storage = Storage::new().unwrap();
        let loc = storage.open("memory://badidx").unwrap();
        loc.put(INDEX, Bytes::from_static(b"{not json")).unwrap();
        assert!(matches!(Registry::open(loc.clone()), Err(RegistryError::CorruptIndex { .. })));
        loc.put(INDEX, Bytes::from_static(b"{\"format\": 9, \"models\": []}")).unwrap();
        assert!(matches!(Registry::open(loc.clone()), Err(RegistryError::CorruptIndex { .. })));
        // A format-1 index (no generation) is read as generation 0.
        loc.put(INDEX, Bytes::from_static(b"{\"format\": 1, \"models\": []}")).unwrap();
        assert_eq!(Registry::open(loc).unwrap().generation, 0);
    }
}
