/* test-extension's read_file job in C: reads a file entry with sd_job_read
 * (ABI v2 entry_read) and checkpoints what it read. Plus bad_buffer, which hands
 * entry_read a buffer the test chooses (outside memory: the host traps). */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"

SD_DECLARE_ABI(SD_ABI_VERSION);

/* State {"entry_id", "offset"?: 0, "buffer"?: 1 MiB, "max_calls"?, "checksum"?: false}.
 * Output {"bytes", "calls", "fnv" (FNV-1a 64, hex; null unless checksum), "error",
 * "error_message"}: error is the first negative code, and stops the reading. */
static int32_t read_file(sd_job *job, sd_json state) {
    int64_t entry_id;
    uint64_t offset = 0, buffer = 1u << 20, max_calls = UINT64_MAX, bytes = 0, calls = 0;
    bool checksum = false;
    sd_json v;
    if (!sd_json_i64(sd_json_get(state, "entry_id"), &entry_id))
        return sd_job_fail(job, "invalid state: needs {\"entry_id\": N}");
    if ((v = sd_json_get(state, "offset")).ptr && !sd_json_u64(v, &offset))
        return sd_job_fail(job, "invalid state: offset");
    if ((v = sd_json_get(state, "buffer")).ptr && (!sd_json_u64(v, &buffer) || buffer > (64u << 20)))
        return sd_job_fail(job, "invalid state: buffer");
    if ((v = sd_json_get(state, "max_calls")).ptr && !sd_json_u64(v, &max_calls))
        return sd_job_fail(job, "invalid state: max_calls");
    if ((v = sd_json_get(state, "checksum")).ptr && !sd_json_bool(v, &checksum))
        return sd_job_fail(job, "invalid state: checksum");
    unsigned char *buf = (unsigned char *)sd_alloc((size_t)buffer);
    if (!buf && buffer) return sd_job_fail(job, "out of memory for the buffer");
    uint64_t fnv = 0xcbf29ce484222325ull;
    int64_t error = 0;
    while (calls < max_calls) {
        calls++;
        int64_t n = sd_job_read(job, entry_id, offset, buf, (size_t)buffer);
        if (n < 0) { error = n; break; }
        if (n == 0) break;
        if (checksum)
            for (int64_t i = 0; i < n; i++) fnv = (fnv ^ buf[i]) * 0x100000001b3ull;
        bytes += (uint64_t)n;
        offset += (uint64_t)n;
    }
    sd_free(buf, (size_t)buffer);
    sd_jw w = {0};
    sd_jw_object(&w);
    sd_jw_key(&w, "bytes"); sd_jw_u64(&w, bytes);
    sd_jw_key(&w, "calls"); sd_jw_u64(&w, calls);
    sd_jw_key(&w, "fnv");
    if (checksum) {
        char hex[17];
        for (int i = 0; i < 16; i++) hex[i] = "0123456789abcdef"[(fnv >> (60 - 4 * i)) & 15];
        hex[16] = 0;
        sd_jw_string(&w, hex);
    } else {
        sd_jw_null(&w);
    }
    sd_jw_key(&w, "error");
    if (error) sd_jw_i64(&w, error); else sd_jw_null(&w);
    sd_jw_key(&w, "error_message");
    if (error) sd_jw_string(&w, sd_read_error(error)); else sd_jw_null(&w);
    sd_jw_end(&w);
    int32_t rc = sd_job_checkpoint_jw(job, &w);
    sd_jw_free(&w);
    return rc == 0 ? SD_JOB_COMPLETED : sd_job_fail(job, "checkpoint failed");
}

/* State {"entry_id", "ptr", "len"}: entry_read into exactly [ptr, ptr + len). */
static int32_t bad_buffer(sd_job *job, sd_json state) {
    int64_t entry_id, ptr, len;
    if (!sd_json_i64(sd_json_get(state, "entry_id"), &entry_id) ||
        !sd_json_i64(sd_json_get(state, "ptr"), &ptr) || !sd_json_i64(sd_json_get(state, "len"), &len))
        return sd_job_fail(job, "invalid state: needs entry_id, ptr, len");
    int64_t n = sd_raw_entry_read(job->library_id.bytes, entry_id, 0,
                                  (void *)(uintptr_t)(uint32_t)ptr, (int32_t)len);
    sd_logf(SD_INFO, "entry_read returned %lld", (long long)n);
    return SD_JOB_COMPLETED;
}

#define JOBS(JOB)                                        \
    JOB("read_file", execute_read_file, read_file, 0)    \
    JOB("bad_buffer", execute_bad_buffer, bad_buffer, 0)
SD_EXTENSION(JOBS, 0, 0)
