//! Typed results and arguments of the file operations: locations, entries,
//! tags and extension storage. The calls themselves are methods of
//! [`crate::Library`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Operation names, exactly as a manifest's `permissions.methods` must grant them.
pub mod methods {
    /// Register a directory and index it (needs an explicit grant: this exact name).
    pub const LOCATIONS_ADD: &str = "action:locations.add.input.v1";
    /// Every location of the library.
    pub const LOCATIONS_LIST: &str = "query:locations.list.v1";
    /// Index a location again.
    pub const LOCATIONS_RESCAN: &str = "action:locations.rescan.input.v1";
    /// Forget a location and its entries.
    pub const LOCATIONS_REMOVE: &str = "action:locations.remove.input.v1";
    /// One page of entries.
    pub const ENTRIES_LIST: &str = "query:entries.list.v1";
    /// One entry with its tags.
    pub const ENTRIES_GET: &str = "query:entries.get.v1";
    /// Bytes of a file entry (needs an explicit grant: this exact name).
    pub const ENTRIES_READ: &str = "query:entries.read.v1";
    /// Full-content BLAKE3 of file entries (needs an explicit grant: this exact name).
    pub const ENTRIES_CONTENT_HASH: &str = "query:entries.content_hash.v1";
    /// Create a tag (idempotent by name).
    pub const TAGS_CREATE: &str = "action:tags.create.input.v1";
    /// Every tag.
    pub const TAGS_LIST: &str = "query:tags.list.v1";
    /// Put a tag on entries.
    pub const TAGS_APPLY: &str = "action:tags.apply.input.v1";
    /// Take a tag off entries.
    pub const TAGS_REMOVE: &str = "action:tags.remove.input.v1";
    /// Delete a tag.
    pub const TAGS_DELETE: &str = "action:tags.delete.input.v1";
    /// Store a JSON value in the extension's own storage.
    pub const STORAGE_SET: &str = "action:extension_storage.set.input.v1";
    /// Read a value from the extension's own storage.
    pub const STORAGE_GET: &str = "query:extension_storage.get.v1";
    /// List keys of the extension's own storage.
    pub const STORAGE_LIST: &str = "query:extension_storage.list.v1";
    /// Delete a key of the extension's own storage.
    pub const STORAGE_DELETE: &str = "action:extension_storage.delete.input.v1";
}

/// Largest `length` one [`crate::Library::read_entry`] call may ask for (1 MiB).
pub const MAX_READ: u32 = 1024 * 1024;

/// A directory registered in a library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Location id (per library).
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Absolute path of the root on the host.
    pub path: String,
    /// Unix time it was added.
    pub created_at: f64,
    /// Unix time its last index finished, if any.
    pub indexed_at: Option<f64>,
    /// Number of entries stored.
    pub entries: u64,
    /// Its last indexer job.
    pub index_job_id: Option<String>,
    /// That job's status (`queued`, `running`, `completed`, ...).
    pub index_status: Option<String>,
}

/// Result of [`crate::Library::add_location`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddedLocation {
    /// The new location.
    pub location: Location,
    /// The indexer job started for it.
    pub job_id: String,
}

/// Result of [`crate::Library::rescan_location`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rescan {
    /// The location.
    pub location_id: i64,
    /// The indexer job.
    pub job_id: String,
    /// `true` if that job was already queued or running.
    pub already_running: bool,
}

/// What an entry is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by the indexer or by reads).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One indexed file, directory or link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Entry id (per library); survives renames and moves the indexer recognises.
    pub id: i64,
    /// Its location.
    pub location_id: i64,
    /// Path relative to the location root, `/`-separated.
    pub path: String,
    /// Relative path of its directory (`""` at the top of the location).
    pub parent: String,
    /// File name.
    pub name: String,
    /// Lower-case extension without the dot (`""` for none).
    pub extension: String,
    /// What it is.
    pub kind: EntryKind,
    /// Bytes (0 for directories).
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: f64,
    /// Inode number.
    pub inode: u64,
    /// Content id (16 hex digits, see ABI.md), once computed.
    pub cas_id: Option<String>,
    /// Device number: `(dev, inode)` names one file (hard links share it).
    #[serde(default)]
    pub dev: u64,
}

/// An entry with its tags ([`crate::Library::entry`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryDetail {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Names of its tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Sort order of [`EntryQuery`] (keyset pagination follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryOrder {
    /// By id (the default).
    Id,
    /// By size, then id: files of equal size come together.
    Size,
}

/// A tag by id or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagRef {
    /// Tag id.
    Id(i64),
    /// Tag name.
    Name(String),
}

impl From<i64> for TagRef {
    fn from(id: i64) -> Self {
        TagRef::Id(id)
    }
}

impl From<&str> for TagRef {
    fn from(name: &str) -> Self {
        TagRef::Name(name.to_string())
    }
}

impl From<String> for TagRef {
    fn from(name: String) -> Self {
        TagRef::Name(name)
    }
}

