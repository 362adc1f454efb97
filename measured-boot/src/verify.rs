//! Quote verification: pure Rust, no TPM. Order matters: nothing in the quote is
//! believed before its signature checks, and no event is judged before the log
//! as a whole is shown to be what the TPM measured.

use std::collections::BTreeMap;
use std::fmt;

use crate::akpub::{AkError, AkPublic};
use crate::digest::HashAlg;
use crate::eventlog::{self, Event, LogError};
use crate::pcr::PcrIndex;
use crate::policy::{Policy, Refusal};
use crate::quote::{self, QuoteFile, QuoteFileError};
use crate::replay::Replay;
use crate::wire::{self, QuoteInfo, WireError};

/// The first reason a quote is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    QuoteFile(#[from] QuoteFileError),
    #[error("the attestation key is not acceptable")]
    AkPublicArea(#[source] AkError),
    #[error("the quote's signature structure is malformed")]
    MalformedSignature(#[source] WireError),
    #[error("bad signature")]
    Signature(#[source] AkError),
    #[error("the signed attestation is not a usable quote")]
    MalformedAttest(#[source] WireError),
    #[error("wrong nonce: the quote answers {found}, not {expected} (a replayed or someone else's quote)")]
    WrongNonce { expected: String, found: String },
    #[error("the embedded event log cannot be used")]
    Log(#[source] LogError),
    #[error("the log extends PCR {0}, which the quote does not cover in the sha256 bank")]
    PcrNotQuoted(PcrIndex),
    #[error("the quote covers {alg} PCR {pcr}, for which the log has no {alg} digests")]
    BankNotInLog { alg: HashAlg, pcr: PcrIndex },
    #[error("the event log does not replay to the quoted PCR digest: {0}")]
    DoesNotReplay(String),
    #[error("{count} event(s) refused by the policy; first: event {first}: {refusal}")]
    Policy {
        count: usize,
        first: String,
        refusal: Refusal,
    },
}

/// How one event fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Part of a log the TPM vouches for, and allowed by the policy.
    Allowed,
    /// Part of a log the TPM vouches for; no policy was given.
    Measured,
    Refused(Refusal),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed => f.write_str("ok"),
            Verdict::Measured => f.write_str("measured (no policy)"),
            Verdict::Refused(r) => write!(f, "REFUSED: {r}"),
        }
    }
}

/// [`verify`] of a file, read with the size bound. Failing to read it (or
/// finding it too large) is an error, not a verdict.
pub fn verify_file(
    path: &std::path::Path,
    ak: &AkPublic,
    nonce: &[u8],
    policy: Option<&Policy>,
) -> Result<Outcome, QuoteFileError> {
    let file = std::fs::File::open(path).map_err(QuoteFileError::Io)?;
    let bytes = quote::read_bounded(file)?;
    Ok(verify(&bytes, ak, nonce, policy))
}

/// Everything verification learned, also when it failed.
#[derive(Debug)]
pub struct Outcome {
    /// The signed quote, once its signature checked.
    pub quote: Option<QuoteInfo>,
    /// The AK's `TPMA_OBJECT` attributes, once its public area checked.
    pub ak_attributes: Option<u32>,
    /// Each event and its verdict, once the log replayed.
    pub events: Vec<(Event, Verdict)>,
    pub result: Result<(), Failure>,
}

/// Verifies a quote file (its bytes; more than
/// [`MAX_QUOTE_FILE`](crate::quote::MAX_QUOTE_FILE) are refused) against the
/// AK, the nonce the verifier chose, and optionally a policy.
pub fn verify(quote_file: &[u8], ak: &AkPublic, nonce: &[u8], policy: Option<&Policy>) -> Outcome {
    let mut outcome = Outcome {
        quote: None,
        ak_attributes: None,
        events: Vec::new(),
        result: Ok(()),
    };
    outcome.result = verify_into(&mut outcome, quote_file, ak, nonce, policy);
    outcome
}

fn verify_into(
    out: &mut Outcome,
    quote_file: &[u8],
    ak: &AkPublic,
    nonce: &[u8],
    policy: Option<&Policy>,
) -> Result<(), Failure> {
    let file = QuoteFile::from_json(quote_file)?;
    let sig = wire::parse_signature(&file.signature).map_err(Failure::MalformedSignature)?;
    ak.verify(&file.attest, &sig).map_err(Failure::Signature)?;
    // Signed by the key the verifier was given; is that key an AK?
    let area = ak
        .check_public_area(&file.ak_public)
        .map_err(Failure::AkPublicArea)?;
    out.ak_attributes = Some(area.attributes);
    let info = wire::parse_quote_attest(&file.attest).map_err(Failure::MalformedAttest)?;
    out.quote = Some(info.clone());
    if info.extra_data != nonce {
        return Err(Failure::WrongNonce {
            expected: hex::encode(nonce),
            found: hex::encode(&info.extra_data),
        });
    }

    let events = eventlog::parse(file.event_log.as_bytes()).map_err(Failure::Log)?;
    let replay = Replay::of(&events);
    check_replay(&info, &replay, &events, &file)?;

    let mut refused = Vec::new();
    for e in events {
        let verdict = match policy.map(|p| p.check(&e)) {
            None => Verdict::Measured,
            Some(Ok(())) => Verdict::Allowed,
            Some(Err(r)) => {
                refused.push((e.to_string(), r.clone()));
                Verdict::Refused(r)
            }
        };
        out.events.push((e, verdict));
    }
    match refused.first() {
        None => Ok(()),
        Some((first, refusal)) => Err(Failure::Policy {
            count: refused.len(),
            first: first.clone(),
            refusal: refusal.clone(),
        }),
    }
}

fn check_replay(
    info: &QuoteInfo,
    replay: &Replay,
    events: &[Event],
    file: &QuoteFile,
) -> Result<(), Failure> {
    let sha256_quoted = info
        .selection
        .iter()
        .filter(|(alg, _)| *alg == HashAlg::Sha256)
        .flat_map(|(_, set)| set.iter())
        .collect::<Vec<_>>();
    if let Some(pcr) = replay.pcrs().iter().find(|p| !sha256_quoted.contains(p)) {
        return Err(Failure::PcrNotQuoted(pcr));
    }
    let mut expected = Vec::new();
    for (alg, set) in &info.selection {
        for pcr in set.iter() {
            let value = replay
                .value(*alg, pcr)
                .ok_or(Failure::BankNotInLog { alg: *alg, pcr })?;
            expected.push(value);
        }
    }
    if quote::pcr_digest(expected.iter().map(Vec::as_slice)) == info.pcr_digest {
        return Ok(());
    }
    Err(Failure::DoesNotReplay(explain_mismatch(
        info, replay, events, file,
    )))
}

/// Says which PCR differs, if the quote file's unsigned PCR values are the
/// ones the TPM signed (they hash to the quoted digest); otherwise says only
/// that the digests differ.
fn explain_mismatch(
    info: &QuoteInfo,
    replay: &Replay,
    events: &[Event],
    file: &QuoteFile,
) -> String {
    let generic = "the log is not what the TPM measured (edited, truncated, or from another boot)";
    let [(HashAlg::Sha256, set)] = info.selection.as_slice() else {
        return generic.into();
    };
    let Some(actual) = quote::parse_pcr_values(&file.pcr_values) else {
        return generic.into();
    };
    let ordered: Option<Vec<&Vec<u8>>> = set.iter().map(|p| actual.get(&p)).collect();
    let authentic = ordered
        .map(|vals| quote::pcr_digest(vals.into_iter().map(Vec::as_slice)) == info.pcr_digest)
        .unwrap_or(false);
    if !authentic {
        return generic.into();
    }
    let mut parts = Vec::new();
    for pcr in set.iter() {
        let (Some(tpm), Some(log)) = (actual.get(&pcr), replay.value(HashAlg::Sha256, pcr)) else {
            continue;
        };
        if *tpm == log {
            continue;
        }
        parts.push(describe_pcr(pcr, tpm, events));
    }
    if parts.is_empty() {
        generic.into()
    } else {
        parts.join("; ")
    }
}

fn describe_pcr(pcr: PcrIndex, tpm: &[u8], events: &[Event]) -> String {
    let mine: Vec<&Event> = events.iter().filter(|e| e.m.pcr == pcr).collect();
    let mut value = vec![0u8; 32];
    let mut prefixes = BTreeMap::new();
    prefixes.insert(value.clone(), 0usize);
    for (n, e) in mine.iter().enumerate() {
        value = HashAlg::Sha256.extend(&value, &e.m.digests.sha256.0);
        prefixes.insert(value.clone(), n + 1);
    }
    match prefixes.get(tpm) {
        Some(&n) => format!(
            "PCR {pcr} matches only the first {n} of the log's {} events for it \
             (later ones were logged but never extended)",
            mine.len()
        ),
        None => format!(
            "PCR {pcr} matches no prefix of the log's {} events for it \
             (events edited or missing, or the log is from another boot)",
            mine.len()
        ),
    }
}
