//! Log lines captured on the test's own thread.
//!
//! A scoped subscriber (`set_default`) alone is not enough in a test binary
//! whose other tests run on other threads: while it is the only `Dispatch`
//! in the process, tracing-core 0.1 computes a callsite's interest from the
//! default of whichever thread reaches that callsite first
//! (tokio-rs/tracing#3611, #2874). A test on a thread without a subscriber
//! then caches "never" for a line this test waits for, and the line is lost
//! here too. A global no-op subscriber, installed once before the scoped one,
//! keeps every thread's first look at a callsite honest.

use std::sync::{Arc, Mutex, Once};

use tracing::subscriber::DefaultGuard;

/// Everything written by the subscriber `capture` installed.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

impl Log {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures this thread's log lines (info and above) until the guard drops.
pub(crate) fn capture() -> (Log, DefaultGuard) {
    static GLOBAL: Once = Once::new();
    GLOBAL.call_once(|| {
        // Fails only if another global subscriber is set, which serves as
        // well.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (log, guard)
}