/// Filters of `query:entries.list.v1`; every one given must match. Build with
/// `EntryQuery::default()` and the builder methods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryQuery {
    /// Only this location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_id: Option<i64>,
    /// Only children of this relative directory (needs `location_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Only this extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntryKind>,
    /// Only entries with this tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagRef>,
    /// Only entries with this content id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas_id: Option<String>,
    /// Only entries of at least this many bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// Sort order (default by id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<EntryOrder>,
    /// Continue after this cursor (from [`EntryPage::next_cursor`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl EntryQuery {
    /// Only entries of `location_id`.
    pub fn location(mut self, location_id: i64) -> Self {
        self.location_id = Some(location_id);
        self
    }
    /// Only children of `parent` (relative; `""` = top level).
    pub fn parent(mut self, parent: &str) -> Self {
        self.parent = Some(parent.to_string());
        self
    }
    /// Only this extension (lower case, no dot).
    pub fn extension(mut self, extension: &str) -> Self {
        self.extension = Some(extension.to_string());
        self
    }
    /// Only this kind.
    pub fn kind(mut self, kind: EntryKind) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Only entries with this tag.
    pub fn tag(mut self, tag: impl Into<TagRef>) -> Self {
        self.tag = Some(tag.into());
        self
    }
    /// Only entries with this content id.
    pub fn cas_id(mut self, cas_id: &str) -> Self {
        self.cas_id = Some(cas_id.to_string());
        self
    }
    /// Only entries of at least `bytes`.
    pub fn min_size(mut self, bytes: u64) -> Self {
        self.min_size = Some(bytes);
        self
    }
    /// Sort order.
    pub fn order(mut self, order: EntryOrder) -> Self {
        self.order = Some(order);
        self
    }
    /// Page size (1..=1000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Continue after `cursor` (`None` = from the start).
    pub fn cursor(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// One page of entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryPage {
    /// The entries, in the query's order.
    pub entries: Vec<Entry>,
    /// Pass back as the query's cursor for the next page; `None` = last page.
    pub next_cursor: Option<String>,
}

/// Bytes of a file entry ([`crate::Library::read_entry`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FileChunk {
    /// The entry.
    pub entry_id: i64,
    /// Where the bytes start.
    pub offset: u64,
    /// The bytes (fewer than asked only at end of file).
    pub data: Vec<u8>,
    /// The file's size when it was read.
    pub size: u64,
    /// `true` if the chunk reaches the end of the file.
    pub eof: bool,
}

/// Largest number of entries one [`crate::Library::content_hashes`] call takes.
pub const MAX_HASH_ENTRIES: usize = 1000;

/// Why the host gave no hash for an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashError {
    /// Host error code (-32006 gone, -32007 changed since indexing / unreadable / not a file).
    pub code: i64,
    /// What happened, naming the file.
    pub message: String,
}

/// The full-content hash of one entry ([`crate::Library::content_hashes`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentHash {
    /// The entry.
    pub entry_id: i64,
    /// BLAKE3 of the whole content, 64 hex digits; `None` with `error`.
    pub hash: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file: `(dev, inode)` is one file, whatever its names.
    pub inode: u64,
    /// `true` if the host had it cached and read nothing.
    pub cached: bool,
    /// Why there is no hash.
    #[serde(default)]
    pub error: Option<HashError>,
}

/// Result of [`crate::Library::content_hashes`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashResult {
    /// One per requested entry, in order.
    pub hashes: Vec<ContentHash>,
    /// Bytes the host read for this call (0 when all were cached).
    pub bytes_read: u64,
}

/// The wire form of [`FileChunk`]: `data` is base64.
#[derive(Deserialize)]
pub(crate) struct RawChunk {
    pub entry_id: i64,
    pub offset: u64,
    pub size: u64,
    pub eof: bool,
    pub data: String,
}

/// A tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    /// Tag id (per library).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Optional colour.
    pub color: Option<String>,
    /// Unix time it was created.
    pub created_at: f64,
    /// Number of entries with it.
    pub entries: u64,
    /// From `create` only: `Some(false)` if the tag already existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

/// Result of [`crate::Library::apply_tag`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagApplied {
    /// The tag.
    pub tag_id: i64,
    /// New links (entries that already had the tag are not counted).
    pub applied: u64,
    /// Ids that are not entries of the library.
    pub unknown: Vec<i64>,
}

/// Result of [`crate::Library::remove_tag`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRemoved {
    /// The tag.
    pub tag_id: i64,
    /// Links removed.
    pub removed: u64,
}

/// A key of the extension's storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key.
    pub key: String,
    /// Size of its JSON value in bytes.
    pub bytes: u64,
    /// Unix time of the last write.
    pub updated_at: f64,
}

/// One page of keys ([`crate::Library::storage_keys`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyPage {
    /// Keys in order.
    pub keys: Vec<KeyInfo>,
    /// Pass back as `cursor` for the next page; `None` = last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct StoredValue {
    pub found: bool,
    #[serde(default)]
    pub value: Value,
}

/// Decodes standard base64 (with or without padding). `None` on bad input.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        out.push((acc >> 16) as u8);
        if chunk.len() > 2 {
            out.push((acc >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("AP8A/w==").unwrap(), vec![0, 255, 0, 255]);
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn query_json() {
        let q = EntryQuery::default().location(3).kind(EntryKind::File).tag("duplicate").order(EntryOrder::Size).limit(50);
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"location_id": 3, "kind": "file", "tag": "duplicate", "order": "size", "limit": 50})
        );
        let e: EntryDetail = serde_json::from_value(serde_json::json!({
            "id": 1, "location_id": 2, "path": "a/b.txt", "parent": "a", "name": "b.txt",
            "extension": "txt", "kind": "file", "size": 5, "mtime": 1.5, "inode": 9,
            "cas_id": null, "tags": ["x"]})).unwrap();
        assert_eq!(e.entry.kind, EntryKind::File);
        assert_eq!(e.tags, vec!["x".to_string()]);
    }
}
