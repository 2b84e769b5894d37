//! Accepting and serving connections, with what a client may hold bounded: the connection cap,
//! the header, body and idle timeouts, the TLS handshake, and what to do when the process runs
//! out of open files. Knows nothing of routes: it serves whatever router it is given.
//!
//! Why an accept loop of our own over hyper-util's connection builder, rather than
//! axum-server's `serve`: axum-server accepts without limit and retries a failed accept every
//! 50 ms without a word, so neither the cap nor a named "too many open files" can be added from
//! outside it. Here a connection is only accepted once a permit of the cap is free: the ones
//! over it wait in the kernel's backlog, holding no file of ours, and are taken in arrival
//! order as the header and idle timeouts close idle ones. So a request that arrives behind
//! idle connections waits about one header timeout for every `max_connections` of them queued
//! ahead of it (the listen backlog bounds that queue), never indefinitely; and new idle
//! connections queue behind it. The TLS handshake still comes from axum-server's acceptor,
//! given the header timeout as its own.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::origin::PeerCertificate;
use crate::certificate::ClientCertificate;
use crate::config::Connections;

/// How long connections get to finish their requests once the server shuts down, or once one
/// is found idle, before they are closed.
const GRACE: Duration = Duration::from_secs(10);

/// Open files the server keeps for itself (databases, logs, key files) beside its connections,
/// at the least; twice what it has open when it starts serving, where that is more.
const RESERVED_FILES: u64 = 128;

/// Raises the open-file soft limit to the hard limit and logs the figure; returns the limit
/// in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            match before {
                Some((soft, hard)) if now > soft => {
                    tracing::info!(from = soft, to = now, hard, "open-file limit raised")
                }
                Some((_, hard)) => tracing::info!(limit = now, hard, "open-file limit"),
                None => tracing::info!(limit = now, "open-file limit"),
            }
            Some(now)
        }
        Err(e) => {
            tracing::warn!(error = %e, limit = ?before.map(|(soft, _)| soft), "cannot raise the open-file limit");
            before.map(|(soft, _)| soft)
        }
    }
}

/// The connection cap the open-file limit allows: `max_connections`, or fewer, with a warning
/// saying why, when the limit leaves too few files for that many connections.
fn cap(max_connections: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return max_connections;
    };
    // Databases open more connections under load than at start; hence twice.
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let reserved = RESERVED_FILES.max(2 * open_now);
    let room = usize::try_from(soft.saturating_sub(reserved).max(1)).unwrap_or(usize::MAX);
    if room < max_connections {
        tracing::warn!(
            max_connections,
            serving = room,
            open_file_limit = soft,
            reserved,
            "max_connections lowered: the open-file limit leaves room for fewer connections; raise the limit (ulimit -n, LimitNOFILE= in systemd) or lower max_connections"
        );
        room
    } else {
        max_connections
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then gives open connections
/// `GRACE` to finish.
pub async fn serve(
    router: Router,
    listener: std::net::TcpListener,
    limits: Connections,
    tls: Option<RustlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let max = cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(max));
    let tls =
        tls.map(|config| RustlsAcceptor::new(config).handshake_timeout(limits.header_timeout));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break None,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        backoff.reset();
                        break Some(accepted);
                    }
                    Err(e) => backoff.after(&e).await,
                },
            }
        };
        let Some((tcp, peer)) = accepted else {
            drop(permit);
            break;
        };
        let conn = Conn {
            router: router.clone(),
            builder: builder.clone(),
            limits,
            peer,
            certificate: None,
            stopped: stopped.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            conn.run(tcp, tls).await;
        });
    }
    // Refuse new connections at once rather than let them wait in the backlog for nothing.
    drop(listener);
    finish(stop, permits, max).await
}

/// Tells every connection to finish, and waits for them (each closes itself after [`GRACE`]).
async fn finish(stop: watch::Sender<bool>, permits: Arc<Semaphore>, max: usize) -> io::Result<()> {
    let _ = stop.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), permits.acquire_many(all)).await;
    Ok(())
}

/// Waiting after a failed accept. Running out of open files is said as such, with what to do;
/// the connection stays in the backlog and is accepted once a file is free, so the server
/// keeps serving the connections it has instead of exiting or spinning on the error.
#[derive(Default)]
struct Backoff {
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    /// The wait after one of `delay`: doubled, from [`Self::FIRST`] up to [`Self::MOST`].
    fn next(delay: Duration) -> Duration {
        (delay * 2).clamp(Self::FIRST, Self::MOST)
    }

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn after(&mut self, e: &io::Error) {
        match accept_failure(e) {
            // The peer gave up before we took it: nothing to wait for.
            None => return,
            Some(Failure::OutOfFiles(sentence)) => tracing::error!(error = %e, "{sentence}"),
            Some(Failure::Other) => tracing::warn!(error = %e, "cannot accept a connection"),
        }
        self.delay = Self::next(self.delay);
        tokio::time::sleep(self.delay).await;
    }
}

/// What a failed accept means for the accept loop.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The process or the system has no file left for the connection: the sentence for the log.
    OutOfFiles(String),
    Other,
}

fn accept_failure(e: &io::Error) -> Option<Failure> {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO) => None,
        Some(code @ (libc::EMFILE | libc::ENFILE)) => {
            let whose = if code == libc::EMFILE {
                "this process's"
            } else {
                "the system's"
            };
            Some(Failure::OutOfFiles(format!(
                "too many open files: {whose} open-file limit is reached, so no new connection is accepted until one closes (the server goes on serving the others); raise the limit (ulimit -n, LimitNOFILE= in systemd) or lower server.max_connections"
            )))
        }
        _ => Some(Failure::Other),
    }
}

