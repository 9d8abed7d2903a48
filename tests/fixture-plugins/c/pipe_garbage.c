/* A library whose constructor writes garbage to file descriptors 3 to 9, where a host
   might keep a private pipe. */
#include <unistd.h>
__attribute__((constructor)) static void hostile(void) {
    for (int fd = 3; fd < 10; fd++) (void)!write(fd, "{\"msg\":\"garbage\"\n", 17);
}
