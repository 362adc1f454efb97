//! Recomputing PCR values from an event log.

use std::collections::BTreeMap;

use crate::digest::HashAlg;
use crate::eventlog::Event;
use crate::pcr::{PcrIndex, PcrSet};

/// PCR values a log implies, per bank. A bank's PCR is absent when some event
/// extending that PCR carries no digest for the bank (SHA-1 is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    values: BTreeMap<(HashAlg, PcrIndex), Vec<u8>>,
    pcrs: PcrSet,
}

impl Replay {
    /// Every loggable PCR starts at zero after a TPM reset (see `PcrIndex::is_loggable`).
    pub fn of(events: &[Event]) -> Self {
        let mut replay = Replay::default();
        let mut incomplete = Vec::new();
        for e in events {
            replay.pcrs.insert(e.m.pcr);
            for alg in [HashAlg::Sha1, HashAlg::Sha256] {
                let key = (alg, e.m.pcr);
                match e.m.digests.get(alg) {
                    Some(d) if !incomplete.contains(&key) => {
                        let old = replay
                            .values
                            .remove(&key)
                            .unwrap_or_else(|| vec![0; alg.digest_len()]);
                        replay.values.insert(key, alg.extend(&old, d));
                    }
                    Some(_) => {}
                    None => {
                        replay.values.remove(&key);
                        incomplete.push(key);
                    }
                }
            }
        }
        replay
    }

    /// The PCRs the log extends.
    pub fn pcrs(&self) -> &PcrSet {
        &self.pcrs
    }

    /// The value of one PCR in one bank; PCRs the log never touched are zero.
    pub fn value(&self, alg: HashAlg, pcr: PcrIndex) -> Option<Vec<u8>> {
        match self.values.get(&(alg, pcr)) {
            Some(v) => Some(v.clone()),
            None if !self.pcrs.contains(pcr) => Some(vec![0; alg.digest_len()]),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Digests, Sha256Digest};
    use crate::eventlog::{EventKind, Measurement};

    fn event(seq: u64, pcr: u8, data: &[u8], sha1: bool) -> Event {
        Event {
            seq,
            m: Measurement {
                pcr: PcrIndex::new(pcr).unwrap(),
                kind: EventKind::File,
                digests: Digests::of_bytes(data, sha1),
                domain: None,
                path: None,
                description: None,
            },
        }
    }

    #[test]
    fn replay_matches_hand_computed_extends() {
        let events = [event(0, 15, b"a", true), event(1, 15, b"b", true)];
        let r = Replay::of(&events);
        let a = Sha256Digest::of(b"a").0;
        let b = Sha256Digest::of(b"b").0;
        let step1 = HashAlg::Sha256.extend(&[0; 32], &a);
        let step2 = HashAlg::Sha256.extend(&step1, &b);
        let pcr15 = PcrIndex::new(15).unwrap();
        assert_eq!(r.value(HashAlg::Sha256, pcr15), Some(step2));
        assert_eq!(r.value(HashAlg::Sha1, pcr15).map(|v| v.len()), Some(20));
        assert_eq!(
            r.value(HashAlg::Sha256, PcrIndex::new(14).unwrap()),
            Some(vec![0; 32])
        );
    }

    #[test]
    fn sha1_bank_is_unknown_when_an_event_lacks_it() {
        let events = [
            event(0, 15, b"a", true),
            event(1, 15, b"b", false),
            event(2, 15, b"c", true),
        ];
        let r = Replay::of(&events);
        let pcr15 = PcrIndex::new(15).unwrap();
        assert_eq!(r.value(HashAlg::Sha1, pcr15), None);
        assert!(r.value(HashAlg::Sha256, pcr15).is_some());
    }
}
