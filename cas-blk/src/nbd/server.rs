//! Serving a [`BlockDevice`] over NBD: fixed newstyle handshake, simple
//! replies, one thread per connection, on a Unix socket or TCP.
//!
//! Stopping ([`StopHandle`], e.g. on SIGTERM): no new connection is
//! accepted; each connection's read side is shut down, so it answers the
//! requests it has already received and then ends (its client sees the
//! connection close: later requests are refused, never half done); [`run`]
//! returns once every connection has ended (or after a bound, when a client
//! stopped reading its replies). The caller then flushes the device.
//!
//! [`run`]: NbdServer::run

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use super::proto::{self, Action};
use crate::disk::BlockDevice;
use crate::error_chain;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Failed requests logged per connection before going quiet (a guest can
/// read a bad block in a loop).
const LOGGED_FAILURES: u64 = 10;
/// How long a stop waits for connections to answer what they received,
/// then for them to end once cut off.
const DRAIN: Duration = Duration::from_secs(5);
const CUT_OFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("cannot listen on {0}")]
    Bind(String, #[source] io::Error),
    #[error("connection i/o")]
    Io(#[from] io::Error),
    #[error("protocol violation")]
    Protocol(#[from] proto::ProtoError),
    #[error("client sent {0} instead of IHAVEOPT")]
    BadOptionMagic(u64),
    #[error("client option of {0} bytes is over the limit")]
    OptionTooLong(u32),
    #[error("client flags {0:#x} not understood")]
    ClientFlags(u32),
    #[error("write of {0} bytes is over the limit")]
    WriteTooLong(u32),
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A client connection, kept by the server so that a stop can cut it off.
#[derive(Debug)]
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection {
    fn shutdown(&self, how: Shutdown) {
        // A connection that already ended has nothing to cut.
        let _ = match self {
            Self::Unix(s) => s.shutdown(how),
            Self::Tcp(s) => s.shutdown(how),
        };
    }
}

/// The live connections, by id.
#[derive(Debug, Default)]
struct Connections {
    live: Mutex<HashMap<u64, Connection>>,
    ended: Condvar,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to `bound` for every connection to end; true if they did.
    fn wait_empty(&self, bound: Duration) -> bool {
        let (_live, waited) = self
            .ended
            .wait_timeout_while(self.lock(), bound, |live| !live.is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !waited.timed_out()
    }

    fn shutdown_all(&self, how: Shutdown) -> usize {
        let live = self.lock();
        for connection in live.values() {
            connection.shutdown(how);
        }
        live.len()
    }
}

/// Stops an [`NbdServer`] from any thread, or from a signal.
#[derive(Clone, Debug)]
pub struct StopHandle {
    /// Write end of the server's wake-up socket pair (the self-pipe).
    wake: Arc<UnixStream>,
}

impl StopHandle {
    pub fn stop(&self) {
        // Non-blocking: one byte is enough, and a full buffer already
        // holds one.
        let _ = (&*self.wake).write(&[1]);
    }

    /// Stops the server on SIGTERM or SIGINT (the signal handler writes
    /// to the wake-up socket; nothing else runs in it).
    pub fn stop_on_termination_signals(&self) -> io::Result<()> {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, self.wake.try_clone()?)?;
        }
        Ok(())
    }
}

/// An NBD server for one export.
#[derive(Debug)]
pub struct NbdServer {
    listener: Listener,
    device: Arc<dyn BlockDevice>,
    export_name: String,
    /// Read end of the wake-up socket pair; [`StopHandle`] has the other.
    woken: UnixStream,
    stop: StopHandle,
}

impl NbdServer {
    fn new(
        listener: Listener,
        device: Arc<dyn BlockDevice>,
        export_name: &str,
    ) -> io::Result<Self> {
        let (woken, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        match &listener {
            Listener::Unix(l, _) => l.set_nonblocking(true)?,
            Listener::Tcp(l) => l.set_nonblocking(true)?,
        }
        Ok(Self {
            listener,
            device,
            export_name: export_name.to_owned(),
            woken,
            stop: StopHandle {
                wake: Arc::new(wake),
            },
        })
    }

    /// Listens on a Unix socket at `path` (a stale socket file is replaced).
    pub fn bind_unix(
        path: &Path,
        device: Arc<dyn BlockDevice>,
        export_name: &str,
    ) -> Result<Self, NbdError> {
        let bind_err = |e| NbdError::Bind(path.display().to_string(), e);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        Self::new(
            Listener::Unix(listener, path.to_owned()),
            device,
            export_name,
        )
        .map_err(bind_err)
    }

    pub fn bind_tcp(
        addr: SocketAddr,
        device: Arc<dyn BlockDevice>,
        export_name: &str,
    ) -> Result<Self, NbdError> {
        let bind_err = |e| NbdError::Bind(addr.to_string(), e);
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        Self::new(Listener::Tcp(listener), device, export_name).map_err(bind_err)
    }

    /// Where clients connect: `unix:PATH` or `tcp:ADDR` (the bound port with `:0`).
    pub fn endpoint(&self) -> io::Result<String> {
        Ok(match &self.listener {
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
            Listener::Tcp(l) => format!("tcp:{}", l.local_addr()?),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Accepts connections, each on its own thread, until stopped (see the
    /// module's notes) or the listener fails.
    pub fn run(self) -> io::Result<()> {
        let connections = Arc::new(Connections::default());
        let next_id = AtomicU64::new(0);
        loop {
            let (listener_ready, stopped) = {
                let listener = match &self.listener {
                    Listener::Unix(l, _) => l.as_fd(),
                    Listener::Tcp(l) => l.as_fd(),
                };
                let mut fds = [
                    PollFd::from_borrowed_fd(listener, PollFlags::IN),
                    PollFd::new(&self.woken, PollFlags::IN),
                ];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => {}
                    // A signal: its byte is on the wake-up socket by now.
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
            };
            if stopped {
                break;
            }
            if !listener_ready {
                continue;
            }
            let accepted = match &self.listener {
                Listener::Unix(l, _) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Ok(Connection::Unix(s))
                }),
                Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    Ok(Connection::Tcp(s))
                }),
            };
            let connection = match accepted {
                Ok(connection) => connection,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            };
            let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &connection
            {
                Connection::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
                Connection::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            {
                let mut live = connections.lock();
                if live.len() >= MAX_CONNECTIONS {
                    tracing::warn!("too many NBD connections, closing a new one");
                    continue;
                }
                live.insert(id, connection);
            }
            let device = Arc::clone(&self.device);
            let name = self.export_name.clone();
            let ours = Arc::clone(&connections);
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-{id}"))
                .spawn(move || {
                    match serve_connection(reader, writer, &*device, &name) {
                        Ok(()) => tracing::debug!(conn = id, "NBD client left"),
                        Err(error) => {
                            tracing::info!(conn = id, error = %error_chain(&error), "NBD connection ended")
                        }
                    }
                    ours.lock().remove(&id);
                    ours.ended.notify_all();
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a connection thread, closing it");
                connections.lock().remove(&id);
            }
        }
        drain(&connections);
        Ok(())
    }

    /// Runs the server on a thread (tests).
    pub fn spawn(self) -> std::thread::JoinHandle<io::Result<()>> {
        std::thread::spawn(move || self.run())
    }
}

/// Errors after which the listener still works: the client went away
/// before its connection was accepted, or a signal came.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

/// Lets every connection answer what it has received, then end.
fn drain(connections: &Connections) {
    let open = connections.shutdown_all(Shutdown::Read);
    tracing::info!(connections = open, "NBD server stopping");
    if connections.wait_empty(DRAIN) {
        return;
    }
    let stuck = connections.shutdown_all(Shutdown::Both);
    tracing::warn!(
        connections = stuck,
        "NBD clients not reading their replies, connections cut"
    );
    if !connections.wait_empty(CUT_OFF) {
        tracing::warn!("NBD connections still busy at stop");
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn transmission_flags(device: &dyn BlockDevice) -> u16 {
    let mut flags = proto::TFLAG_HAS_FLAGS
        | proto::TFLAG_SEND_FLUSH
        | proto::TFLAG_SEND_FUA
        // A flush syncs the one overlay every connection writes to.
        | proto::TFLAG_CAN_MULTI_CONN;
    if device.read_only() {
        flags |= proto::TFLAG_READ_ONLY;
    }
    flags
}

/// Serves one client: handshake, then requests until it disconnects.
pub fn serve_connection(
    reader: impl Read,
    writer: impl Write,
    device: &dyn BlockDevice,
    export_name: &str,
) -> Result<(), NbdError> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut w = BufWriter::with_capacity(256 * 1024, writer);
    tracing::debug!("NBD client connected");
    if handshake(&mut r, &mut w, device, export_name)? {
        tracing::info!(
            export = export_name,
            read_only = device.read_only(),
            "NBD client in transmission"
        );
        transmission(&mut r, &mut w, device)?;
    }
    Ok(())
}

/// Option haggling; `Ok(true)` when the client moves on to transmission.
fn handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    device: &dyn BlockDevice,
    export_name: &str,
) -> Result<bool, NbdError> {
    w.write_all(&proto::NBD_MAGIC.to_be_bytes())?;
    w.write_all(&proto::IHAVEOPT.to_be_bytes())?;
    w.write_all(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    let known = proto::CLIENT_FLAG_FIXED_NEWSTYLE | proto::CLIENT_FLAG_NO_ZEROES;
    if client_flags & !known != 0 {
        return Err(NbdError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & proto::CLIENT_FLAG_NO_ZEROES != 0;
    let tflags = transmission_flags(device);
    let size = device.size();
    let known_name = |name: &str| name.is_empty() || name == export_name;
    loop {
        let magic = read_u64(r)?;
        if magic != proto::IHAVEOPT {
            return Err(NbdError::BadOptionMagic(magic));
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > proto::MAX_OPTION_LEN {
            return Err(NbdError::OptionTooLong(len));
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        let reply = |w: &mut dyn Write, kind: u32, data: &[u8]| -> io::Result<()> {
            w.write_all(&proto::option_reply(option, kind, data))
        };
        match option {
            proto::OPT_EXPORT_NAME => {
                // No way to answer an error here: an unknown name hangs up.
                if !std::str::from_utf8(&payload).is_ok_and(known_name) {
                    tracing::info!("NBD client asked for an unknown export");
                    return Ok(false);
                }
                w.write_all(&size.to_be_bytes())?;
                w.write_all(&tflags.to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(true);
            }
            proto::OPT_ABORT => {
                reply(w, proto::REP_ACK, &[])?;
                w.flush()?;
                return Ok(false);
            }
            proto::OPT_LIST if len != 0 => reply(w, proto::REP_ERR_INVALID, &[])?,
            proto::OPT_LIST => {
                let mut data = (export_name.len() as u32).to_be_bytes().to_vec();
                data.extend_from_slice(export_name.as_bytes());
                reply(w, proto::REP_SERVER, &data)?;
                reply(w, proto::REP_ACK, &[])?;
            }
            proto::OPT_INFO | proto::OPT_GO => match proto::parse_info_request(&payload) {
                Err(error) => {
                    tracing::debug!(%error, "bad NBD_OPT_INFO/GO");
                    reply(w, proto::REP_ERR_INVALID, &[])?;
                }
                Ok(request) if !known_name(&request.name) => {
                    reply(w, proto::REP_ERR_UNKNOWN, &[])?;
                }
                Ok(request) => {
                    let mut export = proto::INFO_EXPORT.to_be_bytes().to_vec();
                    export.extend_from_slice(&size.to_be_bytes());
                    export.extend_from_slice(&tflags.to_be_bytes());
                    reply(w, proto::REP_INFO, &export)?;
                    if request.info_requests.contains(&proto::INFO_BLOCK_SIZE) {
                        let mut sizes = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        sizes.extend_from_slice(&1u32.to_be_bytes());
                        sizes.extend_from_slice(&4096u32.to_be_bytes());
                        sizes.extend_from_slice(&proto::MAX_REQUEST_LEN.to_be_bytes());
                        reply(w, proto::REP_INFO, &sizes)?;
                    }
                    reply(w, proto::REP_ACK, &[])?;
                    if option == proto::OPT_GO {
                        w.flush()?;
                        return Ok(true);
                    }
                }
            },
            // STARTTLS, STRUCTURED_REPLY, meta contexts and anything newer.
            _ => reply(w, proto::REP_ERR_UNSUP, &[])?,
        }
        w.flush()?;
    }
}

fn transmission<R: Read>(
    r: &mut BufReader<R>,
    w: &mut impl Write,
    device: &dyn BlockDevice,
) -> Result<(), NbdError> {
    let size = device.size();
    let read_only = device.read_only();
    let mut failures = 0u64;
    let mut header = [0u8; proto::REQUEST_LEN];
    let mut buf = Vec::new();
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            // A client that just closes the socket is done too.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let request = proto::parse_request(&header)?;
        let result = match proto::plan(&request, size, read_only) {
            Action::Read { offset, length } => {
                buf.resize(length as usize, 0);
                match device.read_at(offset, &mut buf) {
                    Ok(()) => {
                        w.write_all(&proto::simple_reply(0, request.handle))?;
                        w.write_all(&buf)?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Action::Write {
                offset,
                length,
                fua,
            } => {
                buf.resize(length as usize, 0);
                r.read_exact(&mut buf)?;
                let done = device.write_at(offset, &buf).and_then(|()| {
                    if fua {
                        device.flush()
                    } else {
                        Ok(())
                    }
                });
                if done.is_ok() {
                    w.write_all(&proto::simple_reply(0, request.handle))?;
                }
                done
            }
            Action::Flush => {
                let done = device.flush();
                if done.is_ok() {
                    w.write_all(&proto::simple_reply(0, request.handle))?;
                }
                done
            }
            Action::Disconnect => {
                w.flush()?;
                if let Err(error) = device.flush() {
                    tracing::warn!(error = %error_chain(&error), "flush at disconnect failed");
                }
                return Ok(());
            }
            Action::Refuse { errno, payload } => {
                io::copy(&mut r.take(u64::from(payload)), &mut io::sink())?;
                w.write_all(&proto::simple_reply(errno, request.handle))?;
                Ok(())
            }
            Action::Hangup => return Err(NbdError::WriteTooLong(request.length)),
        };
        if let Err(error) = result {
            failures += 1;
            if failures <= LOGGED_FAILURES {
                tracing::warn!(
                    offset = request.offset,
                    length = request.length,
                    errno = super::errno(error.kind()),
                    error = %error_chain(&error),
                    "NBD request failed"
                );
            }
            w.write_all(&proto::simple_reply(
                super::errno(error.kind()),
                request.handle,
            ))?;
        }
        // Pipelined requests already read get their replies in one write.
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}
