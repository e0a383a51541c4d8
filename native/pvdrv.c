// pvdrv native shim: only what JavaScript cannot do itself.
//
// Conventions (keep every symbol on Deno's FFI fast path):
//  - no struct by value; 64-bit values travel as BigInt (u64/i64) or as two u32 halves;
//  - syscall wrappers return the result or -errno, never set errno for the caller to read;
//  - MMIO accessors are volatile so the compiler neither merges, splits nor elides them.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

// The call is evaluated once (a macro that named it twice would close, unmap or send twice).
static inline int32_t neg_errno(long r) { return r < 0 ? -errno : (int32_t)r; }
#define NEG_ERRNO(r) neg_errno((long)(r))

// ---- ABI version: bump when a signature changes, checked by ffi/lib.ts ----
uint32_t pvdrv_abi_version(void) { return 8; }

// ---- volatile MMIO (base + offset; offset is a byte offset) ----
uint8_t pvdrv_read8(void *base, uint32_t off) { return *(volatile uint8_t *)((char *)base + off); }
uint16_t pvdrv_read16(void *base, uint32_t off) { return *(volatile uint16_t *)((char *)base + off); }
uint32_t pvdrv_read32(void *base, uint32_t off) { return *(volatile uint32_t *)((char *)base + off); }
void pvdrv_write8(void *base, uint32_t off, uint8_t v) { *(volatile uint8_t *)((char *)base + off) = v; }
void pvdrv_write16(void *base, uint32_t off, uint16_t v) { *(volatile uint16_t *)((char *)base + off) = v; }
void pvdrv_write32(void *base, uint32_t off, uint32_t v) { *(volatile uint32_t *)((char *)base + off) = v; }
// 64-bit register access in one instruction, value split into u32 halves (no BigInt on the hot path).
void pvdrv_write64(void *base, uint32_t off, uint32_t lo, uint32_t hi) {
  *(volatile uint64_t *)((char *)base + off) = ((uint64_t)hi << 32) | lo;
}
static uint32_t read64_hi;
uint32_t pvdrv_read64_lo(void *base, uint32_t off) {
  uint64_t v = *(volatile uint64_t *)((char *)base + off);
  read64_hi = (uint32_t)(v >> 32);
  return (uint32_t)v;
}
// High half of the value read by the last pvdrv_read64_lo on this library (single JS thread).
uint32_t pvdrv_read64_hi(void) { return read64_hi; }

// ---- fences ----
void pvdrv_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void pvdrv_wmb(void) {
#if defined(__x86_64__)
  __asm__ __volatile__("sfence" ::: "memory");
#else
  __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}
void pvdrv_rmb(void) {
#if defined(__x86_64__)
  __asm__ __volatile__("lfence" ::: "memory");
#else
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
}

// ---- file descriptors ----
int32_t pvdrv_open(const char *path, int32_t flags, uint32_t mode) {
  int r = open(path, flags | O_CLOEXEC, (mode_t)mode);
  return NEG_ERRNO(r);
}
int32_t pvdrv_close(int32_t fd) { return NEG_ERRNO(close(fd)); }
// ioctl with a pointer argument (the common case for VFIO, gntalloc, evtchn).
int32_t pvdrv_ioctl_ptr(int32_t fd, uint32_t req, void *arg) {
  int r = ioctl(fd, (unsigned long)req, arg);
  return NEG_ERRNO(r);
}
// ioctl with an integer argument (VFIO_SET_IOMMU, VFIO_CHECK_EXTENSION, VFIO_GROUP_GET_DEVICE_FD takes a string).
int32_t pvdrv_ioctl_int(int32_t fd, uint32_t req, uint32_t arg) {
  int r = ioctl(fd, (unsigned long)req, (unsigned long)arg);
  return NEG_ERRNO(r);
}
int32_t pvdrv_read(int32_t fd, void *buf, uint32_t len) {
  ssize_t r = read(fd, buf, len);
  return r < 0 ? -errno : (int32_t)r;
}
int32_t pvdrv_write(int32_t fd, const void *buf, uint32_t len) {
  ssize_t r = write(fd, buf, len);
  return r < 0 ? -errno : (int32_t)r;
}
// Port-I/O style register access through pread/pwrite of a sysfs resource file or a VFIO region
// (legacy virtio I/O BARs). The fd offset is (base_hi << 32) + off: VFIO regions sit at index << 40.
static int32_t pio_status;  // 0, or -errno of the last failed pvdrv_pio_read
uint32_t pvdrv_pio_read(int32_t fd, uint32_t width, uint32_t base_hi, uint32_t off) {
  uint32_t v = 0;
  ssize_t r = pread(fd, &v, width, (off_t)(((uint64_t)base_hi << 32) + off));
  pio_status = r == (ssize_t)width ? 0 : (r < 0 ? -errno : -EIO);
  return v;
}
int32_t pvdrv_pio_write(int32_t fd, uint32_t width, uint32_t base_hi, uint32_t off, uint32_t v) {
  ssize_t r = pwrite(fd, &v, width, (off_t)(((uint64_t)base_hi << 32) + off));
  return r == (ssize_t)width ? 0 : (r < 0 ? -errno : -EIO);
}
int32_t pvdrv_pio_last_status(void) { return pio_status; }

