//! A small static HTTP/1.1 server for a store: GET and HEAD, single byte
//! ranges, keep-alive, one thread per connection.
//!
//! Only paths made of plain name segments (`[A-Za-z0-9._-]`, not starting
//! with a dot) are served, percent-escapes are refused, and the resolved
//! file must lie under the store root after resolving symlinks: no request
//! can reach outside the store. Directories are never listed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_HEAD_BYTES: u64 = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_CONNECTIONS: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Open connections, so that stopping can close them.
    connections: Mutex<HashMap<u64, TcpStream>>,
}

/// A server running on its own thread.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    pub fn bind(root: &Path, addr: impl ToSocketAddrs) -> io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            listener: TcpListener::bind(addr)?,
            shared: Arc::new(Shared {
                root,
                stop: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                connections: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until stopped through a [`ServerHandle`].
    pub fn run(self) -> io::Result<()> {
        for stream in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("cas-serve-conn".into())
                .spawn(move || shared.connection(stream));
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a connection thread");
            }
        }
        Ok(())
    }

    pub fn spawn(self) -> io::Result<ServerHandle> {
        let addr = self.local_addr()?;
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name("cas-serve".into())
            .spawn(move || self.run())?;
        Ok(ServerHandle {
            addr,
            shared,
            thread: Some(thread),
        })
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every open connection and waits.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        for stream in lock(&self.shared.connections).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Request {
    head_only: bool,
    path: String,
    range: Option<String>,
    keep_alive: bool,
}

enum Parsed {
    Request(Request),
    /// Respond with this status and close.
    Error(u16, &'static str),
    Closed,
}

impl Shared {
    fn connection(&self, stream: TcpStream) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut connections = lock(&self.connections);
            if connections.len() >= MAX_CONNECTIONS || self.stop.load(Ordering::SeqCst) {
                drop(connections);
                let mut w = &stream;
                let _ = write_head(&mut w, 503, "Service Unavailable", 0, &[], false);
                return;
            }
            match stream.try_clone() {
                Ok(clone) => {
                    connections.insert(id, clone);
                }
                Err(_) => return,
            }
        }
        if let Err(error) = self.serve_connection(&stream) {
            tracing::debug!(%error, "connection ended");
        }
        lock(&self.connections).remove(&id);
    }

    fn serve_connection(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream);
        let mut writer = BufWriter::with_capacity(64 * 1024, stream);
        loop {
            match read_request(&mut reader)? {
                Parsed::Closed => return Ok(()),
                Parsed::Error(status, reason) => {
                    write_head(&mut writer, status, reason, 0, &[], false)?;
                    return writer.flush();
                }
                Parsed::Request(request) => {
                    let keep_alive = request.keep_alive && !self.stop.load(Ordering::SeqCst);
                    self.respond(&mut writer, &request, keep_alive)?;
                    writer.flush()?;
                    if !keep_alive {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The file a request path names, if it is a regular file in the store.
    fn resolve(&self, path: &str) -> Option<(File, u64)> {
        let relative = path.strip_prefix('/')?;
        let mut full = self.root.clone();
        for segment in relative.split('/') {
            let plain = !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !plain {
                return None;
            }
            full.push(segment);
        }
        // A symlink inside the store must not lead out of it.
        let real = full.canonicalize().ok()?;
        if !real.starts_with(&self.root) {
            return None;
        }
        let file = File::open(&real).ok()?;
        let meta = file.metadata().ok()?;
        let len = meta.len();
        meta.is_file().then_some((file, len))
    }

    fn respond(&self, w: &mut impl Write, request: &Request, keep_alive: bool) -> io::Result<()> {
        let Some((mut file, size)) = self.resolve(&request.path) else {
            tracing::debug!(path = request.path, "404");
            return write_head(w, 404, "Not Found", 0, &[], keep_alive);
        };
        let (status, reason, start, len, extra) =
            match request.range.as_deref().map(|r| parse_range(r, size)) {
                None | Some(RangeSpec::Ignore) => (200, "OK", 0, size, Vec::new()),
                Some(RangeSpec::Unsatisfiable) => {
                    let header = format!("Content-Range: bytes */{size}");
                    return write_head(w, 416, "Range Not Satisfiable", 0, &[&header], keep_alive);
                }
                Some(RangeSpec::Bytes { start, end }) => (
                    206,
                    "Partial Content",
                    start,
                    end - start + 1,
                    vec![format!("Content-Range: bytes {start}-{end}/{size}")],
                ),
            };
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        write_head(w, status, reason, len, &extra, keep_alive)?;
        if request.head_only {
            return Ok(());
        }
        file.seek(SeekFrom::Start(start))?;
        let copied = io::copy(&mut (&mut file).take(len), w)?;
        if copied != len {
            // The file shrank under us; the client cannot be told otherwise.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while served",
            ));
        }
        Ok(())
    }
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Parsed> {
    let mut budget = MAX_HEAD_BYTES;
    let Some(request_line) = read_line(reader, &mut budget)? else {
        return Ok(Parsed::Closed);
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(Parsed::Error(400, "Bad Request"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Ok(Parsed::Error(505, "HTTP Version Not Supported")),
    };
    let mut keep_alive = http11;
    let mut range = None;
    let mut headers = 0;
    loop {
        let Some(line) = read_line(reader, &mut budget)? else {
            return Ok(Parsed::Closed);
        };
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Ok(Parsed::Error(431, "Request Header Fields Too Large"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Ok(Parsed::Error(400, "Bad Request"));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "range" => range = Some(value.to_owned()),
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            // Requests with bodies are not part of this protocol; refusing
            // them avoids desynchronising the connection.
            "transfer-encoding" => return Ok(Parsed::Error(400, "Bad Request")),
            "content-length" if value != "0" => return Ok(Parsed::Error(400, "Bad Request")),
            _ => {}
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ok(Parsed::Error(405, "Method Not Allowed")),
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path.contains('%') || !path.starts_with('/') {
        return Ok(Parsed::Error(400, "Bad Request"));
    }
    Ok(Parsed::Request(Request {
        head_only,
        path: path.to_owned(),
        range,
        keep_alive,
    }))
}

/// One CRLF- or LF-terminated line within the head's byte budget;
/// `None` at a clean end of stream.
fn read_line(reader: &mut impl BufRead, budget: &mut u64) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.take(*budget).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    *budget -= n as u64;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request head too long or cut",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "request head is not UTF-8"))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Malformed or multi-range: serve the whole file (RFC 9110 allows it).
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Bytes {
        start: u64,
        end: u64,
    },
}

fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if size > 0 => RangeSpec::Bytes {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Ignore,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeSpec::Ignore;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            };
            match end {
                None => RangeSpec::Ignore,
                Some(end) if end < start => RangeSpec::Ignore,
                Some(_) if start >= size => RangeSpec::Unsatisfiable,
                Some(end) => RangeSpec::Bytes {
                    start,
                    end: end.min(size - 1),
                },
            }
        }
        (true, true) => RangeSpec::Ignore,
    }
}

fn write_head(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    content_length: u64,
    extra: &[&str],
    keep_alive: bool,
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {content_length}\r\n"
    )?;
    if status == 200 || status == 206 {
        w.write_all(b"Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n")?;
    }
    for header in extra {
        write!(w, "{header}\r\n")?;
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(w, "Connection: {connection}\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeSpec::Bytes { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeSpec::Bytes { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            RangeSpec::Bytes { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeSpec::Bytes { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeSpec::Bytes { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=9-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-", 0), RangeSpec::Unsatisfiable);
    }

    fn parse(raw: &str) -> Parsed {
        read_request(&mut io::Cursor::new(raw.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn request_heads() {
        let Parsed::Request(r) =
            parse("GET /chunks/ab/x.zst?q HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n")
        else {
            panic!("not parsed")
        };
        assert_eq!(r.path, "/chunks/ab/x.zst");
        assert_eq!(r.range.as_deref(), Some("bytes=0-1"));
        assert!(r.keep_alive && !r.head_only);
        let Parsed::Request(r) = parse("HEAD / HTTP/1.0\r\n\r\n") else {
            panic!("not parsed")
        };
        assert!(!r.keep_alive && r.head_only);
        assert!(matches!(
            parse("POST / HTTP/1.1\r\n\r\n"),
            Parsed::Error(405, _)
        ));
        assert!(matches!(
            parse("GET /%2e%2e/x HTTP/1.1\r\n\r\n"),
            Parsed::Error(400, _)
        ));
        assert!(matches!(
            parse("GET / HTTP/2\r\n\r\n"),
            Parsed::Error(505, _)
        ));
        assert!(matches!(parse("GET /\r\n\r\n"), Parsed::Error(400, _)));
        assert!(matches!(parse(""), Parsed::Closed));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
        assert!(read_request(&mut io::Cursor::new(long.into_bytes())).is_err());
    }

    #[test]
    fn paths_cannot_leave_the_store() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("store");
        std::fs::create_dir_all(root.join("chunks")).unwrap();
        std::fs::write(root.join("chunks/a.zst"), b"x").unwrap();
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("chunks/link")).unwrap();
        let server = Server::bind(&root, "127.0.0.1:0").unwrap();
        let shared = &server.shared;
        assert!(shared.resolve("/chunks/a.zst").is_some());
        for bad in [
            "/../secret",
            "/chunks/../../secret",
            "/chunks/link",
            "/chunks",
            "/",
            "//etc/passwd",
            "/.hidden",
            "chunks/a.zst",
        ] {
            assert!(shared.resolve(bad).is_none(), "{bad}");
        }
    }
}
