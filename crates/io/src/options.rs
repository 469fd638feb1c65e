//! Options for remote stores: credentials, retries, request limits and upload sizes.
//!
//! Option keys are object_store's own (`azure_storage_account_name`, `aws_region`,
//! `google_service_account`, client keys such as `timeout`), so the names users know from the
//! Rust, Python and Spark object-store ecosystems work unchanged. Values may be secrets: they
//! are never printed; [`StorageOptions::redacted`] shows which keys are set and hides secret
//! values.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;
use object_store::{BackoffConfig, RetryConfig};

use crate::IoError;

/// Environment variable prefixes object_store reads its options from.
const ENV_PREFIXES: [&str; 3] = ["AZURE_", "AWS_", "GOOGLE_"];

/// Validated options for remote stores. Local and in-memory stores ignore them.
#[derive(Clone)]
pub struct StorageOptions {
    /// object_store option keys (lower case) to values; every key is known to some backend.
    options: BTreeMap<String, String>,
    retry: RetrySettings,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) multipart_part_size: usize,
}

/// The settings that say who a process is to Microsoft Entra ID, as storage reads them:
/// workload identity (client id, tenant, federated token file), a service principal (client
/// id, secret, tenant) or a managed identity (optionally chosen by client id, object id or
/// resource id, at an overridable endpoint).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AzureIdentity {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
    pub federated_token_file: Option<String>,
    pub msi_endpoint: Option<String>,
    pub object_id: Option<String>,
    pub msi_resource_id: Option<String>,
}

impl std::fmt::Debug for AzureIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureIdentity")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("tenant_id", &self.tenant_id)
            .field("authority_host", &self.authority_host)
            .field("federated_token_file", &self.federated_token_file)
            .field("msi_endpoint", &self.msi_endpoint)
            .field("object_id", &self.object_id)
            .field("msi_resource_id", &self.msi_resource_id)
            .finish()
    }
}

/// Retries of failed requests: attempts, total time, and the exponential backoff between them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    pub max_retries: usize,
    /// No retry starts after this long since the first attempt.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let retry = RetryConfig::default();
        Self {
            max_retries: retry.max_retries,
            timeout: retry.retry_timeout,
            initial_backoff: retry.backoff.init_backoff,
            max_backoff: retry.backoff.max_backoff,
        }
    }
}

/// Default cap on requests in flight per store: enough to hide latency, few enough not to be
/// throttled by the service.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 32;
/// Default size of the blocks of a multipart upload (and the size from which a part is uploaded
/// in blocks rather than in one request).
pub const DEFAULT_MULTIPART_PART_SIZE: usize = 16 * 1024 * 1024;
/// S3 rejects smaller multipart blocks (except the last); smaller sizes only add requests.
const MIN_MULTIPART_PART_SIZE: usize = 64 * 1024;

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            options: BTreeMap::new(),
            retry: RetrySettings::default(),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            multipart_part_size: DEFAULT_MULTIPART_PART_SIZE,
        }
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageOptions")
            .field("options", &self.redacted())
            .field("retry", &self.retry)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("multipart_part_size", &self.multipart_part_size)
            .finish()
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> IoError {
    IoError::InvalidOption { key: key.to_string(), reason: reason.into() }
}

/// True for keys whose values are credentials.
fn is_secret(key: &str) -> bool {
    ["key", "secret", "token", "sas", "password", "credential", "signature"]
        .iter()
        .any(|word| key.contains(word))
        && !key.ends_with("_id")
        && !key.ends_with("_file")
        && !key.ends_with("_path")
        && !key.ends_with("token_service_url")
}

/// True when some backend (Azure, S3, GCS, or the HTTP client they share) knows the key.
fn is_known_key(key: &str) -> bool {
    AzureConfigKey::from_str(key).is_ok()
        || AmazonS3ConfigKey::from_str(key).is_ok()
        || GoogleConfigKey::from_str(key).is_ok()
}

