// pvpeer: the guest kernel's side of pvdrv's VM tests and benchmarks. An AF_PACKET peer on a kernel-driven
// NIC speaking pvdrv's test frame format (drivers/frames.ts). Built statically on the host, run in the guest.
//
//   pvpeer recv IF COUNT TIMEOUT_MS [PROGRESS]         receive and verify COUNT frames; "progress N" lines
//   pvpeer send IF COUNT MIN MAX DSTMAC [WINDOW [PPS]] send COUNT frames (sizes MIN..MAX); with WINDOW, stay at most
//                                                      WINDOW frames ahead of the acked count read from stdin
//   pvpeer txrate IF SECONDS SIZE DSTMAC [PPS [BATCH]] send as fast as possible (or at PPS), sendmmsg xBATCH (32)
//   pvpeer rxrate IF SECONDS [BATCH]                   count pvdrv frames (recvmmsg xBATCH, 32), report pps;
//                                                      "progress N" every 10 ms
//   pvpeer ifrate IF SECONDS                           count what IF's driver hands the stack (rx_packets, read
//                                                      every 10 ms; no socket), from its first frame, report pps
//   pvpeer udpecho IP PORT IDLE_MS                     a UDP echo server on the kernel's stack (Xen dom0 has no
//                                                      Deno); ends after IDLE_MS without a datagram
// Results are one JSON line on stdout.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOOL "pvpeer"
#include "test_frame.h"

#define BATCH 32
#define MAXF 9216 // largest frame (jumbo MTU 9000 + header, rounded)


// 1 ok, 0 foreign, -1 corrupt (same rules as checkFrame in drivers/frames.ts)
static int check_frame(const unsigned char *b, int len, uint32_t *seq) {
  if (len < 24 || b[12] != (ETHERTYPE_PVDRV >> 8) || b[13] != (ETHERTYPE_PVDRV & 0xff)) return 0;
  uint32_t m = (uint32_t)b[14] << 24 | b[15] << 16 | b[16] << 8 | b[17];
  if (m != MAGIC) return 0;
  *seq = (uint32_t)b[18] << 24 | b[19] << 16 | b[20] << 8 | b[21];
  int want = b[22] << 8 | b[23];
  if (want > len || want < 24 || (want != len && len > 60)) return -1;
  for (int i = 24; i < want; i++)
    if (b[i] != ((*seq * 7 + i) & 0xff)) return -1;
  return 1;
}

static int parse_mac(const char *s, unsigned char m[6]) {
  return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6 ? 0 : -1;
}

static void check_size(int max) {
  if (max > MAXF) {
    fprintf(stderr, "pvpeer: frames above %d bytes are not supported\n", MAXF);
    exit(2);
  }
}

// A sending socket on `ifn` for frames up to `max` bytes; its MAC in `mac`, the parsed destination in `dst`.
// Exits on a bad MAC or size.
static int open_sender(const char *ifn, const char *dsts, int max, unsigned char mac[6], unsigned char dst[6]) {
  check_size(max);
  if (parse_mac(dsts, dst)) {
    fprintf(stderr, "pvpeer: bad MAC %s\n", dsts);
    exit(2);
  }
  return packet_socket(ifn, ETHERTYPE_PVDRV, 0, 0, mac);
}

