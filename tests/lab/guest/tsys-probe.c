/*
 * circ-tsys-probe: the guest half of the lab's `tsys` scenario (trusted
 * system calls through int $0x81, xen-patches/0002). Static, for the
 * busybox test guests; built by scripts/build.
 *
 *   circ-tsys-probe guest      (with `circ.tsys=bench` on the kernel command
 *                              line: the benchmark of scripts/bench tsys)
 *   circ-tsys-probe selftest   (no Xen needed: the untrusted half)
 *
 * Started by the guest's init when the kernel command line has `circ.tsys`.
 * Waits for dom0's token in xenstore (data/tsys/token, written by
 * `circ tsys authorise`; "none" on a stock hypervisor), removes it, runs
 * the checks and reports each as a console line:
 *
 *   circ-tsys: check NAME ok|FAIL DETAIL
 *   circ-tsys: info NAME VALUE
 *   circ-tsys: done checks=N failed=M
 *
 * The trusted calls are hand-written `int $0x81` with the syscall ABI; the
 * untrusted twin runs the same code with `syscall`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

/* xen-patches/0002: 'tsys' << 32 | 1, and | 2 for the private region. */
#define TSYS_OP_REGISTER 0x7473797300000001UL
#define TSYS_OP_CLOAK 0x7473797300000002UL
/* xen-patches/0004: sealed I/O. */
#define TSYS_OP_SEAL 0x7473797300000003UL
#define TSYS_OP_WINDOW 0x7473797300000004UL
/* The secret pattern in the callee-saved registers: PATTERN ^ 1..6. */
#define PATTERN 0x5ec2e75ec2e75e00UL
#define NR_PATTERN_REGS 6
/*
 * And in the FPU/SSE state: PATTERN ^ 0x18..0x1f in both halves of
 * xmm8-xmm15, MXCSR and the x87 control word with rounding toward zero
 * (the defaults are 0x1f80 and 0x037f).
 */
#define FP_MXCSR 0x7f80
#define FP_FCW 0x0f7f
#define NR_FP_PATTERN 10
#define STR_(x) #x
#define STR(x) STR_(x)

static int checks, failed;

static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line: lines of several processes stay whole. */
    (void)!write(1, line, n);
}

static void check(const char *name, int ok, const char *fmt, ...)
{
    char detail[384];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    checks++;
    if (!ok)
        failed++;
    say("circ-tsys: check %s %s %s", name, ok ? "ok" : "FAIL", detail);
}

/* --- int $0x81 and syscall with the syscall ABI ------------------------- */

static long int81(long nr, long a1, long a2, long a3)
{
    long ret;
    __asm__ volatile("int $0x81"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3)
                     : "rcx", "r11", "memory");
    return ret;
}

static long int81_register(const uint64_t token[4])
{
    long ret;
    register uint64_t r10 __asm__("r10") = token[3];
    __asm__ volatile("int $0x81"
                     : "=a"(ret)
                     : "a"(TSYS_OP_REGISTER), "D"(token[0]), "S"(token[1]),
                       "d"(token[2]), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

/*
 * uint64_t block_int81(int ready_fd, int read_fd, uint64_t pattern)
 * uint64_t block_syscall(...): the same with `syscall`.
 *
 * Loads PATTERN ^ k into rbx, rbp, r12-r15 (k = 1..6) and the FPU pattern
 * (above), writes one byte to ready_fd, then blocks in read(read_fd, 1
 * byte). Returns the read's result (low 32 bits, signed) and, in bits
 * 32-47, which registers did not hold their value after the calls: bits
 * 32-37 the six, 38-45 xmm8-xmm15, 46 MXCSR, 47 the x87 control word.
 */
#define REG_CHECK(reg, k)                                                      \
    "  mov %rcx, %rdx\n  xor $" #k ", %rdx\n  cmp %rdx, %" #reg "\n"          \
    "  je 1f\n  or $(1 << (" #k " - 1)), %r9\n1:\n"
/* xmm<n> = pattern ^ (0x10 + n) in both halves (SSE2 only: qemu64). */
#define XMM_LOAD(n)                                                            \
    "  mov %rdx, %rax\n  xor $(0x10 + " #n "), %rax\n"                        \
    "  movq %rax, %xmm" #n "\n  punpcklqdq %xmm" #n ", %xmm" #n "\n"
#define XMM_CHECK(n, bit)                                                      \
    "  mov %rcx, %rdx\n  xor $(0x10 + " #n "), %rdx\n"                        \
    "  movq %xmm" #n ", %rax\n  cmp %rdx, %rax\n  jne 3f\n"                   \
    "  pshufd $0x4e, %xmm" #n ", %xmm0\n  movq %xmm0, %rax\n"                \
    "  cmp %rdx, %rax\n  je 1f\n3:\n  or $(1 << " #bit "), %r9\n1:\n"
/*
 * The pieces BLOCK_FN and SPIN_FN share: FN_START saves the callee-saved
 * registers, MXCSR and the x87 control word, loads the pattern (pattern ^ k
 * into the k-th of rbx, rbp, r12-r15, and the FPU pattern), clears the
 * unused argument registers and makes the ready write(ready_fd, "*", 1)
 * with `insn`; FN_CHECK leaves in r9 bits 32-47 the registers that lost
 * their value; FN_END restores and returns. Frame: 0 the byte, 8 pattern,
 * 16 the second argument, 24 MXCSR, 28 control word, 32 scratch.
 */
#define FN_START(name, insn)                                                   \
    ".text\n.globl " #name "\n.type " #name ",@function\n" #name ":\n"       \
    "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n"                   \
    "  push %r14\n  push %r15\n  sub $40, %rsp\n"                            \
    "  mov %rdx, 8(%rsp)\n  mov %rsi, 16(%rsp)\n"                             \
    "  stmxcsr 24(%rsp)\n  fnstcw 28(%rsp)\n"                                 \
    "  mov %rdx, %rbx\n  xor $1, %rbx\n"                                      \
    "  mov %rdx, %rbp\n  xor $2, %rbp\n"                                      \
    "  mov %rdx, %r12\n  xor $3, %r12\n"                                      \
    "  mov %rdx, %r13\n  xor $4, %r13\n"                                      \
    "  mov %rdx, %r14\n  xor $5, %r14\n"                                      \
    "  mov %rdx, %r15\n  xor $6, %r15\n"                                      \
    XMM_LOAD(8) XMM_LOAD(9) XMM_LOAD(10) XMM_LOAD(11)                         \
    XMM_LOAD(12) XMM_LOAD(13) XMM_LOAD(14) XMM_LOAD(15)                       \
    "  movl $" STR(FP_MXCSR) ", 32(%rsp)\n  ldmxcsr 32(%rsp)\n"                \
    "  movw $" STR(FP_FCW) ", 32(%rsp)\n  fldcw 32(%rsp)\n"                    \
    "  xor %r8d, %r8d\n  xor %r9d, %r9d\n  xor %r10d, %r10d\n"                \
    "  movb $0x2a, (%rsp)\n"                                                  \
    "  mov $1, %eax\n  lea (%rsp), %rsi\n  mov $1, %edx\n  " insn "\n"
#define FN_CHECK                                                               \
    "  mov 8(%rsp), %rcx\n  xor %r9, %r9\n"                                   \
    REG_CHECK(rbx, 1) REG_CHECK(rbp, 2) REG_CHECK(r12, 3)                     \
    REG_CHECK(r13, 4) REG_CHECK(r14, 5) REG_CHECK(r15, 6)                     \
    XMM_CHECK(8, 6) XMM_CHECK(9, 7) XMM_CHECK(10, 8) XMM_CHECK(11, 9)         \
    XMM_CHECK(12, 10) XMM_CHECK(13, 11) XMM_CHECK(14, 12) XMM_CHECK(15, 13)   \
    "  stmxcsr 32(%rsp)\n  cmpl $" STR(FP_MXCSR) ", 32(%rsp)\n"               \
    "  je 1f\n  or $(1 << 14), %r9\n1:\n"                                     \
    "  fnstcw 32(%rsp)\n  cmpw $" STR(FP_FCW) ", 32(%rsp)\n"                  \
    "  je 1f\n  or $(1 << 15), %r9\n1:\n"                                     \
    "  shl $32, %r9\n"
#define FN_END(name)                                                           \
    "  ldmxcsr 24(%rsp)\n  fldcw 28(%rsp)\n"                                  \
    "  add $40, %rsp\n  pop %r15\n  pop %r14\n  pop %r13\n"                   \
    "  pop %r12\n  pop %rbp\n  pop %rbx\n  ret\n"                             \
    ".size " #name ", .-" #name "\n"
#define BLOCK_FN(name, insn)                                                   \
    __asm__(FN_START(name, insn)                                               \
            "  xor %eax, %eax\n  mov 16(%rsp), %rdi\n  lea (%rsp), %rsi\n"     \
            "  mov $1, %edx\n  " insn "\n"                                     \
            "  mov %eax, %r8d\n"                                               \
            FN_CHECK                                                           \
            "  mov %r8, %rax\n  or %r9, %rax\n"                                \
            FN_END(name))
/*
 * uint64_t spin_int81(int ready_fd, volatile int *flag, uint64_t pattern)
 * uint64_t spin_syscall(...): the same with `syscall` for the ready byte.
 *
 * Loads the pattern as BLOCK_FN does, writes the ready byte, then spins in
 * user mode, making no call, until *flag is set: whatever the kernel sees
 * of it then comes from an interrupt or event, not a call. Returns the
 * mask of changed registers in bits 32-47, as BLOCK_FN.
 */
#define SPIN_FN(name, insn)                                                    \
    __asm__(FN_START(name, insn)                                               \
            "  mov 16(%rsp), %rdi\n"                                           \
            "2:\n  pause\n  cmpl $0, (%rdi)\n  je 2b\n"                        \
            FN_CHECK                                                           \
            "  mov %r9, %rax\n"                                                \
            FN_END(name))
SPIN_FN(spin_int81, "int $0x81");
SPIN_FN(spin_syscall, "syscall");
uint64_t spin_int81(int ready_fd, volatile int *flag, uint64_t pattern);
uint64_t spin_syscall(int ready_fd, volatile int *flag, uint64_t pattern);
BLOCK_FN(block_int81, "int $0x81");
BLOCK_FN(block_syscall, "syscall");
uint64_t block_int81(int ready_fd, int read_fd, uint64_t pattern);
uint64_t block_syscall(int ready_fd, int read_fd, uint64_t pattern);

/* --- xenstore over /dev/xen/xenbus (no library in a busybox guest) ------ */

#define XS_READ 2
#define XS_RM 13
#define XS_ERROR 16

static int xs_request(uint32_t type, const char *path, char *out, size_t outsz)
{
    uint32_t hdr[4] = { type, 1, 0, (uint32_t)strlen(path) + 1 };
    char msg[256];
    int fd, n, len;

    if (hdr[3] + sizeof(hdr) > sizeof(msg))
        return -1;
    fd = open("/dev/xen/xenbus", O_RDWR);
    if (fd < 0)
        return -1;
    memcpy(msg, hdr, sizeof(hdr));
    memcpy(msg + sizeof(hdr), path, hdr[3]);
    if (write(fd, msg, sizeof(hdr) + hdr[3]) != (ssize_t)(sizeof(hdr) + hdr[3]) ||
        read(fd, hdr, sizeof(hdr)) != sizeof(hdr)) {
        close(fd);
        return -1;
    }
    len = hdr[3];
    if (len < 0 || (size_t)len >= outsz) {
        close(fd);
        return -1;
    }
    for (n = 0; n < len;) {
        int r = read(fd, out + n, len - n);
        if (r <= 0) {
            close(fd);
            return -1;
        }
        n += r;
    }
    out[len] = 0;
    close(fd);
    return hdr[0] == XS_ERROR ? -1 : len;
}

static int parse_token(const char *hex, uint64_t token[4])
{
    uint8_t bytes[32];
    int i;

    for (i = 0; i < 32; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return -1;
        bytes[i] = b;
    }
    memcpy(token, bytes, sizeof(bytes)); /* little-endian words */
    return 0;
}

/* --- helpers -------------------------------------------------------------- */

static int wait_status(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, __WALL) < 0)
        if (errno != EINTR)
            return -1;
    return status;
}

