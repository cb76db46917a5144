//! Guest stdio plumbing: a bounded in-memory sink for printed output, and (for the lite
//! flavour) a frame channel over the guest's own stdin and stdout.
//!
//! wasmtime-wasi's `MemoryOutputPipe` cannot be emptied between execs and traps the guest when
//! full; a session needs a buffer it can drain after every exec and that silently drops (and
//! counts) bytes past the cap, so a print loop cannot exhaust host memory.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    cap: usize,
    dropped: usize,
}

/// The WASI stream traits of a sink whose `push(&self, &[u8])` takes everything written:
/// writes never block and never fail (a capped sink counts and drops the excess), so the
/// guest cannot observe the cap as an error.
macro_rules! push_stream {
    ($t:ty) => {
        impl IsTerminal for $t {
            fn is_terminal(&self) -> bool {
                false
            }
        }

        impl StdoutStream for $t {
            fn p2_stream(&self) -> Box<dyn OutputStream> {
                Box::new(self.clone())
            }
            fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
                Box::new(self.clone())
            }
        }

        #[wasmtime_wasi::async_trait]
        impl OutputStream for $t {
            fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
                self.push(&bytes);
                Ok(())
            }
            fn flush(&mut self) -> Result<(), StreamError> {
                Ok(())
            }
            fn check_write(&mut self) -> Result<usize, StreamError> {
                Ok(1 << 20)
            }
        }

        #[wasmtime_wasi::async_trait]
        impl Pollable for $t {
            async fn ready(&mut self) {}
        }

        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                self.push(buf);
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
    };
}

/// Printed output of the guest, shared by stdout and stderr so that their order is kept.
#[derive(Debug, Clone)]
pub(crate) struct OutputCapture(Arc<Mutex<Buf>>);

impl OutputCapture {
    pub(crate) fn new(cap_bytes: usize) -> Self {
        OutputCapture(Arc::new(Mutex::new(Buf {
            cap: cap_bytes,
            ..Buf::default()
        })))
    }

    /// Takes what was written since the last call: (bytes kept, bytes dropped).
    pub(crate) fn take(&self) -> (Vec<u8>, usize) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = std::mem::take(&mut b.dropped);
        (std::mem::take(&mut b.data), dropped)
    }

    pub(crate) fn set_cap(&self, cap_bytes: usize) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).cap = cap_bytes;
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = b.cap.saturating_sub(b.data.len());
        let keep = room.min(bytes.len());
        b.data.extend_from_slice(&bytes[..keep]);
        b.dropped += bytes.len() - keep;
    }
}

push_stream!(OutputCapture);

/// Frame header: a record-separator marker and eight hex digits of payload length. Must match
/// `_MARK` in driver.py.
pub(crate) const FRAME_MARK: &[u8] = b"\x1eSA";
const HEADER_LEN: usize = 3 + 8;

/// Encodes one host -> guest frame.
pub(crate) fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(FRAME_MARK);
    out.extend_from_slice(format!("{:08x}", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the frame sink hands to its handler.
pub(crate) enum SinkEvent {
    /// A complete guest -> host frame.
    Frame(Vec<u8>),
    /// Bytes that are not a frame: the guest wrote to fd 1 behind the driver's back.
    Garbage,
}

type Handler = Arc<dyn Fn(SinkEvent) + Send + Sync>;

/// The lite guest's fd 1: reassembles frames and hands each to `handler`, on the guest thread.
#[derive(Clone)]
pub(crate) struct FrameSink {
    pending: Arc<Mutex<Vec<u8>>>,
    handler: Handler,
    max_frame: usize,
}

impl FrameSink {
    pub(crate) fn new(max_frame: usize, handler: Handler) -> Self {
        FrameSink {
            pending: Arc::default(),
            handler,
            max_frame,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut events = Vec::new();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.extend_from_slice(bytes);
            loop {
                if p.len() < HEADER_LEN {
                    if !FRAME_MARK.starts_with(&p[..p.len().min(FRAME_MARK.len())]) {
                        p.clear();
                        events.push(SinkEvent::Garbage);
                    }
                    break;
                }
                let len = std::str::from_utf8(&p[FRAME_MARK.len()..HEADER_LEN])
                    .ok()
                    .and_then(|h| usize::from_str_radix(h, 16).ok());
                match len {
                    Some(n) if p.starts_with(FRAME_MARK) && n <= self.max_frame => {
                        if p.len() < HEADER_LEN + n {
                            break;
                        }
                        let frame = p[HEADER_LEN..HEADER_LEN + n].to_vec();
                        p.drain(..HEADER_LEN + n);
                        events.push(SinkEvent::Frame(frame));
                    }
                    _ => {
                        p.clear();
                        events.push(SinkEvent::Garbage);
                        break;
                    }
                }
            }
        }
        // Handlers run outside the lock: a tool callback may take a while.
        for e in events {
            (self.handler)(e);
        }
    }
}

push_stream!(FrameSink);

/// The lite guest's fd 0: the frames the host queued for it. A turn runs on the host's own
/// thread, so nothing could arrive while the guest waits: an empty queue reads as end of file
/// (the driver then gives the turn up) instead of blocking forever.
#[derive(Clone, Default)]
pub(crate) struct QueueStdin(Arc<Mutex<std::collections::VecDeque<u8>>>);

impl QueueStdin {
    /// Appends bytes for the guest to read.
    pub(crate) fn push(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(bytes);
    }

    /// Drops whatever the guest left unread (answers to frames a snippet forged).
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn pop(&self, size: usize) -> Option<Vec<u8>> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return None;
        }
        let n = size.min(q.len());
        Some(q.drain(..n).collect())
    }
}

impl IsTerminal for QueueStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for QueueStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for QueueStdin {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        // `Closed` is what WASI preview 1 turns into a zero-byte read; an empty `Ok` would be
        // EINTR, which CPython retries in a loop.
        match self.pop(size.max(1)) {
            Some(v) => Ok(Bytes::from(v)),
            None => Err(StreamError::Closed),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QueueStdin {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncRead for QueueStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(v) = self.pop(buf.remaining()) {
            buf.put_slice(&v);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> (FrameSink, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let s = FrameSink::new(
            100,
            Arc::new(move |e| {
                g.lock().unwrap().push(match e {
                    SinkEvent::Frame(f) => String::from_utf8(f).unwrap(),
                    SinkEvent::Garbage => "<garbage>".into(),
                })
            }),
        );
        (s, got)
    }

    #[test]
    fn frames_reassemble_across_writes() {
        let (s, got) = sink();
        let mut bytes = encode_frame(b"{\"a\":1}");
        bytes.extend(encode_frame(b"{}"));
        for chunk in bytes.chunks(3) {
            s.push(chunk);
        }
        assert_eq!(*got.lock().unwrap(), vec!["{\"a\":1}", "{}"]);
    }

    #[test]
    fn garbage_and_oversized_frames_are_flagged() {
        let (s, got) = sink();
        s.push(b"hello");
        s.push(&encode_frame(&[b'x'; 200]));
        assert_eq!(*got.lock().unwrap(), vec!["<garbage>", "<garbage>"]);
    }

    #[test]
    fn capture_keeps_the_cap_and_counts_the_rest() {
        let c = OutputCapture::new(4);
        c.push(b"abcdef");
        assert_eq!(c.take(), (b"abcd".to_vec(), 2));
        assert_eq!(c.take(), (Vec::new(), 0));
    }
}