int32_t pvdrv_eventfd(uint32_t initval, int32_t flags) {
  int r = eventfd(initval, flags | EFD_CLOEXEC);
  return NEG_ERRNO(r);
}
// Read an eventfd's counter: returns 1 if it was signalled (counter consumed), 0 if not (EAGAIN), -errno else.
int32_t pvdrv_eventfd_drain(int32_t fd) {
  uint64_t v;
  ssize_t r = read(fd, &v, sizeof v);
  if (r == sizeof v) return 1;
  if (r < 0 && errno == EAGAIN) return 0;
  return r < 0 ? -errno : -EIO;
}
int32_t pvdrv_eventfd_signal(int32_t fd) {
  uint64_t one = 1;
  ssize_t r = write(fd, &one, sizeof one);
  return r == sizeof one ? 0 : (r < 0 ? -errno : -EIO);
}
// poll() over an array of fds (int32 each); revents (int16 each) written to `revents`.
// Returns the number of ready fds, 0 on timeout, -errno on error. Bound as nonblocking for the irq waiter.
int32_t pvdrv_poll(const int32_t *fds, int16_t *revents, uint32_t n, int32_t timeout_ms) {
  struct pollfd pfd[256];
  if (n > 256) return -EINVAL;
  for (uint32_t i = 0; i < n; i++) {
    pfd[i].fd = fds[i];
    pfd[i].events = POLLIN;
    pfd[i].revents = 0;
  }
  int r;
  do {
    r = poll(pfd, n, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  for (uint32_t i = 0; i < n; i++) revents[i] = pfd[i].revents;
  return r;
}

// ---- memory ----
// mmap; returns the address (positive) or -errno.
int64_t pvdrv_mmap(uint64_t len, int32_t prot, int32_t flags, int32_t fd, uint64_t off) {
  void *p = mmap(NULL, len, prot, flags, fd, (off_t)off);
  return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}
int32_t pvdrv_munmap(void *p, uint64_t len) { return NEG_ERRNO(munmap(p, len)); }
void *pvdrv_ptr(uint64_t addr) { return (void *)(uintptr_t)addr; }
uint64_t pvdrv_addr(void *p) { return (uint64_t)(uintptr_t)p; }

// Anonymous, locked memory for DMA. huge=1: MAP_HUGETLB (2 MiB pages, physically contiguous per page);
// huge=0: 4 KiB pages (fine behind an IOMMU, VFIO pins them). Zeroed. Returns the address or -errno.
int64_t pvdrv_dma_alloc(uint64_t len, int32_t huge) {
  int flags = MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE;
  if (huge) flags |= MAP_HUGETLB;
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return -errno;
  if (mlock(p, len) < 0) {
    int e = errno;
    munmap(p, len);
    return -e;
  }
  memset(p, 0, len);
  return (int64_t)(uintptr_t)p;
}

// Virtual to physical through /proc/self/pagemap (root only: PFNs read as 0 otherwise).
// Returns the physical address, or -errno (-EPERM when the PFN is hidden, -ENOENT when not present).
int64_t pvdrv_virt_to_phys(void *p) {
  static int fd = -1;
  if (fd < 0) {
    fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
  }
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t v = (uintptr_t)p;
  uint64_t entry;
  if (pread(fd, &entry, sizeof entry, (off_t)(v / page * sizeof entry)) != sizeof entry) return -EIO;
  if (!(entry & (1ULL << 63))) return -ENOENT;
  uint64_t pfn = entry & ((1ULL << 55) - 1);
  if (pfn == 0) return -EPERM;
  return (int64_t)(pfn * page + v % page);
}

// ---- sockets the kernel is handed (NBD_SET_SOCK): Deno's own sockets have no file descriptor to give ----
// Connect a Unix stream socket to `path` (NUL-terminated); the fd, or -errno.
int32_t pvdrv_unix_connect(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) return -ENAMETOOLONG;
  strcpy(a.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// ---- Unix sockets that carry file descriptors (vhost-user: memory regions, eventfds; SCM_RIGHTS) ----
// Deno's own Unix sockets cannot pass fds, so the whole socket lives here.
#define PVDRV_MAX_FDS 16

// Bind and listen on `path` (NUL-terminated), non-blocking (accept says -EAGAIN when nobody waits); the fd, or
// -errno (-EADDRINUSE if something is there).
int32_t pvdrv_unix_listen(const char *path, int32_t backlog) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) return -ENAMETOOLONG;
  strcpy(a.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// Accept one connection (close-on-exec; non-blocking when `nonblock`); the fd, or -errno (-EAGAIN: none yet).
int32_t pvdrv_unix_accept(int32_t fd, int32_t nonblock) {
  return NEG_ERRNO(accept4(fd, NULL, NULL, SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0)));
}

// A connected pair (close-on-exec) into out[0], out[1]; 0 or -errno.
int32_t pvdrv_socketpair(int32_t *out) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  out[0] = sv[0];
  out[1] = sv[1];
  return 0;
}

// Send `len` bytes with `nfds` descriptors (SCM_RIGHTS) in one message; bytes sent, or -errno.
int32_t pvdrv_send_fds(int32_t fd, const void *buf, uint32_t len, const int32_t *fds, uint32_t nfds) {
  if (nfds > PVDRV_MAX_FDS) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union {
    char space[CMSG_SPACE(sizeof(int) * PVDRV_MAX_FDS)];
    struct cmsghdr align;
  } c;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds) {
    memset(&c, 0, sizeof c);
    m.msg_control = c.space;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(h), fds, sizeof(int) * nfds);
  }
  return NEG_ERRNO((int32_t)sendmsg(fd, &m, MSG_NOSIGNAL));
}

