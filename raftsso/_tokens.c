/*
 * raftsso._tokens: the client token hot path (raftsso.envelope) without Python's extra copies.
 *
 * AES-GCM itself stays in `cryptography`: this module only lays a token out around it, calling
 * AESGCM.encrypt_into / decrypt_into on windows into the result, so that
 *
 *   seal:  0x01 | version | nonce | ciphertext+tag   is allocated once and written in place
 *          (Python: two concatenations, the second a copy of the whole ciphertext);
 *   open:  the nonce and ciphertext are read where they lie in the token
 *          (Python: two slices, the second a copy of the whole ciphertext).
 *
 * It also holds the process's token nonce counter (a 96-bit integer, counted up from a random
 * start that raftsso.envelope sets at import and again in every forked child): one C
 * increment instead of a Python iterator.  The GIL serialises every call (the module does not
 * declare free-threading support, so a free-threaded CPython keeps the GIL on for it), and no
 * function here releases it between reading the counter and writing it back.
 *
 * raftsso.envelope has a pure-Python fallback that produces the same bytes; both are tested.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define HEADER 5
#define NONCE 12
#define TAG 16
#define OVERHEAD (HEADER + NONCE + TAG)
#define TOKEN_FORMAT 1

/* -- the nonce counter: hi (32 bits) : lo (64 bits), big endian on the wire -- */

static uint32_t counter_hi;
static uint64_t counter_lo;
/* 0: not seeded (or forked and not yet reseeded), 1: counting, 2: 2^96 reached */
static int counter_set;

/* pthread_atfork child handler: a child that forked without running raftsso.envelope's
 * os.register_at_fork hook (a fork() from C code that then runs Python) would continue the
 * parent's run and repeat its nonces; with the counter forgotten it fails closed until
 * reseeded (os.fork runs this first, then the Python hook reseeds). */
static void
forget_counter_in_child(void)
{
    counter_set = 0;
}

static int
take_nonce(unsigned char *out)
{
    if (counter_set != 1) {
        if (counter_set == 2)  /* as the Python path's int.to_bytes at 2^96 */
            PyErr_SetString(PyExc_OverflowError, "raftsso._tokens: nonce counter exhausted");
        else
            PyErr_SetString(PyExc_RuntimeError, "raftsso._tokens: nonce counter not seeded");
        return -1;
    }
    uint32_t hi = counter_hi;
    uint64_t lo = counter_lo;
    /* the start leaves 2^64 numbers before 2^96; a reseed near the top must still never
     * wrap to 0 and repeat a nonce: stop instead */
    if (++counter_lo == 0 && ++counter_hi == 0) counter_set = 2;
    for (int i = 3; i >= 0; i--) { out[i] = (unsigned char)hi; hi >>= 8; }
    for (int i = 11; i >= 4; i--) { out[i] = (unsigned char)lo; lo >>= 8; }
    return 0;
}

static PyObject *
reseed(PyObject *module, PyObject *start)
{
    if (!PyBytes_Check(start) || PyBytes_GET_SIZE(start) != NONCE) {
        PyErr_SetString(PyExc_ValueError, "a nonce start is 12 bytes");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(start);
    uint32_t hi = 0;
    uint64_t lo = 0;
    for (int i = 0; i < 4; i++) hi = (hi << 8) | s[i];
    for (int i = 4; i < 12; i++) lo = (lo << 8) | s[i];
    counter_hi = hi;
    counter_lo = lo;
    counter_set = 1;
    Py_RETURN_NONE;
}

static PyObject *
next_nonce(PyObject *module, PyObject *unused)
{
    unsigned char n[NONCE];
    if (take_nonce(n) < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)n, NONCE);
}

/* -- Window: a buffer over memory this module owns for the length of one call -- */

typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t len;
    int readonly;
    Py_ssize_t exports;  /* buffers handed out and not yet released */
    PyObject *owner;     /* the bytes object buf points into: alive while any view is */
} Window;

static int
window_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    Window *w = (Window *)self;
    if (w->buf == NULL) {
        PyErr_SetString(PyExc_BufferError, "this window is closed");
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, w->buf, w->len, w->readonly, flags) < 0) return -1;
    w->exports++;
    return 0;
}

static void
window_releasebuffer(PyObject *self, Py_buffer *view)
{
    ((Window *)self)->exports--;
}

