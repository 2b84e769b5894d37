//! The audit log as the server's host reads it: the records of every chain (the server's and
//! each environment's), and each chain's database verified, read-only, under the audit key and
//! against the checkpoints. What `bulkhead audit log` and `bulkhead audit verify` print.

use std::collections::HashMap;

use crate::audit::{checkpoint, verify, AuditKey, Filter, Record};
use crate::config::Config;
use crate::store::{self, StoreError, Stores};

/// Why records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the audit log: {0}")]
    Store(#[from] StoreError),
    #[error("{chain}: audit record {seq} is not readable (run `bulkhead audit verify`): {source}")]
    Unreadable {
        chain: String,
        seq: i64,
        source: serde_json::Error,
    },
}

/// Every chain of a server, open for reading its records.
pub struct AuditLog {
    stores: Stores,
}

impl AuditLog {
    pub async fn open(config: &Config) -> Result<AuditLog, StoreError> {
        Ok(AuditLog {
            stores: Stores::open(config).await?,
        })
    }

    /// Refused with a sentence when `chain` names no chain that can be read.
    pub fn knows(&self, chain: &str) -> Result<(), String> {
        if let Some(down) = self.stores.unavailable(chain) {
            return Err(down.sentence(chain));
        }
        if self.stores.chains().iter().any(|(name, _)| name == chain) {
            Ok(())
        } else {
            Err("no such environment in the config (`server` names the server's own chain)".into())
        }
    }

    /// The records matching `filter` after those already `read` (the newest position read in
    /// each chain, moved on here), of `only` that chain when given, oldest first; with
    /// `filter.last`, only the newest that many.
    pub async fn next(
        &self,
        only: Option<&str>,
        read: &mut HashMap<String, i64>,
        filter: &Filter,
    ) -> Result<Vec<Record>, ReadError> {
        let mut records = Vec::new();
        for (chain, db) in self.stores.chains() {
            if only.is_some_and(|c| c != chain) {
                continue;
            }
            // Up to the newest record now; the next look starts after it, matched or not.
            let newest = db.newest_position().await?;
            let chain_filter = Filter {
                after: read.get(&chain).copied().unwrap_or(0),
                through: Some(newest),
                ..filter.clone()
            };
            read.insert(chain.clone(), newest);
            for row in db.query(&chain_filter).await? {
                let record: Record =
                    serde_json::from_str(&row.record).map_err(|source| ReadError::Unreadable {
                        chain: chain.clone(),
                        seq: row.seq,
                        source,
                    })?;
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.time.cmp(&b.time));
        if let Some(n) = filter.last {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            records.drain(..records.len().saturating_sub(n));
        }
        Ok(records)
    }
}

/// One chain as verification found it.
pub struct Checked {
    pub chain: String,
    /// Its report, or why its database could not be read (no evidence of tampering).
    pub report: Result<verify::Report, String>,
}

/// Verifies every chain's database, the server's first, read-only (nothing is created or
/// migrated), under `key` and against the checkpoints `found` holds for it. A database that
/// does not exist is a broken chain.
pub async fn verify_all(
    config: &Config,
    key: &AuditKey,
    found: &checkpoint::Found,
) -> Vec<Checked> {
    let mut out = Vec::new();
    for db in store::open_read_only(config).await {
        let chain = db.chain;
        let checkpoints = found.chains.get(&chain).map_or(&[][..], Vec::as_slice);
        let report = match &db.database {
            Ok(database) => verify::database(
                &chain,
                database,
                &key.chain(&chain),
                checkpoints,
                db.environment,
            )
            .await
            .map_err(|e| format!("cannot read the database of {chain}: {e}")),
            Err(e @ StoreError::Missing { .. }) => Ok(verify::Report {
                records: 0,
                checkpoints: checkpoints.len(),
                outcome: Err(verify::Problem {
                    seq: None,
                    problem: e.to_string(),
                }),
            }),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(database) = db.database {
            database.close().await;
        }
        out.push(Checked { chain, report });
    }
    out
}
