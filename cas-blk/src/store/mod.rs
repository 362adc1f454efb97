//! Where chunks come from, as layers in the rustic_core style:
//! `VerifyingStore<CacheStore<HttpStore>>`.
//!
//! A [`ChunkStore`] hands each candidate copy of a chunk to a [`ChunkCheck`]
//! before returning it. The check lives at the top (the [`VerifyingStore`]),
//! but it runs where the candidate came from, so a store with several
//! sources (mirrors, cache then network) moves on to its next source when a
//! copy is bad instead of failing the read.

pub(crate) mod cache;
pub(crate) mod dir;
mod http;
mod verify;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use cache::{cached_copy, CacheStore, PlainCopy};
pub use dir::DirStore;
pub use http::{FetchFailure, HttpConfig, HttpError, HttpStore, MirrorStats};
pub use verify::{ChunkVerifier, FramedVerifier, VerifyingStore};

use std::ops::Range;

use crate::chunk::{ChunkError, ChunkId, ChunkRef};

/// Accepts or refuses a candidate stored copy of a chunk, returning the
/// chunk's content.
pub trait ChunkCheck: Sync {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError>;
}

/// Accepts or refuses stored bytes of some frames of a format-2 chunk.
pub trait FrameCheck: Sync {
    /// The stored bytes wanted (a run of whole frames).
    fn stored_range(&self) -> Range<u64>;
    /// Where the wanted frames' plain bytes start in the chunk.
    fn plain_start(&self, chunk: &ChunkRef) -> u64;
    /// The verified plain content of the wanted frames, from stored bytes
    /// starting `at` bytes into the object (the wanted range, or the whole
    /// object from a source that cannot serve ranges).
    fn check(&self, chunk: &ChunkRef, at: u64, stored: &[u8]) -> Result<Vec<u8>, ChunkError>;
}

/// A source of chunks.
pub trait ChunkStore: Send + Sync + fmt::Debug {
    /// Returns the content of the first copy of `chunk` that `check`
    /// accepts, trying every source this store has.
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError>;

    /// Format 2: the content of some frames of `chunk` (`check` says which
    /// stored bytes), from the first source whose copy `check` accepts,
    /// without fetching the whole chunk where the source allows.
    fn fetch_frames(&self, chunk: &ChunkRef, check: &dyn FrameCheck)
        -> Result<Vec<u8>, StoreError>;

    /// Whether partial fetches are worth it: false when every source is
    /// known to answer a range with the whole object (python's
    /// http.server), so whole chunks (verified and cached whole) are better.
    fn ranges_pay(&self) -> bool {
        true
    }

    /// A local plain copy of (some of) `chunk`, if this store keeps one:
    /// the reader takes small pieces of it directly. Its content is not
    /// trusted; the reader checks every piece it reads.
    fn plain_copy(&self, _chunk: &ChunkRef) -> Option<PlainCopy> {
        None
    }
}

impl<S: ChunkStore + ?Sized> ChunkStore for Box<S> {
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        (**self).fetch(chunk, check)
    }

    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        (**self).fetch_frames(chunk, check)
    }

    fn ranges_pay(&self) -> bool {
        (**self).ranges_pay()
    }

    fn plain_copy(&self, chunk: &ChunkRef) -> Option<PlainCopy> {
        (**self).plain_copy(chunk)
    }
}

impl<S: ChunkStore + ?Sized> ChunkStore for Arc<S> {
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        (**self).fetch(chunk, check)
    }

    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        (**self).fetch_frames(chunk, check)
    }

    fn ranges_pay(&self) -> bool {
        (**self).ranges_pay()
    }

    fn plain_copy(&self, chunk: &ChunkRef) -> Option<PlainCopy> {
        (**self).plain_copy(chunk)
    }
}

/// Tries `primary`, then `fallback`: a local store backed by HTTP mirrors.
#[derive(Debug)]
pub struct Fallback<A, B> {
    primary: A,
    fallback: B,
}

impl<A: ChunkStore, B: ChunkStore> Fallback<A, B> {
    pub fn new(primary: A, fallback: B) -> Self {
        Self { primary, fallback }
    }
}

impl<A: ChunkStore, B: ChunkStore> ChunkStore for Fallback<A, B> {
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        match self.primary.fetch(chunk, check) {
            Ok(plain) => Ok(plain),
            Err(first) => {
                tracing::debug!(chunk = %chunk.id, error = %first, "primary store failed, trying fallback");
                self.fallback
                    .fetch(chunk, check)
                    .map_err(|second| StoreError::merge(chunk.id, vec![first, second]))
            }
        }
    }

    fn plain_copy(&self, chunk: &ChunkRef) -> Option<PlainCopy> {
        self.primary
            .plain_copy(chunk)
            .or_else(|| self.fallback.plain_copy(chunk))
    }

    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        match self.primary.fetch_frames(chunk, check) {
            Ok(plain) => Ok(plain),
            Err(first) => self
                .fallback
                .fetch_frames(chunk, check)
                .map_err(|second| StoreError::merge(chunk.id, vec![first, second])),
        }
    }

    fn ranges_pay(&self) -> bool {
        self.primary.ranges_pay() || self.fallback.ranges_pay()
    }
}

/// Callers branch on this: a missing chunk, a corrupt one, or an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Corrupt,
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {chunk} not found in {source_name}")]
    NotFound { chunk: ChunkId, source_name: String },
    #[error("chunk {chunk} from {source_name} is bad")]
    Corrupt {
        chunk: ChunkId,
        source_name: String,
        #[source]
        source: ChunkError,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot fetch {url}")]
    Http {
        url: String,
        #[source]
        source: HttpError,
    },
    /// Every source failed; each failure is listed because which mirror
    /// failed how is what an operator needs.
    #[error("no source has a good copy of chunk {chunk}: {}", summary(.failures))]
    Exhausted {
        chunk: ChunkId,
        failures: Vec<StoreError>,
    },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Corrupt { .. } => ErrorKind::Corrupt,
            Self::Io { .. } | Self::Http { .. } => ErrorKind::Unavailable,
            // The most telling failure wins: a bad copy anywhere means
            // someone served wrong data; otherwise an outage beats absence.
            Self::Exhausted { failures, .. } => {
                let kinds: Vec<ErrorKind> = failures.iter().map(Self::kind).collect();
                if kinds.contains(&ErrorKind::Corrupt) {
                    ErrorKind::Corrupt
                } else if kinds.iter().all(|&k| k == ErrorKind::NotFound) {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                }
            }
        }
    }

    /// One error for several failed attempts; a single one stays as it is.
    pub(crate) fn merge(chunk: ChunkId, mut failures: Vec<StoreError>) -> Self {
        if failures.len() == 1 {
            if let Some(only) = failures.pop() {
                return only;
            }
        }
        let flattened = failures
            .into_iter()
            .flat_map(|f| match f {
                Self::Exhausted { failures, .. } => failures,
                other => vec![other],
            })
            .collect();
        Self::Exhausted {
            chunk,
            failures: flattened,
        }
    }
}

fn summary(failures: &[StoreError]) -> String {
    failures
        .iter()
        .map(|f| {
            let mut text = f.to_string();
            let mut source = std::error::Error::source(f);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}
