//! Boot prefetch lists: which chunk positions a guest's boot read, in the
//! order it read them, so that the next boot fetches them ahead of the
//! guest (LBCAS's "boot profile").
//!
//! A list is a hint, never trusted for content: it names positions in the
//! image, and every chunk it leads to is fetched and verified like any
//! other. A bad list costs only useless fetches, and is refused whole if it
//! does not parse. Format (text, one item per line):
//!
//! ```text
//! circ-prefetch 1
//! image NAME
//! chunk-size BYTES
//! chunks N
//! POSITION        (N lines, decimal chunk positions, each < the image's chunk count)
//! ```
//!
//! The NBD server records a list of the chunks first read within a window
//! (60 s by default) of the guest's first read and keeps it beside the
//! cached copy of the index (`CACHE/indexes/KEY.prefetch`). On start it
//! prefetches from that list, or else from `NAME.prefetch` beside the index
//! on the server (a list recorded on one host and published for all).
//! Positions, not chunk names: after an update most positions hold the same
//! chunks, and the new index decides what they are.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::index::Index;
use crate::layout;

/// First line of a list.
const MAGIC: &str = "circ-prefetch 1";
/// Extension of list files.
pub const EXT: &str = "prefetch";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefetchError {
    #[error("list is {len} bytes, more than the {max} one for this image may take")]
    TooLarge { len: usize, max: usize },
    #[error("not a prefetch list (first line is not `{MAGIC}`)")]
    Magic,
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("list is for image `{list}`, not `{image}`")]
    OtherImage { list: String, image: String },
    #[error("list is for {list}-byte chunks, the image has {image}-byte chunks")]
    ChunkSize { list: u64, image: u32 },
    #[error("line {line}: position {position} is beyond the image's {count} chunks")]
    Position {
        line: usize,
        position: u64,
        count: usize,
    },
    #[error("list announces {announced} positions but holds {found}")]
    Count { announced: u64, found: usize },
}

/// Largest list for `index`: every position once, with the header.
pub fn max_len(index: &Index) -> usize {
    let digits = index.chunk_count().max(1).to_string().len() + 1;
    4096 + index.chunk_count() * digits
}

/// The list for `positions` of `index`.
pub fn encode(index: &Index, positions: &[u32]) -> String {
    let mut out = format!(
        "{MAGIC}\nimage {}\nchunk-size {}\nchunks {}\n",
        index.name,
        index.chunk_size.bytes(),
        positions.len()
    );
    for position in positions {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{position}");
    }
    out
}

