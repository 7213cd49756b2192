//! A Zig extension through @cImport of the C SDK: one resumable job, "hello",
//! that adds 1 to the state's "n" and completes with {"n": N + 1}.
const sd = @cImport(@cInclude("spacedrive.h"));

fn hello(job: [*c]sd.sd_job, state: sd.sd_json) callconv(.c) i32 {
    var n: u64 = 0;
    _ = sd.sd_json_u64(sd.sd_json_get(state, "n"), &n);
    sd.sd_logf(sd.SD_INFO, "hello from zig, n = %llu", @as(c_ulonglong, n));
    var w = sd.sd_jw{};
    defer sd.sd_jw_free(&w);
    sd.sd_jw_object(&w);
    sd.sd_jw_key(&w, "n");
    sd.sd_jw_u64(&w, n + 1);
    sd.sd_jw_end(&w);
    if (sd.sd_job_checkpoint_jw(job, &w) != 0) return sd.sd_job_fail(job, "checkpoint refused");
    return sd.SD_JOB_COMPLETED;
}

export fn plugin_init() i32 {
    return sd.sd_register_job("hello", "execute_hello", true);
}

export fn plugin_cleanup() i32 {
    return 0;
}

export fn execute_hello(c: i32, cl: i32, s: i32, sl: i32) i32 {
    return sd.sd_run_job(c, cl, s, sl, hello);
}
