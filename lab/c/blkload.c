// blkload: the guest kernel's side of `deno task bench --blk`, a small load generator of the same job shape as
// pvdrv's `blk bench`: O_DIRECT, a fixed queue depth (one thread per outstanding request), random or sequential
// offsets aligned to the block size. Prints one JSON line: IOPS per window and latency percentiles.
//
//   blkload DEVICE randread|randwrite|read|write BS QD SECONDS WINDOWS
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_US 200000 // latencies above 200 ms land in the last bucket
static uint32_t hist[MAX_US + 1];
static uint64_t done_ops, seq_next;
static volatile int stop;
static int fd, writes, sequential;
static uint64_t bs, blocks;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void *worker(void *arg) {
  uint64_t x = (uintptr_t)arg * 2654435761u + 12345;
  void *buf;
  if (posix_memalign(&buf, 4096, bs)) return NULL;
  memset(buf, 0x5a, bs);
  while (!stop) {
    uint64_t blk;
    if (sequential) blk = __atomic_fetch_add(&seq_next, 1, __ATOMIC_RELAXED) % blocks;
    else {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      blk = x % blocks;
    }
    uint64_t t0 = now_ns();
    ssize_t r = writes ? pwrite(fd, buf, bs, blk * bs) : pread(fd, buf, bs, blk * bs);
    if (r != (ssize_t)bs) {
      perror("blkload: I/O");
      exit(1);
    }
    uint64_t us = (now_ns() - t0) / 1000;
    __atomic_fetch_add(&hist[us > MAX_US ? MAX_US : us], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&done_ops, 1, __ATOMIC_RELAXED);
  }
  free(buf);
  return NULL;
}

static uint64_t percentile(uint64_t total, double p) {
  uint64_t want = (uint64_t)(total * p), seen = 0;
  for (uint32_t us = 0; us <= MAX_US; us++) {
    seen += hist[us];
    if (seen > want) return us;
  }
  return MAX_US;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: blkload DEVICE randread|randwrite|read|write BS QD SECONDS WINDOWS\n");
    return 2;
  }
  const char *mode = argv[2];
  writes = strstr(mode, "write") != NULL;
  sequential = strncmp(mode, "rand", 4) != 0;
  bs = strtoull(argv[3], NULL, 10);
  int qd = atoi(argv[4]), windows = atoi(argv[6]);
  double seconds = atof(argv[5]);
  if (bs < 512 || bs % 512 || qd < 1 || qd > 256 || windows < 1 || seconds <= 0) {
    fprintf(stderr, "blkload: bad arguments\n");
    return 2;
  }
  fd = open(argv[1], (writes ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    perror("blkload: open");
    return 1;
  }
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0 || size < bs) {
    perror("blkload: size");
    return 1;
  }
  blocks = size / bs;
  pthread_t t[256];
  for (int i = 0; i < qd; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
  printf("{\"mode\":\"%s\",\"bs\":%llu,\"qd\":%d,\"windows\":[", mode, (unsigned long long)bs, qd);
  uint64_t last = 0, t_last = now_ns();
  for (int w = 0; w < windows; w++) {
    usleep((useconds_t)(seconds / windows * 1e6));
    uint64_t d = __atomic_load_n(&done_ops, __ATOMIC_RELAXED), t_now = now_ns();
    printf("%s%.0f", w ? "," : "", (double)(d - last) * 1e9 / (double)(t_now - t_last));
    last = d, t_last = t_now;
  }
  stop = 1;
  for (int i = 0; i < qd; i++) pthread_join(t[i], NULL);
  uint64_t total = __atomic_load_n(&done_ops, __ATOMIC_RELAXED);
  printf("],\"ios\":%llu,\"p50us\":%llu,\"p99us\":%llu}\n", (unsigned long long)total,
         (unsigned long long)percentile(total, 0.5), (unsigned long long)percentile(total, 0.99));
  return 0;
}
