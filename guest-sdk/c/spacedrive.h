/* spacedrive.h: the C SDK for sd extensions, ABI v2 (guest-sdk/ABI.md).
 *
 * One header, no libc, for wasm32-freestanding (clang --target=wasm32 or
 * zig cc -target wasm32-freestanding). It gives a guest everything ABI v2 asks
 * for and nothing more:
 *
 *   - an allocator exporting wasm_alloc / wasm_free (ABI.md §2),
 *   - typed wrappers for the ten host functions (§3), job ids as 16 raw bytes,
 *   - sd_entry_read / sd_job_read: file bytes straight into a buffer (v2, §3.5),
 *   - SD_DECLARE_ABI(n): the spacedrive_abi custom section (§8),
 *   - sd_call: the reply envelope {"ok": ...} / {"error": ...} decoded (§3.1),
 *   - sd_run_job: ctx and state parsed, return codes as the Rust SDK (§4),
 *   - a JSON reader (validating, zero-copy) and writer, and a printf subset,
 *   - SD_EXTENSION: plugin_init / plugin_cleanup / one export per job.
 *
 * Use: in exactly one .c file of the extension
 *
 *     #define SPACEDRIVE_IMPLEMENTATION
 *     #include "spacedrive.h"
 *
 * (other files include it without the define). Build, as scripts/build-extensions.sh
 * does (zig from PyPI's ziglang), or with clang + lld:
 *
 *     zig cc -target wasm32-freestanding -nostdlib -ffreestanding -Os -I guest-sdk/c \
 *            -Wl,--no-entry -o ext.wasm ext.c
 *     clang --target=wasm32 -nostdlib -ffreestanding -Os -I guest-sdk/c \
 *           -Wl,--no-entry -Wl,--stack-first -o ext.wasm ext.c
 *
 * Zig: @cImport(@cInclude("spacedrive.h")) sees the declarations; compile one
 * C file with the implementation beside the Zig code (guest-sdk/c/zig/) and
 * call the sd_* functions, not sd_raw_* (translate-c drops the import module).
 *
 * Memory: allocation sizes are rounded up to a power of two from 16 bytes to
 * 64 KiB, and to whole 64 KiB pages above that; freed blocks are reused by
 * size, never merged. The heap grows with memory.grow until the manifest's
 * max_memory_mb, after which wasm_alloc returns 0.
 */
#ifndef SPACEDRIVE_H
#define SPACEDRIVE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The newest ABI version this header implements (it implements every older one). */
#define SD_ABI_VERSION 2

/* ---- the ABI version a module needs (ABI.md §8) ---------------------------
 * At file scope, once per module (one translation unit is enough):
 *
 *     SD_DECLARE_ABI(2);     // or SD_DECLARE_ABI(SD_ABI_VERSION)
 *
 * emits a custom section "spacedrive_abi" holding the one byte n, so a host
 * older than n refuses the module at install and load with "module needs ABI
 * version n" instead of failing later. n is an integer constant from 1 to 255.
 * Unlike the Rust SDK's extension!, SD_EXTENSION declares nothing by itself:
 * without SD_DECLARE_ABI a module needs version 1, or 2 if it calls
 * sd_entry_read / sd_job_read (importing entry_read implies 2), so a module
 * using only v1 keeps loading on a v1 host. Declaring the section uses
 * module-level assembly: clang's section attribute makes a data segment on
 * wasm, not a custom section. */
#define SD__STR(x) #x
#define SD__XSTR(x) SD__STR(x)
#if defined(__cplusplus)
#define SD__STATIC_ASSERT static_assert
#else
#define SD__STATIC_ASSERT _Static_assert
#endif
#if defined(__wasm__)
#define SD_DECLARE_ABI(n)                                                          \
    SD__STATIC_ASSERT((n) >= 1 && (n) <= 255, "SD_DECLARE_ABI: 1 to 255");          \
    __asm__(".section .custom_section.spacedrive_abi,\"\",@\n.int8 " SD__XSTR(n) "\n")
#else
#define SD_DECLARE_ABI(n) SD__STATIC_ASSERT((n) >= 1 && (n) <= 255, "SD_DECLARE_ABI: 1 to 255")
#endif

/* ---- raw host imports (module "spacedrive"), exactly ABI.md §3 ---------- */
#if defined(__wasm__)
#define SD__IMPORT(n) __attribute__((import_module("spacedrive"), import_name(#n)))
#define SD_EXPORT(n) __attribute__((export_name(#n), visibility("default")))
#else /* lets tooling (and @cImport on a native target) parse the header */
#define SD__IMPORT(n)
#define SD_EXPORT(n)
#endif

SD__IMPORT(spacedrive_call)
int32_t sd_raw_call(const char *method, int32_t method_len, const uint8_t *library_id,
                    const char *payload, int32_t payload_len);
SD__IMPORT(spacedrive_log)
void sd_raw_log(int32_t level, const char *msg, int32_t msg_len);
SD__IMPORT(register_job)
int32_t sd_raw_register_job(const char *name, int32_t name_len, const char *export_name,
                            int32_t export_len, int32_t resumable);
SD__IMPORT(job_report_progress)
void sd_raw_job_report_progress(const uint8_t *job_id, float progress, const char *msg,
                                int32_t msg_len);
SD__IMPORT(job_checkpoint)
int32_t sd_raw_job_checkpoint(const uint8_t *job_id, const char *state, int32_t state_len);
SD__IMPORT(job_check_interrupt)
int32_t sd_raw_job_check_interrupt(const uint8_t *job_id);
SD__IMPORT(job_add_warning)
void sd_raw_job_add_warning(const uint8_t *job_id, const char *msg, int32_t msg_len);
SD__IMPORT(job_increment_items)
void sd_raw_job_increment_items(const uint8_t *job_id, int64_t n);
SD__IMPORT(job_increment_bytes)
void sd_raw_job_increment_bytes(const uint8_t *job_id, int64_t n);
/* v2 (ABI.md §3.5); a module importing it needs ABI version 2. */
SD__IMPORT(entry_read)
int64_t sd_raw_entry_read(const uint8_t *library_id, int64_t entry_id, int64_t offset, void *buf,
                          int32_t buf_len);

