//! The top layer: only verified content leaves it.

use super::{ChunkCheck, ChunkStore, StoreError};
use crate::chunk::{self, ChunkError, ChunkRef};

/// Decompresses (bounded) and checks the collision-detecting SHA-1.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkVerifier;

impl ChunkCheck for ChunkVerifier {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        chunk::decode_verified(chunk, stored)
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

    /// The verified content of `chunk`.
    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        self.inner.fetch(chunk, &ChunkVerifier)
    }

    /// Where the inner store keeps `chunk`'s plain content locally
    /// (unverified), if it does.
    pub fn plain_file(&self, chunk: &ChunkRef) -> Option<std::path::PathBuf> {
        self.inner.plain_file(chunk)
    }
}
