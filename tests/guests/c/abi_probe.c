/* One job that reads a file entry only when built with -DPROBE_READ, declaring the
 * ABI versions given as -DPROBE_ABI=n and -DPROBE_ABI2=n (each one SD_DECLARE_ABI).
 * tests/test_c_entry_read.py builds it several ways. */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"

#ifdef PROBE_ABI
SD_DECLARE_ABI(PROBE_ABI);
#endif
#ifdef PROBE_ABI2
SD_DECLARE_ABI(PROBE_ABI2);
#endif

static int32_t probe(sd_job *job, sd_json state) {
    (void)state;
#ifdef PROBE_READ
    unsigned char buf[16];
    if (sd_job_read(job, 1, 0, buf, sizeof buf) < 0) return sd_job_fail(job, "read refused");
#endif
    return sd_job_checkpoint(job, "{\"probed\":true}", 15) == 0 ? SD_JOB_COMPLETED : SD_JOB_FAILED;
}

#define JOBS(JOB) JOB("probe", execute_probe, probe, 0)
SD_EXTENSION(JOBS, 0, 0)
