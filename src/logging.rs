//! Where log lines go: one buffer shared by every thread, written to stdout when it fills and at
//! least every [`FLUSH_EVERY`] by a thread of its own. A request pays for a copy under a lock, not
//! for a write(2) nor for waking another thread; under load one write carries hundreds of lines.
//! Nothing is dropped: a full buffer is written out by the thread that filled it.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The shared buffer; clones share it. [`BufferedStdout::flush_now`] at exit writes what is left.
#[derive(Clone)]
pub struct BufferedStdout(Arc<Mutex<BufWriter<Stdout>>>);

impl BufferedStdout {
    /// The buffer, and the thread that flushes it every [`FLUSH_EVERY`].
    pub fn start() -> BufferedStdout {
        let out = BufferedStdout(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            io::stdout(),
        ))));
        let flusher = out.clone();
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let _ = flusher.flush_now();
            });
        if let Err(e) = spawned {
            eprintln!("log lines will be written as they come: {e}");
            let _ = out.lock().flush();
        }
        out
    }

    /// Writes out what the buffer holds.
    pub fn flush_now(&self) -> io::Result<()> {
        self.lock().flush()
    }

    /// A panic elsewhere while holding the lock leaves a usable buffer: take it anyway.
    fn lock(&self) -> MutexGuard<'_, BufWriter<Stdout>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for BufferedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }

    /// One line under one lock: lines from two threads never interleave.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.lock().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushed by the flusher thread and at exit, not after every line.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedStdout;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
