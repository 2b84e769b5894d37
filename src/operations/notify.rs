//! Delivering notifications: one worker per `notify` block, reading the audit chains of the
//! environments it is told about, in order, and sending each record that is one of its events
//! ([`crate::notify::Event::of`]) to its receiver.
//!
//! The audit log is the outbox. An event's record commits in the transaction of its effect
//! (or, for a refusal, is committed before the refusal is answered), so an event exists
//! exactly when its request took effect, and a request that rolled back has no record to send.
//! Each worker keeps, in the server's database, a cursor per chain: the position up to which
//! its events were delivered or given up. It moves only once an event's delivery succeeded or
//! was given up, in the transaction that records that attempt; every attempt is recorded. So a
//! server stopped at any moment sends, once started again, every event it had not finished:
//! delivery is at least once, and the event's `id` is the same at every attempt for the
//! receiver to drop duplicates. Server instances sharing a database each deliver, so a
//! receiver may be sent an event once per instance; cursors never move back.
//!
//! A worker runs on its own: a receiver that is down or slow holds up its own later events
//! (they are sent in order) and nothing else, neither requests nor other receivers. Failed
//! attempts are retried after a wait that doubles, with jitter, up to the block's cap, and
//! given up (loudly) after the block's number of attempts or age. A worker wakes when a chain
//! it reads grows, and looks every few seconds for records appended by other processes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Server;
use crate::audit::{Filter, Record};
use crate::config::{Notify, SecretSource};
use crate::notify::{self, body, Event, Position};
use crate::store::notify::{Attempt, Outcome, DELIVERIES_KEPT};
use crate::store::StoreError;
use crate::time::Timestamp;

/// How many records a worker reads from a chain at once.
const BATCH: i64 = 500;
/// How often a worker looks for records appended by other processes.
const POLL: Duration = Duration::from_secs(5);
/// How often a worker saves a cursor that moved past records that are none of its events.
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// How long shutdown waits for the workers to save their cursors.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// After how many attempts recorded the oldest are pruned.
const PRUNE_EVERY: u32 = 100;

/// Why notifications cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify \"{notify}\": cannot read its secret from the file {path}: {source}; create it (readable by the server alone) or fix secret_file")]
    SecretFile {
        notify: String,
        path: String,
        source: std::io::Error,
    },
    #[error("notify \"{notify}\": its secret file {path} is empty: put the secret in it")]
    EmptySecretFile { notify: String, path: String },
    #[error("notify \"{notify}\": the environment variable {var} holding its secret is not set (or empty) for the server: set it, or use secret_file")]
    SecretEnv { notify: String, var: String },
    #[error("notify \"{notify}\": cannot set up its HTTP client: {detail}")]
    Client { notify: String, detail: String },
}

/// The running workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    forwarders: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Stops every worker (an attempt under way is dropped, to be made again at the next start)
    /// and waits a little for them to save their cursors.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for forwarder in &self.forwarders {
            forwarder.abort();
        }
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(STOP_WAIT, all).await.is_err() {
            tracing::warn!("notify workers did not stop in time; their undelivered events are sent at the next start");
        }
    }
}

/// Whether every notify block's secret can be read: what `bulkhead serve` checks before it
/// listens, so that a missing secret stops it with the sentence before anything is served.
pub fn check_secrets(config: &crate::config::Config) -> Result<(), NotifyError> {
    config
        .notify
        .iter()
        .try_for_each(|block| secret(block).map(drop))
}

/// The secret of `notify`, read from where its block says.
fn secret(notify: &Notify) -> Result<Option<Vec<u8>>, NotifyError> {
    match &notify.secret {
        None => Ok(None),
        Some(SecretSource::File(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| NotifyError::SecretFile {
                notify: notify.name.clone(),
                path: path.display().to_string(),
                source,
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(NotifyError::EmptySecretFile {
                    notify: notify.name.clone(),
                    path: path.display().to_string(),
                });
            }
            Ok(Some(secret.as_bytes().to_vec()))
        }
        Some(SecretSource::Env(var)) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(value.trim().as_bytes().to_vec())),
            _ => Err(NotifyError::SecretEnv {
                notify: notify.name.clone(),
                var: var.clone(),
            }),
        },
    }
}

