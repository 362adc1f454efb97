//! [`FakeXenStore`]: an in-memory store with watches and transactions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::os_err;
use crate::{DomId, HvError, Transaction, WatchEvent, XenStore};

type Nodes = BTreeMap<String, Vec<u8>>;

#[derive(Debug)]
struct PendingTx {
    /// Store generation the transaction started from; commit fails if the
    /// store moved on (xenstored's behaviour: EAGAIN, caller retries).
    base: u64,
    nodes: Nodes,
    changed: Vec<String>,
}

#[derive(Debug, Default)]
struct Store {
    nodes: Nodes,
    generation: u64,
    watches: Vec<(String, String)>,
    events: VecDeque<WatchEvent>,
    txs: HashMap<u32, PendingTx>,
    next_tx: u32,
}

impl Store {
    fn nodes(&mut self, tx: Transaction) -> Result<&mut Nodes, HvError> {
        if tx == Transaction::NONE {
            return Ok(&mut self.nodes);
        }
        self.txs
            .get_mut(&tx.0)
            .map(|t| &mut t.nodes)
            .ok_or_else(|| os_err(format!("no transaction {}", tx.0), libc::ENOENT))
    }

    /// Record a change: fire watches now, or at commit for a transaction.
    fn changed(&mut self, tx: Transaction, path: &str) {
        if let Some(t) = self.txs.get_mut(&tx.0) {
            t.changed.push(path.to_owned());
            return;
        }
        self.generation += 1;
        self.fire(path);
    }

    fn fire(&mut self, path: &str) {
        for (watched, token) in &self.watches {
            // A watch sees changes at or below its path, and the removal of
            // an ancestor (reported with the watched path).
            let event_path = if is_at_or_below(path, watched) {
                path
            } else if is_at_or_below(watched, path) {
                watched.as_str()
            } else {
                continue;
            };
            self.events.push_back(WatchEvent {
                path: event_path.to_owned(),
                token: token.clone(),
            });
        }
    }
}