static const char *describe(int status)
{
    static char buf[64];

    if (WIFEXITED(status))
        snprintf(buf, sizeof(buf), "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, sizeof(buf), "signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, sizeof(buf), "status %#x", status);
    return buf;
}

static int killed_by_sigsegv(int status)
{
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* Waits until `pid` sleeps (state S) in the kernel, i.e. blocks in its read. */
static int wait_sleeping(pid_t pid)
{
    char path[64], buf[256];
    int i;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    for (i = 0; i < 200; i++) {
        int fd = open(path, O_RDONLY), n;
        char *p;

        if (fd < 0)
            return -1;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            p = strrchr(buf, ')');
            if (p && p[1] == ' ' && p[2] == 'S') {
                usleep(100000);
                return 0;
            }
        }
        usleep(20000);
    }
    return -1;
}

/*
 * How many of the six pattern registers guest root sees in PTRACE_GETREGS.
 * Only those six: the syscall ABI registers are the kernel's to see (the
 * block functions clear the ones their calls do not use, so no copy of the
 * pattern the compiler left there can show up either).
 */
static int pattern_in_regs(const struct user_regs_struct *r)
{
    const unsigned long long words[] = { r->rbx, r->rbp, r->r12, r->r13, r->r14, r->r15 };
    unsigned int i;
    int seen = 0;

    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if ((words[i] & ~0xfULL) == PATTERN)
            seen++;
    return seen;
}

/*
 * How many of the FPU pattern words guest root sees in PTRACE_GETFPREGS:
 * xmm8-xmm15 holding their pattern in either half, the pattern MXCSR and
 * the pattern x87 control word. Only those: the other XMM registers are
 * the compiler's, and may hold copies of PATTERN from the probe's own C.
 */
static int pattern_in_fpregs(const struct user_fpregs_struct *f)
{
    int seen = 0, i;

    for (i = 8; i < 16; i++) {
        uint64_t lo, hi, want = PATTERN ^ (0x10 + i);

        memcpy(&lo, &f->xmm_space[4 * i], sizeof(lo));
        memcpy(&hi, &f->xmm_space[4 * i + 2], sizeof(hi));
        if (lo == want || hi == want)
            seen++;
    }
    if (f->mxcsr == FP_MXCSR)
        seen++;
    if (f->cwd == FP_FCW)
        seen++;
    return seen;
}

/* Guest root's view, by ptrace, of `pid` blocked in its read: how many of the
 * six pattern registers PTRACE_GETREGS shows, and in *fp_seen how many FPU
 * pattern words PTRACE_GETFPREGS shows (-1 if the probe failed). */
static int ptrace_probe(const char *who, pid_t pid, int *fp_seen)
{
    struct user_regs_struct regs;
    struct user_fpregs_struct fpregs;
    int status, seen = -1;

    *fp_seen = -1;
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) {
        say("circ-tsys: %s: PTRACE_ATTACH: %s", who, strerror(errno));
        return -1;
    }
    status = wait_status(pid);
    if (WIFSTOPPED(status) && ptrace(PTRACE_GETREGS, pid, 0, &regs) == 0) {
        seen = pattern_in_regs(&regs);
        say("circ-tsys: info %s-getregs rbx=%#llx rbp=%#llx r12=%#llx r13=%#llx "
            "r14=%#llx r15=%#llx rcx=%#llx rip=%#llx rsp=%#llx",
            who, regs.rbx, regs.rbp, regs.r12, regs.r13, regs.r14, regs.r15, regs.rcx,
            regs.rip, regs.rsp);
    }
    if (WIFSTOPPED(status) && ptrace(PTRACE_GETFPREGS, pid, 0, &fpregs) == 0) {
        uint64_t xmm8[2], xmm15[2];

        memcpy(xmm8, &fpregs.xmm_space[4 * 8], sizeof(xmm8));
        memcpy(xmm15, &fpregs.xmm_space[4 * 15], sizeof(xmm15));
        *fp_seen = pattern_in_fpregs(&fpregs);
        say("circ-tsys: info %s-getfpregs xmm8=%#llx:%#llx xmm15=%#llx:%#llx "
            "mxcsr=%#x cwd=%#x",
            who, (unsigned long long)xmm8[1], (unsigned long long)xmm8[0],
            (unsigned long long)xmm15[1], (unsigned long long)xmm15[0],
            fpregs.mxcsr, fpregs.cwd);
    }
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return seen;
}

/* Waits for the child's ready byte (sent just before it blocks), then for
 * it to sleep in its read. */
static int wait_blocked(int ready_fd, pid_t pid)
{
    char c;

    if (read(ready_fd, &c, 1) != 1)
        return -1;
    return wait_sleeping(pid);
}

