//! The top layer: only verified content leaves it.

use std::ops::Range;

use super::{ChunkCheck, ChunkStore, FrameCheck, StoreError};
use crate::chunk::{self, ChunkError, ChunkFrames, ChunkRef};

/// Decompresses (bounded) and checks the collision-detecting SHA-1.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkVerifier;

impl ChunkCheck for ChunkVerifier {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        chunk::decode_verified(chunk, stored)
    }
}

/// Format 2: every frame decompresses (bounded) to its length and matches
/// the signed index's BLAKE3; the chunk's SHA-1 is only its name.
#[derive(Clone, Copy, Debug)]
pub struct FramedVerifier<'a> {
    pub frames: &'a ChunkFrames,
}

impl ChunkCheck for FramedVerifier<'_> {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        chunk::decode_framed_chunk(chunk, self.frames, stored)
    }
}

/// Frames `wanted` of a format-2 chunk.
struct FrameRun<'a> {
    frames: &'a ChunkFrames,
    wanted: Range<usize>,
}

impl FrameCheck for FrameRun<'_> {
    fn stored_range(&self) -> Range<u64> {
        self.frames.stored_range(self.wanted.clone())
    }

    fn plain_start(&self, chunk: &ChunkRef) -> u64 {
        (self.wanted.start as u64) << chunk.frame_shift.unwrap_or(0)
    }

    fn check(&self, chunk: &ChunkRef, at: u64, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        chunk::decode_frames_verified(chunk, self.frames, self.wanted.clone(), at, stored)
    }
}

/// Wraps any store so that a bad chunk is never returned: each source gets
/// the verifier, so a bad copy makes the layer below try its next source,
/// and if none has a good copy the read fails (that read only).
#[derive(Debug)]
pub struct VerifyingStore<S> {
    inner: S,
}

impl<S: ChunkStore> VerifyingStore<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The verified content of `chunk`; format 2 needs its `frames`.
    pub fn read_chunk(
        &self,
        chunk: &ChunkRef,
        frames: Option<&ChunkFrames>,
    ) -> Result<Vec<u8>, StoreError> {
        match (chunk.frame_shift, frames) {
            (Some(_), Some(frames)) => self.inner.fetch(chunk, &FramedVerifier { frames }),
            (Some(_), None) => Err(StoreError::Corrupt {
                chunk: chunk.id,
                source_name: "the index".into(),
                source: ChunkError::Frames("no frame table for a format-2 chunk".into()),
            }),
            (None, _) => self.inner.fetch(chunk, &ChunkVerifier),
        }
    }

    /// The verified content of frames `wanted` of format-2 chunk `chunk`.
    pub fn read_frames(
        &self,
        chunk: &ChunkRef,
        frames: &ChunkFrames,
        wanted: Range<usize>,
    ) -> Result<Vec<u8>, StoreError> {
        if wanted.is_empty() || wanted.end > frames.count() {
            return Err(StoreError::Corrupt {
                chunk: chunk.id,
                source_name: "the index".into(),
                source: ChunkError::Frames(format!("frames {wanted:?} of {}", frames.count())),
            });
        }
        self.inner.fetch_frames(chunk, &FrameRun { frames, wanted })
    }

    /// See [`ChunkStore::ranges_pay`].
    pub fn ranges_pay(&self) -> bool {
        self.inner.ranges_pay()
    }

    /// Where the inner store keeps `chunk`'s plain content locally
    /// (unverified), if it does.
    pub fn plain_copy(&self, chunk: &ChunkRef) -> Option<super::PlainCopy> {
        self.inner.plain_copy(chunk)
    }
}
