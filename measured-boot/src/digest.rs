//! Digests as the log and the TPM carry them.

use std::fmt;
use std::io::Read;

use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// The PCR banks Circular knows. SHA-256 is the one every record carries and every
/// quote covers; SHA-1 may be recorded for TPMs that only have a SHA-1 bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    /// The TPM_ALG_ID of this algorithm (TPM 2.0 Part 2, table 9).
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
        }
    }

    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }

    pub fn from_tpm_alg_id(id: u16) -> Option<Self> {
        match id {
            0x0004 => Some(HashAlg::Sha1),
            0x000B => Some(HashAlg::Sha256),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
        }
    }

    /// `H(old || new)`: what TPM2_PCR_Extend does to one bank.
    pub fn extend(self, old: &[u8], measurement: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                let mut h = Sha1::new();
                h.update(old);
                h.update(measurement);
                h.finalize().to_vec()
            }
            HashAlg::Sha256 => {
                let mut h = Sha256::new();
                h.update(old);
                h.update(measurement);
                h.finalize().to_vec()
            }
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A SHA-256 digest; printed as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// The digests of one measured object, one per bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub sha256: Sha256Digest,
    pub sha1: Option<[u8; 20]>,
}

impl Digests {
    /// Hashes a stream (a kernel, an index) in one pass for every bank.
    pub fn of_reader(mut r: impl Read, with_sha1: bool) -> std::io::Result<Self> {
        let mut sha256 = Sha256::new();
        let mut sha1 = with_sha1.then(Sha1::new);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            sha256.update(chunk);
            if let Some(h) = sha1.as_mut() {
                h.update(chunk);
            }
        }
        Ok(Self {
            sha256: Sha256Digest(sha256.finalize().into()),
            sha1: sha1.map(|h| h.finalize().into()),
        })
    }

    pub fn of_bytes(data: &[u8], with_sha1: bool) -> Self {
        Self {
            sha256: Sha256Digest::of(data),
            sha1: with_sha1.then(|| Sha1::digest(data).into()),
        }
    }

    /// The digest for one bank, if this measurement has it.
    pub fn get(&self, alg: HashAlg) -> Option<&[u8]> {
        match alg {
            HashAlg::Sha256 => Some(&self.sha256.0),
            HashAlg::Sha1 => self.sha1.as_ref().map(|d| d.as_slice()),
        }
    }
}
