//! Entra ID tokens for the Batch service, from the same settings, in the same order, as
//! object_store's Azure storage credentials: workload identity (client id, tenant, federated
//! token file), then a service principal (client id, secret, tenant), then a managed identity
//! through the instance metadata service (IMDS), chosen by client id, object id or resource id.
//!
//! Hand-written rather than taken from `azure_identity` 1.0: that crate fixes the IMDS address
//! at 169.254.169.254 (its only override switches to App Service's protocol), so a test could
//! not drive the path a pool node takes, and it brings a second HTTP pipeline (`azure_core`,
//! native TLS by default) for two requests; object_store's providers, which storage uses, are
//! private to it. These are the same two documented requests.

use std::time::{Duration, SystemTime};

use batchscore_io::AzureIdentity;
use reqwest::blocking::Client;
use serde::Deserialize;

use crate::azure::BatchError;
use crate::azure::client::{Retry, transport_reason};
use crate::azure::error::is_transient_status;

/// The instance metadata service of Azure VMs (Batch nodes).
const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2019-08-01";
const AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// A bearer token and when it stops working.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl AccessToken {
    /// True when the token ends within `margin`: fetch a new one before using it.
    pub fn expires_within(&self, margin: Duration) -> bool {
        SystemTime::now() + margin >= self.expires_at
    }
}

