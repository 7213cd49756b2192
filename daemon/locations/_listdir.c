/* daemon.locations._listdir: one directory's listing with each child's lstat, in C.
 *
 * The indexer lists every directory of a location and stats every child; in Python
 * that costs about 3 us an entry, two thirds of it building os.stat_result objects
 * the indexer reads five fields of. Here the listing and the fstatat() calls run
 * without the GIL (the database thread inserts the previous batch meanwhile) and only
 * the fields the index keeps become Python objects.
 *
 * listdir(fd) -> (children, subdirs, symlinks, bad_names, failed)
 *   fd        an open directory (the caller opened it O_NOFOLLOW and closes it; it is
 *             dup()ed here, so the caller's offset and descriptor are left alone)
 *   children  [(name, kind, size, mtime_ns, dev, inode, extension)] in readdir order,
 *             kind one of "file", "dir", "symlink", "other"; a dir's size is 0 and
 *             only a file has an extension (after its last dot, not a leading one,
 *             lower-cased as str.lower() does)
 *   subdirs   names of the children that are directories, in the same order
 *   symlinks  names of the children that are symlinks
 *   bad_names raw bytes of names that are not valid UTF-8 (left out of children)
 *   failed    children that could not be stat()ed for a reason other than having
 *             vanished (ENOENT: left out silently)
 * An error reading the directory itself raises OSError.
 *
 * This is what daemon/locations/indexer.py's list_directory did with os.scandir and
 * DirEntry.stat(follow_symlinks=False); tests/test_listdir.py checks both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One child as read without the GIL. Its name lives in the arena at name_off. */
typedef struct {
    size_t name_off;
    size_t name_len;
    int err; /* errno of fstatat, 0 if st is valid */
    mode_t mode;
    int64_t size;
    int64_t mtime_sec;
    long mtime_nsec;
    unsigned long long dev;
    unsigned long long ino;
} Rec;

typedef struct {
    Rec *recs;
    size_t n, cap;
    char *arena;
    size_t used, arena_cap;
} Listing;

static void listing_free(Listing *l) {
    free(l->recs);
    free(l->arena);
}

/* Grows an array to hold one more item; 0 on success, -1 on ENOMEM. */
static int grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) {
        if (cap2 > SIZE_MAX / 2 / item)
            return -1;
        cap2 *= 2;
    }
    void *p = realloc(*buf, cap2 * item);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

/* Reads the directory and stats each child; runs without the GIL (touches no Python
 * object). Returns 0, or an errno (the directory could not be read; ENOMEM). */
static int read_listing(int fd, Listing *l) {
    int dfd = dup(fd);
    if (dfd < 0)
        return errno;
    DIR *dir = fdopendir(dfd);
    if (dir == NULL) {
        int e = errno;
        close(dfd);
        return e;
    }
    rewinddir(dir); /* the dup shares the caller's offset: start from the first entry */
    int result = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (de == NULL) {
            result = errno; /* 0 at the end of the listing */
            break;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        size_t len = strlen(name); /* at most NAME_MAX */
        if (grow((void **)&l->recs, &l->cap, l->n + 1, sizeof(Rec)) < 0 ||
            grow((void **)&l->arena, &l->arena_cap, l->used + len, 1) < 0) {
            result = ENOMEM;
            break;
        }
        Rec *r = &l->recs[l->n++];
        memset(r, 0, sizeof *r);
        r->name_off = l->used;
        r->name_len = len;
        memcpy(l->arena + l->used, name, len);
        l->used += len;
        struct stat st;
        if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            r->err = errno;
            continue;
        }
        r->mode = st.st_mode;
        r->size = (int64_t)st.st_size;
        r->mtime_sec = (int64_t)st.st_mtim.tv_sec;
        r->mtime_nsec = st.st_mtim.tv_nsec;
        r->dev = (unsigned long long)st.st_dev;
        r->ino = (unsigned long long)st.st_ino;
    }
    closedir(dir); /* closes dfd */
    return result;
}

static PyObject *S_FILE, *S_DIR, *S_SYMLINK, *S_OTHER, *S_EMPTY, *BILLION;

/* sec * 10**9 + nsec as Python computes st_mtime_ns (exact beyond int64 too). */
static PyObject *mtime_ns(int64_t sec, long nsec) {
    if (sec > -9000000000LL && sec < 9000000000LL)
        return PyLong_FromLongLong((long long)sec * 1000000000LL + nsec);
    PyObject *s = PyLong_FromLongLong((long long)sec);
    if (s == NULL)
        return NULL;
    PyObject *m = PyNumber_Multiply(s, BILLION);
    Py_DECREF(s);
    if (m == NULL)
        return NULL;
    PyObject *n = PyLong_FromLong(nsec);
    if (n == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *out = PyNumber_Add(m, n);
    Py_DECREF(m);
    Py_DECREF(n);
    return out;
}

/* name[dot + 1:].lower() for the last dot, if it is not the first character; else "". */
static PyObject *extension(PyObject *name) {
    Py_ssize_t len = PyUnicode_GET_LENGTH(name);
    Py_ssize_t dot = PyUnicode_FindChar(name, '.', 0, len, -1);
    if (dot == -2)
        return NULL;
    if (dot <= 0) {
        Py_INCREF(S_EMPTY);
        return S_EMPTY;
    }
    PyObject *ext = PyUnicode_Substring(name, dot + 1, len);
    if (ext == NULL)
        return NULL;
    int lower = 1;
    if (PyUnicode_IS_ASCII(ext)) {
        const Py_UCS1 *c = PyUnicode_1BYTE_DATA(ext);
        for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(ext); i++)
            if (c[i] >= 'A' && c[i] <= 'Z') {
                lower = 0;
                break;
            }
    } else {
        lower = 0;
    }
    if (lower)
        return ext;
    PyObject *out = PyObject_CallMethod(ext, "lower", NULL);
    Py_DECREF(ext);
    return out;
}

