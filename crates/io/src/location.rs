//! URLs to object stores, and a blocking facade over them for the synchronous engine.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
};

use tokio_util::sync::CancellationToken;

use crate::options::redact;
use crate::{Cancelled, IoError, StorageOptions};

/// Opens storage URLs and owns what they share: one store per backend and the async runtime.
///
/// Create one per process (or per test) and pass it down; `memory://` locations opened from the
/// same `Storage` see the same objects.
#[derive(Debug)]
pub struct Storage {
    runtime: Arc<tokio::runtime::Runtime>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    options: StorageOptions,
    cancel: CancellationToken,
}

/// Stops every storage operation of one [`Storage`] (its locations included): requests in
/// flight are dropped, multipart uploads aborted, and every later operation fails with
/// [`IoError::Cancelled`]. Cloned freely; a signal handler's thread holds one.
#[derive(Debug, Clone)]
pub struct Canceller(CancellationToken);

impl Canceller {
    /// Cancels; idempotent.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when [`Canceller::cancel`] is called (at once if it was): what a server
    /// awaits to start its graceful shutdown.
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }
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
    /// Objects larger than this are uploaded in blocks of this size.
    pub(crate) multipart_part_size: usize,
    /// First pause before retrying a create-only write.
    retry_backoff: std::time::Duration,
    /// True for network stores, where each request costs a round trip.
    remote: bool,
    /// True for local disk, where `root` is an absolute file-system path.
    pub(crate) local: bool,
    cancel: CancellationToken,
}

/// Threads of the runtime's blocking pool (local file IO).
const BLOCKING_THREADS: usize = 4;

