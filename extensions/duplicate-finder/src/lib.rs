//! Duplicate Finder: a resumable job that tags every file of a location whose
//! whole content another file of the location has, and stores a summary in its
//! extension storage.
//!
//! Rules (docs/files.md has them too; `jdupes -r` on the same tree lists the
//! same files):
//!
//! * **Whole content.** Files are grouped by the BLAKE3 of their entire
//!   content, computed by the host (`query:entries.content_hash.v1`), never by
//!   `cas_id`, which samples large files. Only files of equal size are hashed.
//! * **Hard links are one file.** Names of one inode (`dev`, `inode`) are never
//!   duplicates of each other. When another file has the same content, every
//!   name of the inode is tagged (jdupes lists one or some of them; the files
//!   agree).
//! * **Empty files are never duplicates.**
//! * **Changed or vanished files are skipped.** A file whose size, mtime or
//!   inode differs from the index, that is gone, or that cannot be read is left
//!   out with a job warning naming it; rescan the location to include it.
//! * **Symlinks are never followed**: a symlink is not a file, and the host
//!   opens every file without following one at any level.
//!
//! It pages through the location's files in size order (`order: "size"`,
//! keyset pagination, so each page costs the same at any depth and the job is
//! linear in the size of the location), keeping only the current run of
//! equal-sized files in its state: the checkpoint stays small. Finished runs
//! with at least two distinct files are queued and hashed in batches of
//! `hash_batch` files (several runs a call); hashes are cached by the host, so
//! a second run reads no file bytes.
//!
//! State (the job's input; everything but `location_id` is optional):
//! `{"location_id": 1, "tag": "duplicate", "page_size": 1000, "hash_batch": 256, "spin": 0}`.
//! `spin` busy-waits that many iterations per page (for tests).
//! A run first takes `tag` off the location's entries, so a re-run reflects
//! the files as they are now. Resuming after a crash redoes at most one page.
//!
//! **Incremental mode** (what the manifest's triggers run on `entries.created`,
//! `entries.modified` and `entries.removed`): `{"entry_ids": [..], "tag"?: "duplicate"}`
//! checks only those entries, each against the files of its own location with the same size
//! (hashed by the host, cached), and tags every group of two or more distinct files one of
//! them is in; a changed file that no longer has a copy loses the tag. Files that are gone,
//! not files, or empty are skipped. After removals or changes (`"trigger"` names the event)
//! every tagged file of the library is hashed again (cached) and grouped with the other
//! tagged files of its location, so the former partner of a deleted, changed or moved-out
//! copy loses the tag: a tagged file's remaining copies were all tagged, and a removed
//! entry's size is no longer known. The full mode (`location_id`)
//! gives the exact picture again after changes the live watcher did not announce.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use spacedrive_sdk::files::{EntryOrder, MAX_HASH_ENTRIES};
use spacedrive_sdk::hint;
use spacedrive_sdk::prelude::*;

spacedrive_sdk::extension! {
    jobs = [
        ("find", execute_find_duplicates, find, resumable = true),
    ];
}

const RATE_LIMITED: i64 = -32004;
const RATE_RETRIES: u32 = 200;
const TAG_BATCH: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Clear,
    Scan,
    Done,
}

impl Default for Phase {
    fn default() -> Self {
        Phase::Clear
    }
}

/// A file of the current size run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    id: i64,
    #[serde(default)]
    dev: u64,
    inode: u64,
}

impl Member {
    /// The file this name is: `(dev, inode)`, one for all names of an inode (hard links).
    fn file(&self) -> (u64, u64) {
        (self.dev, self.inode)
    }
}

/// How many distinct files `names` are: names of one inode are one file.
fn distinct_files(names: &[Member]) -> usize {
    names.iter().map(Member::file).collect::<BTreeSet<_>>().len()
}

/// Whether `names` are two or more distinct files: the least a group of duplicates is.
fn several_files(names: &[Member]) -> bool {
    distinct_files(names) >= 2
}

