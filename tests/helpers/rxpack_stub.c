/* The unpacking stub of tests/helpers/rxpack.py: a generic self-decrypting loader.
 *
 * Its own file ends with N encrypted shared objects and a trailer (see rxpack.py). Each object is
 * decrypted into a memfd and dlopen()ed from /proc/self/fd/N, in order, RTLD_GLOBAL (so a later one
 * finds an earlier one by its soname); then run() of the last one is called. Nothing of what it
 * loads is readable in the file on disk.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct trailer { uint64_t magic; uint32_t count; uint32_t key; };
struct entry { uint64_t offset; uint64_t size; };

static uint32_t next(uint32_t *s) {
    *s ^= *s << 13; *s ^= *s >> 17; *s ^= *s << 5;
    return *s;
}

int main(void) {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 10;
    unsigned char *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (img == MAP_FAILED)
        return 11;
    struct trailer *t = (struct trailer *)(img + st.st_size - sizeof *t);
    if (t->magic != 0x31b7c0de5eedf00dULL)
        return 12;
    struct entry *e = (struct entry *)((unsigned char *)t - t->count * sizeof *e);
    void *h = NULL;
    for (uint32_t i = 0; i < t->count; i++) {
        int m = memfd_create("", MFD_CLOEXEC);
        unsigned char *buf = malloc(e[i].size);
        if (m < 0 || buf == NULL)
            return 13;
        uint32_t s = t->key ^ (0x9e3779b9u * (i + 1));
        for (uint64_t j = 0; j < e[i].size; j++)
            buf[j] = img[e[i].offset + j] ^ (unsigned char)next(&s);
        for (uint64_t done = 0; done < e[i].size;) {
            ssize_t n = write(m, buf + done, e[i].size - done);
            if (n <= 0)
                return 14;
            done += (uint64_t)n;
        }
        free(buf);
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", m);
        h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        if (h == NULL)
            return 15;
    }
    munmap(img, st.st_size);
    close(fd);
    int (*run)(void) = (int (*)(void))dlsym(h, "run");
    return run ? run() : 16;
}
