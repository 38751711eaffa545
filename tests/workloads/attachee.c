/* A program driven line by line on stdin, for the attach/detach, live-report and daemon
 * checks (tests/integration/test-service.sh).  It prints "ready" once started, then
 * answers every command with "ok" (flushed) when it is done:
 *
 *   before N SIZE     N blocks of SIZE bytes from alloc_before(), kept
 *   alloc N SIZE      N blocks of SIZE bytes from alloc_attached(), kept
 *   free-before       frees every block "before" made
 *   free-alloc        frees every block "alloc" made
 *   threads K N SIZE  K threads, each allocating N blocks of SIZE from thread_blocks()
 *                     and freeing them all; joined before "ok"
 *   fork N SIZE       a child that allocates N blocks of SIZE from child_blocks(), keeps
 *                     them and exits 0; waited for before "ok"
 *   exit CODE         exits with CODE (blocks still held leak)
 *
 * End of input exits with status 0.  An unknown or malformed command answers "error"
 * and changes nothing.  Besides the commands' own blocks it allocates only stdio's
 * buffers (at start) and the arrays that hold the kept pointers (from grow_list(),
 * realloc'ed by doubling from 64 entries, freed with their blocks), and a pointer array
 * per thread of "threads" (freed).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

struct list {
        void **blocks;
        size_t n, cap;
};

static struct list before_list, alloc_list;

/* Makes room for `more` further pointers. */
WL_FRAME static int grow_list(struct list *l, size_t more)
{
        if (l->n + more <= l->cap)
                return 0;
        size_t cap = l->cap ? l->cap : 64;
        while (cap < l->n + more)
                cap *= 2;
        void **b = realloc(l->blocks, cap * sizeof(*b));
        if (b == NULL)
                return -1;
        l->blocks = b;
        l->cap = cap;
        return 0;
}

/* Blocks made while the agent is (meant to be) dormant. */
WL_FRAME static int alloc_before(size_t n, size_t size)
{
        if (grow_list(&before_list, n) < 0)
                return -1;
        for (size_t i = 0; i < n; i++) {
                void *p = malloc(size);
                if (p == NULL)
                        return -1;
                memset(p, 1, size < 64 ? size : 64);
                before_list.blocks[before_list.n++] = p;
        }
        return 0;
}

/* Blocks made while attached: the site a profile of the attached window shows. */
WL_FRAME static int alloc_attached(size_t n, size_t size)
{
        if (grow_list(&alloc_list, n) < 0)
                return -1;
        for (size_t i = 0; i < n; i++) {
                void *p = malloc(size);
                if (p == NULL)
                        return -1;
                memset(p, 2, size < 64 ? size : 64);
                alloc_list.blocks[alloc_list.n++] = p;
        }
        return 0;
}

/* Frees the blocks and the array that held them: nothing of the list stays live. */
WL_FRAME static void free_list(struct list *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->blocks[i]);
        free(l->blocks);
        *l = (struct list){0};
}

struct job {
        pthread_t thread;
        size_t n, size;
};

/* One thread's blocks: all allocated, then all freed. */
WL_FRAME static void thread_blocks(size_t n, size_t size)
{
        void **held = malloc(n * sizeof(*held));
        if (held == NULL)
                return;
        for (size_t i = 0; i < n; i++) {
                held[i] = malloc(size);
                wl_keep(held[i]);
        }
        for (size_t i = 0; i < n; i++)
                free(held[i]);
        free(held);
}

static void *thread_main(void *arg)
{
        struct job *j = arg;
        thread_blocks(j->n, j->size);
        return NULL;
}

static int run_threads(size_t k, size_t n, size_t size)
{
        struct job jobs[64];
        if (k > 64)
                return -1;
        size_t started = 0;
        for (; started < k; started++) {
                jobs[started] = (struct job){.n = n, .size = size};
                if (pthread_create(&jobs[started].thread, NULL, thread_main, &jobs[started]) != 0)
                        break;
        }
        for (size_t i = 0; i < started; i++)
                pthread_join(jobs[i].thread, NULL);
        return started == k ? 0 : -1;
}

WL_FRAME static void child_blocks(size_t n, size_t size)
{
        for (size_t i = 0; i < n; i++)
                wl_keep(malloc(size));
}

static int run_child(size_t n, size_t size)
{
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                child_blocks(n, size);
                _exit(0);
        }
        int st;
        return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0
                                                                                               : -1;
}

int main(void)
{
        char line[256];
        printf("ready\n");
        fflush(stdout);
        while (fgets(line, sizeof(line), stdin) != NULL) {
                unsigned long a, b, c;
                int code, r = -1;
                if (sscanf(line, "before %lu %lu", &a, &b) == 2)
                        r = alloc_before(a, b);
                else if (sscanf(line, "alloc %lu %lu", &a, &b) == 2)
                        r = alloc_attached(a, b);
                else if (strcmp(line, "free-before\n") == 0)
                        free_list(&before_list), r = 0;
                else if (strcmp(line, "free-alloc\n") == 0)
                        free_list(&alloc_list), r = 0;
                else if (sscanf(line, "threads %lu %lu %lu", &a, &b, &c) == 3)
                        r = run_threads(a, b, c);
                else if (sscanf(line, "fork %lu %lu", &a, &b) == 2)
                        r = run_child(a, b);
                else if (sscanf(line, "exit %d", &code) == 1)
                        exit(code);
                printf(r == 0 ? "ok\n" : "error\n");
                fflush(stdout);
        }
        return 0;
}