/* ---- memory ------------------------------------------------------------- */
void *sd_alloc(size_t size);                 /* 0 when out of memory */
void sd_free(void *ptr, size_t size);        /* size as allocated; free(0, n) is a no-op */
void *sd_realloc(void *ptr, size_t old_size, size_t new_size);
size_t sd_strlen(const char *s);
bool sd_streq(const char *a, const char *b);
void sd_spin(uint64_t iterations);           /* busy-waits; wasm has no clock */

/* ---- UUIDs: 16 raw bytes for host functions, text inside JSON ----------- */
typedef struct sd_uuid { uint8_t bytes[16]; } sd_uuid;
/* Canonical text (8-4-4-4-12, either case) or 32 hex digits; false if neither. */
bool sd_uuid_parse(const char *text, size_t len, sd_uuid *out);
/* Writes 36 characters and a NUL: out must hold 37. */
void sd_uuid_format(const sd_uuid *id, char out[37]);

/* ---- growable byte buffer, printf subset -------------------------------- */
typedef struct sd_buf {
    char *ptr;
    uint32_t len, cap;
    bool failed; /* an allocation failed: the contents are incomplete */
} sd_buf;

void sd_buf_append(sd_buf *b, const void *data, size_t n);
void sd_buf_puts(sd_buf *b, const char *s);
void sd_buf_putc(sd_buf *b, char c);
void sd_buf_u64(sd_buf *b, uint64_t v);
void sd_buf_i64(sd_buf *b, int64_t v);
/* %s %.*s %c %d %u %ld %lu %lld %llu %x %%; nothing else (no widths, no floats). */
void sd_buf_printf(sd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sd_buf_vprintf(sd_buf *b, const char *fmt, va_list ap);
void sd_buf_clear(sd_buf *b);                /* len = 0, keeps the memory */
void sd_buf_free(sd_buf *b);

/* ---- logging (spacedrive_log) ------------------------------------------- */
enum { SD_DEBUG = 0, SD_INFO = 1, SD_WARN = 2, SD_ERROR = 3 };
void sd_log(int level, const char *msg, size_t len);
void sd_log_str(int level, const char *msg);
void sd_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- JSON reader ---------------------------------------------------------
 * An sd_json is a span of text holding one JSON value; ptr == 0 means
 * "missing" (absent key, index out of range, invalid input). sd_json_parse
 * validates a whole document (RFC 8259 grammar, nesting up to 128); the
 * accessors then walk it without copying. */
typedef struct sd_json { const char *ptr; uint32_t len; } sd_json;
typedef enum sd_json_type {
    SD_JSON_MISSING = 0, SD_JSON_NULL, SD_JSON_BOOL, SD_JSON_NUMBER,
    SD_JSON_STRING, SD_JSON_ARRAY, SD_JSON_OBJECT
} sd_json_type;

sd_json sd_json_parse(const char *text, size_t len);
sd_json_type sd_json_typeof(sd_json v);
sd_json sd_json_get(sd_json object, const char *key);   /* the first member named key, or missing */
sd_json sd_json_at(sd_json array, uint32_t index);      /* element, or missing */
/* Iterates an object's members or an array's elements (key is missing for arrays):
 *   uint32_t pos = 0; sd_json k, v; while (sd_json_next(obj, &pos, &k, &v)) {...} */
bool sd_json_next(sd_json container, uint32_t *pos, sd_json *key, sd_json *value);
bool sd_json_u64(sd_json v, uint64_t *out);  /* a non-negative integer literal that fits */
bool sd_json_i64(sd_json v, int64_t *out);
bool sd_json_bool(sd_json v, bool *out);
bool sd_json_is_null(sd_json v);
/* Decodes a string value into out (NUL-terminated when it fits). Returns its
 * length in bytes (which may be >= cap: then out holds a prefix), -1 if v is
 * not a string. */
int32_t sd_json_str(sd_json v, char *out, uint32_t cap);
bool sd_json_str_eq(sd_json v, const char *s);          /* v is a string equal to s */

/* ---- JSON writer (compact output into an sd_buf) --------------------------
 *   sd_jw w = {0}; sd_jw_object(&w); sd_jw_key(&w, "n"); sd_jw_u64(&w, 1);
 *   sd_jw_end(&w);  -> w.buf holds {"n":1}; sd_jw_free(&w) when done. */
typedef struct sd_jw {
    sd_buf buf;
    uint32_t depth;
    uint64_t has_items; /* bit d: the container at depth d has an item */
    uint64_t is_array;  /* bit d: the container at depth d is an array */
    bool after_key;
    bool failed;        /* misuse (nesting > 63, end without begin) or out of memory */
} sd_jw;

void sd_jw_object(sd_jw *w);
void sd_jw_array(sd_jw *w);
void sd_jw_end(sd_jw *w);                     /* closes the innermost object or array */
void sd_jw_key(sd_jw *w, const char *key);
void sd_jw_key_n(sd_jw *w, const char *key, size_t n);
void sd_jw_string(sd_jw *w, const char *s);
void sd_jw_string_n(sd_jw *w, const char *s, size_t n);
void sd_jw_u64(sd_jw *w, uint64_t v);
void sd_jw_i64(sd_jw *w, int64_t v);
void sd_jw_bool(sd_jw *w, bool v);
void sd_jw_null(sd_jw *w);
void sd_jw_raw(sd_jw *w, sd_json value);      /* a value from the reader, verbatim */
bool sd_jw_ok(const sd_jw *w);                /* complete and nothing failed */
void sd_jw_free(sd_jw *w);

/* ---- spacedrive_call (ABI.md §3.1) --------------------------------------- */
typedef enum sd_call_status {
    SD_CALL_OK = 0,         /* result holds the "ok" value */
    SD_CALL_HOST_ERROR,     /* code/message from {"error": ...} (code -1 if absent) */
    SD_CALL_NO_REPLY,       /* the host got 0 from wasm_alloc for the reply */
    SD_CALL_PROTOCOL        /* the reply is not a JSON object with "ok" or "error" */
} sd_call_status;

typedef struct sd_reply {
    sd_call_status status;
    int64_t code;
    sd_json result;   /* SD_CALL_OK: the "ok" value (points into buf) */
    sd_json message;  /* SD_CALL_HOST_ERROR: the message string value, maybe missing */
    char *buf;        /* the reply buffer the host allocated; sd_reply_free releases it */
    uint32_t buf_size;
} sd_reply;

/* library_id 0 = no library. payload is JSON text (len bytes; "{}" for nothing). */
sd_reply sd_call(const char *method, const sd_uuid *library_id, const char *payload, size_t len);
void sd_reply_free(sd_reply *r);
/* "host error <code>: <message>", "host could not allocate the reply", "malformed reply". */
void sd_reply_describe(const sd_reply *r, sd_buf *out);

/* ---- jobs (ABI.md §3.4, §4) ---------------------------------------------- */
typedef enum sd_interrupt { SD_CONTINUE = 0, SD_PAUSE = 1, SD_CANCEL = 2 } sd_interrupt;

enum { /* job export return codes; the first two are ABI, the rest the SDKs' */
    SD_JOB_COMPLETED = 0, SD_JOB_INTERRUPTED = 1, SD_JOB_FAILED = 2,
    SD_JOB_BAD_CONTEXT = 3, SD_JOB_BAD_STATE = 4
};

typedef struct sd_job {
    sd_uuid id;            /* the 16 bytes every job host function takes */
    char id_text[37];      /* as ctx gave it, canonical */
    bool has_library;
    sd_uuid library_id;
    sd_json extension_id;  /* a JSON string, or missing */
    bool resumed;          /* true when state is a checkpoint being resumed */
    sd_interrupt asked;    /* the last answer of sd_job_check_interrupt */
} sd_job;

typedef int32_t (*sd_job_handler)(sd_job *job, sd_json state);

/* progress is clamped to 0..1 (NaN -> 0); msg may be empty. */
void sd_job_progress(sd_job *job, float progress, const char *msg);
/* 0 when durably saved (the output if the job then completes), else not saved. */
int32_t sd_job_checkpoint(sd_job *job, const char *state, size_t len);
int32_t sd_job_checkpoint_jw(sd_job *job, const sd_jw *state);
/* Any host answer above 2 counts as SD_CANCEL. Returning SD_JOB_INTERRUPTED is
 * valid only after this said SD_PAUSE or SD_CANCEL. */
sd_interrupt sd_job_check_interrupt(sd_job *job);
void sd_job_warn(sd_job *job, const char *msg);
void sd_job_items(sd_job *job, uint64_t n);   /* saturates at INT64_MAX */
void sd_job_bytes(sd_job *job, uint64_t n);
/* sd_call with the job's library. */
sd_reply sd_job_call(sd_job *job, const char *method, const char *payload, size_t len);
/* Logs msg at error level and returns SD_JOB_FAILED. */
int32_t sd_job_fail(sd_job *job, const char *msg);

/* ---- file bytes: entry_read (ABI v2, ABI.md §3.5) ---------------------------
 * Reads up to len bytes (at most SD_ENTRY_READ_MAX a call) of file entry
 * entry_id (query:entries.list.v1's id) from offset straight into buf: no JSON,
 * no base64. Returns the bytes read, fewer than asked only at the end of the
 * file, 0 at or past it; or a negative code, SD_READ_*. The host checks what
 * query:entries.read.v1 checks: the manifest must grant that exact name (a
 * prefix is not enough) and the library; each call counts against the rate
 * limit; a symlink on the path is never followed. A buffer outside memory
 * traps (the job fails). A buffer aligned to 4096 bytes is copied into fastest.
 * Calling either function makes the module import entry_read: it then needs
 * ABI version 2 (a v1 host refuses it at install). */
#define SD_ENTRY_READ_MAX (16u << 20)
enum {
    SD_READ_NO_LIBRARY = -32001,      /* library_id 0 (a job without a library) */
    SD_READ_UNKNOWN_LIBRARY = -32002,
    SD_READ_NOT_PERMITTED = -32003,   /* query:entries.read.v1 or the library not granted */
    SD_READ_RATE_LIMITED = -32004,
    SD_READ_NO_ENTRY = -32006,        /* no such entry, or its file is gone */
    SD_READ_NOT_A_FILE = -32007,      /* not a regular file, a symlink on its path, unreadable */
    SD_READ_BAD_OFFSET = -32602       /* offset above INT64_MAX */
};
int64_t sd_entry_read(const sd_uuid *library_id, int64_t entry_id, uint64_t offset, void *buf,
                      size_t len);
/* sd_entry_read in the job's library. */
int64_t sd_job_read(sd_job *job, int64_t entry_id, uint64_t offset, void *buf, size_t len);
/* A fixed text for a negative code of sd_entry_read (the Rust SDK's texts). */
const char *sd_read_error(int64_t code);

/* The body of every job export: parses ctx (job_id required; else logs and
 * returns 3) and state (empty, blank or null -> {}; invalid JSON -> logs and
 * returns 4), then returns handler(job, state). The handler checkpoints its
 * output before returning SD_JOB_COMPLETED: the job's output is its last
 * checkpoint. */
int32_t sd_run_job(int32_t ctx_ptr, int32_t ctx_len, int32_t state_ptr, int32_t state_len,
                   sd_job_handler handler);
/* register_job during plugin_init; logs and returns non-zero if refused. */
int32_t sd_register_job(const char *name, const char *export_name, bool resumable);

typedef int32_t (*sd_hook)(void); /* init / cleanup: 0 ok, else the hook logs why */
int32_t sd__plugin_init_done(sd_hook init);
int32_t sd__plugin_cleanup(sd_hook cleanup);

/* ---- SD_EXTENSION ---------------------------------------------------------
 * Declares the jobs and generates plugin_init, plugin_cleanup and one export
 * per job. JOBS is an X-macro naming each job once:
 *
 *   #define JOBS(JOB) \
 *       JOB("counter", execute_counter, counter, SD_RESUMABLE) \
 *       JOB("trap", execute_trap, trap, 0)
 *   SD_EXTENSION(JOBS, init, cleanup)    // init/cleanup: sd_hook or 0
 *
 * plugin_init registers the jobs in order (returns 1 if one is refused), then
 * runs init (returns 2 if it returned non-zero). plugin_cleanup returns 1 if
 * cleanup returned non-zero. */
#define SD_RESUMABLE 1
#define SD__JOB_EXPORT(name, export_fn, handler, resumable)                        \
    SD_EXPORT(export_fn) int32_t export_fn(int32_t c, int32_t cl, int32_t s, int32_t sl); \
    int32_t export_fn(int32_t c, int32_t cl, int32_t s, int32_t sl) {                \
        return sd_run_job(c, cl, s, sl, handler);                                  \
    }
#define SD__JOB_REGISTER(name, export_fn, handler, resumable)                      \
    if (sd_register_job(name, #export_fn, (resumable) != 0) != 0) return 1;
#define SD_EXTENSION(JOBS, init, cleanup)                                          \
    JOBS(SD__JOB_EXPORT)                                                           \
    SD_EXPORT(plugin_init) int32_t plugin_init(void);                              \
    int32_t plugin_init(void) {                                                    \
        JOBS(SD__JOB_REGISTER)                                                     \
        return sd__plugin_init_done(init);                                         \
    }                                                                              \
    SD_EXPORT(plugin_cleanup) int32_t plugin_cleanup(void);                        \
    int32_t plugin_cleanup(void) { return sd__plugin_cleanup(cleanup); }

/* The allocator's exports (defined by the implementation). */
SD_EXPORT(wasm_alloc) int32_t wasm_alloc(int32_t size);
SD_EXPORT(wasm_free) void wasm_free(int32_t ptr, int32_t size);

#ifdef __cplusplus
}
#endif
#endif /* SPACEDRIVE_H */

/* ========================================================================== */
#ifdef SPACEDRIVE_IMPLEMENTATION
#ifndef SPACEDRIVE_IMPLEMENTED
#define SPACEDRIVE_IMPLEMENTED

/* ---- memory primitives the compiler may call ---------------------------- */
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}
__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (d < s) { while (n--) *d++ = *s++; }
    else { while (n--) d[n] = s[n]; }
    return dst;
}
__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}
__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (; n; n--, x++, y++) if (*x != *y) return *x - *y;
    return 0;
}