static void
window_dealloc(PyObject *self)
{
    Py_XDECREF(((Window *)self)->owner);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs window_as_buffer = {window_getbuffer, window_releasebuffer};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "raftsso._tokens.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_dealloc = window_dealloc,
    .tp_as_buffer = &window_as_buffer,
    .tp_doc = "A buffer over memory of one call of raftsso._tokens.",
};

/* A few windows are reused: one is free when this module holds its only reference (a callee
 * that kept it, or another thread inside a call, makes the next call allocate a new one). */
#define WINDOWS 3
static Window *spare[WINDOWS];

static Window *
open_window(int slot, PyObject *owner, char *buf, Py_ssize_t len, int readonly)
{
    Window *w = spare[slot];
    if (w == NULL || Py_REFCNT(w) != 1) {
        w = PyObject_New(Window, &WindowType);
        if (w == NULL) return NULL;
        w->exports = 0;
        w->owner = NULL;
        Py_XSETREF(spare[slot], w);
    }
    Py_INCREF(w);
    w->buf = buf;
    w->len = len;
    w->readonly = readonly;
    Py_XSETREF(w->owner, Py_NewRef(owner));
    return w;
}

/* -1 when the callee kept a buffer (a memoryview) over the window past the call: it still
 * points at the memory, so the window keeps the owner alive (no use after free) and the
 * caller must fail rather than hand out bytes that the kept view could still change. */
static int
close_window(Window *w)
{
    if (w == NULL) return 0;
    /* cryptography reads and writes the buffers only during the call; close the window so
     * that a reference kept by mistake cannot reach the memory afterwards */
    int kept = w->exports != 0;
    w->buf = NULL;
    w->len = 0;
    if (!kept) Py_CLEAR(w->owner);
    Py_DECREF(w);
    return kept ? -1 : 0;
}

static int
close_windows(Window *a, Window *b, Window *c)
{
    int kept = close_window(a) | close_window(b) | close_window(c);
    return kept ? -1 : 0;
}

/* After the call of encrypt_into / decrypt_into: r, or NULL with BufferError when the callee
 * kept a buffer over one of the windows. */
static PyObject *
check_windows(PyObject *r, Window *a, Window *b, Window *c)
{
    if (close_windows(a, b, c) < 0 && r != NULL) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_BufferError, "raftsso._tokens: a buffer outlived the call");
        return NULL;
    }
    return r;
}

/* The associated data of a token: its 5-byte header, then the caller's bytes.  A bytes
 * object rather than a window: cryptography takes bytes faster (measured). */
static PyObject *
make_aad(const char *header, PyObject *associated_data)
{
    if (PyBytes_CheckExact(associated_data)) {
        Py_ssize_t n = PyBytes_GET_SIZE(associated_data);
        PyObject *aad = PyBytes_FromStringAndSize(NULL, HEADER + n);
        if (aad == NULL) return NULL;
        memcpy(PyBytes_AS_STRING(aad), header, HEADER);
        memcpy(PyBytes_AS_STRING(aad) + HEADER, PyBytes_AS_STRING(associated_data), n);
        return aad;
    }
    Py_buffer ad;
    if (PyObject_GetBuffer(associated_data, &ad, PyBUF_SIMPLE) < 0) {
        /* the Python path's `header + associated_data` raises TypeError (not BufferError for
         * a non-contiguous memoryview): the same exception class on both paths */
        PyErr_Format(PyExc_TypeError, "can't concat %.100s to bytes",
                     Py_TYPE(associated_data)->tp_name);
        return NULL;
    }
    PyObject *aad = ad.len <= PY_SSIZE_T_MAX - HEADER
                    ? PyBytes_FromStringAndSize(NULL, HEADER + ad.len) : PyErr_NoMemory();
    if (aad != NULL) {
        memcpy(PyBytes_AS_STRING(aad), header, HEADER);
        memcpy(PyBytes_AS_STRING(aad) + HEADER, ad.buf, ad.len);
    }
    PyBuffer_Release(&ad);
    return aad;
}

static Py_ssize_t
buffer_size(PyObject *obj)
{
    if (PyBytes_CheckExact(obj)) return PyBytes_GET_SIZE(obj);
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0) return -1;
    Py_ssize_t n = b.len;
    PyBuffer_Release(&b);
    return n;
}

