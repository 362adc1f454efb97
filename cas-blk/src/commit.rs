//! `circ cas commit`: an overlay becomes new chunks and a new signed index.
//!
//! Only chunks with written blocks are rebuilt (the base chunk with the
//! overlay's blocks laid over it); every other entry of the old index is
//! reused as it is. The new index gets a generation above both the old
//! index's and the store's current one, so clients move forward to it, and
//! the old index file still describes the old image (a rollback needs it and
//! `--allow-rollback`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::chunk::{self, ChunkId, ChunkRef};
use crate::index::{Index, IndexError};
use crate::keys::SecretKey;
use crate::overlay::{Overlay, OverlayBase, OverlayError, BLOCK_SIZE};
use crate::pack::{self, PackError};
use crate::reader::{ImageReader, ReadError};
use crate::store::{ChunkStore, DirStore};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(
        "overlay {path} holds changes to `{}` generation {}, but the index is `{}` generation {}",
        .overlay.name, .overlay.generation, .index.name, .index.generation
    )]
    OtherBase {
        path: PathBuf,
        overlay: OverlayBase,
        index: OverlayBase,
    },
    #[error("cannot read chunk {index} of the base image")]
    Base {
        index: usize,
        #[source]
        source: ReadError,
    },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("cannot write to store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Chunk(#[from] chunk::ChunkError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

#[derive(Clone, Debug)]
pub struct CommitReport {
    pub index_path: PathBuf,
    pub index_sha256: String,
    pub name: String,
    pub old_generation: u64,
    pub generation: u64,
    pub chunks: u64,
    /// Chunks whose content changed (some block of theirs was written).
    pub changed_chunks: u64,
    /// Chunks written to the store (changed and not there already).
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    pub written_blocks: u64,
    pub elapsed: Duration,
}

/// Commits `overlay`, made on the image `base`, into `store`. The new index
/// goes to `out`, or else replaces the store's index of the image.
pub fn commit<S: ChunkStore>(
    overlay: &Overlay,
    base: &ImageReader<S>,
    store: &DirStore,
    key: &SecretKey,
    out: Option<&Path>,
    durable: bool,
) -> Result<CommitReport, CommitError> {
    let started = Instant::now();
    let old = base.index();
    let index_base = OverlayBase {
        name: old.name.clone(),
        generation: old.generation,
        image_size: old.image_size,
    };
    if *overlay.base() != index_base {
        return Err(CommitError::OtherBase {
            path: overlay.path().to_owned(),
            overlay: overlay.base().clone(),
            index: index_base,
        });
    }
    let store_err = |source| CommitError::Store {
        path: store.root().to_owned(),
        source,
    };
    DirStore::create(store.root()).map_err(store_err)?;
    let blocks_per_chunk = u64::from(old.chunk_size.bytes()) / BLOCK_SIZE;
    let mut chunks = old.chunks.clone();
    let mut frames = old.frames.clone();
    let (mut changed, mut new_chunks, mut new_bytes) = (0u64, 0u64, 0u64);
    for (i, entry) in chunks.iter_mut().enumerate() {
        let first = i as u64 * blocks_per_chunk;
        let last = (first + blocks_per_chunk).min(overlay.block_count());
        let written: Vec<u64> = (first..last).filter(|&b| overlay.is_written(b)).collect();
        if written.is_empty() {
            continue;
        }
        let mut content = base
            .chunk(i)
            .map_err(|source| CommitError::Base { index: i, source })?
            .as_ref()
            .clone();
        for block in written {
            let from = ((block - first) * BLOCK_SIZE) as usize;
            let to = (from + BLOCK_SIZE as usize).min(content.len());
            overlay.read_data(block * BLOCK_SIZE, &mut content[from..to])?;
        }
        let new_entry = if chunk::is_zero(&content) {
            None
        } else {
            Some(ChunkId::of_trusted(&content))
        };
        if new_entry == *entry {
            continue;
        }
        changed += 1;
        if let Some(id) = &new_entry {
            let chunk = ChunkRef {
                id: *id,
                compression: old.compression,
                len: content.len() as u32,
                frame_shift: frames.as_ref().map(|f| f.shift),
            };
            match &mut frames {
                None if store.contains(id, old.compression) => {}
                None => {
                    let stored = chunk::compress(old.compression, &content)?;
                    store
                        .put_object(&chunk, &stored, durable)
                        .map_err(store_err)?;
                    new_chunks += 1;
                    new_bytes += stored.len() as u64;
                }
                Some(table) => {
                    let (layout, written) =
                        pack::store_framed(store, &chunk, &content, table.shift, durable)?;
                    table.chunks.insert(*id, std::sync::Arc::new(layout));
                    if let Some(bytes) = written {
                        new_chunks += 1;
                        new_bytes += bytes;
                    }
                }
            }
        }
        *entry = new_entry;
    }
    let generation = old
        .generation
        .max(pack::next_generation(store, &old.name)?.saturating_sub(1))
        .saturating_add(1);
    let index = Index {
        name: old.name.clone(),
        generation,
        image_size: old.image_size,
        chunk_size: old.chunk_size,
        compression: old.compression,
        chunks,
        frames,
    };
    let bytes = index.to_signed_bytes(key.signing_key())?;
    let index_path = match out {
        Some(path) => {
            crate::store::dir::write_atomic(path, &bytes, true).map_err(store_err)?;
            path.to_owned()
        }
        None => store.put_index(&old.name, &bytes).map_err(store_err)?,
    };
    tracing::info!(
        name = old.name,
        generation,
        changed,
        new_chunks,
        "overlay committed"
    );
    Ok(CommitReport {
        index_path,
        index_sha256: crate::hex::encode(&sha2::Sha256::digest(&bytes)),
        name: old.name.clone(),
        old_generation: old.generation,
        generation,
        chunks: index.chunk_count() as u64,
        changed_chunks: changed,
        new_chunks,
        new_stored_bytes: new_bytes,
        written_blocks: overlay.written_blocks(),
        elapsed: started.elapsed(),
    })
}
