//! Packing an image into a store: chunk, name, compress, write, sign.
//!
//! Workers share the image file behind a lock: one reads the next chunk
//! while the others hash and compress theirs, so reading overlaps the CPU
//! work and every core is used. Chunks already in the store are neither
//! compressed nor written again, which makes re-packing a changed image
//! cost one hashing pass plus the changed chunks. Chunks are written before
//! the index, so a published index never names a missing chunk.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::chunk::{self, ChunkError, ChunkFrames, ChunkId, ChunkRef, ChunkSize, Compression};
use crate::index::{FrameTable, Index, IndexError, MAX_CHUNKS};
use crate::keys::SecretKey;
use crate::layout;
use crate::store::DirStore;

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub name: String,
    pub chunk_size: ChunkSize,
    pub compression: Compression,
    pub threads: usize,
    /// fsync each new chunk before the index is published.
    pub durable: bool,
    /// Format 2 with frames of `2^shift` bytes (each compressed alone and
    /// digested in the index); `None`: format 1.
    pub frame_shift: Option<u8>,
}

#[derive(Clone, Debug)]
pub struct PackReport {
    pub index_path: PathBuf,
    /// SHA-256 of the index file, to pin it out of band.
    pub index_sha256: String,
    pub name: String,
    pub generation: u64,
    pub image_size: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub unique_chunks: u64,
    /// Chunks written by this pack (absent from the store before).
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {path} is {size} bytes: more than {MAX_CHUNKS} chunks of {chunk_size}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        chunk_size: ChunkSize,
    },
    #[error("invalid image name `{name}`: {reason}")]
    Name { name: String, reason: String },
    #[error("cannot write to store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("existing index of `{name}` is unreadable")]
    OldIndex {
        name: String,
        #[source]
        source: IndexError,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Packs `image` into `store` as `opts.name`, signed with `key`.
/// `progress` is called with the bytes of each chunk done.
pub fn pack(
    image: &Path,
    store: &DirStore,
    key: &SecretKey,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PackReport, PackError> {
    let started = Instant::now();
    layout::validate_name(&opts.name).map_err(|reason| PackError::Name {
        name: opts.name.clone(),
        reason,
    })?;
    let image_err = |source| PackError::Image {
        path: image.to_owned(),
        source,
    };
    let store_err = |source| PackError::Store {
        path: store.root().to_owned(),
        source,
    };
    let mut file = File::open(image).map_err(image_err)?;
    // Seeking to the end also sizes block devices, whose metadata says 0.
    let image_size = file.seek(SeekFrom::End(0)).map_err(image_err)?;
    file.seek(SeekFrom::Start(0)).map_err(image_err)?;
    let chunk_bytes = u64::from(opts.chunk_size.bytes());
    let chunk_count = image_size.div_ceil(chunk_bytes);
    if chunk_count > MAX_CHUNKS {
        return Err(PackError::TooLarge {
            path: image.to_owned(),
            size: image_size,
            chunk_size: opts.chunk_size,
        });
    }
    let generation = next_generation(store, &opts.name)?;
    DirStore::create(store.root()).map_err(store_err)?;

    let shared = Shared {
        source: Mutex::new((file, 0)),
        chunk_count: chunk_count as usize,
        image_size,
        chunk_bytes,
        claimed: Mutex::new(HashSet::new()),
        new_chunks: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
    };
    let results: Vec<Result<WorkerOutput, PackError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..opts.threads.max(1))
            .map(|_| scope.spawn(|| shared.work(image, store, opts, progress)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(image_err(io::Error::other("a pack worker panicked"))))
            })
            .collect()
    });
    let mut chunks = vec![None; chunk_count as usize];
    let mut frame_table = opts.frame_shift.map(|shift| FrameTable {
        shift,
        chunks: std::collections::HashMap::new(),
    });
    for result in results {
        let (positions, frames) = result?;
        for (i, id) in positions {
            chunks[i] = id;
        }
        if let Some(table) = &mut frame_table {
            table.chunks.extend(frames);
        }
    }

    let index = Index {
        name: opts.name.clone(),
        generation,
        image_size,
        chunk_size: opts.chunk_size,
        compression: opts.compression,
        chunks,
        frames: frame_table,
    };
    let bytes = index.to_signed_bytes(key.signing_key())?;
    let index_path = store.put_index(&opts.name, &bytes).map_err(store_err)?;
    let zero_chunks = index.chunks.iter().filter(|c| c.is_none()).count() as u64;
    let report = PackReport {
        index_path,
        index_sha256: crate::hex::encode(&sha2::Sha256::digest(&bytes)),
        name: opts.name.clone(),
        generation,
        image_size,
        chunks: chunk_count,
        zero_chunks,
        unique_chunks: index.unique_chunks().len() as u64,
        new_chunks: shared.new_chunks.load(Ordering::Relaxed),
        new_stored_bytes: shared.new_bytes.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    tracing::info!(
        name = report.name,
        generation,
        chunks = report.chunks,
        new_chunks = report.new_chunks,
        "packed"
    );
    Ok(report)
}

