//! Signed checkpoints of every audit chain's head, written outside the database: what shows a
//! cut tail, an emptied chain or an older copy of a database, which the chain alone cannot.
//!
//! A checkpoint names a chain, a position, the MAC of the record there, a time and why it was
//! written (`start`, `every`, `shutdown`), signed with a key derived from the audit key. The
//! server appends one line per checkpoint to `CHECKPOINT_DIR/CHAIN.checkpoints` (append-only,
//! flushed to disk) and logs the same line, at start, every `checkpoint_every` records a chain
//! grows by, and on shutdown. Writers watch each chain's head in memory and write on a blocking
//! thread of their own: nothing of this runs per request or under a database's writer lock.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::Mac;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::key::{AuditKey, CheckpointKey};
use super::{Broken, Head, Stored};
use crate::time::Clock;

/// The chains checkpoints are written of, as the store holds them.
pub trait Chains {
    type Error: std::fmt::Display;

    /// The key the chains are keyed with.
    fn audit_key(&self) -> &AuditKey;

    /// The clock checkpoints are stamped with.
    fn clock(&self) -> &Clock;

    /// Every chain's name, and its newest head that this server has appended, as it changes.
    fn watch_heads(&self) -> Vec<(String, tokio::sync::watch::Receiver<Head>)>;

    /// The same of each chain whose database is opened from now on.
    fn watch_opened(
        &self,
    ) -> tokio::sync::broadcast::Receiver<(String, tokio::sync::watch::Receiver<Head>)>;

    /// Every chain's name, and its head as the database has it now (records appended by other
    /// instances included).
    fn read_heads(
        &self,
    ) -> impl std::future::Future<Output = Vec<(String, Result<Head, Self::Error>)>> + Send;
}

/// One checkpoint, as a line of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: i64,
    pub mac: String,
    pub time: String,
    /// `start`, `open`, `every`, `close` or `shutdown`.
    pub why: String,
    pub sig: String,
}

impl Checkpoint {
    /// A checkpoint of `chain` at `head`, signed at `time`.
    pub fn new(
        key: &CheckpointKey,
        chain: &str,
        head: &Head,
        time: String,
        why: &str,
    ) -> Checkpoint {
        let mut c = Checkpoint {
            chain: chain.to_string(),
            seq: head.seq,
            mac: head.hash.clone(),
            time,
            why: why.to_string(),
            sig: String::new(),
        };
        c.sig = c.signature(key);
        c
    }

    fn signature(&self, key: &CheckpointKey) -> String {
        let mut h = key.start();
        h.update(
            format!(
                "bulkhead audit checkpoint 1\n{}\n{}\n{}\n{}\n{}",
                self.chain, self.seq, self.mac, self.time, self.why
            )
            .as_bytes(),
        );
        hex::encode(h.finalize().into_bytes())
    }

    /// Whether it was signed with `key`.
    pub fn is_signed(&self, key: &CheckpointKey) -> bool {
        use subtle::ConstantTimeEq;
        self.signature(key)
            .as_bytes()
            .ct_eq(self.sig.as_bytes())
            .into()
    }

    /// The checkpoint as one line of JSON (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The file a chain's checkpoints are appended to.
pub fn file(dir: &Path, chain: &str) -> PathBuf {
    dir.join(format!("{chain}.checkpoints"))
}

/// Appends a checkpoint to its chain's file in `dir` (created, readable by its owner alone)
/// and flushes it to disk, then logs it.
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    let path = file(dir, &checkpoint.chain);
    let new = !path.exists();
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&path)?;
    let line = checkpoint.line();
    // One write of the whole line: appends from several writers do not interleave.
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()?;
    if new {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(
        chain = %checkpoint.chain,
        seq = checkpoint.seq,
        checkpoint = %line,
        "audit checkpoint"
    );
    Ok(())
}

/// [`write`] on a blocking thread, failures logged: a checkpoint that cannot be written does
/// not stop the server, but is an error an operator must see.
async fn write_logged(dir: PathBuf, checkpoint: Checkpoint) {
    let chain = checkpoint.chain.clone();
    let written = tokio::task::spawn_blocking(move || write(&dir, &checkpoint)).await;
    let problem = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(%chain, error = %problem, "cannot write the audit checkpoint");
}

