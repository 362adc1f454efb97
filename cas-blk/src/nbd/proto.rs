//! The NBD wire protocol (newstyle, fixed), as pure functions over bytes.
//!
//! Everything a client sends is parsed here without I/O, so the parsers can
//! be fuzzed (`cas-blk/fuzz`, target `nbd_request`) and unit-tested on their
//! own. Numbers are from the NBD protocol document (big-endian on the wire).

/// `NBDMAGIC`, the first thing the server says.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;

/// `NBD_REP_INFO` kinds.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// Error values in replies (Linux errno numbers, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// Longest option payload read; longer ones end the connection (the
/// longest legitimate one is a 4 KiB export name plus a few info requests).
pub const MAX_OPTION_LEN: u32 = 16 * 1024;
/// Largest read or write accepted in one request (advertised as the
/// maximum block size). A longer write ends the connection: its payload is
/// not read into memory.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// Commands a client can send during transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    /// Anything else (TRIM, WRITE_ZEROES, ...): answered with `EINVAL`.
    /// No such command carries a payload.
    Other(u16),
}

impl Command {
    fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disconnect,
            3 => Self::Flush,
            other => Self::Other(other),
        }
    }
}

/// A request header, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    /// The client's cookie, echoed in the reply.
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("short message: {got} bytes, expected {expected}")]
    Short { got: usize, expected: usize },
    #[error("export name length {name_len} does not fit in a {payload} byte option")]
    NameOverrun { name_len: u32, payload: usize },
    #[error("{count} information requests do not fit in {left} bytes")]
    InfoOverrun { count: u16, left: usize },
    #[error("export name is not UTF-8")]
    NameNotUtf8,
}

/// Parses a 28-byte request header. Pure; never panics.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ProtoError> {
    let header: &[u8; REQUEST_LEN] = bytes
        .get(..REQUEST_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(ProtoError::Short {
            got: bytes.len(),
            expected: REQUEST_LEN,
        })?;
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    let flags = u16::from_be_bytes([header[4], header[5]]);
    let code = u16::from_be_bytes([header[6], header[7]]);
    let mut handle = [0u8; 8];
    handle.copy_from_slice(&header[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&header[16..24]);
    Ok(Request {
        flags,
        command: Command::from_code(code),
        handle: u64::from_be_bytes(handle),
        offset: u64::from_be_bytes(offset),
        length: u32::from_be_bytes([header[24], header[25], header[26], header[27]]),
    })
}

/// What the server does with a parsed request, decided without I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        length: u32,
    },
    /// Read the `length`-byte payload, then store it.
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Flush,
    Disconnect,
    /// Answer with this error without touching the disk. `payload` bytes
    /// follow the header and must be read and dropped first.
    Refuse {
        errno: u32,
        payload: u32,
    },
    /// The request cannot be answered without reading an unbounded payload:
    /// end the connection.
    Hangup,
}

/// Checks a request against an export of `size` bytes. Pure.
pub fn plan(request: &Request, size: u64, read_only: bool) -> Action {
    let end = request.offset.checked_add(u64::from(request.length));
    let in_range = end.is_some_and(|end| end <= size);
    match request.command {
        Command::Read if request.length > MAX_REQUEST_LEN => Action::Refuse {
            errno: EOVERFLOW,
            payload: 0,
        },
        Command::Read if !in_range => Action::Refuse {
            errno: EINVAL,
            payload: 0,
        },
        Command::Read => Action::Read {
            offset: request.offset,
            length: request.length,
        },
        Command::Write if request.length > MAX_REQUEST_LEN => Action::Hangup,
        Command::Write if read_only => Action::Refuse {
            errno: EPERM,
            payload: request.length,
        },
        Command::Write if !in_range => Action::Refuse {
            errno: ENOSPC,
            payload: request.length,
        },
        Command::Write => Action::Write {
            offset: request.offset,
            length: request.length,
            fua: request.flags & CMD_FLAG_FUA != 0,
        },
        Command::Flush => Action::Flush,
        Command::Disconnect => Action::Disconnect,
        Command::Other(_) => Action::Refuse {
            errno: EINVAL,
            payload: 0,
        },
    }
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub info_requests: Vec<u16>,
}