/// Stores format-2 chunk `chunk` (content `data`, frames of `2^shift`
/// bytes) unless the store has it, and returns its frames: those of the
/// store's object if there is one (another pack, or another zstd version,
/// may have framed the same content into other bytes, and other indexes
/// name that object), else of the object written (whose stored length is
/// returned too). A damaged object in the store is replaced.
pub(crate) fn store_framed(
    store: &DirStore,
    chunk: &ChunkRef,
    data: &[u8],
    shift: u8,
    durable: bool,
) -> Result<(ChunkFrames, Option<u64>), PackError> {
    let path = store.object_file(chunk);
    let store_err = |source| PackError::Store {
        path: path.clone(),
        source,
    };
    if path.is_file() {
        let existing = std::fs::read(&path).map_err(store_err)?;
        match chunk::frame_lens_of(chunk, &existing) {
            Ok(lens) => {
                let digests = data.chunks(1 << shift).map(chunk::frame_digest).collect();
                return Ok((ChunkFrames::new(lens, digests), None));
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "stored chunk unreadable, replacing it");
            }
        }
    }
    let (stored, frames) = chunk::compress_frames(chunk.compression, data, shift)?;
    store
        .put_object(chunk, &stored, durable)
        .map_err(store_err)?;
    Ok((frames, Some(stored.len() as u64)))
}

/// One more than the generation of the index already in the store, if any.
pub(crate) fn next_generation(store: &DirStore, name: &str) -> Result<u64, PackError> {
    let path = store.index_file(name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old = Index::peek_generation(&bytes).map_err(|source| PackError::OldIndex {
                name: name.to_owned(),
                source,
            })?;
            Ok(old.saturating_add(1))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(1),
        Err(source) => Err(PackError::Store { path, source }),
    }
}

/// Chunk positions a worker handled, with their names (`None`: all zero),
/// and (format 2) the frames of the chunks it stored or found.
type WorkerOutput = (
    Vec<(usize, Option<ChunkId>)>,
    Vec<(ChunkId, std::sync::Arc<ChunkFrames>)>,
);

struct Shared {
    /// The image and the next chunk to read from it.
    source: Mutex<(File, usize)>,
    chunk_count: usize,
    image_size: u64,
    chunk_bytes: u64,
    /// Chunks some worker already handles: duplicates inside one image are
    /// compressed once.
    claimed: Mutex<HashSet<ChunkId>>,
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
}

impl Shared {
    fn work(
        &self,
        image: &Path,
        store: &DirStore,
        opts: &PackOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<WorkerOutput, PackError> {
        let mut done = Vec::new();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; self.chunk_bytes as usize];
        loop {
            let (i, len) = {
                let mut source = self
                    .source
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let i = source.1;
                if i >= self.chunk_count {
                    break;
                }
                source.1 += 1;
                let len =
                    (self.image_size - i as u64 * self.chunk_bytes).min(self.chunk_bytes) as usize;
                // Reads are sequential, under the lock, so no seeking.
                source
                    .0
                    .read_exact(&mut buf[..len])
                    .map_err(|source| PackError::Image {
                        path: image.to_owned(),
                        source,
                    })?;
                (i, len)
            };
            let data = &buf[..len];
            let entry = if chunk::is_zero(data) {
                None
            } else {
                let id = ChunkId::of_trusted(data);
                if let Some(table) = self.store_chunk(&id, data, store, opts)? {
                    frames.push((id, std::sync::Arc::new(table)));
                }
                Some(id)
            };
            done.push((i, entry));
            progress(len as u64);
        }
        Ok((done, frames))
    }

    /// Stores chunk `id` unless another worker does or the store has it;
    /// format 2: returns its frames (of the object in the store, if it
    /// was there: a pack or a zstd of another version may have framed
    /// the same content into other bytes).
    fn store_chunk(
        &self,
        id: &ChunkId,
        data: &[u8],
        store: &DirStore,
        opts: &PackOptions,
    ) -> Result<Option<ChunkFrames>, PackError> {
        let first = self
            .claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(*id);
        if !first {
            return Ok(None);
        }
        let chunk = ChunkRef {
            id: *id,
            compression: opts.compression,
            len: data.len() as u32,
            frame_shift: opts.frame_shift,
        };
        let path = store.object_file(&chunk);
        let store_err = |source| PackError::Store {
            path: path.clone(),
            source,
        };
        let Some(shift) = opts.frame_shift else {
            if !store.contains(id, opts.compression) {
                let stored = chunk::compress(opts.compression, data)?;
                self.put(store, &chunk, &stored, opts).map_err(store_err)?;
            }
            return Ok(None);
        };
        let (frames, written) = store_framed(store, &chunk, data, shift, opts.durable)?;
        if let Some(bytes) = written {
            self.new_chunks.fetch_add(1, Ordering::Relaxed);
            self.new_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(Some(frames))
    }

    fn put(
        &self,
        store: &DirStore,
        chunk: &ChunkRef,
        stored: &[u8],
        opts: &PackOptions,
    ) -> io::Result<()> {
        store.put_object(chunk, stored, opts.durable)?;
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.new_bytes
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