/// Parses a list for `index`; positions keep their order.
pub fn parse(bytes: &[u8], index: &Index) -> Result<Vec<u32>, PrefetchError> {
    let max = max_len(index);
    if bytes.len() > max {
        return Err(PrefetchError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PrefetchError::Syntax {
        line: 0,
        what: "not UTF-8 text".into(),
    })?;
    let mut lines = text.lines().enumerate().map(|(n, line)| (n + 1, line));
    match lines.next() {
        Some((_, MAGIC)) => {}
        _ => return Err(PrefetchError::Magic),
    }
    let mut field = |key: &str| -> Result<(usize, String), PrefetchError> {
        match lines.next() {
            Some((line, text)) => match text.split_once(' ') {
                Some((k, value)) if k == key => Ok((line, value.to_owned())),
                _ => Err(PrefetchError::Syntax {
                    line,
                    what: format!("expected `{key} ...`"),
                }),
            },
            None => Err(PrefetchError::Syntax {
                line: 0,
                what: format!("ends before `{key}`"),
            }),
        }
    };
    let number = |line: usize, value: &str| -> Result<u64, PrefetchError> {
        value.parse().map_err(|_| PrefetchError::Syntax {
            line,
            what: format!("`{value}` is not a number"),
        })
    };
    let (_, image) = field("image")?;
    if image != index.name {
        return Err(PrefetchError::OtherImage {
            list: image,
            image: index.name.clone(),
        });
    }
    let (line, chunk_size) = field("chunk-size")?;
    let chunk_size = number(line, &chunk_size)?;
    if chunk_size != u64::from(index.chunk_size.bytes()) {
        return Err(PrefetchError::ChunkSize {
            list: chunk_size,
            image: index.chunk_size.bytes(),
        });
    }
    let (line, announced) = field("chunks")?;
    let announced = number(line, &announced)?;
    let count = index.chunk_count();
    let mut positions = Vec::new();
    for (line, text) in lines {
        let position = number(line, text)?;
        match u32::try_from(position) {
            Ok(p) if (p as usize) < count => positions.push(p),
            _ => {
                return Err(PrefetchError::Position {
                    line,
                    position,
                    count,
                })
            }
        }
    }
    if positions.len() as u64 != announced {
        return Err(PrefetchError::Count {
            announced,
            found: positions.len(),
        });
    }
    Ok(positions)
}

/// Writes the list for `positions` of `index` to `path` (atomically).
pub fn save(path: &Path, index: &Index, positions: &[u32]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::store::dir::write_atomic(path, encode(index, positions).as_bytes(), false)
}

/// Where a cache keeps the list recorded for the index at `location`:
/// beside its copy of that index.
pub fn local_path(cache_root: &Path, location: &str) -> PathBuf {
    crate::store::cache::index_copy_path(cache_root, location).with_extension(EXT)
}

/// Where a published list sits beside the index `NAME` on a server, as a
/// path relative to the store root.
pub fn published_path(name: &str) -> String {
    format!("{}/{name}.{EXT}", layout::INDEX_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkId, ChunkSize, Compression};

    fn index(chunks: usize) -> Index {
        Index {
            name: "img".into(),
            generation: 1,
            image_size: chunks as u64 * 65_536,
            chunk_size: "64K".parse::<ChunkSize>().unwrap(),
            compression: Compression::Zstd,
            chunks: (0..chunks)
                .map(|i| Some(ChunkId::from_bytes([i as u8; 20])))
                .collect(),
            frames: None,
        }
    }

    #[test]
    fn round_trips_in_order() {
        let index = index(10);
        let list = [7, 0, 3, 9];
        assert_eq!(
            parse(encode(&index, &list).as_bytes(), &index),
            Ok(list.to_vec())
        );
        assert_eq!(parse(encode(&index, &[]).as_bytes(), &index), Ok(vec![]));
    }

    #[test]
    fn refuses_what_does_not_fit_the_image() {
        let index = index(10);
        let cases: Vec<(String, PrefetchError)> = vec![
            ("hello\n".into(), PrefetchError::Magic),
            (String::new(), PrefetchError::Magic),
            (
                "circ-prefetch 1\nimage other\nchunk-size 65536\nchunks 0\n".into(),
                PrefetchError::OtherImage {
                    list: "other".into(),
                    image: "img".into(),
                },
            ),
            (
                "circ-prefetch 1\nimage img\nchunk-size 262144\nchunks 0\n".into(),
                PrefetchError::ChunkSize {
                    list: 262_144,
                    image: 65_536,
                },
            ),
            (
                "circ-prefetch 1\nimage img\nchunk-size 65536\nchunks 1\n10\n".into(),
                PrefetchError::Position {
                    line: 5,
                    position: 10,
                    count: 10,
                },
            ),
            (
                "circ-prefetch 1\nimage img\nchunk-size 65536\nchunks 2\n1\n".into(),
                PrefetchError::Count {
                    announced: 2,
                    found: 1,
                },
            ),
            (
                "circ-prefetch 1\nimage img\nchunk-size 65536\nchunks 1\n-1\n".into(),
                PrefetchError::Syntax {
                    line: 5,
                    what: "`-1` is not a number".into(),
                },
            ),
            (
                "circ-prefetch 1\nimage img\n".into(),
                PrefetchError::Syntax {
                    line: 0,
                    what: "ends before `chunk-size`".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text.as_bytes(), &index), Err(expected), "{text:?}");
        }
        let huge = vec![b'1'; max_len(&index) + 1];
        assert!(matches!(
            parse(&huge, &index),
            Err(PrefetchError::TooLarge { .. })
        ));
    }
}