size_t sd_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

bool sd_streq(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

void sd_spin(uint64_t iterations) {
    for (volatile uint64_t i = 0; i < iterations; i = i + 1) {}
}

/* ---- allocator ------------------------------------------------------------
 * 13 power-of-two classes (16 B .. 64 KiB), each with a free list; larger
 * blocks are whole 64 KiB pages on one first-fit list (a free large block
 * records its size). New memory comes from a bump pointer that grows memory. */
#define SD__PAGE 65536u
#define SD__SMALL_CLASSES 13
extern unsigned char __heap_base[];
typedef struct sd__free_block { struct sd__free_block *next; uint32_t size; } sd__free_block;
static sd__free_block *sd__small_free[SD__SMALL_CLASSES];
static sd__free_block *sd__large_free;
static uintptr_t sd__top, sd__end;
static unsigned char sd__empty_block[1]; /* what wasm_alloc(0) returns */

static uint32_t sd__block_size(uint32_t size, int *cls) {
    if (size <= 16) { *cls = 0; return 16; }
    if (size <= SD__PAGE) {
        int bits = 32 - __builtin_clz(size - 1);
        *cls = bits - 4;
        return 1u << bits;
    }
    *cls = -1;
    return (size + SD__PAGE - 1) & ~(SD__PAGE - 1);
}

static void *sd__bump(uint32_t size) {
    if (sd__top == 0) {
        sd__top = ((uintptr_t)__heap_base + 15) & ~(uintptr_t)15;
        sd__end = (uintptr_t)__builtin_wasm_memory_size(0) * SD__PAGE;
    }
    if (size > 0xFFFFFFFFu - sd__top) return 0;
    if (sd__top + size > sd__end) {
        uintptr_t need = sd__top + size - sd__end;
        uintptr_t pages = (need + SD__PAGE - 1) / SD__PAGE;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
        sd__end += pages * SD__PAGE;
    }
    void *p = (void *)sd__top;
    sd__top += size;
    return p;
}

void *sd_alloc(size_t size) {
    if (size == 0) return sd__empty_block;
    if (size > 0x7FFF0000u) return 0;
    int cls;
    uint32_t bsize = sd__block_size((uint32_t)size, &cls);
    if (cls >= 0) {
        sd__free_block *b = sd__small_free[cls];
        if (b) { sd__small_free[cls] = b->next; return b; }
    } else {
        for (sd__free_block **at = &sd__large_free; *at; at = &(*at)->next) {
            if ((*at)->size == bsize) {
                sd__free_block *b = *at;
                *at = b->next;
                return b;
            }
        }
    }
    return sd__bump(bsize);
}

void sd_free(void *ptr, size_t size) {
    if (ptr == 0 || size == 0 || ptr == (void *)sd__empty_block) return;
    int cls;
    uint32_t bsize = sd__block_size((uint32_t)size, &cls);
    sd__free_block *b = (sd__free_block *)ptr;
    b->size = bsize;
    if (cls >= 0) { b->next = sd__small_free[cls]; sd__small_free[cls] = b; }
    else { b->next = sd__large_free; sd__large_free = b; }
}

void *sd_realloc(void *ptr, size_t old_size, size_t new_size) {
    int c1, c2;
    if (ptr && old_size && new_size &&
        sd__block_size((uint32_t)old_size, &c1) == sd__block_size((uint32_t)new_size, &c2))
        return ptr;
    void *p = sd_alloc(new_size);
    if (p == 0) return 0;
    if (ptr) {
        memcpy(p, ptr, old_size < new_size ? old_size : new_size);
        sd_free(ptr, old_size);
    }
    return p;
}

int32_t wasm_alloc(int32_t size) {
    if (size < 0) return 0;
    return (int32_t)(uintptr_t)sd_alloc((size_t)size);
}

void wasm_free(int32_t ptr, int32_t size) {
    if (size < 0) return;
    sd_free((void *)(uintptr_t)ptr, (size_t)size);
}

/* ---- UUIDs ------------------------------------------------------------- */
static int sd__hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool sd_uuid_parse(const char *text, size_t len, sd_uuid *out) {
    if (len != 36 && len != 32) return false;
    size_t i = 0;
    for (int n = 0; n < 16; n++) {
        if (len == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (text[i] != '-') return false;
            i++;
        }
        int hi = sd__hex(text[i]), lo = sd__hex(text[i + 1]);
        if (hi < 0 || lo < 0) return false;
        out->bytes[n] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return true;
}

void sd_uuid_format(const sd_uuid *id, char out[37]) {
    static const char digits[] = "0123456789abcdef";
    char *o = out;
    for (int n = 0; n < 16; n++) {
        if (n == 4 || n == 6 || n == 8 || n == 10) *o++ = '-';
        *o++ = digits[id->bytes[n] >> 4];
        *o++ = digits[id->bytes[n] & 15];
    }
    *o = 0;
}

/* ---- sd_buf ------------------------------------------------------------ */
void sd_buf_append(sd_buf *b, const void *data, size_t n) {
    if (b->failed || n == 0) return;
    if (n > 0x7FFF0000u - b->len) { b->failed = true; return; }
    if (b->len + n > b->cap) {
        uint32_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n) cap = cap > 0x3FFF8000u ? 0x7FFF0000u : cap * 2;
        char *p = (char *)sd_realloc(b->ptr, b->cap, cap);
        if (p == 0) { b->failed = true; return; }
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, n);
    b->len += (uint32_t)n;
}

void sd_buf_puts(sd_buf *b, const char *s) { sd_buf_append(b, s, sd_strlen(s)); }
void sd_buf_putc(sd_buf *b, char c) { sd_buf_append(b, &c, 1); }

static void sd__buf_unsigned(sd_buf *b, uint64_t v, unsigned base) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    char out[24];
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    sd_buf_append(b, out, (size_t)n);
}

