//! The NBD server on loopback with real NBD clients (qemu-io and qemu-img,
//! which speak NBD themselves), and with a raw client for the handshake's
//! corners: an image packed into a store, served over HTTP by the crate's
//! server, exported through `CowDisk` on a Unix socket or TCP.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use circ_cas::client::{OpenOptions, Rollback};
use circ_cas::keys::SecretKey;
use circ_cas::nbd::{proto, NbdServer};
use circ_cas::overlay::{Overlay, OverlayError};
use circ_cas::pack::{self, PackOptions};
use circ_cas::serve::{Server, ServerHandle};
use circ_cas::session::{open_disk, DiskSession, SessionOptions};
use circ_cas::store::DirStore;
use circ_cas::Index;
use circ_cas::{BlockDevice, DiskError};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 16;

/// Chunk k is filled with byte k+1, except chunk 5 (all zero, never stored).
fn image() -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK * CHUNKS);
    for k in 0..CHUNKS {
        let byte = if k == 5 { 0 } else { k as u8 + 1 };
        out.extend(std::iter::repeat_n(byte, CHUNK));
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
    _http: ServerHandle,
    index_url: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        std::fs::write(dir.path().join("image"), image()).unwrap();
        let opts = PackOptions {
            name: "img".into(),
            chunk_size: "64K".parse().unwrap(),
            compression: circ_cas::Compression::Zstd,
            threads: 2,
            durable: false,
            frame_shift: Some(13),
        };
        let store = DirStore::open(dir.path().join("store"));
        pack::pack(&dir.path().join("image"), &store, &key, &opts, &|_| {}).unwrap();
        let http = Server::bind(&dir.path().join("store"), "127.0.0.1:0")
            .unwrap()
            .spawn()
            .unwrap();
        let index_url = format!("http://{}/indexes/img.cidx", http.local_addr());
        Self {
            dir,
            key,
            _http: http,
            index_url,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self) -> OpenOptions {
        let mut opts = OpenOptions::new(
            self.index_url.clone(),
            self.key.public(),
            Rollback::gate(self.path("state"), false),
        );
        opts.cache_dir = Some(self.path("cache"));
        opts
    }

    /// Exports the image on a fresh Unix socket; returns its path.
    fn export(&self, overlay: Option<&Path>) -> PathBuf {
        let disk = open_disk(&self.options(), overlay).unwrap().0;
        let socket = self.path(&format!("nbd-{}.sock", rand_suffix()));
        let server = NbdServer::bind_unix(&socket, Arc::new(disk), "img").unwrap();
        server.spawn();
        socket
    }

    fn chunk_file(&self, k: usize) -> PathBuf {
        let bytes = std::fs::read(self.path("store/indexes/img.cidx")).unwrap();
        let index = Index::parse_verified(&bytes, &self.key.public()).unwrap();
        DirStore::open(self.path("store")).object_file(&index.chunk_ref(k).unwrap())
    }

    fn store_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut stack = vec![self.path("store")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    files.push((path, bytes));
                }
            }
        }
        files.sort();
        files
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn nbd_uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// Runs qemu-io with `commands` on the export (`-r`: opened read-only);
/// returns (success, output).
fn qemu_io(socket: &Path, read_only: bool, commands: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("qemu-io");
    if read_only {
        cmd.arg("-r");
    }
    cmd.args(["-f", "raw", &nbd_uri(socket)]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().expect("qemu-io runs (apt install qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text.contains("failed") || text.contains("error");
    (out.status.success() && !failed, text)
}

#[test]
fn qemu_img_copies_the_exact_image() {
    let fx = Fixture::new();
    let socket = fx.export(None);
    let out = fx.path("copy.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &nbd_uri(&socket)])
        .arg(&out)
        .status()
        .expect("qemu-img runs");
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == image(), "copy differs");
}

#[test]
fn writes_land_in_the_overlay_and_persist() {
    let fx = Fixture::new();
    let before = fx.store_snapshot();
    let overlay = fx.path("disk.ovl");
    let socket = fx.export(Some(&overlay));
    // A full block, a partial block (rest from the image) and a write
    // straddling two chunks.
    let (ok, text) = qemu_io(
        &socket,
        false,
        &[
            "write -P 0xaa 0 4k",
            "write -P 0xbb 70000 100",
            "write -P 0xcc 131000 1000",
            "flush",
            "read -P 0xaa 0 4k",
            "read -P 0x01 4096 4k",
            "read -P 0x02 65536 4464",
            "read -P 0xbb 70000 100",
            "read -P 0x02 70100 60900",
            "read -P 0xcc 131000 1000",
            "read -P 0x03 132000 1000",
        ],
    );
    assert!(ok, "{text}");
    // A second server on the same overlay (a restart) sees the writes.
    let again = fx.export(Some(&overlay));
    let (ok, text) = qemu_io(
        &again,
        false,
        &["read -P 0xbb 70000 100", "read -P 0x01 8192 4k"],
    );
    assert!(ok, "{text}");
    let ovl = Overlay::open(&overlay).unwrap();
    // Blocks 0, 17 and 31..=32 (131000..132000 crosses 131072).
    assert_eq!(ovl.written_blocks(), 4);
    assert!(fx.store_snapshot() == before, "the remote store changed");
}

#[test]
fn a_corrupt_chunk_fails_only_its_reads() {
    let fx = Fixture::new();
    std::fs::write(fx.chunk_file(3), b"not a zstd frame").unwrap();
    let socket = fx.export(None);
    let (ok, text) = qemu_io(&socket, true, &["read -P 0x04 196608 4k"]);
    assert!(!ok, "a corrupt chunk was served: {text}");
    assert!(text.contains("Input/output error"), "{text}");
    // The same export goes on serving every other chunk.
    let (ok, text) = qemu_io(
        &socket,
        true,
        &[
            "read -P 0x03 131072 64k",
            "read -P 0x05 262144 4k",
            "read -P 0 327680 64k",
        ],
    );
    assert!(ok, "{text}");
}

#[test]
fn a_chunk_decompressing_to_other_content_fails_only_its_reads() {
    // The chunk file keeps its name and its frames decompress fine, but
    // to other bytes than the index's digests: the guest gets EIO, never
    // those bytes.
    let fx = Fixture::new();
    let mut wrong = vec![4u8; CHUNK];
    wrong[1000] = 0x44;
    let (stored, _) =
        circ_cas::chunk::compress_frames(circ_cas::Compression::Zstd, &wrong, 13).unwrap();
    std::fs::write(fx.chunk_file(3), stored).unwrap();
    let socket = fx.export(None);
    let (ok, text) = qemu_io(&socket, true, &["read -P 0x04 196608 4k"]);
    assert!(!ok, "a chunk with the wrong content was served: {text}");
    assert!(text.contains("Input/output error"), "{text}");
    let (ok, text) = qemu_io(&socket, true, &["read -v 196608 4k"]);
    assert!(!ok && !text.contains(" 44 "), "{text}");
    let (ok, text) = qemu_io(
        &socket,
        true,
        &["read -P 0x03 131072 64k", "read -P 0x05 262144 4k"],
    );
    assert!(ok, "{text}");
}

#[test]
fn read_only_exports_refuse_writes() {
    let fx = Fixture::new();
    let socket = fx.export(None);
    // qemu-io sees the read-only flag: it cannot open the export for
    // writing, and refuses writes when opened read-only.
    let (ok, text) = qemu_io(&socket, false, &["read 0 4k"]);
    assert!(!ok && text.contains("Permission denied"), "{text}");
    let (ok, text) = qemu_io(&socket, true, &["write -P 0xaa 0 4k"]);
    assert!(!ok, "write accepted: {text}");
    // A raw client that writes anyway gets EPERM.
    let mut c = RawClient::connect_unix(&socket);
    c.go("");
    assert_ne!(c.transmission_flags & proto::TFLAG_READ_ONLY, 0);
    assert_eq!(c.write(0, &[1u8; 512]), proto::EPERM);
    let (ok, text) = qemu_io(&socket, true, &["read -P 0x01 0 4k"]);
    assert!(ok, "{text}");
}

#[test]
fn handshake_options_and_tcp() {
    let fx = Fixture::new();
    let disk = open_disk(&fx.options(), Some(&fx.path("tcp.ovl")))
        .unwrap()
        .0;
    let server =
        NbdServer::bind_tcp("127.0.0.1:0".parse().unwrap(), Arc::new(disk), "img").unwrap();
    let endpoint = server.endpoint().unwrap();
    server.spawn();
    let addr = endpoint.strip_prefix("tcp:").unwrap().to_owned();

    let mut c = RawClient::connect_tcp(&addr);
    // LIST names the export.
    c.option(proto::OPT_LIST, &[]);
    let (kind, data) = c.reply(proto::OPT_LIST);
    assert_eq!(kind, proto::REP_SERVER);
    assert_eq!(&data[4..], b"img");
    assert_eq!(c.reply(proto::OPT_LIST).0, proto::REP_ACK);
    // LIST with data is invalid; an unknown option is unsupported.
    c.option(proto::OPT_LIST, &[0]);
    assert_eq!(c.reply(proto::OPT_LIST).0, proto::REP_ERR_INVALID);
    c.option(99, &[1, 2, 3]);
    assert_eq!(c.reply(99).0, proto::REP_ERR_UNSUP);
    c.option(proto::OPT_STARTTLS, &[]);
    assert_eq!(c.reply(proto::OPT_STARTTLS).0, proto::REP_ERR_UNSUP);
    // INFO on an unknown name, then a truncated one.
    c.option(proto::OPT_INFO, &info_payload("nope", &[]));
    assert_eq!(c.reply(proto::OPT_INFO).0, proto::REP_ERR_UNKNOWN);
    c.option(proto::OPT_INFO, &[0, 0, 0, 9, b'x']);
    assert_eq!(c.reply(proto::OPT_INFO).0, proto::REP_ERR_INVALID);
    // INFO then ABORT.
    c.option(
        proto::OPT_INFO,
        &info_payload("img", &[proto::INFO_BLOCK_SIZE]),
    );
    let (kind, data) = c.reply(proto::OPT_INFO);
    assert_eq!(kind, proto::REP_INFO);
    assert_eq!(
        u64::from_be_bytes(data[2..10].try_into().unwrap()),
        image().len() as u64
    );
    assert_eq!(c.reply(proto::OPT_INFO).0, proto::REP_INFO);
    assert_eq!(c.reply(proto::OPT_INFO).0, proto::REP_ACK);
    c.option(proto::OPT_ABORT, &[]);
    assert_eq!(c.reply(proto::OPT_ABORT).0, proto::REP_ACK);

    // Old-style EXPORT_NAME, a write, a read back, a bad command, disconnect.
    let mut c = RawClient::connect_tcp(&addr);
    c.option(proto::OPT_EXPORT_NAME, b"img");
    let mut size = [0u8; 8];
    c.read(&mut size);
    let mut flags = [0u8; 2];
    c.read(&mut flags);
    assert_eq!(u64::from_be_bytes(size), image().len() as u64);
    assert_eq!(u16::from_be_bytes(flags) & proto::TFLAG_READ_ONLY, 0);
    assert_eq!(c.write(4096, &[0x5a; 512]), 0);
    let (errno, data) = c.read_at(4096, 1024);
    assert_eq!(errno, 0);
    assert!(data[..512].iter().all(|&b| b == 0x5a) && data[512..].iter().all(|&b| b == 1));
    assert_eq!(c.request(4, 0, 0, 512, &[]).0, proto::EINVAL); // TRIM: not offered
    assert_eq!(c.read_at(image().len() as u64, 1).0, proto::EINVAL);
    assert_eq!(c.write(image().len() as u64 - 10, &[0; 20]), proto::ENOSPC);
    assert_eq!(c.request(3, 0, 0, 0, &[]).0, 0); // FLUSH
    c.send_request(2, 0, 0, 0);
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "server must close after DISC");
}

fn info_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

trait Stream: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> Stream for T {}

/// A minimal NBD client speaking the wire format directly.
struct RawClient {
    stream: Box<dyn Stream>,
    transmission_flags: u16,
}

impl RawClient {
    fn connect_unix(path: &Path) -> Self {
        Self::start(Box::new(UnixStream::connect(path).unwrap()))
    }

    fn connect_tcp(addr: &str) -> Self {
        Self::start(Box::new(TcpStream::connect(addr).unwrap()))
    }

    fn start(stream: Box<dyn Stream>) -> Self {
        let mut c = Self {
            stream,
            transmission_flags: 0,
        };
        let mut hello = [0u8; 18];
        c.read(&mut hello);
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        c.stream.write_all(&3u32.to_be_bytes()).unwrap();
        c
    }

    fn read(&mut self, buf: &mut [u8]) {
        self.stream.read_exact(buf).unwrap();
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.stream.write_all(&m).unwrap();
    }

    fn reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        let mut head = [0u8; 20];
        self.read(&mut head);
        assert_eq!(
            u64::from_be_bytes(head[..8].try_into().unwrap()),
            proto::REPLY_MAGIC
        );
        assert_eq!(u32::from_be_bytes(head[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.read(&mut data);
        (kind, data)
    }

    fn go(&mut self, name: &str) {
        self.option(proto::OPT_GO, &info_payload(name, &[]));
        loop {
            let (kind, data) = self.reply(proto::OPT_GO);
            match kind {
                proto::REP_INFO if data[..2] == [0, 0] => {
                    self.transmission_flags = u16::from_be_bytes([data[10], data[11]]);
                }
                proto::REP_ACK => return,
                other => panic!("GO answered {other:#x}"),
            }
        }
    }

    fn send_request(&mut self, cmd: u16, handle: u64, offset: u64, len: u32) {
        let mut h = proto::REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        self.stream.write_all(&h).unwrap();
    }

    /// Sends a request (with `payload` for writes); returns errno and handle.
    fn request(
        &mut self,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> (u32, u64) {
        self.send_request(cmd, handle, offset, len);
        self.stream.write_all(payload).unwrap();
        let mut r = [0u8; 16];
        self.read(&mut r);
        assert_eq!(
            u32::from_be_bytes(r[..4].try_into().unwrap()),
            proto::SIMPLE_REPLY_MAGIC
        );
        let handle_back = u64::from_be_bytes(r[8..].try_into().unwrap());
        assert_eq!(handle_back, handle);
        (u32::from_be_bytes(r[4..8].try_into().unwrap()), handle_back)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(1, 42, offset, data.len() as u32, data).0
    }

    fn read_at(&mut self, offset: u64, len: u32) -> (u32, Vec<u8>) {
        let (errno, _) = self.request(0, 43, offset, len, &[]);
        let mut data = Vec::new();
        if errno == 0 {
            data = vec![0u8; len as usize];
            self.read(&mut data);
        }
        (errno, data)
    }
}

#[test]
fn block_device_reads_match_through_any_overlay_pattern() {
    // Writes at every alignment against a plain model of the disk.
    let fx = Fixture::new();
    // Through the trait object, as any backend drives a disk.
    let disk: Arc<dyn BlockDevice> = Arc::new(
        open_disk(&fx.options(), Some(&fx.path("model.ovl")))
            .unwrap()
            .0,
    );
    let mut model = image();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for round in 0..200u64 {
        let len = 1 + next(20_000) as usize;
        let offset = next(model.len() as u64 - len as u64);
        let data: Vec<u8> = (0..len).map(|i| (round as u8) ^ (i as u8)).collect();
        disk.write_at(offset, &data).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    let mut all = vec![0u8; model.len()];
    disk.read_at(0, &mut all).unwrap();
    assert!(all == model, "disk differs from its model");
    for _ in 0..100 {
        let len = 1 + next(70_000) as usize;
        let offset = next(model.len() as u64 - len as u64) as usize;
        let mut buf = vec![0u8; len];
        disk.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == model[offset..offset + len]);
    }
}

/// A disk that is not cas-blk's: memory, with one block that fails.
#[derive(Debug)]
struct MemDisk {
    data: std::sync::Mutex<Vec<u8>>,
    bad_block: u64,
}

impl MemDisk {
    fn new(len: usize, bad_block: u64) -> Self {
        Self {
            data: std::sync::Mutex::new(vec![0u8; len]),
            bad_block,
        }
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if offset / 4096 == self.bad_block {
            return Err(DiskError::Overlay(OverlayError::Io {
                path: "mem".into(),
                source: std::io::Error::other("bad block"),
            }));
        }
        let data = self.data.lock().unwrap();
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let mut mem = self.data.lock().unwrap();
        mem[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
}

fn mem_export(fx: &Fixture, disk: &Arc<MemDisk>) -> (PathBuf, NbdServer) {
    let socket = fx.path(&format!("mem-{}.sock", rand_suffix()));
    let device: Arc<dyn BlockDevice> = Arc::clone(disk) as Arc<dyn BlockDevice>;
    let server = NbdServer::bind_unix(&socket, device, "mem").unwrap();
    (socket, server)
}

#[test]
fn any_block_device_is_served_and_its_error_kinds_become_errnos() {
    let fx = Fixture::new();
    let disk = Arc::new(MemDisk::new(64 * 1024, 3));
    let (socket, server) = mem_export(&fx, &disk);
    server.spawn();
    let (ok, text) = qemu_io(
        &socket,
        false,
        &[
            "write -P 0x61 8192 4096",
            "read -P 0x61 8192 4096",
            "read -P 0 0 4096",
        ],
    );
    assert!(ok, "{text}");
    assert!(disk.data.lock().unwrap()[8192..12288]
        .iter()
        .all(|&b| b == 0x61));
    // The device's I/O error kind reaches the client as EIO.
    let mut c = RawClient::connect_unix(&socket);
    c.go("mem");
    assert_eq!(c.read_at(3 * 4096, 512).0, proto::EIO);
    assert_eq!(c.read_at(0, 512).0, 0);
}

#[test]
fn a_stop_answers_the_requests_received_then_closes() {
    let fx = Fixture::new();
    let disk = Arc::new(MemDisk::new(64 * 1024, u64::MAX));
    let (socket, server) = mem_export(&fx, &disk);
    let stop = server.stop_handle();
    let running = server.spawn();
    let mut c = RawClient::connect_unix(&socket);
    c.go("mem");
    // Three writes sent, none answered yet, then the server is told to stop.
    for k in 0..3u64 {
        c.send_request(1, k, k * 4096, 4096);
        c.stream.write_all(&[k as u8 + 1; 4096]).unwrap();
    }
    stop.stop();
    for k in 0..3u64 {
        let mut reply = [0u8; 16];
        c.read(&mut reply);
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "errno"
        );
        assert_eq!(
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
            k,
            "handle"
        );
    }
    // Then the connection ends, and so does the server.
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the replies");
    running.join().unwrap().unwrap();
    let data = disk.data.lock().unwrap();
    for k in 0..3usize {
        assert!(data[k * 4096..(k + 1) * 4096]
            .iter()
            .all(|&b| b == k as u8 + 1));
    }
    // Nobody answers any more. (A connect may still succeed while a child
    // process that another test is starting holds a copy of the listening
    // socket until it execs; nothing is served on it.)
    if let Ok(mut late) = UnixStream::connect(&socket) {
        late.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut hello = [0u8; 8];
        assert!(
            late.read_exact(&mut hello).is_err(),
            "served after the stop"
        );
    }
}

#[test]
fn a_closed_session_has_stopped_its_threads_and_kept_its_boot_list() {
    let fx = Fixture::new();
    let session = DiskSession::open(&SessionOptions {
        open: fx.options(),
        overlay: None,
        prefetch: true,
        boot_window: std::time::Duration::from_secs(600),
    })
    .unwrap();
    let device = session.device();
    let mut buf = vec![0u8; 4096];
    device.read_at(3 * CHUNK as u64, &mut buf).unwrap();
    device.read_at(0, &mut buf).unwrap();
    drop(device);
    // Well inside the window: closing saves the list as it stands.
    session.close().unwrap();
    let lists: Vec<PathBuf> = std::fs::read_dir(fx.path("cache/indexes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "prefetch"))
        .collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
    let list = std::fs::read_to_string(&lists[0]).unwrap();
    assert!(list.ends_with("chunks 2\n3\n0\n"), "{list}");
}