/// Parses an `NBD_OPT_INFO`/`NBD_OPT_GO` payload. Pure; never panics.
pub fn parse_info_request(payload: &[u8]) -> Result<InfoRequest, ProtoError> {
    let short = |expected| ProtoError::Short {
        got: payload.len(),
        expected,
    };
    let name_len = payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(short(4))?;
    let name_end = usize::try_from(name_len)
        .ok()
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= payload.len())
        .ok_or(ProtoError::NameOverrun {
            name_len,
            payload: payload.len(),
        })?;
    let name = std::str::from_utf8(&payload[4..name_end])
        .map_err(|_| ProtoError::NameNotUtf8)?
        .to_owned();
    let rest = &payload[name_end..];
    let count = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(short(name_end + 2))?;
    let list = &rest[2..];
    if list.len() != usize::from(count) * 2 {
        return Err(ProtoError::InfoOverrun {
            count,
            left: list.len(),
        });
    }
    let info_requests = list
        .chunks_exact(2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .collect();
    Ok(InfoRequest {
        name,
        info_requests,
    })
}

/// An option reply: magic, option, type, length, data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    // Callers send at most a few KiB.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The header of a simple reply.
pub fn simple_reply(errno: u32, handle: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&errno.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn parses_requests() {
        let r = parse_request(&header(1, 1, 0xdead_beef, 4096, 512)).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                command: Command::Write,
                handle: 0xdead_beef,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(
            plan(&r, 8192, false),
            Action::Write {
                offset: 4096,
                length: 512,
                fua: true
            }
        );
        let mut bad = header(0, 0, 1, 0, 0);
        bad[0] ^= 1;
        assert!(matches!(
            parse_request(&bad),
            Err(ProtoError::BadRequestMagic(_))
        ));
        assert!(matches!(
            parse_request(&bad[..27]),
            Err(ProtoError::Short { .. })
        ));
    }

    #[test]
    fn plans_refusals() {
        let req = |cmd, offset, len| parse_request(&header(0, cmd, 7, offset, len)).unwrap();
        // Read past the end, and wrapping offsets.
        assert_eq!(
            plan(&req(0, 4096, 1), 4096, false),
            Action::Refuse {
                errno: EINVAL,
                payload: 0
            }
        );
        assert_eq!(
            plan(&req(0, u64::MAX, 2), 4096, false),
            Action::Refuse {
                errno: EINVAL,
                payload: 0
            }
        );
        // Writes on a read-only export: refused, payload drained.
        assert_eq!(
            plan(&req(1, 0, 512), 4096, true),
            Action::Refuse {
                errno: EPERM,
                payload: 512
            }
        );
        assert_eq!(
            plan(&req(1, 4000, 512), 4096, false),
            Action::Refuse {
                errno: ENOSPC,
                payload: 512
            }
        );
        assert_eq!(
            plan(&req(1, 0, MAX_REQUEST_LEN + 1), u64::MAX, false),
            Action::Hangup
        );
        assert_eq!(
            plan(&req(0, 0, MAX_REQUEST_LEN + 1), u64::MAX, false),
            Action::Refuse {
                errno: EOVERFLOW,
                payload: 0
            }
        );
        // TRIM (4) and WRITE_ZEROES (6) are not offered.
        assert_eq!(
            plan(&req(4, 0, 512), 4096, false),
            Action::Refuse {
                errno: EINVAL,
                payload: 0
            }
        );
        assert_eq!(plan(&req(3, 0, 0), 4096, true), Action::Flush);
        assert_eq!(plan(&req(2, 0, 0), 4096, true), Action::Disconnect);
    }

    #[test]
    fn parses_info_requests() {
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"img");
        p.extend_from_slice(&2u16.to_be_bytes());
        p.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&p).unwrap(),
            InfoRequest {
                name: "img".into(),
                info_requests: vec![0, 3]
            }
        );
        // Every truncation is an error, never a panic.
        for cut in 0..p.len() {
            assert!(parse_info_request(&p[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse_info_request(&huge),
            Err(ProtoError::NameOverrun { .. })
        ));
    }

    /// What the fuzz target checks, on a deterministic stream of inputs.
    #[test]
    fn random_inputs_never_panic_and_plans_stay_in_bounds() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000u64 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 4 {
                bytes[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            }
            let _ = parse_info_request(&bytes);
            let size = next() >> (next() % 64);
            if let Ok(request) = parse_request(&bytes) {
                match plan(&request, size, round % 3 == 0) {
                    Action::Read { offset, length } | Action::Write { offset, length, .. } => {
                        assert!(length <= MAX_REQUEST_LEN);
                        assert!(offset + u64::from(length) <= size);
                    }
                    Action::Refuse { payload, .. } => assert!(payload <= MAX_REQUEST_LEN),
                    Action::Flush | Action::Disconnect | Action::Hangup => {}
                }
            }
        }
    }
}
