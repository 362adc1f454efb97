//! CTS1: the sealed-file format of trusted system calls (issue 11). Xen
//! seals what a trusted process writes to its sealed descriptors and opens
//! what it reads, with the key dom0 attached to that process
//! (`circ-hv`'s `TsysKey`); dom0 seals programs in this format when it
//! deploys them. docs/tsys.md ("CTS1") is the specification; this crate is
//! dom0's implementation of it, pure Rust.
//!
//! A sealed file is a sequence of stored blocks of exactly [`STORED_LEN`]
//! bytes; block `i` holds plaintext bytes `[i*4096, i*4096+len)`, only the
//! last block may be short, and an empty file has no blocks:
//!
//! ```text
//! 0..4     magic "CTS1"          4..8   len, u32 LE, 1..=4096
//! 8..16    file_id, u64 LE       16..28 nonce (12 bytes)
//! 28..32   zero                  32..4128 ChaCha20 ciphertext of the block,
//! 4128..4144 Poly1305 tag                 zero-padded to 4096 bytes
//! AAD = bytes 0..32 || i as u64 LE (40 bytes); RFC 8439 ChaCha20-Poly1305.
//! ```
//!
//! What the format does not catch by itself: a whole file of an older
//! version (same key, same `file_id`), an older version of one block at the
//! same position, and trailing whole blocks cut off where the block before
//! them is full. [`open_file_exact`] catches the last when the caller knows
//! the length (a package manifest records it).
#![forbid(unsafe_code)]

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use zeroize::Zeroizing;

/// Plaintext bytes a block holds at most.
pub const BLOCK_LEN: usize = 4096;
/// Bytes of one stored block.
pub const STORED_LEN: usize = 4144;
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;
pub const MAGIC: &[u8; 4] = b"CTS1";
const HEADER_LEN: usize = 32;
const TAG_AT: usize = HEADER_LEN + BLOCK_LEN;

/// Why a stored block or file was refused. Each check has its own variant,
/// so Xen's errno table and dom0's messages can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed file of {len} bytes is not a whole number of {STORED_LEN}-byte blocks")]
    Truncated { len: u64 },
    #[error("block {block}: bad magic (not a CTS1 block)")]
    Magic { block: u64 },
    #[error("block {block}: reserved bytes 28..32 are not zero")]
    Reserved { block: u64 },
    #[error("block {block}: length {len} out of range 1..=4096")]
    Len { block: u64, len: u32 },
    #[error("block {block}: belongs to file {found:#x}, not {expected:#x}")]
    FileId {
        block: u64,
        expected: u64,
        found: u64,
    },
    #[error("block {block}: authentication failed (tampered, moved, or another key)")]
    Tag { block: u64 },
    #[error("block {block}: short block ({len} bytes) is not the last")]
    ShortNotLast { block: u64, len: u32 },
    #[error("block {block}: padding after the data is not zero")]
    Padding { block: u64 },
    #[error("sealed file holds {found} bytes, {expected} expected (blocks cut off)")]
    LengthMismatch { expected: u64, found: u64 },
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a block holds 1..=4096 bytes, not {0}")]
    BlockLen(usize),
    #[error("cannot draw a nonce")]
    Random(#[source] getrandom::Error),
}

