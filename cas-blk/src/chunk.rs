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
}

impl ChunkRef {
    /// Upper bound on a stored chunk's size: anything larger is refused
    /// before it is read whole. Covers zstd's and zlib's worst-case
    /// expansion of incompressible data.
    pub fn max_stored_len(&self) -> u64 {
        let len = u64::from(self.len);
        len + len / 64 + 1024
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
        Compression::Zstd => zstd::bulk::decompress(stored, expected).map_err(wrap)?,
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
    fn zero_detection() {
        assert!(is_zero(&[0u8; 10_000]));
        let mut buf = vec![0u8; 10_000];
        buf[9_999] = 1;
        assert!(!is_zero(&buf));
        assert!(is_zero(&[]));
    }
}