static int do_recv(const char *ifn, long count, int timeout_ms, long progress) {
  unsigned char mac[6];
  int s = packet_socket(ifn, ETHERTYPE_PVDRV, 0, 0, mac);
  unsigned char *seen = calloc(count > 0 ? count : 1, 1);
  static unsigned char buf[BATCH][MAXF];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  struct sockaddr_ll from[BATCH];
  long ok = 0, corrupt = 0, foreign = 0, dup = 0, outside = 0, bytes = 0;
  double t0 = 0, t1 = 0, last = now();
  printf("ready\n");
  fflush(stdout);
  while (ok < count) {
    struct pollfd p = {.fd = s, .events = POLLIN};
    int r = poll(&p, 1, 200);
    if (r < 0 && errno != EINTR) die("poll");
    if (r <= 0) {
      if ((now() - last) * 1000 > timeout_ms) break;
      continue;
    }
    for (int i = 0; i < BATCH; i++) set_msg(&msgs[i], &iov[i], buf[i], sizeof buf[i], &from[i]);
    int n = recvmmsg(s, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) continue;
    last = now();
    if (!t0) t0 = last;
    for (int i = 0; i < n; i++) {
      uint32_t seq;
      if (from[i].sll_pkttype == PACKET_OUTGOING) continue;  // our own host's sends on this interface
      int len = msgs[i].msg_len, c = check_frame(buf[i], len, &seq);
      if (c == 0) { foreign++; continue; }
      if (c < 0) { corrupt++; continue; }
      if (seq >= (uint32_t)count) { outside++; continue; }
      if (seen[seq]) { dup++; continue; }
      seen[seq] = 1;
      ok++;
      bytes += len;
      if (progress && ok % progress == 0) { printf("progress %ld\n", ok); fflush(stdout); }
    }
    t1 = last;
  }
  printf("{\"received\":%ld,\"corrupt\":%ld,\"foreign\":%ld,\"duplicate\":%ld,\"outside\":%ld,\"bytes\":%ld,\"seconds\":%.3f}\n",
         ok, corrupt, foreign, dup, outside, bytes, t1 - t0);
  return 0;
}

#define PACE_BURST 4  // frames a paced sender may send at once to make up for lost time

static int do_send(const char *ifn, long count, int min, int max, const char *dsts, long window, double rate) {
  unsigned char mac[6], dst[6];
  int s = open_sender(ifn, dsts, max, mac, dst);
  static unsigned char buf[BATCH][MAXF];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  long sent = 0, acked = 0, bytes = 0;
  char line[64];
  int lp = 0;
  if (window) fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  double t0 = now();
  while (sent < count) {
    if (window) {
      // Read acks ("N\n", the peer's received count) without blocking unless the window is full.
      for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r == 1) {
          if (c == '\n') { line[lp] = 0; acked = atol(line); lp = 0; }
          else if (lp < 63) line[lp++] = c;
          continue;
        }
        if (r == 0) { window = 0; break; }  // stdin closed: no more flow control
        if (sent - acked < window) break;
        struct pollfd p = {.fd = 0, .events = POLLIN};
        poll(&p, 1, 100);
      }
    }
    if (rate > 0) {  // paced
      // No catching up after a stall (nested TCG stalls for seconds): the burst would overrun the receiver's
      // queue, and xen-netback drops what no longer fits there (XSA-392).
      double t = now();
      if ((t - t0) * rate > sent + PACE_BURST) t0 = t - (sent + PACE_BURST) / rate;
      if (sent >= (t - t0) * rate) {
        usleep(1000);
        continue;
      }
    }
    int n = 0;
    while (n < BATCH && sent + n < count && (!window || sent + n - acked < window) &&
           (rate <= 0 || sent + n < (now() - t0) * rate + 1)) {
      long k = sent + n;
      int len = min + (int)((k * 149) % (max - min + 1));
      write_frame(buf[n], len, (uint32_t)k, dst, mac);
      set_msg(&msgs[n], &iov[n], buf[n], len, NULL);
      bytes += len;
      n++;
    }
    if (!n) continue;
    int r = sendmmsg(s, msgs, n, 0);
    if (r < 0) {
      if (errno == ENOBUFS || errno == EAGAIN) { usleep(100); continue; }
      die("sendmmsg");
    }
    for (int i = r; i < n; i++) bytes -= iov[i].iov_len;
    sent += r;
  }
  printf("{\"sent\":%ld,\"bytes\":%ld,\"seconds\":%.3f}\n", sent, bytes, now() - t0);
  return 0;
}

#define MAXBATCH 256

