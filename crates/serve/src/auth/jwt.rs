//! Microsoft Entra ID access tokens: RS256 JWTs whose signing key is picked by `kid` from the
//! tenant's JSON Web Key Set, with `iss`, `aud`, `exp` and `nbf` checked ("Web APIs must validate
//! access tokens ... They must only accept tokens containing one of their AppId URIs as the
//! `aud` claim", Entra's access-token documentation).
//!
//! The key set is fetched on first use and then every `refresh` (Entra suggests 24 h); a token
//! signed with a key not in the set triggers one early fetch (keys rotate), at most once per
//! `min_refetch`, so tokens with invented `kid`s cannot make the service hammer the issuer.
//! When the set cannot be fetched, the keys already held stay in use; a token whose key is not
//! among them gets 503 + `Retry-After`, not 401, for as long as the last fetch failed: the
//! caller did nothing wrong, and Logic Apps and Stream Analytics take 401 as final. Requests
//! that waited for a fetch share its outcome. Redirects of the key set's URL are followed only
//! to https (or http on loopback), three at most.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use url::Url;

use crate::{ApiError, ServeError};

/// The largest key set read: Entra's is a few kilobytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The key set (`jwks_uri` of the issuer's OpenID metadata).
    pub jwks_url: Url,
    /// Accepted `iss` values (Entra: `https://sts.windows.net/{tenant}/` for v1.0 tokens,
    /// `https://login.microsoftonline.com/{tenant}/v2.0` for v2.0).
    pub issuers: Vec<String>,
    /// Accepted `aud` values: the service's App ID URI and client id.
    pub audiences: Vec<String>,
    /// How long a fetched key set is used before it is fetched again.
    pub refresh: Duration,
    /// The shortest time between two fetches caused by an unknown `kid`.
    pub min_refetch: Duration,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

impl JwtSettings {
    /// Settings for one Entra tenant: its v2.0 key set and both token versions' issuers.
    pub fn entra(tenant: &str, audiences: Vec<String>) -> Result<Self, ServeError> {
        let bad = |reason: String| ServeError::Config { setting: "entra-tenant", reason };
        if tenant.is_empty()
            || !tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            return Err(bad(format!("`{tenant}` is not a tenant id or domain")));
        }
        let jwks_url =
            Url::parse(&format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"))
                .map_err(|e| bad(e.to_string()))?;
        Self::new(
            jwks_url,
            vec![
                format!("https://sts.windows.net/{tenant}/"),
                format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            ],
            audiences,
        )
    }

    /// Settings with the default refresh (24 h), early refetch (5 min) and leeway (60 s). The
    /// key set must come over HTTPS, or over plain HTTP from a loopback address (tests).
    pub fn new(
        jwks_url: Url,
        issuers: Vec<String>,
        audiences: Vec<String>,
    ) -> Result<Self, ServeError> {
        if !safe_key_url(&jwks_url) {
            return Err(ServeError::Config {
                setting: "jwt-jwks-url",
                reason: format!(
                    "{jwks_url}: signing keys must come over https (plain http only from loopback)"
                ),
            });
        }
        if issuers.is_empty() || audiences.is_empty() {
            return Err(ServeError::Config {
                setting: "jwt-audience",
                reason: "tokens need at least one accepted issuer and one audience (the service's App ID URI)".into(),
            });
        }
        Ok(JwtSettings {
            jwks_url,
            issuers,
            audiences,
            refresh: Duration::from_secs(24 * 3600),
            min_refetch: Duration::from_secs(300),
            leeway_seconds: 60,
        })
    }
}

/// Where signing keys may come from: https, or plain http from a loopback address (tests).
fn safe_key_url(url: &Url) -> bool {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    url.scheme() == "https" || (url.scheme() == "http" && loopback)
}

/// Why a redirect of the key set's URL is not followed, if it is not: more than 3, or to
/// neither https nor loopback (a key set served over plain http elsewhere could be anyone's).
fn redirect_refused(to: &Url, followed: usize) -> Option<&'static str> {
    if followed >= 3 {
        Some("more than 3 redirects")
    } else if !safe_key_url(to) {
        Some("a redirect to neither https nor loopback")
    } else {
        None
    }
}

/// The claims read from a valid token; the rest are checked by the validation.
#[derive(Debug, Deserialize)]
struct Claims {
    oid: Option<String>,
    sub: Option<String>,
}

#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
    /// When the last fetch was tried, successful or not.
    tried: Option<Instant>,
    /// Why the last fetch failed; `None` after a successful one.
    failed: Option<String>,
}

/// Checks tokens against a cached key set.
pub struct JwtValidator {
    settings: JwtSettings,
    validation: Validation,
    client: reqwest::Client,
    keys: RwLock<KeySet>,
    /// One fetch at a time; the others wait and then read what it brought.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token comes from an issuer this service does not accept",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "the token is not signed with RS256"
        }
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss or aud)",
        _ => "the token is malformed",
    }
}

