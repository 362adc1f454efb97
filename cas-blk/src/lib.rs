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
pub mod config;
mod hex;
pub mod index;
pub mod keys;
pub mod layout;
pub mod nbd;
pub mod pack;
pub mod reader;
pub mod rollback;
pub mod serve;
pub mod stats;
pub mod store;

pub use chunk::{ChunkId, ChunkRef, ChunkSize, Compression};
pub use index::IndexV1;
pub use reader::ImageReader;
pub use store::{ChunkStore, VerifyingStore};
