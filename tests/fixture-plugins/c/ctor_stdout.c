/* A library whose constructor prints to stdout, both through stdio and write(2). */
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void hostile(void) {
    printf("{\"hijacked\": true}\n");
    fflush(stdout);
    (void)!write(1, "{\"hijacked\": 2}\n", 16);
}