static int do_txrate(const char *ifn, double seconds, int size, const char *dsts, double rate, int batch) {
  unsigned char mac[6], dst[6];
  int s = open_sender(ifn, dsts, size, mac, dst);
  static unsigned char buf[MAXBATCH][MAXF];
  struct mmsghdr msgs[MAXBATCH];
  struct iovec iov[MAXBATCH];
  if (batch < 1 || batch > MAXBATCH) batch = BATCH;
  for (int i = 0; i < batch; i++) {
    write_frame(buf[i], size, i, dst, mac);
    set_msg(&msgs[i], &iov[i], buf[i], size, NULL);
  }
  long sent = 0;
  struct timespec c0, c1;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  double t0 = now(), t = t0;
  // Unpaced, the clock is read every 8th batch: in a guest without a vDSO clock (a Xen PV domain under TCG) a
  // read is a trip through the hypervisor that costs more than the batch.
  for (long calls = 0;; calls++) {
    if ((rate > 0 || (calls & 7) == 0) && (t = now()) - t0 >= seconds) break;
    if (rate > 0 && sent >= (t - t0) * rate) {  // paced: sleep until the next batch is due
      usleep((useconds_t)(1e6 * batch / rate));
      continue;
    }
    int r = sendmmsg(s, msgs, batch, 0);
    if (r > 0) sent += r;
  }
  // The loop ends only right after a read: t is the end time.
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  double cpu = (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) / 1e9;
  printf("{\"sent\":%ld,\"seconds\":%.3f,\"pps\":%.0f,\"cpuSeconds\":%.3f}\n", sent, t - t0, sent / (t - t0), cpu);
  return 0;
}

// IF's received-frames counter (what its driver handed the stack: netback's TX from a domU), opened for reads.
static int open_rx_counter(const char *ifn) {
  char path[128];
  snprintf(path, sizeof path, "/sys/class/net/%s/statistics/rx_packets", ifn);
  return open(path, O_RDONLY);
}

// The counter of an open statistics file, read again from the start (sysfs serves each read fresh), or -1.
static long read_counter(int fd) {
  char b[32];
  ssize_t n = pread(fd, b, sizeof b - 1, 0);
  if (n <= 0) return -1;
  b[n] = 0;
  return atol(b);
}

// IF's received-frames counter now, or -1.
static long if_rx_packets(const char *ifn) {
  int fd = open_rx_counter(ifn);
  long v = fd < 0 ? -1 : read_counter(fd);
  if (fd >= 0) close(fd);
  return v;
}

// Frames the kernel dropped for this socket (its receive buffer full) since the last call.
static long socket_drops(int s) {
  struct tpacket_stats st;
  socklen_t l = sizeof st;
  return getsockopt(s, SOL_PACKET, PACKET_STATISTICS, &st, &l) == 0 ? (long)st.tp_drops : -1;
}

static int do_rxrate(const char *ifn, double seconds, int batch) {
  unsigned char mac[6];
  int s = packet_socket(ifn, ETHERTYPE_PVDRV, 0, 0, mac);
  static unsigned char buf[MAXBATCH][1536];
  struct mmsghdr msgs[MAXBATCH];
  struct iovec iov[MAXBATCH];
  struct sockaddr_ll from[MAXBATCH];
  if (batch < 1 || batch > MAXBATCH) batch = BATCH;
  for (int i = 0; i < batch; i++) set_msg(&msgs[i], &iov[i], buf[i], sizeof buf[i], &from[i]);
  printf("ready\n");
  fflush(stdout);
  long got = 0, if0 = -1, if1 = -1, drops = 0;
  double t0 = 0, t1 = 0, start = now(), shown = 0;
  while (now() - start < seconds + 5) {
    // poll first: recvmmsg's timeout is only checked after a datagram arrives, so it would block forever once
    // the sender stopped.
    struct pollfd p = {.fd = s, .events = POLLIN};
    int n = poll(&p, 1, 10) > 0 ? recvmmsg(s, msgs, batch, MSG_DONTWAIT, NULL) : 0;
    double t = now();
    if (t - shown >= 0.01) {
      shown = t;
      printf("progress %ld\n", got);
    }
    if (n <= 0) { if (t0 && t - t1 > 0.5) break; continue; }
    t1 = t;  // read right after recvmmsg: a second read would cost a guest without a vDSO clock a hypervisor trip
    if (!t0) {
      // The window opens at the first frame: the interface's counter and the socket's drops from here.
      t0 = t1;
      if0 = if_rx_packets(ifn);
      socket_drops(s);
    }
    for (int i = 0; i < n; i++) got += from[i].sll_pkttype != PACKET_OUTGOING;
    for (int i = 0; i < n; i++) msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    if (t1 - t0 >= seconds) break;
  }
  if (t0) if1 = if_rx_packets(ifn), drops = socket_drops(s);
  // Where frames went besides this socket: the interface's count over the window (what reached the stack, -1
  // unknown) and the socket's drops (a full receive buffer: the counter starved of CPU, not the sender's loss).
  printf("{\"received\":%ld,\"seconds\":%.3f,\"pps\":%.0f,\"ifReceived\":%ld,\"socketDrops\":%ld}\n", got,
         t1 - t0, t1 > t0 ? got / (t1 - t0) : 0.0, if0 >= 0 && if1 >= 0 ? if1 - if0 : -1, drops);
  return 0;
}

