//! API tokens: `bh_<id>_<secret>`. The id finds the stored row; only the SHA-256 of the
//! secret is stored, and it is compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::{Outcome, Record};
use crate::config::Config;
use crate::identity::Principal;
use crate::store::system::TokenRow;
use crate::store::{self, StoreError, SystemStore};

const PREFIX: &str = "bh_";

/// A token as presented by a client.
pub struct Presented<'a> {
    id: &'a str,
    secret: &'a str,
}

impl<'a> Presented<'a> {
    pub fn parse(token: &'a str) -> Option<Presented<'a>> {
        let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
        let well_formed =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (well_formed(id, 16) && well_formed(secret, 64)).then_some(Presented { id, secret })
    }

    pub fn id(&self) -> &str {
        self.id
    }

    /// Whether the secret hashes to `stored_hash`, in time independent of where they differ.
    pub fn matches(&self, stored_hash: &str) -> bool {
        hash(self.secret)
            .as_bytes()
            .ct_eq(stored_hash.as_bytes())
            .into()
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A freshly issued token: the only moment its secret exists in clear.
pub struct Issued {
    pub id: String,
    pub token: String,
}

/// Issues a token for `principal` and stores its hash, with `record` (naming the token) in
/// the same transaction.
pub async fn issue(
    store: &SystemStore,
    principal: &Principal,
    mut record: Record,
) -> Result<Issued, StoreError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    let mut rng = rand::rngs::OsRng;
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    record.decision = Outcome::Allow;
    record.reason = Some(format!("token {id} for {principal}"));
    store
        .insert_token(&id, &principal.to_string(), &hash(&secret), &record)
        .await?;
    Ok(Issued {
        token: format!("{PREFIX}{id}_{secret}"),
        id,
    })
}

/// Issues a token for `principal` in the server's database of `config`, as the host's
/// `bulkhead token create` does.
pub async fn create(
    config: &Config,
    principal: &Principal,
    record: Record,
) -> Result<Issued, StoreError> {
    issue(&store::open_system(config).await?, principal, record).await
}

/// Every token of the server's database, oldest first (ids and owners; no secret is stored).
pub async fn list(config: &Config) -> Result<Vec<TokenRow>, StoreError> {
    store::open_system(config).await?.tokens().await
}

/// Revokes the live token `id`, with `record`; false when there is none.
pub async fn revoke(config: &Config, id: &str, record: &Record) -> Result<bool, StoreError> {
    store::open_system(config)
        .await?
        .revoke_token(id, record)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let secret = "ab".repeat(32);
        let token = format!("bh_0123456789abcdef_{secret}");
        let p = Presented::parse(&token).unwrap();
        assert_eq!(p.id(), "0123456789abcdef");
        assert!(p.matches(&hash(&secret)));
        assert!(!p.matches(&hash("other")));
        assert!(Presented::parse("bh_short_x").is_none());
        assert!(Presented::parse(&token.replace("bh_", "xx_")).is_none());
    }
}