impl Server {
    /// Starts a worker for every notify block, once each has its cursors (saved now for a
    /// chain it had none on, so that nothing committed from here on can be missed, even if the
    /// server stops before its first delivery). Refused, with nothing started, when a block's
    /// secret cannot be read.
    pub async fn start_notify(self: &Arc<Server>) -> Result<Workers, NotifyError> {
        let mut prepared = Vec::new();
        for block in &self.config.notify {
            let secret = secret(block)?;
            let client = reqwest::Client::builder()
                .timeout(block.retry.timeout)
                .connect_timeout(block.retry.timeout)
                // A receiver answers; it does not send the body on elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| NotifyError::Client {
                    notify: block.name.clone(),
                    detail: e.without_url().to_string(),
                })?;
            prepared.push((block.clone(), secret, client));
        }
        let (stop, _) = watch::channel(false);
        let (grown, _) = watch::channel(0u64);
        let grown = Arc::new(grown);
        let mut forwarders = Vec::new();
        if !prepared.is_empty() {
            // Each chain's growth, from those open now and those opened later, while open.
            let forward = |mut head: watch::Receiver<crate::audit::Head>,
                           grown: Arc<watch::Sender<u64>>| async move {
                while head.changed().await.is_ok() {
                    grown.send_modify(|n| *n = n.wrapping_add(1));
                }
            };
            let mut opened = self.stores.subscribe_opened();
            for (_, db) in self.stores.chains() {
                forwarders.push(tokio::spawn(forward(db.watch_head(), grown.clone())));
            }
            let grown = grown.clone();
            forwarders.push(tokio::spawn(async move {
                loop {
                    match opened.recv().await {
                        Ok((_, head)) => drop(tokio::spawn(forward(head, grown.clone()))),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }));
        }
        let mut tasks = Vec::new();
        for (notify, secret, client) in prepared {
            tracing::info!(notify = %notify.name, url = %notify.url_shown(), "delivering notifications");
            let mut worker = Worker {
                server: self.clone(),
                notify,
                secret,
                client,
                stop: stop.subscribe(),
                cursors: HashMap::new(),
                saved: HashMap::new(),
                recorded: 0,
                loaded: false,
            };
            worker.load().await;
            tasks.push(tokio::spawn(worker.run(grown.subscribe())));
        }
        Ok(Workers {
            stop,
            tasks,
            forwarders,
        })
    }
}

/// The worker was told to stop.
struct Stopped;

/// Why a round ended early.
enum Interrupted {
    Stopped,
    Store(StoreError),
}

impl From<StoreError> for Interrupted {
    fn from(e: StoreError) -> Self {
        Interrupted::Store(e)
    }
}

impl From<Stopped> for Interrupted {
    fn from(_: Stopped) -> Self {
        Interrupted::Stopped
    }
}

/// One notify block's worker.
struct Worker {
    server: Arc<Server>,
    notify: Notify,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
    stop: watch::Receiver<bool>,
    /// How far it has read each chain: every event up to here was delivered or given up.
    cursors: HashMap<String, i64>,
    /// Each chain's cursor as last saved, and when.
    saved: HashMap<String, (i64, tokio::time::Instant)>,
    /// Attempts recorded since the last pruning.
    recorded: u32,
    /// Whether its cursors were read (and those it had none of saved).
    loaded: bool,
}

impl Worker {
    async fn run(mut self, mut grown: watch::Receiver<u64>) {
        // Without its saved cursors it cannot know where to start: starting later would skip
        // events, earlier would send delivered ones again. It waits for the database.
        while !self.loaded {
            tokio::select! {
                _ = self.stop.changed() => return,
                _ = tokio::time::sleep(POLL) => {},
            }
            self.load().await;
        }
        self.prune().await;
        loop {
            grown.borrow_and_update();
            match self.round().await {
                Ok(()) => {}
                Err(Interrupted::Stopped) => break,
                Err(Interrupted::Store(e)) => {
                    tracing::warn!(notify = %self.notify.name, error = %e, "cannot read the audit log for notifications; trying again shortly");
                }
            }
            self.save_cursors(false).await;
            tokio::select! {
                _ = self.stop.changed() => break,
                _ = grown.changed() => {},
                _ = tokio::time::sleep(POLL) => {},
            }
            if *self.stop.borrow() {
                break;
            }
        }
        self.save_cursors(true).await;
    }

    /// The chains it reads: those of the environments it is told about that are served.
    fn chains(&self) -> Vec<String> {
        self.notify
            .environments
            .iter()
            .filter(|env| self.server.stores.environment(env).is_some())
            .cloned()
            .collect()
    }

    /// [`Worker::load_cursors`], failures logged.
    async fn load(&mut self) {
        match self.load_cursors().await {
            Ok(()) => self.loaded = true,
            Err(e) => {
                tracing::error!(notify = %self.notify.name, error = %e, "cannot read or save the notify cursors; trying again shortly")
            }
        }
    }

