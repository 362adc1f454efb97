//! The signed index of an image, format version 1.
//!
//! Binary, little-endian, fixed layout (docs/cas-blk.md has the table):
//! magic, version, compression, chunk shift, generation, image size, chunk
//! count, name, one 20-byte entry per chunk (all-zero bytes mark an all-zero
//! chunk, which is never stored), then an ed25519 signature over a domain
//! string followed by every byte before the signature.
//!
//! Parsing checks the framing first (so truncation and foreign files get
//! clear errors), then the signature, and only then trusts the contents.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::chunk::{ChunkId, ChunkRef, ChunkSize, Compression};
use crate::layout;

pub const MAGIC: &[u8; 8] = b"CIRCIDX\n";
pub const VERSION: u16 = 1;
/// Upper bound on chunks per image: 4 Mi entries (80 MiB of index), i.e.
/// 16 GiB at 4 KiB chunks, 1 TiB at 256 KiB, 16 TiB at 4 MiB.
pub const MAX_CHUNKS: u64 = 1 << 22;
/// Signatures cover this prefix too, so an index signature can never be
/// replayed as a signature of anything else made with the same key.
const SIGNING_DOMAIN: &[u8] = b"circ-cas index v1\0";
const SIGNATURE_LEN: usize = 64;
/// magic + version + compression + shift + generation + size + count + name length.
const FIXED_HEADER_LEN: usize = 8 + 2 + 1 + 1 + 8 + 8 + 8 + 1;

/// A parsed, signature-checked index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexV1 {
    /// Image name: also the anti-rollback key and the index file name.
    pub name: String,
    /// Increases with every pack of the same name; clients refuse to go back.
    pub generation: u64,
    pub image_size: u64,
    pub chunk_size: ChunkSize,
    pub compression: Compression,
    /// One entry per chunk; `None` is an all-zero chunk.
    pub chunks: Vec<Option<ChunkId>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("not a cas-blk index (bad magic)")]
    BadMagic,
    #[error("index format version {0} is not supported (only {VERSION})")]
    UnsupportedVersion(u16),
    #[error("index is truncated: {got} bytes, expected {expected}")]
    Truncated { got: u64, expected: u64 },
    #[error("index has {0} trailing bytes after its signature")]
    TrailingBytes(u64),
    #[error("index is {0} bytes, over the size limit")]
    TooLarge(u64),
    #[error("index field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("index signature does not verify with the given public key")]
    BadSignature,
}

impl IndexV1 {
    /// Largest index file this parser reads.
    pub const MAX_ENCODED_LEN: u64 =
        (FIXED_HEADER_LEN + 255 + SIGNATURE_LEN) as u64 + MAX_CHUNKS * ChunkId::LEN as u64;

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Uncompressed length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> u32 {
        let size = u64::from(self.chunk_size.bytes());
        let start = i as u64 * size;
        self.image_size.saturating_sub(start).min(size) as u32
    }

    /// How to fetch chunk `i`; `None` for an all-zero chunk (or out of range).
    pub fn chunk_ref(&self, i: usize) -> Option<ChunkRef> {
        let id = (*self.chunks.get(i)?)?;
        Some(ChunkRef {
            id,
            compression: self.compression,
            len: self.chunk_len(i),
        })
    }

    /// Chunks needed by the image, each once.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        (0..self.chunks.len())
            .filter_map(|i| self.chunk_ref(i))
            .filter(|c| seen.insert(c.id))
            .collect()
    }

    fn check_shape(&self) -> Result<(), IndexError> {
        layout::validate_name(&self.name).map_err(|reason| IndexError::Invalid {
            field: "name",
            reason,
        })?;
        let expected = expected_chunk_count(self.image_size, self.chunk_size)?;
        if self.chunks.len() as u64 != expected {
            return Err(invalid(
                "chunk_count",
                format!(
                    "{} chunks for an image of {} bytes",
                    self.chunks.len(),
                    self.image_size
                ),
            ));
        }
        Ok(())
    }

    /// Serialises and signs. Fails only if the index breaks the format's
    /// own limits (bad name, too many chunks, count not matching size).
    pub fn to_signed_bytes(&self, key: &SigningKey) -> Result<Vec<u8>, IndexError> {
        self.check_shape()?;
        let name = self.name.as_bytes();
        let mut out = Vec::with_capacity(
            FIXED_HEADER_LEN + name.len() + self.chunks.len() * ChunkId::LEN + SIGNATURE_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.compression.code());
        out.push(self.chunk_size.shift());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        // validate_name bounds the length to 1..=128.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        for entry in &self.chunks {
            out.extend_from_slice(
                entry
                    .as_ref()
                    .map_or(&[0u8; 20], ChunkId::as_bytes)
                    .as_slice(),
            );
        }
        let signature = key.sign(&signed_message(&out));
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// Parses `bytes` and checks their signature with `key`.
    pub fn parse_verified(bytes: &[u8], key: &VerifyingKey) -> Result<Self, IndexError> {
        let (header, body_len) = Header::parse(bytes)?;
        let (body, signature) = bytes.split_at(body_len);
        let signature =
            Signature::from_bytes(signature.try_into().map_err(|_| IndexError::BadSignature)?);
        key.verify_strict(&signed_message(body), &signature)
            .map_err(|_| IndexError::BadSignature)?;
        header.into_index(body)
    }

    /// Reads only the generation, without checking the signature: for a
    /// packer choosing the next generation of its own store.
    pub fn peek_generation(bytes: &[u8]) -> Result<u64, IndexError> {
        Ok(Header::parse(bytes)?.0.generation)
    }
}

