/* Threads whose first allocations happen inside pthread_getattr_np, which holds the
 * thread's own lock while it allocates (as Rust's std does in every thread it starts,
 * for its stack guard).  The agent learns a thread's stack bounds at its first record:
 * it must not ask pthread_getattr_np then, or the thread waits for itself.
 *
 * Each of 8 threads, one after the other: pthread_getattr_np on itself (whatever the C
 * library allocates in it is not counted here), then one malloc of 100 bytes, freed.
 * Prints "ok" and exits 0 when every thread saw its own stack in the attributes.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

void *volatile getattr_sink;

static void *thread_main(void *arg)
{
        pthread_attr_t a;
        if (pthread_getattr_np(pthread_self(), &a) != 0)
                return NULL;
        void *lo;
        size_t size;
        int r = pthread_attr_getstack(&a, &lo, &size);
        pthread_attr_destroy(&a);
        /* The stack it reports holds this frame. */
        if (r != 0 || (char *)&a < (char *)lo || (char *)&a >= (char *)lo + size)
                return NULL;
        getattr_sink = malloc(100);
        free(getattr_sink);
        return arg;
}

int main(void)
{
        int ok = 1;
        for (int i = 0; i < 8; i++) {
                pthread_t t;
                void *ret = NULL;
                if (pthread_create(&t, NULL, thread_main, &ok) != 0 || pthread_join(t, &ret) != 0 ||
                    ret != &ok)
                        ok = 0;
        }
        puts(ok ? "ok" : "pthread_getattr_np failed");
        return ok ? 0 : 1;
}
