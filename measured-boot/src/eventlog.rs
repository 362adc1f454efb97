//! The measurement event log: an append-only text file, one record per line.
//!
//! ```text
//! circ-eventlog v1
//! seq=0 pcr=15 type=domain-config sha256=<64 hex> domain=web1 path=/etc/xen/web1.cfg check=<16 hex>
//! ```
//!
//! Fields come in this order, `sha1`, `domain`, `path` and `desc` being optional:
//! `seq pcr type sha256 [sha1] [domain] [path] [desc] check`. Values are
//! percent-encoded (every byte outside `!`..=`~`, and `%` itself, becomes `%XX`),
//! so a record is one line of printable ASCII whatever a path contains.
//! `check` is the first 8 bytes of SHA-256 over the record up to ` check=`:
//! it detects torn and corrupted records, not forgery (anyone can recompute
//! it); forgery is what the TPM quote catches when the log is replayed.
//!
//! Crash safety: a record is written with one `write` on an `O_APPEND` file and
//! `fdatasync`ed before the PCR is extended, so after a crash the log either ends
//! with a partial line (a *torn tail*: no newline, possibly NUL-filled) or is
//! complete. A torn tail was never extended into the TPM, so dropping it
//! ([`EventLog::repair_torn_tail`]) is safe. Anything else that fails to parse
//! is corruption and is reported with its record number, never repaired.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use sha2::{Digest as _, Sha256};

use crate::digest::{Digests, Sha256Digest};
use crate::pcr::PcrIndex;

/// First line of every log.
pub const HEADER: &str = "circ-eventlog v1\n";
/// Longest record accepted (encoded, without the newline). Bounds the parser's work
/// on hostile input and keeps every append a single small write.
pub const MAX_RECORD_LEN: usize = 16 * 1024;

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A host file (`circ measure file`).
    File,
    /// An xl domain configuration file.
    DomainConfig,
    DomainKernel,
    DomainRamdisk,
    /// A cas-blk disk index a domain boots from.
    DomainCasIndex,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::File => "file",
            EventKind::DomainConfig => "domain-config",
            EventKind::DomainKernel => "domain-kernel",
            EventKind::DomainRamdisk => "domain-ramdisk",
            EventKind::DomainCasIndex => "domain-cas-index",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            EventKind::File,
            EventKind::DomainConfig,
            EventKind::DomainKernel,
            EventKind::DomainRamdisk,
            EventKind::DomainCasIndex,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement, before it has a place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    pub pcr: PcrIndex,
    pub kind: EventKind,
    pub digests: Digests,
    /// The domain this belongs to (domain events).
    pub domain: Option<String>,
    /// The measured file, canonicalized.
    pub path: Option<String>,
    /// Free text.
    pub description: Option<String>,
}

/// A record of the log: a measurement and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub m: Measurement,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} pcr{} {}", self.seq, self.m.pcr, self.m.kind)?;
        if let Some(d) = &self.m.domain {
            write!(f, " domain={d}")?;
        }
        if let Some(p) = &self.m.path {
            write!(f, " {p}")?;
        }
        if let Some(d) = &self.m.description {
            write!(f, " ({d})")?;
        }
        write!(f, " sha256:{}", self.m.digests.sha256)
    }
}

/// Why one record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    ChecksumMismatch,
    MissingChecksum,
    TooLong,
    NotText,
    Sequence {
        expected: u64,
        found: u64,
    },
    MissingField(&'static str),
    /// A key that is unknown, repeated or out of order.
    UnexpectedField(String),
    BadValue {
        field: &'static str,
        value: String,
    },
    PcrNotLoggable(u8),
    /// The last record has no newline: it was being written when the writer stopped.
    Unterminated,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::ChecksumMismatch => f.write_str("checksum mismatch"),
            RecordFault::MissingChecksum => f.write_str("no `check=` field"),
            RecordFault::TooLong => write!(f, "longer than {MAX_RECORD_LEN} bytes"),
            RecordFault::NotText => f.write_str("contains bytes that are not printable ASCII"),
            RecordFault::Sequence { expected, found } => write!(
                f,
                "sequence number {found} where {expected} was expected (records removed or reordered)"
            ),
            RecordFault::MissingField(k) => write!(f, "no `{k}=` field"),
            RecordFault::UnexpectedField(k) => write!(f, "unexpected field `{k}`"),
            RecordFault::BadValue { field, value } => write!(f, "bad {field} `{value}`"),
            RecordFault::PcrNotLoggable(p) => {
                write!(f, "PCR {p} cannot be replayed from a log (allowed: 8-16, 23)")
            }
            RecordFault::Unterminated => f.write_str("no end of line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not a Circular event log (the first line is not `{}`)", HEADER.trim_end())]
    BadHeader,
    #[error(
        "record {record} (line {line}) is torn: {fault}; the writer stopped while appending it, \
         so it was never extended into the TPM (`circ measure repair-log` drops it)"
    )]
    TornTail {
        record: u64,
        line: usize,
        /// Byte offset where the torn record starts.
        offset: u64,
        fault: RecordFault,
    },
    #[error("record {record} (line {line}) is corrupt: {fault}")]
    Corrupt {
        record: u64,
        line: usize,
        fault: RecordFault,
    },
    #[error("cannot log this measurement: {0}")]
    InvalidMeasurement(String),
}