/// The framing fields, read before the signature is checked.
struct Header {
    compression: Compression,
    chunk_size: ChunkSize,
    generation: u64,
    image_size: u64,
    chunk_count: u64,
    name: String,
    entries_offset: usize,
}

impl Header {
    /// Returns the header and the length of the signed part.
    fn parse(bytes: &[u8]) -> Result<(Self, usize), IndexError> {
        let total = bytes.len() as u64;
        if total > IndexV1::MAX_ENCODED_LEN {
            return Err(IndexError::TooLarge(total));
        }
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(MAGIC.len(), FIXED_HEADER_LEN)?;
        if magic != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let version = r.u16(FIXED_HEADER_LEN)?;
        if version != VERSION {
            return Err(IndexError::UnsupportedVersion(version));
        }
        let code = r.u8(FIXED_HEADER_LEN)?;
        let compression = Compression::from_code(code)
            .ok_or_else(|| invalid("compression", format!("unknown code {code}")))?;
        let shift = r.u8(FIXED_HEADER_LEN)?;
        let chunk_size =
            ChunkSize::from_shift(shift).map_err(|e| invalid("chunk_shift", e.to_string()))?;
        let generation = r.u64(FIXED_HEADER_LEN)?;
        let image_size = r.u64(FIXED_HEADER_LEN)?;
        let chunk_count = r.u64(FIXED_HEADER_LEN)?;
        let expected_count = expected_chunk_count(image_size, chunk_size)?;
        if chunk_count != expected_count {
            return Err(invalid(
                "chunk_count",
                format!("{chunk_count} chunks for an image of {image_size} bytes"),
            ));
        }
        let name_len = usize::from(r.u8(FIXED_HEADER_LEN)?);
        // From here the whole length is known: say "truncated" with numbers.
        // chunk_count <= MAX_CHUNKS, so this cannot overflow.
        let body_len = FIXED_HEADER_LEN + name_len + chunk_count as usize * ChunkId::LEN;
        let expected_total = (body_len + SIGNATURE_LEN) as u64;
        if total < expected_total {
            return Err(IndexError::Truncated {
                got: total,
                expected: expected_total,
            });
        }
        if total > expected_total {
            return Err(IndexError::TrailingBytes(total - expected_total));
        }
        let name_bytes = r.take(name_len, body_len)?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| invalid("name", "not UTF-8".into()))?
            .to_owned();
        layout::validate_name(&name).map_err(|reason| invalid("name", reason))?;
        Ok((
            Self {
                compression,
                chunk_size,
                generation,
                image_size,
                chunk_count,
                name,
                entries_offset: r.pos,
            },
            body_len,
        ))
    }

    fn into_index(self, body: &[u8]) -> Result<IndexV1, IndexError> {
        let entries = body
            .get(self.entries_offset..)
            .ok_or(IndexError::Truncated {
                got: body.len() as u64,
                expected: self.entries_offset as u64,
            })?;
        let chunks: Vec<Option<ChunkId>> = entries
            .chunks_exact(ChunkId::LEN)
            .map(|raw| {
                let mut id = [0u8; 20];
                id.copy_from_slice(raw);
                (id != [0u8; 20]).then_some(ChunkId::from_bytes(id))
            })
            .collect();
        let index = IndexV1 {
            name: self.name,
            generation: self.generation,
            image_size: self.image_size,
            chunk_size: self.chunk_size,
            compression: self.compression,
            chunks,
        };
        debug_assert_eq!(index.chunks.len() as u64, self.chunk_count);
        Ok(index)
    }
}

fn expected_chunk_count(image_size: u64, chunk_size: ChunkSize) -> Result<u64, IndexError> {
    let count = image_size.div_ceil(u64::from(chunk_size.bytes()));
    if count > MAX_CHUNKS {
        return Err(invalid(
            "image_size",
            format!("{image_size} bytes need {count} chunks of {chunk_size}, over {MAX_CHUNKS}"),
        ));
    }
    Ok(count)
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + body.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(body);
    msg
}