// Receive up to `len` bytes and up to `maxfds` descriptors (close-on-exec) into fds; *nfds says how many came.
// Bytes received (0: the peer closed), or -errno. Never leaks a descriptor: when more came than fit (-EMSGSIZE)
// or anything else is wrong with the control data (-EBADMSG), every one received is closed and none returned.
int32_t pvdrv_recv_fds(int32_t fd, void *buf, uint32_t len, int32_t *fds, uint32_t maxfds, uint32_t *nfds) {
  *nfds = 0;
  if (maxfds > PVDRV_MAX_FDS) maxfds = PVDRV_MAX_FDS;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  union {
    char space[CMSG_SPACE(sizeof(int) * PVDRV_MAX_FDS)];
    struct cmsghdr align;
  } c;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.space, .msg_controllen = sizeof c.space};
  ssize_t r = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
  if (r < 0) return -errno;
  int got[PVDRV_MAX_FDS];
  uint32_t n = 0;
  int bad = (m.msg_flags & MSG_CTRUNC) ? -EMSGSIZE : 0;
  for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) {
      bad = -EBADMSG;
      continue;
    }
    uint32_t k = (uint32_t)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *p = (int *)CMSG_DATA(h);
    for (uint32_t i = 0; i < k; i++) {
      int f;
      memcpy(&f, p + i, sizeof f);
      if (n < PVDRV_MAX_FDS) got[n++] = f;
      else close(f), bad = -EMSGSIZE;
    }
  }
  if (!bad && n > maxfds) bad = -EMSGSIZE;
  if (bad) {
    for (uint32_t i = 0; i < n; i++) close(got[i]);
    return bad;
  }
  memcpy(fds, got, sizeof(int) * n);
  *nfds = n;
  return (int32_t)r;
}

// An anonymous shared file of `size` bytes (guest memory in tests and models); the fd, or -errno.
int32_t pvdrv_memfd(const char *name, uint64_t size) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return -errno;
  if (ftruncate(fd, (off_t)size) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// A non-blocking UDP socket bound to 127.0.0.1-or-any:`local` and connected to `ip`:`port` (IPv4, host byte
// order), for a frame link like QEMU's `-netdev dgram` (one Ethernet frame per datagram); the fd, or -errno.
int32_t pvdrv_udp_link(uint32_t bind_ip, uint32_t local, uint32_t ip, uint32_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)local),
                          .sin_addr.s_addr = htonl(bind_ip)};
  struct sockaddr_in b = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(ip)};
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || connect(fd, (struct sockaddr *)&b, sizeof b) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// The size of a passed descriptor's file when it is a regular file (a memfd, a file under /dev/shm or hugetlbfs),
// else -EINVAL: mapping past a file's end would fault on first touch (SIGBUS), so a peer's region is checked first.
int64_t pvdrv_fd_size(int32_t fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EINVAL;
  return (int64_t)st.st_size;
}

// Make a passed descriptor non-blocking (a peer's "eventfd" may be a pipe or a blocking eventfd): 0 or -errno.
int32_t pvdrv_fd_nonblock(int32_t fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  return fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

// Put anonymous zeroed memory where a shared mapping was (same address and length): the fd's pages are let go,
// and views JavaScript still holds read zeros instead of faulting. 0 or -errno.
int32_t pvdrv_remap_anon(void *p, uint64_t len) {
  void *q = mmap(p, len, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return q == MAP_FAILED ? -errno : 0;
}

// Run thread `tid` (0: the caller) on CPU `cpu` only (a driver loop beside its interrupt). 0 or -errno.
int32_t pvdrv_pin_thread(int32_t tid, uint32_t cpu) {
  if (cpu >= CPU_SETSIZE) return -EINVAL;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return NEG_ERRNO(sched_setaffinity(tid, sizeof set, &set));
}
