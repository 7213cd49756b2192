//! [`Library`]: typed calls of the file operations, scoped to one library.
//!
//! Every method is one `spacedrive_call`, so the manifest's
//! `permissions.methods` (see [`crate::files::methods`]), its library list and
//! its rate limit apply. Extension storage is always the calling extension's
//! own: the host picks the namespace from the caller, not from the payload.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::files::{
    base64_decode, methods, AddedLocation, Entry, EntryDetail, EntryPage, EntryQuery, FileChunk,
    HashResult, KeyPage, Location, RawChunk, Rescan, StoredValue, Tag, TagApplied, TagRef,
    TagRemoved,
};
use crate::types::{CallError, Uuid};

/// A library the extension works on (usually [`crate::JobContext::library`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Library {
    id: Uuid,
}

impl Library {
    /// A handle on library `id`.
    pub fn new(id: Uuid) -> Self {
        Library { id }
    }

    /// The library's id.
    pub fn id(&self) -> &Uuid {
        &self.id
    }

    fn call<T: Serialize + ?Sized, R: DeserializeOwned>(&self, method: &str, payload: &T) -> Result<R, CallError> {
        crate::call(method, Some(&self.id), payload)
    }

    // --- locations -----------------------------------------------------------------------------

    /// `action:locations.add.input.v1`: registers the absolute directory
    /// `path` and starts indexing it. Needs the exact name granted.
    pub fn add_location(&self, path: &str) -> Result<AddedLocation, CallError> {
        self.call(methods::LOCATIONS_ADD, &json!({ "path": path }))
    }

    /// `query:locations.list.v1`.
    pub fn locations(&self) -> Result<Vec<Location>, CallError> {
        self.call(methods::LOCATIONS_LIST, &json!({}))
    }

    /// `action:locations.rescan.input.v1`: indexes a location again.
    pub fn rescan_location(&self, location_id: i64) -> Result<Rescan, CallError> {
        self.call(methods::LOCATIONS_RESCAN, &json!({ "id": location_id }))
    }

    /// `action:locations.remove.input.v1`: forgets a location and its entries;
    /// returns how many entries were removed.
    pub fn remove_location(&self, location_id: i64) -> Result<u64, CallError> {
        let r: Value = self.call(methods::LOCATIONS_REMOVE, &json!({ "id": location_id }))?;
        Ok(r.get("entries").and_then(Value::as_u64).unwrap_or(0))
    }

    // --- entries -------------------------------------------------------------------------------

    /// `query:entries.list.v1`: one page; continue with
    /// `query.cursor(page.next_cursor)`.
    pub fn list_entries(&self, query: &EntryQuery) -> Result<EntryPage, CallError> {
        self.call(methods::ENTRIES_LIST, query)
    }

    /// `query:entries.get.v1`: one entry with its tags.
    pub fn entry(&self, entry_id: i64) -> Result<EntryDetail, CallError> {
        self.call(methods::ENTRIES_GET, &json!({ "id": entry_id }))
    }

    /// `query:entries.read.v1`: up to `length` (at most [`crate::files::MAX_READ`])
    /// bytes of a file entry from `offset`. Needs the exact name granted.
    pub fn read_entry(&self, entry_id: i64, offset: u64, length: u32) -> Result<FileChunk, CallError> {
        let raw: RawChunk = self.call(
            methods::ENTRIES_READ,
            &json!({ "entry_id": entry_id, "offset": offset, "length": length }),
        )?;
        let data = base64_decode(&raw.data).ok_or_else(|| CallError::Deserialize("data is not base64".to_string()))?;
        Ok(FileChunk { entry_id: raw.entry_id, offset: raw.offset, data, size: raw.size, eof: raw.eof })
    }

