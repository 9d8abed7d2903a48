/* A library whose constructor never returns. It sleeps rather than spins so that the
   test machine's cores stay free while the host's scan timeout runs out. */
#include <unistd.h>
__attribute__((constructor)) static void hostile(void) {
    for (;;) sleep(1);
}
