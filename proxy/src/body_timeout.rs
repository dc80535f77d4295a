//! An idle limit on streamed bodies: a body that yields nothing for the limit fails.
//!
//! The upstream timeout covers the wait for the response head only. Without this, a client
//! that stops sending its body half-way, or an upstream that stops sending its response
//! after the head, would hold both connections forever (nginx's `client_body_timeout` and
//! `proxy_read_timeout` play the same part).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Which body went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stalled {
    /// The client's request body, on its way to the upstream.
    #[error("the client sent nothing of its request body for too long")]
    RequestBody,
    /// The upstream's response body, on its way to the client.
    #[error("the upstream sent nothing of its response body for too long")]
    ResponseBody,
}

/// An error of the client's request body, marked as the client's on its way through the
/// upstream client (which reports it as its own failure to send).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub axum::Error);

/// `inner`, failing with [`Stalled`] once it has been pending for `limit` without a frame.
pub struct IdleTimeout<B> {
    inner: B,
    limit: Duration,
    which: Stalled,
    /// Allocated the first time the body has to wait: a body that is ready whenever it is
    /// polled (most small ones) never registers a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` runs for the current wait (it is re-armed after each frame).
    armed: bool,
    /// Shared with the wait for the upstream's answer; see [`Self::progress`].
    progress: Option<Arc<BodyProgress>>,
}

/// How far a request body on its way to the upstream has got. The upstream's answer is due
/// `timeout` after the body's last progress (a frame, its end, or the request's start), except
/// while the body waits for the client: then the body's own idle limit applies.
#[derive(Debug)]
pub struct BodyProgress {
    started: Instant,
    /// Milliseconds after `started` of the last progress, shifted left by two; bit 1 set once
    /// the body has ended (or was dropped), bit 0 while it is polled and waiting for the
    /// client's next bytes. One word, so a reader never pairs a new flag with an old time.
    state: AtomicU64,
}

const WAITING_ON_CLIENT: u64 = 1;
const FINISHED: u64 = 2;

impl BodyProgress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            state: AtomicU64::new(0),
        }
    }

    fn mark(&self, flags: u64) {
        let now = self.started.elapsed().as_millis() as u64;
        self.state.store(now << 2 | flags, Ordering::Relaxed);
    }

    /// Whether the body has ended, or was dropped unfinished.
    pub fn finished(&self) -> bool {
        self.state.load(Ordering::Relaxed) & FINISHED != 0
    }

    /// `timeout` after the last progress, or `None` while the body waits for the client.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        if state & WAITING_ON_CLIENT != 0 {
            return None;
        }
        Some(self.started + Duration::from_millis(state >> 2) + timeout)
    }

    /// Resolves once the body has made no progress for `timeout`, not counting the time it
    /// waits for the client (the body's own idle limit covers that).
    pub async fn quiet_for(&self, timeout: Duration) {
        loop {
            match self.deadline(timeout) {
                Some(due) if due <= Instant::now() => return,
                Some(due) => tokio::time::sleep_until(due).await,
                // The client is being waited for; look again shortly.
                None => tokio::time::sleep(timeout.min(Duration::from_secs(1))).await,
            }
        }
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, limit: Duration, which: Stalled) -> Self {
        Self {
            inner,
            limit,
            which,
            sleep: None,
            armed: false,
            progress: None,
        }
    }
}

impl<B: Body> IdleTimeout<B> {
    /// The body's progress, for the wait on the upstream's answer ([`BodyProgress`]); `None`
    /// for a body that is empty from the start.
    pub fn progress(&mut self) -> Option<Arc<BodyProgress>> {
        if self.inner.is_end_stream() {
            return None;
        }
        let progress = Arc::new(BodyProgress::new());
        self.progress = Some(progress.clone());
        Some(progress)
    }
}

impl<B> Drop for IdleTimeout<B> {
    fn drop(&mut self) {
        // Ended, let go of ([`Detach`]), or given up by hyper (an error).
        if let Some(progress) = &self.progress {
            progress.mark(FINISHED);
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            if let Some(progress) = &this.progress {
                let ended = frame.is_none() || this.inner.is_end_stream();
                progress.mark(if ended { FINISHED } else { 0 });
            }
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if let Some(progress) = &this.progress {
            progress.mark(WAITING_ON_CLIENT);
        }
        let deadline = Instant::now() + this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            sleep.as_mut().reset(deadline);
            this.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(this.which)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that can be let go of from outside ([`Detach`]). When the upstream times out
/// while hyper's client is still blocked writing the request body to it, the client owns
/// the body until the upstream closes the connection; meanwhile the client's own
/// connection (and its place under the connection cap) could not finish either, since hyper
/// serves it only once the request body is read or dropped.
pub struct Detachable<B> {
    shared: Arc<Mutex<Option<B>>>,
}

/// Drops the body of a [`Detachable`], wherever it is held.
pub struct Detach(Box<dyn Fn() + Send + Sync>);

impl<B: Send + 'static> Detachable<B> {
    /// Wraps `body`; the [`Detach`] lets go of it.
    pub fn new(body: B) -> (Self, Detach) {
        let shared = Arc::new(Mutex::new(Some(body)));
        let held = shared.clone();
        let detach = Detach(Box::new(move || {
            let body = lock(&held).take();
            drop(body);
        }));
        (Self { shared }, detach)
    }
}

impl Detach {
    /// Drops the body; its holder then reads an error from it.
    pub fn detach(&self) {
        (self.0)();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read from a body after [`Detach::detach`].
#[derive(Debug, thiserror::Error)]
#[error("the request body was let go after the upstream timed out")]
pub struct Detached;

impl<B> Body for Detachable<B>
where
    B: Body<Error = Box<dyn std::error::Error + Send + Sync>> + Unpin,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match lock(&self.shared).as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(Some(Err(Box::new(Detached)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Detached: not the end, or hyper would finish a chunked body cut short as if it
        // were whole; its next poll reads the error instead.
        lock(&self.shared).as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared)
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Chunks =
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A body yielding one chunk after each gap, in order.
    fn spaced(gaps: &[u64]) -> StreamBody<Chunks> {
        use futures_util::StreamExt;
        let gaps = gaps.to_vec();
        let stream = futures_util::stream::iter(gaps)
            .then(|gap| async move {
                tokio::time::sleep(Duration::from_secs(gap)).await;
                Ok(Frame::data(Bytes::from(format!("<{gap}>"))))
            })
            .boxed();
        StreamBody::new(stream)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_quiet_for_longer_than_the_limit_fails_with_which_one() {
        let mut body = IdleTimeout::new(
            spaced(&[0, 10]),
            Duration::from_secs(5),
            Stalled::ResponseBody,
        );
        let first = body
            .frame()
            .await
            .and_then(Result::ok)
            .and_then(|f| f.into_data().ok());
        assert_eq!(first.as_deref(), Some(&b"<0>"[..]));
        let error = body
            .frame()
            .await
            .and_then(Result::err)
            .map(|e| crate::error::source_of::<Stalled>(e.as_ref()).copied());
        assert_eq!(error, Some(Some(Stalled::ResponseBody)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_is_per_wait_not_for_the_whole_body() {
        // Three waits of 4 s each under a 5 s limit: 12 s in all, never 5 s of silence.
        let mut body = IdleTimeout::new(
            spaced(&[4, 4, 4]),
            Duration::from_secs(5),
            Stalled::RequestBody,
        );
        let mut collected = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => collected.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Err(error) => panic!("stalled: {error}"),
            }
        }
        assert_eq!(collected, b"<4><4><4>");
    }
}
