//! The quote file: one self-contained JSON document a verifier needs with the
//! AK's public key and its nonce.
//!
//! ```json
//! {
//!   "format": "circ-quote/2",
//!   "attest": "<hex TPMS_ATTEST, exactly the bytes the TPM signed>",
//!   "signature": "<hex TPMT_SIGNATURE>",
//!   "ak_public": "<hex TPMT_PUBLIC of the attestation key>",
//!   "pcr_values": { "15": "<hex sha256 PCR value>" },
//!   "event_log": "<the event log, verbatim>"
//! }
//! ```
//!
//! `pcr_values` are read right after the quote and are not signed: a verifier
//! trusts them only when they hash to the quoted digest, and then uses them to
//! say which PCR a log fails to replay. `ak_public` is not signed either: the
//! verifier checks that it holds the very key it was given, and what the
//! TPM says about that key (restricted, fixedTPM, ...).

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::pcr::PcrIndex;

pub const FORMAT: &str = "circ-quote/2";
/// Upper bound on a quote file, so a verifier never reads an unbounded document.
pub const MAX_QUOTE_FILE: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteFile {
    pub format: String,
    #[serde(with = "hex_bytes")]
    pub attest: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// The attestation key's `TPMT_PUBLIC`.
    #[serde(with = "hex_bytes")]
    pub ak_public: Vec<u8>,
    #[serde(default)]
    pub pcr_values: BTreeMap<u8, String>,
    pub event_log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QuoteFileError {
    #[error("not a quote file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported quote format `{0}` (this verifier reads {FORMAT})")]
    Format(String),
    #[error("the quote file is larger than any quote file ({MAX_QUOTE_FILE} bytes)")]
    TooLarge,
    #[error("cannot read the quote file")]
    Io(#[source] std::io::Error),
}

/// Reads a quote file from `r`, refusing more than [`MAX_QUOTE_FILE`] bytes
/// without reading them.
pub fn read_bounded(r: impl Read) -> Result<Vec<u8>, QuoteFileError> {
    let mut bytes = Vec::new();
    r.take(MAX_QUOTE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(QuoteFileError::Io)?;
    if bytes.len() as u64 > MAX_QUOTE_FILE {
        return Err(QuoteFileError::TooLarge);
    }
    Ok(bytes)
}

impl QuoteFile {
    /// Parses a quote file; more than [`MAX_QUOTE_FILE`] bytes are refused.
    pub fn from_json(bytes: &[u8]) -> Result<Self, QuoteFileError> {
        if bytes.len() as u64 > MAX_QUOTE_FILE {
            return Err(QuoteFileError::TooLarge);
        }
        let q: QuoteFile = serde_json::from_slice(bytes)?;
        if q.format != FORMAT {
            return Err(QuoteFileError::Format(q.format.chars().take(40).collect()));
        }
        Ok(q)
    }

    pub fn to_json(&self) -> Result<String, QuoteFileError> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// What a SHA-256 quote's `pcrDigest` is: the hash of the selected values, in
/// PCR order.
pub fn pcr_digest<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().to_vec()
}

/// Parses the unsigned `pcr_values` map; invalid entries make it unusable (None).
pub fn parse_pcr_values(map: &BTreeMap<u8, String>) -> Option<BTreeMap<PcrIndex, Vec<u8>>> {
    map.iter()
        .map(|(k, v)| Some((PcrIndex::new(*k)?, hex::decode(v).ok()?)))
        .collect()
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_files_are_refused_without_being_read_whole() {
        // A reader that would go on forever: only the bound is read.
        let endless = std::io::repeat(b' ');
        assert!(matches!(
            read_bounded(endless),
            Err(QuoteFileError::TooLarge)
        ));
        let big = vec![b' '; MAX_QUOTE_FILE as usize + 1];
        assert!(matches!(
            QuoteFile::from_json(&big),
            Err(QuoteFileError::TooLarge)
        ));
        assert_eq!(read_bounded(&b"{}"[..]).unwrap(), b"{}");
    }
}
