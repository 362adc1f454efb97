//! Where things live in a store, on disk and under an HTTP base URL alike:
//!
//! ```text
//! STORE/indexes/NAME.cidx               signed index of image NAME
//! STORE/chunks/ab/abcdef...(40 hex).zst chunk, by the first two hex digits
//! ```
//! The extension is the compression (`zst`, `zlib`, `raw`), so one store can
//! hold the same content packed differently without clashes.

use crate::chunk::{ChunkId, Compression};

pub const INDEX_DIR: &str = "indexes";
pub const CHUNK_DIR: &str = "chunks";
pub const INDEX_EXT: &str = "cidx";
const MAX_NAME_LEN: usize = 128;

/// Path of a chunk relative to the store root, with `/` separators.
pub fn chunk_path(id: &ChunkId, compression: Compression) -> String {
    let hex = id.to_hex();
    format!(
        "{CHUNK_DIR}/{}/{hex}.{}",
        &hex[..2],
        compression.extension()
    )
}

/// Path of a format-2 chunk (frames of `2^frame_shift` bytes compressed
/// one by one): `chunks/ab/ID.f64k.zst`. The frame size is in the name so
/// the same content packed with another frame size (or as format 1) does
/// not clash. Uncompressed, frames are the plain content: the `.raw` file
/// of format 1.
pub fn framed_chunk_path(id: &ChunkId, compression: Compression, frame_shift: u8) -> String {
    if compression == Compression::None {
        return chunk_path(id, compression);
    }
    let hex = id.to_hex();
    format!(
        "{CHUNK_DIR}/{}/{hex}.f{}k.{}",
        &hex[..2],
        1u32 << (frame_shift - 10),
        compression.extension()
    )
}

/// Path of an image's index relative to the store root.
pub fn index_path(name: &str) -> String {
    format!("{INDEX_DIR}/{name}.{INDEX_EXT}")
}

/// Image names become file names and cache keys: keep them to a safe,
/// portable alphabet that cannot traverse directories.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} bytes long"));
    }
    if name.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only ASCII letters, digits, `.`, `_` and `-`".into());
    }
    Ok(())
}

/// The store root that an index location (URL or path) belongs to: the
/// parent of its `indexes/` directory, or else the directory holding it.
pub fn store_root_of(index_location: &str) -> String {
    let trimmed = index_location.trim_end_matches('/');
    let dir = match trimmed.rfind('/') {
        Some(pos) => &trimmed[..pos],
        None => ".",
    };
    let root = match dir.rsplit_once('/') {
        Some((parent, last)) if last == INDEX_DIR => parent,
        None if dir == INDEX_DIR => ".",
        _ => dir,
    };
    format!("{root}/")
}

/// The image an index location names by its file name, `NAME.cidx` (URL or
/// path alike); `None` if the file name is not that, or NAME is not a valid
/// image name.
pub fn image_name_of(index_location: &str) -> Option<&str> {
    let file = index_location.rsplit('/').next()?;
    let name = file.strip_suffix(&format!(".{INDEX_EXT}"))?;
    validate_name(name).is_ok().then_some(name)
}

/// Splits an index location into its store root and its path below it.
pub fn split_index_location(index_location: &str) -> (String, String) {
    let root = store_root_of(index_location);
    let rel = index_location
        .strip_prefix(root.as_str())
        .unwrap_or(index_location)
        .to_owned();
    (root, rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_paths_fan_out_by_prefix() {
        let id = ChunkId::of_trusted(b"abc");
        assert_eq!(
            chunk_path(&id, Compression::Zstd),
            "chunks/a9/a9993e364706816aba3e25717850c26c9cd0d89d.zst"
        );
        assert_eq!(
            framed_chunk_path(&id, Compression::Zstd, 16),
            "chunks/a9/a9993e364706816aba3e25717850c26c9cd0d89d.f64k.zst"
        );
        assert_eq!(
            framed_chunk_path(&id, Compression::None, 16),
            chunk_path(&id, Compression::None)
        );
        assert_eq!(index_path("img"), "indexes/img.cidx");
    }

    #[test]
    fn names_cannot_escape() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["debian-12.img", "A_b.c-1"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn store_roots() {
        assert_eq!(
            split_index_location("http://h:1/s/indexes/img.cidx"),
            ("http://h:1/s/".into(), "indexes/img.cidx".into())
        );
        assert_eq!(store_root_of("http://h:1/img.cidx"), "http://h:1/");
        assert_eq!(store_root_of("/srv/store/indexes/x.cidx"), "/srv/store/");
        assert_eq!(store_root_of("indexes/x.cidx"), "./");
        assert_eq!(store_root_of("x.cidx"), "./");
    }

    #[test]
    fn image_names_from_index_locations() {
        assert_eq!(image_name_of("http://h:1/s/indexes/img.cidx"), Some("img"));
        assert_eq!(
            image_name_of("/srv/indexes/debian-12.img.cidx"),
            Some("debian-12.img")
        );
        assert_eq!(image_name_of("x.cidx"), Some("x"));
        for unknown in [
            "http://h/indexes/img",
            "http://h/indexes/img.cidx?v=2",
            "http://h/indexes/.cidx",
            "http://h/indexes/..cidx",
            "http://h/indexes/",
            "http://h/img.cidx/",
            "",
        ] {
            assert_eq!(image_name_of(unknown), None, "{unknown:?}");
        }
    }
}