/// Parses a whole log. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Vec<Event>, LogError> {
    let Some(mut rest) = bytes.strip_prefix(HEADER.as_bytes()) else {
        return Err(LogError::BadHeader);
    };
    let mut events = Vec::new();
    let mut offset = HEADER.len();
    while !rest.is_empty() {
        let record = events.len() as u64;
        let line_no = events.len() + 2;
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(LogError::TornTail {
                record,
                line: line_no,
                offset: offset as u64,
                fault: RecordFault::Unterminated,
            });
        };
        let (line, tail) = rest.split_at(nl);
        let event = parse_record(line, record).map_err(|fault| LogError::Corrupt {
            record,
            line: line_no,
            fault,
        })?;
        events.push(event);
        offset += nl + 1;
        rest = tail.get(1..).unwrap_or_default();
    }
    Ok(events)
}

fn checksum(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    hex::encode(d.get(..8).unwrap_or_default())
}

fn parse_record(line: &[u8], expected_seq: u64) -> Result<Event, RecordFault> {
    if line.len() > MAX_RECORD_LEN {
        return Err(RecordFault::TooLong);
    }
    if !line.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(RecordFault::NotText);
    }
    // All printable ASCII, so this cannot fail; stay total anyway.
    let line = std::str::from_utf8(line).map_err(|_| RecordFault::NotText)?;
    let (body, check) = line
        .rsplit_once(" check=")
        .ok_or(RecordFault::MissingChecksum)?;
    if checksum(body.as_bytes()) != check {
        return Err(RecordFault::ChecksumMismatch);
    }

    let mut fields = body.split(' ').map(|tok| match tok.split_once('=') {
        Some((k, v)) => Ok((k, v)),
        None => Err(RecordFault::UnexpectedField(tok.to_owned())),
    });
    let mut next = |key: &'static str| -> Result<&str, RecordFault> {
        match fields.next() {
            Some(Ok((k, v))) if k == key => Ok(v),
            Some(Ok((k, _))) => Err(RecordFault::UnexpectedField(k.to_owned())),
            Some(Err(e)) => Err(e),
            None => Err(RecordFault::MissingField(key)),
        }
    };
    let bad = |field: &'static str, value: &str| RecordFault::BadValue {
        field,
        value: value.chars().take(80).collect(),
    };

    let seq_s = next("seq")?;
    let seq: u64 = seq_s.parse().map_err(|_| bad("seq", seq_s))?;
    if seq != expected_seq {
        return Err(RecordFault::Sequence {
            expected: expected_seq,
            found: seq,
        });
    }
    let pcr_s = next("pcr")?;
    let pcr_n: u8 = pcr_s.parse().map_err(|_| bad("pcr", pcr_s))?;
    let pcr = PcrIndex::new(pcr_n).ok_or_else(|| bad("pcr", pcr_s))?;
    if !pcr.is_loggable() {
        return Err(RecordFault::PcrNotLoggable(pcr_n));
    }
    let kind_s = next("type")?;
    let kind = EventKind::parse(kind_s).ok_or_else(|| bad("type", kind_s))?;
    let sha256_s = next("sha256")?;
    let sha256 = Sha256Digest::from_hex(sha256_s).ok_or_else(|| bad("sha256", sha256_s))?;

    // The optional fields, each at most once and in this order.
    let optional = ["sha1", "domain", "path", "desc"];
    let mut values: [Option<String>; 4] = Default::default();
    let mut min_pos = 0;
    for field in fields {
        let (k, v) = field?;
        let pos = optional
            .iter()
            .position(|&o| o == k)
            .filter(|&p| p >= min_pos)
            .ok_or_else(|| RecordFault::UnexpectedField(k.to_owned()))?;
        let name = optional.get(pos).copied().unwrap_or("field");
        let decoded = decode_value(v).ok_or_else(|| bad(name, v))?;
        if let Some(slot) = values.get_mut(pos) {
            *slot = Some(decoded);
        }
        min_pos = pos + 1;
    }
    let [sha1_s, domain, path, description] = values;
    let sha1 = match sha1_s {
        None => None,
        Some(s) => {
            let mut d = [0u8; 20];
            hex::decode_to_slice(&s, &mut d).map_err(|_| bad("sha1", &s))?;
            Some(d)
        }
    };
    Ok(Event {
        seq,
        m: Measurement {
            pcr,
            kind,
            digests: Digests { sha256, sha1 },
            domain,
            path,
            description,
        },
    })
}