/* A token under the next nonce: header | nonce | encrypt_into(nonce, data, header | ad). */
static PyObject *
do_seal(PyObject *encrypt_into, const char *header, PyObject *data, PyObject *associated_data)
{
    /* the associated data first, as the Python path (`header + associated_data` is
     * evaluated before the call): the same exception when both arguments are wrong */
    PyObject *aad = make_aad(header, associated_data);
    if (aad == NULL) return NULL;
    Py_ssize_t size = buffer_size(data);
    if (size < 0 || size > PY_SSIZE_T_MAX - OVERHEAD) {
        if (size >= 0) PyErr_NoMemory();
        Py_DECREF(aad);
        return NULL;
    }
    /* (if `data` changes size before encrypt_into, encrypt_into refuses the window: its
     * length must be the data's plus the tag) */
    PyObject *token = PyBytes_FromStringAndSize(NULL, OVERHEAD + size);
    Window *nonce = NULL, *body = NULL;
    PyObject *r = NULL;
    if (token == NULL) goto done;
    char *p = PyBytes_AS_STRING(token);
    memcpy(p, header, HEADER);
    if (take_nonce((unsigned char *)p + HEADER) < 0) goto done;
    nonce = open_window(0, token, p + HEADER, NONCE, 1);
    body = nonce ? open_window(1, token, p + HEADER + NONCE, size + TAG, 0) : NULL;
    if (body == NULL) goto done;
    PyObject *call[4] = {(PyObject *)nonce, data, aad, (PyObject *)body};
    r = PyObject_Vectorcall(encrypt_into, call, 4, NULL);
done:
    r = check_windows(r, nonce, body, NULL);
    Py_DECREF(aad);
    if (r == NULL) {
        Py_XDECREF(token);
        return NULL;
    }
    Py_DECREF(r);
    return token;
}

/* seal(encrypt_into, header, data, associated_data) -> token */
static PyObject *
seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal(encrypt_into, header, data, associated_data)");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[1]) || PyBytes_GET_SIZE(args[1]) != HEADER) {
        PyErr_SetString(PyExc_TypeError, "a token header is 5 bytes");
        return NULL;
    }
    return do_seal(args[0], PyBytes_AS_STRING(args[1]), args[2], args[3]);
}

/* open(decrypt_into_by_version, token, associated_data) -> plaintext or None
 *
 * None when `token` is not a bytes object, is shorter than a token, has another format byte
 * or a version not in the dict (the caller's slower path sorts those out); the exception of
 * decrypt_into (InvalidTag) when it is a token of a version here but does not open. */
static PyObject *
do_open(PyObject *by_version, PyObject *token, PyObject *associated_data)
{
    if (!PyBytes_CheckExact(token) || PyBytes_GET_SIZE(token) < OVERHEAD) Py_RETURN_NONE;
    char *t = PyBytes_AS_STRING(token);
    const unsigned char *u = (const unsigned char *)t;
    if (u[0] != TOKEN_FORMAT) Py_RETURN_NONE;
    unsigned long version = ((unsigned long)u[1] << 24) | ((unsigned long)u[2] << 16)
                            | ((unsigned long)u[3] << 8) | (unsigned long)u[4];
    PyObject *key = PyLong_FromUnsignedLong(version);
    if (key == NULL) return NULL;
    PyObject *decrypt_into = PyDict_GetItemWithError(by_version, key);  /* borrowed */
    Py_DECREF(key);
    if (decrypt_into == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(decrypt_into);
    Py_ssize_t size = PyBytes_GET_SIZE(token) - OVERHEAD;
    PyObject *plain = NULL, *r = NULL;
    Window *nonce = NULL, *body = NULL, *out = NULL;
    PyObject *aad = make_aad(t, associated_data);
    if (aad == NULL) goto done;
    plain = PyBytes_FromStringAndSize(NULL, size);
    if (plain == NULL) goto done;
    nonce = open_window(0, token, t + HEADER, NONCE, 1);
    body = nonce ? open_window(1, token, t + HEADER + NONCE, size + TAG, 1) : NULL;
    out = body ? open_window(2, plain, PyBytes_AS_STRING(plain), size, 0) : NULL;
    if (out == NULL) goto done;
    PyObject *call[4] = {(PyObject *)nonce, (PyObject *)body, aad, (PyObject *)out};
    r = PyObject_Vectorcall(decrypt_into, call, 4, NULL);
done:
    r = check_windows(r, nonce, body, out);
    Py_XDECREF(aad);
    Py_DECREF(decrypt_into);
    if (r == NULL) {
        if (plain != NULL) {
            /* decrypt_into writes the plaintext before it checks the tag: a forged or
             * bit-flipped token's would-be plaintext must not stay in freed memory */
            memset(PyBytes_AS_STRING(plain), 0, (size_t)size);
            Py_DECREF(plain);
        }
        return NULL;
    }
    Py_DECREF(r);
    return plain;
}

static PyObject *
open_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "open(decrypt_into_by_version, token, associated_data)");
        return NULL;
    }
    if (!PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decrypt_into_by_version must be a dict");
        return NULL;
    }
    return do_open(args[0], args[1], args[2]);
}

