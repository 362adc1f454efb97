//! The [`XenStore`] trait: the subset of libxenstore's client API the
//! daemons use, with the same transaction and watch semantics.

use crate::{DomId, HvError};

/// A xenstore transaction id; [`Transaction::NONE`] means "outside any
/// transaction" (`XBT_NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transaction(pub u32);

impl Transaction {
    pub const NONE: Transaction = Transaction(0);
}

/// A fired watch: the path that changed (a descendant of, or equal to, the
/// watched path) and the token given to [`XenStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// A xenstore connection.
///
/// As in libxenstore: registering a watch queues one event for the watched
/// path at once, a watch fires for changes to the path and everything below
/// it, and committing a transaction fails with `ErrorKind::Busy` (EAGAIN)
/// when it conflicted; the caller then restarts the whole transaction.
pub trait XenStore {
    /// Value of a node; `ErrorKind::NotFound` if it does not exist.
    fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>, HvError>;

    /// Create or overwrite a node (parents are created as needed).
    fn write(&self, tx: Transaction, path: &str, value: &[u8]) -> Result<(), HvError>;

    /// Names (not paths) of a node's children.
    fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>, HvError>;

    /// Remove a node and everything below it.
    fn rm(&self, tx: Transaction, path: &str) -> Result<(), HvError>;

    fn watch(&self, path: &str, token: &str) -> Result<(), HvError>;

    fn unwatch(&self, path: &str, token: &str) -> Result<(), HvError>;

    /// Next watch event, blocking until one arrives.
    fn read_watch(&self) -> Result<WatchEvent, HvError>;

    /// Next watch event if one is already queued.
    fn try_read_watch(&self) -> Result<Option<WatchEvent>, HvError>;

    fn transaction_start(&self) -> Result<Transaction, HvError>;

    /// Commit (`commit == true`) or abort the transaction.
    fn transaction_end(&self, tx: Transaction, commit: bool) -> Result<(), HvError>;

    /// `/local/domain/<domid>` as the store daemon reports it.
    fn domain_path(&self, dom: DomId) -> Result<String, HvError>;

    /// [`read`](Self::read) as text; invalid UTF-8 is replaced, since node
    /// values a guest writes are arbitrary bytes.
    fn read_string(&self, tx: Transaction, path: &str) -> Result<String, HvError> {
        self.read(tx, path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}
