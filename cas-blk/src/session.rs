//! A served disk and the work around it: the image opened as a disk
//! (writable through an overlay, or read-only), the boot prefetch thread
//! that fetches a recorded boot's chunks ahead of the guest, and the thread
//! that records this boot's list ([`crate::prefetch`]). Whatever serves the
//! disk (the NBD server today) gets it as a [`BlockDevice`]; stopping the
//! session stops and joins both threads and flushes the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{self, BootFiles, OpenError, OpenOptions};
use crate::disk::{BlockDevice, CowDisk, DiskError};
use crate::overlay::{Overlay, OverlayBase, OverlayError};
use crate::prefetch;
use crate::store::ChunkStore;
use crate::Index;

/// The disk a session serves.
pub type SessionDisk = CowDisk<Box<dyn ChunkStore>>;

#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
}

/// Opens the image at `opts` as a disk: writable through the overlay at
/// `overlay` (created if absent), read-only without one. Also returns the
/// image's boot prefetch list, for the caller to run (see [`DiskSession`]).
pub fn open_disk(
    opts: &OpenOptions,
    overlay: Option<&Path>,
) -> Result<(SessionDisk, BootFiles, [u8; 32]), DiskOpenError> {
    let image = client::open(opts)?;
    let overlay = match overlay {
        Some(path) => {
            let index = image.reader.index();
            let base = OverlayBase {
                name: index.name.clone(),
                generation: index.generation,
                image_size: index.image_size,
            };
            Some(Overlay::open_or_create(path, &base)?)
        }
        None => None,
    };
    Ok((
        CowDisk::new(image.reader, overlay),
        image.boot,
        image.index_sha256,
    ))
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub open: OpenOptions,
    /// Overlay file taking the writes (created if absent); `None`: read-only.
    pub overlay: Option<PathBuf>,
    /// Prefetch the chunks of the image's boot prefetch list, if it has one.
    pub prefetch: bool,
    /// Record the chunks first read within this long of the first read as
    /// the image's boot prefetch list; zero records nothing.
    pub boot_window: Duration,
}

/// Chunks fetched at once by the boot prefetch.
const PREFETCH_THREADS: usize = 2;
/// How often the recorder saves its list while the window runs: a guest
/// destroyed early (its server killed) still leaves a list.
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// How often the recorder looks for the guest's first read.
const FIRST_READ_POLL: Duration = Duration::from_millis(500);

/// A disk being served, with its boot prefetch and recording threads.
#[derive(Debug)]
pub struct DiskSession {
    disk: Arc<SessionDisk>,
    index_sha256: [u8; 32],
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl DiskSession {
    /// Opens the disk and starts its background threads.
    pub fn open(opts: &SessionOptions) -> Result<Self, DiskOpenError> {
        let (disk, boot, index_sha256) = open_disk(&opts.open, opts.overlay.as_deref())?;
        let mut session = Self {
            disk: Arc::new(disk),
            index_sha256,
            stop: Arc::new(Stop::default()),
            threads: Vec::new(),
        };
        if let (true, Some((positions, from))) = (opts.prefetch, boot.list) {
            let (disk, stop) = (Arc::clone(&session.disk), Arc::clone(&session.stop));
            session.spawn("prefetch", move || {
                boot_prefetch(&disk, &positions, &from, &stop);
            })?;
        }
        if let (false, Some(path)) = (opts.boot_window.is_zero(), boot.record_to) {
            let (disk, stop) = (Arc::clone(&session.disk), Arc::clone(&session.stop));
            let window = opts.boot_window;
            session.spawn("boot-record", move || {
                record_boot(&disk, window, &path, &stop);
            })?;
        }
        Ok(session)
    }

    fn spawn(
        &mut self,
        name: &'static str,
        work: impl FnOnce() + Send + 'static,
    ) -> Result<(), DiskOpenError> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(work)
            .map_err(|e| DiskOpenError::Thread(name, e))?;
        self.threads.push(thread);
        Ok(())
    }

    pub fn disk(&self) -> &SessionDisk {
        &self.disk
    }

    /// The disk for a backend to serve.
    pub fn device(&self) -> Arc<dyn BlockDevice> {
        Arc::clone(&self.disk) as Arc<dyn BlockDevice>
    }

    pub fn index(&self) -> &Index {
        self.disk.reader().index()
    }

    /// SHA-256 of the index file served.
    pub fn index_sha256(&self) -> &[u8; 32] {
        &self.index_sha256
    }

    pub fn writable(&self) -> bool {
        self.disk.overlay().is_some()
    }

    /// Stops the background threads (the prefetch after the chunks it is
    /// fetching, the recorder after saving its list as it stands), waits
    /// for them, then makes every write durable. Call it once the backend
    /// has stopped writing.
    pub fn close(mut self) -> Result<(), DiskError> {
        self.stop_threads();
        self.disk.flush()
    }

    fn stop_threads(&mut self) {
        self.stop.stop();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("a disk session thread panicked");
            }
        }
    }
}

impl Drop for DiskSession {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A stop flag that sleeping threads wake up for.
#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Stop {
    fn stop(&self) {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.flag.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Sleeps up to `duration`; true if stopped (now or before).
    fn sleep(&self, duration: Duration) -> bool {
        let guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _guard = self
            .changed
            .wait_timeout_while(guard, duration, |()| !self.flag.load(Ordering::SeqCst))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.flag.load(Ordering::SeqCst)
    }
}

/// Fetches a boot prefetch list's chunks ahead of the guest.
fn boot_prefetch(disk: &SessionDisk, positions: &[u32], from: &str, stop: &Stop) {
    tracing::info!(chunks = positions.len(), from, "boot prefetch started");
    let started = Instant::now();
    let report = disk
        .reader()
        .prefetch(positions, PREFETCH_THREADS, &stop.flag);
    tracing::info!(
        listed = report.listed,
        fetched = report.fetched,
        failed = report.failed,
        seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
        "boot prefetch done"
    );
}

/// Keeps the chunks read within `window` of the guest's first read as the
/// image's boot prefetch list at `path`, saved every few seconds while the
/// window runs and once more when stopped.
fn record_boot(disk: &SessionDisk, window: Duration, path: &Path, stop: &Stop) {
    let reader = disk.reader();
    let first = loop {
        if let Some(at) = reader.first_read() {
            break at;
        }
        if stop.sleep(FIRST_READ_POLL) {
            // Reads that came while this slept still make a list.
            match reader.first_read() {
                Some(at) => break at,
                None => return,
            }
        }
    };
    let end = first + window;
    let tick = RECORD_EVERY.min(window);
    let mut saved = 0;
    loop {
        let now = Instant::now();
        let stopped = stop.sleep((now + tick).min(end).saturating_duration_since(now));
        let positions = reader.boot_trace(window);
        if positions.len() > saved {
            if let Err(error) = prefetch::save(path, reader.index(), &positions) {
                tracing::warn!(path = %path.display(), %error, "cannot record the boot prefetch list");
                return;
            }
            saved = positions.len();
        }
        if stopped || Instant::now() >= end {
            break;
        }
    }
    tracing::info!(chunks = saved, path = %path.display(), "recorded the boot prefetch list");
}
