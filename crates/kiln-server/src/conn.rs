//! Serving connections: hyper's HTTP/1 on each accepted socket, with the
//! limits that keep slow, idle or too many clients from holding the server.
//!
//! - **Connection cap.** A semaphore permit is taken before each `accept`,
//!   so beyond `max_connections` new connections wait in the listen backlog
//!   until one closes; nothing is refused.
//! - **Header timeout.** A connection's first request head must be complete
//!   within `header_read` of the accept, a later one within `header_read`
//!   of its first byte; a slowloris is dropped.
//! - **Idle timeout.** With no request in progress and no byte of the next
//!   one, a keep-alive connection is dropped after `idle`.
//! - **Body timeout.** A request body must be complete within `body_read`
//!   of the end of its head; a body still trickling in is answered 408 and
//!   the connection closed.
//!
//! A request is in progress from its head until hyper is done with the
//! answer's body, so neither timer runs while a runner's `next` is held or a
//! log is followed, however quiet they are.
//!
//! Each connection has a watchdog over its [`Activity`]: reads mark the
//! start of a request head, the service marks requests in and out, and the
//! watchdog drops the connection when the deadline those give passes.

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// The timeouts each connection is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) body_read: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// open connections finish their requests (as `axum::serve`'s graceful
/// shutdown does). Dropping the future drops every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(
        max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of file descriptors, most likely: wait for some to close.
                        tracing::error!(error = %err, "cannot accept a connection");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            limits,
            stopping.clone(),
            permit,
        ));
        // Finished connections are reaped here, so at most one accept's worth wait.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// Errors that concern one connection, not the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = ConnService {
        router: TowerToHyperService::new(router),
        activity: Arc::clone(&activity),
        body_read: limits.body_read,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog times request heads (hyper's own timer would also end
    // keep-alive connections at the header timeout).
    builder.header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let stop = async {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(error = %err, "a connection ended with an error");
                }
                return;
            }
            () = &mut stop, if !stopped => {
                stopped = true;
                connection.as_mut().graceful_shutdown();
            }
            why = activity.expired(limits) => {
                tracing::debug!(why, "closing a connection");
                return;
            }
        }
    }
}

/// What a connection is doing, for its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Told when the deadline may have moved earlier or appeared.
    changed: Notify,
}

struct Phase {
    /// Requests whose head was read and whose answer hyper still holds.
    in_flight: usize,
    /// With none in flight: since when the server has waited for the next
    /// head (`head_started: false`), or since its first byte (or the
    /// accept, for a connection's first request).
    since: Instant,
    head_started: bool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase {
                in_flight: 0,
                since: Instant::now(),
                head_started: true,
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived.
    fn read(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && !phase.head_started {
            phase.head_started = true;
            phase.since = Instant::now();
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.phase().in_flight += 1;
    }

    fn request_finished(&self) {
        let mut phase = self.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 {
            phase.head_started = false;
            phase.since = Instant::now();
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// When the connection is to be dropped, and why; `None` while a request
    /// is in progress (or for a timeout too long to reach).
    fn deadline(&self, limits: Limits) -> Option<(Instant, &'static str)> {
        let phase = self.phase();
        if phase.in_flight > 0 {
            return None;
        }
        let (timeout, why) = if phase.head_started {
            (limits.header_read, "the request head took too long")
        } else {
            (limits.idle, "idle")
        };
        Some((phase.since.checked_add(timeout)?, why))
    }

    /// Completes when the connection has been slow or idle for too long.
    async fn expired(&self, limits: Limits) -> &'static str {
        loop {
            match self.deadline(limits) {
                None => self.changed.notified().await,
                Some((at, why)) => {
                    if Instant::now() >= at {
                        return why;
                    }
                    tokio::select! {
                        () = self.changed.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// The socket, telling its [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, behind the request accounting and the body timer.
struct ConnService {
    router: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    body_read: Duration,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let in_flight = InFlight::start(Arc::clone(&self.activity));
        let timed_out = Arc::new(AtomicBool::new(false));
        let body_read = self.body_read;
        let request = request.map(|body| TimedBody {
            body,
            deadline: Instant::now().checked_add(body_read),
            timer: None,
            timed_out: Arc::clone(&timed_out),
        });
        let answer = hyper::service::Service::call(&self.router, request);
        Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // Whatever the handler made of the failed read, the answer is 408.
            let response = if timed_out.load(Ordering::Acquire) {
                body_timed_out(body_read)
            } else {
                response
            };
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// 408, and the connection closed: the rest of the body is never read.
fn body_timed_out(body_read: Duration) -> Response<Body> {
    let message = format!(
        "the request body did not arrive within {}",
        humantime::format_duration(body_read)
    );
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request in progress, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// An answer's body; the request is in progress until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    body: Incoming,
    /// `None`: a timeout too long to reach.
    deadline: Option<Instant>,
    /// Set on the first wait, so a body read at once costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let Some(deadline) = this.deadline else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
