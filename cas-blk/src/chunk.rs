//! Chunks: fixed-size pieces of an image, named by the SHA-1 of their
//! uncompressed content and stored compressed.
//!
//! Naming uses plain SHA-1 (LBCAS compatibility); every check of data that
//! came from outside uses collision-detecting SHA-1, so a chunk crafted with
//! a known SHA-1 collision attack is refused even if its name matches.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::str::FromStr;

use sha1::Digest as _;
use sha1collisiondetection::Sha1CD;

/// Smallest chunk size, 4 KiB (one page).
pub const MIN_CHUNK_SHIFT: u8 = 12;
/// Largest chunk size, 4 MiB.
pub const MAX_CHUNK_SHIFT: u8 = 22;
/// Default chunk size, 256 KiB (LBCAS's choice).
pub const DEFAULT_CHUNK_SHIFT: u8 = 18;

/// zstd level used when packing: fast enough to keep up with SHA-1 on one core.
const ZSTD_LEVEL: i32 = 3;

/// The name of a chunk: SHA-1 of its uncompressed content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 20]);

impl ChunkId {
    pub const LEN: usize = 20;

    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Names `plain` with plain SHA-1: for content we produced ourselves
    /// (packing), where nothing is being verified.
    pub fn of_trusted(plain: &[u8]) -> Self {
        Self(sha1::Sha1::digest(plain).into())
    }

    /// Names `plain` with collision-detecting SHA-1: for content from
    /// outside. Fails if `plain` carries a SHA-1 collision attack.
    pub fn of_untrusted(plain: &[u8]) -> Result<Self, ChunkError> {
        let mut hasher = Sha1CD::default();
        hasher.update(plain);
        let digest = hasher
            .finalize_cd()
            .map_err(|_| ChunkError::CollisionAttack)?;
        let mut out = [0u8; 20];
        out.copy_from_slice(&digest);
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = crate::hex::decode::<20>(s).ok_or(ParseError::ChunkId)?;
        Ok(Self(bytes))
    }
}

/// A chunk size: a power of two from 4 KiB to 4 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkSize {
    shift: u8,
}

impl ChunkSize {
    pub const DEFAULT: Self = Self {
        shift: DEFAULT_CHUNK_SHIFT,
    };

    pub fn from_shift(shift: u8) -> Result<Self, ParseError> {
        if (MIN_CHUNK_SHIFT..=MAX_CHUNK_SHIFT).contains(&shift) {
            Ok(Self { shift })
        } else {
            Err(ParseError::ChunkSize(format!("2^{shift}")))
        }
    }

    pub fn from_bytes(bytes: u64) -> Result<Self, ParseError> {
        if !bytes.is_power_of_two() {
            return Err(ParseError::ChunkSize(bytes.to_string()));
        }
        u8::try_from(bytes.trailing_zeros())
            .ok()
            .and_then(|shift| Self::from_shift(shift).ok())
            .ok_or_else(|| ParseError::ChunkSize(bytes.to_string()))
    }

    pub const fn shift(self) -> u8 {
        self.shift
    }

    pub const fn bytes(self) -> u32 {
        1 << self.shift
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shift >= 20 {
            write!(f, "{}M", 1u32 << (self.shift - 20))
        } else {
            write!(f, "{}K", 1u32 << (self.shift - 10))
        }
    }
}

impl FromStr for ChunkSize {
    type Err = ParseError;

    /// Accepts `262144`, `256K`, `256KiB`, `4M`, `4MiB` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::ChunkSize(s.to_owned());
        let lower = s.trim().to_ascii_lowercase();
        let digits_end = lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len());
        let (digits, unit) = lower.split_at(digits_end);
        let value: u64 = digits.parse().map_err(|_| bad())?;
        let multiplier = match unit {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1 << 10,
            "m" | "mib" | "mb" => 1 << 20,
            _ => return Err(bad()),
        };
        let bytes = value.checked_mul(multiplier).ok_or_else(bad)?;
        Self::from_bytes(bytes).map_err(|_| bad())
    }
}

/// How chunk files are compressed; one choice per image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    /// zlib (RFC 1950), as LBCAS stores its chunks.
    Zlib,
    #[default]
    Zstd,
}

impl Compression {
    pub const fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zlib => 1,
            Self::Zstd => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Zlib),
            2 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// File name extension of chunks stored this way.
    pub const fn extension(self) -> &'static str {
        match self {
            Self::None => "raw",
            Self::Zlib => "zlib",
            Self::Zstd => "zst",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "zlib" => Ok(Self::Zlib),
            "zstd" => Ok(Self::Zstd),
            _ => Err(ParseError::Compression(s.to_owned())),
        }
    }
}