fn invalid(field: &'static str, reason: String) -> IndexError {
    IndexError::Invalid { field, reason }
}

/// Bounds-checked cursor. `need` is the length the caller knows the input
/// must at least have, for the "truncated" message.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, need: usize) -> Result<&'a [u8], IndexError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(IndexError::Truncated {
            got: self.bytes.len() as u64,
            expected: need.max(self.pos.saturating_add(n)) as u64,
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, need: usize) -> Result<[u8; N], IndexError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, need)?);
        Ok(out)
    }

    fn u8(&mut self, need: usize) -> Result<u8, IndexError> {
        Ok(self.array::<1>(need)?[0])
    }

    fn u16(&mut self, need: usize) -> Result<u16, IndexError> {
        Ok(u16::from_le_bytes(self.array(need)?))
    }

    fn u64(&mut self, need: usize) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(self.array(need)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sample() -> IndexV1 {
        IndexV1 {
            name: "debian-12.img".into(),
            generation: 7,
            image_size: 3 * 4096 + 100,
            chunk_size: ChunkSize::from_shift(12).unwrap(),
            compression: Compression::Zlib,
            chunks: vec![
                Some(ChunkId::of_trusted(b"a")),
                None,
                Some(ChunkId::of_trusted(b"b")),
                Some(ChunkId::of_trusted(b"a")),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let index = sample();
        let bytes = index.to_signed_bytes(&key(1)).unwrap();
        let parsed = IndexV1::parse_verified(&bytes, &key(1).verifying_key()).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.chunk_len(3), 100);
        assert_eq!(parsed.chunk_ref(1), None);
        assert_eq!(parsed.unique_chunks().len(), 2);
        assert_eq!(IndexV1::peek_generation(&bytes).unwrap(), 7);
    }

    #[test]
    fn wrong_key_and_any_flipped_bit_are_refused() {
        let bytes = sample().to_signed_bytes(&key(1)).unwrap();
        assert!(matches!(
            IndexV1::parse_verified(&bytes, &key(2).verifying_key()),
            Err(IndexError::BadSignature)
        ));
        let pubkey = key(1).verifying_key();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(IndexV1::parse_verified(&bad, &pubkey).is_err(), "byte {i}");
        }
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let bytes = sample().to_signed_bytes(&key(1)).unwrap();
        let pubkey = key(1).verifying_key();
        for len in 0..bytes.len() {
            match IndexV1::parse_verified(&bytes[..len], &pubkey) {
                Err(IndexError::Truncated { got, .. }) => assert_eq!(got, len as u64),
                other => panic!("length {len}: {other:?}"),
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            IndexV1::parse_verified(&long, &pubkey),
            Err(IndexError::TrailingBytes(1))
        ));
    }

    #[test]
    fn foreign_and_hostile_headers() {
        let pubkey = key(1).verifying_key();
        let bytes = sample().to_signed_bytes(&key(1)).unwrap();
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(matches!(
            IndexV1::parse_verified(&foreign, &pubkey),
            Err(IndexError::BadMagic)
        ));
        let mut version = bytes.clone();
        version[8] = 2;
        assert!(matches!(
            IndexV1::parse_verified(&version, &pubkey),
            Err(IndexError::UnsupportedVersion(2))
        ));
        // A huge image size must be refused from the header, not allocated.
        let mut huge = bytes.clone();
        huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            IndexV1::parse_verified(&huge, &pubkey),
            Err(IndexError::Invalid {
                field: "image_size",
                ..
            })
        ));
        let mut shift = bytes;
        shift[11] = 40;
        assert!(matches!(
            IndexV1::parse_verified(&shift, &pubkey),
            Err(IndexError::Invalid {
                field: "chunk_shift",
                ..
            })
        ));
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        let pubkey = key(1).verifying_key();
        let valid = sample().to_signed_bytes(&key(1)).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut input = valid.clone();
            for _ in 0..(round % 8 + 1) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pos = (state % input.len() as u64) as usize;
                input[pos] = (state >> 32) as u8;
            }
            input.truncate((state >> 40) as usize % (valid.len() + 1));
            let _ = IndexV1::parse_verified(&input, &pubkey);
        }
    }

    #[test]
    fn shape_errors_refuse_to_serialise() {
        let mut index = sample();
        index.chunks.pop();
        assert!(index.to_signed_bytes(&key(1)).is_err());
        let mut index = sample();
        index.name = "../etc".into();
        assert!(index.to_signed_bytes(&key(1)).is_err());
    }
}
