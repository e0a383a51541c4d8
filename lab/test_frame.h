// Shared by the lab's C tools (pvpeer in the guest, pvhost on the host): the clock, fatal errors, and pvdrv's test
// frame (apps/frames.ts): dst, src, ethertype 0x88b5, "PVDR", sequence, length, payload byte i = seq * 7 + i.
// Each tool defines TOOL (its name, for messages) before including this.
#pragma once
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ETHERTYPE_PVDRV 0x88b5
#define MAGIC 0x50564452u

static inline double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static inline void die(const char *what) {
  fprintf(stderr, TOOL ": %s: %s\n", what, strerror(errno));
  exit(2);
}

static inline void write_frame(unsigned char *b, int len, uint32_t seq, const unsigned char *dst, const unsigned char *src) {
  memcpy(b, dst, 6);
  memcpy(b + 6, src, 6);
  b[12] = ETHERTYPE_PVDRV >> 8;
  b[13] = ETHERTYPE_PVDRV & 0xff;
  b[14] = (MAGIC >> 24) & 0xff, b[15] = (MAGIC >> 16) & 0xff, b[16] = (MAGIC >> 8) & 0xff, b[17] = MAGIC & 0xff;
  b[18] = (seq >> 24) & 0xff, b[19] = (seq >> 16) & 0xff, b[20] = (seq >> 8) & 0xff, b[21] = seq & 0xff;
  b[22] = (len >> 8) & 0xff, b[23] = len & 0xff;
  for (int i = 24; i < len; i++) b[i] = (seq * 7 + i) & 0xff;
}
