//! The audit log as the server's host reads it: the records of every chain (the server's and
//! each environment's), and each chain's database verified, read-only, under the audit key and
//! against the checkpoints. What `bulkhead audit log` and `bulkhead audit verify` print.

use std::collections::{HashMap, VecDeque};

use std::net::IpAddr;

use super::{OpError, Server};
use crate::audit::{checkpoint, verify, AuditKey, Filter, Page, Record};
use crate::config::Config;
use crate::identity::Caller;
use crate::policy::Action;
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
/// does not exist is a broken chain, unless no checkpoint of its chain was ever written: an
/// environment's database is made by its first use, and checkpointed when it is opened.
pub async fn verify_all(
    config: &Config,
    key: &AuditKey,
    found: &checkpoint::Found,
) -> Vec<Checked> {
    let mut out = Vec::new();
    for db in store::open_read_only(config).await {
        let chain = db.chain;
        let checkpoints = found.chains.get(&chain).map_or(&[][..], Vec::as_slice);
        let never_used =
            db.environment && checkpoints.is_empty() && !found.bad.contains_key(&chain);
        if never_used && matches!(db.database, Err(StoreError::Missing { .. })) {
            continue;
        }
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

/// What a page read of one chain: its matching records after the cursor, in the chain's
/// order, and how far the chain went when they were read.
struct ChainRead {
    chain: String,
    queue: VecDeque<(Record, i64)>,
    through: i64,
    /// Whether it had no more matching records up to `through` than the page could hold.
    exhausted: bool,
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
/// only when they grant it in every declared environment.
fn readable<'s>(
    server: &'s Server,
    caller: &Caller,
    source_ip: IpAddr,
) -> Vec<(String, crate::store::ChainStore<'s>)> {
    let may =
        |env: &crate::config::Environment| server.may(caller, Action::AuditRead, env, source_ip);
    let everywhere = server.config.declared().all(may);
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
                Some(env) => server.refusal(caller, Action::AuditRead, env, source_ip),
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
    // Each chain's matching records after its cursor, in the chain's order, and how far the
    // chain went when they were read.
    let mut queues: Vec<ChainRead> = Vec::new();
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
        let mut queue = VecDeque::with_capacity(rows.len());
        for row in rows {
            let r: Record = serde_json::from_str(&row.record).map_err(|e| {
                OpError::Internal(format!(
                    "{chain}: audit record {} is not readable: {e}",
                    row.seq
                ))
            })?;
            queue.push_back((r, row.seq));
        }
        queues.push(ChainRead {
            chain: chain.clone(),
            queue,
            through,
            exhausted,
        });
    }
    // Merged by time, each chain's records taken in its own order, so that what a page keeps
    // of a chain is always its first records and the cursor cannot pass one it left out.
    let keep = usize::try_from(newest_only.unwrap_or(limit)).unwrap_or(0);
    let mut kept: Vec<Record> = Vec::with_capacity(keep);
    let mut last_kept: HashMap<String, i64> = HashMap::new();
    while kept.len() < keep {
        let pick = if newest_only.is_some() {
            queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.queue.back().map(|(r, _)| (i, &r.time)))
                .max_by(|a, b| a.1.cmp(b.1))
        } else {
            queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.queue.front().map(|(r, _)| (i, &r.time)))
                .min_by(|a, b| a.1.cmp(b.1))
        };
        let Some((i, _)) = pick else { break };
        let read = &mut queues[i];
        let taken = if newest_only.is_some() {
            read.queue.pop_back()
        } else {
            read.queue.pop_front()
        };
        if let Some((r, seq)) = taken {
            last_kept.insert(read.chain.clone(), seq);
            kept.push(r);
        }
    }
    if newest_only.is_some() {
        kept.reverse();
    }
    // Where each chain's next page starts: past what was kept, and, for a chain with none
    // left to give, past all it held when read, matched or not.
    for read in &queues {
        let next = if read.exhausted && (read.queue.is_empty() || newest_only.is_some()) {
            Some(read.through)
        } else {
            last_kept.get(&read.chain).copied()
        };
        if let Some(next) = next {
            cursor.insert(read.chain.clone(), next);
        }
    }
    let left_out = queues.iter().any(|q| !q.queue.is_empty());
    let more = newest_only.is_none() && (left_out || queues.iter().any(|q| !q.exhausted));
    record.reason = Some(format!("{} audit records", kept.len()));
    let mut text: Vec<String> = cursor.iter().map(|(c, s)| format!("{c}:{s}")).collect();
    text.sort();
    Ok(Page {
        records: kept,
        cursor: text.join(","),
        more,
    })
}
