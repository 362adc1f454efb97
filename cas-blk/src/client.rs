//! Opening a published image: fetch the index (from the primary location,
//! then the mirrors, then the cache's copy if the network is gone), check
//! its signature and generation, and stack the stores to read its chunks:
//!
//! ```text
//! VerifyingStore< CacheStore?< DirStore | HttpStore(primary + mirrors)
//!                              | Fallback<DirStore, HttpStore(mirrors)> > >
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

use crate::index::{IndexError, IndexV1};
use crate::layout;
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
    /// Chunk cache and anti-rollback state. Without it there is no
    /// rollback protection across runs (callers should always give one).
    pub cache_dir: Option<PathBuf>,
    pub cache_max_bytes: u64,
    /// Extra store roots (`http://host/store/`) serving the same chunks.
    pub mirrors: Vec<String>,
    pub allow_rollback: bool,
    /// Remember this index's generation as the highest accepted.
    pub record_generation: bool,
    /// Read the cached copy of the index if no location can serve it.
    pub offline_index: bool,
    pub http: HttpConfig,
}

impl OpenOptions {
    pub fn new(index_location: impl Into<String>, public_key: VerifyingKey) -> Self {
        Self {
            index_location: index_location.into(),
            public_key,
            cache_dir: None,
            cache_max_bytes: 4 << 30,
            mirrors: Vec::new(),
            allow_rollback: false,
            record_generation: true,
            offline_index: true,
            http: HttpConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("index {location}")]
    Index {
        location: String,
        #[source]
        source: IndexError,
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
    #[error("invalid mirror")]
    Mirror(#[source] HttpError),
    #[error("cannot open the chunk cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An image ready to read.
#[derive(Debug)]
pub struct OpenedImage {
    pub reader: ImageReader<Box<dyn ChunkStore>>,
    /// The HTTP layer, for its mirror statistics.
    pub http: Option<Arc<HttpStore>>,
    /// Where the index came from (a location, or the cache's copy).
    pub index_source: String,
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

pub fn open(opts: &OpenOptions) -> Result<OpenedImage, OpenError> {
    let location = opts.index_location.as_str();
    let (root, rel) = layout::split_index_location(location);
    let mut http_bases: Vec<String> = Vec::new();
    if is_http(location) {
        http_bases.push(root.clone());
    }
    http_bases.extend(opts.mirrors.iter().cloned());
    let http = if http_bases.is_empty() {
        None
    } else {
        Some(Arc::new(
            HttpStore::new(&http_bases, &opts.http).map_err(OpenError::Mirror)?,
        ))
    };

    let (index, index_bytes, index_source) = fetch_index(opts, &rel, http.as_deref())?;
    let rollback = opts.cache_dir.as_deref().map(GenerationStore::new);
    if let Some(rollback) = &rollback {
        rollback.check(&index.name, index.generation, opts.allow_rollback)?;
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
    if let (Some(rollback), true) = (&rollback, opts.record_generation) {
        rollback.record(&index.name, index.generation)?;
    }

    let source: Box<dyn ChunkStore> = match (&http, is_http(location)) {
        (Some(http), true) => Box::new(Arc::clone(http)),
        (Some(http), false) => Box::new(Fallback::new(DirStore::open(&root), Arc::clone(http))),
        (None, _) => Box::new(DirStore::open(&root)),
    };
    let source: Box<dyn ChunkStore> = match &opts.cache_dir {
        Some(dir) => Box::new(CacheStore::open(dir, opts.cache_max_bytes, source).map_err(
            |source| OpenError::Cache {
                path: dir.clone(),
                source,
            },
        )?),
        None => source,
    };
    tracing::info!(
        name = index.name,
        generation = index.generation,
        size = index.image_size,
        from = index_source,
        "index accepted"
    );
    let boot = boot_files(opts, &index, &root, http.as_deref());
    Ok(OpenedImage {
        reader: ImageReader::new(Arc::new(index), VerifyingStore::new(source)),
        http,
        index_source,
        boot,
    })
}

/// Finds the image's boot prefetch list: the one this cache recorded, else
/// one published beside the index. A list that does not parse is ignored
/// with a warning: it is only a hint.
fn boot_files(
    opts: &OpenOptions,
    index: &IndexV1,
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

fn fetch_index(
    opts: &OpenOptions,
    rel: &str,
    http: Option<&HttpStore>,
) -> Result<(IndexV1, Vec<u8>, String), OpenError> {
    let location = opts.index_location.as_str();
    let parse = |bytes: Vec<u8>| -> Result<(IndexV1, Vec<u8>), IndexError> {
        let index = IndexV1::parse_verified(&bytes, &opts.public_key)?;
        Ok((index, bytes))
    };
    let mut failures = Vec::new();
    if !is_http(location) {
        match read_index_file(location) {
            Ok(bytes) => {
                // A local index is what the operator pointed at: its errors
                // are reported as they are.
                let (index, bytes) = parse(bytes).map_err(|source| OpenError::Index {
                    location: location.to_owned(),
                    source,
                })?;
                return Ok((index, bytes, location.to_owned()));
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
        match http.fetch_file(rel, IndexV1::MAX_ENCODED_LEN, parse) {
            Ok((index, bytes)) => return Ok((index, bytes, location.to_owned())),
            Err(mut more) => failures.append(&mut more),
        }
    }
    // Only an outage falls back to the cached copy: a server that answered
    // with a bad index is reported, not papered over.
    let answered_badly = failures.iter().any(|f| f.rejected);
    if let (Some(cache_dir), true, false) = (&opts.cache_dir, opts.offline_index, answered_badly) {
        let copy = store::cache::index_copy_path(cache_dir, location);
        if let Ok(bytes) = read_index_file(&copy.to_string_lossy()) {
            let (index, bytes) = parse(bytes).map_err(|source| OpenError::Index {
                location: copy.display().to_string(),
                source,
            })?;
            tracing::warn!(location, "index unreachable, using the cached copy");
            return Ok((index, bytes, format!("cache ({})", copy.display())));
        }
    }
    Err(OpenError::IndexUnavailable(failures))
}

fn read_index_file(path: &str) -> std::io::Result<Vec<u8>> {
    store::dir::read_bounded(std::path::Path::new(path), IndexV1::MAX_ENCODED_LEN)?
        .ok_or_else(|| std::io::Error::other("file is larger than any valid index"))
}
