//! Opening a published image: fetch the index (from the primary location,
//! then the mirrors, then the cache's copy if the network is gone), check
//! its signature, that it is the image asked for (named by the location's
//! `NAME.cidx` or given), and its generation against the anti-rollback
//! state, and stack the stores to read its chunks:
//!
//! ```text
//! VerifyingStore< CacheStore?< DirStore | HttpStore(primary + mirrors)
//!                              | Fallback<DirStore, HttpStore(mirrors)> > >
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use sha2::Digest as _;

use crate::index::{Index, IndexError};
use crate::layout;
use crate::pin::{PinError, PinStore};
use crate::prefetch;
use crate::reader::ImageReader;
use crate::rollback::{GenerationStore, RollbackError};

use crate::store::{
    self, CacheStore, ChunkStore, DirStore, Fallback, FetchFailure, HttpConfig, HttpError,
    HttpStore, VerifyingStore,
};

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// `http://.../indexes/NAME.cidx` or a local path to an index file.
    pub index_location: String,
    pub public_key: VerifyingKey,
    /// The image asked for; `None`: the NAME of the location's `NAME.cidx`.
    /// An index for any other image is refused.
    pub image: Option<String>,
    /// Chunk cache (untrusted: every copy in it is verified again).
    pub cache_dir: Option<PathBuf>,
    pub cache_max_bytes: u64,
    /// Extra store roots (`http://host/store/`) serving the same chunks.
    pub mirrors: Vec<String>,
    pub rollback: Rollback,
    /// The measured-boot gate: serve only the index pinned for this disk.
    pub pin: Option<PinGate>,
    /// Read the cached copy of the index if no location can serve it.
    pub offline_index: bool,
    pub http: HttpConfig,
}

/// Which pin an open must satisfy ([`crate::pin`]): the one `circ measure
/// domain` wrote for `domain`'s disk whose target is the index location.
#[derive(Clone, Debug)]
pub struct PinGate {
    pub state_dir: PathBuf,
    /// The frontend domain's name.
    pub domain: String,
    /// Refuse a disk that has no pin (it was never measured); otherwise it
    /// is served as an unmeasured disk, with a log line saying so.
    pub required: bool,
}

impl PinGate {
    /// Refuses an index other than the pinned one (or, when required, a
    /// disk with no pin).
    fn check(&self, target: &str, served_sha256: &[u8; 32]) -> Result<(), PinError> {
        match PinStore::new(&self.state_dir).read(&self.domain, target)? {
            Some(pin) => pin.check(served_sha256),
            None if self.required => Err(PinError::Missing {
                domain: self.domain.clone(),
                target: target.to_owned(),
            }),
            None => {
                tracing::info!(
                    domain = self.domain,
                    target,
                    "no pin: the disk is served unmeasured"
                );
                Ok(())
            }
        }
    }
}

/// The anti-rollback gate of one open ([`crate::rollback`]).
#[derive(Clone, Debug)]
pub enum Rollback {
    /// Refuse a generation below the highest recorded for the image in
    /// the state directory, and record each accepted one. State that
    /// cannot be used fails the open.
    Refuse { state_dir: PathBuf },
    /// Accept any generation and record it (an older one lowers the
    /// record: the operator's choice sticks); unusable state is logged.
    Allow { state_dir: PathBuf },
    /// Neither check nor record: for a caller that names the exact base it
    /// works on (`commit`: the overlay names its base's generation).
    Unchecked,
}

impl Rollback {
    /// `Allow` if `allow_rollback`, else `Refuse`, on `state_dir`.
    pub fn gate(state_dir: PathBuf, allow_rollback: bool) -> Self {
        if allow_rollback {
            Self::Allow { state_dir }
        } else {
            Self::Refuse { state_dir }
        }
    }
}

impl OpenOptions {
    pub fn new(
        index_location: impl Into<String>,
        public_key: VerifyingKey,
        rollback: Rollback,
    ) -> Self {
        Self {
            index_location: index_location.into(),
            public_key,
            image: None,
            cache_dir: None,
            cache_max_bytes: 4 << 30,
            mirrors: Vec::new(),
            rollback,
            pin: None,
            offline_index: true,
            http: HttpConfig::default(),
        }
    }