/// What writing one chain's checkpoints takes.
#[derive(Clone)]
struct Writer {
    key: CheckpointKey,
    dir: PathBuf,
    clock: Clock,
    every: i64,
}

impl Writer {
    /// The checkpoints written earlier of one chain, read from its own file.
    async fn earlier(&self, chain: &str) -> Vec<Checkpoint> {
        let (dir, key, name) = (self.dir.clone(), self.key.clone(), chain.to_string());
        let read = tokio::task::spawn_blocking(move || {
            let mut found = Found::default();
            read_file(&file(&dir, &name), &name, &key, &mut found).map(|()| found)
        })
        .await;
        match read {
            Ok(Ok(mut found)) => found.chains.remove(chain).unwrap_or_default(),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Ok(Err(e)) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the audit checkpoints");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit checkpoints");
                Vec::new()
            }
        }
    }

    /// Writes a checkpoint of the chain's head now (saying `why`), having told loudly if the
    /// chain ends before one written `earlier`; then answers the work of writing one each
    /// time the chain has grown by `every`, and a last one when its database closes (its
    /// head's sender goes), which ends with the chain's name.
    async fn watch(
        self,
        chain: String,
        mut heads: tokio::sync::watch::Receiver<Head>,
        earlier: Vec<Checkpoint>,
        why: &'static str,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let head = heads.borrow_and_update().clone();
        let newest = earlier.iter().max_by_key(|c| c.seq);
        if let Some(newest) = newest.filter(|c| c.seq > head.seq) {
            // Loud, not fatal: restoring a backup looks the same, and is for a person to judge.
            tracing::error!(
                %chain,
                newest = head.seq,
                checkpointed = newest.seq,
                "the audit chain ends before a record this server checkpointed: records were cut off, or an older copy of the database was put in place (run `bulkhead audit verify`)"
            );
        }
        let now = self.clock.now().stored();
        write_logged(
            self.dir.clone(),
            Checkpoint::new(&self.key, &chain, &head, now, why),
        )
        .await;
        async move {
            let mut last = head.seq;
            while heads.changed().await.is_ok() {
                let head = heads.borrow_and_update().clone();
                if head.seq - last >= self.every {
                    last = head.seq;
                    let time = self.clock.now().stored();
                    let checkpoint = Checkpoint::new(&self.key, &chain, &head, time, "every");
                    write_logged(self.dir.clone(), checkpoint).await;
                }
            }
            let head = heads.borrow().clone();
            let time = self.clock.now().stored();
            let checkpoint = Checkpoint::new(&self.key, &chain, &head, time, "close");
            write_logged(self.dir.clone(), checkpoint).await;
            chain
        }
    }
}

