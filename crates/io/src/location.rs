//! URLs to object stores, and a blocking facade over them for the synchronous engine.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::IoError;

/// Opens storage URLs and owns what they share: one store per backend and the async runtime.
///
/// Create one per process (or per test) and pass it down; `memory://` locations opened from the
/// same `Storage` see the same objects.
#[derive(Debug)]
pub struct Storage {
    runtime: Arc<tokio::runtime::Runtime>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// An object-store prefix: where a dataset, a registry or a run's output lives.
///
/// All paths given to its methods are relative to the location and use `/`.
#[derive(Debug, Clone)]
pub struct Location {
    runtime: Arc<tokio::runtime::Runtime>,
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

/// One object found by [`Location::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the listed location.
    pub path: String,
    pub size: u64,
    /// The store's version tag, if it has one (changes when the object is rewritten).
    pub e_tag: Option<String>,
}

impl Storage {
    /// A storage context with a small runtime: IO here waits on storage, it does not compute.
    pub fn new() -> Result<Self, IoError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("batchscore-io")
            .enable_all()
            .build()
            .map_err(IoError::Runtime)?;
        Ok(Self { runtime: Arc::new(runtime), stores: Mutex::new(HashMap::new()) })
    }

    /// Opens a location: a plain path, `file:///abs/path` or `memory://name/path`.
    pub fn open(&self, url: &str) -> Result<Location, IoError> {
        let invalid = |reason: &str| IoError::InvalidUrl { url: url.into(), reason: reason.into() };
        let (key, root, display) = if let Some(rest) = url.strip_prefix("memory://") {
            let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
            let root = Path::parse(path).map_err(|e| invalid(&e.to_string()))?;
            (format!("memory://{name}"), root, url.trim_end_matches('/').to_string())
        } else if let Some(scheme) = url.split_once("://").map(|(s, _)| s) {
            if scheme != "file" {
                return Err(invalid(&format!(
                    "scheme `{scheme}://` is not supported by this build (supported: plain paths, \
                     file://, memory://)"
                )));
            }
            let path = url.trim_start_matches("file://");
            if !path.starts_with('/') {
                return Err(invalid("file:// URLs need an absolute path"));
            }
            let abs = normalize_local(std::path::Path::new(path))?;
            local_root(url, &abs)?
        } else {
            if url.is_empty() {
                return Err(invalid("empty path"));
            }
            let abs = normalize_local(std::path::Path::new(url))?;
            local_root(url, &abs)?
        };
        let store = {
            let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            stores
                .entry(key.clone())
                .or_insert_with(|| {
                    if key == "file" {
                        Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>
                    } else {
                        Arc::new(InMemory::new())
                    }
                })
                .clone()
        };
        Ok(Location { runtime: self.runtime.clone(), store, root, url: display })
    }
}

fn local_root(url: &str, abs: &std::path::Path) -> Result<(String, Path, String), IoError> {
    let root = Path::from_absolute_path(abs)
        .map_err(|e| IoError::InvalidUrl { url: url.into(), reason: e.to_string() })?;
    Ok(("file".into(), root, abs.display().to_string()))
}