    /// Where each chain it has not read yet is to be read from: the saved cursor, or, for a
    /// chain it has none on yet, the chain's newest record when its database was opened (so
    /// that a new block is not sent the whole history, nor misses what came after), saved now.
    async fn load_cursors(&mut self) -> Result<(), StoreError> {
        let new: Vec<String> = self
            .chains()
            .into_iter()
            .filter(|chain| !self.cursors.contains_key(chain))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let saved = self
            .server
            .stores
            .system
            .notify_cursors(&self.notify.name)
            .await?;
        let now = tokio::time::Instant::now();
        for chain in new {
            let from = match saved.get(&chain) {
                Some(seq) => *seq,
                None => {
                    let from = self.server.stores.audit_store(Some(&chain)).opened_at();
                    self.server
                        .stores
                        .system
                        .advance_notify_cursor(&self.notify.name, &chain, from)
                        .await?;
                    from
                }
            };
            self.saved.insert(chain.clone(), (from, now));
            self.cursors.insert(chain, from);
        }
        Ok(())
    }

    /// Sends every event appended to its chains since it last looked.
    async fn round(&mut self) -> Result<(), Interrupted> {
        // Chains whose databases were opened since it last looked.
        self.load_cursors().await?;
        // Another instance on the same database may have delivered some already.
        if let Ok(saved) = self
            .server
            .stores
            .system
            .notify_cursors(&self.notify.name)
            .await
        {
            for (chain, seq) in saved {
                if let Some(cursor) = self.cursors.get_mut(&chain) {
                    *cursor = (*cursor).max(seq);
                }
            }
        }
        for chain in self.chains() {
            self.read_chain(&chain).await?;
        }
        self.server.metrics.notify_outbox(&self.notify.name, 0);
        Ok(())
    }

