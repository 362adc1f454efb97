//! `circ cas ...`: content-addressed, signed disk images (cas-blk).
//!
//! Thin by design: the work lives in `circ-cas`; this module parses
//! arguments, draws progress and prints reports.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use circ_cas::chunk::{ChunkSize, Compression};
use circ_cas::client::{self, OpenOptions, PinGate, Rollback};
use circ_cas::config::ClientConfig;
use circ_cas::error_chain;
use circ_cas::keys::{self, SecretKey, VerifyingKey};
use circ_cas::nbd::NbdServer;
use circ_cas::overlay::Overlay;
use circ_cas::pack::{self, PackOptions};
use circ_cas::serve::Server;
use circ_cas::session::{DiskSession, SessionOptions};
use circ_cas::stats;
use circ_cas::store::DirStore;
use circ_cli_support::Exit;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum CasCommand {
    /// Make an ed25519 signing key: KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Cut IMAGE into chunks in STORE and publish a signed index.
    Pack {
        image: PathBuf,
        store: PathBuf,
        /// Secret key from `circ cas keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Image name (default: the image's file name).
        #[arg(long)]
        name: Option<String>,
        /// Power of two from 4K to 4M.
        #[arg(long, default_value = "256K")]
        chunk_size: ChunkSize,
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "zlib", "none"])]
        compress: String,
        /// Index format: 2 (frames compressed one by one, digested in the
        /// index, so a range of a chunk is fetched and verified alone) or 1.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
        format: u16,
        /// Format 2's frame size: a power of two from 4K to the chunk size.
        #[arg(long, default_value = "64K")]
        frame_size: ChunkSize,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Skip fsync of each new chunk (faster; a crash may lose chunks
        /// that the previous index does not name).
        #[arg(long)]
        no_sync: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve STORE over HTTP/1.1 (GET/HEAD, Range, keep-alive).
    Serve {
        store: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Write the verified image to standard output.
    Cat {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Fetch and verify every chunk; exit 3 if any has no good copy.
    Verify {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Serve the verified image as an NBD export (Unix socket or TCP);
    /// writes go to a copy-on-write overlay file. SIGTERM or SIGINT: answer
    /// the requests received, flush the overlay, exit 0.
    Nbd {
        #[command(flatten)]
        source: SourceArgs,
        /// Unix socket to listen on.
        #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
        socket: Option<PathBuf>,
        /// TCP address to listen on (port 0: any; the bound one is printed).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Export read-only: writes get EPERM.
        #[arg(long, conflicts_with = "overlay")]
        read_only: bool,
        /// Overlay file taking the writes (created if absent).
        #[arg(long, required_unless_present = "read_only")]
        overlay: Option<PathBuf>,
        /// Do not prefetch the chunks of the image's boot prefetch list.
        #[arg(long)]
        no_prefetch: bool,
        /// Record the chunks first read within this many seconds of the
        /// first read as the image's boot prefetch list, kept beside the
        /// cache's copy of the index (0: do not record).
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        boot_window: u64,
    },
    /// Turn an overlay into new chunks and a new signed index (generation + 1).
    Commit {
        overlay: PathBuf,
        /// The index the overlay was made on (URL or path).
        #[arg(long)]
        index: String,
        /// Publisher's public key, to verify that index.
        #[arg(long)]
        pubkey: PathBuf,
        /// Secret key signing the new index.
        #[arg(long)]
        key: PathBuf,
        /// Store receiving the new chunks (and the new index).
        #[arg(long)]
        store: PathBuf,
        /// Chunk cache for reading the base image.
        #[arg(long, env = "CIRC_CAS_CACHE")]
        cache: Option<PathBuf>,
        /// Write the new index here instead of STORE/indexes/NAME.cidx.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        no_sync: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deduplication table across images for several chunk sizes (LBCAS).
    Stats {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "16K,64K,256K")]
        chunk_sizes: Vec<ChunkSize>,
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "zlib", "none"])]
        compress: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SourceArgs {
    /// `http://HOST/STORE/indexes/NAME.cidx` or a local index file.
    index_url: String,
    /// Publisher's public key (KEY.pub).
    #[arg(long, env = "CIRC_CAS_PUBKEY")]
    pubkey: Option<PathBuf>,
    /// Chunk cache (untrusted: every copy is verified again).
    #[arg(long, env = "CIRC_CAS_CACHE")]
    cache: Option<PathBuf>,
    /// Anti-rollback state: the highest generation accepted per image
    /// [default: /var/lib/circular/cas].
    #[arg(long, env = "CIRC_CAS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The image asked for [default: NAME of the index URL's NAME.cidx];
    /// an index for another image is refused.
    #[arg(long)]
    image: Option<String>,
    /// Cache size limit in MiB, fixed when the cache is created (an existing
    /// cache keeps its own) [default: 4096].
    #[arg(long)]
    cache_mib: Option<u64>,
    /// Another store root serving the same chunks (repeatable).
    #[arg(long = "mirror")]
    mirrors: Vec<String>,
    /// Accept an index older than one accepted before (and record it), or
    /// go on without usable anti-rollback state.
    #[arg(long)]
    allow_rollback: bool,
    /// Parallel chunk fetches.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Settings file (TOML: pubkey, cache, cache_mib, mirrors, state_dir,
    /// image; default /etc/circular/cas.toml if it exists); the environment
    /// and flags override it.
    #[arg(long, env = "CIRC_CAS_CONFIG")]
    config: Option<PathBuf>,
    /// Serve only the index `circ measure domain` pinned for this domain's
    /// disk (target: the index location); `block-circ` passes the frontend
    /// domain's name. A disk with no pin is served unmeasured.
    #[arg(long, value_name = "DOMAIN")]
    pin_domain: Option<String>,
    /// With --pin-domain: refuse a disk that has no pin.
    #[arg(long, requires = "pin_domain")]
    require_pin: bool,
}

pub fn run(cmd: CasCommand) -> anyhow::Result<Exit> {
    match cmd {
        CasCommand::Keygen { out } => keygen(out),
        CasCommand::Pack {
            image,
            store,
            key,
            name,
            chunk_size,
            compress,
            format,
            frame_size,
            threads,
            no_sync,
            json,
        } => {
            if format == 2 && frame_size.shift() > chunk_size.shift() {
                anyhow::bail!("--frame-size {frame_size} is larger than --chunk-size {chunk_size}");
            }
            let name = match name {
                Some(name) => name,
                None => image
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .context("cannot derive a name from the image path: give --name")?,
            };
            let opts = PackOptions {
                name,
                chunk_size,
                compression: parse_compression(&compress)?,
                threads: threads.unwrap_or_else(default_threads),
                durable: !no_sync,
                frame_shift: (format == 2).then_some(frame_size.shift()),
            };
            pack_cmd(image, store, key, &opts, json)
        }
        CasCommand::Serve { store, listen } => serve(store, listen),
        CasCommand::Cat { source } => cat(source),
        CasCommand::Verify { source, json } => verify(source, json),
        CasCommand::Nbd {
            source,
            socket,
            listen,
            read_only,
            overlay,
            no_prefetch,
            boot_window,
        } => {
            debug_assert!(read_only == overlay.is_none());
            let opts = SessionOptions {
                open: open_options(&source)?,
                overlay,
                prefetch: !no_prefetch,
                boot_window: std::time::Duration::from_secs(boot_window),
            };
            nbd(&opts, socket, listen)
        }
        CasCommand::Commit {
            overlay,
            index,
            pubkey,
            key,
            store,
            cache,
            out,
            no_sync,
            json,
        } => {
            let overlay = Overlay::open(&overlay)?;
            // The overlay names its base (image and generation), checked
            // against the index: no rollback gate, nothing recorded.
            let mut opts =
                OpenOptions::new(index, keys::read_public(&pubkey)?, Rollback::Unchecked);
            opts.image = Some(overlay.base().name.clone());
            opts.cache_dir = cache;
            commit(&opts, &overlay, &key, store, out.as_deref(), !no_sync, json)
        }
        CasCommand::Stats {
            images,
            chunk_sizes,
            compress,
            json,
        } => stats_cmd(&images, &chunk_sizes, parse_compression(&compress)?, json),
    }
}

fn parse_compression(name: &str) -> anyhow::Result<Compression> {
    Ok(name.parse()?)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// A progress bar on a terminal, nothing otherwise (logs and CI stay clean).
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn keygen(out: PathBuf) -> anyhow::Result<Exit> {
    let key = SecretKey::generate()?;
    let public = key.write_pair(&out)?;
    println!(
        "secret key {} public key {} (fingerprint {})",
        out.display(),
        public.display(),
        keys::fingerprint(&key.public())
    );
    Ok(Exit::Success)
}

fn pack_cmd(
    image: PathBuf,
    store: PathBuf,
    key: PathBuf,
    opts: &PackOptions,
    json: bool,
) -> anyhow::Result<Exit> {
    let key = SecretKey::read(&key)?;
    let size = std::fs::metadata(&image)
        .with_context(|| format!("cannot read image {}", image.display()))?
        .len();
    let bar = progress_bar(size);
    let progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.inc(n);
        }
    };
    let report = pack::pack(&image, &DirStore::open(store), &key, opts, &progress)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = report.elapsed.as_secs_f64();
    let mb_per_s = report.image_size as f64 / 1e6 / secs.max(1e-9);
    if json {
        let value = serde_json::json!({
            "index": report.index_path,
            "index_sha256": report.index_sha256,
            "name": report.name,
            "generation": report.generation,
            "image_size": report.image_size,
            "chunks": report.chunks,
            "zero_chunks": report.zero_chunks,
            "unique_chunks": report.unique_chunks,
            "new_chunks": report.new_chunks,
            "new_stored_bytes": report.new_stored_bytes,
            "seconds": secs,
        });
        println!("{value}");
    } else {
        println!("index {}", report.index_path.display());
        println!("sha256 {}", report.index_sha256);
        println!(
            "{} generation {}: {} bytes in {} chunks ({} zero, {} unique), {} new chunks written ({} bytes), {:.2} s, {:.0} MB/s",
            report.name,
            report.generation,
            report.image_size,
            report.chunks,
            report.zero_chunks,
            report.unique_chunks,
            report.new_chunks,
            report.new_stored_bytes,
            secs,
            mb_per_s
        );
    }
    Ok(Exit::Success)
}

