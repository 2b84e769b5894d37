//! The signing keys a service trusts: a JWKS read from a file at start, or fetched over HTTPS
//! and kept in memory. A fetched set is fetched again when a token names a key it does not
//! hold (a provider rotating its keys) and when it is older than [`MAX_AGE`], never more
//! often than once per [`REFETCH_INTERVAL`], so tokens naming made-up key ids cannot make
//! the server hammer the provider. A failed fetch keeps the keys it had.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The least time between two fetches of one service's JWKS.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// A fetched JWKS older than this is fetched again on its next use, so a key the provider
/// withdrew stops verifying tokens within about this time.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// The largest JWKS document accepted (providers publish a few kilobytes).
pub const MAX_SIZE: usize = 1024 * 1024;
/// How long one fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Monotonic time for the refetch limits. Tests move it forward instead of sleeping.
#[derive(Debug)]
pub struct Clock {
    ahead_ms: AtomicU64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            ahead_ms: AtomicU64::new(0),
        }
    }
}

impl Clock {
    pub fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// One key that can verify RS256 or ES256 signatures.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of a JWKS document.
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document. Keys bulkhead cannot use (encryption keys, other algorithms
    /// or curves, malformed entries) are left out; a set without one usable key is refused.
    pub fn parse(text: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(text)
            .map_err(|e| format!("not a JWKS document ({e}): expected {{\"keys\": [...]}}"))?;
        let keys: Vec<Key> = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| usable(&jwk))
            .collect();
        if keys.is_empty() {
            return Err("it holds no RS256 (RSA) or ES256 (EC P-256) signing key".into());
        }
        Ok(KeySet { keys })
    }

    /// The keys that may have signed a token of `alg` naming `kid`: with a key id, every key
    /// of that id (a provider may publish two during a rotation); without, every key of
    /// the algorithm.
    pub fn matching<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .map(|k| &k.key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key of `jwk` with the one algorithm it can verify, if bulkhead accepts it.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    // A key published for another algorithm (RS512, say) must not verify this one.
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return None,
    };
    if declared.is_some_and(|d| d != alg) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A JWKS fetched over HTTPS, with what its last fetch did.
pub struct Remote {
    service: String,
    url: String,
    client: reqwest::Client,
    /// The keys and when they were fetched; `None` until a fetch succeeds. Read by every
    /// verification, written only by a fetch.
    keys: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// Held during a fetch, so concurrent tokens with an unknown key id wait for one fetch
    /// instead of each starting their own.
    fetches: tokio::sync::Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Why a service's keys are not at hand.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Remote {
    /// A remote key set for `service`, fetched with `ca_file`'s authorities only when given.
    pub fn new(service: &str, url: &str, ca_pem: Option<&[u8]>) -> Result<Remote, String> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT / 2)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err("it holds no PEM certificate".into());
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| chain(&e))?;
        Ok(Remote {
            service: service.to_string(),
            url: url.to_string(),
            client,
            keys: RwLock::new(None),
            fetches: tokio::sync::Mutex::new(Fetches::default()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn snapshot(&self) -> Option<(Arc<KeySet>, Instant)> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The keys, fetched again first when they lack what `wants` looks for or are older than
    /// [`MAX_AGE`], unless the last fetch was under [`REFETCH_INTERVAL`] ago.
    pub async fn keys(
        &self,
        clock: &Clock,
        wants: impl Fn(&KeySet) -> bool,
    ) -> Result<Arc<KeySet>, Unavailable> {
        if let Some((keys, at)) = self.snapshot() {
            let fresh = clock.now().saturating_duration_since(at) < MAX_AGE;
            if fresh && wants(&keys) {
                return Ok(keys);
            }
        }
        self.refetch(clock).await;
        if let Some((keys, _)) = self.snapshot() {
            return Ok(keys);
        }
        let fetches = self.fetches.lock().await;
        let why = fetches.last_error.as_deref().unwrap_or("not fetched yet");
        Err(Unavailable(format!(
            "the keys of service {} could not be fetched from {} ({why}); the server tries again at most once a minute",
            self.service, self.url
        )))
    }

    /// Fetches the set unless a fetch began under [`REFETCH_INTERVAL`] ago.
    pub async fn refetch(&self, clock: &Clock) {
        let mut fetches = self.fetches.lock().await;
        let now = clock.now();
        if let Some(last) = fetches.last_attempt {
            if now.saturating_duration_since(last) < REFETCH_INTERVAL {
                return;
            }
        }
        fetches.last_attempt = Some(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(service = %self.service, url = %self.url, keys = keys.len(), "fetched the OIDC key set");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Arc::new(keys), now));
                fetches.last_error = None;
            }
            Err(problem) => {
                tracing::warn!(service = %self.service, url = %self.url, %problem, "cannot fetch the OIDC key set; tokens of this service that need it are refused");
                fetches.last_error = Some(problem);
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            // The URL is in the sentence already.
            .map_err(|e| chain(&e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("the server answered {}", response.status()));
        }
        let too_large = || format!("the document is larger than {} KiB", MAX_SIZE / 1024);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_SIZE as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| chain(&e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_SIZE {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }
}

/// An error with its causes, which is where reqwest says what failed (DNS, TLS, timeout).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