/* -- ClientCore: the base class of raftsso.client.SSOClient -----------------------------
 *
 * Its `encrypt` and `decrypt` are C methods, so that a call `client.encrypt(data, ad)` costs
 * what a call of a built-in method costs: no Python frame, no bound-method object, the
 * state read at fixed offsets.  They take the common case only (one or two positional
 * arguments; encrypt: armed and fresh by the client's own clock; decrypt: a bytes token of
 * an armed version) and hand every other call, unchanged, to the subclass's Python methods
 * `_encrypt_slow` / `_decrypt_slow`, which stay the one definition of what the client does.
 * raftsso.envelope._PyClientCore is the same class in Python (the fallback); both are
 * tested. */

static PyObject *empty_bytes;
static PyObject *str_encrypt_slow;
static PyObject *str_decrypt_slow;

typedef struct {
    PyObject_HEAD
    PyObject *clock;         /* armed: the client's clock; None: time.monotonic */
    PyObject *uses;          /* armed: the primary's encryption counter (an iterator) */
    PyObject *encrypt_into;  /* armed: the primary's AESGCM.encrypt_into; NULL: disarmed */
    PyObject *by_version;    /* armed: {version: AESGCM.decrypt_into}; NULL: disarmed */
    PyObject *invalid;       /* the exception for a token of ours that does not open */
    PyObject *does_not_open; /* what decrypt_into raises then (cryptography's InvalidTag) */
    double fresh_until;
    char header[HEADER];
} ClientCore;

static PyObject *
call_slow(PyObject *self, PyObject *name, PyObject *const *args, size_t nargsf,
          PyObject *kwnames)
{
    PyObject *method = PyObject_GetAttr(self, name);
    if (method == NULL) return NULL;
    PyObject *r = PyObject_Vectorcall(method, args, nargsf, kwnames);
    Py_DECREF(method);
    return r;
}