/// Everything needed to fetch and check one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub compression: Compression,
    /// Uncompressed length: the chunk size, or less for an image's last chunk.
    pub len: u32,
    /// Format 2: the chunk is stored as frames of `2^shift` bytes each
    /// compressed on its own, checked against the index's frame digests.
    /// `None`: format 1, one compressed stream named by its SHA-1.
    pub frame_shift: Option<u8>,
}

impl ChunkRef {
    /// Path of the stored object relative to the store root.
    pub fn path(&self) -> String {
        match self.frame_shift {
            None => crate::layout::chunk_path(&self.id, self.compression),
            Some(shift) => crate::layout::framed_chunk_path(&self.id, self.compression, shift),
        }
    }

    /// Number of frames (format 2), 1 for format 1.
    pub fn frame_count(&self) -> usize {
        match self.frame_shift {
            None => 1,
            Some(shift) => (self.len as usize).div_ceil(1 << shift),
        }
    }

    /// Plain length of frame `f`.
    pub fn frame_len(&self, f: usize) -> usize {
        let size = self.frame_shift.map_or(self.len as usize, |s| 1usize << s);
        (self.len as usize).saturating_sub(f * size).min(size)
    }

    /// Upper bound on a stored chunk's size: anything larger is refused
    /// before it is read whole. Covers zstd's and zlib's worst-case
    /// expansion of incompressible data.
    pub fn max_stored_len(&self) -> u64 {
        let len = u64::from(self.len);
        len + len / 64 + 1024 * self.frame_count() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a chunk id (40 hex digits)")]
    ChunkId,
    #[error("invalid chunk size `{0}`: a power of two from 4K to 4M")]
    ChunkSize(String),
    #[error("unknown compression `{0}` (none, zlib, zstd)")]
    Compression(String),
}

/// Why a stored chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("stored chunk is {len} bytes, more than the {max} a chunk of this size may take")]
    StoredTooLarge { len: u64, max: u64 },
    #[error("{compression} decompression failed")]
    Decompress {
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("content is {got} bytes, expected {expected}")]
    Length { expected: u32, got: u64 },
    #[error("content hashes to {got}, expected {expected}")]
    HashMismatch { expected: ChunkId, got: ChunkId },
    #[error("frame {frame} does not match the index's digest")]
    FrameMismatch { frame: usize },
    #[error("frames do not fit: {0}")]
    Frames(String),
    #[error("content carries a SHA-1 collision attack")]
    CollisionAttack,
    #[error("{compression} compression failed")]
    Compress {
        compression: Compression,
        #[source]
        source: io::Error,
    },
}

/// Compresses a chunk's content for storage.
pub fn compress(compression: Compression, plain: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let wrap = |source| ChunkError::Compress {
        compression,
        source,
    };
    match compression {
        Compression::None => Ok(plain.to_vec()),
        Compression::Zstd => zstd::bulk::compress(plain, ZSTD_LEVEL).map_err(wrap),
        Compression::Zlib => {
            let mut enc = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(plain.len() / 2),
                flate2::Compression::default(),
            );
            enc.write_all(plain).map_err(wrap)?;
            enc.finish().map_err(wrap)
        }
    }
}

thread_local! {
    /// A zstd context per thread, reused: making one per frame cost ~5 % of
    /// a cold random read's CPU (perf, issue 15).
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a stored chunk, refusing output longer than `chunk.len`.
fn decompress(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let expected = chunk.len as usize;
    let wrap = |source| ChunkError::Decompress {
        compression: chunk.compression,
        source,
    };
    let plain = match chunk.compression {
        Compression::None => stored.to_vec(),
        // bulk::decompress fails rather than grow past its capacity:
        // a decompression bomb costs at most one chunk of memory.
        Compression::Zstd => ZSTD_DCTX
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                let dctx = match &mut *slot {
                    Some(dctx) => dctx,
                    None => slot.insert(zstd::bulk::Decompressor::new()?),
                };
                dctx.decompress(stored, expected)
            })
            .map_err(wrap)?,
        Compression::Zlib => {
            let mut out = Vec::with_capacity(expected);
            flate2::read::ZlibDecoder::new(stored)
                .take(expected as u64 + 1)
                .read_to_end(&mut out)
                .map_err(wrap)?;
            out
        }
    };
    if plain.len() != expected {
        return Err(ChunkError::Length {
            expected: chunk.len,
            got: plain.len() as u64,
        });
    }
    Ok(plain)
}