fn aad(header: &[u8], index: u64) -> [u8; HEADER_LEN + 8] {
    let mut aad = [0u8; HEADER_LEN + 8];
    aad[..HEADER_LEN].copy_from_slice(&header[..HEADER_LEN]);
    aad[HEADER_LEN..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// RFC 8439 AEAD encryption in place; returns the tag. The one place the
/// cipher is used for sealing, so the RFC's test vector checks it.
fn aead_seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Tag {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    // Only fails past 2^38 bytes; a block is 4 KiB.
    cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .unwrap_or_else(|_| unreachable!("a block is far below the AEAD's limit"))
}

fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> bool {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
        .is_ok()
}

/// Seals one block: `plain` (1..=4096 bytes) as block `index` of file
/// `file_id`, with `nonce` (which must never repeat under one key).
pub fn seal_block(
    key: &[u8; KEY_LEN],
    file_id: u64,
    index: u64,
    nonce: &[u8; NONCE_LEN],
    plain: &[u8],
) -> Result<Vec<u8>, SealError> {
    if plain.is_empty() || plain.len() > BLOCK_LEN {
        return Err(SealError::BlockLen(plain.len()));
    }
    let mut out = vec![0u8; STORED_LEN];
    out[0..4].copy_from_slice(MAGIC);
    // In range: checked above.
    out[4..8].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    out[8..16].copy_from_slice(&file_id.to_le_bytes());
    out[16..28].copy_from_slice(nonce);
    let aad = aad(&out, index);
    out[HEADER_LEN..HEADER_LEN + plain.len()].copy_from_slice(plain);
    let tag = aead_seal(key, nonce, &aad, &mut out[HEADER_LEN..TAG_AT]);
    out[TAG_AT..].copy_from_slice(&tag);
    Ok(out)
}

/// A random nonce from the kernel.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;
    Ok(nonce)
}

/// Opens stored block `index` of file `file_id`; returns its plaintext
/// (`len` bytes). Whether a short block is allowed here (only as the last)
/// is the caller's to know: [`open_file`] checks it.
pub fn open_block(
    key: &[u8; KEY_LEN],
    file_id: u64,
    index: u64,
    stored: &[u8; STORED_LEN],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let block = index;
    if &stored[0..4] != MAGIC {
        return Err(OpenError::Magic { block });
    }
    if stored[28..32] != [0; 4] {
        return Err(OpenError::Reserved { block });
    }
    let len = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]);
    if len == 0 || len as usize > BLOCK_LEN {
        return Err(OpenError::Len { block, len });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&stored[8..16]);
    let found = u64::from_le_bytes(id);
    if found != file_id {
        return Err(OpenError::FileId {
            block,
            expected: file_id,
            found,
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&stored[16..28]);
    let aad = aad(stored, index);
    let mut buf = Zeroizing::new(stored[HEADER_LEN..TAG_AT].to_vec());
    if !aead_open(key, &nonce, &aad, &mut buf, &stored[TAG_AT..]) {
        return Err(OpenError::Tag { block });
    }
    // Authenticated, so only the key's holder could have put bytes here;
    // refused all the same, as the format says the padding is zero.
    if buf[len as usize..].iter().any(|&b| b != 0) {
        return Err(OpenError::Padding { block });
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// Seals a whole file with random nonces.
pub fn seal_file(key: &[u8; KEY_LEN], file_id: u64, plain: &[u8]) -> Result<Vec<u8>, SealError> {
    seal_file_with(key, file_id, plain, |_| random_nonce())
}

/// Seals a whole file, drawing block `i`'s nonce from `nonce(i)`.
pub fn seal_file_with(
    key: &[u8; KEY_LEN],
    file_id: u64,
    plain: &[u8],
    mut nonce: impl FnMut(u64) -> Result<[u8; NONCE_LEN], SealError>,
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
    for (i, chunk) in plain.chunks(BLOCK_LEN).enumerate() {
        let i = i as u64;
        out.extend_from_slice(&seal_block(key, file_id, i, &nonce(i)?, chunk)?);
    }
    Ok(out)
}

/// Bytes a sealed file of `plain_len` plaintext bytes takes.
pub fn sealed_len(plain_len: u64) -> u64 {
    plain_len.div_ceil(BLOCK_LEN as u64) * STORED_LEN as u64
}

/// Opens a whole sealed file of `file_id`: every block checked, short
/// blocks only last.
pub fn open_file(
    key: &[u8; KEY_LEN],
    file_id: u64,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() % STORED_LEN != 0 {
        return Err(OpenError::Truncated {
            len: sealed.len() as u64,
        });
    }
    let blocks = sealed.len() / STORED_LEN;
    let mut out = Zeroizing::new(Vec::with_capacity(blocks * BLOCK_LEN));
    for (i, stored) in sealed.chunks_exact(STORED_LEN).enumerate() {
        let stored: &[u8; STORED_LEN] = stored
            .try_into()
            .unwrap_or_else(|_| unreachable!("chunks_exact"));
        let plain = open_block(key, file_id, i as u64, stored)?;
        if plain.len() < BLOCK_LEN && i + 1 != blocks {
            return Err(OpenError::ShortNotLast {
                block: i as u64,
                len: plain.len() as u32,
            });
        }
        out.extend_from_slice(&plain);
    }
    Ok(out)
}

/// [`open_file`], and the plaintext must be `plain_len` bytes: catches
/// trailing blocks cut off, which the format alone cannot.
pub fn open_file_exact(
    key: &[u8; KEY_LEN],
    file_id: u64,
    sealed: &[u8],
    plain_len: u64,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() as u64 != sealed_len(plain_len) {
        return Err(OpenError::LengthMismatch {
            expected: plain_len,
            found: sealed.len() as u64 / STORED_LEN as u64 * BLOCK_LEN as u64,
        });
    }
    let plain = open_file(key, file_id, sealed)?;
    if plain.len() as u64 != plain_len {
        return Err(OpenError::LengthMismatch {
            expected: plain_len,
            found: plain.len() as u64,
        });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests;