void sd_buf_u64(sd_buf *b, uint64_t v) { sd__buf_unsigned(b, v, 10); }

void sd_buf_i64(sd_buf *b, int64_t v) {
    if (v < 0) {
        sd_buf_putc(b, '-');
        sd__buf_unsigned(b, (uint64_t)0 - (uint64_t)v, 10);
    } else {
        sd__buf_unsigned(b, (uint64_t)v, 10);
    }
}

void sd_buf_vprintf(sd_buf *b, const char *fmt, va_list ap) {
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            const char *q = p;
            while (*q && *q != '%') q++;
            sd_buf_append(b, p, (size_t)(q - p));
            p = q - 1;
            continue;
        }
        p++;
        if (*p == '%') { sd_buf_putc(b, '%'); continue; }
        if (p[0] == '.' && p[1] == '*' && p[2] == 's') {
            int n = va_arg(ap, int);
            const char *s = va_arg(ap, const char *);
            sd_buf_append(b, s, n > 0 ? (size_t)n : 0);
            p += 2;
            continue;
        }
        int longs = 0;
        while (*p == 'l') { longs++; p++; }
        switch (*p) {
        case 's': sd_buf_puts(b, va_arg(ap, const char *)); break;
        case 'c': sd_buf_putc(b, (char)va_arg(ap, int)); break;
        case 'd':
            sd_buf_i64(b, longs == 2 ? va_arg(ap, long long)
                          : longs == 1 ? va_arg(ap, long) : va_arg(ap, int));
            break;
        case 'u':
        case 'x':
            sd__buf_unsigned(b, longs == 2 ? va_arg(ap, unsigned long long)
                                : longs == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned),
                             *p == 'x' ? 16 : 10);
            break;
        default: /* unsupported: show it rather than guess at the arguments */
            sd_buf_puts(b, "%?");
            return;
        }
    }
}