/// Names with the same content (and key), in the order they were hashed, and their size.
struct Group {
    members: Vec<Member>,
    size: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stats {
    #[serde(default)]
    files: u64,
    /// Files sharing their size with another file: the ones hashed.
    #[serde(default)]
    candidates: u64,
    /// Hashes the host computed (read the file) / had cached.
    #[serde(default)]
    hashed: u64,
    #[serde(default)]
    cached: u64,
    #[serde(default)]
    bytes_read: u64,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    groups: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    wasted_bytes: u64,
    #[serde(default)]
    untagged: u64,
    #[serde(default)]
    pages: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    location_id: i64,
    /// Incremental mode: only these entries (new or changed) are checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entry_ids: Vec<i64>,
    /// The trigger that dispatched the job, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trigger: Option<String>,
    #[serde(default = "default_tag")]
    tag: String,
    #[serde(default = "default_page_size")]
    page_size: u32,
    #[serde(default = "default_hash_batch")]
    hash_batch: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    spin: u64,
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    run_size: u64,
    #[serde(default)]
    run: Vec<Member>,
    /// Candidates of finished runs waiting to be hashed, and entries waiting to be tagged;
    /// both empty at every checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    queued: Vec<Member>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<i64>,
    #[serde(default)]
    total: u64,
    /// Incremental mode after removals or changes: the tagged files checked again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    verified: bool,
    #[serde(default)]
    stats: Stats,
}

fn default_tag() -> String {
    "duplicate".to_string()
}

fn default_page_size() -> u32 {
    1000
}

fn default_hash_batch() -> u32 {
    256
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The summary kept in extension storage under `summary:<location_id>`.
#[derive(Serialize)]
struct Summary<'a> {
    location_id: i64,
    tag: &'a str,
    #[serde(flatten)]
    stats: &'a Stats,
}

/// Retries a call the host rate-limited (there is no clock in the guest: spin).
fn retrying<T>(mut f: impl FnMut() -> Result<T, CallError>) -> Result<T, CallError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(CallError::Host { code: RATE_LIMITED, .. }) if tries < RATE_RETRIES => {
                tries += 1;
                hint::spin(1_000_000);
            }
            other => return other,
        }
    }
}

fn fail(ctx: &JobContext, what: &str, e: CallError) -> JobResult {
    let msg = format!("{}: {}", what, e);
    ctx.add_warning(&msg);
    JobResult::failed(msg)
}

fn find(ctx: &JobContext, st: &mut State) -> JobResult {
    let lib = match ctx.library() {
        Some(lib) => lib,
        None => return JobResult::failed("the job has no library"),
    };
    if st.page_size == 0 || st.page_size > 1000 {
        return JobResult::failed("page_size must be between 1 and 1000");
    }
    if st.hash_batch == 0 || st.hash_batch as usize > MAX_HASH_ENTRIES {
        return JobResult::failed(format!("hash_batch must be between 1 and {}", MAX_HASH_ENTRIES));
    }
    if !st.entry_ids.is_empty() || st.trigger.is_some() {
        return incremental(ctx, &lib, st);
    }
    if st.location_id == 0 {
        return JobResult::failed("give location_id (a whole location) or entry_ids (incremental)");
    }
    if st.total == 0 && st.phase == Phase::Clear {
        match retrying(|| lib.locations()) {
            Ok(locs) => match locs.iter().find(|l| l.id == st.location_id) {
                Some(loc) => st.total = loc.entries.max(1),
                None => return JobResult::failed(format!("no location {}", st.location_id)),
            },
            Err(e) => return fail(ctx, "cannot list locations", e),
        }
        if let Err(e) = retrying(|| lib.create_tag(&st.tag)) {
            return fail(ctx, "cannot create the tag", e);
        }
    }
    while st.phase != Phase::Done {
        hint::spin(st.spin);
        let step = match st.phase {
            Phase::Clear => clear_page(&lib, st),
            _ => scan_page(ctx, &lib, st).and_then(|_| flush(ctx, &lib, st)),
        };
        if let Err(r) = step {
            return r;
        }
        st.stats.pages += 1;
        let done = (st.stats.files as f32 / st.total as f32).min(0.99);
        ctx.report_progress(
            if st.phase == Phase::Done { 1.0 } else { done },
            &format!("{} files, {} duplicates in {} groups", st.stats.files, st.stats.duplicates, st.stats.groups),
        );
        if let Err(e) = ctx.checkpoint(st) {
            return JobResult::failed(format!("checkpoint failed: {}", e));
        }
        if st.phase != Phase::Done && ctx.check_interrupt().should_stop() {
            return JobResult::Interrupted;
        }
    }
    let summary = Summary { location_id: st.location_id, tag: &st.tag, stats: &st.stats };
    let key = format!("summary:{}", st.location_id);
    if let Err(e) = retrying(|| lib.storage_set(&key, &summary)) {
        return fail(ctx, "cannot store the summary", e);
    }
    ctx.log(&format!(
        "location {}: {} duplicate files in {} groups ({} bytes reclaimable, {} skipped)",
        st.location_id, st.stats.duplicates, st.stats.groups, st.stats.wasted_bytes, st.stats.skipped
    ));
    JobResult::Completed
}