// A sender's rate as the receiving interface counts it, with no socket taking frames: on a host whose one CPU
// also runs the backend (Xen's dom0), a counting socket competes with it for that CPU and, once its buffer is
// full, its count falls the faster the sender goes (receive livelock). The window opens at the first change.
static int do_ifrate(const char *ifn, double seconds) {
  int fd = open_rx_counter(ifn);
  long base = fd < 0 ? -1 : read_counter(fd);
  if (base < 0) die("ifrate: rx_packets");
  printf("ready\n");
  long c0 = 0, c1 = 0, c = base, seen = base;
  double start = now(), t0 = 0, t1 = 0, moved = start;
  for (;;) {
    usleep(10000); // a clock read and a counter read every 10 ms: little of a PV dom0's CPU
    double t = now();
    c = read_counter(fd);
    if (c < 0) die("ifrate: rx_packets");
    if (c != seen) seen = c, moved = t;
    if (!t0) {
      if (c != base) t0 = t, c0 = c;
      else if (t - start > seconds + 5) break;
      continue;
    }
    c1 = c, t1 = t;
    if (t1 - t0 >= seconds || t - moved > 0.5) break;
  }
  close(fd);
  printf("{\"received\":%ld,\"seconds\":%.3f,\"pps\":%.0f}\n", c1 - c0, t1 - t0,
         t1 > t0 ? (c1 - c0) / (t1 - t0) : 0.0);
  return 0;
}

static int do_udpecho(const char *ip, int port, int idle_ms) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (s < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
    die("udpecho: socket/bind");
  static unsigned char buf[65536];
  long echoed = 0;
  printf("ready\n");
  for (;;) {
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, idle_ms) <= 0) break;
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
    if (n < 0) continue;
    if (sendto(s, buf, n, 0, (struct sockaddr *)&from, fl) == n) echoed++;
  }
  printf("{\"echoed\":%ld}\n", echoed);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 5 && !strcmp(argv[1], "recv")) return do_recv(argv[2], atol(argv[3]), atoi(argv[4]), argc > 5 ? atol(argv[5]) : 0);
  if (argc >= 7 && !strcmp(argv[1], "send"))
    return do_send(argv[2], atol(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6], argc > 7 ? atol(argv[7]) : 0,
                   argc > 8 ? atof(argv[8]) : 0);
  if (argc >= 6 && argc <= 8 && !strcmp(argv[1], "txrate"))
    return do_txrate(argv[2], atof(argv[3]), atoi(argv[4]), argv[5], argc >= 7 ? atof(argv[6]) : 0,
                     argc == 8 ? atoi(argv[7]) : BATCH);
  if ((argc == 4 || argc == 5) && !strcmp(argv[1], "rxrate"))
    return do_rxrate(argv[2], atof(argv[3]), argc == 5 ? atoi(argv[4]) : BATCH);
  if (argc == 4 && !strcmp(argv[1], "ifrate")) return do_ifrate(argv[2], atof(argv[3]));
  if (argc == 5 && !strcmp(argv[1], "udpecho")) return do_udpecho(argv[2], atoi(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: pvpeer recv IF COUNT TIMEOUT_MS [PROGRESS] | send IF COUNT MIN MAX DSTMAC [WINDOW [PPS]] |\n"
                  "       txrate IF SECONDS SIZE DSTMAC [PPS [BATCH]] | rxrate IF SECONDS [BATCH] | ifrate IF SECONDS |\n"
                  "       udpecho IP PORT IDLE_MS\n");
  return 2;
}
