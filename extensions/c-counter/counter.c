/* The test extension's counter (extensions/test-extension) in C: the same log
 * lines, host calls and checkpoints, plus a job that fails and one that traps. */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"

typedef struct { uint64_t current, target, spin; } counter_state;

static bool parse_state(sd_json s, counter_state *st) {
    sd_json cur = sd_json_get(s, "current"), spin = sd_json_get(s, "spin");
    st->current = st->spin = 0;
    return sd_json_u64(sd_json_get(s, "target"), &st->target) &&
           (!cur.ptr || sd_json_u64(cur, &st->current)) &&
           (!spin.ptr || sd_json_u64(spin, &st->spin));
}

/* {"current":N,"target":N} (+ "spin" when not 0), as the Rust counter writes it. */
static int32_t checkpoint(sd_job *job, const counter_state *st) {
    sd_jw w = {0};
    sd_jw_object(&w);
    sd_jw_key(&w, "current"); sd_jw_u64(&w, st->current);
    sd_jw_key(&w, "target"); sd_jw_u64(&w, st->target);
    if (st->spin) { sd_jw_key(&w, "spin"); sd_jw_u64(&w, st->spin); }
    sd_jw_end(&w);
    int32_t rc = sd_job_checkpoint_jw(job, &w);
    sd_jw_free(&w);
    return rc;
}

static void ping(sd_job *job) {
    static const char payload[] = "{\"from\":\"test-extension\"}";
    sd_reply r = sd_job_call(job, "query:test.ping.v1", payload, sizeof payload - 1);
    if (r.status == SD_CALL_OK) {
        sd_json echo = sd_json_get(r.result, "echo");
        if (!echo.ptr) echo = r.result;
        sd_logf(SD_INFO, "ping echo: %.*s", (int)echo.len, echo.ptr);
    } else {
        sd_buf msg = {0};
        sd_buf_puts(&msg, "ping failed: ");
        sd_reply_describe(&r, &msg);
        sd_buf_putc(&msg, 0);
        sd_log_str(SD_WARN, msg.ptr);
        sd_job_warn(job, msg.ptr);
        sd_buf_free(&msg);
    }
    sd_reply_free(&r);
}

static int32_t counter(sd_job *job, sd_json state) {
    counter_state st;
    if (!parse_state(state, &st)) return sd_job_fail(job, "invalid state: needs {\"target\": N}");
    sd_logf(SD_INFO, "Starting counter (current: %llu, target: %llu)",
            (unsigned long long)st.current, (unsigned long long)st.target);
    ping(job);
    sd_buf msg = {0};
    while (st.current < st.target) {
        sd_spin(st.spin);
        st.current++;
        sd_buf_clear(&msg);
        sd_buf_printf(&msg, "Counted %llu/%llu (%llu%% complete)%c", (unsigned long long)st.current,
                      (unsigned long long)st.target,
                      (unsigned long long)(st.current * 100 / st.target), 0);
        sd_log_str(SD_INFO, msg.ptr);
        sd_job_progress(job, (float)st.current / (float)st.target, msg.ptr);
        sd_job_items(job, 1);
        if (checkpoint(job, &st) != 0) {
            sd_buf_free(&msg);
            return sd_job_fail(job, "checkpoint failed");
        }
        if (sd_job_check_interrupt(job) != SD_CONTINUE) {
            sd_buf_free(&msg);
            return SD_JOB_INTERRUPTED;
        }
    }
    sd_buf_free(&msg);
    if (checkpoint(job, &st) != 0) return sd_job_fail(job, "final checkpoint failed");
    sd_logf(SD_INFO, "✓ Completed! Processed %llu items", (unsigned long long)st.target);
    return SD_JOB_COMPLETED;
}

static int32_t fail(sd_job *job, sd_json state) {
    (void)state;
    return sd_job_fail(job, "deliberate failure");
}

static int32_t trap(sd_job *job, sd_json state) {
    (void)job; (void)state;
    sd_log_str(SD_ERROR, "deliberate trap");
    __builtin_trap();
}

static int32_t init(void) {
    sd_log_str(SD_INFO, "✓ Test extension initialized!");
    return 0;
}

static int32_t cleanup(void) {
    sd_log_str(SD_INFO, "Test extension cleaned up");
    return 0;
}

#define JOBS(JOB)                                                   \
    JOB("counter", execute_test_counter, counter, SD_RESUMABLE)     \
    JOB("fail", execute_test_fail, fail, 0)                         \
    JOB("trap", execute_test_trap, trap, 0)
SD_EXTENSION(JOBS, init, cleanup)