    /// Reads exactly `length` bytes at `offset` (several calls if needed);
    /// fails with `Deserialize` if the file ends first.
    pub fn read_exact(&self, entry: &Entry, offset: u64, length: u64) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::with_capacity(length as usize);
        while (out.len() as u64) < length {
            let want = (length - out.len() as u64).min(crate::files::MAX_READ as u64) as u32;
            let chunk = self.read_entry(entry.id, offset + out.len() as u64, want)?;
            if chunk.data.is_empty() {
                return Err(CallError::Deserialize(format!("{} ended before {} bytes", entry.path, offset + length)));
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// ABI v2 `entry_read`: reads up to `buf.len()` bytes (at most 16 MiB) of a
    /// file entry at `offset` straight into `buf`, without JSON or base64.
    /// Returns the bytes read: fewer than asked only at the end of the file, 0 at
    /// or past it. The host checks what `query:entries.read.v1` checks (that exact
    /// name granted, the library, no symlink followed); a refusal is
    /// `CallError::Host` with the host's code (the message names the code only).
    pub fn read_into(&self, entry_id: i64, offset: u64, buf: &mut [u8]) -> Result<usize, CallError> {
        if offset > i64::MAX as u64 {
            return Err(CallError::Host { code: -32602, message: "offset out of range".to_string() });
        }
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the host writes at most that.
        let n = unsafe { crate::ffi::entry_read(self.id.as_bytes().as_ptr(), entry_id, offset as i64, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(CallError::Host { code: n, message: read_error(n).to_string() });
        }
        Ok(n as usize)
    }

    /// `query:entries.content_hash.v1`: the full-content BLAKE3 of up to
    /// [`crate::files::MAX_HASH_ENTRIES`] file entries, computed by the host (cached per
    /// file while its inode, size, mtime and ctime stay the same). An entry that is gone,
    /// unreadable, not a file, or changed since indexing comes back with `error` set.
    /// Needs its exact name granted, or `query:entries.read.v1`'s.
    pub fn content_hashes(&self, entry_ids: &[i64]) -> Result<HashResult, CallError> {
        self.call(methods::ENTRIES_CONTENT_HASH, &json!({ "entry_ids": entry_ids }))
    }

    // --- tags -------------------------------------------------------------------------------

    /// `action:tags.create.input.v1`: the tag named `name`, created if needed.
    pub fn create_tag(&self, name: &str) -> Result<Tag, CallError> {
        self.call(methods::TAGS_CREATE, &json!({ "name": name }))
    }

    /// `query:tags.list.v1`.
    pub fn tags(&self) -> Result<Vec<Tag>, CallError> {
        self.call(methods::TAGS_LIST, &json!({}))
    }

    /// `action:tags.apply.input.v1`: tags up to 1000 entries.
    pub fn apply_tag(&self, tag: impl Into<TagRef>, entry_ids: &[i64]) -> Result<TagApplied, CallError> {
        self.call(methods::TAGS_APPLY, &json!({ "tag": tag.into(), "entry_ids": entry_ids }))
    }

    /// `action:tags.remove.input.v1`: untags up to 1000 entries.
    pub fn remove_tag(&self, tag: impl Into<TagRef>, entry_ids: &[i64]) -> Result<TagRemoved, CallError> {
        self.call(methods::TAGS_REMOVE, &json!({ "tag": tag.into(), "entry_ids": entry_ids }))
    }

    /// `action:tags.delete.input.v1`.
    pub fn delete_tag(&self, tag: impl Into<TagRef>) -> Result<(), CallError> {
        let _: Value = self.call(methods::TAGS_DELETE, &json!({ "tag": tag.into() }))?;
        Ok(())
    }

    // --- extension storage ---------------------------------------------------------------------

    /// `action:extension_storage.set.input.v1`: stores `value` (as JSON) under `key`.
    pub fn storage_set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), CallError> {
        let value = serde_json::to_value(value).map_err(|e| CallError::Serialize(e.to_string()))?;
        let _: Value = self.call(methods::STORAGE_SET, &json!({ "key": key, "value": value }))?;
        Ok(())
    }

    /// `query:extension_storage.get.v1`: the value under `key`, if any.
    pub fn storage_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CallError> {
        let r: StoredValue = self.call(methods::STORAGE_GET, &json!({ "key": key }))?;
        if !r.found {
            return Ok(None);
        }
        serde_json::from_value(r.value).map(Some).map_err(|e| CallError::Deserialize(e.to_string()))
    }

    /// `query:extension_storage.list.v1`: keys starting with `prefix`, a page at a time.
    pub fn storage_keys(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, CallError> {
        self.call(methods::STORAGE_LIST, &json!({ "prefix": prefix, "cursor": cursor, "limit": limit }))
    }

    /// `action:extension_storage.delete.input.v1`: `true` if the key existed.
    pub fn storage_delete(&self, key: &str) -> Result<bool, CallError> {
        let r: Value = self.call(methods::STORAGE_DELETE, &json!({ "key": key }))?;
        Ok(r.get("deleted").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// A short text for an `entry_read` error code (the host returns only the code).
fn read_error(code: i64) -> &'static str {
    match code {
        -32001 => "entry_read needs a library",
        -32002 => "no such library",
        -32003 => "permission denied: entry_read needs query:entries.read.v1 granted by its exact name",
        -32004 => "rate limited",
        -32006 => "no such entry, or its file is gone",
        -32007 => "not a readable regular file (a symlink, changed, or unreadable)",
        -32602 => "invalid offset",
        _ => "entry_read failed",
    }
}
