//! A request body arriving in DATA frames: the connection puts each frame's bytes in the
//! stream's [`Inbox`]; the pipeline reads them as a [`RequestBody`], on whatever task forwards
//! them (hyper's client runs its own). What the reader took goes back to the client as flow
//! control window, so a slow server holds the client back instead of filling memory here.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Why a request body ended before its END_STREAM.
#[derive(Debug, thiserror::Error)]
pub(in crate::proxy) enum BodyBroken {
    #[error("the client's stream ended before its request body did")]
    Reset,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    /// END_STREAM arrived: nothing follows the chunks.
    ended: bool,
    broken: Option<fn() -> BodyBroken>,
    /// Bytes the reader took that the connection has not yet given back as window.
    taken: usize,
    reader: Option<Waker>,
    connection: Option<Waker>,
}

/// One stream's request body between the connection and its reader.
#[derive(Default)]
pub(super) struct Inbox {
    state: Mutex<State>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection wakes `waker` when the reader has taken bytes to give back.
    pub(super) fn new(connection: Waker) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(State {
                connection: Some(connection),
                ..State::default()
            }),
        })
    }

    /// One DATA frame's bytes (empty ones are not kept); `end`: its END_STREAM.
    pub(super) fn push(&self, data: Bytes, end: bool) {
        let mut state = self.lock();
        if !data.is_empty() {
            state.chunks.push_back(data);
        }
        state.ended |= end;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// The body ends without its END_STREAM; what it had not read is dropped (and returned as
    /// the number of bytes, to give back to the connection's window).
    pub(super) fn break_off(&self, why: fn() -> BodyBroken) -> usize {
        let mut state = self.lock();
        state.broken = Some(why);
        let dropped = state.chunks.drain(..).map(|c| c.len()).sum();
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
        dropped
    }

    /// Bytes the reader took since the last call.
    pub(super) fn taken(&self) -> usize {
        std::mem::take(&mut self.lock().taken)
    }
}

/// The reader's side; without an inbox, the body of a request that has none (its HEADERS
/// ended the stream).
pub(in crate::proxy) struct RequestBody {
    inbox: Option<Arc<Inbox>>,
    /// Below this many bytes taken the connection is not woken: it gives window back in
    /// pieces of at least this size (half the stream's window).
    wake_after: usize,
}

impl RequestBody {
    pub(super) fn new(inbox: Option<Arc<Inbox>>, wake_after: usize) -> Self {
        Self { inbox, wake_after }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyBroken>>> {
        let wake_after = self.wake_after;
        let Some(inbox) = &self.inbox else {
            return Poll::Ready(None);
        };
        let mut state = inbox.lock();
        if let Some(why) = state.broken {
            return Poll::Ready(Some(Err(why())));
        }
        if let Some(chunk) = state.chunks.pop_front() {
            let before = state.taken;
            state.taken += chunk.len();
            if before < wake_after && state.taken >= wake_after || state.chunks.is_empty() {
                if let Some(connection) = &state.connection {
                    connection.wake_by_ref();
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let Some(inbox) = &self.inbox else {
            return true;
        };
        let state = inbox.lock();
        state.ended && state.chunks.is_empty() && state.broken.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.inbox {
            None => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_reader_gets_the_chunks_then_the_end_and_the_connection_hears_what_it_took() {
        let woken = Arc::new(Count(0.into()));
        let inbox = Inbox::new(Waker::from(Arc::clone(&woken)));
        let mut body = RequestBody::new(Some(Arc::clone(&inbox)), 4);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        inbox.push(Bytes::from_static(b"abc"), false);
        inbox.push(Bytes::from_static(b"de"), true);
        let first = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(f))) if f.data_ref().unwrap() == "abc"));
        assert!(!body.is_end_stream());
        let second = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(second, Poll::Ready(Some(Ok(f))) if f.data_ref().unwrap() == "de"));
        assert!(body.is_end_stream());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(inbox.taken(), 5);
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_broken_body_is_an_error_and_gives_back_what_was_not_read() {
        let inbox = Inbox::new(Waker::noop().clone());
        let mut body = RequestBody::new(Some(Arc::clone(&inbox)), 4);
        inbox.push(Bytes::from_static(b"abcdef"), false);
        assert_eq!(inbox.break_off(|| BodyBroken::Reset), 6);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(BodyBroken::Reset)))
        ));
    }
}