fn serve(store: PathBuf, listen: SocketAddr) -> anyhow::Result<Exit> {
    let server = Server::bind(&store, listen)
        .with_context(|| format!("cannot serve {} on {listen}", store.display()))?;
    let addr = server.local_addr()?;
    // Scripts and tests read this line to learn the port (with :0).
    println!("serving {} on http://{addr}/", store.display());
    std::io::stdout().flush()?;
    server.run()?;
    Ok(Exit::Success)
}

/// Where a client's key, state and mirrors come from, as `circ cas` and the
/// `block-circ` hotplug script resolve them: the flag or the environment,
/// else the configuration file (given, else /etc/circular/cas.toml when it
/// exists), else the defaults.
pub struct ClientSettings<'a> {
    pub config: Option<&'a Path>,
    pub pubkey: Option<&'a Path>,
    pub state_dir: Option<&'a Path>,
}

/// The configuration file read when none is given, if it exists.
const DEFAULT_CONFIG: &str = "/etc/circular/cas.toml";

impl ClientSettings<'_> {
    /// The file's settings, the publisher's key and the state directory.
    pub fn resolve(&self) -> anyhow::Result<(ClientConfig, VerifyingKey, PathBuf)> {
        let config = match self.config {
            Some(path) => ClientConfig::read(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                ClientConfig::read(Path::new(DEFAULT_CONFIG))?
            }
            None => ClientConfig::default(),
        };
        let pubkey = self
            .pubkey
            .map(Path::to_path_buf)
            .or_else(|| config.pubkey.clone())
            .context(
                "no public key: give --pubkey, CIRC_CAS_PUBKEY or `pubkey` in the configuration",
            )?;
        let public_key = keys::read_public(&pubkey)?;
        let state_dir = self
            .state_dir
            .map(Path::to_path_buf)
            .or_else(|| config.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(circ_cas::rollback::DEFAULT_STATE_DIR));
        Ok((config, public_key, state_dir))
    }
}

