//! The host's content id (cas_id), computed through `query:entries.read.v1`.
//! The scheme is in guest-sdk/ABI.md §7 and daemon/locations/content.py.

use spacedrive_sdk::prelude::*;

use crate::blake3::{hex, Hasher};
use crate::{is_fatal, retrying};

const SMALL_FILE: u64 = 100 * 1024;
const HEADER: u64 = 8 * 1024;
const FOOTER: u64 = 8 * 1024;
const SAMPLE: u64 = 10 * 1024;
const SAMPLES: u64 = 4;

/// The (offset, length) ranges hashed after the size, in order.
pub fn sample_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= SMALL_FILE {
        return if size == 0 { vec![] } else { vec![(0, size)] };
    }
    let step = (size - HEADER - FOOTER - SAMPLE) / (SAMPLES - 1);
    let mut ranges = vec![(0, HEADER)];
    for i in 0..SAMPLES {
        ranges.push((HEADER + i * step, SAMPLE));
    }
    ranges.push((size - FOOTER, FOOTER));
    ranges
}

/// Why an entry could not be hashed.
pub enum HashError {
    /// The host refused (permission, rate): stop the job.
    Fatal(CallError),
    /// This file only (gone, changed, not a file): skip it.
    Skip(String),
}

/// The cas_id of `entry`, and how many bytes were read for it.
pub fn cas_id(lib: &Library, entry: &Entry) -> Result<(String, u64), HashError> {
    let mut h = Hasher::new();
    h.update(&entry.size.to_le_bytes());
    let mut read = 0;
    for (offset, length) in sample_ranges(entry.size) {
        let chunk = match retrying(|| lib.read_entry(entry.id, offset, length as u32)) {
            Ok(c) => c,
            Err(e) if is_fatal(&e) => return Err(HashError::Fatal(e)),
            Err(e) => return Err(HashError::Skip(format!("cannot read {}: {}", entry.path, e))),
        };
        if chunk.size != entry.size || chunk.data.len() as u64 != length {
            return Err(HashError::Skip(format!("{} changed since it was indexed", entry.path)));
        }
        h.update(&chunk.data);
        read += length;
    }
    Ok((hex(&h.finalize())[..16].to_string(), read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_cas(data: &[u8]) -> String {
        let mut h = Hasher::new();
        h.update(&(data.len() as u64).to_le_bytes());
        for (o, l) in sample_ranges(data.len() as u64) {
            h.update(&data[o as usize..(o + l) as usize]);
        }
        hex(&h.finalize())[..16].to_string()
    }

    #[test]
    fn same_ids_as_the_host() {
        // Expected values from daemon.locations.content.cas_id_of_bytes.
        for &(n, want) in &[
            (0usize, "71e0a99173564931"),
            (5, "301d9121aee4456b"),
            (102400, "c66a52267c7e5ee9"),
            (102401, "f5814f53c76e13a5"),
            (300000, "33432e1ca392a6e0"),
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            assert_eq!(local_cas(&data), want, "size {}", n);
        }
        assert_eq!(sample_ranges(102401)[5], (94209, 8192));
        assert_eq!(sample_ranges(300000)[4], (281567, 10240));
    }
}