/// Makes a local path absolute and resolves `.` and `..` without touching the file system, so
/// locations that do not exist yet (an output directory) work too.
fn normalize_local(path: &std::path::Path) -> Result<std::path::PathBuf, IoError> {
    use std::path::Component;
    let abs = std::path::absolute(path).map_err(|e| IoError::InvalidUrl {
        url: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = std::path::PathBuf::new();
    for component in abs.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

impl Location {
    /// The location's URL as shown to users.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of an object below this location.
    pub fn url_of(&self, rel: &str) -> String {
        if rel.is_empty() { self.url.clone() } else { format!("{}/{}", self.url, rel) }
    }

    /// A location below this one.
    pub fn join(&self, rel: &str) -> Result<Location, IoError> {
        Ok(Location {
            runtime: self.runtime.clone(),
            store: self.store.clone(),
            root: self.path(rel)?,
            url: self.url_of(rel),
        })
    }

    fn path(&self, rel: &str) -> Result<Path, IoError> {
        let mut path = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(IoError::InvalidUrl {
                    url: self.url_of(rel),
                    reason: "relative segments are not allowed".into(),
                });
            }
            path = path.clone().join(part);
        }
        Ok(path)
    }

    /// Runs a storage future to completion from synchronous code (a rayon worker or main).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The underlying store and the absolute path of `rel`, for async readers.
    pub(crate) fn resolve(&self, rel: &str) -> Result<(Arc<dyn ObjectStore>, Path), IoError> {
        Ok((self.store.clone(), self.path(rel)?))
    }

    /// Every object below `rel` (recursively), sorted by path: one listing per call.
    pub fn list(&self, rel: &str) -> Result<Vec<Entry>, IoError> {
        let prefix = self.path(rel)?;
        let store = self.store.clone();
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| IoError::storage(self.url_of(rel), e))?;
        let mut entries: Vec<Entry> = metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.prefix_match(&self.root)?.map(|p| p.as_ref().to_string()).collect();
                Some(Entry { path: parts.join("/"), size: m.size, e_tag: m.e_tag })
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// The whole object at `rel`.
    pub fn get(&self, rel: &str) -> Result<Bytes, IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        self.block_on(async move { store.get(&path).await?.bytes().await })
            .map_err(|e| IoError::storage(self.url_of(rel), e))
    }

    /// The object at `rel`, or `None` if it does not exist.
    pub fn get_opt(&self, rel: &str) -> Result<Option<Bytes>, IoError> {
        match self.get(rel) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(IoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` at `rel` in one atomic put: readers see the old object or the new one.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<(), IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        self.block_on(async move { store.put(&path, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| IoError::storage(self.url_of(rel), e))
    }

    /// Writes `bytes` at `rel` only if nothing is there yet; returns false if an object existed.
    ///
    /// This is the commit primitive: of concurrent writers exactly one succeeds.
    pub fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool, IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self
            .block_on(async move { store.put_opts(&path, PutPayload::from(bytes), opts).await })
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(IoError::storage(self.url_of(rel), e)),
        }
    }

    /// Deletes the object at `rel`; a missing object is not an error.
    pub fn delete(&self, rel: &str) -> Result<(), IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        match self.block_on(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(IoError::storage(self.url_of(rel), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same contract, run against every backend available here.
    fn contract(loc: &Location) {
        assert_eq!(loc.list("").unwrap(), vec![]);
        assert!(matches!(loc.get("a/x.bin"), Err(IoError::NotFound { .. })));
        loc.put("a/x.bin", Bytes::from_static(b"one")).unwrap();
        loc.put("a/b/y.bin", Bytes::from_static(b"two!")).unwrap();
        loc.put("c.bin", Bytes::from_static(b"3")).unwrap();
        assert_eq!(loc.get("a/x.bin").unwrap(), Bytes::from_static(b"one"));
        let listed: Vec<(String, u64)> =
            loc.list("a").unwrap().into_iter().map(|e| (e.path, e.size)).collect();
        assert_eq!(listed, vec![("a/b/y.bin".into(), 4), ("a/x.bin".into(), 3)]);
        assert!(!loc.put_if_absent("a/x.bin", Bytes::from_static(b"new")).unwrap());
        assert_eq!(loc.get("a/x.bin").unwrap(), Bytes::from_static(b"one"));
        assert!(loc.put_if_absent("d.bin", Bytes::from_static(b"d")).unwrap());
        let sub = loc.join("a").unwrap();
        assert_eq!(sub.get("b/y.bin").unwrap(), Bytes::from_static(b"two!"));
        loc.delete("c.bin").unwrap();
        loc.delete("c.bin").unwrap();
        assert_eq!(loc.get_opt("c.bin").unwrap(), None);
        assert!(loc.get("../escape").is_err());
    }

    #[test]
    fn local_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new().unwrap();
        contract(&storage.open(dir.path().join("store").to_str().unwrap()).unwrap());
        let url = format!("file://{}", dir.path().join("other").display());
        contract(&storage.open(&url).unwrap());
    }

    #[test]
    fn memory_backend_contract_and_sharing() {
        let storage = Storage::new().unwrap();
        contract(&storage.open("memory://t/store").unwrap());
        let a = storage.open("memory://shared").unwrap();
        a.put("k", Bytes::from_static(b"v")).unwrap();
        assert_eq!(storage.open("memory://shared").unwrap().get("k").unwrap(), "v");
    }

    #[test]
    fn rejects_unknown_schemes_and_relative_file_urls() {
        let storage = Storage::new().unwrap();
        assert!(matches!(storage.open("ftp://x/y"), Err(IoError::InvalidUrl { .. })));
        assert!(matches!(storage.open("file://relative"), Err(IoError::InvalidUrl { .. })));
        assert!(matches!(storage.open(""), Err(IoError::InvalidUrl { .. })));
    }
}