#define XS_WRITE 11
static int xs_write(const char *path, const char *value)
{
    char payload[200], out[64];
    size_t n = strlen(path) + 1, m = strlen(value);
    uint32_t hdr[4] = { XS_WRITE, 1, 0, 0 };
    char msg[256];
    int fd, ok;

    if (n + m > sizeof(payload))
        return -1;
    memcpy(payload, path, n);
    memcpy(payload + n, value, m);
    hdr[3] = n + m;
    fd = open("/dev/xen/xenbus", O_RDWR);
    if (fd < 0)
        return -1;
    memcpy(msg, hdr, sizeof(hdr));
    memcpy(msg + sizeof(hdr), payload, hdr[3]);
    ok = write(fd, msg, sizeof(hdr) + hdr[3]) == (ssize_t)(sizeof(hdr) + hdr[3]) &&
         read(fd, hdr, sizeof(hdr)) == sizeof(hdr) && hdr[0] != XS_ERROR &&
         hdr[3] < sizeof(out) && read(fd, out, hdr[3]) == (ssize_t)hdr[3];
    close(fd);
    return ok ? 0 : -1;
}

/* --- the checks ------------------------------------------------------------- */

static void untrusted_checks(const uint64_t *token)
{
    pid_t pid;
    int status;

    pid = fork();
    if (pid == 0) {
        int81(SYS_getpid, 0, 0, 0);
        _exit(0);
    }
    status = wait_status(pid);
    check("untrusted-int81-sigsegv", killed_by_sigsegv(status),
          "an unregistered process's int 0x81: %s", describe(status));

    pid = fork();
    if (pid == 0) {
        uint64_t bad[4] = { 1, 2, 3, 4 };
        if (token)
            memcpy(bad, token, sizeof(bad)), bad[2] ^= 1;
        int81_register(bad);
        _exit(0);
    }
    status = wait_status(pid);
    check("bad-token-sigsegv", killed_by_sigsegv(status),
          "registration with a wrong token: %s", describe(status));
}

/* Skips the faulting int $0x81 so that a flood keeps going. */
static volatile long segv_count;
static void skip_int81(int sig, siginfo_t *si, void *uc_)
{
    ucontext_t *uc = uc_;

    (void)sig;
    (void)si;
    segv_count++;
    uc->uc_mcontext.gregs[REG_RIP] += 2;
}

static void flood_check(int n)
{
    struct sigaction sa = { 0 };
    uint64_t t0;
    pid_t pid;
    int status, i;

    pid = fork();
    if (pid == 0) {
        sa.sa_sigaction = skip_int81;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, 0);
        t0 = now_ns();
        for (i = 0; i < n; i++)
            int81(SYS_getpid, 0, 0, 0);
        say("circ-tsys: info flood-ns-per-call %llu",
            (unsigned long long)((now_ns() - t0) / n));
        _exit(segv_count == n ? 0 : 1);
    }
    status = wait_status(pid);
    check("untrusted-flood", WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%d unregistered int 0x81, each a SIGSEGV the process survived: %s",
          n, describe(status));
}

/*
 * The secret page: mapped before the trusted process and the twin are
 * forked, and filled by each of them (so each has its own, writable copy).
 * Word i holds SECRET ^ i.
 */
#define SECRET 0x5ec2e7da7a000000UL
#define SECRET_WORDS (4096 / 8)
static uint64_t *secret_page;

static int map_secret_page(void)
{
    void *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return -1;
    secret_page = p;
    return 0;
}

static void fill_secret(void)
{
    int i;

    for (i = 0; i < SECRET_WORDS; i++)
        secret_page[i] = SECRET ^ i;
    (void)mlock(secret_page, 4096);
}

static int secret_intact(void)
{
    int i;

    for (i = 0; i < SECRET_WORDS; i++)
        if (secret_page[i] != (SECRET ^ i))
            return 0;
    return 1;
}

static int secret_words(const uint64_t *buf)
{
    int i, n = 0;

    for (i = 0; i < SECRET_WORDS; i++)
        n += (buf[i] & ~0xfffUL) == SECRET;
    return n;
}

/*
 * What guest root reads of `pid`'s secret page: secret words seen through
 * /proc/PID/mem (*mem) and process_vm_readv (*vm); -1 for a failed read.
 */
static void peek_secret(pid_t pid, int *mem, int *vm)
{
    uint64_t buf[SECRET_WORDS];
    struct iovec local = { buf, sizeof(buf) }, remote = { secret_page, sizeof(buf) };
    char path[64];
    int fd;

    *mem = *vm = -1;
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    fd = open(path, O_RDONLY);
    if (fd >= 0) {
        if (pread(fd, buf, sizeof(buf), (off_t)(uintptr_t)secret_page) == sizeof(buf))
            *mem = secret_words(buf);
        close(fd);
    }
    memset(buf, 0, sizeof(buf));
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) == sizeof(buf))
        *vm = secret_words(buf);
}

/* Threads of the trusted process: same address space, own stacks. */
struct thread_probe {
    int ready[2], data[2];
    long pid, bad_calls;
    uint64_t pattern, res;
};

static void *thread_main(void *arg)
{
    struct thread_probe *t = arg;
    int i;

    for (i = 0; i < 500; i++)
        if (int81(SYS_getpid, 0, 0, 0) != t->pid)
            t->bad_calls++;
    t->res = block_int81(t->ready[1], t->data[0], t->pattern);
    return 0;
}

static volatile long handler_pid;
static void usr1_nested_call(int sig)
{
    (void)sig;
    handler_pid = int81(SYS_getpid, 0, 0, 0);
}