/// The server's checkpoint writers, one per chain.
pub struct Writers {
    key: CheckpointKey,
    dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Writes a checkpoint of every chain's head now, and starts writing one each time a chain
    /// has grown by `every` records since its last; the same for each chain opened later.
    pub async fn start(stores: &impl Chains, dir: &Path, every: u64) -> Writers {
        let key = stores.audit_key().checkpoints();
        let every = i64::try_from(every).unwrap_or(i64::MAX).max(1);
        let writer = Writer {
            key: key.clone(),
            dir: dir.to_path_buf(),
            clock: stores.clock().clone(),
            every,
        };
        let mut earlier = match read(&[dir.to_path_buf()], &key) {
            Ok(found) => found.chains,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the audit checkpoints");
                HashMap::new()
            }
        };
        // Told of openings before the open chains are listed, so none falls between.
        let mut opened = stores.watch_opened();
        let mut chains = tokio::task::JoinSet::new();
        // Each chain watched, by the head it is watched on: a database closed and opened again
        // has a head of its own.
        let mut watched: HashMap<String, tokio::sync::watch::Receiver<Head>> = HashMap::new();
        for (chain, heads) in stores.watch_heads() {
            let earlier = earlier.remove(&chain).unwrap_or_default();
            watched.insert(chain.clone(), heads.clone());
            chains.spawn(writer.clone().watch(chain, heads, earlier, "start").await);
        }
        // A chain is watched while its database is open: from its opening to its closing,
        // which may come again.
        let tasks = vec![tokio::spawn(async move {
            loop {
                tokio::select! {
                    opening = opened.recv() => match opening {
                        Ok((chain, heads)) => {
                            if watched.get(&chain).is_some_and(|w| w.same_channel(&heads)) {
                                continue;
                            }
                            watched.insert(chain.clone(), heads.clone());
                            let earlier = writer.earlier(&chain).await;
                            chains.spawn(writer.clone().watch(chain, heads, earlier, "open").await);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::error!(missed, "databases were opened faster than their audit chains could be checkpointed: those chains are checkpointed at shutdown only");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    Some(Ok(closed)) = chains.join_next() => {
                        if watched.get(&closed).is_some_and(|w| w.has_changed().is_err()) {
                            watched.remove(&closed);
                        }
                    }
                }
            }
            // Dropping the set would stop the chains' writers.
            while chains.join_next().await.is_some() {}
        })];
        Writers {
            key,
            dir: dir.to_path_buf(),
            tasks,
        }
    }

    /// Stops the writers and writes a checkpoint of every chain's head as the database has it
    /// (records appended by other instances included), once the server has stopped serving.
    pub async fn shutdown(self, stores: &impl Chains) {
        for task in &self.tasks {
            task.abort();
        }
        for (chain, head) in stores.read_heads().await {
            match head {
                Ok(head) => {
                    let time = stores.clock().now().stored();
                    let checkpoint = Checkpoint::new(&self.key, &chain, &head, time, "shutdown");
                    write_logged(self.dir.clone(), checkpoint).await;
                }
                Err(e) => {
                    tracing::error!(%chain, error = %e, "cannot read the audit chain's head for its checkpoint")
                }
            }
        }
    }
}

/// The checkpoints found in some directories, by chain, and the lines that are not
/// checkpoints signed with the key (where, and what is wrong).
#[derive(Debug, Default)]
pub struct Found {
    pub chains: HashMap<String, Vec<Checkpoint>>,
    pub bad: HashMap<String, Vec<String>>,
    /// Directories that do not exist.
    pub missing: Vec<PathBuf>,
}

/// Reads every `*.checkpoints` file of `dirs`.
pub fn read(dirs: &[PathBuf], key: &CheckpointKey) -> std::io::Result<Found> {
    let mut found = Found::default();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                found.missing.push(dir.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let Some(chain) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".checkpoints"))
                .map(str::to_string)
            else {
                continue;
            };
            read_file(&path, &chain, key, &mut found)?;
        }
    }
    Ok(found)
}

/// Reads the checkpoint file of `chain` at `path` into `found`.
fn read_file(
    path: &Path,
    chain: &str,
    key: &CheckpointKey,
    found: &mut Found,
) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        match serde_json::from_str::<Checkpoint>(line) {
            Ok(c) if c.is_signed(key) && c.chain == chain => {
                found.chains.entry(chain.to_string()).or_default().push(c)
            }
            Ok(c) if c.is_signed(key) => found.bad.entry(chain.to_string()).or_default().push(
                format!("{at}: a checkpoint of chain {} in the file of {chain}: the file was edited", c.chain),
            ),
            Ok(_) => found.bad.entry(chain.to_string()).or_default().push(format!(
                "{at}: a checkpoint not signed with this server's audit key: it was forged or edited"
            )),
            Err(_) => found.bad.entry(chain.to_string()).or_default().push(format!(
                "{at}: not a checkpoint: the file was edited or damaged"
            )),
        }
    }
    Ok(())
}

