//! Chunks from HTTP mirrors of a store.
//!
//! Each fetch tries the mirrors in order of preference: healthy ones by
//! measured latency (an exponentially weighted average, untried ones first
//! so that each gets measured), then those backing off after a failure. A
//! mirror that errors, times out, lacks the chunk or serves a bad copy is
//! skipped for this fetch and backed off for the next ones.
//! Connections are kept alive and reused (ureq's pool).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::{ChunkCheck, ChunkStore, FrameCheck, StoreError};
use crate::chunk::ChunkRef;
use crate::error_chain;

/// How long a mirror's resolved addresses are reused.
const RESOLVED_TTL: Duration = Duration::from_secs(60);

/// Resolves mirror hosts without a thread per request. ureq's default
/// resolver spawns a thread for every request whenever a timeout applies
/// (ours always do), even for an IP literal and a pooled connection: 1 to
/// 3 ms per request on a loaded 2-core host, most of a small read's time.
/// IP literals are parsed here; host names go to the default resolver
/// (with its timeout) and are kept for `RESOLVED_TTL`.
#[derive(Debug, Default)]
struct MirrorResolver {
    default: DefaultResolver,
    resolved: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for MirrorResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(authority) = uri.authority() else {
            return self.default.resolve(uri, config, timeout);
        };
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = format!("{host}:{port}");
        if let Some((at, addrs)) = lock(&self.resolved).get(&key) {
            if at.elapsed() < RESOLVED_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.default.resolve(uri, config, timeout)?;
        lock(&self.resolved).insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// Weight of the newest sample in the latency average.
const EWMA_WEIGHT: f64 = 0.3;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    /// Whole-request limit: a mirror slower than this counts as failed.
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Transport(#[from] ureq::Error),
    #[error("only http:// mirrors are supported: {0}")]
    Scheme(String),
    #[error("partial reply does not match the range asked for: {0}")]
    BadRange(String),
}

/// One mirror's failure to serve a file.
#[derive(Clone, Debug)]
pub struct FetchFailure {
    pub url: String,
    pub reason: String,
    /// The mirror answered, and its answer was refused (as opposed to an
    /// outage): callers must not fall back to older copies silently.
    pub rejected: bool,
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.reason)
    }
}

/// What a mirror has done so far, for `circ cas verify` and logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MirrorStats {
    pub base: String,
    pub ok: u64,
    pub failed: u64,
    pub bad_chunks: u64,
    pub latency_ms: Option<f64>,
}

#[derive(Debug)]
struct Mirror {
    base: String,
    state: Mutex<MirrorState>,
    /// Whether the mirror answers Range requests: `RANGES_UNKNOWN` until
    /// it answered one.
    ranges: AtomicU8,
}

const RANGES_UNKNOWN: u8 = 0;
const RANGES_YES: u8 = 1;
const RANGES_NO: u8 = 2;

/// A mirror's answer to a Range request.
enum RangeReply {
    /// `206 Partial Content` of exactly the range asked for.
    Partial(Vec<u8>),
    /// `200 OK`: the whole object (the server ignores ranges).
    Whole(Vec<u8>),
}

#[derive(Debug, Default)]
struct MirrorState {
    ewma_secs: Option<f64>,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    ok: u64,
    failed: u64,
    bad_chunks: u64,
}

#[derive(Debug)]
pub struct HttpStore {
    agent: ureq::Agent,
    mirrors: Vec<Mirror>,
}

impl HttpStore {
    /// `bases` are store roots (`http://host:port/path/`), in the order of
    /// preference before any measurement.
    pub fn new(bases: &[String], config: &HttpConfig) -> Result<Self, HttpError> {
        let mut mirrors = Vec::with_capacity(bases.len());
        for base in bases {
            if !base.starts_with("http://") {
                return Err(HttpError::Scheme(base.clone()));
            }
            let base = if base.ends_with('/') {
                base.clone()
            } else {
                format!("{base}/")
            };
            mirrors.push(Mirror {
                base,
                state: Mutex::default(),
                ranges: AtomicU8::new(RANGES_UNKNOWN),
            });
        }
        let agent = ureq::Agent::with_parts(
            ureq::Agent::config_builder()
                // Never an environment proxy: only the mirrors given.
                .proxy(None)
                .http_status_as_error(false)
                .max_redirects(0)
                // Reads, read-ahead and the boot prefetch fetch in parallel:
                // keep a connection alive for each (ureq keeps 3 per host
                // by default, and opens a new one for every fetch past it).
                .max_idle_connections(64)
                .max_idle_connections_per_host(16)
                .timeout_connect(Some(config.connect_timeout))
                .timeout_global(Some(config.request_timeout))
                .user_agent(concat!("circ-cas/", env!("CARGO_PKG_VERSION")))
                .build(),
            DefaultConnector::new(),
            MirrorResolver::default(),
        );
        Ok(Self { agent, mirrors })
    }

