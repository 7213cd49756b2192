//! Duplicate Finder: a resumable job that finds files with the same content
//! in a location, tags every member of a duplicate group, and stores a
//! summary in its extension storage.
//!
//! It pages through the location's files in size order (`order: "size"`), so
//! files that could be duplicates arrive next to each other and the job only
//! keeps the current run of equal-sized files in its state: the checkpoint
//! stays small however big the location is. A run of two or more is grouped
//! by cas_id; a file the host has not hashed yet is hashed here, with the
//! host's exact scheme, from bytes read through `query:entries.read.v1`.
//!
//! State (the job's input; everything but `location_id` is optional):
//! `{"location_id": 1, "tag": "duplicate", "page_size": 100, "spin": 0}`.
//! `spin` busy-waits that many iterations per page (for tests).
//! A run first takes `tag` off the location's entries, so a re-run reflects
//! the files as they are now. Empty files are never duplicates.

mod blake3;
mod cas;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spacedrive_sdk::files::EntryOrder;
use spacedrive_sdk::hint;
use spacedrive_sdk::prelude::*;

spacedrive_sdk::extension! {
    jobs = [
        ("find", execute_find_duplicates, find, resumable = true),
    ];
}

const PERMISSION_DENIED: i64 = -32003;
const RATE_LIMITED: i64 = -32004;
const RATE_RETRIES: u32 = 200;

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

/// A file of the current size run; `cas` is the host's cas_id or ours.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    id: i64,
    path: String,
    #[serde(default)]
    cas: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stats {
    #[serde(default)]
    files: u64,
    #[serde(default)]
    hashed: u64,
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
    location_id: i64,
    #[serde(default = "default_tag")]
    tag: String,
    #[serde(default = "default_page_size")]
    page_size: u32,
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
    #[serde(default)]
    total: u64,
    #[serde(default)]
    stats: Stats,
}

fn default_tag() -> String {
    "duplicate".to_string()
}

fn default_page_size() -> u32 {
    100
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
pub(crate) fn retrying<T>(mut f: impl FnMut() -> Result<T, CallError>) -> Result<T, CallError> {
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

/// Errors that end the job instead of skipping one file.
pub(crate) fn is_fatal(e: &CallError) -> bool {
    matches!(e.code(), Some(PERMISSION_DENIED) | Some(RATE_LIMITED))
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
            _ => scan_page(ctx, &lib, st),
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
        "location {}: {} duplicate files in {} groups ({} bytes reclaimable)",
        st.location_id, st.stats.duplicates, st.stats.groups, st.stats.wasted_bytes
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

/// Reads one page of files in size order; closes every size run that ends in it.
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
        st.run.push(Member { id: e.id, path: e.path.clone(), cas: e.cas_id.clone() });
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

/// Groups the finished run of equal-sized files by content and tags each group of two or more.
fn close_run(ctx: &JobContext, lib: &Library, st: &mut State) -> Result<(), JobResult> {
    let run = std::mem::take(&mut st.run);
    if run.len() < 2 {
        return Ok(());
    }
    let size = st.run_size;
    let mut groups: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in run {
        let cas = match m.cas {
            Some(c) => c,
            None => {
                let entry = Entry {
                    id: m.id,
                    location_id: st.location_id,
                    path: m.path.clone(),
                    parent: String::new(),
                    name: String::new(),
                    extension: String::new(),
                    kind: EntryKind::File,
                    size,
                    mtime: 0.0,
                    inode: 0,
                    cas_id: None,
                };
                match cas::cas_id(lib, &entry) {
                    Ok((c, n)) => {
                        st.stats.hashed += 1;
                        st.stats.bytes_read += n;
                        ctx.increment_bytes(n);
                        c
                    }
                    Err(cas::HashError::Fatal(e)) => return Err(fail(ctx, &format!("cannot read {}", m.path), e)),
                    Err(cas::HashError::Skip(msg)) => {
                        ctx.add_warning(&msg);
                        st.stats.skipped += 1;
                        continue;
                    }
                }
            }
        };
        groups.entry(cas).or_insert_with(Vec::new).push(m.id);
    }
    for ids in groups.values().filter(|ids| ids.len() > 1) {
        for chunk in ids.chunks(1000) {
            retrying(|| lib.apply_tag(st.tag.as_str(), chunk)).map_err(|e| fail(ctx, "cannot tag", e))?;
        }
        st.stats.groups += 1;
        st.stats.duplicates += ids.len() as u64;
        st.stats.wasted_bytes += size * (ids.len() as u64 - 1);
        ctx.increment_items(ids.len() as u64);
    }
    Ok(())
}