/// Takes the tag off one page of the location's tagged entries.
fn clear_page(lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let q = EntryQuery::default()
        .location(st.location_id)
        .tag(st.tag.as_str())
        .limit(st.page_size)
        .cursor(st.cursor.clone());
    let page = retrying(|| lib.list_entries(&q)).map_err(|e| JobResult::failed(format!("cannot list tagged entries: {}", e)))?;
    let ids: Vec<i64> = page.entries.iter().map(|e| e.id).collect();
    if !ids.is_empty() {
        let r = retrying(|| lib.remove_tag(st.tag.as_str(), &ids)).map_err(|e| JobResult::failed(format!("cannot untag: {}", e)))?;
        st.stats.untagged += r.removed;
    }
    st.cursor = page.next_cursor;
    if st.cursor.is_none() {
        st.phase = Phase::Scan;
    }
    Ok(())
}

/// Reads one page of non-empty files in size order; closes every size run that ends in it.
fn scan_page(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let q = EntryQuery::default()
        .location(st.location_id)
        .kind(EntryKind::File)
        .min_size(1)
        .order(EntryOrder::Size)
        .limit(st.page_size)
        .cursor(st.cursor.clone());
    let page = retrying(|| lib.list_entries(&q)).map_err(|e| fail(ctx, "cannot list entries", e))?;
    for e in &page.entries {
        if e.size != st.run_size {
            close_run(ctx, lib, st)?;
            st.run_size = e.size;
        }
        st.run.push(Member { id: e.id, dev: e.dev, inode: e.inode });
        st.stats.files += 1;
    }
    if page.next_cursor.is_none() {
        close_run(ctx, lib, st)?;
        st.phase = Phase::Done;
        st.cursor = None;
    } else {
        st.cursor = page.next_cursor;
    }
    Ok(())
}

/// Queues the finished run of equal-sized files for hashing if it holds two or more
/// distinct files (inodes); hashes the queue once it is a batch.
fn close_run(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let run = std::mem::take(&mut st.run);
    if !several_files(&run) {
        return Ok(());
    }
    st.stats.candidates += run.len() as u64;
    st.queued.extend(run);
    if st.queued.len() >= st.hash_batch as usize {
        hash_queued(ctx, lib, st)?;
    }
    Ok(())
}

/// Hashes the queued candidates (runs of several sizes in one call: equal hashes mean equal
/// sizes) and queues every group of two or more distinct files for tagging, under every name.
fn hash_queued(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let ids: Vec<i64> = std::mem::take(&mut st.queued).iter().map(|m| m.id).collect();
    for group in hash_groups(ctx, lib, st, &ids, |_, hash| hash, |_| {})? {
        let names = group.members.len() as u64;
        st.pending.extend(group.members.iter().map(|m| m.id));
        st.stats.groups += 1;
        st.stats.duplicates += names;
        st.stats.wasted_bytes += group.size * (distinct_files(&group.members) as u64 - 1);
        ctx.increment_items(names);
    }
    Ok(())
}

/// Hashes what is queued and applies the tag to the entries found (the end of each page:
/// nothing is queued at a checkpoint).
fn flush(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    if !st.queued.is_empty() {
        hash_queued(ctx, lib, st)?;
    }
    let pending = std::mem::take(&mut st.pending);
    for chunk in pending.chunks(TAG_BATCH) {
        retrying(|| lib.apply_tag(st.tag.as_str(), chunk)).map_err(|e| fail(ctx, "cannot tag", e))?;
    }
    Ok(())
}

const NOT_FOUND: i64 = -32006;
/// Entries checked between two checkpoints in incremental mode.
const INCREMENTAL_STEP: usize = 64;