    /// The image asked for: given, or else named by the location.
    pub fn image_name(&self) -> Result<&str, OpenError> {
        match &self.image {
            Some(name) => Ok(name),
            None => {
                layout::image_name_of(&self.index_location).ok_or_else(|| OpenError::UnknownImage {
                    location: self.index_location.clone(),
                })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot tell which image {location} is: its file name is not NAME.{ext} \
         (name the image: --image, or `image` in the configuration)",
        ext = layout::INDEX_EXT
    )]
    UnknownImage { location: String },
    #[error("image name `{name}` is not valid: {reason}")]
    BadImageName { name: String, reason: String },
    #[error("index {location}")]
    Index {
        location: String,
        #[source]
        source: IndexError,
    },
    #[error("index {location} is for image `{found}`, but image `{asked}` was asked for")]
    OtherImage {
        location: String,
        asked: String,
        found: String,
    },
    #[error("cannot read index {location}")]
    IndexIo {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no location could serve a valid index: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    IndexUnavailable(Vec<FetchFailure>),
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("invalid mirror")]
    Mirror(#[source] HttpError),
    #[error("cannot open the chunk cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a copy of the index was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("index is for image `{found}`, but image `{asked}` was asked for")]
    OtherImage { asked: String, found: String },
}

/// An index as fetched and verified: signed by the publisher's key and for
/// the image asked for. Its generation is not checked here ([`open`] does).
#[derive(Debug)]
pub struct VerifiedIndex {
    pub index: Index,
    /// The exact bytes verified: what a measurement or a pin hashes.
    pub bytes: Vec<u8>,
    /// Where it came from (a location, or the cache's copy).
    pub source: String,
}

impl VerifiedIndex {
    /// SHA-256 of the index file, as `circ cas pack` prints it.
    pub fn sha256(&self) -> [u8; 32] {
        sha2::Sha256::digest(&self.bytes).into()
    }
}

/// An image ready to read.
#[derive(Debug)]
pub struct OpenedImage {
    pub reader: ImageReader<Box<dyn ChunkStore>>,
    /// The HTTP layer, for its mirror statistics.
    pub http: Option<Arc<HttpStore>>,
    /// Where the index came from (a location, or the cache's copy).
    pub index_source: String,
    /// SHA-256 of the index file served.
    pub index_sha256: [u8; 32],
    /// The boot prefetch list found for the image, if any, and where this
    /// run's list is to be recorded.
    pub boot: BootFiles,
}

/// A boot prefetch list ([`crate::prefetch`]) and where to record the next.
#[derive(Debug, Default)]
pub struct BootFiles {
    /// Chunk positions, and where they came from.
    pub list: Option<(Vec<u32>, String)>,
    /// Beside the cache's copy of the index (no cache: nowhere).
    pub record_to: Option<PathBuf>,
}

fn is_http(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// The HTTP layer for the location and the mirrors (none for a local
/// index without mirrors).
fn http_store(opts: &OpenOptions) -> Result<Option<Arc<HttpStore>>, OpenError> {
    let mut bases: Vec<String> = Vec::new();
    if is_http(&opts.index_location) {
        bases.push(layout::store_root_of(&opts.index_location));
    }
    bases.extend(opts.mirrors.iter().cloned());
    if bases.is_empty() {
        return Ok(None);
    }
    let http = HttpStore::new(&bases, &opts.http).map_err(OpenError::Mirror)?;
    Ok(Some(Arc::new(http)))
}

/// Fetches the index at `opts` and verifies it (signature, image asked
/// for), without the generation check or any other state: the exact bytes
/// [`open`] would serve, for a caller that measures or pins them.
pub fn fetch_verified_index(opts: &OpenOptions) -> Result<VerifiedIndex, OpenError> {
    let http = http_store(opts)?;
    fetch_index(opts, http.as_deref())
}

/// Opens the image at `opts`: the index fetched and verified, its
/// generation accepted by the anti-rollback gate, the stores stacked.
pub fn open(opts: &OpenOptions) -> Result<OpenedImage, OpenError> {
    let location = opts.index_location.as_str();
    let root = layout::store_root_of(location);
    let http = http_store(opts)?;
    let verified = fetch_index(opts, http.as_deref())?;
    let index_sha256 = verified.sha256();
    let VerifiedIndex {
        index,
        bytes: index_bytes,
        source: index_source,
    } = verified;
    if let Some(gate) = &opts.pin {
        gate.check(location, &index_sha256)?;
    }
    match &opts.rollback {
        Rollback::Refuse { state_dir } => {
            GenerationStore::new(state_dir).accept(&index.name, index.generation, false)?;
        }
        Rollback::Allow { state_dir } => {
            GenerationStore::new(state_dir).accept(&index.name, index.generation, true)?;
        }
        Rollback::Unchecked => {}
    }
    if let Some(cache_dir) = &opts.cache_dir {
        // Keep the accepted index for offline use; best effort.
        let copy = store::cache::index_copy_path(cache_dir, location);
        let saved = copy
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| store::dir::write_atomic(&copy, &index_bytes, false));
        if let Err(error) = saved {
            tracing::warn!(path = %copy.display(), %error, "cannot keep a copy of the index");
        }
    }

    let source: Box<dyn ChunkStore> = match (&http, is_http(location)) {
        (Some(http), true) => Box::new(Arc::clone(http)),
        (Some(http), false) => Box::new(Fallback::new(DirStore::open(&root), Arc::clone(http))),
        (None, _) => Box::new(DirStore::open(&root)),
    };
    let source: Box<dyn ChunkStore> = match &opts.cache_dir {
        Some(dir) => Box::new(
            CacheStore::open(dir, opts.cache_max_bytes, index.chunk_size.shift(), source).map_err(
                |source| OpenError::Cache {
                    path: dir.clone(),
                    source,
                },
            )?,
        ),
        None => source,
    };
    tracing::info!(
        name = index.name,
        generation = index.generation,
        size = index.image_size,
        sha256 = crate::hex::encode(&index_sha256),
        from = index_source,
        "index accepted"
    );
    let boot = boot_files(opts, &index, &root, http.as_deref());
    Ok(OpenedImage {
        reader: ImageReader::new(Arc::new(index), VerifyingStore::new(source)),
        http,
        index_source,
        index_sha256,
        boot,
    })
}

/// Finds the image's boot prefetch list: the one this cache recorded, else
/// one published beside the index. A list that does not parse is ignored
/// with a warning: it is only a hint.
fn boot_files(
    opts: &OpenOptions,
    index: &Index,
    root: &str,
    http: Option<&HttpStore>,
) -> BootFiles {
    let limit = prefetch::max_len(index) as u64;
    let record_to = opts
        .cache_dir
        .as_deref()
        .map(|dir| prefetch::local_path(dir, &opts.index_location));
    let published = prefetch::published_path(&index.name);
    let mut candidates: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    if let Some(path) = &record_to {
        let bytes = store::dir::read_bounded(path, limit).ok().flatten();
        candidates.push((path.display().to_string(), bytes));
    }
    if is_http(&opts.index_location) || !opts.mirrors.is_empty() {
        if let Some(http) = http {
            candidates.push((
                format!("{published} on the server"),
                http.fetch_optional(&published, limit),
            ));
        }
    } else {
        let path = std::path::Path::new(root).join(&published);
        let bytes = store::dir::read_bounded(&path, limit).ok().flatten();
        candidates.push((path.display().to_string(), bytes));
    }
    let list = candidates.into_iter().find_map(|(from, bytes)| {
        let parsed = prefetch::parse(&bytes?, index);
        match parsed {
            Ok(positions) => Some((positions, from)),
            Err(error) => {
                tracing::warn!(list = from, %error, "ignoring the boot prefetch list");
                None
            }
        }
    });
    BootFiles { list, record_to }
}

fn fetch_index(opts: &OpenOptions, http: Option<&HttpStore>) -> Result<VerifiedIndex, OpenError> {
    let location = opts.index_location.as_str();
    // Known before anything is fetched: an index is only ever trusted for
    // the image asked for.
    let asked = opts.image_name()?;
    layout::validate_name(asked).map_err(|reason| OpenError::BadImageName {
        name: asked.to_owned(),
        reason,
    })?;
    let parse = |bytes: Vec<u8>| -> Result<(Index, Vec<u8>), Refusal> {
        let index = Index::parse_verified(&bytes, &opts.public_key)?;
        if index.name != asked {
            return Err(Refusal::OtherImage {
                asked: asked.to_owned(),
                found: index.name,
            });
        }
        Ok((index, bytes))
    };
    // A file the operator pointed at (or the cache's copy): its errors are
    // reported as they are.
    let parse_file = |bytes: Vec<u8>, at: &str| {
        parse(bytes).map_err(|refusal| match refusal {
            Refusal::Index(source) => OpenError::Index {
                location: at.to_owned(),
                source,
            },
            Refusal::OtherImage { asked, found } => OpenError::OtherImage {
                location: at.to_owned(),
                asked,
                found,
            },
        })
    };
    let verified = |(index, bytes): (Index, Vec<u8>), source: String| VerifiedIndex {
        index,
        bytes,
        source,
    };
    let mut failures = Vec::new();
    if !is_http(location) {
        match read_index_file(location) {
            Ok(bytes) => {
                let parsed = parse_file(bytes, location)?;
                return Ok(verified(parsed, location.to_owned()));
            }
            Err(source) if http.is_none() => {
                return Err(OpenError::IndexIo {
                    location: location.to_owned(),
                    source,
                })
            }
            Err(e) => failures.push(FetchFailure {
                url: location.to_owned(),
                reason: e.to_string(),
                rejected: false,
            }),
        }
    }
    if let Some(http) = http {
        let (_, rel) = layout::split_index_location(location);
        match http.fetch_file(&rel, Index::MAX_ENCODED_LEN, parse) {
            Ok(parsed) => return Ok(verified(parsed, location.to_owned())),
            Err(mut more) => failures.append(&mut more),
        }
    }
    // Only an outage falls back to the cached copy: a server that answered
    // with a bad index is reported, not papered over.
    let answered_badly = failures.iter().any(|f| f.rejected);
    if let (Some(cache_dir), true, false) = (&opts.cache_dir, opts.offline_index, answered_badly) {
        let copy = store::cache::index_copy_path(cache_dir, location);
        if let Ok(bytes) = read_index_file(&copy.to_string_lossy()) {
            let at = copy.display().to_string();
            let parsed = parse_file(bytes, &at)?;
            tracing::warn!(location, "index unreachable, using the cached copy");
            return Ok(verified(parsed, format!("cache ({at})")));
        }
    }
    Err(OpenError::IndexUnavailable(failures))
}

fn read_index_file(path: &str) -> std::io::Result<Vec<u8>> {
    store::dir::read_bounded(std::path::Path::new(path), Index::MAX_ENCODED_LEN)?
        .ok_or_else(|| std::io::Error::other("file is larger than any valid index"))
}
