/* Preloaded into Envoy by tests/shadow.rs: steps the process's wall clock (CLOCK_REALTIME)
 * by the signed number of seconds written in the file named by $CLOCK_SHIM_FILE, read again
 * at most every 50 ms; every other clock (Envoy's monotonic clock, hence WASI's) is left
 * alone. libfaketime does this too, but Envoy 1.40 hangs at start with it preloaded. Only
 * raw system calls here: this runs before and inside the allocator's own initialisation. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic long offset_s;
static _Atomic long next_read_ns;

static long raw_clock(clockid_t id, struct timespec *ts) {
  return syscall(SYS_clock_gettime, id, ts);
}

static void refresh(void) {
  struct timespec now;
  if (raw_clock(CLOCK_MONOTONIC, &now) != 0) return;
  long ns = now.tv_sec * 1000000000L + now.tv_nsec;
  if (ns < atomic_load(&next_read_ns)) return;
  atomic_store(&next_read_ns, ns + 50000000L);
  const char *path = getenv("CLOCK_SHIM_FILE");
  if (path == NULL) return;
  long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
  if (fd < 0) return;
  char buf[32];
  long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
  syscall(SYS_close, fd);
  if (n <= 0) return;
  long sign = 1, value = 0, i = 0;
  if (buf[0] == '-' || buf[0] == '+') {
    sign = buf[0] == '-' ? -1 : 1;
    i = 1;
  }
  for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) value = value * 10 + (buf[i] - '0');
  atomic_store(&offset_s, sign * value);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
  long r = raw_clock(id, ts);
  if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
    refresh();
    ts->tv_sec += atomic_load(&offset_s);
  }
  return (int)r;
}
