//! The signed index of an image, format versions 1 and 2.
//!
//! Binary, little-endian, fixed layout (docs/cas-blk.md has the tables):
//! magic, version, compression, chunk shift, generation, image size, chunk
//! count, then
//! - version 1: name, one 20-byte entry per chunk (all-zero bytes mark an
//!   all-zero chunk, which is never stored);
//! - version 2: frame shift, distinct chunk count, name, one u32 per chunk
//!   position (the distinct chunk it holds, `u32::MAX` for all-zero), then
//!   per distinct chunk its SHA-1 and, per frame, the stored length and the
//!   BLAKE3 of the plain frame, so that any run of frames fetched alone
//!   (an HTTP Range) is verified on arrival;
//!
//! then an ed25519 signature over a domain string (one per version)
//! followed by every byte before the signature.
//!
//! Parsing checks the framing first (so truncation and foreign files get
//! clear errors), then the signature, and only then trusts the contents.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::chunk::{self, ChunkFrames, ChunkId, ChunkRef, ChunkSize, Compression, FrameDigest};
use crate::layout;

pub const MAGIC: &[u8; 8] = b"CIRCIDX\n";
/// The newest format, what `pack` writes by default.
pub const VERSION: u16 = 2;
/// Frames of format 2 per image, at most: 8 Mi (288 MiB of frame table;
/// 512 GiB of distinct data at the default 64 KiB frames).
pub const MAX_FRAMES: u64 = 1 << 23;
/// Default frame size of format 2: 64 KiB (measured in docs/cas-blk.md:
/// stored size 1.08x format 1's at 256 KiB chunks, where 4 KiB frames cost
/// 1.20x).
pub const DEFAULT_FRAME_SHIFT: u8 = 16;
const FRAME_ENTRY_LEN: usize = 4 + 32;
const V2_ZERO: u32 = u32::MAX;
/// Upper bound on chunks per image: 4 Mi entries (80 MiB of index), i.e.
/// 16 GiB at 4 KiB chunks, 1 TiB at 256 KiB, 16 TiB at 4 MiB.
pub const MAX_CHUNKS: u64 = 1 << 22;
/// Signatures cover this prefix too, so an index signature can never be
/// replayed as a signature of anything else made with the same key.
const SIGNING_DOMAIN: &[u8] = b"circ-cas index v1\0";
const SIGNING_DOMAIN_V2: &[u8] = b"circ-cas index v2\0";
const SIGNATURE_LEN: usize = 64;
/// magic + version + compression + shift + generation + size + count + name length.
const FIXED_HEADER_LEN: usize = 8 + 2 + 1 + 1 + 8 + 8 + 8 + 1;
/// Version 2 adds the frame shift and the distinct chunk count.
const FIXED_HEADER_LEN_V2: usize = FIXED_HEADER_LEN + 1 + 4;

/// A parsed, signature-checked index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Image name: also the anti-rollback key and the index file name.
    pub name: String,
    /// Increases with every pack of the same name; clients refuse to go back.
    pub generation: u64,
    pub image_size: u64,
    pub chunk_size: ChunkSize,
    pub compression: Compression,
    /// One entry per chunk; `None` is an all-zero chunk.
    pub chunks: Vec<Option<ChunkId>>,
    /// Format 2: how every distinct chunk is stored, as frames; `None`:
    /// format 1 (each chunk one compressed stream, checked by its SHA-1).
    pub frames: Option<FrameTable>,
}

/// Format 2's frames: their size, and each distinct chunk's stored frame
/// lengths and digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameTable {
    pub shift: u8,
    pub chunks: HashMap<ChunkId, Arc<ChunkFrames>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("not a cas-blk index (bad magic)")]
    BadMagic,
    #[error("index format version {0} is not supported (only 1 and {VERSION})")]
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

impl Index {
    /// Largest index file this parser reads (format 2's bound; format 1's
    /// is 80 MiB).
    pub const MAX_ENCODED_LEN: u64 = (FIXED_HEADER_LEN_V2 + 255 + SIGNATURE_LEN) as u64
        + MAX_CHUNKS * (4 + ChunkId::LEN as u64)
        + MAX_FRAMES * FRAME_ENTRY_LEN as u64;

