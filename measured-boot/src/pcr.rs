//! PCR indices and sets, and which PCRs Circular writes.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// PCR that `circ measure domain` extends: one event per file a domain boots from.
///
/// 15 is unused by firmware (0-7), GRUB (8-9), IMA (10) and the TCG PC Client
/// OS range's common users (11-14: systemd-stub, shim's MokList); it is not
/// resettable from software, unlike 16 and 23.
pub const DOMAIN_PCR: PcrIndex = PcrIndex(15);
/// Default PCR for `circ measure file` (host files outside a domain's boot set).
pub const FILE_PCR: PcrIndex = PcrIndex(14);

/// A PCR index of a PC-client TPM (0..=23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcrIndex(u8);

impl PcrIndex {
    pub const MAX: u8 = 23;

    pub fn new(i: u8) -> Option<Self> {
        (i <= Self::MAX).then_some(Self(i))
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether the log may record events for this PCR. Only PCRs that start at
    /// zero on every TPM reset can be replayed from an all-zero start: 0-7 belong
    /// to the firmware (whose log we do not have) and 17-22 start at all-ones.
    pub const fn is_loggable(self) -> bool {
        matches!(self.0, 8..=16 | 23)
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for PcrIndex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<u8>()
            .ok()
            .and_then(PcrIndex::new)
            .ok_or_else(|| format!("`{s}` is not a PCR index (0..=23)"))
    }
}

/// A set of PCRs, ordered (the TPM orders quoted values by index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrSet(BTreeSet<PcrIndex>);

impl PcrSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, pcr: PcrIndex) {
        self.0.insert(pcr);
    }

    pub fn contains(&self, pcr: PcrIndex) -> bool {
        self.0.contains(&pcr)
    }

    pub fn iter(&self) -> impl Iterator<Item = PcrIndex> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The TPMS_PCR_SELECTION bitmap (3 bytes: PCRs 0..=23).
    pub fn to_select_bitmap(&self) -> [u8; 3] {
        let mut map = [0u8; 3];
        for p in self.iter() {
            if let Some(byte) = map.get_mut(usize::from(p.0 / 8)) {
                *byte |= 1 << (p.0 % 8);
            }
        }
        map
    }

    /// Reads a TPMS_PCR_SELECTION bitmap; bits beyond PCR 23 are an error.
    pub fn from_select_bitmap(map: &[u8]) -> Option<Self> {
        let mut set = PcrSet::new();
        for (byte_no, byte) in map.iter().enumerate() {
            for bit in 0..8u8 {
                if byte & (1 << bit) != 0 {
                    let index = u8::try_from(byte_no)
                        .ok()?
                        .checked_mul(8)?
                        .checked_add(bit)?;
                    set.insert(PcrIndex::new(index)?);
                }
            }
        }
        Some(set)
    }
}

impl FromIterator<PcrIndex> for PcrSet {
    fn from_iter<I: IntoIterator<Item = PcrIndex>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for PcrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.iter().map(|p| p.to_string()).collect();
        f.write_str(&list.join(","))
    }
}

impl FromStr for PcrSet {
    type Err = String;
    /// `16,23` (what `--pcrs` takes).
    fn from_str(s: &str) -> Result<Self, String> {
        let set: PcrSet = s.split(',').map(str::parse).collect::<Result<_, _>>()?;
        if set.is_empty() {
            return Err("empty PCR list".into());
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_round_trips() {
        let set: PcrSet = "0,7,15,16,23".parse().unwrap();
        let map = set.to_select_bitmap();
        assert_eq!(map, [0x81, 0x80, 0x81]);
        assert_eq!(PcrSet::from_select_bitmap(&map), Some(set));
        assert_eq!(PcrSet::from_select_bitmap(&[0, 0, 0, 1]), None);
    }

    #[test]
    fn parse_rejects_out_of_range() {
        assert!("24".parse::<PcrSet>().is_err());
        assert!("".parse::<PcrSet>().is_err());
        assert!(!PcrIndex::new(17).unwrap().is_loggable());
        assert!(DOMAIN_PCR.is_loggable());
    }
}
