//! Who may call: API keys (`Authorization: Bearer <key>`, as Azure ML online endpoints take
//! them, several at once so keys can be rotated) and Microsoft Entra ID access tokens (a Logic
//! App's managed identity), checked by [`Authenticator`] in the service's auth middleware.
//!
//! Keys are kept only as SHA-256 digests and compared in constant time, so neither the key nor
//! its length leaks through timing, logs or `Debug`. Tokens are checked by [`jwt`].

pub mod jwt;

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use jwt::{JwtSettings, JwtValidator};

use crate::{ApiError, ServeError};

/// The shortest key accepted: a guessable key is worse than none, since it looks safe.
const MIN_KEY_LEN: usize = 16;

/// Accepted API keys, as digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Distinct characters a key must have: `aaaaaaaaaaaaaaaa` or `1212121212121212` is as good as
/// no key.
const MIN_DISTINCT: usize = 8;

/// What makes `key` unfit, if anything.
fn weakness(key: &str) -> Option<String> {
    if key.len() < MIN_KEY_LEN {
        return Some(format!("is shorter than {MIN_KEY_LEN} characters"));
    }
    if key.contains(char::is_whitespace) {
        return Some("contains spaces".into());
    }
    let distinct: std::collections::HashSet<char> = key.chars().collect();
    if distinct.len() < MIN_DISTINCT {
        return Some(format!("has fewer than {MIN_DISTINCT} different characters"));
    }
    None
}

impl ApiKeys {
    /// Keys separated by commas or newlines (an environment variable or a file); blank lines
    /// and lines starting with `#` are skipped. Every key must have at least 16 characters and
    /// no spaces.
    pub fn parse(text: &str) -> Result<Self, ServeError> {
        let mut digests = Vec::new();
        for (i, key) in text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .enumerate()
        {
            if let Some(weak) = weakness(key) {
                // The key itself is never quoted: only its position.
                return Err(ServeError::Config {
                    setting: "api-keys",
                    reason: format!("key #{} {weak}; make one with `openssl rand -hex 24`", i + 1),
                });
            }
            digests.push(digest(key));
        }
        Ok(ApiKeys { digests })
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The 1-based number of the key `presented` is, if any. Every stored digest is compared,
    /// each in constant time.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let presented = digest(presented);
        let mut found = 0usize;
        for (i, stored) in self.digests.iter().enumerate() {
            let hit = usize::from(stored.ct_eq(&presented).unwrap_u8());
            found |= hit * (i + 1);
        }
        (found != 0).then_some(found)
    }
}

/// Who a request came from, for the access log (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The service runs without authentication (loopback only).
    Anonymous,
    /// The n-th configured API key.
    ApiKey(usize),
    /// An Entra ID token's subject: the caller's object id (`oid`), else `sub`.
    Token(String),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::ApiKey(n) => write!(f, "api-key#{n}"),
            Principal::Token(subject) => write!(f, "token:{subject}"),
        }
    }
}

/// The service's authentication: keys, tokens, or (on loopback only) nothing.
#[derive(Debug)]
pub struct Authenticator {
    keys: ApiKeys,
    jwt: Option<JwtValidator>,
}

impl Authenticator {
    pub fn new(keys: ApiKeys, jwt: Option<JwtSettings>) -> Result<Self, ServeError> {
        let jwt = jwt.map(JwtValidator::new).transpose()?;
        Ok(Authenticator { keys, jwt })
    }

    /// True when no key and no token issuer is configured: every request is let in.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.jwt.is_none()
    }

    /// Checks an `Authorization` header.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Result<Principal, ApiError> {
        if self.is_open() {
            return Ok(Principal::Anonymous);
        }
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized("missing `Authorization: Bearer <key or token>`"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer <key or token>`")
            })?;
        // A key first (a digest lookup): a key with two dots looked like a JWT and could not be
        // used once tokens were configured. Then a JWT, which has three dot-separated parts.
        if let Some(n) = self.keys.find(token) {
            return Ok(Principal::ApiKey(n));
        }
        if let (Some(jwt), 2) = (&self.jwt, token.matches('.').count()) {
            return jwt.validate(token).await.map(Principal::Token);
        }
        match self.keys.is_empty() {
            true => Err(ApiError::unauthorized("expected an Entra ID access token")),
            false => Err(ApiError::unauthorized("unknown API key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_position_and_never_echoed() {
        let keys =
            ApiKeys::parse("# rotated monthly\nfirst-key-0123456789\n, second-key-0123456789\n")
                .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.find("first-key-0123456789"), Some(1));
        assert_eq!(keys.find("second-key-0123456789"), Some(2));
        assert_eq!(keys.find("second-key-012345678"), None);
        assert_eq!(keys.find(""), None);
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
        let short = ApiKeys::parse("ok-key-0123456789,short").unwrap_err().to_string();
        assert!(short.contains("key #2") && !short.contains("short,"), "{short}");
        // Regression: sixteen equal characters were accepted.
        for weak in ["aaaaaaaaaaaaaaaa", "1212121212121212121212", "abcabcabcabcabcabc"] {
            let err = ApiKeys::parse(weak).unwrap_err().to_string();
            assert!(err.contains("different characters") && err.contains("openssl rand"), "{err}");
            assert!(!err.contains(weak), "the key was quoted: {err}");
        }
    }

    #[tokio::test]
    async fn bearer_keys_are_checked() {
        let auth =
            Authenticator::new(ApiKeys::parse("first-key-0123456789").unwrap(), None).unwrap();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert_eq!(
            auth.check(Some(&header("Bearer first-key-0123456789"))).await.unwrap(),
            Principal::ApiKey(1)
        );
        assert_eq!(
            auth.check(Some(&header("bearer first-key-0123456789"))).await.unwrap(),
            Principal::ApiKey(1)
        );
        for bad in
            ["Bearer wrong-key-0123456789", "Basic Zmlyc3Qta2V5", "Bearer ", "first-key-0123456789"]
        {
            let e = auth.check(Some(&header(bad))).await.unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
        }
        assert_eq!(auth.check(None).await.unwrap_err().status, 401);
        let open = Authenticator::new(ApiKeys::default(), None).unwrap();
        assert_eq!(open.check(None).await.unwrap(), Principal::Anonymous);
    }
}
