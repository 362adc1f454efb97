//! xenstore from inside a guest, for the guest-side programs (the lab's
//! guest agent, the trusted-syscall launcher): the plain wire protocol
//! (`xen/include/public/io/xs_wire.h`: a 16-byte header, then the payload)
//! over `/dev/xen/xenbus`, with no library, since the lab's guests are
//! busybox with no C library. Relative paths name the guest's own
//! directory (`/local/domain/DOMID/...`).
//!
//! Replies come from xenstored through the guest's kernel; a reply longer
//! than [`MAX_REPLY`] is refused as a confused stream, and an error reply
//! is an [`io::Error`] naming the path and xenstored's error word.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

const XS_READ: u32 = 2;
const XS_WRITE: u32 = 11;
const XS_RM: u32 = 13;
const XS_ERROR: u32 = 16;
/// Replies here are small; a longer one means a confused stream.
pub const MAX_REPLY: usize = 4096;
/// The guest's xenbus device (Linux `xenfs`/`xen-xenbus-dev`).
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// A connection to xenstored, closed on drop.
#[derive(Debug)]
pub struct Xenbus {
    dev: File,
    req_id: u32,
}

/// A reply: its message type and body.
type Reply = (u32, Vec<u8>);

impl Xenbus {
    /// Opens [`XENBUS_DEVICE`].
    pub fn open() -> io::Result<Self> {
        Self::open_at(Path::new(XENBUS_DEVICE))
    }

    /// Opens another device or socket-like file speaking the same protocol.
    pub fn open_at(path: &Path) -> io::Result<Self> {
        let dev = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { dev, req_id: 0 })
    }

    fn request(&mut self, kind: u32, payload: &[u8]) -> io::Result<Reply> {
        self.req_id = self.req_id.wrapping_add(1);
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload too long"))?;
        let mut msg = Vec::with_capacity(16 + payload.len());
        for v in [kind, self.req_id, 0, len] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        self.dev.write_all(&msg)?;
        let mut header = [0u8; 16];
        self.dev.read_exact(&mut header)?;
        let field =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let reply_len = field(12) as usize;
        if reply_len > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("oversized xenbus reply ({reply_len} bytes)"),
            ));
        }
        let mut body = vec![0u8; reply_len];
        self.dev.read_exact(&mut body)?;
        Ok((field(0), body))
    }

    /// A node's value, `None` if it does not exist (or cannot be read).
    pub fn read(&mut self, path: &str) -> io::Result<Option<String>> {
        let (kind, body) = self.request(XS_READ, &nul_terminated(path))?;
        if kind == XS_ERROR {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(&body)
                .trim_end_matches('\0')
                .to_owned(),
        ))
    }

    /// Writes `value` to `path`, creating it.
    pub fn write(&mut self, path: &str, value: &str) -> io::Result<()> {
        let mut payload = nul_terminated(path);
        payload.extend_from_slice(value.as_bytes());
        let reply = self.request(XS_WRITE, &payload)?;
        check(reply, "write", path)
    }

    /// Removes `path` (and what is under it).
    pub fn remove(&mut self, path: &str) -> io::Result<()> {
        let reply = self.request(XS_RM, &nul_terminated(path))?;
        check(reply, "remove", path)
    }
}

fn nul_terminated(path: &str) -> Vec<u8> {
    let mut payload = path.as_bytes().to_vec();
    payload.push(0);
    payload
}

fn check((kind, body): Reply, what: &str, path: &str) -> io::Result<()> {
    if kind == XS_ERROR {
        return Err(io::Error::other(format!(
            "xenstore {what} of {path} failed: {}",
            String::from_utf8_lossy(&body).trim_end_matches('\0')
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A fake xenstored on the other end of a socket pair: answers each
    /// request with `reply(kind, payload)`, and hands the requests back.
    fn serve(
        requests: usize,
        reply: impl Fn(u32, &[u8]) -> (u32, Vec<u8>) + Send + 'static,
    ) -> (Xenbus, std::thread::JoinHandle<Vec<Reply>>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Reply> = Vec::new();
            for _ in 0..requests {
                let mut header = [0u8; 16];
                theirs.read_exact(&mut header).unwrap();
                let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
                let mut payload = vec![0u8; word(12) as usize];
                theirs.read_exact(&mut payload).unwrap();
                let (kind, body) = reply(word(0), &payload);
                let mut msg = Vec::new();
                for v in [kind, word(4), 0, body.len() as u32] {
                    msg.extend_from_slice(&v.to_le_bytes());
                }
                msg.extend_from_slice(&body);
                theirs.write_all(&msg).unwrap();
                seen.push((word(0), payload));
            }
            seen
        });
        let dev = File::from(std::os::fd::OwnedFd::from(ours));
        (Xenbus { dev, req_id: 0 }, handle)
    }

    #[test]
    fn read_write_remove_speak_the_wire_protocol() {
        let (mut xb, server) = serve(4, |kind, payload| match kind {
            XS_READ if payload == b"data/present\0" => (XS_READ, b"value".to_vec()),
            XS_READ => (XS_ERROR, b"ENOENT\0".to_vec()),
            other => (other, b"OK\0".to_vec()),
        });
        assert_eq!(xb.read("data/present").unwrap().as_deref(), Some("value"));
        assert_eq!(xb.read("data/absent").unwrap(), None);
        xb.write("data/x", "1").unwrap();
        xb.remove("data/x").unwrap();
        let seen = server.join().unwrap();
        assert_eq!(seen[2], (XS_WRITE, b"data/x\x001".to_vec()));
        assert_eq!(seen[3], (XS_RM, b"data/x\0".to_vec()));
    }

    #[test]
    fn errors_and_oversized_replies_are_errors() {
        let (mut xb, _server) = serve(2, |kind, _| match kind {
            XS_WRITE => (XS_ERROR, b"EACCES\0".to_vec()),
            _ => (XS_READ, vec![b'x'; MAX_REPLY + 1]),
        });
        let err = xb.write("data/x", "1").unwrap_err().to_string();
        assert!(err.contains("EACCES") && err.contains("data/x"), "{err}");
        assert!(xb.read("data/y").is_err());
    }
}
