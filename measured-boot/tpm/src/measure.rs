//! Measuring: log first, then extend.
//!
//! The record is durable in the log before the PCR moves, so a crash leaves
//! either a torn record that was never extended (safe to drop) or a complete
//! record whose extend may be missing (the verifier then says the PCR matches
//! only a prefix of the log). Before logging, the log is checked against the
//! TPM: appending to a log that no longer describes the PCR (a log from an
//! earlier boot, say) would only produce quotes that never verify.

use circ_measured_boot::replay::Replay;
use circ_measured_boot::{Event, EventLog, HashAlg, LogError, Measurement, PcrIndex};

use crate::{Tpm, TpmError};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(
        "the event log {log} does not describe PCR {pcr} (the TPM's value is not the log's replay): \
         it is from another boot or events were lost; move it away to start a new log"
    )]
    OutOfStep { log: String, pcr: PcrIndex },
}

/// Checks that `log` replays to the TPM's current value of `pcr`.
pub fn check_in_step(
    tpm: &mut impl Tpm,
    log: &EventLog,
    pcr: PcrIndex,
) -> Result<(), MeasureError> {
    let replayed = Replay::of(log.events()).value(HashAlg::Sha256, pcr);
    let actual = tpm.read_pcrs(&std::iter::once(pcr).collect())?;
    if replayed.as_ref() == actual.get(&pcr) {
        Ok(())
    } else {
        Err(MeasureError::OutOfStep {
            log: log.path().display().to_string(),
            pcr,
        })
    }
}

/// Logs `m` durably, then extends its PCR.
pub fn record(
    tpm: &mut impl Tpm,
    log: &mut EventLog,
    m: Measurement,
) -> Result<Event, MeasureError> {
    check_in_step(tpm, log, m.pcr)?;
    let event = log.append(m)?.clone();
    tpm.extend(event.m.pcr, &event.m.digests)?;
    tracing::debug!(seq = event.seq, pcr = event.m.pcr.get(), "measured");
    Ok(event)
}
