/* A fake miner that really computes RandomX hashes (tests/test_throttled_miner.py).
 *
 * Built as a shared object against the reference library (librandomx-dev) and packed with it by
 * tests/helpers/rxpack.py: the stub decrypts both into memfds and dlopen()s them, then calls
 * run(). Light mode: the real 256 MiB cache (huge pages when the kernel has them reserved, plain
 * memory otherwise), the JIT when the CPU allows it; the VM changes the rounding mode (MXCSR) as
 * every RandomX program does. One TCP connection to 127.0.0.1:443 (its own loopback in a
 * --network none container) gets a few bytes per hash batch. No text of its own: no pool URL,
 * no option names, no messages.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <randomx.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int pool_connect(void) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(443);
    a.sin_addr.s_addr = htonl(0x7f000001);
    for (int i = 0; i < 50; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        if (fd >= 0)
            close(fd);
        usleep(100000);
    }
    return -1;
}

int run(void) {
    unsigned char key[32], input[76], out[RANDOMX_HASH_SIZE];
    for (unsigned i = 0; i < sizeof key; i++)
        key[i] = (unsigned char)(i * 37 + 11);
    memset(input, 0x5a, sizeof input);
    randomx_flags flags = randomx_get_flags();
    randomx_cache *cache = randomx_alloc_cache(flags | RANDOMX_FLAG_LARGE_PAGES);
    if (cache == NULL)
        cache = randomx_alloc_cache(flags);
    if (cache == NULL && (flags & RANDOMX_FLAG_JIT))
        cache = randomx_alloc_cache(flags &= ~RANDOMX_FLAG_JIT);
    if (cache == NULL)
        return 2;
    randomx_init_cache(cache, key, sizeof key);
    randomx_vm *vm = randomx_create_vm(flags, cache, NULL);
    if (vm == NULL)
        return 3;
    int pool = pool_connect();
    for (uint32_t nonce = 0;; nonce++) {
        memcpy(input + 39, &nonce, sizeof nonce);
        randomx_calculate_hash(vm, input, sizeof input, out);
        if ((nonce & 15) == 0 && pool >= 0 && send(pool, out, 8, MSG_NOSIGNAL) < 0) {
            close(pool);
            pool = pool_connect();
        }
    }
}