    /// Format version: 2 with a frame table, else 1.
    pub fn version(&self) -> u16 {
        if self.frames.is_some() {
            2
        } else {
            1
        }
    }

    /// Format 2: the frames of chunk `id`.
    pub fn chunk_frames(&self, id: &ChunkId) -> Option<&Arc<ChunkFrames>> {
        self.frames.as_ref()?.chunks.get(id)
    }

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
            frame_shift: self.frames.as_ref().map(|f| f.shift),
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
    /// own limits (bad name, too many chunks, count not matching size,
    /// format 2: a chunk without frames or with the wrong number).
    pub fn to_signed_bytes(&self, key: &SigningKey) -> Result<Vec<u8>, IndexError> {
        self.check_shape()?;
        if let Some(frames) = &self.frames {
            return self.to_signed_bytes_v2(frames, key);
        }
        let name = self.name.as_bytes();
        let mut out = Vec::with_capacity(
            FIXED_HEADER_LEN + name.len() + self.chunks.len() * ChunkId::LEN + SIGNATURE_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u16.to_le_bytes());
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
        let signature = key.sign(&signed_message(SIGNING_DOMAIN, &out));
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    fn to_signed_bytes_v2(
        &self,
        frames: &FrameTable,
        key: &SigningKey,
    ) -> Result<Vec<u8>, IndexError> {
        check_frame_shift(frames.shift, self.chunk_size)?;
        let name = self.name.as_bytes();
        // Distinct chunks in order of first appearance: the canonical order
        // the parser insists on.
        let mut numbers: HashMap<ChunkId, u32> = HashMap::new();
        let mut order: Vec<(ChunkRef, &ChunkFrames)> = Vec::new();
        let mut positions = Vec::with_capacity(self.chunks.len());
        for i in 0..self.chunks.len() {
            let Some(chunk) = self.chunk_ref(i) else {
                positions.push(V2_ZERO);
                continue;
            };
            let next = order.len() as u32;
            let number = *numbers.entry(chunk.id).or_insert(next);
            if number == next {
                let table = frames.chunks.get(&chunk.id).ok_or_else(|| {
                    invalid("frames", format!("chunk {} has no frame table", chunk.id))
                })?;
                if table.count() != chunk.frame_count() {
                    return Err(invalid(
                        "frames",
                        format!(
                            "chunk {} has {} frames, its length needs {}",
                            chunk.id,
                            table.count(),
                            chunk.frame_count()
                        ),
                    ));
                }
                order.push((chunk, table));
            }
            positions.push(number);
        }
        let total_frames: u64 = order.iter().map(|(_, t)| t.count() as u64).sum();
        if total_frames > MAX_FRAMES {
            return Err(invalid(
                "frames",
                format!("{total_frames} frames, over {MAX_FRAMES}"),
            ));
        }
        let mut out = Vec::with_capacity(
            FIXED_HEADER_LEN_V2
                + name.len()
                + positions.len() * 4
                + order.len() * ChunkId::LEN
                + total_frames as usize * FRAME_ENTRY_LEN
                + SIGNATURE_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&2u16.to_le_bytes());
        out.push(self.compression.code());
        out.push(self.chunk_size.shift());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        out.push(frames.shift);
        out.extend_from_slice(&(order.len() as u32).to_le_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        for number in positions {
            out.extend_from_slice(&number.to_le_bytes());
        }
        for (chunk, table) in order {
            out.extend_from_slice(chunk.id.as_bytes());
            for (len, digest) in table.stored_lens.iter().zip(&table.digests) {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(digest);
            }
        }
        let signature = key.sign(&signed_message(SIGNING_DOMAIN_V2, &out));
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// Parses `bytes` and checks their signature with `key`.
    pub fn parse_verified(bytes: &[u8], key: &VerifyingKey) -> Result<Self, IndexError> {
        let (header, body_len) = Header::parse(bytes)?;
        let (body, signature) = bytes.split_at(body_len);
        let signature =
            Signature::from_bytes(signature.try_into().map_err(|_| IndexError::BadSignature)?);
        key.verify_strict(&signed_message(header.domain(), body), &signature)
            .map_err(|_| IndexError::BadSignature)?;
        header.into_index(body)
    }

    /// Signs `body` (an index without its signature) as an index of the
    /// version its header says: for fuzzing the parser past the signature.
    #[doc(hidden)]
    pub fn sign_body_for_fuzzing(body: &[u8], key: &SigningKey) -> Vec<u8> {
        let domain = match body.get(8..10) {
            Some([2, 0]) => SIGNING_DOMAIN_V2,
            _ => SIGNING_DOMAIN,
        };
        let mut out = body.to_vec();
        out.extend_from_slice(&key.sign(&signed_message(domain, body)).to_bytes());
        out
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
    v2: Option<HeaderV2>,
}

/// What format 2 adds to the framing: known before the signature check
/// because the body's length depends on it.
struct HeaderV2 {
    frame_shift: u8,
    /// Frames of each distinct chunk, in table order.
    frame_counts: Vec<u32>,
}

impl Header {
    fn domain(&self) -> &'static [u8] {
        if self.v2.is_some() {
            SIGNING_DOMAIN_V2
        } else {
            SIGNING_DOMAIN
        }
    }

    /// Returns the header and the length of the signed part.
    fn parse(bytes: &[u8]) -> Result<(Self, usize), IndexError> {
        let total = bytes.len() as u64;
        if total > Index::MAX_ENCODED_LEN {
            return Err(IndexError::TooLarge(total));
        }
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(MAGIC.len(), FIXED_HEADER_LEN)?;
        if magic != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let version = r.u16(FIXED_HEADER_LEN)?;
        if version != 1 && version != 2 {
            return Err(IndexError::UnsupportedVersion(version));
        }
        let fixed = if version == 2 {
            FIXED_HEADER_LEN_V2
        } else {
            FIXED_HEADER_LEN
        };
        let code = r.u8(fixed)?;
        let compression = Compression::from_code(code)
            .ok_or_else(|| invalid("compression", format!("unknown code {code}")))?;
        let shift = r.u8(fixed)?;
        let chunk_size =
            ChunkSize::from_shift(shift).map_err(|e| invalid("chunk_shift", e.to_string()))?;
        let generation = r.u64(fixed)?;
        let image_size = r.u64(fixed)?;
        let chunk_count = r.u64(fixed)?;
        let expected_count = expected_chunk_count(image_size, chunk_size)?;
        if chunk_count != expected_count {
            return Err(invalid(
                "chunk_count",
                format!("{chunk_count} chunks for an image of {image_size} bytes"),
            ));
        }
        let v2_fields = if version == 2 {
            let frame_shift = r.u8(fixed)?;
            check_frame_shift(frame_shift, chunk_size)?;
            let unique = r.u32(fixed)?;
            if u64::from(unique) > chunk_count {
                return Err(invalid(
                    "distinct_chunks",
                    format!("{unique} distinct chunks in an image of {chunk_count}"),
                ));
            }
            Some((frame_shift, unique))
        } else {
            None
        };
        let name_len = usize::from(r.u8(fixed)?);
        // chunk_count <= MAX_CHUNKS, so none of this can overflow.
        let entry_len = if version == 2 { 4 } else { ChunkId::LEN };
        let entries_len = chunk_count as usize * entry_len;
        let entries_offset = fixed + name_len;
        let mut body_len = entries_offset + entries_len;
        // Format 2's table length follows from its positions: read them
        // (bounds-checked) before the exact length is known.
        let v2 = match v2_fields {
            None => None,
            Some((frame_shift, unique)) => {
                let need = body_len + SIGNATURE_LEN;
                let positions =
                    bytes
                        .get(entries_offset..body_len)
                        .ok_or(IndexError::Truncated {
                            got: total,
                            expected: need as u64,
                        })?;
                let frame_counts =
                    frame_counts(positions, unique, image_size, chunk_size, frame_shift)?;
                let frames: u64 = frame_counts.iter().map(|&n| u64::from(n)).sum();
                if frames > MAX_FRAMES {
                    return Err(invalid(
                        "frames",
                        format!("{frames} frames, over {MAX_FRAMES}"),
                    ));
                }
                body_len += unique as usize * ChunkId::LEN + frames as usize * FRAME_ENTRY_LEN;
                Some(HeaderV2 {
                    frame_shift,
                    frame_counts,
                })
            }
        };
        // From here the whole length is known: say "truncated" with numbers.
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
                v2,
            },
            body_len,
        ))
    }