/// Turns stored bytes from anywhere into the chunk's verified content,
/// or says why they are not it.
pub fn decode_verified(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let max = chunk.max_stored_len();
    if stored.len() as u64 > max {
        return Err(ChunkError::StoredTooLarge {
            len: stored.len() as u64,
            max,
        });
    }
    let plain = decompress(chunk, stored)?;
    let got = ChunkId::of_untrusted(&plain)?;
    if got != chunk.id {
        return Err(ChunkError::HashMismatch {
            expected: chunk.id,
            got,
        });
    }
    Ok(plain)
}

/// Digest of a frame's plain content in a format-2 index: BLAKE3, full 256
/// bits (the index is signed; these are what binds content to it).
pub type FrameDigest = [u8; 32];

pub fn frame_digest(plain: &[u8]) -> FrameDigest {
    *blake3::hash(plain).as_bytes()
}

/// How a format-2 chunk is stored: each frame's stored (compressed) length
/// and the digest of its plain content, from the signed index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkFrames {
    pub stored_lens: Vec<u32>,
    pub digests: Vec<FrameDigest>,
    /// `offsets[f]`: where frame `f` starts in the stored object; one more
    /// entry, the object's length.
    offsets: Vec<u64>,
}

impl ChunkFrames {
    pub fn new(stored_lens: Vec<u32>, digests: Vec<FrameDigest>) -> Self {
        let mut offsets = Vec::with_capacity(stored_lens.len() + 1);
        let mut at = 0u64;
        offsets.push(0);
        for &len in &stored_lens {
            at += u64::from(len);
            offsets.push(at);
        }
        Self {
            stored_lens,
            digests,
            offsets,
        }
    }

    pub fn count(&self) -> usize {
        self.stored_lens.len()
    }

    /// Byte range of frames `frames` in the stored object.
    pub fn stored_range(&self, frames: std::ops::Range<usize>) -> std::ops::Range<u64> {
        self.offsets[frames.start]..self.offsets[frames.end]
    }

    pub fn stored_total(&self) -> u64 {
        self.offsets[self.count()]
    }
}

/// Largest stored frame accepted for a plain frame of `len` bytes (zstd's
/// and zlib's worst-case expansion, with room).
pub fn max_stored_frame_len(len: usize) -> u64 {
    let len = len as u64;
    len + len / 64 + 1024
}

/// Compresses `plain` frame by frame (`2^frame_shift` bytes each):
/// returns the stored object and each frame's stored length and digest.
pub fn compress_frames(
    compression: Compression,
    plain: &[u8],
    frame_shift: u8,
) -> Result<(Vec<u8>, ChunkFrames), ChunkError> {
    let mut stored = Vec::with_capacity(plain.len() / 2);
    let mut lens = Vec::new();
    let mut digests = Vec::new();
    for frame in plain.chunks(1 << frame_shift) {
        let packed = compress(compression, frame)?;
        lens.push(packed.len() as u32);
        digests.push(frame_digest(frame));
        stored.extend_from_slice(&packed);
    }
    Ok((stored, ChunkFrames::new(lens, digests)))
}

