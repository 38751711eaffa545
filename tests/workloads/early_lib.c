/* A library that allocates before main (its constructor, which may run before the
 * agent's own) and after main (its destructor, after atexit handlers).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <stdlib.h>

void *volatile early_sink;
int early_touch(void);

__attribute__((constructor)) static void early_ctor(void)
{
        early_sink = malloc(123);
}

__attribute__((destructor)) static void late_dtor(void)
{
        early_sink = malloc(789);
}

int early_touch(void)
{
        return early_sink != NULL;
}