/// One accepted connection and what serving it needs.
struct Conn {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Connections,
    peer: SocketAddr,
    /// The verified client certificate of the connection.
    certificate: Option<PeerCertificate>,
    stopped: watch::Receiver<bool>,
}

/// The client certificate `tls` verified, read once for all the connection's requests. One
/// that cannot be read is as good as none (it was verified, so this is unusual): logged.
fn presented(peer: SocketAddr, tls: &rustls::ServerConnection) -> Option<PeerCertificate> {
    let der = tls.peer_certificates()?.first()?;
    match ClientCertificate::from_der(der) {
        Ok(certificate) => Some(PeerCertificate(Arc::new(certificate))),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "client certificate ignored");
            None
        }
    }
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, tls: Option<RustlsAcceptor>) {
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall terraform's small
        // request/response exchanges by tens of milliseconds each.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match tls {
            None => self.http(tcp).await,
            // The acceptor gives up on a handshake after the header timeout.
            Some(tls) => match tls.accept(tcp, ()).await {
                Ok((stream, ())) => {
                    self.certificate = presented(self.peer, stream.get_ref().1);
                    self.http(stream).await
                }
                // A certificate the client authorities do not vouch for ends here too: at debug,
                // as anyone can fail a handshake as often as they connect.
                Err(e) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            },
        }
    }

    async fn http<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = Service {
            router: self.router,
            peer: self.peer,
            certificate: self.certificate,
            body_timeout: self.limits.body_timeout,
            activity: activity.clone(),
        };
        let io = TokioIo::new(Tracked {
            inner: io,
            activity: activity.clone(),
        });
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut stopped = self.stopped;
        let idle_timeout = self.limits.idle_timeout;
        // Once closing, the connection has until then to finish what it is doing.
        let mut closing: Option<Instant> = None;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(peer = %self.peer, error = %e, "connection closed");
                    }
                    return;
                }
                // The one value ever sent is "stop"; a dropped sender means the same.
                _ = stopped.changed(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + GRACE);
                }
                () = activity.idle_for(idle_timeout), if closing.is_none() => {
                    tracing::debug!(peer = %self.peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + idle_timeout.min(GRACE));
                }
                () = until(closing) => {
                    tracing::debug!(peer = %self.peer, "connection closed after its grace period");
                    return;
                }
            }
        }
    }
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once the connection has moved no byte for `timeout` while no request of it
    /// was being handled (a handler waiting on the database is not idleness).
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = last + timeout;
            if Instant::now() >= due && self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep_until(due.max(Instant::now() + timeout.min(Duration::from_secs(1))))
                .await;
        }
    }
}

/// A request being handled; the connection counts as active until it is answered.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream, noting each byte it moves.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper calls it: with the peer's address (for `ConnectInfo`), the body given
/// its deadline, and the request counted as busy until answered.
#[derive(Clone)]
struct Service {
    router: Router,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
    body_timeout: Duration,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use tower::Service as _;
        let busy = Busy::new(&self.activity);
        let deadline = Instant::now() + self.body_timeout;
        let mut request = request.map(|body| Body::new(Deadline::new(body, deadline)));
        request.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = router.call(request).await;
            drop(busy);
            response
        })
    }
}

/// A request body that fails with [`BodyTimedOut`] when its last byte has not arrived by its
/// deadline.
pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant) -> Deadline<B> {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            expired: false,
        }
    }
}

/// A request body did not arrive within `server.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the server's body_timeout")]
pub struct BodyTimedOut;

/// Whether a body error (anywhere in its chain of sources) is a [`Deadline`]'s.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired = true;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_files_is_named_and_a_peer_giving_up_is_not_a_failure() {
        let out = accept_failure(&io::Error::from_raw_os_error(libc::EMFILE));
        assert!(
            matches!(&out, Some(Failure::OutOfFiles(s)) if s.starts_with("too many open files: this process's open-file limit")),
            "{out:?}"
        );
        let out = accept_failure(&io::Error::from_raw_os_error(libc::ENFILE));
        assert!(matches!(&out, Some(Failure::OutOfFiles(s)) if s.contains("the system's")));
        assert_eq!(
            accept_failure(&io::Error::from_raw_os_error(libc::ECONNABORTED)),
            None
        );
        assert_eq!(
            accept_failure(&io::Error::from_raw_os_error(libc::ENOMEM)),
            Some(Failure::Other)
        );
    }

    #[test]
    fn backoff_grows_to_a_second() {
        let mut delays = vec![Backoff::next(Duration::ZERO)];
        for _ in 0..10 {
            delays.push(Backoff::next(*delays.last().unwrap()));
        }
        assert_eq!(delays[0], Backoff::FIRST);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), Backoff::MOST);
    }

    #[tokio::test]
    async fn a_body_past_its_deadline_fails_with_body_timed_out() {
        use http_body_util::BodyExt;
        let (_sender, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<http_body::Frame<axum::body::Bytes>, Infallible>,
            >(1);
            (tx, http_body_util::StreamBody::new(tokio_stream(rx)))
        };
        let mut body = Deadline::new(body, Instant::now() + Duration::from_millis(20));
        let err = body.frame().await.expect("a frame").expect_err("timed out");
        assert!(timed_out(err.as_ref()));
        assert!(body.frame().await.is_none());
    }

    fn tokio_stream<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
