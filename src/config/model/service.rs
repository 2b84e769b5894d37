//! A service (a machine principal such as a CI pipeline) and the OIDC trust that lets it
//! authenticate with its provider's ID tokens.

use std::path::PathBuf;

use crate::certificate::Requirement;

/// A machine principal, such as a CI pipeline.
#[derive(Debug, Clone, Default)]
pub struct Service {
    /// Where the service block starts in the config file.
    pub line: usize,
    /// Trust OIDC ID tokens from a CI provider (beside static tokens).
    pub oidc: Option<Oidc>,
    /// The client certificate its requests must come with, beside its token or ID token
    /// (`certificate { subject | dns | uri }`): what keeps its credentials from working on
    /// any machine but the runner's.
    pub certificate: Option<Requirement>,
}

#[derive(Debug, Clone)]
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub jwks: Jwks,
    /// Claims the token must carry with exactly these values, e.g. repository = "acme/infra";
    /// at least one of them is an [`IDENTITY_CLAIMS`] claim.
    pub claims: Vec<(String, String)>,
}

/// Where a service's OIDC signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwks {
    /// `jwks_file`: read once, at start.
    File(PathBuf),
    /// `jwks_url`: fetched over HTTPS at start and again when a token names an unknown key.
    Url {
        url: String,
        /// `jwks_ca_file`: the only certificate authorities trusted for this URL (PEM); `None`
        /// trusts the usual public ones.
        ca_file: Option<PathBuf>,
    },
}

/// The claims that bind a token to one repository or project (GitHub: `repository`,
/// `repository_id`; GitLab: `project_path`, `project_id`; any provider: `sub`). An `oidc`
/// block must require one of them: issuer and audience alone are shared by every repository
/// of the provider.
pub const IDENTITY_CLAIMS: &[&str] = &[
    "sub",
    "repository",
    "repository_id",
    "project_path",
    "project_id",
];