void sd_buf_printf(sd_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sd_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void sd_buf_clear(sd_buf *b) { b->len = 0; b->failed = false; }

void sd_buf_free(sd_buf *b) {
    sd_free(b->ptr, b->cap);
    b->ptr = 0;
    b->len = b->cap = 0;
    b->failed = false;
}

/* ---- logging ----------------------------------------------------------- */
void sd_log(int level, const char *msg, size_t len) { sd_raw_log(level, msg, (int32_t)len); }
void sd_log_str(int level, const char *msg) { sd_log(level, msg, sd_strlen(msg)); }

void sd_logf(int level, const char *fmt, ...) {
    sd_buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    sd_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    sd_log(level, b.ptr ? b.ptr : "", b.len);
    sd_buf_free(&b);
}

/* ---- JSON reader ------------------------------------------------------- */
#define SD__JSON_MAX_DEPTH 128

static const char *sd__ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static const char *sd__skip_string(const char *p, const char *end) {
    if (p >= end || *p != '"') return 0;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (++p >= end) return 0;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': break;
            case 'u':
                if (end - p < 5) return 0;
                for (int i = 1; i <= 4; i++) if (sd__hex(p[i]) < 0) return 0;
                p += 4;
                break;
            default: return 0;
            }
        }
    }
    return 0;
}

static const char *sd__digits(const char *p, const char *end) {
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p == s ? 0 : p;
}

static const char *sd__skip_number(const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0') p++;
    else if (!(p = sd__digits(p, end))) return 0;
    if (p < end && *p == '.' && !(p = sd__digits(p + 1, end))) return 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!(p = sd__digits(p, end))) return 0;
    }
    return p;
}

static const char *sd__skip_literal(const char *p, const char *end, const char *lit) {
    for (; *lit; lit++, p++) if (p >= end || *p != *lit) return 0;
    return p;
}

static const char *sd__skip_value(const char *p, const char *end, int depth) {
    if (p >= end || depth > SD__JSON_MAX_DEPTH) return 0;
    switch (*p) {
    case '"': return sd__skip_string(p, end);
    case 't': return sd__skip_literal(p, end, "true");
    case 'f': return sd__skip_literal(p, end, "false");
    case 'n': return sd__skip_literal(p, end, "null");
    case '{': case '[': {
        char close = *p == '{' ? '}' : ']';
        bool object = *p == '{';
        p = sd__ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (object) {
                if (!(p = sd__skip_string(p, end))) return 0;
                p = sd__ws(p, end);
                if (p >= end || *p != ':') return 0;
                p = sd__ws(p + 1, end);
            }
            if (!(p = sd__skip_value(p, end, depth + 1))) return 0;
            p = sd__ws(p, end);
            if (p < end && *p == ',') { p = sd__ws(p + 1, end); continue; }
            if (p < end && *p == close) return p + 1;
            return 0;
        }
    }
    default: return (*p == '-' || (*p >= '0' && *p <= '9')) ? sd__skip_number(p, end) : 0;
    }
}

static const sd_json sd__missing = {0, 0};

