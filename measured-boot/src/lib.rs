//! Measured boot and attestation for Circular, the parts that need no TPM.
//!
//! * [`eventlog`]: the append-only, crash-safe measurement log and its parser;
//! * [`replay`]: recomputing PCR values from a log;
//! * [`xlcfg`]: which files an xl domain configuration makes us measure;
//! * [`measurements`]: hashing them (and the cas-blk indexes the caller fetched);
//! * [`wire`]: the few TPM 2.0 structures a verifier must read (`TPMS_ATTEST`, `TPMT_SIGNATURE`);
//! * [`quote`], [`akpub`], [`policy`], [`verify`]: the self-contained quote file,
//!   the attestation key's public half and public area, the reference policy
//!   and the verifier.
//!
//! Everything here runs anywhere (a verifier has no TPM); the TPM side is `circ-tpm`.
//! The format of every file is described in `docs/measured-boot.md`.
#![forbid(unsafe_code)]

pub mod akpub;
pub mod digest;
pub mod eventlog;
pub mod measurements;
pub mod pcr;
pub mod policy;
pub mod quote;
pub mod replay;
pub mod verify;
pub mod wire;
pub mod xlcfg;

pub use digest::{Digests, HashAlg, Sha256Digest};
pub use eventlog::{Event, EventKind, EventLog, LogError, Measurement};
pub use pcr::{PcrIndex, PcrSet};