    pub fn stats(&self) -> Vec<MirrorStats> {
        self.mirrors
            .iter()
            .map(|m| {
                let s = lock(&m.state);
                MirrorStats {
                    base: m.base.clone(),
                    ok: s.ok,
                    failed: s.failed,
                    bad_chunks: s.bad_chunks,
                    latency_ms: s.ewma_secs.map(|t| t * 1000.0),
                }
            })
            .collect()
    }

    /// Mirror indices, most preferred first.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut keyed: Vec<(bool, f64, usize)> = self
            .mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = lock(&m.state);
                let backing_off = s.backoff_until.is_some_and(|t| t > now);
                (backing_off, s.ewma_secs.unwrap_or(0.0), i)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        keyed.into_iter().map(|(_, _, i)| i).collect()
    }

    fn record_ok(&self, mirror: usize, elapsed: Duration) {
        let mut s = lock(&self.mirrors[mirror].state);
        let sample = elapsed.as_secs_f64();
        s.ewma_secs = Some(match s.ewma_secs {
            Some(avg) => avg + EWMA_WEIGHT * (sample - avg),
            None => sample,
        });
        s.consecutive_failures = 0;
        s.backoff_until = None;
        s.ok += 1;
    }

    /// Counts a failure and says whether to log it: a mirror's first ten
    /// failures, then every power-of-two-th, so a broken mirror cannot
    /// flood the logs.
    fn record_failure(&self, mirror: usize, bad_chunk: bool) -> bool {
        let mut s = lock(&self.mirrors[mirror].state);
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << s.consecutive_failures.min(10))
            .min(MAX_BACKOFF);
        s.backoff_until = Some(Instant::now() + backoff);
        s.failed += 1;
        if bad_chunk {
            s.bad_chunks += 1;
        }
        s.failed <= 10 || s.failed.is_power_of_two()
    }

    /// GETs `url` whole, refusing bodies over `limit` bytes. `Ok(None)` is 404.
    fn get(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, HttpError> {
        let mut response = self.agent.get(url).call()?;
        match response.status().as_u16() {
            200 => {}
            404 | 410 => return Ok(None),
            other => return Err(HttpError::Status(other)),
        }
        read_limited(&mut response, limit).map(Some)
    }

    /// GETs bytes `range` of `url`; a server that ignores ranges answers
    /// with the whole file (at most `whole_limit` bytes). `Ok(None)` is 404.
    fn get_range(
        &self,
        url: &str,
        range: &Range<u64>,
        whole_limit: u64,
    ) -> Result<Option<RangeReply>, HttpError> {
        let mut response = self
            .agent
            .get(url)
            .header("Range", format!("bytes={}-{}", range.start, range.end - 1))
            .call()?;
        let status = response.status().as_u16();
        let want = range.end - range.start;
        let limit = match status {
            200 => whole_limit,
            206 => {
                // Exactly the range asked for, or the reply is refused.
                let content_range = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let expected = format!("bytes {}-{}/", range.start, range.end - 1);
                if !content_range.starts_with(&expected) {
                    return Err(HttpError::BadRange(content_range.to_owned()));
                }
                want
            }
            404 | 410 => return Ok(None),
            other => return Err(HttpError::Status(other)),
        };
        let body = read_limited(&mut response, limit)?;
        if status == 206 {
            if body.len() as u64 != want {
                return Err(HttpError::BadRange(format!(
                    "{} bytes for a range of {want}",
                    body.len()
                )));
            }
            Ok(Some(RangeReply::Partial(body)))
        } else {
            Ok(Some(RangeReply::Whole(body)))
        }
    }

    /// Fetches the file at `rel` (relative to the store root) from the
    /// mirrors in order, returning the first copy `accept` takes, or every
    /// mirror's failure. For indexes: `accept` checks the signature.
    /// An optional file (`rel` under each mirror's base): the first mirror
    /// that has it, or `None`. Absence and errors are not held against a
    /// mirror: nothing needs the file.
    pub fn fetch_optional(&self, rel: &str, limit: u64) -> Option<Vec<u8>> {
        self.order().into_iter().find_map(|i| {
            let url = format!("{}{rel}", self.mirrors[i].base);
            match self.get(&url, limit) {
                Ok(found) => found,
                Err(error) => {
                    tracing::debug!(url, error = %error_chain(&error), "optional file not fetched");
                    None
                }
            }
        })
    }

    pub fn fetch_file<T, E: std::fmt::Display>(
        &self,
        rel: &str,
        limit: u64,
        accept: impl Fn(Vec<u8>) -> Result<T, E>,
    ) -> Result<T, Vec<FetchFailure>> {
        let mut failures = Vec::new();
        for i in self.order() {
            let url = format!("{}{rel}", self.mirrors[i].base);
            let started = Instant::now();
            let outcome = match self.get(&url, limit) {
                Ok(Some(bytes)) => accept(bytes).map_err(|e| (e.to_string(), true)),
                Ok(None) => Err(("not found (HTTP 404)".to_owned(), false)),
                Err(e) => Err((error_chain(&e), false)),
            };
            match outcome {
                Ok(value) => {
                    self.record_ok(i, started.elapsed());
                    return Ok(value);
                }
                Err((reason, rejected)) => {
                    if self.record_failure(i, rejected) {
                        tracing::warn!(url, reason, "mirror failed");
                    }
                    failures.push(FetchFailure {
                        url,
                        reason,
                        rejected,
                    });
                }
            }
        }
        Err(failures)
    }
}