/// Verifies a chain whose records verify by their MACs against its checkpoints: every
/// checkpoint's position must hold the record it saw, so the chain must reach the newest.
pub fn verify(rows: &[Stored], checkpoints: &[Checkpoint]) -> Result<(), Broken> {
    let Some(newest) = checkpoints.iter().max_by_key(|c| c.seq) else {
        return Ok(());
    };
    let length = rows.len() as i64;
    if newest.seq > length {
        let problem = if length == 0 {
            format!(
                "the chain is empty, but the checkpoint of {} saw {} records: every record was deleted, or an empty database was put in its place",
                newest.time, newest.seq
            )
        } else {
            format!(
                "the chain ends at record {length}, but the checkpoint of {} saw record {}: records were cut off the end, or an older copy of the database was put in its place",
                newest.time, newest.seq
            )
        };
        return Err(Broken {
            seq: length + 1,
            problem,
        });
    }
    let mut by_seq: Vec<&Checkpoint> = checkpoints.iter().filter(|c| c.seq > 0).collect();
    by_seq.sort_by_key(|c| c.seq);
    for c in by_seq {
        let Some(row) = usize::try_from(c.seq - 1).ok().and_then(|i| rows.get(i)) else {
            continue;
        };
        if row.hash != c.mac {
            return Err(Broken {
                seq: c.seq,
                problem: format!(
                    "it is not the record the checkpoint of {} saw there: the chain was rewritten from here by someone with the audit key, or replaced by another copy",
                    c.time
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditKey, Record};

    fn key() -> AuditKey {
        AuditKey::from_hex(&"ef".repeat(32), "test").unwrap()
    }

    fn rows(n: usize) -> Vec<Stored> {
        let records: Vec<Record> = (0..n).map(|_| Record::new("state:read")).collect();
        crate::audit::chained(&key().chain("prod"), &records)
    }

    fn at(rows: &[Stored], seq: usize) -> Checkpoint {
        let head = Head {
            seq: seq as i64,
            hash: rows[seq - 1].hash.clone(),
        };
        let time = Clock::system().now().stored();
        Checkpoint::new(&key().checkpoints(), "prod", &head, time, "every")
    }

    #[test]
    fn checkpoints_are_signed() {
        let rows = rows(2);
        let c = at(&rows, 2);
        assert!(c.is_signed(&key().checkpoints()));
        let mut moved = c.clone();
        moved.seq = 1;
        assert!(!moved.is_signed(&key().checkpoints()));
        let other = AuditKey::from_hex(&"01".repeat(32), "t").unwrap();
        assert!(!c.is_signed(&other.checkpoints()));
    }

    #[test]
    fn a_cut_emptied_or_replaced_chain_is_found_against_its_checkpoints() {
        let rows = rows(5);
        let checkpoints = vec![at(&rows, 2), at(&rows, 4)];
        assert_eq!(verify(&rows, &checkpoints), Ok(()));
        assert_eq!(verify(&rows[..4], &checkpoints), Ok(()));

        let cut = verify(&rows[..3], &checkpoints).unwrap_err();
        assert_eq!(cut.seq, 4);
        assert!(cut.problem.contains("cut off"), "{}", cut.problem);

        let emptied = verify(&[], &checkpoints).unwrap_err();
        assert!(
            emptied.problem.contains("the chain is empty"),
            "{}",
            emptied.problem
        );

        let mut replaced = rows.clone();
        replaced[1].hash = "00".into();
        let p = verify(&replaced, &checkpoints).unwrap_err();
        assert_eq!(p.seq, 2);
    }

    #[test]
    fn written_checkpoints_are_read_back_and_edits_found() {
        let dir = tempfile::tempdir().unwrap();
        let rows = rows(3);
        write(dir.path(), &at(&rows, 1)).unwrap();
        write(dir.path(), &at(&rows, 3)).unwrap();
        let found = read(&[dir.path().to_path_buf()], &key().checkpoints()).unwrap();
        assert_eq!(found.chains["prod"].len(), 2);
        assert!(found.bad.is_empty());

        let path = file(dir.path(), "prod");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"seq\":3", "\"seq\":2", 1)).unwrap();
        let found = read(&[dir.path().to_path_buf()], &key().checkpoints()).unwrap();
        assert_eq!(found.chains["prod"].len(), 1);
        assert!(
            found.bad["prod"][0].contains("not signed"),
            "{:?}",
            found.bad
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