impl JwtValidator {
    pub fn new(settings: JwtSettings) -> Result<Self, ServeError> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&settings.audiences);
        validation.set_issuer(&settings.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_seconds;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                match redirect_refused(attempt.url(), attempt.previous().len()) {
                    None => attempt.follow(),
                    Some(why) => attempt.error(why),
                }
            }))
            .build()
            .map_err(|e| ServeError::Config { setting: "jwt-jwks-url", reason: e.to_string() })?;
        Ok(JwtValidator {
            settings,
            validation,
            client,
            keys: RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Validates `token` and returns its subject (`oid`, else `sub`).
    pub async fn validate(&self, token: &str) -> Result<String, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(describe(e.kind())))?;
        if header.alg != Algorithm::RS256 {
            return Err(ApiError::unauthorized(describe(&ErrorKind::InvalidAlgorithm)));
        }
        let kid =
            header.kid.ok_or_else(|| ApiError::unauthorized("the token has no key id (kid)"))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| ApiError::unauthorized(describe(e.kind())))?;
        Ok(data.claims.oid.or(data.claims.sub).unwrap_or_else(|| "unknown".into()))
    }

    /// The key `kid`, fetching the key set when it is stale or lacks it.
    async fn key(&self, kid: &str) -> Result<DecodingKey, ApiError> {
        if let Some(key) = self.cached(kid, false) {
            return Ok(key);
        }
        let tried_before = self.keys.read().map(|s| s.tried).unwrap_or_default();
        let _one = self.fetching.lock().await;
        // Another request may have fetched while this one waited: its outcome is this one's.
        if let Some(key) = self.cached(kid, false) {
            return Ok(key);
        }
        let fetched_meanwhile =
            self.keys.read().map(|s| s.tried).unwrap_or_default() != tried_before;
        if !fetched_meanwhile && self.may_fetch() {
            match self.fetch().await {
                Ok(keys) => {
                    let mut set = self.write();
                    set.keys = keys;
                    set.fetched = Some(Instant::now());
                    set.tried = set.fetched;
                    set.failed = None;
                }
                Err(reason) => {
                    tracing::warn!(url = %self.settings.jwks_url, %reason, "cannot fetch the token signing keys");
                    let mut set = self.write();
                    set.tried = Some(Instant::now());
                    set.failed = Some(reason);
                }
            }
        }
        // A stale set still verifies the keys it has.
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        // Unknown to the keys held: unknown for sure only if the last fetch worked.
        if self.keys.read().map(|s| s.failed.is_some() || s.fetched.is_none()).unwrap_or(true) {
            return Err(ApiError::unavailable(
                "keys_unavailable",
                "the token signing keys cannot be fetched now; retry later",
                5,
            ));
        }
        Err(ApiError::unauthorized("the token is signed with an unknown key"))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, kid: &str, stale_ok: bool) -> Option<DecodingKey> {
        let set = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = set.fetched.is_some_and(|t| t.elapsed() < self.settings.refresh);
        (fresh || stale_ok).then(|| set.keys.get(kid).cloned()).flatten()
    }

    /// The first fetch and scheduled refreshes always may; an unknown `kid` only after
    /// `min_refetch` since the last try.
    fn may_fetch(&self) -> bool {
        let set = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = set.fetched.is_none_or(|t| t.elapsed() >= self.settings.refresh);
        let rested = set.tried.is_none_or(|t| t.elapsed() >= self.settings.min_refetch);
        (stale && set.tried.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))) || rested
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let mut response = self
            .client
            .get(self.settings.jwks_url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| batchscore_io::error_chain(&e))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_key_set(&body)
    }
}

/// The signing keys of a JWKS document, by `kid`. Keys of other uses or types this build cannot
/// verify with are skipped rather than failing the set.
fn parse_key_set(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(&jwk)) else {
            continue;
        };
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err("the key set holds no usable signing key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_come_over_https_or_loopback() {
        let settings = |url: &str| {
            JwtSettings::new(Url::parse(url).unwrap(), vec!["i".into()], vec!["a".into()])
        };
        assert!(settings("https://login.microsoftonline.com/t/discovery/v2.0/keys").is_ok());
        assert!(settings("http://127.0.0.1:9/keys").is_ok());
        assert!(settings("http://localhost:9/keys").is_ok());
        assert!(settings("http://login.microsoftonline.com/keys").is_err());
        assert!(
            JwtSettings::new(Url::parse("https://x/k").unwrap(), vec![], vec!["a".into()]).is_err()
        );
        let entra =
            JwtSettings::entra("contoso.onmicrosoft.com", vec!["api://batchscore".into()]).unwrap();
        assert_eq!(entra.issuers[0], "https://sts.windows.net/contoso.onmicrosoft.com/");
        assert!(JwtSettings::entra("a/b", vec!["x".into()]).is_err());
    }

    /// Regression: a key set URL that redirected was followed anywhere.
    #[test]
    fn redirects_go_to_https_or_loopback_only() {
        let to = |url: &str, n| redirect_refused(&Url::parse(url).unwrap(), n);
        assert_eq!(to("https://login.microsoftonline.com/t/keys", 0), None);
        assert_eq!(to("http://127.0.0.1:9/keys", 2), None);
        assert!(to("http://keys.example.net/keys", 0).is_some());
        assert!(to("file:///etc/passwd", 0).is_some());
        assert!(to("https://login.microsoftonline.com/t/keys", 3).is_some());
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let set = br#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"XYZ","kid":"odd"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        let keys = parse_key_set(set).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["k1"]);
        assert!(parse_key_set(br#"{"keys":[]}"#).is_err());
        assert!(parse_key_set(b"<html>").is_err());
    }
}
