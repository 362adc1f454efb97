/*
 * circ-tsys-sealapp: the trusted application the lab's `tsys` scenario
 * deploys (issue 11). dom0 rewrites it (`circ tsys rewrite`), deploys it
 * under a key k1 bound to its TPM, rolls it out and in; the guest's
 * launcher reads it through Xen's sealed I/O (`--sealed`) and runs it in
 * the registered, keyed process. It then writes a secret to the file named
 * by argv[1], sealed by Xen under the same k1, reads it back and checks it.
 *
 * No C library: its own `syscall`s (which the rewriter turns into
 * int $0x81), so it is a few KiB and needs nothing in the guest.
 * Exit 0 and one line on stdout when the secret came back intact.
 */
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_mmap 9
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_exit_group 231
/* xen-patches/0004. */
#define TSYS_OP_SEAL 0x7473797300000003L
#define TSYS_OP_WINDOW 0x7473797300000004L
#define STORED 4144
#define WINDOW (16 * STORED)
#define FILE_ID 0x5ea1ed0a990000a1L
#define SECRET_LEN 6000

static long sys4(long nr, long a1, long a2, long a3, long a4)
{
    long ret;
    register long r10 __asm__("r10") = a4;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

static long sys6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
    long ret;
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static unsigned long slen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static void say(const char *s)
{
    sys4(SYS_write, 1, (long)s, slen(s), 0);
}

static char secret[SECRET_LEN], back[2 * 4096];

static int app(long argc, char **argv)
{
    char *win;
    long fd, i;

    if (argc != 2) {
        say("usage: circ-tsys-sealapp FILE\n");
        return 2;
    }
    for (i = 0; i < SECRET_LEN; i++)
        secret[i] = "CIRC-DEPLOYED-APP-SECRET|"[i % 25];
    for (i = 0; i < (long)sizeof(back); i++)
        back[i] = 0; /* touched: Xen writes the plaintext here */
    win = (char *)sys6(SYS_mmap, 0, WINDOW, 3 /* RW */, 0x22 /* PRIVATE|ANON */, -1, 0);
    if ((long)win < 0)
        return 3;
    for (i = 0; i < WINDOW; i++)
        win[i] = 0;
    fd = sys4(SYS_open, (long)argv[1], 02 | 0100 | 01000 /* RDWR|CREAT|TRUNC */, 0600, 0);
    if (fd < 0)
        return 4;
    if (sys4(TSYS_OP_WINDOW, (long)win, WINDOW, 0, 0) != 0 ||
        sys4(TSYS_OP_SEAL, fd, FILE_ID, 1, 0) != 0) {
        say("circ-tsys-sealapp: Xen refused the window or the seal (no key?)\n");
        return 5;
    }
    if (sys4(SYS_pwrite64, fd, (long)secret, SECRET_LEN, 0) != SECRET_LEN ||
        sys4(SYS_pread64, fd, (long)back, sizeof(back), 0) != SECRET_LEN) {
        say("circ-tsys-sealapp: the sealed write or read failed\n");
        return 6;
    }
    for (i = 0; i < SECRET_LEN; i++)
        if (back[i] != secret[i]) {
            say("circ-tsys-sealapp: the secret came back DIFFERENT\n");
            return 7;
        }
    sys4(SYS_close, fd, 0, 0, 0);
    say("circ-tsys-sealapp: secret written sealed and read back intact\n");
    return 0;
}

/* Entry: argc at (%rsp), argv after it; a 16-byte aligned call to app(). */
__attribute__((used)) static void start_c(long *sp)
{
    sys4(SYS_exit_group, app(sp[0], (char **)(sp + 1)), 0, 0, 0);
}
__asm__(".globl _start\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call start_c\n"
        "    hlt\n");
