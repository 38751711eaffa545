/* The collector's background thread (see warm.h): jobs, then debug-information warm-up.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "allocprof/wire.h"
#include "util.h"
#include "warm.h"

/* A module to load, or (noffsets > 0) addresses in it to symbolize. */
struct warm_item {
        char *path;
        uint8_t build_id[AP_MAX_BUILD_ID];
        size_t build_id_len;
        uint64_t *offsets;
        size_t noffsets;
};

struct job {
        void (*fn)(void *arg, struct ap_symbolizer *sym);
        void *arg;
};

struct ap_warmer {
        struct ap_symbolizer *sym;
        struct job *jobs; /* under lock; run before any warm-up */
        size_t jhead, jn, jcap;
        size_t busy;      /* jobs queued or running */
        pthread_cond_t idle;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        struct warm_item *queue; /* under lock */
        size_t head, n, cap;
        struct ap_map seen; /* hash of path + build-id: queued once */
        /* Set under the lock; also read without it between two addresses of a batch,
         * relaxed, as there it only cuts the batch short. */
        _Atomic bool stop;
};

static void *warm_main(void *arg)
{
        struct ap_warmer *w = arg;
        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->stop && w->head == w->n && w->jhead == w->jn)
                        pthread_cond_wait(&w->cond, &w->lock);
                if (w->jhead < w->jn) {
                        /* Jobs first, even when stopping: they write profiles. */
                        struct job j = w->jobs[w->jhead++];
                        if (w->jhead == w->jn)
                                w->jhead = w->jn = 0;
                        pthread_mutex_unlock(&w->lock);
                        j.fn(j.arg, w->sym);
                        pthread_mutex_lock(&w->lock);
                        if (--w->busy == 0)
                                pthread_cond_broadcast(&w->idle);
                        continue;
                }
                if (w->stop)
                        break;
                struct warm_item it = w->queue[w->head++];
                pthread_mutex_unlock(&w->lock);
                if (it.noffsets == 0)
                        (void)ap_symbolizer_warm(w->sym, it.path, it.build_id, it.build_id_len);
                /* The results stay in the symbolizer's cache, where finalizing finds them
                 * (return addresses: the call is the byte before). */
                for (size_t i = 0;
                     i < it.noffsets && !atomic_load_explicit(&w->stop, memory_order_relaxed);
                     i++) {
                        struct ap_sym_frame *f = NULL;
                        uint64_t off = it.offsets[i];
                        int n = ap_symbolizer_lookup(w->sym, it.path, it.build_id, it.build_id_len,
                                                     off ? off - 1 : 0, &f);
                        if (n > 0)
                                ap_sym_frames_free(f, (size_t)n);
                }
                free(it.offsets);
                free(it.path);
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

int ap_warmer_start(struct ap_symbolizer *sym, struct ap_warmer **ret)
{
        struct ap_warmer *w = calloc(1, sizeof(*w));
        if (w == NULL)
                return -ENOMEM;
        w->sym = sym;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        pthread_cond_init(&w->idle, NULL);
        /* Signals belong to the main thread's signalfd: block them all here. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        int r = -pthread_create(&w->thread, NULL, warm_main, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0) {
                free(w);
                return r;
        }
        *ret = w;
        return 0;
}

/* Appends an item, the lock held; `offsets` (n of them, or NULL) become the queue's.
 * False if out of memory. */
static bool push_item(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                      size_t build_id_len, uint64_t *offsets, size_t n)
{
        char *copy = strdup(path);
        if (copy == NULL || AP_GROW(w->queue, w->cap, w->n + 1) < 0) {
                free(copy);
                return false;
        }
        struct warm_item *it = &w->queue[w->n++];
        *it = (struct warm_item){
                .path = copy, .build_id_len = build_id_len, .offsets = offsets, .noffsets = n};
        memcpy(it->build_id, build_id, build_id_len);
        pthread_cond_signal(&w->cond);
        return true;
}

void ap_warmer_add(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                   size_t build_id_len)
{
        if (w == NULL || path == NULL || path[0] == '\0' || build_id_len > AP_MAX_BUILD_ID)
                return;
        uint64_t key = ap_hash_bytes(path, strlen(path)) ^ ap_hash_bytes(build_id, build_id_len);
        pthread_mutex_lock(&w->lock);
        if (ap_map_get(&w->seen, key ? key : 1) == NULL &&
            ap_map_put(&w->seen, key ? key : 1, 1) == 0)
                (void)push_item(w, path, build_id, build_id_len, NULL, 0);
        pthread_mutex_unlock(&w->lock);
}

void ap_warmer_add_addrs(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                         size_t build_id_len, const uint64_t *offsets, size_t n)
{
        if (w == NULL || path == NULL || path[0] == '\0' || build_id_len > AP_MAX_BUILD_ID ||
            n == 0)
                return;
        uint64_t *offs = malloc(n * sizeof(*offs));
        if (offs == NULL)
                return;
        memcpy(offs, offsets, n * sizeof(*offs));
        pthread_mutex_lock(&w->lock);
        if (!w->stop && push_item(w, path, build_id, build_id_len, offs, n))
                offs = NULL;
        pthread_mutex_unlock(&w->lock);
        free(offs);
}

int ap_warmer_run(struct ap_warmer *w, void (*fn)(void *arg, struct ap_symbolizer *sym),
                  void *arg)
{
        int r = 0;
        pthread_mutex_lock(&w->lock);
        if (w->stop)
                r = -ESHUTDOWN;
        else if (AP_GROW(w->jobs, w->jcap, w->jn + 1) < 0)
                r = -ENOMEM;
        else {
                w->jobs[w->jn++] = (struct job){.fn = fn, .arg = arg};
                w->busy++;
                pthread_cond_signal(&w->cond);
        }
        pthread_mutex_unlock(&w->lock);
        return r;
}

void ap_warmer_wait(struct ap_warmer *w)
{
        if (w == NULL)
                return;
        pthread_mutex_lock(&w->lock);
        while (w->busy > 0)
                pthread_cond_wait(&w->idle, &w->lock);
        pthread_mutex_unlock(&w->lock);
}

void ap_warmer_stop(struct ap_warmer *w)
{
        if (w == NULL)
                return;
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        for (size_t i = w->head; i < w->n; i++) {
                free(w->queue[i].path);
                free(w->queue[i].offsets);
        }
        free(w->queue);
        free(w->jobs);
        ap_map_clear(&w->seen);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        pthread_cond_destroy(&w->idle);
        free(w);
}
