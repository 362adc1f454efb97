//! The library end to end on loopback: pack into a store, serve it with
//! the crate's own HTTP server on 127.0.0.1, read it back through
//! `VerifyingStore<CacheStore<HttpStore>>`, and break things on the way.

use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use circ_cas::chunk::ChunkId;
use circ_cas::chunk::{ChunkSize, Compression};
use circ_cas::client::{self, OpenError, OpenOptions, Rollback};
use circ_cas::index::Index;
use circ_cas::keys::SecretKey;
use circ_cas::pack::{self, PackOptions, PackReport};
use circ_cas::reader::{ImageReader, ReadError};
use circ_cas::rollback::GenerationStore;
use circ_cas::serve::{Server, ServerHandle};
use circ_cas::store::{DirStore, ErrorKind, HttpConfig, HttpStore, VerifyingStore};

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
    /// Format 2's frame shift (capped at the chunk size), or format 1.
    frame_shift: Option<u8>,
}

impl Fixture {
    /// Packs format 1.
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            key: SecretKey::generate().unwrap(),
            frame_shift: None,
        }
    }

    /// Packs format 2 with 8 KiB frames.
    fn v2() -> Self {
        Self {
            frame_shift: Some(13),
            ..Self::new()
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> DirStore {
        DirStore::open(self.path("store"))
    }

    fn pack(&self, image: &[u8], chunk_size: &str, compression: Compression) -> PackReport {
        let path = self.path("image");
        std::fs::write(&path, image).unwrap();
        let chunk_size = chunk_size.parse::<ChunkSize>().unwrap();
        let opts = PackOptions {
            name: "img".into(),
            chunk_size,
            compression,
            threads: 2,
            durable: false,
            frame_shift: self.frame_shift.map(|f| f.min(chunk_size.shift())),
        };
        pack::pack(&path, &self.store(), &self.key, &opts, &|_| {}).unwrap()
    }

    fn serve(&self, root: &Path) -> (ServerHandle, String) {
        let server = Server::bind(root, "127.0.0.1:0").unwrap().spawn().unwrap();
        let url = format!("http://{}/", server.local_addr());
        (server, url)
    }

    fn options(&self, index_url: &str) -> OpenOptions {
        let mut opts = OpenOptions::new(index_url, self.key.public(), self.rollback(false));
        opts.cache_dir = Some(self.path("cache"));
        opts
    }

    /// The anti-rollback gate on this fixture's state directory.
    fn rollback(&self, allow: bool) -> Rollback {
        Rollback::gate(self.path("state"), allow)
    }

    fn index(&self) -> Index {
        let bytes = std::fs::read(self.store().index_file("img")).unwrap();
        Index::parse_verified(&bytes, &self.key.public()).unwrap()
    }

    /// The stored file of the image's `n`th distinct chunk under `root`.
    fn chunk_file(&self, root: &Path, n: usize) -> PathBuf {
        DirStore::open(root).object_file(&self.index().unique_chunks()[n])
    }

    /// Flips a byte in the middle of the cache's plain copy (whatever the
    /// image's compression) of the image's `n`th distinct chunk.
    fn damage_cached_chunk(&self, n: usize) {
        let index = self.index();
        let chunk = index.unique_chunks()[n];
        let (data, slot) =
            circ_cas::store::cached_copy(&self.path("cache"), index.chunk_size.shift(), &chunk.id)
                .unwrap()
                .expect("the chunk is cached");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(data)
            .unwrap();
        let at = slot + u64::from(chunk.len) / 2;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
    }
}

/// Deterministic, incompressible bytes with runs of zeros (whole zero
/// chunks at small chunk sizes) and a repeated block (duplicate chunks).
fn image(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let zero_end = len.min(3 * 65_536);
    out[65_536.min(len)..zero_end].fill(0);
    if len >= 6 * 65_536 {
        let (head, tail) = out.split_at_mut(5 * 65_536);
        tail[..65_536].copy_from_slice(&head[..65_536]);
    }
    out
}

fn read_all(opts: &OpenOptions) -> Result<Vec<u8>, ReadError> {
    let opened = client::open(opts).unwrap();
    let mut out = Vec::new();
    opened.reader.write_all_to(&mut out, 3)?;
    Ok(out)
}

#[test]
fn round_trips_for_every_compression_and_odd_sizes_in_both_formats() {
    for (compression, chunk_size, len, v2) in [
        (Compression::Zstd, "64K", 7 * 65_536 + 123, false),
        (Compression::Zlib, "64K", 7 * 65_536, false),
        (Compression::None, "4K", 5 * 65_536 + 1, false),
        (Compression::Zstd, "256K", 1000, false),
        (Compression::Zstd, "4M", 0, false),
        (Compression::Zstd, "64K", 7 * 65_536 + 123, true),
        (Compression::Zlib, "64K", 7 * 65_536 + 5000, true),
        (Compression::None, "16K", 5 * 65_536 + 1, true),
        (Compression::Zstd, "256K", 1000, true),
        (Compression::Zstd, "4M", 0, true),
    ] {
        let fx = if v2 { Fixture::v2() } else { Fixture::new() };
        let data = image(len);
        let report = fx.pack(&data, chunk_size, compression);
        let (server, url) = fx.serve(&fx.path("store"));
        let opts = fx.options(&format!("{url}indexes/img.cidx"));
        assert_eq!(
            read_all(&opts).unwrap(),
            data,
            "{compression} {chunk_size} {len}"
        );
        if len > 3 * 65_536 {
            assert!(report.zero_chunks > 0, "{report:?}");
            assert!(
                report.unique_chunks < report.chunks - report.zero_chunks || chunk_size != "64K"
            );
        }
        // Byte ranges straddling chunk boundaries, through a fresh reader.
        let opened = client::open(&opts).unwrap();
        for (offset, n) in [(0usize, 1usize), (65_530, 20), (len / 2, len / 3)] {
            if offset + n <= len {
                let mut buf = vec![0xAA; n];
                opened.reader.read_at(offset as u64, &mut buf).unwrap();
                assert_eq!(buf, data[offset..offset + n]);
            }
        }
        assert!(matches!(
            opened.reader.read_at(len as u64, &mut [0u8; 1]),
            Err(ReadError::OutOfRange { .. })
        ));
        server.stop();
    }
}

#[test]
fn zero_chunks_are_neither_stored_nor_fetched() {
    let fx = Fixture::new();
    let data = vec![0u8; 4 * 65_536];
    let report = fx.pack(&data, "64K", Compression::Zstd);
    assert_eq!((report.zero_chunks, report.new_chunks), (4, 0));
    // No server at all: nothing needs fetching.
    let mut opts = fx.options(fx.store().index_file("img").to_str().unwrap());
    opts.mirrors = vec!["http://127.0.0.1:9/".into()];
    assert_eq!(read_all(&opts).unwrap(), data);
}

#[test]
fn repack_writes_only_changed_chunks_and_bumps_the_generation() {
    let fx = Fixture::new();
    let mut data = image(8 * 65_536);
    let first = fx.pack(&data, "64K", Compression::Zstd);
    assert_eq!(first.generation, 1);
    assert_eq!(first.new_chunks, first.unique_chunks);
    data[7 * 65_536 + 5] ^= 0xff;
    let second = fx.pack(&data, "64K", Compression::Zstd);
    assert_eq!(second.generation, 2);
    assert_eq!(second.new_chunks, 1);
    let third = fx.pack(&data, "64K", Compression::Zstd);
    assert_eq!((third.generation, third.new_chunks), (3, 0));
}

#[test]
fn failover_past_a_dead_mirror_and_a_corrupting_mirror() {
    let fx = Fixture::new();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    // A second copy of the store whose chunks are all damaged.
    let evil_root = fx.path("evil");
    copy_dir(&fx.path("store"), &evil_root);
    for n in 0..fx.index().unique_chunks().len() {
        flip_byte(&fx.chunk_file(&evil_root, n));
    }
    let (evil, evil_url) = fx.serve(&evil_root);
    let (good, good_url) = fx.serve(&fx.path("store"));
    let dead_url = dead_url();

    // Index and chunks: the primary is dead, the evil mirror is next.
    let mut opts = fx.options(&format!("{dead_url}indexes/img.cidx"));
    opts.cache_dir = None;
    opts.mirrors = vec![evil_url.clone(), good_url.clone()];
    assert_eq!(read_all(&opts).unwrap(), data);

    // Chunk by chunk, with the damaging mirror first in line: every read
    // is answered by the good one, and the bad copies are counted.
    let http = HttpStore::new(
        &[evil_url.clone(), good_url.clone()],
        &HttpConfig::default(),
    )
    .unwrap();
    let store = VerifyingStore::new(http);
    for chunk in fx.index().unique_chunks() {
        let plain = store.read_chunk(&chunk, None).unwrap();
        assert_eq!(ChunkId::of_trusted(&plain), chunk.id);
    }
    let stats = store.inner().stats();
    assert_eq!(
        (stats[0].base.as_str(), stats[1].base.as_str()),
        (evil_url.as_str(), good_url.as_str())
    );
    assert!(stats[0].bad_chunks >= 1, "{stats:?}");
    assert_eq!(
        stats[1].ok,
        fx.index().unique_chunks().len() as u64,
        "{stats:?}"
    );
    evil.stop();
    good.stop();
}

#[test]
fn a_chunk_bad_everywhere_fails_that_read_only() {
    let fx = Fixture::new();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let bad_file = fx.chunk_file(&fx.path("store"), 0);
    flip_byte(&bad_file);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    let opened = client::open(&opts).unwrap();
    // Chunk 0 is the damaged one; its reads fail, others still work.
    let mut buf = vec![0u8; 100];
    match opened.reader.read_at(10, &mut buf) {
        Err(ReadError::Chunk { index: 0, source }) => {
            assert_eq!(source.kind(), ErrorKind::Corrupt);
            assert!(source.to_string().contains("hash") || error_text(&source).contains("hash"));
        }
        other => panic!("expected a corrupt chunk, got {other:?}"),
    }
    assert_eq!(buf, vec![0u8; 100], "no wrong data was written");
    // A read over several chunks (fetched in parallel) fails as a whole.
    let mut wide = vec![0u8; 3 * 65_536];
    match opened.reader.read_at(100, &mut wide) {
        Err(ReadError::Chunk { index: 0, .. }) => {}
        other => panic!("expected chunk 0 to fail the read, got {other:?}"),
    }
    assert!(wide.iter().all(|&b| b == 0), "no data was written");
    // Chunks 1 to 4 (chunk 5 is a copy of chunk 0, so bad too).
    let mut rest = vec![0u8; 4 * 65_536 - 12];
    opened.reader.read_at(65_536 + 7, &mut rest).unwrap();
    assert_eq!(rest, data[65_536 + 7..5 * 65_536 - 5]);
    let mut tail = vec![0u8; 1000];
    opened.reader.read_at(7 * 65_536, &mut tail).unwrap();
    assert_eq!(tail, data[7 * 65_536..7 * 65_536 + 1000]);
    let bad = opened.reader.verify_all(2, &|_| {});
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].index, 0);
    // Nothing bad entered the cache.
    let cached = fx
        .path("cache")
        .join(circ_cas::layout::chunk_path(&bad[0].id, Compression::Zstd));
    assert!(!cached.exists());
    server.stop();
}

