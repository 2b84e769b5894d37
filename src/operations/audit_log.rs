//! The audit log as the server's host reads it: the records of every chain (the server's and
//! each environment's), and each chain's database verified, read-only, under the audit key and
//! against the checkpoints. What `bulkhead audit log` and `bulkhead audit verify` print.

use std::collections::HashMap;

use std::net::IpAddr;

use super::{OpError, Server};
use crate::audit::{checkpoint, verify, AuditKey, Filter, Page, Record};
use crate::config::Config;
use crate::identity::Caller;
use crate::policy::{refusal, Action, RequestContext};
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

/// The most records one page of the audit log over the API holds.
pub const PAGE_MAX: i64 = 1000;

/// What a page is asked for.
pub struct Asked<'a> {
    /// Only this chain: an environment's name, or `server`.
    pub chain: Option<&'a str>,
    pub filter: Filter,
    /// The cursor of the page before, if any.
    pub after: Option<&'a str>,
}

/// Reads `text`, a cursor as [`Page::cursor`] writes it.
fn parse_cursor(text: &str) -> Result<HashMap<String, i64>, OpError> {
    let bad = || {
        OpError::BadRequest(format!(
            "`{}` is not a cursor: pass back the `cursor` of the page before, as it was given",
            crate::audit::cap(text, 64)
        ))
    };
    let mut out = HashMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (chain, seq) = part.rsplit_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if seq < 0 || out.insert(chain.to_string(), seq).is_some() {
            return Err(bad());
        }
    }
    Ok(out)
}

/// The chains `caller` may read the audit log of: each environment where the policies grant
/// it `audit:read`, and the server's own chain (tokens, requests outside any environment)
/// only when they grant it in every environment.
fn readable<'s>(
    server: &'s Server,
    caller: &Caller,
    source_ip: IpAddr,
) -> Vec<(String, &'s crate::store::Database)> {
    let may = |env: &crate::config::Environment| {
        let ctx = RequestContext {
            state: "",
            operation: "",
            source_ip: Some(source_ip),
        };
        server
            .policy
            .decide(&caller.principal, Action::AuditRead, &env.name, &ctx)
            .allowed
    };
    let everywhere = server.config.environments.iter().all(may);
    server
        .stores
        .chains()
        .into_iter()
        .filter(|(chain, _)| match server.config.environment(chain) {
            Some(env) => may(env),
            None => everywhere,
        })
        .collect()
}

/// One page of the records `caller` may read that match `asked`, oldest first: at most
/// `filter.first` (at most [`PAGE_MAX`]) after the cursor, or with `filter.last` the newest
/// that many.
pub async fn page(
    server: &Server,
    caller: &Caller,
    source_ip: IpAddr,
    record: &mut Record,
    asked: Asked<'_>,
) -> Result<Page, OpError> {
    let mut chains = readable(server, caller, source_ip);
    if let Some(only) = asked.chain {
        let env = match server.config.environment(only) {
            Some(env) => Some(env),
            None if only == crate::store::SERVER_CHAIN => None,
            None => {
                return Err(OpError::NotFound(format!(
                    "there is no environment `{only}` (`server` names the server's own chain)"
                )))
            }
        };
        chains.retain(|(chain, _)| chain == only);
        if chains.is_empty() {
            return Err(OpError::Forbidden(match env {
                Some(env) => refusal::sentence(&caller.principal, Action::AuditRead, env),
                None => format!("{} may not read the server's own audit log: that needs audit:read in every environment", caller.principal),
            }));
        }
    }
    if chains.is_empty() {
        return Err(OpError::Forbidden(format!(
            "{} may not read the audit log of any environment: each environment's owner may, and whoever a custom policy grants audit:read",
            caller.principal
        )));
    }
    let mut cursor = match asked.after {
        Some(text) => parse_cursor(text)?,
        None => HashMap::new(),
    };
    let filter = asked.filter;
    let newest_only = filter.last.map(|n| n.clamp(0, PAGE_MAX));
    let limit = filter.first.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    // Each chain's matching records after its cursor, as (record, chain, position).
    let mut found: Vec<(Record, String, i64)> = Vec::new();
    let mut newest: HashMap<String, (i64, bool)> = HashMap::new();
    for (chain, db) in &chains {
        let through = db.newest_position().await?;
        let rows = db
            .query(&Filter {
                after: cursor.get(chain).copied().unwrap_or(0),
                through: Some(through),
                last: newest_only,
                first: Some(limit),
                ..filter.clone()
            })
            .await?;
        // Fewer than a page: none left in this chain up to `through`.
        let exhausted = newest_only.is_some() || (rows.len() as i64) < limit;
        newest.insert(chain.clone(), (through, exhausted));
        for row in rows {
            let r: Record = serde_json::from_str(&row.record).map_err(|e| {
                OpError::Internal(format!(
                    "{chain}: audit record {} is not readable: {e}",
                    row.seq
                ))
            })?;
            found.push((r, chain.clone(), row.seq));
        }
    }
    found.sort_by(|a, b| a.0.time.cmp(&b.0.time));
    let count = |rows: &[(Record, String, i64)], chain: &str| {
        rows.iter().filter(|(_, c, _)| c == chain).count()
    };
    let found_by_chain: HashMap<String, usize> = newest
        .keys()
        .map(|chain| (chain.clone(), count(&found, chain)))
        .collect();
    let keep = usize::try_from(newest_only.unwrap_or(limit)).unwrap_or(0);
    let left_out = found.len().saturating_sub(keep);
    let kept: Vec<(Record, String, i64)> = if newest_only.is_some() {
        found.split_off(left_out)
    } else {
        found.truncate(keep);
        found
    };
    // Where each chain's next page starts: past what was kept, and, for a chain with none
    // left whose every match was kept, past all it holds up to now, matched or not.
    for (chain, (through, exhausted)) in &newest {
        let all_kept = count(&kept, chain) == found_by_chain.get(chain).copied().unwrap_or(0);
        let next = if *exhausted && (all_kept || newest_only.is_some()) {
            Some(*through)
        } else {
            kept.iter().rev().find(|(_, c, _)| c == chain).map(|k| k.2)
        };
        if let Some(next) = next {
            cursor.insert(chain.clone(), next);
        }
    }
    let more =
        newest_only.is_none() && (left_out > 0 || newest.values().any(|(_, exhausted)| !exhausted));
    record.reason = Some(format!("{} audit records", kept.len()));
    let mut text: Vec<String> = cursor.iter().map(|(c, s)| format!("{c}:{s}")).collect();
    text.sort();
    Ok(Page {
        records: kept.into_iter().map(|k| k.0).collect(),
        cursor: text.join(","),
        more,
    })
}