static int
now(PyObject *clock, double *t)
{
    if (clock == Py_None) {
        /* time.monotonic() itself (CLOCK_MONOTONIC, nanoseconds / 1e9), without the call
         * and the float object */
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        *t = (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
        return 0;
    }
    Py_INCREF(clock);
    PyObject *value = PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (value == NULL) return -1;
    *t = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*t == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
core_encrypt(PyObject *self_, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ClientCore *self = (ClientCore *)self_;
    if (self->encrypt_into == NULL || kwnames != NULL || nargs < 1 || nargs > 2) {
        return call_slow(self_, str_encrypt_slow, args, nargs, kwnames);
    }
    /* our own references: the clock may be Python code, and another thread may re-arm */
    PyObject *into = Py_NewRef(self->encrypt_into), *uses = Py_NewRef(self->uses);
    PyObject *clock = Py_NewRef(self->clock);
    char header[HEADER];
    memcpy(header, self->header, HEADER);
    double until = self->fresh_until, t;
    PyObject *r = NULL;
    if (now(clock, &t) < 0) goto done;
    if (!(t < until)) {
        r = call_slow(self_, str_encrypt_slow, args, nargs, NULL);
        goto done;
    }
    PyObject *n = PyIter_Next(uses);
    if (n == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the counter ended");
        goto done;
    }
    Py_DECREF(n);
    r = do_seal(into, header, args[0], nargs == 2 ? args[1] : empty_bytes);
done:
    Py_DECREF(into);
    Py_DECREF(uses);
    Py_DECREF(clock);
    return r;
}

static PyObject *
core_decrypt(PyObject *self_, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ClientCore *self = (ClientCore *)self_;
    if (self->by_version != NULL && kwnames == NULL && (nargs == 1 || nargs == 2)) {
        PyObject *by_version = Py_NewRef(self->by_version);
        PyObject *invalid = Py_NewRef(self->invalid);
        PyObject *does_not_open = Py_NewRef(self->does_not_open);
        PyObject *r = do_open(by_version, args[0], nargs == 2 ? args[1] : empty_bytes);
        Py_DECREF(by_version);
        if (r == NULL && PyErr_ExceptionMatches(does_not_open)) {
            PyErr_Clear();  /* one opaque error, with no cryptography context */
            PyErr_SetNone(invalid);
            /* as `raise InvalidToken() from None`: no context shown either (inside an
             * `except` block of the caller's, the handled exception would be) */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (value != NULL && PyExceptionInstance_Check(value))
                PyException_SetCause(value, NULL);  /* sets __suppress_context__ */
            PyErr_Restore(type, value, tb);
        }
        Py_DECREF(invalid);
        Py_DECREF(does_not_open);
        if (r != Py_None) return r;
        Py_DECREF(r);
    }
    return call_slow(self_, str_decrypt_slow, args, nargs, kwnames);
}

/* _arm_encrypt(clock, fresh_until, uses, encrypt_into, header) */
static PyObject *
core_arm_encrypt(PyObject *self_, PyObject *args)
{
    ClientCore *self = (ClientCore *)self_;
    PyObject *clock, *uses, *into;
    double until;
    Py_buffer header;
    if (!PyArg_ParseTuple(args, "OdOOy*:_arm_encrypt", &clock, &until, &uses, &into, &header))
        return NULL;
    if (header.len != HEADER) {
        PyBuffer_Release(&header);
        PyErr_SetString(PyExc_ValueError, "a token header is 5 bytes");
        return NULL;
    }
    /* encrypt calls PyIter_Next(uses), which does not check for tp_iternext: a list here
     * would be a NULL function call */
    if (!PyIter_Check(uses)) {
        PyBuffer_Release(&header);
        PyErr_SetString(PyExc_TypeError, "uses must be an iterator");
        return NULL;
    }
    /* every field before any reference is dropped: no other thread sees half of it */
    PyObject *old[3] = {self->clock, self->uses, self->encrypt_into};
    self->clock = Py_NewRef(clock);
    self->uses = Py_NewRef(uses);
    self->encrypt_into = Py_NewRef(into);
    self->fresh_until = until;
    memcpy(self->header, header.buf, HEADER);
    PyBuffer_Release(&header);
    for (int i = 0; i < 3; i++) Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

/* _arm_decrypt(decrypt_into_by_version, invalid, does_not_open) */
static PyObject *
core_arm_decrypt(PyObject *self_, PyObject *args)
{
    ClientCore *self = (ClientCore *)self_;
    PyObject *by_version, *invalid, *does_not_open;
    if (!PyArg_ParseTuple(args, "O!OO:_arm_decrypt", &PyDict_Type, &by_version, &invalid,
                          &does_not_open))
        return NULL;
    PyObject *old[3] = {self->by_version, self->invalid, self->does_not_open};
    self->invalid = Py_NewRef(invalid);
    self->does_not_open = Py_NewRef(does_not_open);
    self->by_version = Py_NewRef(by_version);
    for (int i = 0; i < 3; i++) Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

/* _disarm_encrypt(): every encrypt goes to _encrypt_slow */
static PyObject *
core_disarm_encrypt(PyObject *self_, PyObject *unused)
{
    ClientCore *self = (ClientCore *)self_;
    PyObject *old[3] = {self->clock, self->uses, self->encrypt_into};
    self->clock = self->uses = self->encrypt_into = NULL;
    for (int i = 0; i < 3; i++) Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

/* _disarm_decrypt(): every decrypt goes to _decrypt_slow */
static PyObject *
core_disarm_decrypt(PyObject *self_, PyObject *unused)
{
    ClientCore *self = (ClientCore *)self_;
    Py_CLEAR(self->by_version);
    Py_RETURN_NONE;
}

static int
core_traverse(PyObject *self_, visitproc visit, void *arg)
{
    ClientCore *self = (ClientCore *)self_;
    Py_VISIT(self->clock);
    Py_VISIT(self->uses);
    Py_VISIT(self->encrypt_into);
    Py_VISIT(self->by_version);
    Py_VISIT(self->invalid);
    Py_VISIT(self->does_not_open);
    return 0;
}

static int
core_clear(PyObject *self_)
{
    ClientCore *self = (ClientCore *)self_;
    /* every field NULL before any reference is dropped: a DECREF can run Python code (a
     * finalizer) that calls encrypt, which must not find encrypt_into set and clock NULL */
    PyObject *old[6] = {self->clock, self->uses, self->encrypt_into, self->by_version,
                        self->invalid, self->does_not_open};
    self->clock = self->uses = self->encrypt_into = self->by_version = NULL;
    self->invalid = self->does_not_open = NULL;
    for (int i = 0; i < 6; i++) Py_XDECREF(old[i]);
    return 0;
}

static void
core_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef core_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))core_encrypt, METH_FASTCALL | METH_KEYWORDS,
     "encrypt(data, associated_data=b'') -> token\n\n"
     "Encrypt under the primary version; StaleSecret once the cache is stale. The token is\n"
     "0x01 | version (u32 BE) | nonce (12) | AES-256-GCM ciphertext, with the header and\n"
     "associated_data authenticated (see raftsso.envelope)."},
    {"decrypt", (PyCFunction)(void (*)(void))core_decrypt, METH_FASTCALL | METH_KEYWORDS,
     "decrypt(token, associated_data=b'') -> plaintext\n\n"
     "Decrypt with whichever cached version made token; works with no node up. A version\n"
     "newer than every cached one triggers one immediate (rate-limited) resync. Every\n"
     "failure raises the one opaque InvalidToken."},
    {"_arm_encrypt", core_arm_encrypt, METH_VARARGS,
     "_arm_encrypt(clock, fresh_until, uses, encrypt_into, header)"},
    {"_arm_decrypt", core_arm_decrypt, METH_VARARGS,
     "_arm_decrypt(decrypt_into_by_version, invalid, does_not_open)"},
    {"_disarm_encrypt", core_disarm_encrypt, METH_NOARGS, "_disarm_encrypt()"},
    {"_disarm_decrypt", core_disarm_decrypt, METH_NOARGS, "_disarm_decrypt()"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ClientCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "raftsso._tokens.ClientCore",
    .tp_basicsize = sizeof(ClientCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = core_dealloc,
    .tp_traverse = core_traverse,
    .tp_clear = core_clear,
    .tp_methods = core_methods,
    .tp_doc = "The C base class of SSOClient: encrypt and decrypt (see raftsso/_tokens.c).",
};

static PyMethodDef methods[] = {
    {"reseed", reseed, METH_O, "reseed(start): count token nonces up from these 12 bytes."},
    {"next_nonce", next_nonce, METH_NOARGS, "next_nonce() -> the next 12-byte token nonce."},
    {"seal", (PyCFunction)(void (*)(void))seal, METH_FASTCALL,
     "seal(encrypt_into, header, data, associated_data) -> token (next nonce)."},
    {"open", (PyCFunction)(void (*)(void))open_token, METH_FASTCALL,
     "open(decrypt_into_by_version, token, associated_data) -> plaintext or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "raftsso._tokens",
    "The client token hot path of raftsso.envelope (see raftsso/_tokens.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__tokens(void)
{
    if (PyType_Ready(&WindowType) < 0 || PyType_Ready(&ClientCoreType) < 0) return NULL;
    static int at_fork_registered;
    if (!at_fork_registered) {
        if (pthread_atfork(NULL, NULL, forget_counter_in_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return NULL;
        }
        at_fork_registered = 1;
    }
    empty_bytes = PyBytes_FromStringAndSize("", 0);
    str_encrypt_slow = PyUnicode_InternFromString("_encrypt_slow");
    str_decrypt_slow = PyUnicode_InternFromString("_decrypt_slow");
    if (empty_bytes == NULL || str_encrypt_slow == NULL || str_decrypt_slow == NULL) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "ClientCore", (PyObject *)&ClientCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