sd_json sd_json_parse(const char *text, size_t len) {
    if (text == 0) return sd__missing;
    const char *end = text + len;
    const char *p = sd__ws(text, end);
    const char *v_end = sd__skip_value(p, end, 0);
    if (!v_end || sd__ws(v_end, end) != end) return sd__missing;
    sd_json v = {p, (uint32_t)(v_end - p)};
    return v;
}

sd_json_type sd_json_typeof(sd_json v) {
    if (!v.ptr || !v.len) return SD_JSON_MISSING;
    switch (v.ptr[0]) {
    case 'n': return SD_JSON_NULL;
    case 't': case 'f': return SD_JSON_BOOL;
    case '"': return SD_JSON_STRING;
    case '[': return SD_JSON_ARRAY;
    case '{': return SD_JSON_OBJECT;
    default: return SD_JSON_NUMBER;
    }
}

bool sd_json_next(sd_json c, uint32_t *pos, sd_json *key, sd_json *value) {
    sd_json_type t = sd_json_typeof(c);
    if (t != SD_JSON_OBJECT && t != SD_JSON_ARRAY) return false;
    const char *end = c.ptr + c.len;
    const char *p = sd__ws(c.ptr + (*pos ? *pos : 1), end);
    if (p >= end || *p == '}' || *p == ']') return false;
    if (*p == ',') p = sd__ws(p + 1, end);
    sd_json k = sd__missing;
    if (t == SD_JSON_OBJECT) {
        const char *k_end = sd__skip_string(p, end);
        if (!k_end) return false;
        k.ptr = p;
        k.len = (uint32_t)(k_end - p);
        p = sd__ws(k_end, end);
        if (p >= end || *p != ':') return false;
        p = sd__ws(p + 1, end);
    }
    const char *v_end = sd__skip_value(p, end, 1);
    if (!v_end) return false;
    if (key) *key = k;
    if (value) { value->ptr = p; value->len = (uint32_t)(v_end - p); }
    *pos = (uint32_t)(v_end - c.ptr);
    return true;
}

sd_json sd_json_get(sd_json object, const char *name) {
    if (sd_json_typeof(object) != SD_JSON_OBJECT) return sd__missing;
    uint32_t pos = 0;
    sd_json k, v;
    while (sd_json_next(object, &pos, &k, &v))
        if (sd_json_str_eq(k, name)) return v;
    return sd__missing;
}

sd_json sd_json_at(sd_json array, uint32_t index) {
    if (sd_json_typeof(array) != SD_JSON_ARRAY) return sd__missing;
    uint32_t pos = 0;
    sd_json v;
    while (sd_json_next(array, &pos, 0, &v))
        if (index-- == 0) return v;
    return sd__missing;
}

bool sd_json_u64(sd_json v, uint64_t *out) {
    if (sd_json_typeof(v) != SD_JSON_NUMBER || v.ptr[0] == '-') return false;
    uint64_t n = 0;
    for (uint32_t i = 0; i < v.len; i++) {
        char c = v.ptr[i];
        if (c < '0' || c > '9') return false; /* a fraction or exponent */
        if (n > (UINT64_MAX - (uint64_t)(c - '0')) / 10) return false;
        n = n * 10 + (uint64_t)(c - '0');
    }
    *out = n;
    return true;
}

bool sd_json_i64(sd_json v, int64_t *out) {
    if (sd_json_typeof(v) != SD_JSON_NUMBER) return false;
    bool neg = v.ptr[0] == '-';
    sd_json digits = {v.ptr + neg, v.len - neg};
    uint64_t n;
    if (!digits.len || digits.ptr[0] == '-' || !sd_json_u64(digits, &n)) return false;
    if (n > (uint64_t)INT64_MAX + neg) return false;
    *out = neg ? (int64_t)(0 - n) : (int64_t)n;
    return true;
}

bool sd_json_bool(sd_json v, bool *out) {
    if (sd_json_typeof(v) != SD_JSON_BOOL) return false;
    *out = v.ptr[0] == 't';
    return true;
}

bool sd_json_is_null(sd_json v) { return sd_json_typeof(v) == SD_JSON_NULL; }

static uint32_t sd__hex4(const char *p) {
    return (uint32_t)(sd__hex(p[0]) << 12 | sd__hex(p[1]) << 8 | sd__hex(p[2]) << 4 | sd__hex(p[3]));
}

static int sd__utf8(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* Decodes the next character of a validated string body at *p into o; returns its length. */
static int sd__next_char(const char **p, char *o) {
    const char *s = *p;
    if (*s != '\\') { *o = *s; *p = s + 1; return 1; }
    s++;
    char c = *s++;
    *p = s;
    switch (c) {
    case 'b': *o = '\b'; return 1;
    case 'f': *o = '\f'; return 1;
    case 'n': *o = '\n'; return 1;
    case 'r': *o = '\r'; return 1;
    case 't': *o = '\t'; return 1;
    case 'u': break;
    default: *o = c; return 1;
    }
    uint32_t cp = sd__hex4(s);
    *p = s + 4;
    if (cp >= 0xD800 && cp < 0xDC00 && s[4] == '\\' && s[5] == 'u') {
        uint32_t lo = sd__hex4(s + 6);
        if (lo >= 0xDC00 && lo < 0xE000) {
            *p = s + 10;
            return sd__utf8(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00), o);
        }
    }
    if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate */
    return sd__utf8(cp, o);
}

int32_t sd_json_str(sd_json v, char *out, uint32_t cap) {
    if (sd_json_typeof(v) != SD_JSON_STRING) return -1;
    const char *p = v.ptr + 1, *end = v.ptr + v.len - 1;
    uint32_t n = 0;
    char ch[4];
    while (p < end) {
        int k = sd__next_char(&p, ch);
        for (int i = 0; i < k; i++, n++) if (n < cap) out[n] = ch[i];
    }
    if (n < cap) out[n] = 0;
    return (int32_t)n;
}

bool sd_json_str_eq(sd_json v, const char *s) {
    if (sd_json_typeof(v) != SD_JSON_STRING) return false;
    const char *p = v.ptr + 1, *end = v.ptr + v.len - 1;
    char ch[4];
    while (p < end) {
        int k = sd__next_char(&p, ch);
        for (int i = 0; i < k; i++, s++) if (*s != ch[i]) return false;
    }
    return *s == 0;
}