/// Tries of a create-only write that failed with a retry-worthy error.
const CREATE_ATTEMPTS: u32 = 4;

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
    /// A storage context with default options (credentials only from the URL's defaults).
    pub fn new() -> Result<Self, IoError> {
        Self::with_options(StorageOptions::default())
    }

    /// A storage context with a small runtime: IO here waits on storage, it does not compute.
    pub fn with_options(options: StorageOptions) -> Result<Self, IoError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Local files are read and written on blocking threads. A few keep up with a disk;
            // tokio's default (up to 512) let 16 concurrent footer reads start 16 threads, and
            // each thread's allocator arena kept its own freed buffers resident.
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("batchscore-io")
            .enable_all()
            .build()
            .map_err(IoError::Runtime)?;
        Ok(Self {
            runtime: Arc::new(runtime),
            stores: Mutex::new(HashMap::new()),
            options,
            cancel: CancellationToken::new(),
        })
    }

    /// A handle that cancels every operation of this storage (see [`Canceller`]).
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// The options remote stores are built with.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// Removes credentials from a message: the configured secret values and the signatures and
    /// keys that URLs and connection strings carry.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = redact(text);
        for secret in self.options.secret_values() {
            text = text.replace(&secret, "***");
        }
        text
    }

    /// Opens a location: a plain path, `file:///abs/path`, `memory://name/path`,
    /// `az://container/path` (also `azure://`, `abfs[s]://container@account.dfs.core.windows.net/`,
    /// `https://account.blob.core.windows.net/container/path`), `s3://bucket/path` or
    /// `gs://bucket/path`.
    pub fn open(&self, url: &str) -> Result<Location, IoError> {
        let shown = redact(url.trim_end_matches('/'));
        let invalid =
            |reason: &str| IoError::InvalidUrl { url: shown.clone(), reason: reason.into() };
        let (backend, key, root, display) = if let Some(rest) = url.strip_prefix("memory://") {
            let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
            let root = Path::parse(path).map_err(|e| invalid(&e.to_string()))?;
            (Backend::Memory, format!("memory://{name}"), root, shown.clone())
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("file:// URLs need an absolute path"));
            }
            let abs = normalize_local(std::path::Path::new(path))?;
            local_root(url, &abs)?
        } else if url.contains("://") {
            let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
            let (scheme, path) =
                ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(&redact(&e.to_string())))?;
            let backend = match scheme {
                ObjectStoreScheme::MicrosoftAzure => Backend::Azure,
                ObjectStoreScheme::AmazonS3 => Backend::S3,
                ObjectStoreScheme::GoogleCloudStorage => Backend::Gcs,
                _ => {
                    return Err(invalid(
                        "unsupported scheme (supported: plain paths, file://, memory://, az://, \
                         azure://, abfs[s]://, https://ACCOUNT.blob|dfs.core.windows.net/, s3://, \
                         gs://)",
                    ));
                }
            };
            (backend, store_key(&parsed), path, shown.clone())
        } else {
            if url.is_empty() {
                return Err(invalid("empty path"));
            }
            let abs = normalize_local(std::path::Path::new(url))?;
            local_root(url, &abs)?
        };
        let remote = !matches!(backend, Backend::Local | Backend::Memory);
        let store = {
            let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            match stores.get(&key) {
                Some(store) => store.clone(),
                None => {
                    let store = self.build_store(backend, url).map_err(|e| invalid(&e))?;
                    stores.insert(key, store.clone());
                    store
                }
            }
        };
        Ok(Location {
            runtime: self.runtime.clone(),
            store,
            root,
            url: display,
            multipart_part_size: self.options.multipart_part_size,
            retry_backoff: self.options.retry().initial_backoff,
            remote,
            local: backend == Backend::Local,
            cancel: self.cancel.clone(),
        })
    }

    /// Builds the store of a URL; remote stores get the options, retries and a cap on requests
    /// in flight.
    fn build_store(&self, backend: Backend, url: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let o = &self.options;
        let limit = o.max_concurrent_requests;
        let hint = |e: object_store::Error| self.scrub(&e.to_string());
        let store: Arc<dyn ObjectStore> = match backend {
            Backend::Local => Arc::new(LocalFileSystem::new()),
            Backend::Memory => Arc::new(InMemory::new()),
            Backend::S3 => {
                let builder = o
                    .for_backend::<AmazonS3ConfigKey>()
                    .fold(AmazonS3Builder::new().with_url(url), |b, (k, v)| b.with_config(k, v));
                Arc::new(LimitStore::new(
                    builder.with_retry(o.retry_config()).build().map_err(hint)?,
                    limit,
                ))
            }
            Backend::Gcs => {
                let builder = o
                    .for_backend::<GoogleConfigKey>()
                    .fold(GoogleCloudStorageBuilder::new().with_url(url), |b, (k, v)| {
                        b.with_config(k, v)
                    });
                Arc::new(LimitStore::new(
                    builder.with_retry(o.retry_config()).build().map_err(hint)?,
                    limit,
                ))
            }
            Backend::Azure => {
                let builder = o
                    .for_backend::<AzureConfigKey>()
                    .fold(MicrosoftAzureBuilder::new().with_url(url), |b, (k, v)| {
                        b.with_config(k, v)
                    });
                let store = builder.with_retry(o.retry_config()).build().map_err(|e| {
                    let mut reason = hint(e);
                    if reason.contains("Account must be specified") {
                        reason.push_str(
                        ": set azure_storage_account_name (env AZURE_STORAGE_ACCOUNT_NAME), use \
                         abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH, or \
                         azure_storage_use_emulator=true for Azurite",
                    );
                    }
                    reason
                })?;
                Arc::new(LimitStore::new(store, limit))
            }
        };
        Ok(store)
    }
}

/// One store per container or bucket (and account): the URL up to its path, and for
/// `https://ACCOUNT.blob.core.windows.net/CONTAINER/...` the container too.
fn store_key(url: &url::Url) -> String {
    let authority = &url[url::Position::BeforeUsername..url::Position::AfterPort];
    let container = if url.scheme() == "https" {
        url.path_segments().and_then(|mut s| s.next()).unwrap_or_default()
    } else {
        ""
    };
    format!("{}://{authority}/{container}", url.scheme())
}

fn local_root(
    url: &str,
    abs: &std::path::Path,
) -> Result<(Backend, String, Path, String), IoError> {
    let root = Path::from_absolute_path(abs)
        .map_err(|e| IoError::InvalidUrl { url: url.into(), reason: e.to_string() })?;
    Ok((Backend::Local, "file".into(), root, abs.display().to_string()))
}