/* In the registered process: calls, a bad pointer, fork, a signal mid-call. */
static int trusted_process(const uint64_t *token, int ready_fd, int data_fd,
                           volatile int *flag)
{
    static const char hello[] = "circ-tsys: hello from a trusted process\n";
    long r, pid_int81, pid_sys;
    uint64_t t0, t_int81, t_sys;
    pid_t child;
    int status, i;

    r = int81_register(token);
    check("trusted-register", r == 0, "registration returned %ld", r);
    if (r != 0)
        return 1;

    fill_secret();
    r = int81((long)TSYS_OP_CLOAK, (long)secret_page + 8, 4096, 0);
    {
        long r2 = int81((long)TSYS_OP_CLOAK, (long)secret_page, 64 * 4096, 0);
        long r3 = int81((long)TSYS_OP_CLOAK, (long)secret_page, 4096, 0);

        check("trusted-cloak-declared", r == -EINVAL && r2 == -EINVAL && r3 == 0,
              "private region: unaligned %ld, 64 pages %ld (want -EINVAL both), "
              "the secret page %ld (want 0)", r, r2, r3);
    }

    r = int81((long)TSYS_OP_SEAL, 1, 7, 1);
    check("trusted-seal-needs-key", r == -126,
          "sealing an fd without a key from dom0: %ld (want -ENOKEY)", r);

    r = int81(SYS_write, 1, (long)hello, sizeof(hello) - 1);
    check("trusted-write", r == (long)sizeof(hello) - 1,
          "write(1, ...) through int 0x81 returned %ld", r);

    pid_int81 = int81(SYS_getpid, 0, 0, 0);
    pid_sys = syscall(SYS_getpid);
    check("trusted-getpid", pid_int81 == pid_sys && pid_sys > 0,
          "getpid through int 0x81 %ld, through syscall %ld", pid_int81, pid_sys);

    r = int81(SYS_write, 1, 1, 16);
    check("trusted-bad-pointer", r == -EFAULT,
          "write from address 1 returned %ld (want -EFAULT), process alive", r);

    child = fork();
    if (child == 0) {
        int81(SYS_getpid, 0, 0, 0);
        _exit(0);
    }
    status = wait_status(child);
    check("trusted-fork-child-untrusted", killed_by_sigsegv(status),
          "a trusted process's fork child (new address space) calling int 0x81: %s",
          describe(status));

    /* 1. Guest root looks with ptrace while we block in a read. */
    {
        uint64_t res = block_int81(ready_fd, data_fd, PATTERN);
        int after = (int)(res >> 32), ret = (int)(int32_t)res;

        check("trusted-regs-restored", ret == 1 && after == 0,
              "after a read that guest root interrupted with ptrace (%d), the trusted "
              "process's changed registers: mask %#x (bits 0-5 rbx, rbp, r12-r15; "
              "6-13 xmm8-15; 14 MXCSR; 15 x87 control word)", ret, after);
        check("trusted-memory-restored", secret_intact(),
              "the secret page after the call: %s",
              secret_intact() ? "intact" : "CHANGED");
    }

    /* 2. A signal during a call; the handler makes a call of its own. */
    {
        struct sigaction sa = { 0 };
        uint64_t res;
        int after, ret;

        sa.sa_handler = usr1_nested_call;
        sigaction(SIGUSR1, &sa, 0); /* no SA_RESTART: the read ends with EINTR */
        res = block_int81(ready_fd, data_fd, PATTERN);
        after = (int)(res >> 32);
        ret = (int)(int32_t)res;
        check("trusted-signal-mid-call",
              ret == -EINTR && after == 0 && handler_pid == pid_sys,
              "read interrupted by a handler that called getpid through int 0x81: "
              "read %d, handler's getpid %ld, changed registers mask %#x",
              ret, (long)handler_pid, after);
    }

    /* 3. Blocked while dom0 lists the trusted processes. */
    {
        uint64_t res = block_int81(ready_fd, data_fd, PATTERN);
        int after = (int)(res >> 32), ret = (int)(int32_t)res;

        check("trusted-call-while-dom0-looked", ret == 1 && after == 0,
              "read %d, changed registers mask %#x", ret, after);
    }

    /* 4. Guest root looks with ptrace while we compute (no call). */
    {
        uint64_t res = spin_int81(ready_fd, flag, PATTERN);

        check("trusted-regs-restored-after-interrupt", (res >> 32) == 0,
              "after ptrace stopped it in user mode, the trusted process's changed "
              "registers: mask %#x", (unsigned)(res >> 32));
    }

    /* 5. Two threads (two vCPUs in the lab) calling and blocking at once. */
    {
        struct thread_probe th[2] = { { .pid = pid_sys }, { .pid = pid_sys } };
        pthread_t tid[2];
        int ok = 1, n;
        char c;

        for (n = 0; n < 2; n++) {
            th[n].pattern = PATTERN + ((uint64_t)(n + 1) << 8);
            if (pipe(th[n].ready) || pipe(th[n].data) ||
                pthread_create(&tid[n], 0, thread_main, &th[n]))
                ok = 0;
        }
        for (n = 0; ok && n < 2; n++)
            ok = read(th[n].ready[0], &c, 1) == 1;
        usleep(200000);
        for (n = 0; n < 2; n++) {
            (void)!write(th[n].data[1], "x", 1);
            pthread_join(tid[n], 0);
        }
        check("trusted-threads", ok && !th[0].bad_calls && !th[1].bad_calls &&
                                     th[0].res == 1 && th[1].res == 1,
              "two threads, 500 getpid each through int 0x81 (bad %ld, %ld), then both "
              "blocked in a read at once: results %#llx %#llx (want 1: read 1 byte, "
              "registers intact)", th[0].bad_calls, th[1].bad_calls,
              (unsigned long long)th[0].res, (unsigned long long)th[1].res);
    }

    t0 = now_ns();
    for (i = 0; i < 2000; i++)
        int81(SYS_getpid, 0, 0, 0);
    t_int81 = now_ns() - t0;
    t0 = now_ns();
    for (i = 0; i < 2000; i++)
        syscall(SYS_getpid);
    t_sys = now_ns() - t0;
    say("circ-tsys: info getpid-ns trusted=%llu plain=%llu",
        (unsigned long long)(t_int81 / 2000), (unsigned long long)(t_sys / 2000));
    return failed ? 1 : 0;
}

