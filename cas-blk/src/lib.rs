//! cas-blk: disk images as content-addressed chunks over plain HTTP.
//!
//! An image is cut into fixed-size chunks, each named by the SHA-1 of its
//! content and stored compressed; an ed25519-signed index lists them with a
//! generation number that clients never let go backwards. Chunks come from
//! layered stores (`VerifyingStore<CacheStore<HttpStore>>`) and are verified
//! with collision-detecting SHA-1 before use. See docs/cas-blk.md.
#![forbid(unsafe_code)]

pub mod chunk;
pub mod client;
pub mod commit;
pub mod config;
pub mod disk;
mod hex;
pub mod index;
pub mod keys;
pub mod layout;
pub mod nbd;
pub mod overlay;
pub mod pack;
pub mod pin;
pub mod prefetch;
pub mod reader;
pub mod rollback;
pub mod serve;
pub mod session;
pub mod stats;
pub mod store;

pub use chunk::{ChunkId, ChunkRef, ChunkSize, Compression};
pub use disk::{BlockDevice, CowDisk, DiskError, DiskErrorKind};
pub use index::Index;
pub use reader::ImageReader;
pub use store::{ChunkStore, VerifyingStore};

/// An error and its causes on one line, as `anyhow`'s `{:#}` prints them:
/// for logs and reports that must say why (a mirror's HTTP error inside a
/// store error, say) without a multi-line chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
