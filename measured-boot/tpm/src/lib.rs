//! The TPM side of Circular's measured boot: a small [`Tpm`] trait, its
//! implementation over tss-esapi ([`EsapiTpm`], which links Debian's libtss2),
//! the file formats of the keys and secrets it hands out, the two operations
//! that tie the TPM to the event log ([`measure::record`], [`attest::quote`]),
//! where the commands find the TPM ([`config`]), a launcher for a private
//! swtpm ([`swtpm::Swtpm`]) for tests and benches, and with the `fake`
//! feature an in-memory [`FakeTpm`] for tests of code built on the trait.
#![forbid(unsafe_code)]

pub mod attest;
pub mod blob;
pub mod config;
mod esapi;
#[cfg(feature = "fake")]
pub mod fake;
pub mod measure;
pub mod swtpm;

use std::collections::BTreeMap;
use std::fmt;

use circ_measured_boot::{Digests, PcrIndex, PcrSet};
use zeroize::Zeroizing;

pub use blob::{AkBlob, BindKeyBlob, SealedBlob};
pub use esapi::EsapiTpm;
#[cfg(feature = "fake")]
pub use fake::FakeTpm;

/// What Circular asks of a TPM. Every method leaves no transient object or
/// session loaded when it returns, successful or not: a TPM without a resource
/// manager (swtpm, `/dev/tpm0`) holds only three or so.
pub trait Tpm {
    /// Extends one PCR in every bank `digests` has a value for.
    fn extend(&mut self, pcr: PcrIndex, digests: &Digests) -> Result<(), TpmError>;
    /// Reads SHA-256 PCR values.
    fn read_pcrs(&mut self, pcrs: &PcrSet) -> Result<BTreeMap<PcrIndex, Vec<u8>>, TpmError>;
    /// Creates a new attestation key (see [`AkBlob`]).
    fn create_ak(&mut self) -> Result<AkBlob, TpmError>;
    /// Quotes the SHA-256 bank of `pcrs` with `ak`, over `nonce` (at most 64 bytes).
    fn quote(&mut self, ak: &AkBlob, nonce: &[u8], pcrs: &PcrSet) -> Result<RawQuote, TpmError>;
    /// Seals `secret` (at most 128 bytes) to the current SHA-256 values of `pcrs`.
    fn seal(&mut self, secret: &Secret, pcrs: &PcrSet) -> Result<SealedBlob, TpmError>;
    /// Unseals; fails with [`TpmError::PcrPolicy`] when the PCRs changed.
    fn unseal(&mut self, blob: &SealedBlob) -> Result<Secret, TpmError>;
    /// Creates a new bind key (see [`BindKeyBlob`]).
    fn create_bind_key(&mut self) -> Result<BindKeyBlob, TpmError> {
        Err(TpmError::Unsupported("bind keys"))
    }
    /// TPM2_ECDH_ZGen: the x coordinate (32 bytes) of `key`'s private
    /// scalar times `point` (SEC1 uncompressed, 65 bytes): the ECDH shared
    /// secret, computed inside the TPM.
    fn ecdh_zgen(&mut self, key: &BindKeyBlob, point: &[u8]) -> Result<Secret, TpmError> {
        let _ = (key, point);
        Err(TpmError::Unsupported("ECDH"))
    }
    /// Flushes every loaded transient object, e.g. ones a killed process left
    /// behind. Returns how many were flushed.
    fn flush_transients(&mut self) -> Result<usize, TpmError>;
}

/// A quote as the TPM returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawQuote {
    /// Marshalled `TPMS_ATTEST`: the bytes that were signed.
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
}

/// Secret bytes: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub const MAX_LEN: usize = 128;

    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([REDACTED; {} bytes])", self.0.len())
    }
}

/// Refuses `what` of `len` bytes when more than `max`, as the TPM would.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), TpmError> {
    if len > max {
        return Err(TpmError::TooLong { what, len, max });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(
        "`{0}` is not a TCTI (examples: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`)"
    )]
    BadTcti(String),
    #[error("cannot open the TPM through `{tcti}`")]
    Connect {
        tcti: String,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("TPM command {op} failed")]
    Command {
        op: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("the PCRs no longer have the values the secret was sealed to")]
    PcrPolicy,
    #[error("{what} is too long ({len} bytes, at most {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("this TPM implementation has no {0}")]
    Unsupported(&'static str),
    #[error("not a P-256 point (SEC1 uncompressed, 65 bytes)")]
    BadPoint,
    #[error("the TPM returned something unexpected: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Blob(#[from] blob::BlobError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new(b"hunter2".to_vec());
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret([REDACTED; 7 bytes])");
        assert!(!shown.contains("hunter2"));
    }
}