impl ChunkStore for HttpStore {
    /// One Range request per mirror tried; a mirror that answers with the
    /// whole object is remembered and asked for whole objects from then on
    /// (the frames wanted are still taken from it and checked).
    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        let rel = chunk.path();
        let range = check.stored_range();
        let mut failures = Vec::new();
        for i in self.order() {
            let mirror = &self.mirrors[i];
            let url = format!("{}{rel}", mirror.base);
            let started = Instant::now();
            let reply = if mirror.ranges.load(Ordering::Relaxed) == RANGES_NO {
                self.get(&url, chunk.max_stored_len())
                    .map(|found| found.map(RangeReply::Whole))
            } else {
                self.get_range(&url, &range, chunk.max_stored_len())
            };
            let checked = match reply {
                Ok(Some(RangeReply::Partial(stored))) => {
                    mirror.ranges.store(RANGES_YES, Ordering::Relaxed);
                    Ok(check.check(chunk, range.start, &stored))
                }
                Ok(Some(RangeReply::Whole(stored))) => {
                    if mirror.ranges.swap(RANGES_NO, Ordering::Relaxed) != RANGES_NO {
                        tracing::info!(
                            mirror = mirror.base,
                            "mirror ignores Range requests, fetching whole chunks from it"
                        );
                    }
                    Ok(check.check(chunk, 0, &stored))
                }
                Ok(None) => Err(StoreError::NotFound {
                    chunk: chunk.id,
                    source_name: mirror.base.clone(),
                }),
                Err(error @ (HttpError::TooLarge(_) | HttpError::BadRange(_))) => {
                    if self.record_failure(i, true) {
                        tracing::warn!(chunk = %chunk.id, url, error = %error, "mirror sent a bad reply");
                    }
                    Err(StoreError::Http { url, source: error })
                }
                Err(source) => {
                    if self.record_failure(i, false) {
                        tracing::warn!(chunk = %chunk.id, url, error = %error_chain(&source), "mirror failed");
                    }
                    Err(StoreError::Http { url, source })
                }
            };
            match checked {
                Ok(Ok(plain)) => {
                    self.record_ok(i, started.elapsed());
                    return Ok(plain);
                }
                Ok(Err(source)) => {
                    if self.record_failure(i, true) {
                        tracing::warn!(chunk = %chunk.id, mirror = mirror.base, error = %source, "mirror served bad frames");
                    }
                    failures.push(StoreError::Corrupt {
                        chunk: chunk.id,
                        source_name: mirror.base.clone(),
                        source,
                    });
                }
                Err(failure) => failures.push(failure),
            }
        }
        Err(StoreError::merge(chunk.id, failures))
    }

    fn ranges_pay(&self) -> bool {
        self.mirrors
            .iter()
            .any(|m| m.ranges.load(Ordering::Relaxed) != RANGES_NO)
    }

    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        let rel = chunk.path();
        let mut failures = Vec::new();
        for i in self.order() {
            let url = format!("{}{rel}", self.mirrors[i].base);
            let started = Instant::now();
            let failure = match self.get(&url, chunk.max_stored_len()) {
                Ok(Some(stored)) => match check.check(chunk, &stored) {
                    Ok(plain) => {
                        self.record_ok(i, started.elapsed());
                        return Ok(plain);
                    }
                    Err(source) => {
                        if self.record_failure(i, true) {
                            tracing::warn!(chunk = %chunk.id, url, error = %source, "mirror served a bad chunk");
                        }
                        StoreError::Corrupt {
                            chunk: chunk.id,
                            source_name: self.mirrors[i].base.clone(),
                            source,
                        }
                    }
                },
                Ok(None) => {
                    // A mirror may lag behind; absence is not held against it.
                    StoreError::NotFound {
                        chunk: chunk.id,
                        source_name: self.mirrors[i].base.clone(),
                    }
                }
                Err(HttpError::TooLarge(limit)) => {
                    if self.record_failure(i, true) {
                        tracing::warn!(chunk = %chunk.id, url, "mirror served an oversized chunk");
                    }
                    StoreError::Corrupt {
                        chunk: chunk.id,
                        source_name: self.mirrors[i].base.clone(),
                        source: crate::chunk::ChunkError::StoredTooLarge {
                            len: limit + 1,
                            max: limit,
                        },
                    }
                }
                Err(source) => {
                    if self.record_failure(i, false) {
                        tracing::warn!(chunk = %chunk.id, url, error = %error_chain(&source), "mirror failed");
                    }
                    StoreError::Http { url, source }
                }
            };
            failures.push(failure);
        }
        Err(StoreError::merge(chunk.id, failures))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Statistics stay usable even if a thread panicked while holding them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The body of `response`, refused as [`HttpError::TooLarge`] if it is (or
/// says it is) over `limit` bytes.
fn read_limited(
    response: &mut ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, HttpError> {
    if response
        .body()
        .content_length()
        .is_some_and(|len| len > limit)
    {
        return Err(HttpError::TooLarge(limit));
    }
    // ureq's limit refuses a body of exactly `limit` bytes (it fails the
    // read that would see the end): allow one more, then check.
    match response
        .body_mut()
        .with_config()
        .limit(limit.saturating_add(1))
        .read_to_vec()
    {
        Ok(body) if body.len() as u64 <= limit => Ok(body),
        Ok(_) | Err(ureq::Error::BodyExceedsLimit(_)) => Err(HttpError::TooLarge(limit)),
        Err(e) => Err(e.into()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(resolver: &MirrorResolver, url: &str) -> Vec<SocketAddr> {
        let uri: ureq::http::Uri = url.parse().unwrap();
        let config = ureq::config::Config::default();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from_secs(5),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        resolver
            .resolve(&uri, &config, timeout)
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn ip_literals_are_parsed_and_names_resolved_once() {
        let resolver = MirrorResolver::default();
        assert_eq!(
            resolve(&resolver, "http://127.0.0.1:8080/s/"),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            resolve(&resolver, "http://[::1]/s/"),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert!(lock(&resolver.resolved).is_empty());
        let first = resolve(&resolver, "http://localhost:8080/s/");
        assert!(first
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        assert_eq!(lock(&resolver.resolved).len(), 1);
        assert_eq!(resolve(&resolver, "http://localhost:8080/other"), first);
    }
}