fn is_at_or_below(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || ancestor == "/"
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn check_path(path: &str) -> Result<(), HvError> {
    let ok = path.starts_with('/') && (path == "/" || !path.ends_with('/')) && !path.contains("//");
    if ok {
        Ok(())
    } else {
        Err(os_err(
            format!("invalid xenstore path {path:?}"),
            libc::EINVAL,
        ))
    }
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

/// An in-memory xenstore. `/` exists from the start.
#[derive(Debug)]
pub struct FakeXenStore {
    store: Mutex<Store>,
}

impl Default for FakeXenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeXenStore {
    pub fn new() -> Self {
        let mut store = Store {
            next_tx: 1,
            ..Store::default()
        };
        store.nodes.insert("/".into(), Vec::new());
        Self {
            store: Mutex::new(store),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl XenStore for FakeXenStore {
    fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>, HvError> {
        check_path(path)?;
        let mut store = self.lock();
        store
            .nodes(tx)?
            .get(path)
            .cloned()
            .ok_or_else(|| os_err(format!("no node {path}"), libc::ENOENT))
    }

    fn write(&self, tx: Transaction, path: &str, value: &[u8]) -> Result<(), HvError> {
        check_path(path)?;
        let mut store = self.lock();
        let nodes = store.nodes(tx)?;
        let mut ancestor = parent(path);
        while let Some(p) = ancestor {
            nodes.entry(p.to_owned()).or_default();
            ancestor = parent(p);
        }
        nodes.insert(path.to_owned(), value.to_vec());
        store.changed(tx, path);
        Ok(())
    }

    fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>, HvError> {
        check_path(path)?;
        let mut store = self.lock();
        let nodes = store.nodes(tx)?;
        if !nodes.contains_key(path) {
            return Err(os_err(format!("no node {path}"), libc::ENOENT));
        }
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        Ok(nodes
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .filter_map(|k| k.get(prefix.len()..))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }

    fn rm(&self, tx: Transaction, path: &str) -> Result<(), HvError> {
        check_path(path)?;
        let mut store = self.lock();
        let nodes = store.nodes(tx)?;
        if nodes.remove(path).is_none() {
            return Err(os_err(format!("no node {path}"), libc::ENOENT));
        }
        nodes.retain(|k, _| !is_at_or_below(k, path));
        store.changed(tx, path);
        Ok(())
    }

    fn watch(&self, path: &str, token: &str) -> Result<(), HvError> {
        let mut store = self.lock();
        store.watches.push((path.to_owned(), token.to_owned()));
        store.events.push_back(WatchEvent {
            path: path.to_owned(),
            token: token.to_owned(),
        });
        Ok(())
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<(), HvError> {
        let mut store = self.lock();
        let before = store.watches.len();
        store.watches.retain(|(p, t)| !(p == path && t == token));
        if store.watches.len() == before {
            return Err(os_err(
                format!("no watch on {path} with token {token}"),
                libc::ENOENT,
            ));
        }
        store
            .events
            .retain(|e| e.token != token || !is_at_or_below(&e.path, path));
        Ok(())
    }

    fn read_watch(&self) -> Result<WatchEvent, HvError> {
        self.lock().events.pop_front().ok_or_else(|| {
            os_err(
                "no watch event queued (the fake never blocks)",
                libc::EAGAIN,
            )
        })
    }

    fn try_read_watch(&self) -> Result<Option<WatchEvent>, HvError> {
        Ok(self.lock().events.pop_front())
    }

    fn transaction_start(&self) -> Result<Transaction, HvError> {
        let mut store = self.lock();
        let id = store.next_tx;
        store.next_tx = store.next_tx.wrapping_add(1).max(1);
        let tx = PendingTx {
            base: store.generation,
            nodes: store.nodes.clone(),
            changed: Vec::new(),
        };
        store.txs.insert(id, tx);
        Ok(Transaction(id))
    }

    fn transaction_end(&self, tx: Transaction, commit: bool) -> Result<(), HvError> {
        let mut store = self.lock();
        let pending = store
            .txs
            .remove(&tx.0)
            .ok_or_else(|| os_err(format!("no transaction {}", tx.0), libc::ENOENT))?;
        if !commit {
            return Ok(());
        }
        if pending.base != store.generation {
            return Err(os_err("transaction conflicted", libc::EAGAIN));
        }
        store.nodes = pending.nodes;
        if !pending.changed.is_empty() {
            store.generation += 1;
        }
        for path in &pending.changed {
            store.fire(path);
        }
        Ok(())
    }

    fn domain_path(&self, dom: DomId) -> Result<String, HvError> {
        Ok(format!("/local/domain/{dom}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const T0: Transaction = Transaction::NONE;

    #[test]
    fn write_read_directory_rm() {
        let xs = FakeXenStore::new();
        xs.write(T0, "/local/domain/1/name", b"a").unwrap();
        xs.write(T0, "/local/domain/2/name", b"b").unwrap();
        assert_eq!(xs.read(T0, "/local/domain/1/name").unwrap(), b"a");
        assert_eq!(
            xs.read(T0, "/local/domain/1").unwrap(),
            b"",
            "parents are created empty"
        );
        assert_eq!(xs.directory(T0, "/local/domain").unwrap(), ["1", "2"]);
        assert_eq!(xs.directory(T0, "/").unwrap(), ["local"]);
        xs.rm(T0, "/local/domain/1").unwrap();
        assert_eq!(
            xs.read(T0, "/local/domain/1/name").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(xs.directory(T0, "/local/domain").unwrap(), ["2"]);
        assert_eq!(xs.rm(T0, "/nope").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            xs.read(T0, "relative").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn watch_fires_initially_and_below_path() {
        let xs = FakeXenStore::new();
        xs.watch("/local/domain/1", "tok").unwrap();
        assert_eq!(
            xs.read_watch().unwrap(),
            WatchEvent {
                path: "/local/domain/1".into(),
                token: "tok".into()
            }
        );
        xs.write(T0, "/local/domain/1/memory/target", b"1").unwrap();
        xs.write(T0, "/local/domain/2/name", b"x").unwrap();
        assert_eq!(
            xs.read_watch().unwrap().path,
            "/local/domain/1/memory/target"
        );
        assert_eq!(xs.try_read_watch().unwrap(), None);
        assert_eq!(xs.read_watch().unwrap_err().kind(), ErrorKind::Busy);

        xs.rm(T0, "/local/domain").unwrap();
        assert_eq!(
            xs.read_watch().unwrap().path,
            "/local/domain/1",
            "ancestor removal"
        );

        xs.unwatch("/local/domain/1", "tok").unwrap();
        xs.write(T0, "/local/domain/1/x", b"").unwrap();
        assert_eq!(xs.try_read_watch().unwrap(), None);
        assert_eq!(
            xs.unwatch("/local/domain/1", "tok").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn transaction_isolates_then_commits_and_fires() {
        let xs = FakeXenStore::new();
        xs.watch("/data", "t").unwrap();
        xs.read_watch().unwrap();
        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "/data/k", b"v").unwrap();
        assert_eq!(xs.read(tx, "/data/k").unwrap(), b"v");
        assert!(
            xs.read(T0, "/data/k").is_err(),
            "invisible outside until commit"
        );
        assert_eq!(xs.try_read_watch().unwrap(), None, "no event before commit");
        xs.transaction_end(tx, true).unwrap();
        assert_eq!(xs.read(T0, "/data/k").unwrap(), b"v");
        assert_eq!(xs.read_watch().unwrap().path, "/data/k");
    }

    #[test]
    fn conflicting_transaction_fails_with_eagain_and_abort_discards() {
        let xs = FakeXenStore::new();
        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "/a", b"1").unwrap();
        xs.write(T0, "/b", b"2").unwrap();
        let err = xs.transaction_end(tx, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(xs.read(T0, "/a").is_err());

        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "/c", b"3").unwrap();
        xs.transaction_end(tx, false).unwrap();
        assert!(xs.read(T0, "/c").is_err());
        assert_eq!(
            xs.transaction_end(tx, true).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(xs.domain_path(DomId(5)).unwrap(), "/local/domain/5");
    }
}
