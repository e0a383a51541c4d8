// pvwire: the host side of the VM benchmark, so no count depends on the driver under test. One thread:
//  - two UDP sinks on 127.0.0.1 (the host ends of 0000:00:06.0 and 0000:00:09.0's `-netdev dgram` links) count
//    every datagram QEMU sends;
//  - a blaster sends pvdrv test frames (lab/pvpeer.c's format) into 0000:00:06.0, flooding or at a fixed rate.
//
//   pvwire SINK1_PORT SINK2_PORT GUEST_PORT
// stdin:  "blast RATE SIZE DSTMAC" (RATE 0: as fast as possible) | "stop"
// stdout: "ready", then every 20 ms "s T SINK1 SINK2 SINK1_BYTES SINK2_BYTES BLASTED" (T: seconds, monotonic).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOOL "pvwire"
#include "test_frame.h"

#define BATCH 64
#define FRAMES 256  // distinct frames the blaster cycles through (sequence numbers 0..255)
#define MAXF 1518

static int udp_on(int port) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (s < 0) die("socket");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  int big = 8 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
  setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
  return s;
}

static long drain(int s, struct mmsghdr *m, long *bytes) {
  long got = 0;
  for (;;) {
    int n = recvmmsg(s, m, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) return got;
    for (int i = 0; i < n; i++) *bytes += m[i].msg_len;
    got += n;
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: pvwire SINK1_PORT SINK2_PORT GUEST_PORT\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  int s1 = udp_on(atoi(argv[1])), s2 = udp_on(atoi(argv[2]));
  struct sockaddr_in guest = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  static unsigned char rbuf[BATCH][MAXF], frames[FRAMES][MAXF];
  struct mmsghdr rm[BATCH], tm[BATCH];
  struct iovec riov[BATCH], tiov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    riov[i] = (struct iovec){rbuf[i], MAXF};
    rm[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &riov[i], .msg_iovlen = 1}};
    tm[i] = (struct mmsghdr){.msg_hdr = {.msg_name = &guest, .msg_namelen = sizeof guest, .msg_iov = &tiov[i],
                                         .msg_iovlen = 1}};
  }
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  long c1 = 0, c2 = 0, b1 = 0, b2 = 0, blasted = 0, base = 0, next = 0;
  double rate = -1, t_start = 0, last = 0;  // rate < 0: not blasting
  int size = 64;
  char line[256];
  size_t have = 0;
  printf("ready\n");
  for (;;) {
    struct pollfd p[3] = {{.fd = 0, .events = POLLIN}, {.fd = s1, .events = POLLIN}, {.fd = s2, .events = POLLIN}};
    // Idle: wake for stdin and the 20 ms report; blasting: never sleep while frames are due (a 1 ms sleep per
    // batch would cap the rate at 64k/s), else sleep until the next one is.
    int wait_ms = 20;
    if (rate == 0) wait_ms = 0;
    else if (rate > 0) wait_ms = blasted < base + (long)((now() - t_start) * rate) ? 0 : 1;
    poll(p, 3, wait_ms);
    c1 += drain(s1, rm, &b1);
    c2 += drain(s2, rm, &b2);
    double t = now();
    if (rate >= 0) {
      long due = rate > 0 ? base + (long)((t - t_start) * rate) : blasted + BATCH;
      int n = 0;
      while (n < BATCH && blasted + n < due) {
        tiov[n] = (struct iovec){frames[next], (size_t)size};
        next = (next + 1) % FRAMES, n++;
      }
      if (n > 0) {
        int r = sendmmsg(s1, tm, n, MSG_DONTWAIT);
        if (r > 0) blasted += r;
        next = (next + FRAMES - (n - (r > 0 ? r : 0))) % FRAMES;
      }
    }
    if (t - last >= 0.02) {
      last = t;
      printf("s %.4f %ld %ld %ld %ld %ld\n", t, c1, c2, b1, b2, blasted);
    }
    if (!(p[0].revents & (POLLIN | POLLHUP))) continue;
    ssize_t r = read(0, line + have, sizeof line - 1 - have);
    if (r == 0) return 0;  // stdin closed: done
    if (r < 0) continue;
    have += r;
    line[have] = 0;
    char *nl;
    while ((nl = strchr(line, '\n'))) {
      *nl = 0;
      unsigned m[6];
      double rt;
      int sz;
      if (sscanf(line, "blast %lf %d %x:%x:%x:%x:%x:%x", &rt, &sz, &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 8 &&
          sz >= 60 && sz <= MAXF && rt >= 0) {
        unsigned char dst[6];
        for (int i = 0; i < 6; i++) dst[i] = m[i];
        static const unsigned char host[6] = {2, 0, 0, 0, 0, 0xfe};
        for (int i = 0; i < FRAMES; i++) write_frame(frames[i], sz, i, dst, host);
        size = sz, rate = rt, t_start = now(), base = blasted, next = 0;
      } else if (!strcmp(line, "stop")) {
        rate = -1;
      } else {
        fprintf(stderr, "pvwire: bad command '%s'\n", line);
      }
      size_t used = nl + 1 - line;
      memmove(line, nl + 1, have - used + 1);
      have -= used;
    }
  }
}