/// Incremental mode: checks `st.entry_ids` (consumed as they are done, so a resumed job
/// goes on where it stopped) against the same-sized files of their locations.
fn incremental(ctx: &JobContext, lib: &Library, st: &mut State) -> JobResult {
    if st.stats.pages == 0 {
        if let Err(e) = retrying(|| lib.create_tag(&st.tag)) {
            return fail(ctx, "cannot create the tag", e);
        }
    }
    let removed = st.trigger.as_deref() == Some("entries.removed");
    if removed {
        // Their rows are gone: nothing to look up; what they leave behind is checked below.
        st.entry_ids.clear();
    }
    let total = (st.entry_ids.len() as u64 + st.stats.files).max(1);
    while !st.entry_ids.is_empty() {
        let n = st.entry_ids.len().min(INCREMENTAL_STEP);
        let step: Vec<i64> = st.entry_ids.drain(..n).collect();
        if let Err(r) = check_entries(ctx, lib, st, &step) {
            return r;
        }
        st.stats.pages += 1;
        ctx.report_progress(
            (st.stats.files as f32 / total as f32).min(0.99),
            &format!("{} new or changed files checked, {} duplicates", st.stats.files, st.stats.duplicates),
        );
        if let Err(e) = ctx.checkpoint(st) {
            return JobResult::failed(format!("checkpoint failed: {}", e));
        }
        if !st.entry_ids.is_empty() && ctx.check_interrupt().should_stop() {
            return JobResult::Interrupted;
        }
    }
    let changed = st.trigger.as_deref() == Some("entries.modified");
    if (removed || changed) && !st.verified {
        if let Err(r) = recheck_tagged(ctx, lib, st) {
            return r;
        }
        st.verified = true;
    }
    ctx.report_progress(1.0, &format!("{} files checked, {} duplicates", st.stats.files, st.stats.duplicates));
    if let Err(e) = ctx.checkpoint(st) {
        return JobResult::failed(format!("checkpoint failed: {}", e));
    }
    JobResult::Completed
}