fn encode_value(out: &mut String, v: &str) {
    for &b in v.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn decode_value(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex_digits = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex_digits).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a record (without its newline). `seq` is its position.
pub fn encode_record(seq: u64, m: &Measurement) -> Result<String, LogError> {
    if !m.pcr.is_loggable() {
        return Err(LogError::InvalidMeasurement(
            RecordFault::PcrNotLoggable(m.pcr.get()).to_string(),
        ));
    }
    let mut line = format!(
        "seq={seq} pcr={} type={} sha256={}",
        m.pcr,
        m.kind,
        m.digests.sha256.to_hex()
    );
    if let Some(d) = &m.digests.sha1 {
        line.push_str(" sha1=");
        line.push_str(&hex::encode(d));
    }
    for (key, value) in [
        ("domain", &m.domain),
        ("path", &m.path),
        ("desc", &m.description),
    ] {
        if let Some(v) = value {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            encode_value(&mut line, v);
        }
    }
    let check = checksum(line.as_bytes());
    line.push_str(" check=");
    line.push_str(&check);
    if line.len() > MAX_RECORD_LEN {
        return Err(LogError::InvalidMeasurement(format!(
            "the record would be longer than {MAX_RECORD_LEN} bytes"
        )));
    }
    Ok(line)
}

/// An open log, locked exclusively (`flock`) so that concurrent `circ measure`
/// runs cannot interleave their records or their PCR extends.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: File,
    events: Vec<Event>,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

impl EventLog {
    /// Opens (creating it and its directory if needed) and locks the log, and reads
    /// every record. A torn or corrupt log is refused: appending after it would
    /// make the rest unreadable too.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let (file, bytes) = open_locked(path)?;
        let mut log = EventLog {
            path: path.to_owned(),
            file,
            events: Vec::new(),
        };
        if bytes.is_empty() || HEADER.as_bytes().starts_with(&bytes) {
            // New, or its creation was cut short before the header was complete.
            log.file.set_len(0).map_err(io_err(path, "truncate"))?;
            log.write_synced(HEADER.as_bytes())?;
            sync_parent_dir(path)?;
            return Ok(log);
        }
        log.events = parse(&bytes)?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Appends one record and makes it durable before returning: the caller
    /// extends the PCR only after this succeeded.
    pub fn append(&mut self, m: Measurement) -> Result<&Event, LogError> {
        let seq = self.events.len() as u64;
        let mut line = encode_record(seq, &m)?;
        line.push('\n');
        self.write_synced(line.as_bytes())?;
        self.events.push(Event { seq, m });
        self.events
            .last()
            .ok_or_else(|| LogError::InvalidMeasurement("append lost its record".into()))
    }

    fn write_synced(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let path = &self.path;
        self.file.write_all(bytes).map_err(io_err(path, "append"))?;
        self.file.sync_data().map_err(io_err(path, "fsync"))
    }

    /// Drops a torn last record (see the module documentation). Returns how many
    /// bytes were dropped, or `None` when the log was whole. Corruption anywhere
    /// else is still an error.
    pub fn repair_torn_tail(path: &Path) -> Result<Option<u64>, LogError> {
        let (file, bytes) = open_locked(path)?;
        match parse(&bytes) {
            Ok(_) => Ok(None),
            Err(LogError::TornTail { offset, .. }) => {
                file.set_len(offset).map_err(io_err(path, "truncate"))?;
                file.sync_all().map_err(io_err(path, "fsync"))?;
                Ok(Some(bytes.len() as u64 - offset))
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads a log without changing it (shared lock), returning its bytes and records.
pub fn read(path: &Path) -> Result<(Vec<u8>, Vec<Event>), LogError> {
    let mut file = File::open(path).map_err(io_err(path, "open"))?;
    flock(&file, FlockOperation::LockShared)
        .map_err(|e| io_err(path, "lock")(std::io::Error::from(e)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path, "read"))?;
    let events = parse(&bytes)?;
    Ok((bytes, events))
}

fn open_locked(path: &Path) -> Result<(File, Vec<u8>), LogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(path, "create directory"))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path, "open"))?;
    flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| io_err(path, "lock")(std::io::Error::from(e)))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(io_err(path, "read"))?;
    Ok((file, bytes))
}

