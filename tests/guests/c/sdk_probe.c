/* Exposes spacedrive.h's JSON reader and writer to tests/test_c_sdk.py, which
 * drives this module with wasmtime directly (it imports no host function). */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"

/* [u32 length][bytes] in memory from sd_alloc; the test frees it with wasm_free. */
static int32_t out(const char *p, uint32_t n) {
    unsigned char *o = sd_alloc(4 + n);
    if (!o) return 0;
    o[0] = (unsigned char)n; o[1] = (unsigned char)(n >> 8);
    o[2] = (unsigned char)(n >> 16); o[3] = (unsigned char)(n >> 24);
    memcpy(o + 4, p, n);
    return (int32_t)(uintptr_t)o;
}

static char *decoded(sd_json s, uint32_t *n) {
    *n = (uint32_t)sd_json_str(s, 0, 0);
    char *p = sd_alloc(*n + 1);
    sd_json_str(s, p, *n + 1);
    return p;
}

/* Rewrites v through the writer: strings decoded and re-escaped, numbers verbatim. */
static void copy(sd_jw *w, sd_json v) {
    uint32_t pos = 0, n;
    sd_json k, item;
    bool b;
    char *text;
    switch (sd_json_typeof(v)) {
    case SD_JSON_OBJECT:
        sd_jw_object(w);
        while (sd_json_next(v, &pos, &k, &item)) {
            text = decoded(k, &n);
            sd_jw_key_n(w, text, n);
            sd_free(text, n + 1);
            copy(w, item);
        }
        sd_jw_end(w);
        break;
    case SD_JSON_ARRAY:
        sd_jw_array(w);
        while (sd_json_next(v, &pos, 0, &item)) copy(w, item);
        sd_jw_end(w);
        break;
    case SD_JSON_STRING:
        text = decoded(v, &n);
        sd_jw_string_n(w, text, n);
        sd_free(text, n + 1);
        break;
    case SD_JSON_BOOL: sd_json_bool(v, &b); sd_jw_bool(w, b); break;
    case SD_JSON_NULL: sd_jw_null(w); break;
    case SD_JSON_NUMBER: sd_jw_raw(w, v); break;
    case SD_JSON_MISSING: break;
    }
}

/* 0 if text is not one JSON document, else its copy through the writer. */
SD_EXPORT(probe_json) int32_t probe_json(const char *text, int32_t len) {
    sd_json v = sd_json_parse(text, (size_t)len);
    if (!v.ptr) return 0;
    sd_jw w = {0};
    copy(&w, v);
    int32_t r = sd_jw_ok(&w) ? out(w.buf.ptr, w.buf.len) : out("!", 1);
    sd_jw_free(&w);
    return r;
}

/* The member `key` (NUL-terminated) of the object in text, verbatim; 0 if missing. */
SD_EXPORT(probe_get) int32_t probe_get(const char *text, int32_t len, const char *key) {
    sd_json v = sd_json_get(sd_json_parse(text, (size_t)len), key);
    return v.ptr ? out(v.ptr, v.len) : 0;
}

/* Bit 0: sd_json_u64 accepted (value at *u), bit 1: sd_json_i64 accepted (at *i). */
SD_EXPORT(probe_int) int32_t probe_int(const char *text, int32_t len, uint64_t *u, int64_t *i) {
    sd_json v = sd_json_parse(text, (size_t)len);
    return (sd_json_u64(v, u) ? 1 : 0) | (sd_json_i64(v, i) ? 2 : 0);
}

/* The text of a UUID parsed and formatted again; 0 if it does not parse. */
SD_EXPORT(probe_uuid) int32_t probe_uuid(const char *text, int32_t len) {
    sd_uuid id;
    char canon[37];
    if (!sd_uuid_parse(text, (size_t)len, &id)) return 0;
    sd_uuid_format(&id, canon);
    return out(canon, 36);
}

/* sd_buf_printf with every supported conversion. */
SD_EXPORT(probe_printf) int32_t probe_printf(void) {
    sd_buf b = {0};
    sd_buf_printf(&b, "%s|%.*s|%c|%d|%u|%ld|%lu|%lld|%llu|%x|%%", "str", 3, "abcdef", 'c',
                  -42, 42u, -7L, 7UL, (long long)INT64_MIN, (unsigned long long)UINT64_MAX, 255u);
    int32_t r = out(b.ptr, b.len);
    sd_buf_free(&b);
    return r;
}
