//! LBCAS-style deduplication statistics: for each chunk size, how much a
//! set of images would take in a store.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chunk::{self, ChunkError, ChunkId, ChunkSize, Compression};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsRow {
    pub chunk_size: u32,
    /// Bytes in all images together.
    pub input_bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub unique_chunks: u64,
    /// Uncompressed bytes of the unique chunks.
    pub unique_bytes: u64,
    /// Bytes the unique chunks take once compressed: the store's size.
    pub stored_bytes: u64,
    /// Non-zero input bytes per unique byte (1.0: no duplication).
    pub dedup_ratio: f64,
    /// Input bytes per stored byte (zeros, duplicates and compression).
    pub total_ratio: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

/// Chunks every image at `chunk_size`, counting unique chunks across all
/// of them and compressing each unique chunk once to learn its stored size.
pub fn dedup_stats(
    images: &[PathBuf],
    chunk_size: ChunkSize,
    compression: Compression,
) -> Result<StatsRow, StatsError> {
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut row = StatsRow {
        chunk_size: chunk_size.bytes(),
        input_bytes: 0,
        chunks: 0,
        zero_chunks: 0,
        unique_chunks: 0,
        unique_bytes: 0,
        stored_bytes: 0,
        dedup_ratio: 1.0,
        total_ratio: 1.0,
    };
    let mut zero_bytes = 0u64;
    let mut buf = vec![0u8; chunk_size.bytes() as usize];
    for path in images {
        let mut file = File::open(path).map_err(|source| image_err(path, source))?;
        loop {
            let len = read_full(&mut file, &mut buf).map_err(|source| image_err(path, source))?;
            if len == 0 {
                break;
            }
            let data = &buf[..len];
            row.input_bytes += len as u64;
            row.chunks += 1;
            if chunk::is_zero(data) {
                row.zero_chunks += 1;
                zero_bytes += len as u64;
                continue;
            }
            if seen.insert(ChunkId::of_trusted(data)) {
                row.unique_chunks += 1;
                row.unique_bytes += len as u64;
                row.stored_bytes += chunk::compress(compression, data)?.len() as u64;
            }
        }
    }
    row.dedup_ratio = ratio(row.input_bytes - zero_bytes, row.unique_bytes);
    row.total_ratio = ratio(row.input_bytes, row.stored_bytes);
    Ok(row)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

fn image_err(path: &Path, source: io::Error) -> StatsError {
    StatsError::Image {
        path: path.to_owned(),
        source,
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_zeros_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let block: Vec<u8> = (0..4096).map(|i| (i % 251) as u8 + 1).collect();
        let mut a = block.clone();
        a.extend(vec![0u8; 4096]);
        a.extend(&block);
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &block).unwrap();
        let row = dedup_stats(
            &[pa, pb],
            ChunkSize::from_shift(12).unwrap(),
            Compression::Zstd,
        )
        .unwrap();
        assert_eq!(row.chunks, 4);
        assert_eq!(row.zero_chunks, 1);
        assert_eq!(row.unique_chunks, 1);
        assert_eq!(row.unique_bytes, 4096);
        assert!((row.dedup_ratio - 3.0).abs() < 1e-9, "{row:?}");
        assert!(row.stored_bytes < 4096);
    }
}