/// A new file's directory entry is durable only once the directory is synced.
fn sync_parent_dir(path: &Path) -> Result<(), LogError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcr::DOMAIN_PCR;

    fn measurement(path: &str) -> Measurement {
        Measurement {
            pcr: DOMAIN_PCR,
            kind: EventKind::DomainKernel,
            digests: Digests::of_bytes(path.as_bytes(), true),
            domain: Some("web 1".into()),
            path: Some(path.into()),
            description: Some("100% kernel\nnew line".into()),
        }
    }

    fn log_with(paths: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/measurements.log");
        let mut log = EventLog::open(&path).unwrap();
        for p in paths {
            log.append(measurement(p)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn records_round_trip_with_odd_characters() {
        let (_dir, path) = log_with(&["/boot/vmlinuz", "/srv/é dir/x=y"]);
        let (bytes, events) = read(&path).unwrap();
        assert!(bytes.is_ascii());
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].m, measurement("/srv/é dir/x=y"));
        assert_eq!(events[1].seq, 1);
        // Reopening continues the sequence.
        let mut log = EventLog::open(&path).unwrap();
        assert_eq!(log.append(measurement("/c")).unwrap().seq, 2);
    }

    #[test]
    fn torn_tail_is_reported_and_repaired() {
        let (_dir, path) = log_with(&["/a", "/b"]);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"seq=2 pcr=15 type=dom");
        std::fs::write(&path, &torn).unwrap();
        let err = EventLog::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::TornTail {
                    record: 2,
                    line: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            EventLog::repair_torn_tail(&path).unwrap(),
            Some(21),
            "drops exactly the partial record"
        );
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert_eq!(EventLog::repair_torn_tail(&path).unwrap(), None);
    }

    #[test]
    fn nul_filled_tail_counts_as_torn() {
        let (_dir, path) = log_with(&["/a"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 100]);
        assert!(matches!(
            parse(&bytes),
            Err(LogError::TornTail { record: 1, .. })
        ));
    }

    #[test]
    fn edited_record_is_named() {
        let (_dir, path) = log_with(&["/a", "/b", "/c"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let tampered = text.replacen("path=/b", "path=/x", 1);
        let err = parse(tampered.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 1 (line 3) is corrupt: checksum mismatch"
        );
    }

    #[test]
    fn removed_record_is_a_sequence_gap() {
        let (_dir, path) = log_with(&["/a", "/b", "/c"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        let err = parse((lines.join("\n") + "\n").as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Corrupt {
                    record: 1,
                    fault: RecordFault::Sequence {
                        expected: 1,
                        found: 2
                    },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn header_is_required_and_torn_creation_is_redone() {
        assert!(matches!(parse(b"hello\n"), Err(LogError::BadHeader)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, &HEADER.as_bytes()[..5]).unwrap();
        let mut log = EventLog::open(&path).unwrap();
        log.append(measurement("/a")).unwrap();
        drop(log); // releases the exclusive lock `read` would wait for
        assert_eq!(read(&path).unwrap().1.len(), 1);
    }

    #[test]
    fn unloggable_pcr_is_refused_on_append() {
        let (_dir, path) = log_with(&[]);
        let mut log = EventLog::open(&path).unwrap();
        let mut m = measurement("/a");
        m.pcr = PcrIndex::new(0).unwrap();
        assert!(matches!(
            log.append(m),
            Err(LogError::InvalidMeasurement(_))
        ));
        assert!(log.events().is_empty());
    }

    /// Every prefix and many single-byte mutations of a valid log parse to a
    /// result (no panic), and any mutation inside a record is detected.
    #[test]
    fn mutations_never_panic_and_are_detected() {
        let (_dir, path) = log_with(&["/a", "/b"]);
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            let prefix = bytes.get(..cut).unwrap();
            let _ = parse(prefix);
        }
        let mut detected = 0;
        for i in HEADER.len()..bytes.len() {
            for x in [0x01u8, 0x20, 0x80] {
                let mut m = bytes.clone();
                m[i] ^= x;
                if parse(&m).is_err() {
                    detected += 1;
                }
            }
        }
        assert_eq!(detected, 3 * (bytes.len() - HEADER.len()));
    }
}