#[test]
fn a_wrong_key_is_refused() {
    let fx = Fixture::new();
    fx.pack(&image(65_536), "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let mut opts = fx.options(&format!("{url}indexes/img.cidx"));
    opts.public_key = SecretKey::generate().unwrap().public();
    let err = client::open(&opts).unwrap_err();
    assert!(matches!(err, OpenError::IndexUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("signature"), "{err}");
    // Local files too, with the precise error.
    let opts_local = OpenOptions::new(
        fx.store().index_file("img").to_str().unwrap(),
        opts.public_key,
        fx.rollback(false),
    );
    assert!(client::open(&opts_local)
        .unwrap_err()
        .to_string()
        .contains("index"));
    server.stop();
}

#[test]
fn rollback_is_refused_unless_allowed() {
    rollback_is_refused_unless_allowed_with(Fixture::new());
    rollback_is_refused_unless_allowed_with(Fixture::v2());
}

fn rollback_is_refused_unless_allowed_with(fx: Fixture) {
    let mut data = image(4 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let old_index = std::fs::read(fx.store().index_file("img")).unwrap();
    data[0] ^= 1;
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let index_url = format!("{url}indexes/img.cidx");
    assert_eq!(read_all(&fx.options(&index_url)).unwrap(), data);

    // The server now offers generation 1 again.
    std::fs::write(fx.store().index_file("img"), &old_index).unwrap();
    let err = client::open(&fx.options(&index_url)).unwrap_err();
    assert!(
        err.to_string()
            .contains("generation 1, older than generation 2"),
        "{err}"
    );
    let mut allow = fx.options(&index_url);
    allow.rollback = fx.rollback(true);
    let opened = client::open(&allow).unwrap();
    assert_eq!(opened.reader.index().generation, 1);
    server.stop();
}

#[test]
fn an_index_is_trusted_only_for_the_image_asked_for() {
    let fx = Fixture::new();
    let data = image(4 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    // The store answers `other`'s URL with `img`'s index, validly signed.
    std::fs::copy(fx.store().index_file("img"), fx.store().index_file("other")).unwrap();
    let (server, url) = fx.serve(&fx.path("store"));
    let other_url = format!("{url}indexes/other.cidx");
    let err = client::open(&fx.options(&other_url)).unwrap_err();
    assert!(
        error_text(&err).contains("index is for image `img`, but image `other` was asked for"),
        "{}",
        error_text(&err)
    );
    let state = GenerationStore::new(&fx.path("state"));
    assert_eq!(state.highest("img").unwrap(), None, "nothing recorded");
    // Named explicitly, that URL serves `img`.
    let mut named = fx.options(&other_url);
    named.image = Some("img".into());
    assert_eq!(read_all(&named).unwrap(), data);

    // A mirror answering `img`'s URL with another image (same key) is
    // passed over for the next one.
    let evil = DirStore::open(fx.path("evil"));
    std::fs::write(fx.path("image2"), image(65_536)).unwrap();
    let opts2 = PackOptions {
        name: "other".into(),
        chunk_size: "64K".parse().unwrap(),
        compression: Compression::Zstd,
        threads: 1,
        durable: false,
        frame_shift: fx.frame_shift,
    };
    pack::pack(&fx.path("image2"), &evil, &fx.key, &opts2, &|_| {}).unwrap();
    std::fs::rename(evil.index_file("other"), evil.index_file("img")).unwrap();
    let (evil_server, evil_url) = fx.serve(&fx.path("evil"));
    let mut opts = fx.options(&format!("{evil_url}indexes/img.cidx"));
    opts.cache_dir = None;
    let err = client::open(&opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("index is for image `other`, but image `img` was asked for"),
        "{err}"
    );
    opts.mirrors = vec![url.clone()];
    assert_eq!(read_all(&opts).unwrap(), data);

    // A local copy under another name: the precise error.
    let local = fx.store().index_file("other");
    let err = client::open(&fx.options(local.to_str().unwrap())).unwrap_err();
    assert!(
        matches!(&err, OpenError::OtherImage { asked, found, .. } if asked == "other" && found == "img"),
        "{err:?}"
    );
    // A location that names no image, and no name given: refused before
    // anything is fetched.
    let err = client::open(&fx.options(&format!("{url}indexes/img"))).unwrap_err();
    assert!(matches!(err, OpenError::UnknownImage { .. }), "{err:?}");
    assert!(err.to_string().contains("--image"), "{err}");
    server.stop();
    evil_server.stop();
}

#[test]
fn rollback_state_is_kept_without_a_cache_and_fails_closed() {
    let fx = Fixture::new();
    let mut data = image(4 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let old_index = std::fs::read(fx.store().index_file("img")).unwrap();
    let old_data = data.clone();
    data[0] ^= 1;
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let index_url = format!("{url}indexes/img.cidx");
    let mut opts = fx.options(&index_url);
    opts.cache_dir = None;
    assert_eq!(read_all(&opts).unwrap(), data);
    assert!(!fx.path("cache").exists(), "no cache involved");
    std::fs::write(fx.store().index_file("img"), &old_index).unwrap();
    let err = client::open(&opts).unwrap_err();
    assert!(err.to_string().contains("rollback refused"), "{err}");

    // State that cannot be used: refused, unless a rollback is allowed.
    let blocked = fx.path("blocked");
    std::fs::write(&blocked, "").unwrap();
    opts.rollback = Rollback::gate(blocked.clone(), false);
    let err = client::open(&opts).unwrap_err();
    assert!(
        error_text(&err).contains("cannot use the anti-rollback state"),
        "{}",
        error_text(&err)
    );
    opts.rollback = Rollback::gate(blocked, true);
    assert_eq!(read_all(&opts).unwrap(), old_data);
    server.stop();
}

#[test]
fn reads_work_offline_from_the_cache() {
    let fx = Fixture::new();
    let data = image(6 * 65_536 + 7);
    fx.pack(&data, "64K", Compression::Zlib);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    assert_eq!(read_all(&opts).unwrap(), data);
    server.stop();
    // Index from the cache's copy, chunks from the cache.
    let opened = client::open(&opts).unwrap();
    assert!(
        opened.index_source.starts_with("cache"),
        "{}",
        opened.index_source
    );
    let mut out = Vec::new();
    opened.reader.write_all_to(&mut out, 2).unwrap();
    assert_eq!(out, data);
}

#[test]
fn a_tampered_cache_entry_is_refetched() {
    let fx = Fixture::new();
    let data = image(4 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    assert_eq!(read_all(&opts).unwrap(), data);
    fx.damage_cached_chunk(0);
    assert_eq!(read_all(&opts).unwrap(), data);
    server.stop();
    // The bad copy was replaced by a good one: offline reads still work.
    assert_eq!(read_all(&opts).unwrap(), data);
}

#[test]
fn a_cache_file_changed_after_verification_is_caught() {
    let fx = Fixture::new();
    let data = image(16 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    let index = fx.index();
    let target = index.unique_chunks()[0].id;
    let pos = first_position(&index, target);
    let block = pos * 65_536 + 32_768; // flip_byte flips the middle
    let read = |reader: &ImageReader<_>, offset: usize| {
        let mut buf = vec![0u8; 4096];
        reader.read_at(offset as u64, &mut buf).map(|()| buf)
    };
    let expect = |offset: usize| &data[offset..offset + 4096];

    let opened = client::open(&opts).unwrap();
    let reader = &opened.reader;
    // Every block once: each chunk is verified and cached; the last eight
    // stay decoded in memory.
    for offset in (0..data.len()).step_by(4096) {
        assert_eq!(read(reader, offset).unwrap(), expect(offset));
    }
    let before = reader.stats();
    assert_eq!(read(reader, block).unwrap(), expect(block));
    assert_eq!(reader.stats().verified, before.verified + 1);

    // Tampered after verification: the block's digest catches it, the
    // chunk is fetched again and the read is right.
    fx.damage_cached_chunk(0);
    assert_eq!(read(reader, block).unwrap(), expect(block));
    assert_eq!(reader.stats().fetched, before.fetched + 1);

    // A restarted reader verifies from the cache; then the network goes and
    // the copy is tampered with: an error, never wrong data. (Reads of other
    // chunks first push the chunk out of memory.)
    let opened = client::open(&opts).unwrap();
    let reader = &opened.reader;
    assert_eq!(read(reader, block).unwrap(), expect(block));
    for i in (0..16).filter(|&i| i != pos) {
        assert_eq!(read(reader, i * 65_536).unwrap(), expect(i * 65_536));
    }
    server.stop();
    fx.damage_cached_chunk(0);
    match read(reader, block) {
        Ok(got) => panic!("read returned {} bytes of a tampered chunk", got.len()),
        Err(error) => assert!(
            error_text(&error).contains(&target.to_hex()),
            "{}",
            error_text(&error)
        ),
    }
}

#[test]
fn prefetched_chunks_are_read_without_fetching_and_the_trace_keeps_read_order() {
    let fx = Fixture::new();
    let data = image(16 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opened = client::open(&fx.options(&format!("{url}indexes/img.cidx"))).unwrap();
    let reader = &opened.reader;
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Twice the same position, and every other position: all-zero and
    // duplicate chunks are fetched at most once.
    let positions: Vec<u32> = [5u32, 5].into_iter().chain(0..16).collect();
    let report = reader.prefetch(&positions, 3, &stop);
    let unique = fx.index().unique_chunks().len() as u64;
    assert_eq!(report.fetched, unique, "{report:?}");
    assert_eq!(report.failed, 0);
    server.stop();
    for &offset in &[9 * 65_536 + 4096, 5 * 65_536, 0] {
        let mut buf = vec![0u8; 8192];
        reader.read_at(offset as u64, &mut buf).unwrap();
        assert_eq!(buf, data[offset..offset + 8192]);
    }
    assert_eq!(reader.stats().fetched, 0, "{:?}", reader.stats());
    // Prefetching is not reading: the trace holds the reads, in order, each
    // position once (all-zero chunks are never fetched, so never listed).
    let index = fx.index();
    let expected: Vec<u32> = [9u32, 5, 0]
        .into_iter()
        .filter(|&i| index.chunks[i as usize].is_some())
        .collect();
    assert_eq!(
        reader.boot_trace(std::time::Duration::from_secs(60)),
        expected
    );
}

#[test]
fn sequential_reads_are_fetched_ahead() {
    let fx = Fixture::new();
    let data = image(64 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opened = client::open(&fx.options(&format!("{url}indexes/img.cidx"))).unwrap();
    let reader = &opened.reader;
    let read = |offset: usize| {
        let mut buf = vec![0u8; 131_072];
        reader.read_at(offset as u64, &mut buf).map(|()| buf)
    };
    // Two reads in a row make a stream: the next 1 MiB (chunks 4 to 19,
    // the smallest window) is fetched ahead, but for chunk 5, which
    // repeats chunk 0, verified already.
    assert_eq!(read(0).unwrap(), data[..131_072]);
    assert_eq!(read(131_072).unwrap(), data[131_072..262_144]);
    reader.settle_read_ahead();
    assert_eq!(reader.stats().ahead_fetched, 15, "{:?}", reader.stats());
    // With the server gone, the window reads from memory alone.
    server.stop();
    let before = reader.stats();
    for offset in (262_144..262_144 + 1_048_576).step_by(131_072) {
        assert_eq!(read(offset).unwrap(), data[offset..offset + 131_072]);
    }
    let after = reader.stats();
    assert_eq!(after.fetched, before.fetched, "{after:?}");
    assert_eq!(after.ahead, before.ahead + 15, "{after:?}");
    assert_eq!(after.verified, before.verified + 1, "{after:?}");
    // Past the window, reads fail (no server) and say why.
    reader.settle_read_ahead();
    let past = 262_144 + 1_048_576 + 16 * 65_536 + 65_536;
    assert!(read(past).is_err());
}

#[test]
fn v2_small_reads_fetch_their_frames_and_a_bad_frame_fails_over() {
    let fx = Fixture::v2();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    assert_eq!(fx.index().version(), 2);
    // A mirror whose objects each have a byte flipped mid-file (inside
    // some frame), listed first.
    let evil_root = fx.path("evil");
    copy_dir(&fx.path("store"), &evil_root);
    for n in 0..fx.index().unique_chunks().len() {
        flip_byte(&fx.chunk_file(&evil_root, n));
    }
    let (evil, evil_url) = fx.serve(&evil_root);
    let (good, good_url) = fx.serve(&fx.path("store"));
    let mut opts = fx.options(&format!("{good_url}indexes/img.cidx"));
    opts.cache_dir = None;
    opts.mirrors = vec![evil_url.clone()];
    let opened = client::open(&opts).unwrap();
    // Every 4 KiB block of the image, out of order: each read is one Range
    // of one 8 KiB frame; a bad frame from a mirror sends that read to the
    // other mirror, never to the guest.
    let blocks = data.len() / 4096;
    for k in (0..blocks).map(|k| (k * 7) % blocks) {
        let mut buf = vec![0u8; 4096];
        opened.reader.read_at((k * 4096) as u64, &mut buf).unwrap();
        assert!(buf == data[k * 4096..(k + 1) * 4096], "block {k}");
    }
    let stats = opened.reader.stats();
    assert!(stats.partial > 0 && stats.fetched == 0, "{stats:?}");
    let mirrors = opened.http.as_ref().unwrap().stats();
    let evil_stats = mirrors.iter().find(|m| m.base == evil_url).unwrap();
    assert!(evil_stats.bad_chunks >= 1, "{mirrors:?}");
    good.stop();

    // Only the damaging mirror left: a read of a damaged frame is an
    // error naming the chunk, and the buffer is untouched.
    let index = fx.index();
    let damaged = (0..index.chunk_count())
        .find(|&i| index.chunks[i].is_some())
        .unwrap();
    // flip_byte flips the middle of the object: in the chunk's middle frame.
    let frames = index.chunk_frames(&index.chunks[damaged].unwrap()).unwrap();
    let middle = frames.stored_total() / 2;
    let frame = (0..frames.count())
        .find(|&f| frames.stored_range(f..f + 1).contains(&middle))
        .unwrap();
    let opened = client::open(&{
        let mut o = fx.options(&format!("{evil_url}indexes/img.cidx"));
        o.cache_dir = None;
        o
    })
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let offset = damaged * 65_536 + frame * 8192;
    match opened.reader.read_at(offset as u64, &mut buf) {
        Err(ReadError::Chunk { source, .. }) => assert_eq!(source.kind(), ErrorKind::Corrupt),
        other => panic!("expected a corrupt frame, got {other:?}"),
    }
    assert!(buf.iter().all(|&b| b == 0), "no wrong data was written");
    evil.stop();
}

/// A static HTTP/1.0 server without Range support (as python's
/// http.server): every GET gets the whole file, then the connection closes.
fn serve_without_ranges(root: PathBuf) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = match std::fs::read(root.join(path.trim_start_matches('/'))) {
                Ok(body) => stream
                    .write_all(
                        format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&body)),
                Err(_) => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    (url, requests)
}

#[test]
fn v2_falls_back_to_whole_chunks_without_range_support() {
    let fx = Fixture::v2();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (url, requests) = serve_without_ranges(fx.path("store"));
    let opened = client::open(&fx.options(&format!("{url}indexes/img.cidx"))).unwrap();
    let reader = &opened.reader;
    let read = |offset: usize| {
        let mut buf = vec![0u8; 4096];
        reader.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == data[offset..offset + 4096], "offset {offset}");
    };
    // The first small read asks for a range, gets the whole object, takes
    // its frame from it (verified); later reads ask for whole chunks,
    // which are verified whole, cached and kept in memory.
    read(4 * 65_536 + 8192);
    assert_eq!(reader.stats().partial, 1);
    read(3 * 65_536 + 4096);
    read(3 * 65_536 + 40_960);
    let stats = reader.stats();
    assert_eq!((stats.partial, stats.fetched), (1, 1), "{stats:?}");
    assert_eq!(stats.memory, 1, "{stats:?}");
    // The index, the published boot list (absent), then two objects.
    assert_eq!(requests.load(std::sync::atomic::Ordering::Relaxed), 4);
    let mut out = Vec::new();
    reader.write_all_to(&mut out, 2).unwrap();
    assert_eq!(out, data);
}

#[test]
fn v2_a_damaged_cached_copy_is_replaced_not_worked_around() {
    // Every chunk in the cache, then a new reader on it.
    let (fx, data, server, opts) = cached_v2_image();
    let opened = client::open(&opts).unwrap();
    let reader = &opened.reader;
    let index = fx.index();
    let id = index.unique_chunks()[0].id;
    let pos = first_position(&index, id);
    // flip_byte flips the middle of the file: the first byte of frame 4.
    fx.damage_cached_chunk(0);
    let read = |offset: usize| {
        let mut buf = vec![0u8; 4096];
        reader.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == data[offset..offset + 4096], "offset {offset}");
    };
    let damaged = pos * 65_536 + 32_768;
    read(damaged);
    let stats = reader.stats();
    // Fetched whole (the cache dropped its bad copy and kept the new one),
    // not by frames from the network with the bad copy left in place.
    assert_eq!((stats.fetched, stats.partial), (1, 0), "{stats:?}");
    server.stop();
    // Offline, a new reader: the block comes from the new cached copy.
    let again = client::open(&opts).unwrap();
    let mut buf = vec![0u8; 4096];
    again.reader.read_at(damaged as u64, &mut buf).unwrap();
    assert!(buf == data[damaged..damaged + 4096]);
    assert_eq!(
        again.reader.stats().verified,
        1,
        "{:?}",
        again.reader.stats()
    );
}

#[test]
fn cache_stays_within_its_budget() {
    let fx = Fixture::new();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::None);
    let (server, url) = fx.serve(&fx.path("store"));
    let mut opts = fx.options(&format!("{url}indexes/img.cidx"));
    opts.cache_max_bytes = 3 * 65_536;
    assert_eq!(read_all(&opts).unwrap(), data);
    // The pack never grows past its slots, however many chunks pass.
    let pack = std::fs::metadata(fx.path("cache/pack-16.data")).unwrap();
    assert_eq!(pack.len(), 3 * 65_536);
    assert!(
        pack.blocks() * 512 <= 3 * 65_536 && pack.blocks() > 0,
        "{}",
        pack.blocks()
    );
    let table = std::fs::read(fx.path("cache/pack-16.table")).unwrap();
    assert_eq!(table.len(), 4096 + 3 * 64);
    // A second reader (another process, as far as the pack is concerned)
    // with a larger budget keeps the size the pack was made with, and
    // reads through it.
    opts.cache_max_bytes = 64 * 65_536;
    assert_eq!(read_all(&opts).unwrap(), data);
    assert_eq!(
        std::fs::metadata(fx.path("cache/pack-16.data"))
            .unwrap()
            .len(),
        3 * 65_536
    );
    server.stop();
}

#[test]
fn truncated_and_malformed_indexes_are_clear_errors() {
    let fx = Fixture::new();
    fx.pack(&image(4 * 65_536), "64K", Compression::Zstd);
    let path = fx.store().index_file("img");
    let good = std::fs::read(&path).unwrap();
    let open_local = || {
        client::open(&OpenOptions::new(
            path.to_str().unwrap(),
            fx.key.public(),
            fx.rollback(false),
        ))
        .unwrap_err()
        .to_string()
    };
    let cases: [(Vec<u8>, &str); 4] = [
        (good[..good.len() - 10].to_vec(), "truncated"),
        (b"<html>not found</html>".to_vec(), "bad magic"),
        (Vec::new(), "truncated"),
        ([good.as_slice(), b"junk"].concat(), "trailing"),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let message = error_text(
            &client::open(&OpenOptions::new(
                path.to_str().unwrap(),
                fx.key.public(),
                fx.rollback(false),
            ))
            .unwrap_err(),
        );
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(open_local().starts_with("index"), "{}", open_local());
    }
}

fn dead_url() -> String {
    // Bind then drop: the port is closed, connections are refused at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for file in walk(from) {
        let dest = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The used entries of a cache table: (offset of the entry, chunk id bytes).
fn table_entries(table: &[u8]) -> Vec<(usize, [u8; 20])> {
    (4096..table.len())
        .step_by(64)
        .filter(|&at| table[at] == 1)
        .map(|at| (at, table[at + 8..at + 28].try_into().unwrap()))
        .collect()
}

#[test]
fn a_cache_table_pointing_chunks_at_each_others_copies_never_gives_wrong_data() {
    for fx in [Fixture::new(), Fixture::v2()] {
        let data = image(8 * 65_536);
        fx.pack(&data, "64K", Compression::Zstd);
        let (server, url) = fx.serve(&fx.path("store"));
        let opts = fx.options(&format!("{url}indexes/img.cidx"));
        assert_eq!(read_all(&opts).unwrap(), data);
        // Every entry now names the next one's chunk: each slot holds
        // another chunk's bytes under the name a read looks for.
        let table_path = fx.path("cache/pack-16.table");
        let mut table = std::fs::read(&table_path).unwrap();
        let entries = table_entries(&table);
        assert!(entries.len() > 2, "{}", entries.len());
        for (k, (at, _)) in entries.iter().enumerate() {
            let next = entries[(k + 1) % entries.len()].1;
            table[at + 8..at + 28].copy_from_slice(&next);
        }
        std::fs::write(&table_path, &table).unwrap();
        // Online: every bad copy is caught and fetched again.
        let opened = client::open(&opts).unwrap();
        for offset in (0..data.len()).step_by(4096) {
            let mut buf = vec![0u8; 4096];
            opened.reader.read_at(offset as u64, &mut buf).unwrap();
            assert!(buf == data[offset..offset + 4096], "offset {offset}");
        }
        drop(opened);
        std::fs::write(&table_path, &table).unwrap();
        server.stop();
        // Offline: each read is right or an error, never other bytes.
        let opened = client::open(&opts).unwrap();
        let mut failed = 0;
        for offset in (0..data.len()).step_by(4096) {
            let mut buf = vec![0u8; 4096];
            match opened.reader.read_at(offset as u64, &mut buf) {
                Ok(()) => assert!(buf == data[offset..offset + 4096], "offset {offset}"),
                Err(_) => failed += 1,
            }
        }
        assert!(failed > 0, "the scrambled copies cannot all have been read");
    }
}

#[test]
fn v2_frames_fetched_alone_are_cached_for_the_next_reader() {
    let fx = Fixture::v2();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    // A block of each of three distinct chunks.
    let index = fx.index();
    let offsets: Vec<usize> = index.unique_chunks()[..3]
        .iter()
        .zip([8192, 40_960, 0])
        .map(|(chunk, within)| {
            let pos = first_position(&index, chunk.id);
            pos * 65_536 + within
        })
        .collect();
    let opened = client::open(&opts).unwrap();
    for &offset in &offsets {
        let mut buf = vec![0u8; 4096];
        opened.reader.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == data[offset..offset + 4096]);
    }
    assert_eq!(
        opened.reader.stats().partial,
        3,
        "{:?}",
        opened.reader.stats()
    );
    drop(opened);
    server.stop();
    // A new reader, offline: the same blocks from the cache's frames; a
    // frame that was never fetched is an error, not zeros from the slot.
    let opened = client::open(&opts).unwrap();
    for &offset in &offsets {
        let mut buf = vec![0u8; 4096];
        opened.reader.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == data[offset..offset + 4096], "offset {offset}");
    }
    assert_eq!(
        opened.reader.stats().verified,
        3,
        "{:?}",
        opened.reader.stats()
    );
    let mut buf = vec![0u8; 4096];
    assert!(opened
        .reader
        .read_at((offsets[0] + 32_768) as u64, &mut buf)
        .is_err());
}

#[test]
fn a_file_per_chunk_cache_is_moved_into_the_pack() {
    let fx = Fixture::new();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    // An online open leaves the index's copy in the cache; then the cache
    // is replaced by one of the older layout: a plain file per chunk, the
    // first of them damaged.
    assert_eq!(read_all(&opts).unwrap(), data);
    server.stop();
    for pack in ["pack-16.table", "pack-16.data"] {
        std::fs::remove_file(fx.path("cache").join(pack)).unwrap();
    }
    let index = fx.index();
    let mut first = None;
    for i in 0..index.chunk_count() {
        let Some(id) = index.chunks[i] else { continue };
        let mut plain = data[i * 65_536..(i + 1) * 65_536].to_vec();
        if first.is_none() {
            first = Some(id);
            plain[100] ^= 1;
        }
        let path = DirStore::open(fx.path("cache")).chunk_file(&id, Compression::None);
        if path.exists() {
            continue; // a repeated chunk
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, plain).unwrap();
    }
    let opened = client::open(&opts).unwrap();
    assert!(!fx.path("cache/chunks").exists(), "old files removed");
    let mut bad = 0;
    for i in 0..index.chunk_count() {
        let mut buf = vec![0u8; 65_536];
        match opened.reader.read_at((i * 65_536) as u64, &mut buf) {
            Ok(()) => assert!(buf == data[i * 65_536..(i + 1) * 65_536], "chunk {i}"),
            Err(error) => {
                assert_eq!(index.chunks[i], first, "{}", error_text(&error));
                bad += 1;
            }
        }
    }
    assert!(bad > 0, "the damaged copy was not served");
}

#[test]
fn v2_blocks_of_a_checked_frame_are_checked_alone_and_still_caught() {
    let (fx, data, server, opts) = cached_v2_image();
    let opened = client::open(&opts).unwrap();
    let reader = &opened.reader;
    let index = fx.index();
    let pos = first_position(&index, index.unique_chunks()[0].id);
    // 8 KiB frames: frame 4 of the chunk holds blocks `damaged` (its first,
    // where damage_cached_chunk flips a byte) and `other`.
    let damaged = pos * 65_536 + 32_768;
    let other = damaged + 4096;
    let read = |offset: usize| {
        let mut buf = vec![0u8; 4096];
        reader.read_at(offset as u64, &mut buf).unwrap();
        assert!(buf == data[offset..offset + 4096], "offset {offset}");
    };
    read(other); // the frame is checked whole, its blocks' digests kept
    read(other); // the block alone
    assert_eq!(reader.stats().verified, 2, "{:?}", reader.stats());
    fx.damage_cached_chunk(0);
    read(other);
    assert_eq!(reader.stats().fetched, 0, "an undamaged block reads on");
    read(damaged);
    assert_eq!(
        reader.stats().fetched,
        1,
        "the damaged block is caught: {:?}",
        reader.stats()
    );
    server.stop();
}

/// The first position of chunk `id` in the image.
fn first_position(index: &Index, id: ChunkId) -> usize {
    (0..index.chunk_count())
        .find(|&i| index.chunks[i] == Some(id))
        .unwrap()
}

/// A format-2 image of eight 64 KiB chunks (8 KiB frames), served, every
/// chunk in the fixture's cache.
fn cached_v2_image() -> (Fixture, Vec<u8>, ServerHandle, OpenOptions) {
    let fx = Fixture::v2();
    let data = image(8 * 65_536);
    fx.pack(&data, "64K", Compression::Zstd);
    let (server, url) = fx.serve(&fx.path("store"));
    let opts = fx.options(&format!("{url}indexes/img.cidx"));
    assert_eq!(read_all(&opts).unwrap(), data);
    (fx, data, server, opts)
}
