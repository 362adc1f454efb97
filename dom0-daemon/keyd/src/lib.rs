//! circ-keyd: the key side of trusted system calls (issue 11, docs/tsys.md
//! part 2). Each application's key k1 (a [`TsysKey`]) exists in dom0 only
//!
//! - bound to a host's TPM bind key ([`bind`]: ECDH with the TPM's key, so
//!   only that TPM can recover k1), in a package as deployed or migrated;
//! - sealed to the host's PCRs ([`sealed`]: TPM2 PolicyPCR, with the PCR
//!   values recorded beside the blob to name the one that changed);
//! - in the clear for the moment between unbinding/unsealing and handing it
//!   to Xen ([`load`]) or rebinding it, in zeroizing buffers.
//!
//! Packages ([`package`]): a manifest (TOML) and the program sealed in CTS1
//! (`circ-tsys-seal`). `circ tsys deploy|rollout|rollin|migrate` and the
//! `circ-keyd` boot-time loader are thin layers over this library.
#![forbid(unsafe_code)]

pub mod bind;
pub mod config;
pub mod load;
pub mod migrate;
pub mod package;
pub mod sealed;

pub use circ_hv::TsysKey;

use circ_measured_boot::PcrIndex;

/// A PCR whose value differs from the one k1 was sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrChange {
    pub pcr: PcrIndex,
    pub sealed: Vec<u8>,
    pub now: Vec<u8>,
}

impl std::fmt::Display for PcrChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PCR {} (sealed to {}, now {})",
            self.pcr,
            hex::encode(&self.sealed),
            hex::encode(&self.now)
        )
    }
}

fn list_changes(changes: &[PcrChange]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum KeydError {
    #[error("refused: the host's measurements changed since k1 was sealed: {}", list_changes(.0))]
    PcrChanged(Vec<PcrChange>),
    #[error(
        "refused: the TPM's PCR policy does not hold, yet PCRs {0} have the recorded values \
         (the record beside the blob was edited, or the blob is another host's)"
    )]
    PolicyWithoutChange(String),
    #[error("the package is bound to host key {bound}, not this host's ({ours})")]
    OtherHost { bound: String, ours: String },
    #[error("the bound key does not open with this host's TPM key (altered or another package's)")]
    Unbind,
    #[error("the package holds no {0} key (see `circ tsys` verbs)")]
    KeyForm(&'static str),
    #[error("a sealed k1 of {0} bytes, not 32")]
    KeyLen(usize),
    #[error("not a P-256 host key: {0}")]
    HostKey(String),
    #[error("refused: the destination's quote does not verify: {0}")]
    DestinationQuote(String),
    #[error("package: {0}")]
    Package(String),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw random bytes")]
    Random(#[source] getrandom::Error),
    #[error("cannot seal the program")]
    Seal(#[from] circ_tsys_seal::SealError),
    #[error(transparent)]
    Tpm(#[from] circ_tpm::TpmError),
    #[error(transparent)]
    Hv(#[from] circ_hv::HvError),
}

impl KeydError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