/// The bytes `range` of the object at `path`, refused (`Precondition`) when the object's version
/// tag is no longer `e_tag`: a file read at a plan's version, not whatever replaced it since.
pub(crate) async fn get_range_if(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    range: std::ops::Range<u64>,
    e_tag: Option<&str>,
) -> object_store::Result<Bytes> {
    match e_tag {
        None => store.get_range(path, range).await,
        Some(tag) => {
            let options = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(range)),
                if_match: Some(tag.to_string()),
                ..Default::default()
            };
            store.get_opts(path, options).await?.bytes().await
        }
    }
}

/// The kind of store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    Memory,
    Azure,
    S3,
    Gcs,
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

    /// True for network stores (Azure, S3, GCS), where each request costs a round trip worth
    /// batching; false for local disk and memory.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// True when `other` is this location or lies below it, in the same store: what this
    /// location lists includes what `other` holds.
    pub fn contains(&self, other: &Location) -> bool {
        Arc::ptr_eq(&self.store, &other.store) && other.root.prefix_match(&self.root).is_some()
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
            multipart_part_size: self.multipart_part_size,
            retry_backoff: self.retry_backoff,
            remote: self.remote,
            local: self.local,
            cancel: self.cancel.clone(),
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

    /// Runs a storage future to completion from synchronous code (a rayon worker or main),
    /// unless the storage is cancelled first: then the future is dropped (its requests with
    /// it) and the result is [`Cancelled`].
    pub(crate) fn block_on<F, T, E>(&self, future: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Cancelled>,
    {
        let cancel = self.cancel.clone();
        self.runtime.block_on(async move {
            let cancelled = std::pin::pin!(cancel.cancelled());
            let future = std::pin::pin!(future);
            match futures::future::select(cancelled, future).await {
                futures::future::Either::Left(((), _)) => Err(Cancelled.into()),
                futures::future::Either::Right((out, _)) => out,
            }
        })
    }

    /// Runs a future to completion even when the storage is cancelled: for the clean-up that
    /// cancellation itself needs (aborting a multipart upload), and the short commit of one.
    pub(crate) fn block_on_uncancelled<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// [`IoError::Cancelled`] once the storage is cancelled: callers check it before starting
    /// work that would end in storage requests.
    pub fn check_cancelled(&self) -> Result<(), IoError> {
        if self.cancel.is_cancelled() { Err(IoError::Cancelled) } else { Ok(()) }
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

    /// The bytes `range` of the object at `rel` (a bounded range: no suffix request, which
    /// some stores refuse).
    pub fn get_range(&self, rel: &str, range: std::ops::Range<u64>) -> Result<Bytes, IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        self.block_on(async move { store.get_range(&path, range).await })
            .map_err(|e| IoError::storage(self.url_of(rel), e))
    }

    /// Several byte ranges of the object at `rel`, in the order asked. Neighbouring ranges are
    /// fetched in one request (object_store coalesces ranges less than 1 MiB apart).
    pub fn get_ranges(
        &self,
        rel: &str,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        self.block_on(async move { store.get_ranges(&path, ranges).await })
            .map_err(|e| IoError::storage(self.url_of(rel), e))
    }

    /// Several whole objects, fetched concurrently (at most `concurrency` requests at once),
    /// in the order asked.
    pub fn get_many(&self, rels: &[&str], concurrency: usize) -> Vec<Result<Bytes, IoError>> {
        let fetches = rels.iter().map(|rel| async move {
            let path = self.path(rel)?;
            let store = self.store.clone();
            let got = async move { store.get(&path).await?.bytes().await }.await;
            got.map_err(|e| IoError::storage(self.url_of(rel), e))
        });
        let all = self.block_on(async {
            Ok::<_, IoError>(
                futures::stream::iter(fetches)
                    .buffered(concurrency.max(1))
                    .collect::<Vec<_>>()
                    .await,
            )
        });
        all.unwrap_or_else(|_| rels.iter().map(|_| Err(IoError::Cancelled)).collect())
    }

    /// The size of the object at `rel`, or `None` if it does not exist (one HEAD request).
    pub fn size_of(&self, rel: &str) -> Result<Option<u64>, IoError> {
        let path = self.path(rel)?;
        let store = self.store.clone();
        match self.block_on(async move { store.head(&path).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(IoError::storage(self.url_of(rel), e)),
        }
    }

    /// The object at `rel`, or `None` if it does not exist.
    pub fn get_opt(&self, rel: &str) -> Result<Option<Bytes>, IoError> {
        match self.get(rel) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(IoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// On local disk, refuses a write into a directory that makes no files (see
    /// `staging::probe_dir_of`) instead of letting object_store retry it forever.
    pub(crate) fn check_writable(&self, rel: &str) -> Result<(), IoError> {
        if !self.local {
            return Ok(());
        }
        let target = std::path::Path::new("/").join(self.path(rel)?.as_ref());
        crate::staging::probe_dir_of(&target).map_err(|e| IoError::Storage {
            url: self.url_of(rel),
            source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) },
        })
    }

    /// Writes `bytes` at `rel` in one atomic put: readers see the old object or the new one.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<(), IoError> {
        self.check_writable(rel)?;
        let path = self.path(rel)?;
        let store = self.store.clone();
        self.block_on(async move { store.put(&path, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| IoError::storage(self.url_of(rel), e))
    }

    /// Writes `bytes` at `rel` only if nothing is there yet; returns false if an object existed.
    ///
    /// This is the commit primitive: of concurrent writers exactly one succeeds. A create is not
    /// idempotent, so object_store does not retry it after a timeout or a dropped connection
    /// (the first try may have landed unseen); it is retried here, and "false" can then mean
    /// that our own earlier try wrote it. Every caller treats an existing object as written by
    /// an attempt of the same plan (identical bytes, or a fingerprint it checks).
    pub fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool, IoError> {
        self.check_writable(rel)?;
        let path = self.path(rel)?;
        let mut backoff = self.retry_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let store = self.store.clone();
            let (path, payload) = (path.clone(), PutPayload::from(bytes.clone()));
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            let error =
                match self.block_on(async move { store.put_opts(&path, payload, opts).await }) {
                    Ok(_) => return Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
                    Err(e) => IoError::storage(self.url_of(rel), e),
                };
            // On local disk a create writes `NAME#N` and links it into place; "not found" can
            // only mean that file vanished in between (a completed attempt swept it as a
            // killed attempt's leftover): writing again is safe.
            let vanished = self.local && crate::staging::vanished(&error);
            if attempt == CREATE_ATTEMPTS || !(error.is_retryable() || vanished) {
                return Err(error);
            }
            tracing::info!(url = %self.url_of(rel), attempt, "create-only write failed; retrying");
            std::thread::sleep(backoff);
            backoff *= 2;
        }
    }

    /// Removes the staging files (`NAME#N`) that object_store's local backend writes before
    /// renaming them into place, below `rel`; returns how many. A process killed between the
    /// write and the rename leaves one behind, invisible to listings through object_store but
    /// not to other readers. Other backends have no such files (an unfinished upload is not an
    /// object): nothing to do there.
    pub fn remove_staging_files(&self, rel: &str) -> Result<usize, IoError> {
        if !self.local {
            return Ok(0);
        }
        let dir = std::path::Path::new("/").join(self.path(rel)?.as_ref());
        crate::staging::remove_under(dir).map_err(|e| IoError::Storage {
            url: self.url_of(rel),
            source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) },
        })
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
    fn every_backend_keeps_the_contract() {
        let (_dir, storage, urls) = crate::backends::all("contract");
        for url in &urls {
            contract(&storage.open(url).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("other").display());
        contract(&storage.open(&url).unwrap());
    }

    #[test]
    fn a_cancelled_storage_fails_every_operation_and_aborts_uploads() {
        let (_dir, storage, urls) = crate::backends::all("cancel");
        for url in urls {
            let loc = storage.open(&url).unwrap();
            loc.put("a", Bytes::from_static(b"a")).unwrap();
            assert!(loc.check_cancelled().is_ok());
        }
        let canceller = storage.canceller();
        canceller.cancel();
        assert!(canceller.is_cancelled());
        let (_dir2, _, urls) = crate::backends::all("cancel");
        for url in urls {
            let loc = storage.open(&url).unwrap();
            assert!(matches!(loc.check_cancelled(), Err(IoError::Cancelled)));
            assert!(matches!(loc.get("a"), Err(IoError::Cancelled)), "{url}");
            assert!(matches!(loc.put("b", Bytes::from_static(b"b")), Err(IoError::Cancelled)));
            assert!(matches!(loc.put_if_absent("c", Bytes::new()), Err(IoError::Cancelled)));
            assert!(matches!(loc.list(""), Err(IoError::Cancelled)));
            assert!(
                loc.get_many(&["a", "b"], 2).iter().all(|r| matches!(r, Err(IoError::Cancelled)))
            );
        }
    }

    #[test]
    fn containment_follows_path_segments_within_one_store() {
        let storage = Storage::new().unwrap();
        let data = storage.open("/data/in").unwrap();
        assert!(data.contains(&storage.open("/data/in/out").unwrap()));
        assert!(data.contains(&storage.open("/data/in").unwrap()));
        assert!(!data.contains(&storage.open("/data/input").unwrap()), "segments, not strings");
        assert!(!data.contains(&storage.open("/data").unwrap()));
        assert!(!data.contains(&storage.open("memory://x/data/in/out").unwrap()));
    }

    #[test]
    fn staging_files_of_killed_local_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new().unwrap();
        let loc = storage.open(&dir.path().display().to_string()).unwrap();
        loc.put("run/part-00000.parquet", Bytes::from_static(b"part")).unwrap();
        // What a kill between object_store's staging write and its rename leaves.
        std::fs::write(dir.path().join("run/part-00001.parquet#1"), b"half").unwrap();
        std::fs::create_dir_all(dir.path().join("run/_receipts")).unwrap();
        std::fs::write(dir.path().join("run/_receipts/part-00001.json#3"), b"{").unwrap();
        std::fs::write(dir.path().join("run/keep#me"), b"not staging").unwrap();
        assert_eq!(loc.remove_staging_files("run").unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["_receipts", "keep#me", "part-00000.parquet"]);
        assert_eq!(loc.remove_staging_files("missing").unwrap(), 0);
        let memory = storage.open("memory://staging").unwrap();
        assert_eq!(memory.remove_staging_files("").unwrap(), 0);
    }

    #[test]
    fn memory_locations_of_one_storage_share_objects() {
        let storage = Storage::new().unwrap();
        let a = storage.open("memory://shared").unwrap();
        a.put("k", Bytes::from_static(b"v")).unwrap();
        assert_eq!(storage.open("memory://shared").unwrap().get("k").unwrap(), "v");
    }

    #[test]
    fn cloud_urls_parse_into_stores_and_roots() {
        let mut options = StorageOptions::default();
        options.set("azure_storage_account_name", "acct").unwrap();
        options.set("aws_region", "eu-west-1").unwrap();
        let storage = Storage::with_options(options).unwrap();
        for (url, root) in [
            ("az://container/a/b", "a/b"),
            ("azure://container/a", "a"),
            ("abfss://fs@acct.dfs.core.windows.net/x/y", "x/y"),
            ("https://acct.blob.core.windows.net/container/p", "p"),
            ("s3://bucket/k", "k"),
            ("https://s3.eu-west-1.amazonaws.com/bucket/k", "k"),
        ] {
            let loc = storage.open(url).unwrap();
            assert!(loc.is_remote());
            assert_eq!(loc.root.as_ref(), root, "{url}");
            assert_eq!(loc.url(), url);
        }
        assert!(!storage.open("memory://m").unwrap().is_remote());
        assert!(!storage.open("/tmp/x").unwrap().is_remote());
        // Without an account, Azure says how to give one; GCS without credentials fails too.
        let bare = Storage::new().unwrap();
        let err = bare.open("az://container/p").unwrap_err().to_string();
        assert!(err.contains("azure_storage_account_name"), "{err}");
        assert!(matches!(bare.open("az://bad.name/p"), Err(IoError::InvalidUrl { .. })));
        assert!(matches!(bare.open("https://example.com/x"), Err(IoError::InvalidUrl { .. })));
    }

    #[test]
    fn rejects_unknown_schemes_and_relative_file_urls() {
        let storage = Storage::new().unwrap();
        assert!(matches!(storage.open("ftp://x/y"), Err(IoError::InvalidUrl { .. })));
        assert!(matches!(storage.open("file://relative"), Err(IoError::InvalidUrl { .. })));
        assert!(matches!(storage.open(""), Err(IoError::InvalidUrl { .. })));
    }
}