/* ---- JSON writer ------------------------------------------------------- */
static void sd__jw_value(sd_jw *w) {
    if (w->after_key) { w->after_key = false; return; }
    if (w->depth == 0) {
        if (w->buf.len) w->failed = true; /* a second top-level value */
        return;
    }
    uint64_t bit = 1ull << w->depth;
    if (!(w->is_array & bit)) { w->failed = true; return; } /* a value without a key */
    if (w->has_items & bit) sd_buf_putc(&w->buf, ',');
    w->has_items |= bit;
}

static void sd__jw_open(sd_jw *w, char c, bool array) {
    sd__jw_value(w);
    if (w->depth >= 63) { w->failed = true; return; }
    sd_buf_putc(&w->buf, c);
    w->depth++;
    uint64_t bit = 1ull << w->depth;
    w->has_items &= ~bit;
    w->is_array = array ? (w->is_array | bit) : (w->is_array & ~bit);
}

void sd_jw_object(sd_jw *w) { sd__jw_open(w, '{', false); }
void sd_jw_array(sd_jw *w) { sd__jw_open(w, '[', true); }

void sd_jw_end(sd_jw *w) {
    if (w->depth == 0 || w->after_key) { w->failed = true; return; }
    sd_buf_putc(&w->buf, (w->is_array >> w->depth) & 1 ? ']' : '}');
    w->depth--;
}

static void sd__jw_quoted(sd_jw *w, const char *s, size_t n) {
    sd_buf_putc(&w->buf, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sd_buf_append(&w->buf, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0};
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = "0123456789abcdef"[c >> 4]; esc[5] = "0123456789abcdef"[c & 15];
            sd_buf_append(&w->buf, esc, 6);
            continue;
        }
        sd_buf_append(&w->buf, esc, 2);
    }
    sd_buf_append(&w->buf, s + run, n - run);
    sd_buf_putc(&w->buf, '"');
}

void sd_jw_key(sd_jw *w, const char *key) { sd_jw_key_n(w, key, sd_strlen(key)); }

void sd_jw_key_n(sd_jw *w, const char *key, size_t n) {
    uint64_t bit = 1ull << w->depth;
    if (w->depth == 0 || (w->is_array & bit) || w->after_key) { w->failed = true; return; }
    if (w->has_items & bit) sd_buf_putc(&w->buf, ',');
    w->has_items |= bit;
    sd__jw_quoted(w, key, n);
    sd_buf_putc(&w->buf, ':');
    w->after_key = true;
}

void sd_jw_string_n(sd_jw *w, const char *s, size_t n) { sd__jw_value(w); sd__jw_quoted(w, s, n); }
void sd_jw_string(sd_jw *w, const char *s) { sd_jw_string_n(w, s, sd_strlen(s)); }
void sd_jw_u64(sd_jw *w, uint64_t v) { sd__jw_value(w); sd_buf_u64(&w->buf, v); }
void sd_jw_i64(sd_jw *w, int64_t v) { sd__jw_value(w); sd_buf_i64(&w->buf, v); }
void sd_jw_bool(sd_jw *w, bool v) { sd__jw_value(w); sd_buf_puts(&w->buf, v ? "true" : "false"); }
void sd_jw_null(sd_jw *w) { sd__jw_value(w); sd_buf_puts(&w->buf, "null"); }

void sd_jw_raw(sd_jw *w, sd_json value) {
    if (!value.ptr) { w->failed = true; return; }
    sd__jw_value(w);
    sd_buf_append(&w->buf, value.ptr, value.len);
}

bool sd_jw_ok(const sd_jw *w) {
    return !w->failed && !w->buf.failed && w->depth == 0 && !w->after_key && w->buf.len > 0;
}

void sd_jw_free(sd_jw *w) {
    sd_buf_free(&w->buf);
    w->depth = 0;
    w->has_items = w->is_array = 0;
    w->after_key = w->failed = false;
}

/* ---- spacedrive_call --------------------------------------------------- */
sd_reply sd_call(const char *method, const sd_uuid *library_id, const char *payload, size_t len) {
    sd_reply r = {SD_CALL_PROTOCOL, -1, {0, 0}, {0, 0}, 0, 0};
    int32_t p = sd_raw_call(method, (int32_t)sd_strlen(method),
                            library_id ? library_id->bytes : 0, payload, (int32_t)len);
    if (p == 0) { r.status = SD_CALL_NO_REPLY; return r; }
    const unsigned char *h = (const unsigned char *)(uintptr_t)p;
    uint32_t n = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
    r.buf = (char *)(uintptr_t)p;
    r.buf_size = 4 + n;
    sd_json env = sd_json_parse(r.buf + 4, n);
    sd_json ok = sd_json_get(env, "ok"), err = sd_json_get(env, "error");
    if (ok.ptr) {
        r.status = SD_CALL_OK;
        r.result = ok;
    } else if (err.ptr) {
        r.status = SD_CALL_HOST_ERROR;
        if (!sd_json_i64(sd_json_get(err, "code"), &r.code)) r.code = -1;
        r.message = sd_json_get(err, "message");
    }
    return r;
}

void sd_reply_free(sd_reply *r) {
    if (r->buf) wasm_free((int32_t)(uintptr_t)r->buf, (int32_t)r->buf_size);
    r->buf = 0;
    r->buf_size = 0;
    r->result = r->message = sd__missing;
}

void sd_reply_describe(const sd_reply *r, sd_buf *out) {
    switch (r->status) {
    case SD_CALL_OK: sd_buf_puts(out, "ok"); break;
    case SD_CALL_NO_REPLY: sd_buf_puts(out, "host could not allocate the reply"); break;
    case SD_CALL_PROTOCOL: sd_buf_puts(out, "malformed reply"); break;
    case SD_CALL_HOST_ERROR: {
        sd_buf_printf(out, "host error %lld: ", (long long)r->code);
        int32_t n = sd_json_str(r->message, 0, 0);
        if (n > 0) {
            uint32_t at = out->len;
            sd_buf_append(out, r->message.ptr, (size_t)n); /* room, overwritten below */
            if (!out->failed) sd_json_str(r->message, out->ptr + at, (uint32_t)n);
        }
        break;
    }
    }
}

