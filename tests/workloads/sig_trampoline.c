/* A signal handler that allocates, entered through a signal trampoline of the program's
 * own (x86-64): the frame between the handler and the interrupted code is a return
 * address that is the first instruction of wl_sigreturn, pushed by the kernel, not by a
 * call.  The byte before it (which a profiler looks up for an ordinary return address) is
 * a nop that only the trampoline's unwind information covers, as glibc lays out its
 * __restore_rt: the frame must still be named wl_sigreturn, from the symbol table.
 *
 *   trigger() sends itself SIGUSR1 with a raw kill system call; the signal is delivered as
 *   the call returns, so on_usr1 interrupts trigger.  on_usr1 calls tramp_alloc, which
 *   allocates 123 bytes, kept to the end: 1 allocation, 123 bytes, leaked.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

void *volatile tramp_kept;
void tramp_alloc(void);
void trigger(void);
void wl_sigreturn(void);

/* The kernel's struct sigaction for rt_sigaction(2) on x86-64 (glibc's sigaction puts its
 * own trampoline in sa_restorer whatever the caller asks). */
struct kernel_sigaction {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        unsigned long mask;
};
#define KERNEL_SA_RESTORER 0x04000000

/* `mov $15, %rax; syscall` (rt_sigreturn) as raw bytes, the encoding unwinders check for,
 * with CFI marking it a signal frame; its FDE starts at the nop before it, since an
 * unwinder looks up the return address minus one, as glibc's does.  Before it, a symbol
 * without a size (wl_before_sigreturn, as hand-written assembly has; never called), the
 * nearest symbol before the nop: only the unwind information tells that the nop is the
 * trampoline's. */
__asm__(".text\n"
        ".p2align 4\n"
        ".globl wl_before_sigreturn\n"
        "wl_before_sigreturn:\n"
        "ret\n"
        ".cfi_startproc simple\n"
        ".cfi_signal_frame\n"
        ".cfi_def_cfa %rsp, 8\n"
        "nop\n"
        ".globl wl_sigreturn\n"
        ".type wl_sigreturn, @function\n"
        "wl_sigreturn:\n"
        ".byte 0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05\n"
        ".size wl_sigreturn, . - wl_sigreturn\n"
        ".cfi_endproc\n");

__attribute__((noinline)) void tramp_alloc(void)
{
        tramp_kept = malloc(123);            /* LINE:alloc */
        __asm__ volatile("" : : : "memory"); /* keep this frame */
}

static void on_usr1(int sig)
{
        (void)sig;
        tramp_alloc(); /* LINE:handler */
        __asm__ volatile("" : : : "memory");
}

__attribute__((noinline)) void trigger(void)
{
        long ret, pid = getpid();
        __asm__ volatile("syscall" /* LINE:syscall */
                         : "=a"(ret)
                         : "0"((long)SYS_kill), "D"(pid), "S"((long)SIGUSR1)
                         : "rcx", "r11", "memory");
        __asm__ volatile("" : : : "memory");
}

int main(void)
{
        struct kernel_sigaction ka = {
                .handler = on_usr1, .flags = KERNEL_SA_RESTORER, .restorer = wl_sigreturn};
        if (syscall(SYS_rt_sigaction, SIGUSR1, &ka, NULL, sizeof(ka.mask)) != 0)
                return 2;
        trigger(); /* LINE:trigger */
        return tramp_kept != NULL ? 0 : 1;
}
