//! Producing a quote file.

use circ_measured_boot::quote::{QuoteFile, FORMAT};
use circ_measured_boot::replay::Replay;
use circ_measured_boot::{eventlog, LogError, PcrSet};

use crate::{AkBlob, Tpm, TpmError};

#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    #[error("refusing to quote with an unusable event log")]
    Log(#[source] LogError),
    #[error("the event log has no events: there is nothing to attest")]
    EmptyLog,
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// Quotes the PCRs the log extends (plus `extra`) and bundles the log in.
pub fn quote(
    tpm: &mut impl Tpm,
    ak: &AkBlob,
    nonce: &[u8],
    log_bytes: &[u8],
    extra: &PcrSet,
) -> Result<QuoteFile, QuoteError> {
    let events = eventlog::parse(log_bytes).map_err(QuoteError::Log)?;
    let mut pcrs = Replay::of(&events).pcrs().clone();
    for p in extra.iter() {
        pcrs.insert(p);
    }
    if pcrs.is_empty() {
        return Err(QuoteError::EmptyLog);
    }
    let raw = tpm.quote(ak, nonce, &pcrs)?;
    // Unsigned, for diagnostics only (see circ_measured_boot::quote).
    let values = tpm.read_pcrs(&pcrs)?;
    // parse() accepted it, so it is printable ASCII.
    let event_log = String::from_utf8_lossy(log_bytes).into_owned();
    Ok(QuoteFile {
        format: FORMAT.into(),
        attest: raw.attest,
        signature: raw.signature,
        ak_public: ak.public.clone(),
        pcr_values: values
            .into_iter()
            .map(|(p, v)| (p.get(), hex::encode(v)))
            .collect(),
        event_log,
    })
}
