//! Reference policy: which digests each measured file and each domain may have.
//!
//! ```toml
//! version = 1
//!
//! [files."/var/lib/xen/images/web1/vmlinuz"]
//! sha256 = ["3f1c...", "9ab0..."]
//!
//! [domains.web1]
//! sha256 = ["3f1c...", "..."]
//! ```
//!
//! An event is checked against every entry that applies to it: the entry for
//! its path and the entry for its domain. It is allowed when at least one entry
//! applies and every applicable entry lists its SHA-256 digest. Anything the
//! policy does not mention is refused: a verifier that wants to know about a
//! new file must be told about it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::eventlog::Event;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u32,
    #[serde(default)]
    pub files: BTreeMap<String, Allowed>,
    #[serde(default)]
    pub domains: BTreeMap<String, Allowed>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    pub sha256: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid TOML for this format: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("policy version {0} is not supported (expected 1)")]
    Version(u32),
    #[error("policy entry {entry}: `{digest}` is not a SHA-256 digest in hex")]
    BadDigest { entry: String, digest: String },
    #[error("cannot write the policy: {0}")]
    Write(#[from] toml::ser::Error),
}

/// Why an event is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Neither its path nor its domain is in the policy.
    Unknown,
    /// The digest is not allowed for this file.
    FileDigest { path: String, digest: Sha256Digest },
    /// The digest is not allowed for this domain.
    DomainDigest {
        domain: String,
        digest: Sha256Digest,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unknown => f.write_str("neither its file nor its domain is in the policy"),
            Refusal::FileDigest { path, digest } => {
                write!(f, "digest {digest} not allowed for {path}")
            }
            Refusal::DomainDigest { domain, digest } => {
                write!(f, "digest {digest} not allowed for domain {domain}")
            }
        }
    }
}

impl Policy {
    pub fn from_toml(s: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(s)?;
        if p.version != 1 {
            return Err(PolicyError::Version(p.version));
        }
        for (entry, allowed) in p.files.iter().chain(p.domains.iter()) {
            for d in &allowed.sha256 {
                if Sha256Digest::from_hex(d).is_none() {
                    return Err(PolicyError::BadDigest {
                        entry: entry.clone(),
                        digest: d.chars().take(80).collect(),
                    });
                }
            }
        }
        Ok(p)
    }

    pub fn to_toml(&self) -> Result<String, PolicyError> {
        Ok(toml::to_string(self)?)
    }

    pub fn new() -> Self {
        Policy {
            version: 1,
            ..Default::default()
        }
    }

    pub fn allow_file(&mut self, path: &str, digest: Sha256Digest) {
        self.files
            .entry(path.to_owned())
            .or_default()
            .sha256
            .insert(digest.to_hex());
    }

    pub fn allow_domain(&mut self, domain: &str, digest: Sha256Digest) {
        self.domains
            .entry(domain.to_owned())
            .or_default()
            .sha256
            .insert(digest.to_hex());
    }

    pub fn check(&self, event: &Event) -> Result<(), Refusal> {
        let digest = event.m.digests.sha256;
        let listed = |a: &Allowed| {
            a.sha256
                .iter()
                .any(|d| Sha256Digest::from_hex(d) == Some(digest))
        };
        let by_file = event
            .m
            .path
            .as_ref()
            .and_then(|p| Some((p, self.files.get(p)?)));
        let by_domain = event
            .m
            .domain
            .as_ref()
            .and_then(|d| Some((d, self.domains.get(d)?)));
        if by_file.is_none() && by_domain.is_none() {
            return Err(Refusal::Unknown);
        }
        if let Some((path, allowed)) = by_file {
            if !listed(allowed) {
                return Err(Refusal::FileDigest {
                    path: path.clone(),
                    digest,
                });
            }
        }
        if let Some((domain, allowed)) = by_domain {
            if !listed(allowed) {
                return Err(Refusal::DomainDigest {
                    domain: domain.clone(),
                    digest,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digests;
    use crate::eventlog::{EventKind, Measurement};
    use crate::pcr::DOMAIN_PCR;

    fn event(path: &str, domain: Option<&str>, data: &[u8]) -> Event {
        Event {
            seq: 0,
            m: Measurement {
                pcr: DOMAIN_PCR,
                kind: EventKind::DomainKernel,
                digests: Digests::of_bytes(data, false),
                domain: domain.map(str::to_owned),
                path: Some(path.to_owned()),
                description: None,
            },
        }
    }

    #[test]
    fn every_applicable_entry_must_allow() {
        let mut p = Policy::new();
        p.allow_file("/k", Sha256Digest::of(b"good"));
        p.allow_domain("web1", Sha256Digest::of(b"other"));
        let p = Policy::from_toml(&p.to_toml().unwrap()).unwrap();
        assert_eq!(p.check(&event("/k", None, b"good")), Ok(()));
        assert!(matches!(
            p.check(&event("/k", None, b"bad")),
            Err(Refusal::FileDigest { ref path, .. }) if path == "/k"
        ));
        assert!(matches!(
            p.check(&event("/k", Some("web1"), b"good")),
            Err(Refusal::DomainDigest { .. })
        ));
        assert_eq!(
            p.check(&event("/x", Some("web2"), b"good")),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(matches!(
            Policy::from_toml("version = 2"),
            Err(PolicyError::Version(2))
        ));
        assert!(matches!(
            Policy::from_toml("version = 1\n[files.\"/a\"]\nsha256 = [\"zz\"]\n"),
            Err(PolicyError::BadDigest { .. })
        ));
        assert!(Policy::from_toml("version = 1\nbogus = 1\n").is_err());
    }
}