    async fn read_chain(&mut self, chain: &str) -> Result<(), Interrupted> {
        let server = self.server.clone();
        let Some(env) = server.config.environment(chain) else {
            return Ok(());
        };
        if server.stores.environment(chain).is_none() {
            return Ok(());
        }
        let db = server.stores.audit_store(Some(chain));
        loop {
            let cursor = self.cursors.get(chain).copied().unwrap_or(0);
            let newest = db.newest_position().await?;
            if newest <= cursor {
                return Ok(());
            }
            let rows = db
                .query(&Filter {
                    after: cursor,
                    through: Some(newest),
                    first: Some(BATCH),
                    ..Filter::default()
                })
                .await?;
            let read_all = (rows.len() as i64) < BATCH;
            // Each event, at its record's position, and where the cursor may move once it is
            // done: past its record only when it is the record's last event.
            let mut pending: Vec<(i64, i64, Event)> = Vec::new();
            let mut last = cursor;
            for row in &rows {
                last = row.seq;
                let record: Record = match serde_json::from_str(&row.record) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::error!(notify = %self.notify.name, %chain, seq = row.seq, error = %e, "an audit record is not readable, so no notification is sent for it (run `bulkhead audit verify`)");
                        continue;
                    }
                };
                let at = Position {
                    chain,
                    seq: row.seq,
                };
                let events: Vec<Event> = Event::of(at, &record, env)
                    .into_iter()
                    .filter(|e| self.notify.wants(e.kind, chain))
                    .collect();
                let n = events.len();
                for (i, event) in events.into_iter().enumerate() {
                    let done = if i + 1 == n { row.seq } else { row.seq - 1 };
                    pending.push((row.seq, done, event));
                }
            }
            let mut left = pending.len();
            for (seq, done, event) in pending {
                self.server.metrics.notify_outbox(&self.notify.name, left);
                // The records before this event's are passed.
                let before = self.cursors.get(chain).copied().unwrap_or(0);
                self.cursors.insert(chain.to_string(), before.max(seq - 1));
                self.deliver(chain, done, &event).await?;
                self.cursors.insert(chain.to_string(), done);
                self.saved
                    .insert(chain.to_string(), (done, tokio::time::Instant::now()));
                left -= 1;
            }
            self.cursors.insert(
                chain.to_string(),
                if read_all { newest.max(last) } else { last },
            );
            if read_all {
                return Ok(());
            }
        }
    }

    /// Delivers `event` until it is delivered or given up, recording every attempt, and with
    /// the last one moving the cursor on `chain` to `done`.
    async fn deliver(&mut self, chain: &str, done: i64, event: &Event) -> Result<(), Stopped> {
        let name = self.notify.name.clone();
        let server = self.server.clone();
        let system = &server.stores.system;
        let mut stop = self.stop.clone();
        // Attempts made before a restart count.
        let mut attempt = system
            .delivery_attempts(&name, &event.id)
            .await
            .unwrap_or(0);
        let body = body::render(event, self.notify.format);
        loop {
            if *stop.borrow() {
                return Err(Stopped);
            }
            attempt = attempt.saturating_add(1);
            let sent = tokio::select! {
                sent = self.send(event, &body) => sent,
                _ = stop.changed() => return Err(Stopped),
            };
            let (status, error) = match sent {
                Ok(status) if (200..300).contains(&status) => (Some(status), None),
                Ok(status) => (
                    Some(status),
                    Some(format!("the receiver answered {status}")),
                ),
                Err(error) => (None, Some(error)),
            };
            let outcome = match &error {
                None => Outcome::Delivered,
                Some(_) if notify::give_up(&self.notify.retry, attempt, self.age(event)) => {
                    Outcome::GivenUp
                }
                Some(_) => Outcome::Failed,
            };
            match (outcome, &error) {
                (Outcome::Delivered, _) => {
                    tracing::info!(notify = %name, event = %event.id, attempt, "notification delivered")
                }
                (Outcome::Failed, Some(error)) => {
                    tracing::warn!(notify = %name, event = %event.id, attempt, %error, "notification not delivered; trying again")
                }
                (_, error) => {
                    tracing::error!(notify = %name, event = %event.id, attempt, error = error.as_deref().unwrap_or(""), "NOTIFICATION GIVEN UP: the receiver was not told of this event")
                }
            }
            self.server.metrics.notify_attempt(&name, outcome.as_str());
            let recorded = system
                .record_delivery(
                    &Attempt {
                        notify: &name,
                        event: &event.id,
                        attempt,
                        status,
                        error: error.as_deref(),
                        outcome,
                    },
                    chain,
                    done,
                )
                .await;
            if let Err(e) = recorded {
                // The event is sent again after a restart: at least once, still.
                tracing::error!(notify = %name, event = %event.id, error = %e, "cannot record a notification attempt");
            }
            self.recorded += 1;
            if self.recorded >= PRUNE_EVERY {
                self.prune().await;
            }
            if outcome != Outcome::Failed {
                return Ok(());
            }
            let jitter: f64 = rand::thread_rng().gen();
            let wait = notify::wait_after(&self.notify.retry, attempt, jitter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = stop.changed() => return Err(Stopped),
            }
        }
    }

    /// One attempt: the receiver's status, or why there was none. The error never carries the
    /// URL (a Slack webhook's is its secret).
    async fn send(&self, event: &Event, body: &[u8]) -> Result<u16, String> {
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(&self.notify.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(body::EVENT_HEADER, event.kind.as_str())
            .header(body::ID_HEADER, &event.id)
            .header(body::TIMESTAMP_HEADER, timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(body::SIGNATURE_HEADER, body::sign(secret, timestamp, body));
        }
        match request.body(body.to_vec()).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(describe(e)),
        }
    }

    /// How old `event` is, by the server's clock.
    fn age(&self, event: &Event) -> Duration {
        match Timestamp::parse(&event.time) {
            Ok(time) => self.server.clock.now().since(time),
            Err(_) => Duration::ZERO,
        }
    }

    /// Saves each cursor that moved since it was saved: all of them when `now`, else those
    /// last saved [`SAVE_EVERY`] ago (a cursor moved only past records that are no events
    /// need not be saved at once: read again after a restart, they are still no events).
    async fn save_cursors(&mut self, now: bool) {
        let at = tokio::time::Instant::now();
        let due: Vec<(String, i64)> = self
            .cursors
            .iter()
            .filter(|(chain, seq)| match self.saved.get(*chain) {
                None => true,
                Some((saved, when)) => {
                    *saved < **seq && (now || at.duration_since(*when) >= SAVE_EVERY)
                }
            })
            .map(|(chain, seq)| (chain.clone(), *seq))
            .collect();
        for (chain, seq) in due {
            let saved = self
                .server
                .stores
                .system
                .advance_notify_cursor(&self.notify.name, &chain, seq)
                .await;
            match saved {
                Ok(()) => {
                    self.saved.insert(chain, (seq, at));
                }
                Err(e) => {
                    tracing::warn!(notify = %self.notify.name, %chain, error = %e, "cannot save the notify cursor");
                }
            }
        }
    }

    async fn prune(&mut self) {
        self.recorded = 0;
        if let Err(e) = self
            .server
            .stores
            .system
            .prune_deliveries(DELIVERIES_KEPT)
            .await
        {
            tracing::warn!(error = %e, "cannot prune the recorded notification attempts");
        }
    }
}

/// What kept a request from being answered, with its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let timed_out = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if timed_out {
        text.push_str(" (timed out)");
    }
    crate::audit::cap(&text, 512).into_owned()
}
