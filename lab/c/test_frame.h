// Shared by the lab's C tools (pvpeer in the guest, pvwire and mqpeer on the host): the clock, fatal errors,
// mmsghdr set-up, and pvdrv's test frame (apps/frames.ts): dst, src, ethertype 0x88b5, "PVDR", sequence, length,
// payload byte i = seq * 7 + i.
// Each tool defines TOOL (its name, for messages) before including this.
#pragma once
#include <errno.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

// Point message `m` at one buffer (and, when receiving, at `from` for the packet type).
static inline void set_msg(struct mmsghdr *m, struct iovec *v, void *buf, size_t len, struct sockaddr_ll *from) {
  v->iov_base = buf, v->iov_len = len;
  memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
  m->msg_hdr.msg_iov = v, m->msg_hdr.msg_iovlen = 1;
  if (from) m->msg_hdr.msg_name = from, m->msg_hdr.msg_namelen = sizeof *from;
}

// An AF_PACKET socket bound to `ifn` for ethertype `proto` (`flags`: e.g. SOCK_NONBLOCK), with 8 MiB buffers and
// the interface's MAC in `mac`. Waits up to `wait_tenths` tenths of a second for the interface to appear.
static inline int packet_socket(const char *ifn, int proto, int flags, int wait_tenths, unsigned char mac[6]) {
  int s = socket(AF_PACKET, SOCK_RAW | flags, htons(proto));
  if (s < 0) die("socket(AF_PACKET)");
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifn);
  for (int i = 0; ioctl(s, SIOCGIFINDEX, &ifr) < 0; i++) {
    if (i >= wait_tenths) die("SIOCGIFINDEX");
    usleep(100000);
  }
  int ifindex = ifr.ifr_ifindex;
  if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) die("SIOCGIFHWADDR");
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(proto), .sll_ifindex = ifindex};
  if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");
  int big = 8 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
  setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
  return s;
}