/// The stored length of each frame of an existing format-2 object (a
/// store's copy, when re-packing): its frames decoded one by one.
pub fn frame_lens_of(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u32>, ChunkError> {
    let wrap = |source| ChunkError::Decompress {
        compression: chunk.compression,
        source,
    };
    let mut lens = Vec::with_capacity(chunk.frame_count());
    let mut at = 0usize;
    for f in 0..chunk.frame_count() {
        let rest = &stored[at..];
        let len = match chunk.compression {
            Compression::None if rest.len() < chunk.frame_len(f) => {
                return Err(ChunkError::Length {
                    expected: chunk.len,
                    got: stored.len() as u64,
                })
            }
            Compression::None => chunk.frame_len(f),
            Compression::Zstd => zstd::zstd_safe::find_frame_compressed_size(rest)
                .map_err(|code| wrap(io::Error::other(zstd::zstd_safe::get_error_name(code))))?,
            Compression::Zlib => {
                let mut inflate = flate2::Decompress::new(true);
                let mut sink = vec![0u8; chunk.frame_len(f)];
                inflate
                    .decompress(rest, &mut sink, flate2::FlushDecompress::Finish)
                    .map_err(|e| wrap(io::Error::other(e)))?;
                inflate.total_in() as usize
            }
        };
        lens.push(len as u32);
        at += len;
    }
    if at != stored.len() {
        return Err(ChunkError::Length {
            expected: at as u32,
            got: stored.len() as u64,
        });
    }
    Ok(lens)
}

/// Turns stored frames `frames` of a format-2 chunk (`stored`, which
/// starts `at` bytes into the object and covers at least those frames)
/// into their verified plain content: each frame's stored length must be
/// the index's, it must decompress (bounded) to exactly its plain length,
/// and its BLAKE3 must be the index's.
pub fn decode_frames_verified(
    chunk: &ChunkRef,
    layout: &ChunkFrames,
    frames: std::ops::Range<usize>,
    at: u64,
    stored: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    if frames.end > layout.count() || layout.count() != chunk.frame_count() {
        return Err(ChunkError::Frames(format!(
            "frames {frames:?} of a chunk of {} frames (index: {})",
            chunk.frame_count(),
            layout.count()
        )));
    }
    let range = layout.stored_range(frames.clone());
    let end = at + stored.len() as u64;
    if range.start < at || range.end > end {
        return Err(ChunkError::Frames(format!(
            "got stored bytes {at}..{end}, frames need {range:?}"
        )));
    }
    let mut plain = Vec::new();
    for f in frames {
        let r = layout.stored_range(f..f + 1);
        let piece = &stored[(r.start - at) as usize..(r.end - at) as usize];
        let want = chunk.frame_len(f);
        if piece.len() as u64 > max_stored_frame_len(want) {
            return Err(ChunkError::StoredTooLarge {
                len: piece.len() as u64,
                max: max_stored_frame_len(want),
            });
        }
        let frame_ref = ChunkRef {
            len: want as u32,
            frame_shift: None,
            ..*chunk
        };
        let frame = decompress(&frame_ref, piece)?;
        if frame_digest(&frame) != layout.digests[f] {
            return Err(ChunkError::FrameMismatch { frame: f });
        }
        // One frame (a small read's): its buffer is the result, no copy.
        if plain.is_empty() {
            plain = frame;
        } else {
            plain.extend_from_slice(&frame);
        }
    }
    Ok(plain)
}

/// A whole format-2 chunk, verified frame by frame: from its stored object,
/// or from a plain copy (`chunk.compression` none: a cache's copy).
pub fn decode_framed_chunk(
    chunk: &ChunkRef,
    layout: &ChunkFrames,
    stored: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    if chunk.compression == Compression::None {
        // Plain frames (an uncompressed image, or a cache's plain copy).
        if stored.len() != chunk.len as usize {
            return Err(ChunkError::Length {
                expected: chunk.len,
                got: stored.len() as u64,
            });
        }
        let size = 1usize << chunk.frame_shift.unwrap_or(0);
        for (f, frame) in stored.chunks(size).enumerate() {
            if layout.digests.get(f) != Some(&frame_digest(frame)) {
                return Err(ChunkError::FrameMismatch { frame: f });
            }
        }
        return Ok(stored.to_vec());
    }
    decode_frames_verified(chunk, layout, 0..layout.count(), 0, stored)
}

/// True if every byte is zero. Such chunks are never stored nor fetched.
pub fn is_zero(buf: &[u8]) -> bool {
    // OR-folding fixed blocks vectorises well, unlike an early-exit `all`.
    buf.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn chunk_sizes_parse_and_bound() {
        assert_eq!("256K".parse::<ChunkSize>().unwrap().bytes(), 256 << 10);
        assert_eq!("4MiB".parse::<ChunkSize>().unwrap().bytes(), 4 << 20);
        assert_eq!("4096".parse::<ChunkSize>().unwrap().shift(), 12);
        for bad in ["2K", "8M", "100K", "", "K", "99999999999999999999K", "1G"] {
            assert!(bad.parse::<ChunkSize>().is_err(), "{bad}");
        }
        assert_eq!(ChunkSize::DEFAULT.to_string(), "256K");
        assert_eq!(ChunkSize::from_shift(22).unwrap().to_string(), "4M");
    }

    #[test]
    fn ids_agree_between_fast_and_checked_sha1() {
        let data = sample(10_000);
        let id = ChunkId::of_trusted(&data);
        assert_eq!(ChunkId::of_untrusted(&data).unwrap(), id);
        // SHA-1("abc"), FIPS 180-1.
        assert_eq!(
            ChunkId::of_trusted(b"abc").to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("xyz".parse::<ChunkId>().is_err());
    }

    #[test]
    fn every_compression_round_trips_and_verifies() {
        let plain = sample(65_536);
        for compression in [Compression::None, Compression::Zlib, Compression::Zstd] {
            let chunk = ChunkRef {
                id: ChunkId::of_trusted(&plain),
                compression,
                len: plain.len() as u32,
                frame_shift: None,
            };
            let stored = compress(compression, &plain).unwrap();
            assert_eq!(decode_verified(&chunk, &stored).unwrap(), plain);
        }
    }

    #[test]
    fn wrong_content_is_refused() {
        let plain = sample(4096);
        let chunk = ChunkRef {
            id: ChunkId::of_trusted(&plain),
            compression: Compression::None,
            len: 4096,
            frame_shift: None,
        };
        let mut bad = plain.clone();
        bad[100] ^= 1;
        assert!(matches!(
            decode_verified(&chunk, &bad),
            Err(ChunkError::HashMismatch { .. })
        ));
        assert!(matches!(
            decode_verified(&chunk, &plain[..4000]),
            Err(ChunkError::Length { .. })
        ));
    }

    #[test]
    fn decompression_bombs_and_garbage_are_bounded() {
        let big = vec![1u8; 1 << 20];
        let chunk = ChunkRef {
            id: ChunkId::of_trusted(&big[..4096]),
            compression: Compression::Zstd,
            len: 4096,
            frame_shift: None,
        };
        let bomb = compress(Compression::Zstd, &big).unwrap();
        assert!(decode_verified(&chunk, &bomb).is_err());
        let zlib_chunk = ChunkRef {
            compression: Compression::Zlib,
            ..chunk
        };
        let bomb = compress(Compression::Zlib, &big).unwrap();
        assert!(matches!(
            decode_verified(&zlib_chunk, &bomb),
            Err(ChunkError::Length { .. })
        ));
        assert!(decode_verified(&chunk, b"not zstd at all").is_err());
        assert!(decode_verified(&zlib_chunk, b"not zlib at all").is_err());
        let oversized = vec![0u8; chunk.max_stored_len() as usize + 1];
        assert!(matches!(
            decode_verified(&chunk, &oversized),
            Err(ChunkError::StoredTooLarge { .. })
        ));
    }

    #[test]
    fn frames_round_trip_verify_alone_and_refuse_damage() {
        let plain = sample(5 * 4096 + 100);
        for compression in [Compression::None, Compression::Zlib, Compression::Zstd] {
            let chunk = ChunkRef {
                id: ChunkId::of_trusted(&plain),
                compression,
                len: plain.len() as u32,
                frame_shift: Some(12),
            };
            let (stored, frames) = compress_frames(compression, &plain, 12).unwrap();
            assert_eq!(frames.count(), 6);
            assert_eq!(frames.stored_total(), stored.len() as u64);
            assert_eq!(frame_lens_of(&chunk, &stored).unwrap(), frames.stored_lens);
            assert_eq!(
                decode_framed_chunk(&chunk, &frames, &stored).unwrap(),
                plain
            );
            // Frames 2..5 alone, from exactly their bytes or from the
            // whole object.
            let range = frames.stored_range(2..5);
            let part = &stored[range.start as usize..range.end as usize];
            let want = &plain[2 * 4096..5 * 4096];
            assert_eq!(
                decode_frames_verified(&chunk, &frames, 2..5, range.start, part).unwrap(),
                want
            );
            assert_eq!(
                decode_frames_verified(&chunk, &frames, 2..5, 0, &stored).unwrap(),
                want
            );
            // Too few bytes for the frames: refused, not read past.
            assert!(matches!(
                decode_frames_verified(&chunk, &frames, 2..5, range.start, &part[1..]),
                Err(ChunkError::Frames(_))
            ));
            // A damaged byte in frame 3: that frame is refused.
            let mut bad = part.to_vec();
            let in_frame3 = (frames.stored_range(3..4).start - range.start) as usize + 2;
            bad[in_frame3] ^= 0x40;
            assert!(decode_frames_verified(&chunk, &frames, 2..5, range.start, &bad).is_err());
            // The plain copy of a cache checks frame by frame too.
            let plain_chunk = ChunkRef {
                compression: Compression::None,
                ..chunk
            };
            let mut damaged = plain.clone();
            damaged[4096 * 4 + 1] ^= 1;
            assert!(matches!(
                decode_framed_chunk(&plain_chunk, &frames, &damaged),
                Err(ChunkError::FrameMismatch { frame: 4 })
            ));
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 10_000]));
        let mut buf = vec![0u8; 10_000];
        buf[9_999] = 1;
        assert!(!is_zero(&buf));
        assert!(is_zero(&[]));
    }
}