/// Who the job manager is to Entra ID.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Kubernetes workload identity: a federated token file as the client assertion.
    Workload { client_id: String, tenant_id: String, token_file: String, authority: String },
    /// A service principal with a client secret.
    ServicePrincipal { client_id: String, secret: String, tenant_id: String, authority: String },
    /// A managed identity from IMDS (or the endpoint given); `selector` picks one of several
    /// user-assigned identities (`client_id`, `object_id` or `msi_res_id`).
    ManagedIdentity { endpoint: String, selector: Option<(&'static str, String)> },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Entra ID: seconds from now.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    /// IMDS: seconds since the epoch, as a string.
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

fn seconds(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

impl Credential {
    /// The credential `id` describes, in object_store's order.
    pub fn from_identity(id: &AzureIdentity) -> Self {
        let authority = id
            .authority_host
            .clone()
            .unwrap_or_else(|| AUTHORITY_HOST.to_string())
            .trim_end_matches('/')
            .to_string();
        if let (Some(client_id), Some(tenant_id), Some(token_file)) =
            (&id.client_id, &id.tenant_id, &id.federated_token_file)
        {
            return Credential::Workload {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file: token_file.clone(),
                authority,
            };
        }
        if let (Some(client_id), Some(secret), Some(tenant_id)) =
            (&id.client_id, &id.client_secret, &id.tenant_id)
        {
            return Credential::ServicePrincipal {
                client_id: client_id.clone(),
                secret: secret.clone(),
                tenant_id: tenant_id.clone(),
                authority,
            };
        }
        let selector = match (&id.client_id, &id.object_id, &id.msi_resource_id) {
            (Some(c), _, _) => Some(("client_id", c.clone())),
            (None, Some(o), _) => Some(("object_id", o.clone())),
            (None, None, Some(r)) => Some(("msi_res_id", r.clone())),
            (None, None, None) => None,
        };
        Credential::ManagedIdentity {
            endpoint: id.msi_endpoint.clone().unwrap_or_else(|| IMDS_ENDPOINT.to_string()),
            selector,
        }
    }

    /// Which identity, for messages (never a secret).
    pub fn describe(&self) -> String {
        match self {
            Credential::Workload { client_id, .. } => {
                format!("workload identity (client id {client_id})")
            }
            Credential::ServicePrincipal { client_id, .. } => {
                format!("service principal (client id {client_id})")
            }
            Credential::ManagedIdentity { endpoint, selector } => match selector {
                Some((kind, value)) => format!("managed identity ({kind} {value}) at {endpoint}"),
                None => format!("the managed identity at {endpoint}"),
            },
        }
    }

    /// A token for `resource` (e.g. `https://batch.core.windows.net/`).
    pub fn token(
        &self,
        http: &Client,
        resource: &str,
        retry: &Retry,
    ) -> Result<AccessToken, BatchError> {
        let fail = |reason: String, transient: bool| BatchError::Token {
            source_name: self.describe(),
            reason,
            transient,
        };
        let response = retry.run(|| {
            let request = match self {
                Credential::ManagedIdentity { endpoint, selector } => {
                    let mut query = vec![("api-version", IMDS_API_VERSION), ("resource", resource)];
                    if let Some((kind, value)) = selector {
                        query.push((kind, value.as_str()));
                    }
                    http.get(endpoint).header("Metadata", "true").query(&query)
                }
                Credential::Workload { client_id, tenant_id, token_file, authority } => {
                    // Kubernetes rotates the projected token: read it for every request.
                    let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                        let reason =
                            format!("cannot read the federated token file {token_file}: {e}");
                        (fail(reason, false), false)
                    })?;
                    let scope = format!("{}/.default", resource);
                    http.post(format!("{authority}/{tenant_id}/oauth2/v2.0/token")).form(&[
                        ("client_id", client_id.as_str()),
                        ("scope", scope.as_str()),
                        ("grant_type", "client_credentials"),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                    ])
                }
                Credential::ServicePrincipal { client_id, secret, tenant_id, authority } => {
                    let scope = format!("{}/.default", resource);
                    http.post(format!("{authority}/{tenant_id}/oauth2/v2.0/token")).form(&[
                        ("client_id", client_id.as_str()),
                        ("client_secret", secret.as_str()),
                        ("scope", scope.as_str()),
                        ("grant_type", "client_credentials"),
                    ])
                }
            };
            match request.send() {
                Err(e) => Err((fail(transport_reason(&e), true), true)),
                Ok(r) if r.status().is_success() => Ok(r),
                Ok(r) => {
                    let status = r.status().as_u16();
                    // IMDS answers 404 and 410 while the identity is still being attached.
                    let transient = is_transient_status(status) || status == 404 || status == 410;
                    let body = r.text().unwrap_or_default();
                    Err((
                        fail(format!("HTTP {status}: {}", first_line(&body)), transient),
                        transient,
                    ))
                }
            }
        })?;
        let body: TokenResponse =
            response.json().map_err(|e| fail(format!("the answer is not a token: {e}"), true))?;
        let now = SystemTime::now();
        let expires_at = if let Some(on) = body.expires_on.as_ref().and_then(seconds) {
            SystemTime::UNIX_EPOCH + Duration::from_secs(on)
        } else {
            now + Duration::from_secs(body.expires_in.as_ref().and_then(seconds).unwrap_or(300))
        };
        Ok(AccessToken { secret: body.access_token, expires_at })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> AzureIdentity {
        AzureIdentity::default()
    }

    #[test]
    fn the_chain_follows_object_stores_order() {
        let mi = Credential::from_identity(&id());
        assert_eq!(
            mi,
            Credential::ManagedIdentity { endpoint: IMDS_ENDPOINT.into(), selector: None }
        );
        let uami = Credential::from_identity(&AzureIdentity {
            client_id: Some("cid".into()),
            msi_endpoint: Some("http://127.0.0.1:9/token".into()),
            ..id()
        });
        assert_eq!(
            uami,
            Credential::ManagedIdentity {
                endpoint: "http://127.0.0.1:9/token".into(),
                selector: Some(("client_id", "cid".into()))
            }
        );
        let sp = Credential::from_identity(&AzureIdentity {
            client_id: Some("cid".into()),
            client_secret: Some("s3cret".into()),
            tenant_id: Some("tid".into()),
            ..id()
        });
        assert!(matches!(sp, Credential::ServicePrincipal { .. }));
        assert!(!format!("{sp:?}").contains("s3cret"));
        let wi = Credential::from_identity(&AzureIdentity {
            client_id: Some("cid".into()),
            client_secret: Some("s".into()),
            tenant_id: Some("tid".into()),
            federated_token_file: Some("/var/run/token".into()),
            ..id()
        });
        assert!(matches!(wi, Credential::Workload { .. }), "workload identity comes first");
    }
}
