/* The debug-information warm-up thread (see warm.h).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "allocprof/wire.h"
#include "util.h"
#include "warm.h"

struct warm_item {
        char *path;
        uint8_t build_id[AP_MAX_BUILD_ID];
        size_t build_id_len;
};

struct ap_warmer {
        struct ap_symbolizer *sym;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        struct warm_item *queue; /* under lock */
        size_t head, n, cap;
        struct ap_map seen; /* hash of path + build-id: queued once */
        bool stop;
};

static void *warm_main(void *arg)
{
        struct ap_warmer *w = arg;
        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->stop && w->head == w->n)
                        pthread_cond_wait(&w->cond, &w->lock);
                if (w->stop)
                        break;
                struct warm_item it = w->queue[w->head++];
                pthread_mutex_unlock(&w->lock);
                (void)ap_symbolizer_warm(w->sym, it.path, it.build_id, it.build_id_len);
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

void ap_warmer_add(struct ap_warmer *w, const char *path, const uint8_t *build_id,
                   size_t build_id_len)
{
        if (w == NULL || path == NULL || path[0] == '\0' || build_id_len > AP_MAX_BUILD_ID)
                return;
        uint64_t key = ap_hash_bytes(path, strlen(path)) ^ ap_hash_bytes(build_id, build_id_len);
        pthread_mutex_lock(&w->lock);
        if (ap_map_get(&w->seen, key ? key : 1) == NULL &&
            ap_map_put(&w->seen, key ? key : 1, 1) == 0 &&
            AP_GROW(w->queue, w->cap, w->n + 1) == 0) {
                struct warm_item *it = &w->queue[w->n];
                it->path = strdup(path);
                memcpy(it->build_id, build_id, build_id_len);
                it->build_id_len = build_id_len;
                if (it->path != NULL) {
                        w->n++;
                        pthread_cond_signal(&w->cond);
                }
        }
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
        for (size_t i = w->head; i < w->n; i++)
                free(w->queue[i].path);
        free(w->queue);
        ap_map_clear(&w->seen);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        free(w);
}