/// After files were removed or changed: every tagged file of the library is hashed again
/// (cached: a stat each) and grouped with the other tagged files of its location; one left
/// in no group of two or more distinct files loses the tag, so a file whose last copy was
/// deleted, changed or moved out is untagged and a group of three losing one stays a group
/// of two. Comparing with the tagged files is enough: before the change the tagged set was
/// the duplicates, so a tagged file's remaining copies were all tagged (a changed file that
/// became a copy is checked against all its same-sized files by the step before). A tagged
/// file that cannot be hashed now, is empty or is no longer a file loses the tag too (the
/// full mode does not tag it). Not checkpointed part-way: a resumed job checks them all again.
fn recheck_tagged(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let mut files: Vec<(i64, i64)> = Vec::new(); // (entry id, location id)
    let mut untag: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = EntryQuery::default().tag(st.tag.as_str()).limit(st.page_size).cursor(cursor.clone());
        let page = retrying(|| lib.list_entries(&q)).map_err(|e| fail(ctx, "cannot list tagged entries", e))?;
        for e in &page.entries {
            if e.kind != EntryKind::File || e.size == 0 {
                untag.push(e.id);
            } else {
                files.push((e.id, e.location_id));
            }
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    st.stats.candidates += files.len() as u64;
    let location: BTreeMap<i64, i64> = files.iter().copied().collect();
    let ids: Vec<i64> = files.iter().map(|&(id, _)| id).collect();
    // Grouped by (location, hash): the groups of two or more files keep the tag.
    let key = |id: i64, hash: String| (location.get(&id).copied().unwrap_or_default(), hash);
    hash_groups(ctx, lib, st, &ids, key, |id| untag.push(id))?;
    for chunk in untag.chunks(TAG_BATCH) {
        let r = retrying(|| lib.remove_tag(st.tag.as_str(), chunk)).map_err(|e| fail(ctx, "cannot untag", e))?;
        st.stats.untagged += r.removed;
    }
    Ok(())
}

/// One step of the incremental mode: the entries' same-sized files, hashed, grouped, tagged.
fn check_entries(ctx: &JobContext, lib: &Library, st: &mut State, ids: &[i64]) -> Result<(), JobResult> {
    // (location, size) -> the new or changed entries of that size there.
    let mut wanted: BTreeMap<(i64, u64), BTreeSet<i64>> = BTreeMap::new();
    for &id in ids {
        let detail = match retrying(|| lib.entry(id)) {
            Ok(d) => d,
            Err(CallError::Host { code: NOT_FOUND, .. }) => {
                st.stats.skipped += 1; // gone again before the job ran
                continue;
            }
            Err(e) => return Err(fail(ctx, "cannot read an entry", e)),
        };
        let e = detail.entry;
        if e.kind != EntryKind::File || e.size == 0 {
            continue;
        }
        st.stats.files += 1;
        wanted.entry((e.location_id, e.size)).or_default().insert(e.id);
    }
    for ((location_id, size), fresh) in wanted {
        check_run(ctx, lib, st, location_id, size, &fresh)?;
    }
    Ok(())
}

/// Hashes the files of `location_id` of `size` and tags every group one of `fresh` is in;
/// a member of `fresh` in no group loses the tag.
fn check_run(ctx: &JobContext, lib: &Library, st: &mut State, location_id: i64, size: u64,
             fresh: &BTreeSet<i64>) -> Result<(), JobResult> {
    {
        let mut run: Vec<Member> = Vec::new();
        let mut cursor: Option<String> = None;
        'pages: loop {
            let q = EntryQuery::default()
                .location(location_id)
                .kind(EntryKind::File)
                .min_size(size)
                .order(EntryOrder::Size)
                .limit(st.page_size)
                .cursor(cursor.clone());
            let page = retrying(|| lib.list_entries(&q)).map_err(|e| fail(ctx, "cannot list entries", e))?;
            for e in &page.entries {
                if e.size != size {
                    break 'pages;
                }
                run.push(Member { id: e.id, dev: e.dev, inode: e.inode });
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let mut tagged: BTreeSet<i64> = BTreeSet::new();
        if several_files(&run) {
            st.stats.candidates += run.len() as u64;
            let ids: Vec<i64> = run.iter().map(|m| m.id).collect();
            for group in hash_groups(ctx, lib, st, &ids, |_, hash| hash, |_| {})? {
                let group: Vec<i64> = group.members.iter().map(|m| m.id).collect();
                // Only groups a new or changed file is in: the others were already right.
                if group.iter().any(|id| fresh.contains(id)) {
                    st.stats.groups += 1;
                    st.stats.duplicates += group.len() as u64;
                    ctx.increment_items(group.len() as u64);
                    tagged.extend(group.iter().copied());
                    st.pending.extend(group);
                }
            }
        }
        // A changed file with no copy any more loses the tag.
        let lone: Vec<i64> = fresh.difference(&tagged).copied().collect();
        for chunk in lone.chunks(TAG_BATCH) {
            let r = retrying(|| lib.remove_tag(st.tag.as_str(), chunk)).map_err(|e| fail(ctx, "cannot untag", e))?;
            st.stats.untagged += r.removed;
        }
        flush(ctx, lib, st)?;
    }
    Ok(())
}

/// Hashes `ids` (`hash_batch` at a time, counted in the job's stats) and groups them by
/// `key(id, hash)`: returns the groups of two or more distinct files, in key order. `lone`
/// gets every other entry: each one that could not be hashed (a job warning says why) as
/// it comes, then the names of each group of one file.
fn hash_groups<K: Ord>(ctx: &JobContext, lib: &Library, st: &mut State, ids: &[i64],
                       key: impl Fn(i64, String) -> K, mut lone: impl FnMut(i64))
                       -> Result<Vec<Group>, JobResult> {
    let mut by_key: BTreeMap<K, Group> = BTreeMap::new();
    for chunk in ids.chunks(st.hash_batch as usize) {
        let r = retrying(|| lib.content_hashes(chunk)).map_err(|e| fail(ctx, "cannot hash files", e))?;
        st.stats.bytes_read += r.bytes_read;
        ctx.increment_bytes(r.bytes_read);
        for h in r.hashes {
            match h.hash {
                Some(hash) => {
                    if h.cached {
                        st.stats.cached += 1;
                    } else {
                        st.stats.hashed += 1;
                    }
                    let size = h.size;
                    by_key
                        .entry(key(h.entry_id, hash))
                        .or_insert_with(|| Group { members: Vec::new(), size })
                        .members
                        .push(Member { id: h.entry_id, dev: h.dev, inode: h.inode });
                }
                None => {
                    let why = h.error.map(|e| e.message).unwrap_or_else(|| "no hash".to_string());
                    ctx.add_warning(&format!("skipped entry {}: {}", h.entry_id, why));
                    st.stats.skipped += 1;
                    lone(h.entry_id);
                }
            }
        }
    }
    let mut groups = Vec::new();
    for group in by_key.into_values() {
        if several_files(&group.members) {
            groups.push(group);
        } else {
            group.members.iter().for_each(|m| lone(m.id));
        }
    }
    Ok(groups)
}