/* ---- jobs -------------------------------------------------------------- */
void sd_job_progress(sd_job *job, float progress, const char *msg) {
    if (!(progress >= 0.0f)) progress = 0.0f; /* also NaN */
    if (progress > 1.0f) progress = 1.0f;
    sd_raw_job_report_progress(job->id.bytes, progress, msg, (int32_t)sd_strlen(msg));
}

int32_t sd_job_checkpoint(sd_job *job, const char *state, size_t len) {
    return sd_raw_job_checkpoint(job->id.bytes, state, (int32_t)len);
}

int32_t sd_job_checkpoint_jw(sd_job *job, const sd_jw *state) {
    if (!sd_jw_ok(state)) return -1;
    return sd_job_checkpoint(job, state->buf.ptr, state->buf.len);
}

sd_interrupt sd_job_check_interrupt(sd_job *job) {
    int32_t r = sd_raw_job_check_interrupt(job->id.bytes);
    job->asked = r == 0 ? SD_CONTINUE : r == 1 ? SD_PAUSE : SD_CANCEL;
    return job->asked;
}

void sd_job_warn(sd_job *job, const char *msg) {
    sd_raw_job_add_warning(job->id.bytes, msg, (int32_t)sd_strlen(msg));
}

void sd_job_items(sd_job *job, uint64_t n) {
    sd_raw_job_increment_items(job->id.bytes, n > INT64_MAX ? INT64_MAX : (int64_t)n);
}

void sd_job_bytes(sd_job *job, uint64_t n) {
    sd_raw_job_increment_bytes(job->id.bytes, n > INT64_MAX ? INT64_MAX : (int64_t)n);
}

sd_reply sd_job_call(sd_job *job, const char *method, const char *payload, size_t len) {
    return sd_call(method, job->has_library ? &job->library_id : 0, payload, len);
}

int32_t sd_job_fail(sd_job *job, const char *msg) {
    (void)job;
    sd_log_str(SD_ERROR, msg);
    return SD_JOB_FAILED;
}

int64_t sd_entry_read(const sd_uuid *library_id, int64_t entry_id, uint64_t offset, void *buf,
                      size_t len) {
    if (offset > (uint64_t)INT64_MAX) return SD_READ_BAD_OFFSET;
    if (len > SD_ENTRY_READ_MAX) len = SD_ENTRY_READ_MAX; /* the host writes no more */
    return sd_raw_entry_read(library_id ? library_id->bytes : 0, entry_id, (int64_t)offset, buf,
                             (int32_t)len);
}

int64_t sd_job_read(sd_job *job, int64_t entry_id, uint64_t offset, void *buf, size_t len) {
    return sd_entry_read(job->has_library ? &job->library_id : 0, entry_id, offset, buf, len);
}

const char *sd_read_error(int64_t code) {
    switch (code) {
    case SD_READ_NO_LIBRARY: return "entry_read needs a library";
    case SD_READ_UNKNOWN_LIBRARY: return "no such library";
    case SD_READ_NOT_PERMITTED:
        return "permission denied: entry_read needs query:entries.read.v1 granted by its exact name";
    case SD_READ_RATE_LIMITED: return "rate limited";
    case SD_READ_NO_ENTRY: return "no such entry, or its file is gone";
    case SD_READ_NOT_A_FILE: return "not a readable regular file (a symlink, changed, or unreadable)";
    case SD_READ_BAD_OFFSET: return "invalid offset";
    default: return "entry_read failed";
    }
}

static bool sd__uuid_field(sd_json v, sd_uuid *out) {
    char text[40];
    int32_t n = sd_json_str(v, text, sizeof text);
    return n > 0 && n < (int32_t)sizeof text && sd_uuid_parse(text, (size_t)n, out);
}

int32_t sd_run_job(int32_t ctx_ptr, int32_t ctx_len, int32_t state_ptr, int32_t state_len,
                   sd_job_handler handler) {
    sd_job job;
    memset(&job, 0, sizeof job);
    sd_json ctx = sd_json_parse((const char *)(uintptr_t)ctx_ptr, (size_t)ctx_len);
    if (!sd__uuid_field(sd_json_get(ctx, "job_id"), &job.id)) {
        sd_log_str(SD_ERROR, "invalid job context: no job_id holding a UUID");
        return SD_JOB_BAD_CONTEXT;
    }
    sd_uuid_format(&job.id, job.id_text);
    sd_json lib = sd_json_get(ctx, "library_id");
    job.has_library = sd__uuid_field(lib, &job.library_id);
    if (lib.ptr && !job.has_library && !sd_json_is_null(lib)) {
        sd_log_str(SD_ERROR, "invalid job context: library_id is not a UUID");
        return SD_JOB_BAD_CONTEXT;
    }
    job.extension_id = sd_json_get(ctx, "extension_id");
    sd_json_bool(sd_json_get(ctx, "resumed"), &job.resumed);

    const char *s = (const char *)(uintptr_t)state_ptr;
    size_t slen = state_len > 0 ? (size_t)state_len : 0;
    const char *t = sd__ws(s, s + slen);
    sd_json state;
    if (t == s + slen || (s + slen - t >= 4 && sd_json_is_null(sd_json_parse(s, slen))))
        state = sd_json_parse("{}", 2);
    else
        state = sd_json_parse(s, slen);
    if (!state.ptr) {
        sd_log_str(SD_ERROR, "invalid job state: not a JSON document");
        return SD_JOB_BAD_STATE;
    }
    return handler(&job, state);
}

int32_t sd_register_job(const char *name, const char *export_name, bool resumable) {
    int32_t rc = sd_raw_register_job(name, (int32_t)sd_strlen(name), export_name,
                                     (int32_t)sd_strlen(export_name), resumable ? 1 : 0);
    if (rc != 0) sd_logf(SD_ERROR, "register_job(\"%s\", \"%s\") failed with code %d", name,
                         export_name, (int)rc);
    return rc;
}

int32_t sd__plugin_init_done(sd_hook init) {
    if (init && init() != 0) return 2;
    return 0;
}

int32_t sd__plugin_cleanup(sd_hook cleanup) {
    return cleanup && cleanup() != 0 ? 1 : 0;
}

#endif /* SPACEDRIVE_IMPLEMENTED */
#endif /* SPACEDRIVE_IMPLEMENTATION */