    fn into_index(self, body: &[u8]) -> Result<Index, IndexError> {
        let entries = body
            .get(self.entries_offset..)
            .ok_or(IndexError::Truncated {
                got: body.len() as u64,
                expected: self.entries_offset as u64,
            })?;
        let (chunks, frames) = match &self.v2 {
            None => (
                entries
                    .chunks_exact(ChunkId::LEN)
                    .map(|raw| {
                        let mut id = [0u8; 20];
                        id.copy_from_slice(raw);
                        (id != [0u8; 20]).then_some(ChunkId::from_bytes(id))
                    })
                    .collect(),
                None,
            ),
            Some(v2) => {
                let (chunks, table) = self.parse_v2_entries(v2, entries)?;
                (chunks, Some(table))
            }
        };
        let index = Index {
            name: self.name,
            generation: self.generation,
            image_size: self.image_size,
            chunk_size: self.chunk_size,
            compression: self.compression,
            chunks,
            frames,
        };
        debug_assert_eq!(index.chunks.len() as u64, self.chunk_count);
        Ok(index)
    }

    /// Format 2's positions and table (framing checked by `parse`).
    fn parse_v2_entries(
        &self,
        v2: &HeaderV2,
        entries: &[u8],
    ) -> Result<(Vec<Option<ChunkId>>, FrameTable), IndexError> {
        let count = self.chunk_count as usize;
        let short = || IndexError::Truncated {
            got: entries.len() as u64,
            expected: entries.len() as u64 + 1,
        };
        let (positions, mut table) = entries.split_at_checked(count * 4).ok_or_else(short)?;
        let mut ids: Vec<ChunkId> = Vec::with_capacity(v2.frame_counts.len());
        let mut chunks_frames = HashMap::with_capacity(v2.frame_counts.len());
        let frame_bytes = 1usize << v2.frame_shift;
        for &frames in &v2.frame_counts {
            let (raw_id, rest) = table.split_at_checked(ChunkId::LEN).ok_or_else(short)?;
            let mut id = [0u8; 20];
            id.copy_from_slice(raw_id);
            let id = ChunkId::from_bytes(id);
            let (raw_frames, rest) = rest
                .split_at_checked(frames as usize * FRAME_ENTRY_LEN)
                .ok_or_else(short)?;
            table = rest;
            let mut lens = Vec::with_capacity(frames as usize);
            let mut digests: Vec<FrameDigest> = Vec::with_capacity(frames as usize);
            for entry in raw_frames.chunks_exact(FRAME_ENTRY_LEN) {
                let mut len = [0u8; 4];
                len.copy_from_slice(&entry[..4]);
                let len = u32::from_le_bytes(len);
                let bound = chunk::max_stored_frame_len(frame_bytes);
                if u64::from(len) > bound || len == 0 {
                    return Err(invalid(
                        "frames",
                        format!("chunk {id}: a stored frame of {len} bytes (1 to {bound})"),
                    ));
                }
                lens.push(len);
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&entry[4..]);
                digests.push(digest);
            }
            if chunks_frames
                .insert(id, Arc::new(ChunkFrames::new(lens, digests)))
                .is_some()
            {
                return Err(invalid(
                    "distinct_chunks",
                    format!("chunk {id} listed twice"),
                ));
            }
            ids.push(id);
        }
        let chunks = positions
            .chunks_exact(4)
            .map(|raw| {
                let mut number = [0u8; 4];
                number.copy_from_slice(raw);
                let number = u32::from_le_bytes(number);
                // `frame_counts` checked every number against the table.
                (number != V2_ZERO)
                    .then(|| ids.get(number as usize).copied())
                    .flatten()
            })
            .collect();
        Ok((
            chunks,
            FrameTable {
                shift: v2.frame_shift,
                chunks: chunks_frames,
            },
        ))
    }
}