fn open_options(source: &SourceArgs) -> anyhow::Result<OpenOptions> {
    let (config, public_key, state_dir) = ClientSettings {
        config: source.config.as_deref(),
        pubkey: source.pubkey.as_deref(),
        state_dir: source.state_dir.as_deref(),
    }
    .resolve()?;
    let mut opts = OpenOptions::new(
        source.index_url.clone(),
        public_key,
        Rollback::gate(state_dir.clone(), source.allow_rollback),
    );
    opts.image = source.image.clone().or(config.image);
    opts.cache_dir = source.cache.clone().or(config.cache);
    opts.cache_max_bytes = source
        .cache_mib
        .or(config.cache_mib)
        .unwrap_or(4096)
        .saturating_mul(1 << 20);
    opts.mirrors = config.mirrors;
    opts.mirrors.extend(source.mirrors.iter().cloned());
    if let Some(domain) = &source.pin_domain {
        opts.pin = Some(PinGate {
            state_dir,
            domain: domain.clone(),
            required: source.require_pin,
        });
    }
    Ok(opts)
}

fn nbd(
    opts: &SessionOptions,
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<Exit> {
    let session = DiskSession::open(opts)?;
    let index = session.index();
    let (name, generation, size) = (index.name.clone(), index.generation, index.image_size);
    let server = match (socket, listen) {
        (Some(path), _) => NbdServer::bind_unix(&path, session.device(), &name)?,
        (None, Some(addr)) => NbdServer::bind_tcp(addr, session.device(), &name)?,
        (None, None) => anyhow::bail!("give --socket or --listen"),
    };
    server.stop_handle().stop_on_termination_signals()?;
    // Scripts read this line (and tests the bound port).
    println!(
        "serving {name} generation {generation} ({size} bytes, {}) on {}",
        if session.writable() {
            "read-write"
        } else {
            "read-only"
        },
        server.endpoint()?
    );
    std::io::stdout().flush()?;
    server.run()?;
    session.close()?;
    tracing::info!("NBD server stopped, disk flushed");
    Ok(Exit::Success)
}

fn commit(
    opts: &OpenOptions,
    overlay: &Overlay,
    key: &std::path::Path,
    store: PathBuf,
    out: Option<&std::path::Path>,
    durable: bool,
    json: bool,
) -> anyhow::Result<Exit> {
    let key = SecretKey::read(key)?;
    let base = client::open(opts)?;
    let report = circ_cas::commit::commit(
        overlay,
        &base.reader,
        &DirStore::open(store),
        &key,
        out,
        durable,
    )?;
    if json {
        let value = serde_json::json!({
            "index": report.index_path,
            "index_sha256": report.index_sha256,
            "name": report.name,
            "old_generation": report.old_generation,
            "generation": report.generation,
            "chunks": report.chunks,
            "changed_chunks": report.changed_chunks,
            "new_chunks": report.new_chunks,
            "new_stored_bytes": report.new_stored_bytes,
            "written_blocks": report.written_blocks,
            "seconds": report.elapsed.as_secs_f64(),
        });
        println!("{value}");
    } else {
        println!("index {}", report.index_path.display());
        println!("sha256 {}", report.index_sha256);
        println!(
            "{} generation {} -> {}: {} blocks written, {} of {} chunks changed, {} new chunks ({} bytes), {:.2} s",
            report.name,
            report.old_generation,
            report.generation,
            report.written_blocks,
            report.changed_chunks,
            report.chunks,
            report.new_chunks,
            report.new_stored_bytes,
            report.elapsed.as_secs_f64()
        );
    }
    Ok(Exit::Success)
}

fn cat(source: SourceArgs) -> anyhow::Result<Exit> {
    let image = client::open(&open_options(&source)?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    image.reader.write_all_to(&mut out, source.parallel)?;
    Ok(Exit::Success)
}

fn verify(source: SourceArgs, json: bool) -> anyhow::Result<Exit> {
    let mut opts = open_options(&source)?;
    // Verification asks the network, not the cache. The index it accepts
    // is recorded like any other: a newer generation seen raises the floor.
    opts.cache_dir = None;
    let image = client::open(&opts)?;
    let index = image.reader.index();
    let started = Instant::now();
    let bar = progress_bar(index.image_size);
    let progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.inc(n);
        }
    };
    let bad = image.reader.verify_all(source.parallel, &progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mirrors = image.http.as_ref().map(|h| h.stats()).unwrap_or_default();
    let unique = index.unique_chunks().len();
    if json {
        let value = serde_json::json!({
            "name": index.name,
            "generation": index.generation,
            "unique_chunks": unique,
            "bad_chunks": bad.iter().map(|b| serde_json::json!({
                "index": b.index, "id": b.id.to_hex(), "error": error_chain(&b.error),
            })).collect::<Vec<_>>(),
            "mirrors": mirrors.iter().map(|m| serde_json::json!({
                "base": m.base, "ok": m.ok, "failed": m.failed, "bad_chunks": m.bad_chunks,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        for b in &bad {
            println!(
                "BAD chunk {} ({}): {}",
                b.index,
                b.id,
                error_chain(&b.error)
            );
        }
        for m in &mirrors {
            println!(
                "mirror {}: {} ok, {} failed, {} bad copies",
                m.base, m.ok, m.failed, m.bad_chunks
            );
        }
        println!(
            "{} generation {}: {} unique chunks, {} bad, {:.2} s",
            index.name,
            index.generation,
            unique,
            bad.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if bad.is_empty() {
        Exit::Success
    } else {
        Exit::Refused
    })
}

fn stats_cmd(
    images: &[PathBuf],
    sizes: &[ChunkSize],
    compression: Compression,
    json: bool,
) -> anyhow::Result<Exit> {
    let mut rows = Vec::with_capacity(sizes.len());
    for &size in sizes {
        rows.push(stats::dedup_stats(images, size, compression)?);
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(Exit::Success);
    }
    println!(
        "{:>8} {:>14} {:>10} {:>10} {:>10} {:>14} {:>14} {:>7} {:>7}",
        "chunk", "input", "chunks", "zero", "unique", "unique bytes", "stored", "dedup", "total"
    );
    for (row, size) in rows.iter().zip(sizes) {
        println!(
            "{:>8} {:>14} {:>10} {:>10} {:>10} {:>14} {:>14} {:>7.2} {:>7.2}",
            size.to_string(),
            row.input_bytes,
            row.chunks,
            row.zero_chunks,
            row.unique_chunks,
            row.unique_bytes,
            row.stored_bytes,
            row.dedup_ratio,
            row.total_ratio
        );
    }
    Ok(Exit::Success)
}