static void trusted_checks(const uint64_t *token)
{
    int ready[2], data[2], status, seen, fp_seen, i;
    char go[16];
    pid_t pid;

    volatile int *flag = mmap(0, 4096, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    if (flag == MAP_FAILED || pipe(ready) || pipe(data) || map_secret_page())
        return;
    *flag = 0;
    pid = fork();
    if (pid == 0) {
        checks = failed = 0;
        _exit(trusted_process(token, ready[1], data[0], flag));
    }

    /* 1. /proc/PID/mem, process_vm_readv and ptrace while it blocks. */
    if (wait_blocked(ready[0], pid) == 0) {
        int mem, vm;

        peek_secret(pid, &mem, &vm);
        check("trusted-memory-hidden", mem == 0 && vm == 0,
              "secret words guest root read of the trusted process's private page while "
              "it blocked in read: /proc/PID/mem %d, process_vm_readv %d (of %d)",
              mem, vm, SECRET_WORDS);
        seen = ptrace_probe("trusted", pid, &fp_seen);
        check("trusted-regs-hidden", seen == 0,
              "pattern registers guest root saw in PTRACE_GETREGS while the trusted "
              "process blocked in read: %d of %d", seen, NR_PATTERN_REGS);
        check("trusted-fpu-hidden", fp_seen == 0,
              "FPU pattern words (xmm8-15, MXCSR, x87 control word) guest root saw in "
              "PTRACE_GETFPREGS while the trusted process blocked in read: %d of %d",
              fp_seen, NR_FP_PATTERN);
        usleep(100000);
        (void)!write(data[1], "x", 1);
    }
    /* 2. A signal while it blocks. */
    if (wait_blocked(ready[0], pid) == 0)
        kill(pid, SIGUSR1);
    /* 3. dom0 looks (`circ tsys list`) while it blocks. */
    if (wait_blocked(ready[0], pid) == 0) {
        xs_write("data/tsys/state", "trusted-blocked");
        say("circ-tsys: trusted process blocked, waiting for dom0");
        for (i = 0; i < 600; i++) {
            if (xs_request(XS_READ, "data/tsys/go", go, sizeof(go)) > 0)
                break;
            usleep(200000);
        }
        (void)!write(data[1], "x", 1);
    }
    /* 4. ptrace while it computes in user mode. */
    {
        char c;
        if (read(ready[0], &c, 1) == 1) {
            usleep(300000);
            seen = ptrace_probe("trusted-running", pid, &fp_seen);
            check("trusted-regs-hidden-running", seen == 0,
                  "pattern registers guest root saw in PTRACE_GETREGS after stopping the "
                  "trusted process in user mode: %d of %d", seen, NR_PATTERN_REGS);
            check("trusted-fpu-hidden-running", fp_seen == 0,
                  "FPU pattern words guest root saw in PTRACE_GETFPREGS after stopping "
                  "the trusted process in user mode: %d of %d", fp_seen, NR_FP_PATTERN);
        }
        *flag = 1;
    }
    status = wait_status(pid);
    check("trusted-process", WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the registered process's own checks: %s", describe(status));
    close(ready[0]);
    close(ready[1]);
    close(data[0]);
    close(data[1]);
}

/* The untrusted twin: the same code with `syscall`; guest root sees it all. */
static void twin_checks(void)
{
    int ready[2], data[2], result[2], seen, fp_seen;
    pid_t pid;

    if (pipe(ready) || pipe(data) || pipe(result) || (!secret_page && map_secret_page()))
        return;
    pid = fork();
    if (pid == 0) {
        uint64_t r;

        fill_secret();
        r = block_syscall(ready[1], data[0], PATTERN);
        (void)!write(result[1], &r, sizeof(r));
        _exit(0);
    }
    if (wait_blocked(ready[0], pid) == 0) {
        uint64_t r = 0;
        int mem, vm;

        peek_secret(pid, &mem, &vm);
        check("twin-memory-visible", mem == SECRET_WORDS && vm == SECRET_WORDS,
              "secret words guest root read of the untrusted twin's page: /proc/PID/mem "
              "%d, process_vm_readv %d (of %d)", mem, vm, SECRET_WORDS);
        seen = ptrace_probe("twin", pid, &fp_seen);
        check("twin-regs-visible", seen == NR_PATTERN_REGS,
              "pattern registers guest root saw for the untrusted twin: %d of %d",
              seen, NR_PATTERN_REGS);
        check("twin-fpu-visible", fp_seen == NR_FP_PATTERN,
              "FPU pattern words guest root saw for the untrusted twin: %d of %d",
              fp_seen, NR_FP_PATTERN);
        usleep(100000);
        (void)!write(data[1], "x", 1);
        if (read(result[0], &r, sizeof(r)) == sizeof(r))
            check("twin-regs-intact", (int)(int32_t)r == 1 && (r >> 32) == 0,
                  "twin after its read (%d): changed registers mask %#x",
                  (int)(int32_t)r, (unsigned)(r >> 32));
    }
    wait_status(pid);

    /* And while it computes in user mode. */
    {
        volatile int *flag = mmap(0, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        uint64_t r = ~0ULL;
        char c;

        if (flag == MAP_FAILED)
            return;
        *flag = 0;
        pid = fork();
        if (pid == 0) {
            r = spin_syscall(ready[1], flag, PATTERN);
            (void)!write(result[1], &r, sizeof(r));
            _exit(0);
        }
        if (read(ready[0], &c, 1) == 1) {
            usleep(300000);
            seen = ptrace_probe("twin-running", pid, &fp_seen);
            check("twin-regs-visible-running", seen == NR_PATTERN_REGS,
                  "pattern registers guest root saw for the untrusted twin stopped in "
                  "user mode: %d of %d", seen, NR_PATTERN_REGS);
            check("twin-fpu-visible-running", fp_seen == NR_FP_PATTERN,
                  "FPU pattern words guest root saw for the untrusted twin stopped in "
                  "user mode: %d of %d", fp_seen, NR_FP_PATTERN);
        }
        *flag = 1;
        if (read(result[0], &r, sizeof(r)) == sizeof(r))
            check("twin-regs-intact-running", (r >> 32) == 0,
                  "twin after the stop: changed registers mask %#x", (unsigned)(r >> 32));
        wait_status(pid);
    }
    close(ready[0]);
    close(ready[1]);
    close(data[0]);
    close(data[1]);
    close(result[0]);
    close(result[1]);
}

/* --- rewritten busybox applets through the launcher ------------------------ */

#define LAUNCHER "/bin/circ-tsys-launch"
/* The guest's /bin/busybox rewritten by circ-tsys-rewrite (the lab does it). */
#define BUSYBOX_TSYS "/bin/busybox-tsys"
#define NR_APPLETS 3

/* Runs a shell command (busybox sh); returns its exit code, 128 + N for a
 * command killed by signal N (as shells report it), or -1. */
static int run_sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    int n, status;

    va_start(ap, fmt);
    n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof(cmd))
        return -1;
    status = system(cmd);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * Both hypervisors: the rewritten busybox started by the kernel (so not
 * registered) dies on its first int $0x81, and the launcher given a token
 * Xen did not arm says so and exits 125 without running the program.
 * Patched Xen: for each applet the probe asks dom0 for a token (state
 * want-token-N; dom0 runs `circ tsys authorise`), then runs it plainly and
 * rewritten through the launcher; the outputs must be byte for byte the same.
 */
static void applet_checks(int patched)
{
    static const struct {
        const char *name, *args, *result;
    } applets[NR_APPLETS] = {
        { "sha256sum", "sha256sum /bin/busybox /bin/circ-tsys-launch /bin/circ-tsys-probe",
          NULL },
        { "cp", "cp /bin/busybox /tmp/copy", "/tmp/copy" },
        { "ls", "ls -lan /bin /modules", NULL },
    };
    pid_t pid;
    int status, code, i;

    pid = fork();
    if (pid == 0) {
        execl(BUSYBOX_TSYS, "busybox", "true", (char *)NULL);
        _exit(127);
    }
    status = wait_status(pid);
    check("rewritten-busybox-unregistered-sigsegv", killed_by_sigsegv(status),
          "busybox-tsys exec'd by the kernel: %s", describe(status));

    code = run_sh("echo %064d >/tmp/zero-token && " LAUNCHER
                  " --token-file /tmp/zero-token " BUSYBOX_TSYS
                  " echo ran >/tmp/refused.out 2>/tmp/refused.err",
                  0);
    check("launcher-refused-cleanly",
          code == 125 && run_sh("grep -q 'refused the registration' /tmp/refused.err") == 0 &&
              run_sh("! grep -q ran /tmp/refused.out") == 0,
          "a token Xen did not arm: exit %d", code);
    if (!patched)
        return;

    for (i = 0; i < NR_APPLETS; i++) {
        char state[32], name[64];
        int plain, trusted, same;

        snprintf(state, sizeof(state), "want-token-%d", i + 1);
        xs_write("data/tsys/state", state);
        plain = run_sh("cd /tmp && busybox %s >/tmp/plain.out 2>&1", applets[i].args);
        if (applets[i].result)
            run_sh("mv %s %s.plain", applets[i].result, applets[i].result);
        trusted = run_sh("cd /tmp && " LAUNCHER " --wait 300 " BUSYBOX_TSYS
                         " %s >/tmp/tsys.out 2>&1",
                         applets[i].args);
        same = run_sh("cmp -s /tmp/plain.out /tmp/tsys.out") == 0;
        if (applets[i].result)
            same = same && run_sh("cmp -s %s %s.plain && cmp -s %s /bin/busybox",
                                  applets[i].result, applets[i].result,
                                  applets[i].result) == 0;
        snprintf(name, sizeof(name), "applet-%s-identical", applets[i].name);
        check(name, plain == 0 && trusted == 0 && same,
              "busybox %s: plain exit %d, trusted exit %d, outputs %s", applets[i].name,
              plain, trusted, same ? "identical" : "DIFFER");
        if (!same)
            run_sh("diff /tmp/plain.out /tmp/tsys.out | head -5 | sed 's/^/circ-tsys: diff /'");
        run_sh("rm -f /tmp/plain.out /tmp/tsys.out /tmp/copy /tmp/copy.plain");
    }

    /*
     * Exec ends trust: the trusted shell execs the rewritten busybox, whose
     * new address space is not registered, so its first int $0x81 is the
     * stock #GP (SIGSEGV; the outer shell reports 128 + 11).
     */
    xs_write("data/tsys/state", "want-token-4");
    code = run_sh(LAUNCHER " --wait 300 " BUSYBOX_TSYS
                  " sh -c 'exec " BUSYBOX_TSYS " true' 2>/dev/null");
    check("trusted-exec-untrusted", code == 128 + SIGSEGV,
          "a trusted shell exec'ing the rewritten busybox: exit %d (want %d, SIGSEGV)", code,
          128 + SIGSEGV);
}

/* --- sealed I/O (xen-patches/0004) ----------------------------------------- */

/* A system call through int $0x81 with a fourth argument (r10). */
static long int81_4(long nr, long a1, long a2, long a3, long a4)
{
    long ret;
    register long r10 __asm__("r10") = a4;
    __asm__ volatile("int $0x81"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SEAL_FILE "/tmp/sealed"
#define SEAL_FILE_ID 0x5ea1ed0f11e00001L
#define SEAL_BLOCK 4096
#define SEAL_STORED 4144
#define SEAL_LEN 10000 /* two whole blocks and a short one */
#define SEAL_WINDOW (16 * SEAL_STORED)
#define SEAL_MARK "CIRC-SEALED-SECRET-"

static void seal_fill(char *buf, size_t len)
{
    size_t i;

    for (i = 0; i < len; i += 24)
        snprintf(buf + i, len - i < 25 ? len - i : 25, SEAL_MARK "%04zu|", i / 24 % 10000);
}

/* Waits for dom0's token (a keyed one here), removes it; 0 when it came. */
static int wait_token(uint64_t token[4], int seconds)
{
    char value[128];
    int i;

    for (i = 0; i < seconds * 5; i++) {
        if (xs_request(XS_READ, "data/tsys/token", value, sizeof(value)) > 0) {
            xs_request(XS_RM, "data/tsys/token", value + 100, sizeof(value) - 100);
            return parse_token(value, token);
        }
        usleep(200000);
    }
    return -1;
}

/* Waits for the parent's next step on `cmd`; 0 when it came. */
static int seal_step(int cmd)
{
    char c;
    return read(cmd, &c, 1) == 1 ? 0 : -1;
}

/*
 * The keyed trusted process: seals SEAL_FILE, writes and reads it back, then
 * reads it after each of the parent's attacks.  Each outcome is one byte on
 * `res` (1 ok, 0 not) after a line of its own; the parent reports checks.
 */
static int sealed_process(const uint64_t *token, int cmd, int res)
{
    static char data[SEAL_LEN], back[16384];
    char *win;
    long r, r2, r3;
    int fd, ok;

#define SEAL_REPORT(name, cond, ...)                                           \
    do {                                                                       \
        ok = (cond);                                                           \
        check(name, ok, __VA_ARGS__);                                          \
        if (write(res, &(char){ (char)ok }, 1) != 1)                           \
            return 1;                                                          \
    } while (0)

    r = int81_register(token);
    SEAL_REPORT("sealed-register-keyed", r == 0, "registration with the keyed token: %ld", r);
    if (r != 0)
        return 1;
    fd = open(SEAL_FILE, O_RDWR | O_CREAT | O_TRUNC, 0644);
    r = int81((long)TSYS_OP_SEAL, fd, SEAL_FILE_ID, 1);
    r2 = int81_4(SYS_pwrite64, fd, (long)data, SEAL_BLOCK, 0);
    win = mmap(NULL, SEAL_WINDOW, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(win, 0, SEAL_WINDOW);
    r3 = int81((long)TSYS_OP_WINDOW, (long)win, SEAL_WINDOW, 0);
    SEAL_REPORT("sealed-fd-and-window", fd >= 0 && r == 0 && r2 == -ENOBUFS && r3 == 0,
                "seal fd %d: %ld; pwrite before a window: %ld (want -ENOBUFS); window: %ld",
                fd, r, r2, r3);

    seal_fill(data, sizeof(data));
    r = int81_4(SYS_pwrite64, fd, (long)data, SEAL_LEN, 0);
    /* Ask for more than there is: the answer stops at the short block. */
    memset(back, 0, sizeof(back));
    r2 = int81_4(SYS_pread64, fd, (long)back, sizeof(back), 0);
    SEAL_REPORT("sealed-write-read-back", r == SEAL_LEN && r2 == SEAL_LEN &&
                                              memcmp(back, data, SEAL_LEN) == 0,
                "pwrite %ld, pread of 16 KiB %ld (want %d both), data %s", r, r2, SEAL_LEN,
                memcmp(back, data, SEAL_LEN) == 0 ? "identical" : "DIFFERS");

    r = int81(SYS_write, fd, (long)data, 100);
    r2 = int81(SYS_read, fd, (long)back, 100);
    r3 = int81_4(SYS_pread64, fd, (long)back, 100, 100);
    {
        /* Not rewritten: libc's pwrite is a `syscall`, which Xen cannot seal. */
        long r4 = pwrite(fd, data, 100, 0) < 0 ? -errno : 0;

        SEAL_REPORT("sealed-refusals", r == -EINVAL && r2 == -EINVAL && r3 == -EINVAL &&
                                           r4 == -ENOSYS,
                    "write %ld, read %ld, pread at offset 100 %ld (want -EINVAL), "
                    "pwrite by `syscall` %ld (want -ENOSYS)", r, r2, r3, r4);
    }

    /* dom0 looks at the keyed process (state sealed-holding), then go. */
    xs_write("data/tsys/state", "sealed-holding");
    while (xs_request(XS_READ, "data/tsys/go-seal", back, sizeof(back)) <= 0)
        usleep(200000);

    /* The parent flipped a ciphertext byte of block 1. */
    if (write(res, "w", 1) != 1 || seal_step(cmd))
        return 1;
    r = int81_4(SYS_pread64, fd, (long)back, SEAL_BLOCK, SEAL_BLOCK);
    r2 = int81_4(SYS_pread64, fd, (long)back, SEAL_BLOCK, 0);
    SEAL_REPORT("sealed-tampered-block-ebadmsg", r == -EBADMSG && r2 == SEAL_BLOCK &&
                                                     memcmp(back, data, SEAL_BLOCK) == 0,
                "pread of the flipped block %ld (want -EBADMSG), of the block before it %ld",
                r, r2);

    /* The parent put block 1 where block 0 was (a replay elsewhere). */
    if (seal_step(cmd))
        return 1;
    r = int81_4(SYS_pread64, fd, (long)back, SEAL_BLOCK, 0);
    SEAL_REPORT("sealed-moved-block-ebadmsg", r == -EBADMSG,
                "pread of a block moved from index 1 to 0: %ld (want -EBADMSG)", r);

    /* The parent cut the file inside block 1. */
    if (seal_step(cmd))
        return 1;
    r = int81_4(SYS_pread64, fd, (long)back, 2 * SEAL_BLOCK, 0);
    SEAL_REPORT("sealed-cut-file-ebadmsg", r == -EBADMSG,
                "pread across a cut block: %ld (want -EBADMSG)", r);

    r = int81(SYS_close, fd, 0, 0);
    r2 = int81((long)TSYS_OP_SEAL, fd, SEAL_FILE_ID, 0);
    SEAL_REPORT("sealed-close", r == 0 && r2 == 0, "close %ld, unseal after it %ld", r, r2);
    return 0;
#undef SEAL_REPORT
}

/*
 * Patched Xen: dom0 attaches a key to the next registration (state
 * want-key-token; `circ tsys authorise --key-file`).  The keyed process
 * writes SEAL_FILE sealed; this (untrusted) parent finds only ciphertext in
 * it, prints block 0 for the host to open with the key, and attacks it.
 */
static void seal_checks(void)
{
    uint64_t token[4];
    int cmd[2], res[2], status, fd, found = 0;
    static char file[4 * SEAL_STORED];
    char c;
    ssize_t n;
    pid_t pid;

    xs_write("data/tsys/state", "want-key-token");
    if (wait_token(token, 300) != 0) {
        check("sealed-token", 0, "no keyed token in 300 s");
        return;
    }
    if (pipe(cmd) || pipe(res))
        return;
    pid = fork();
    if (pid == 0) {
        close(cmd[1]);
        close(res[0]);
        _exit(sealed_process(token, cmd[0], res[1]));
    }
    close(cmd[0]);
    close(res[1]);
    /* Four verdicts, then "w": the file is written. */
    while (read(res[0], &c, 1) == 1 && c != 'w')
        ;
    fd = open(SEAL_FILE, O_RDWR);
    n = fd < 0 ? -1 : pread(fd, file, sizeof(file), 0);
    found = n > 0 && memmem(file, n, SEAL_MARK, strlen(SEAL_MARK)) != NULL;
    check("sealed-file-ciphertext-only",
          n == 3 * SEAL_STORED && !found && memcmp(file, "CTS1", 4) == 0 &&
              memcmp(file + SEAL_STORED, "CTS1", 4) == 0,
          "an untrusted read of the file: %zd bytes (want %d), plaintext %s, CTS1 headers %s",
          n, 3 * SEAL_STORED, found ? "FOUND" : "absent",
          memcmp(file, "CTS1", 4) == 0 ? "present" : "MISSING");
    /* Block 0 for the host half (tsys.host.sh), which opens it with the key. */
    for (int off = 0; n >= SEAL_STORED && off < SEAL_STORED; off += 112) {
        char hex[2 * 112 + 1];
        int len = SEAL_STORED - off < 112 ? SEAL_STORED - off : 112;

        for (int i = 0; i < len; i++)
            sprintf(hex + 2 * i, "%02x", (unsigned char)file[off + i]);
        say("circ-tsys: sealed-block0 %s", hex);
    }

    /* Attack 1: flip a ciphertext byte of block 1. */
    c = file[SEAL_STORED + 32 + 100] ^ 1;
    if (pwrite(fd, &c, 1, SEAL_STORED + 32 + 100) != 1 || write(cmd[1], "1", 1) != 1 ||
        read(res[0], &c, 1) != 1)
        goto out;
    /* Attack 2: block 1, intact, in place of block 0. */
    if (pwrite(fd, file + SEAL_STORED, SEAL_STORED, 0) != SEAL_STORED ||
        write(cmd[1], "2", 1) != 1 || read(res[0], &c, 1) != 1)
        goto out;
    /* Attack 3: block 0 back, the file cut 100 bytes into block 1. */
    if (pwrite(fd, file, SEAL_STORED, 0) != SEAL_STORED ||
        ftruncate(fd, SEAL_STORED + 100) != 0 || write(cmd[1], "3", 1) != 1 ||
        read(res[0], &c, 1) != 1)
        goto out;
    read(res[0], &c, 1); /* the close verdict */
out:
    close(cmd[1]);
    status = wait_status(pid);
    check("sealed-process", WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the keyed process: %s", describe(status));
    if (fd >= 0)
        close(fd);
    close(res[0]);
}

/*
 * Patched Xen, keys from dom0's TPM (issue 11): dom0 deployed a small
 * application under a key k1 bound to its TPM's bind key, rolled it out
 * (k1 sealed to PCRs 14 and 15), and hands its CTS1 ciphertext here through
 * xenstore (data/tsys/pkg/...); `circ tsys rollin` unseals k1 and gives it
 * to Xen with a token. The process that registers with that token opens
 * the ciphertext through Xen's sealed read: the plaintext must hash to what
 * dom0 published. k1 itself never reaches the guest.
 */
static void package_checks(void)
{
    static char cts[16 * SEAL_STORED], plain[16 * SEAL_BLOCK];
    char val[4200], path[64], sha[72];
    uint64_t token[4];
    unsigned long long file_id;
    long len, r = -1;
    int chunks, i, fd, status;
    size_t n = 0;
    pid_t pid;

    xs_write("data/tsys/state", "want-package");
    for (i = 0; i < 1500 && xs_request(XS_READ, "data/tsys/pkg/sha256", sha, sizeof(sha)) <= 0; i++)
        usleep(200000);
    if (xs_request(XS_READ, "data/tsys/pkg/chunks", val, sizeof(val)) <= 0 ||
        (chunks = atoi(val)) <= 0 || xs_request(XS_READ, "data/tsys/pkg/len", val, sizeof(val)) <= 0 ||
        (len = atol(val)) <= 0 || len > (long)sizeof(plain) ||
        xs_request(XS_READ, "data/tsys/pkg/file-id", val, sizeof(val)) <= 0) {
        check("package-received", 0, "no package in data/tsys/pkg");
        return;
    }
    file_id = strtoull(val, NULL, 16);
    for (i = 0; i < chunks; i++) {
        int got;

        snprintf(path, sizeof(path), "data/tsys/pkg/%d", i);
        got = xs_request(XS_READ, path, val, sizeof(val));
        for (int j = 0; got > 0 && j + 1 < got && n < sizeof(cts); j += 2) {
            unsigned int b;
            if (sscanf(val + j, "%2x", &b) != 1)
                break;
            cts[n++] = (char)b;
        }
    }
    fd = open("/tmp/pkg.cts1", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, cts, n) != (ssize_t)n || close(fd) != 0 || n % SEAL_STORED ||
        wait_token(token, 300) != 0) {
        check("package-received", 0, "%zu ciphertext bytes, or no keyed token from rollin", n);
        return;
    }
    pid = fork();
    if (pid == 0) {
        char *win = mmap(NULL, SEAL_WINDOW, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        long reg = int81_register(token);

        memset(win, 0, SEAL_WINDOW);
        memset(plain, 0, sizeof(plain));
        fd = open("/tmp/pkg.cts1", O_RDONLY);
        if (reg == 0 && fd >= 0 && int81((long)TSYS_OP_WINDOW, (long)win, SEAL_WINDOW, 0) == 0 &&
            int81((long)TSYS_OP_SEAL, fd, (long)file_id, 1) == 0)
            r = int81_4(SYS_pread64, fd, (long)plain, (len + SEAL_BLOCK - 1) & ~(SEAL_BLOCK - 1), 0);
        check("package-opens-in-xen", r == len,
              "registered %ld; the rolled-in package's %zu ciphertext bytes opened by Xen: %ld "
              "(want %ld)", reg, n, r, len);
        fd = open("/tmp/pkg.plain", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        _exit(r == len && fd >= 0 && write(fd, plain, len) == len ? 0 : 1);
    }
    status = wait_status(pid);
    sha[64] = 0;
    check("package-plaintext-matches",
          WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
              run_sh("busybox sha256sum /tmp/pkg.plain | grep -q '^%s '", sha) == 0,
          "sha256 of what Xen decrypted with k1 from the TPM against dom0's %.16s...: %s", sha,
          describe(status));

    /*
     * Rolled in again: the launcher reads the application from its
     * ciphertext through Xen and runs it; it writes a secret file sealed by
     * Xen under k1 and reads it back.
     */
    xs_write("data/tsys/state", "want-launch");
    status = run_sh(LAUNCHER " --wait 300 --sealed %016llx /tmp/pkg.cts1 /tmp/app-secret "
                    ">/tmp/app.out 2>&1",
                    file_id);
    check("deployed-app-runs-from-ciphertext",
          status == 0 && run_sh("grep -q 'read back intact' /tmp/app.out") == 0,
          "circ-tsys-launch --sealed ... /tmp/pkg.cts1: exit %d", status);
    if (status != 0)
        run_sh("sed 's/^/circ-tsys: app /' /tmp/app.out");
    check("deployed-app-secret-file-sealed",
          run_sh("test $(wc -c </tmp/app-secret) -eq %d && "
                 "! grep -q CIRC-DEPLOYED /tmp/app-secret && head -c 4 /tmp/app-secret | grep -q CTS1",
                 2 * SEAL_STORED) == 0,
          "the application's secret file, read untrusted: 2 CTS1 blocks, no plaintext");
    xs_write("data/tsys/state", "launched");
}

/* --- scripts/bench tsys ------------------------------------------------------ */

#define BENCH_ROUNDS 7
#define BENCH_GETPID 20000
#define BENCH_RW 5000
#define BENCH_KINDS 3 /* int $0x81 trusted, syscall trusted, syscall plain */
/* Sealed I/O (0004) against plain pread/pwrite on a tmpfs file: 4 KiB and 1 MiB. */
#define BENCH_FILE_4K 500
#define BENCH_FILE_1M 16
#define BENCH_MIB (1 << 20)
#define BENCH_FILE_FIGS 4 /* w4k r4k w1m r1m */

static long plain3(long nr, long a1, long a2, long a3)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3)
                     : "rcx", "r11", "memory");
    return ret;
}

/* One round: ns per getpid, and per 4 KiB write + 4 KiB read on a pipe. */
static void bench_round(int use_int81, int pipe_fd[2], uint64_t out[2])
{
    static char buf[4096];
    long (*call)(long, long, long, long) = use_int81 ? int81 : plain3;
    uint64_t t0;
    int i;

    t0 = now_ns();
    for (i = 0; i < BENCH_GETPID; i++)
        call(SYS_getpid, 0, 0, 0);
    out[0] = (now_ns() - t0) / BENCH_GETPID;
    t0 = now_ns();
    for (i = 0; i < BENCH_RW; i++) {
        if (call(SYS_write, pipe_fd[1], (long)buf, sizeof(buf)) != sizeof(buf) ||
            call(SYS_read, pipe_fd[0], (long)buf, sizeof(buf)) != sizeof(buf)) {
            out[1] = 0;
            return;
        }
    }
    out[1] = (now_ns() - t0) / BENCH_RW;
}

static long plain4(long nr, long a1, long a2, long a3, long a4)
{
    long ret;
    register long r10 __asm__("r10") = a4;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

/*
 * The file for the I/O round: sealed (the keyed worker: an fd sealed with
 * Xen and a window of 16 blocks, so 64 KiB per call) or plain.  -1 if Xen
 * refused (no key: dom0 must authorise with --key-file).
 */
static int bench_file_open(int sealed)
{
    int fd = open(sealed ? "/tmp/bench-sealed" : "/tmp/bench-plain", O_RDWR | O_CREAT | O_TRUNC,
                  0600);
    char *win;

    if (fd < 0 || !sealed)
        return fd;
    win = mmap(NULL, SEAL_WINDOW, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (win == MAP_FAILED)
        return -1;
    memset(win, 0, SEAL_WINDOW);
    if (int81((long)TSYS_OP_WINDOW, (long)win, SEAL_WINDOW, 0) != 0 ||
        int81((long)TSYS_OP_SEAL, fd, SEAL_FILE_ID, 1) != 0)
        return -1;
    return fd;
}

/*
 * One I/O round, ns per call: 4 KiB pwrite, 4 KiB pread (over the first
 * 256 KiB), then per MiB written and read.  A sealed call moves at most
 * 64 KiB, so a sealed MiB takes 16 calls; the plain peer writes it in one.
 */
static void bench_file_round(int sealed, int fd, char *buf, uint64_t out[BENCH_FILE_FIGS])
{
    long (*io)(long, long, long, long, long) = sealed ? int81_4 : plain4;
    long chunk = sealed ? 16 * SEAL_BLOCK : BENCH_MIB;
    uint64_t t0;
    long off;
    int i, f;

    for (f = 0; f < 4; f++) {
        int n = f < 2 ? BENCH_FILE_4K : BENCH_FILE_1M;
        long nr = f % 2 ? SYS_pread64 : SYS_pwrite64;

        t0 = now_ns();
        for (i = 0; i < n; i++) {
            if (f < 2) {
                off = (long)(i % 64) * SEAL_BLOCK;
                if (io(nr, fd, (long)buf + off, SEAL_BLOCK, off) != SEAL_BLOCK)
                    goto fail;
                continue;
            }
            for (off = 0; off < BENCH_MIB; off += chunk)
                if (io(nr, fd, (long)buf + off, chunk, off) != chunk)
                    goto fail;
        }
        out[f] = (now_ns() - t0) / n;
    }
    return;
fail:
    memset(out, 0, BENCH_FILE_FIGS * sizeof(out[0]));
}

/*
 * A worker process: registered with `token` (or not, for NULL), then for
 * each byte on `cmd` (0: int $0x81, 1: syscall, 2: file I/O, sealed for the
 * registered worker) runs a round and writes its figures to `res`.
 */
static int bench_worker(const uint64_t *token, int cmd, int res)
{
    int p[2], fd;
    char kind, *buf;

    if (token && int81_register(token) != 0)
        return 1;
    if (pipe(p) != 0)
        return 1;
    /* Touched: Xen writes a sealed read's plaintext here at the return. */
    buf = malloc(BENCH_MIB);
    if (!buf)
        return 1;
    memset(buf, 0x5a, BENCH_MIB);
    fd = bench_file_open(token != NULL);
    while (read(cmd, &kind, 1) == 1) {
        uint64_t out[BENCH_FILE_FIGS] = { 0 };
        if (kind == 2) {
            if (fd >= 0)
                bench_file_round(token != NULL, fd, buf, out);
        } else
            bench_round(kind == 0, p, out);
        if (write(res, out, sizeof(out)) != sizeof(out))
            return 1;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * The same loops in a registered process through int $0x81 and through a
 * plain `syscall` (concealed too, but not forwarded), and in an unregistered
 * one through `syscall`, round after round in turn so that a busy host
 * weighs on all alike; the medians per call and their ratios.
 */
static void bench(const uint64_t *token)
{
    static const char *const kinds[BENCH_KINDS] = { "trusted-int81", "trusted-syscall",
                                                    "plain" };
    static const char *const file_figs[BENCH_FILE_FIGS] = { "file-w4k", "file-r4k", "file-w1m",
                                                            "file-r1m" };
    uint64_t fig[BENCH_KINDS][2][BENCH_ROUNDS], ffig[2][BENCH_FILE_FIGS][BENCH_ROUNDS];
    int cmd[2][2], res[2][2], status[2], w, r, k, f;
    pid_t pid[2];

    /* A worker that died must show up as a failed check, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    for (w = 0; w < 2; w++) {
        if (pipe(cmd[w]) != 0 || pipe(res[w]) != 0)
            return;
        pid[w] = fork();
        if (pid[w] == 0) {
            close(cmd[w][1]);
            close(res[w][0]);
            if (w == 1) {
                /* Worker 0's ends, inherited: its EOF must not wait for us. */
                close(cmd[0][1]);
                close(res[0][0]);
            }
            _exit(bench_worker(w == 0 ? token : NULL, cmd[w][0], res[w][1]));
        }
        close(cmd[w][0]);
        close(res[w][1]);
    }
    for (r = 0; r < BENCH_ROUNDS; r++) {
        for (k = 0; k < BENCH_KINDS; k++) {
            char kind = k == 0 ? 0 : 1;
            uint64_t out[BENCH_FILE_FIGS] = { 0 };
            w = k < 2 ? 0 : 1;
            if (write(cmd[w][1], &kind, 1) != 1 || read(res[w][0], out, sizeof(out)) != sizeof(out))
                out[0] = out[1] = 0;
            fig[k][0][r] = out[0];
            fig[k][1][r] = out[1];
        }
        /* I/O: the keyed worker sealed (w 0), the plain one plain (w 1). */
        for (w = 0; w < 2; w++) {
            uint64_t out[BENCH_FILE_FIGS] = { 0 };
            if (write(cmd[w][1], "\2", 1) != 1 || read(res[w][0], out, sizeof(out)) != sizeof(out))
                memset(out, 0, sizeof(out));
            for (f = 0; f < BENCH_FILE_FIGS; f++)
                ffig[w][f][r] = out[f];
        }
    }
    for (w = 0; w < 2; w++) {
        close(cmd[w][1]);
        close(res[w][0]);
    }
    for (w = 0; w < 2; w++)
        status[w] = wait_status(pid[w]);
    {
        char first[64];

        snprintf(first, sizeof(first), "%s", describe(status[0]));
        check("bench-workers", WIFEXITED(status[0]) && WEXITSTATUS(status[0]) == 0 &&
                                   WIFEXITED(status[1]) && WEXITSTATUS(status[1]) == 0,
              "registered worker: %s; plain worker: %s", first, describe(status[1]));
    }
    for (k = 0; k < BENCH_KINDS; k++)
        for (f = 0; f < 2; f++)
            qsort(fig[k][f], BENCH_ROUNDS, sizeof(uint64_t), cmp_u64);
    for (w = 0; w < 2; w++)
        for (f = 0; f < BENCH_FILE_FIGS; f++)
            qsort(ffig[w][f], BENCH_ROUNDS, sizeof(uint64_t), cmp_u64);
    {
        int ran = 1;
        for (w = 0; w < 2; w++)
            for (f = 0; f < BENCH_FILE_FIGS; f++)
                ran = ran && ffig[w][f][0] != 0;
        check("bench-file-ran", ran,
              "every sealed and plain I/O round completed (sealed needs a keyed token)");
    }
    for (f = 0; f < BENCH_FILE_FIGS; f++) {
        uint64_t plain = ffig[1][f][BENCH_ROUNDS / 2];
        for (w = 0; w < 2; w++) {
            uint64_t med = ffig[w][f][BENCH_ROUNDS / 2];
            say("circ-tsys: bench %s %s median_ns=%llu min_ns=%llu max_ns=%llu "
                "ratio_to_plain=%.2f",
                file_figs[f], w == 0 ? "sealed" : "plain", (unsigned long long)med,
                (unsigned long long)ffig[w][f][0],
                (unsigned long long)ffig[w][f][BENCH_ROUNDS - 1],
                plain ? (double)med / (double)plain : 0.0);
        }
    }
    for (f = 0; f < 2; f++) {
        uint64_t plain = fig[2][f][BENCH_ROUNDS / 2];
        int ran = plain != 0;
        for (k = 0; k < BENCH_KINDS; k++)
            ran = ran && fig[k][f][0] != 0;
        check(f == 0 ? "bench-getpid-ran" : "bench-rw-ran", ran,
              "every round of every kind completed");
        for (k = 0; k < BENCH_KINDS; k++) {
            uint64_t med = fig[k][f][BENCH_ROUNDS / 2];
            say("circ-tsys: bench %s %s median_ns=%llu min_ns=%llu max_ns=%llu "
                "ratio_to_plain=%.2f",
                f == 0 ? "getpid" : "rw4k", kinds[k], (unsigned long long)med,
                (unsigned long long)fig[k][f][0],
                (unsigned long long)fig[k][f][BENCH_ROUNDS - 1],
                plain ? (double)med / (double)plain : 0.0);
        }
    }
}

/* `circ.tsys=bench` on the guest's command line: scripts/bench tsys. */
static int bench_mode(void)
{
    char line[1024] = "";
    FILE *f = fopen("/proc/cmdline", "r");

    if (f) {
        if (!fgets(line, sizeof(line), f))
            line[0] = 0;
        fclose(f);
    }
    return strstr(line, "circ.tsys=bench") != NULL;
}

int main(int argc, char **argv)
{
    char value[128];
    uint64_t token[4];
    int i, have_token = 0;

    if (argc == 2 && strcmp(argv[1], "selftest") == 0) {
        /* What runs without Xen (any x86-64 Linux): int 0x81 is a #GP there too. */
        untrusted_checks(NULL);
        flood_check(2000);
        twin_checks();
        say("circ-tsys: done checks=%d failed=%d", checks, failed);
        return failed ? 1 : 0;
    }
    if (argc != 2 || strcmp(argv[1], "guest") != 0) {
        fprintf(stderr, "usage: %s guest|selftest\n", argv[0]);
        return 2;
    }
    say("circ-tsys: waiting for data/tsys/token");
    for (i = 0; i < 3000; i++) {
        if (xs_request(XS_READ, "data/tsys/token", value, sizeof(value)) > 0)
            break;
        usleep(200000);
    }
    if (i == 3000) {
        say("circ-tsys: no token in 600 s");
        return 1;
    }
    xs_request(XS_RM, "data/tsys/token", value + 100, sizeof(value) - 100);
    if (strncmp(value, "none", 4) != 0) {
        if (parse_token(value, token) != 0) {
            check("token-parses", 0, "data/tsys/token is not 64 hex digits");
            say("circ-tsys: done checks=%d failed=%d", checks, failed);
            return 1;
        }
        have_token = 1;
    }
    say("circ-tsys: start mode=%s", have_token ? "patched" : "stock");

    if (have_token && bench_mode()) {
        bench(token);
        say("circ-tsys: done checks=%d failed=%d", checks, failed);
        return failed ? 1 : 0;
    }
    untrusted_checks(have_token ? token : NULL);
    flood_check(20000);
    twin_checks();
    if (have_token)
        trusted_checks(token);
    applet_checks(have_token);
    if (have_token) {
        seal_checks();
        package_checks();
    }
    say("circ-tsys: done checks=%d failed=%d", checks, failed);
    return failed ? 1 : 0;
}