/* Appends a new reference and drops it; -1 on failure (obj may be NULL). */
static int append_new(PyObject *list, PyObject *obj) {
    if (obj == NULL)
        return -1;
    int rc = PyList_Append(list, obj);
    Py_DECREF(obj);
    return rc;
}

static PyObject *child_tuple(PyObject *name, const Rec *r, PyObject *kind, int64_t size,
                             int with_ext) {
    PyObject *ext = with_ext ? extension(name) : (Py_INCREF(S_EMPTY), S_EMPTY);
    PyObject *sz = PyLong_FromLongLong((long long)size);
    PyObject *mt = mtime_ns(r->mtime_sec, r->mtime_nsec);
    PyObject *dev = PyLong_FromUnsignedLongLong(r->dev);
    PyObject *ino = PyLong_FromUnsignedLongLong(r->ino);
    PyObject *t = NULL;
    if (ext && sz && mt && dev && ino) {
        t = PyTuple_New(7);
        if (t != NULL) {
            Py_INCREF(name);
            Py_INCREF(kind);
            PyTuple_SET_ITEM(t, 0, name);
            PyTuple_SET_ITEM(t, 1, kind);
            PyTuple_SET_ITEM(t, 2, sz);
            PyTuple_SET_ITEM(t, 3, mt);
            PyTuple_SET_ITEM(t, 4, dev);
            PyTuple_SET_ITEM(t, 5, ino);
            PyTuple_SET_ITEM(t, 6, ext);
            return t; /* the tuple owns them now */
        }
    }
    Py_XDECREF(ext);
    Py_XDECREF(sz);
    Py_XDECREF(mt);
    Py_XDECREF(dev);
    Py_XDECREF(ino);
    return NULL;
}

static PyObject *listdir(PyObject *self, PyObject *arg) {
    (void)self;
    long fdl = PyLong_AsLong(arg);
    if (fdl == -1 && PyErr_Occurred())
        return NULL;
    if (fdl < 0 || fdl > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "listdir: not a file descriptor");
        return NULL;
    }
    int fd = (int)fdl;
    Listing l = {0};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = read_listing(fd, &l);
    Py_END_ALLOW_THREADS
    if (err != 0) {
        listing_free(&l);
        errno = err;
        return err == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *children = PyList_New(0), *subdirs = PyList_New(0), *links = PyList_New(0),
             *bad = PyList_New(0);
    long failed = 0;
    if (!children || !subdirs || !links || !bad)
        goto fail;
    for (size_t i = 0; i < l.n; i++) {
        const Rec *r = &l.recs[i];
        const char *raw = l.arena + r->name_off;
        PyObject *name = PyUnicode_DecodeUTF8(raw, (Py_ssize_t)r->name_len, "strict");
        if (name == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto fail;
            PyErr_Clear();
            if (append_new(bad, PyBytes_FromStringAndSize(raw, (Py_ssize_t)r->name_len)) < 0)
                goto fail;
            continue;
        }
        int rc = 0;
        if (r->err == ENOENT) {
            /* vanished between readdir and fstatat */
        } else if (r->err != 0) {
            failed++;
        } else if (S_ISREG(r->mode)) {
            rc = append_new(children, child_tuple(name, r, S_FILE, r->size, 1));
        } else if (S_ISDIR(r->mode)) {
            rc = append_new(children, child_tuple(name, r, S_DIR, 0, 0));
            if (rc == 0)
                rc = PyList_Append(subdirs, name);
        } else if (S_ISLNK(r->mode)) {
            rc = append_new(children, child_tuple(name, r, S_SYMLINK, r->size, 0));
            if (rc == 0)
                rc = PyList_Append(links, name);
        } else {
            rc = append_new(children, child_tuple(name, r, S_OTHER, r->size, 0));
        }
        Py_DECREF(name);
        if (rc < 0)
            goto fail;
    }
    listing_free(&l);
    return Py_BuildValue("(NNNNl)", children, subdirs, links, bad, failed);
fail:
    listing_free(&l);
    Py_XDECREF(children);
    Py_XDECREF(subdirs);
    Py_XDECREF(links);
    Py_XDECREF(bad);
    return NULL;
}

static PyMethodDef methods[] = {
    {"listdir", listdir, METH_O,
     "listdir(fd) -> (children, subdirs, symlinks, bad_names, failed): one directory's "
     "children with their lstat, read without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daemon.locations._listdir",
    "One directory's listing with each child's lstat (see listdir).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__listdir(void) {
    S_FILE = PyUnicode_InternFromString("file");
    S_DIR = PyUnicode_InternFromString("dir");
    S_SYMLINK = PyUnicode_InternFromString("symlink");
    S_OTHER = PyUnicode_InternFromString("other");
    S_EMPTY = PyUnicode_InternFromString("");
    BILLION = PyLong_FromLong(1000000000L);
    if (!S_FILE || !S_DIR || !S_SYMLINK || !S_OTHER || !S_EMPTY || !BILLION)
        return NULL;
    return PyModule_Create(&module);
}