/// Format 2: checks the position entries (each all-zero or a distinct
/// chunk number, numbers first used in increasing order, every distinct
/// chunk used, one length per distinct chunk) and returns the number of
/// frames of each distinct chunk.
fn frame_counts(
    positions: &[u8],
    unique: u32,
    image_size: u64,
    chunk_size: ChunkSize,
    frame_shift: u8,
) -> Result<Vec<u32>, IndexError> {
    let chunk_bytes = u64::from(chunk_size.bytes());
    let mut lens: Vec<u64> = Vec::with_capacity(unique as usize);
    for (i, raw) in positions.chunks_exact(4).enumerate() {
        let mut number = [0u8; 4];
        number.copy_from_slice(raw);
        let number = u32::from_le_bytes(number);
        if number == V2_ZERO {
            continue;
        }
        let len = image_size
            .saturating_sub(i as u64 * chunk_bytes)
            .min(chunk_bytes);
        match lens.get(number as usize) {
            Some(&known) if known == len => {}
            Some(&known) => {
                return Err(invalid(
                    "chunks",
                    format!("position {i}: distinct chunk {number} of {known} bytes holds {len}"),
                ))
            }
            None if number as usize == lens.len() && number < unique => lens.push(len),
            None => {
                return Err(invalid(
                    "chunks",
                    format!(
                    "position {i}: distinct chunk {number} out of order ({} seen, {unique} listed)",
                    lens.len()
                ),
                ))
            }
        }
    }
    if lens.len() != unique as usize {
        return Err(invalid(
            "distinct_chunks",
            format!("{unique} listed, {} used", lens.len()),
        ));
    }
    Ok(lens
        .into_iter()
        .map(|len| len.div_ceil(1 << frame_shift) as u32)
        .collect())
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

fn check_frame_shift(shift: u8, chunk_size: ChunkSize) -> Result<(), IndexError> {
    if (chunk::MIN_CHUNK_SHIFT..=chunk_size.shift()).contains(&shift) {
        Ok(())
    } else {
        Err(invalid(
            "frame_shift",
            format!("2^{shift} is not from 4 KiB to the chunk size ({chunk_size})"),
        ))
    }
}

fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + body.len());
    msg.extend_from_slice(domain);
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

    fn u32(&mut self, need: usize) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(self.array(need)?))
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

    fn sample() -> Index {
        Index {
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
            frames: None,
        }
    }

    /// Format 2: 16 KiB chunks of four 4 KiB frames, a repeated chunk, a
    /// zero chunk, and a short last chunk of two frames.
    fn sample_v2() -> Index {
        let a = ChunkId::of_trusted(b"a");
        let b = ChunkId::of_trusted(b"b");
        let c = ChunkId::of_trusted(b"c");
        let frames = |n: u32, len_seed: u32| {
            Arc::new(ChunkFrames::new(
                (0..n).map(|f| 100 + f + len_seed).collect(),
                (0..n).map(|f| [(f + len_seed) as u8; 32]).collect(),
            ))
        };
        Index {
            name: "debian-12.img".into(),
            generation: 9,
            image_size: 4 * 16_384 + 5000,
            chunk_size: ChunkSize::from_shift(14).unwrap(),
            compression: Compression::Zstd,
            chunks: vec![Some(a), None, Some(b), Some(a), Some(c)],
            frames: Some(FrameTable {
                shift: 12,
                chunks: [(a, frames(4, 0)), (b, frames(4, 7)), (c, frames(2, 3))]
                    .into_iter()
                    .collect(),
            }),
        }
    }

    #[test]
    fn v2_round_trip_and_refusals() {
        let index = sample_v2();
        let bytes = index.to_signed_bytes(&key(1)).unwrap();
        let pubkey = key(1).verifying_key();
        let parsed = Index::parse_verified(&bytes, &pubkey).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.version(), 2);
        assert_eq!(parsed.chunk_ref(4).unwrap().frame_count(), 2);
        assert_eq!(parsed.chunk_ref(4).unwrap().frame_len(1), 5000 - 4096);
        assert_eq!(Index::peek_generation(&bytes).unwrap(), 9);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Index::parse_verified(&bad, &pubkey).is_err(), "byte {i}");
        }
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Index::parse_verified(&bytes[..len], &pubkey),
                    Err(IndexError::Truncated { .. })
                ),
                "length {len}"
            );
        }
        // A format-1 signature does not pass as format 2 (domains differ).
        let v1 = Index {
            frames: None,
            ..sample_v2()
        };
        let v1_bytes = v1.to_signed_bytes(&key(1)).unwrap();
        assert_eq!(
            Index::parse_verified(&v1_bytes, &pubkey).unwrap().version(),
            1
        );
    }

    #[test]
    fn v2_signed_but_malformed_tables_are_refused() {
        let pubkey = key(1).verifying_key();
        let bytes = sample_v2().to_signed_bytes(&key(1)).unwrap();
        let body = &bytes[..bytes.len() - SIGNATURE_LEN];
        let resign = |body: &[u8]| Index::sign_body_for_fuzzing(body, &key(1));
        assert!(Index::parse_verified(&resign(body), &pubkey).is_ok());
        let positions = FIXED_HEADER_LEN_V2 + "debian-12.img".len();
        let set = |k: usize, v: u32| {
            let mut b = body.to_vec();
            b[positions + 4 * k..positions + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        // Out of order, past the table, a full chunk's number for the
        // short last chunk, a distinct chunk never used.
        for (bad, what) in [
            (set(0, 1), "out of order"),
            (set(2, 7), "out of order"),
            (set(4, 0), "holds"),
            (set(4, V2_ZERO), "used"),
        ] {
            match Index::parse_verified(&resign(&bad), &pubkey) {
                Err(IndexError::Invalid { reason, .. }) => {
                    assert!(reason.contains(what), "{reason}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // A stored frame of zero bytes, or over the bound.
        let first_frame = positions + 4 * 5 + 20;
        for len in [0u32, 1 << 20] {
            let mut bad = body.to_vec();
            bad[first_frame..first_frame + 4].copy_from_slice(&len.to_le_bytes());
            assert!(matches!(
                Index::parse_verified(&resign(&bad), &pubkey),
                Err(IndexError::Invalid {
                    field: "frames",
                    ..
                })
            ));
        }
        // Frame shift above the chunk shift.
        let mut bad = body.to_vec();
        bad[FIXED_HEADER_LEN - 1] = 15;
        assert!(matches!(
            Index::parse_verified(&resign(&bad), &pubkey),
            Err(IndexError::Invalid {
                field: "frame_shift",
                ..
            })
        ));
        // A table missing a chunk refuses to serialise.
        let mut index = sample_v2();
        if let Some(t) = &mut index.frames {
            t.chunks.clear();
        }
        assert!(index.to_signed_bytes(&key(1)).is_err());
    }

    #[test]
    fn round_trip() {
        let index = sample();
        let bytes = index.to_signed_bytes(&key(1)).unwrap();
        let parsed = Index::parse_verified(&bytes, &key(1).verifying_key()).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.chunk_len(3), 100);
        assert_eq!(parsed.chunk_ref(1), None);
        assert_eq!(parsed.unique_chunks().len(), 2);
        assert_eq!(Index::peek_generation(&bytes).unwrap(), 7);
    }

    #[test]
    fn wrong_key_and_any_flipped_bit_are_refused() {
        let bytes = sample().to_signed_bytes(&key(1)).unwrap();
        assert!(matches!(
            Index::parse_verified(&bytes, &key(2).verifying_key()),
            Err(IndexError::BadSignature)
        ));
        let pubkey = key(1).verifying_key();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Index::parse_verified(&bad, &pubkey).is_err(), "byte {i}");
        }
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let bytes = sample().to_signed_bytes(&key(1)).unwrap();
        let pubkey = key(1).verifying_key();
        for len in 0..bytes.len() {
            match Index::parse_verified(&bytes[..len], &pubkey) {
                Err(IndexError::Truncated { got, .. }) => assert_eq!(got, len as u64),
                other => panic!("length {len}: {other:?}"),
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Index::parse_verified(&long, &pubkey),
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
            Index::parse_verified(&foreign, &pubkey),
            Err(IndexError::BadMagic)
        ));
        let mut version = bytes.clone();
        version[8] = 3;
        assert!(matches!(
            Index::parse_verified(&version, &pubkey),
            Err(IndexError::UnsupportedVersion(3))
        ));
        // A huge image size must be refused from the header, not allocated.
        let mut huge = bytes.clone();
        huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Index::parse_verified(&huge, &pubkey),
            Err(IndexError::Invalid {
                field: "image_size",
                ..
            })
        ));
        let mut shift = bytes;
        shift[11] = 40;
        assert!(matches!(
            Index::parse_verified(&shift, &pubkey),
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
            let _ = Index::parse_verified(&input, &pubkey);
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