impl StorageOptions {
    /// Sets one object_store option; unknown keys are rejected (a typo is not silently ignored).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<(), IoError> {
        let key = key.trim().to_ascii_lowercase();
        if !is_known_key(&key) {
            return Err(invalid(
                &key,
                "not an object_store option of Azure, S3 or GCS (e.g. azure_storage_account_name, \
                 aws_region, google_service_account, timeout)",
            ));
        }
        self.options.insert(key, value.into());
        Ok(())
    }

    /// Sets options from `KEY=VALUE` environment variables named as object_store reads them
    /// (`AZURE_*`, `AWS_*`, `GOOGLE_*`); variables that name no option are ignored, as
    /// object_store's own `from_env` does.
    pub fn set_from_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            if ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
                let _ = self.set(&name, value);
            } else if name == "IDENTITY_ENDPOINT" || name == "MSI_ENDPOINT" {
                // Managed identity endpoints of App Service / Azure Functions / Batch.
                let _ = self.set("azure_msi_endpoint", value);
            }
        }
    }

    /// Retry policy for transient faults (5xx, 429, timeouts, connection resets).
    pub fn set_retry(&mut self, retry: RetrySettings) -> Result<(), IoError> {
        if retry.initial_backoff > retry.max_backoff {
            return Err(invalid("retry", "initial backoff is longer than max backoff"));
        }
        if retry.initial_backoff.is_zero() {
            return Err(invalid("retry", "initial backoff must be positive"));
        }
        self.retry = retry;
        Ok(())
    }

    /// The retry policy.
    pub fn retry(&self) -> RetrySettings {
        self.retry
    }

    /// object_store's form of the retry policy.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.retry.initial_backoff,
                max_backoff: self.retry.max_backoff,
                base: 2.0,
            },
            max_retries: self.retry.max_retries,
            retry_timeout: self.retry.timeout,
        }
    }

    /// Requests in flight per store at most.
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// Block size of multipart uploads.
    pub fn multipart_part_size(&self) -> usize {
        self.multipart_part_size
    }

    /// Requests in flight per store at most.
    pub fn set_max_concurrent_requests(&mut self, n: usize) -> Result<(), IoError> {
        if n == 0 {
            return Err(invalid("max_concurrent_requests", "must be at least 1"));
        }
        self.max_concurrent_requests = n;
        Ok(())
    }

    /// Block size of multipart uploads; objects up to this size are written in one request.
    pub fn set_multipart_part_size(&mut self, bytes: usize) -> Result<(), IoError> {
        if bytes < MIN_MULTIPART_PART_SIZE {
            return Err(invalid(
                "multipart_part_size",
                format!("{bytes} bytes is below the minimum of {MIN_MULTIPART_PART_SIZE}"),
            ));
        }
        self.multipart_part_size = bytes;
        Ok(())
    }

    /// The options with secret values replaced by `***`, for manifests and logs.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), if is_secret(k) { "***".into() } else { redact(v) }))
            .collect()
    }

    /// The Azure identity settings, under whichever of object_store's aliases they were given
    /// (`azure_client_id`, `AZURE_CLIENT_ID`, `client_id`, ...): what another Azure service's
    /// client (Azure Batch) needs to sign in the way storage does.
    pub fn azure_identity(&self) -> AzureIdentity {
        let mut id = AzureIdentity::default();
        for (key, value) in self.for_backend::<AzureConfigKey>() {
            let slot = match key {
                AzureConfigKey::ClientId => &mut id.client_id,
                AzureConfigKey::ClientSecret => &mut id.client_secret,
                AzureConfigKey::AuthorityId => &mut id.tenant_id,
                AzureConfigKey::AuthorityHost => &mut id.authority_host,
                AzureConfigKey::FederatedTokenFile => &mut id.federated_token_file,
                AzureConfigKey::MsiEndpoint => &mut id.msi_endpoint,
                AzureConfigKey::ObjectId => &mut id.object_id,
                AzureConfigKey::MsiResourceId => &mut id.msi_resource_id,
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        id
    }

    /// The options one backend understands, with its parsed key type.
    pub(crate) fn for_backend<K: FromStr>(&self) -> impl Iterator<Item = (K, &str)> {
        self.options.iter().filter_map(|(k, v)| Some((K::from_str(k).ok()?, v.as_str())))
    }

    /// Secret values set, so messages can be scrubbed of them.
    pub(crate) fn secret_values(&self) -> Vec<String> {
        self.options
            .iter()
            .filter(|(k, v)| is_secret(k) && v.len() >= 4)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Removes credentials from a message: SAS signatures and tokens in URLs, account keys in
/// connection strings, AWS presigned-URL signatures, and passwords in URLs
/// (`http://user:password@proxy:8080`, as `proxy_url` takes them).
pub fn redact(text: &str) -> String {
    redact_markers(&redact_userinfo(text))
}

/// Replaces the password of every `scheme://user:password@host` in `text` with `***`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let authority_start = found + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        match authority.rfind('@').and_then(|at| Some((at, authority[..at].find(':')?))) {
            Some((at, colon)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact_markers(text: &str) -> String {
    const MARKERS: [&str; 6] = [
        "sig=",
        "AccountKey=",
        "SharedAccessSignature=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
    ];
    let mut out = text.to_string();
    for marker in MARKERS {
        let mut from = 0;
        while let Some(found) = out[from..].find(marker) {
            let start = from + found + marker.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == ';' || c == ')' || c == '"' || c.is_whitespace())
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// Shortens the XML error documents Azure and S3 answer with to `Code: message`, so an error
/// chain stays readable on a terminal.
pub fn compact_service_errors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<?xml") {
        let Some(end) = rest[start..].find("</Error>").map(|e| start + e + "</Error>".len()) else {
            break;
        };
        let doc = &rest[start..end];
        let tag = |name: &str| {
            let open = format!("<{name}>");
            let from = doc.find(&open)? + open.len();
            let to = from + doc[from..].find(&format!("</{name}>"))?;
            Some(doc[from..to].lines().next().unwrap_or_default().trim().to_string())
        };
        out.push_str(&rest[..start]);
        match (tag("Code"), tag("Message")) {
            (Some(code), Some(message)) => out.push_str(&format!("{code}: {message}")),
            (Some(code), None) => out.push_str(&code),
            _ => out.push_str(doc),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_identity_reads_every_alias() {
        let mut o = StorageOptions::default();
        o.set_from_env([
            ("AZURE_CLIENT_ID".to_string(), "cid".to_string()),
            ("AZURE_TENANT_ID".to_string(), "tid".to_string()),
            ("AZURE_FEDERATED_TOKEN_FILE".to_string(), "/t".to_string()),
            ("IDENTITY_ENDPOINT".to_string(), "http://127.0.0.1:1/token".to_string()),
        ]);
        o.set("azure_client_secret", "s3cret").unwrap();
        let id = o.azure_identity();
        assert_eq!(id.client_id.as_deref(), Some("cid"));
        assert_eq!(id.tenant_id.as_deref(), Some("tid"));
        assert_eq!(id.federated_token_file.as_deref(), Some("/t"));
        assert_eq!(id.msi_endpoint.as_deref(), Some("http://127.0.0.1:1/token"));
        assert!(!format!("{id:?}").contains("s3cret"));
    }

    #[test]
    fn keys_are_validated_and_secrets_redacted() {
        let mut o = StorageOptions::default();
        o.set("AZURE_STORAGE_ACCOUNT_NAME", "acct").unwrap();
        o.set("azure_storage_account_key", "c2VjcmV0").unwrap();
        o.set("aws_secret_access_key", "abc123").unwrap();
        o.set("timeout", "30s").unwrap();
        o.set("azure_client_id", "id-1").unwrap();
        assert!(matches!(
            o.set("azure_storage_acount_name", "x"),
            Err(IoError::InvalidOption { .. })
        ));
        let shown = o.redacted();
        assert_eq!(shown["azure_storage_account_name"], "acct");
        assert_eq!(shown["azure_client_id"], "id-1");
        assert_eq!(shown["azure_storage_account_key"], "***");
        assert_eq!(shown["aws_secret_access_key"], "***");
        assert!(!format!("{o:?}").contains("c2VjcmV0"));
        let azure: Vec<(AzureConfigKey, &str)> = o.for_backend().collect();
        assert!(azure.iter().any(|(k, _)| *k == AzureConfigKey::AccountName));
        assert!(!azure.iter().any(|(_, v)| *v == "abc123"));
    }

    #[test]
    fn env_sets_known_variables_only() {
        let mut o = StorageOptions::default();
        o.set_from_env([
            ("AZURE_STORAGE_USE_EMULATOR".to_string(), "true".to_string()),
            ("AZURE_NOT_AN_OPTION".to_string(), "x".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(o.redacted().keys().collect::<Vec<_>>(), vec!["azure_storage_use_emulator"]);
    }

    #[test]
    fn redact_hides_passwords_in_urls() {
        assert_eq!(
            redact("proxy http://user:Pl4nted@proxy.local:8080/x and https://a.b/c"),
            "proxy http://user:***@proxy.local:8080/x and https://a.b/c"
        );
        assert_eq!(redact("\"socks5://u:p@h\""), "\"socks5://u:***@h\"");
        assert_eq!(redact("http://user@host/x"), "http://user@host/x", "no password");
        assert_eq!(redact("az://c/p@2x"), "az://c/p@2x", "an @ in the path is not userinfo");
        let mut o = StorageOptions::default();
        o.set("proxy_url", "http://user:Pl4nted@127.0.0.1:3128").unwrap();
        assert_eq!(o.redacted()["proxy_url"], "http://user:***@127.0.0.1:3128");
    }

    #[test]
    fn redact_scrubs_signatures() {
        let text = "PUT http://h/c/b?sv=2021&sig=abc%2Fdef&se=x failed; AccountKey=k3y; next";
        let clean = redact(text);
        assert!(!clean.contains("abc%2Fdef") && !clean.contains("k3y"), "{clean}");
        assert!(clean.contains("sig=***&se=x"), "{clean}");
    }

    #[test]
    fn service_errors_are_compacted() {
        let text = "403 Forbidden: <?xml version=\"1.0\"?>\n<Error>\n  <Code>AuthorizationFailure</Code>\n  \
                    <Message>Server failed.\nRequestId:1</Message>\n</Error> (end)";
        assert_eq!(
            compact_service_errors(text),
            "403 Forbidden: AuthorizationFailure: Server failed. (end)"
        );
        assert_eq!(compact_service_errors("plain"), "plain");
    }

    #[test]
    fn limits_are_checked() {
        let mut o = StorageOptions::default();
        assert!(o.set_max_concurrent_requests(0).is_err());
        assert!(o.set_multipart_part_size(1000).is_err());
        let bad = RetrySettings {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(1),
            ..RetrySettings::default()
        };
        assert!(o.set_retry(bad).is_err());
    }
}
