/* A library that exports abi_stable's root-module symbol, pointing at garbage instead
   of an abi_stable header. */
static const unsigned char garbage[256] = {
    0xde, 0xad, 0xbe, 0xef, 'n', 'o', 't', ' ', 'a', 'b', 'i', '_', 's', 't', 'a', 'b', 'l', 'e',
};
__attribute__((visibility("default"))) const void *_1as_0lib_1header_0root_bmodule_bloader = garbage;
