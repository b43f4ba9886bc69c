/*
 * Advance a numpy PCG64 generator past a run of ``Generator.shuffle`` calls without shuffling.
 *
 * ``py1e`` draws every within-span shuffle of a canonical node before the first position shift,
 * so where the shifts begin depends on how many random words all those shuffles consumed. numpy's
 * shuffle of n items makes n - 1 bounded draws by masked rejection (a 32-bit word, masked to the
 * next power of two above the bound, redrawn while above it), so the count is data-dependent and
 * has to be replayed; but only the count: no item has to move. This module replays exactly that,
 * about six times faster than ``rng.shuffle`` on a scratch array, because
 *
 *   - nothing is swapped or written but the generator's words, and
 *   - the words are made four at a time by four interleaved copies of the 128-bit LCG (each
 *     stepping by M^4), which breaks the one long multiply chain a single generator is.
 *
 * It follows numpy's PCG64 exactly (XSL-RR output of the stepped state; 32-bit draws take the low
 * half of a word and buffer the high half) so the state handed back is bit-identical to the one
 * the real shuffles leave, and it records the generator's state before every span, as the
 * streamed plan needs. Spans of more than 2^32 items (where numpy switches to 64-bit draws) are
 * refused; the Python caller then uses numpy itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

#define MULT (((u128)0x2360ED051FC65DA4ULL << 64) | (u128)0x4385DF649FCCF645ULL)
/* Words generated per refill (a multiple of the four lanes). */
#define WORDS 2048
/* Jumps of 2^j steps, j < JUMPS, cover any distance within one refill. */
#define JUMPS 12

static inline uint64_t output(u128 state) {
    uint64_t x = (uint64_t)(state >> 64) ^ (uint64_t)state;
    unsigned rot = (unsigned)(state >> 122);
    return (x >> rot) | (x << ((-rot) & 63));
}

typedef struct {
    u128 inc;
    u128 jump_mult[JUMPS], jump_add[JUMPS];
    u128 lane_mult, lane_add; /* four steps at once */
    /* The buffer: half-words in draw order. ``base`` is the state before the buffer's first word;
     * ``pending`` is 1 when half[0] is the half-word numpy had buffered on entry (no word of its
     * own), else 0. ``pos`` half-words of ``count`` are drawn. */
    u128 base;
    uint32_t half[2 * WORDS + 1];
    int pending, pos, count;
    uint32_t last_half; /* numpy's ``uinteger`` when the buffer holds no drawn half-word */
} stream_t;

static void stream_init(stream_t *s, u128 state, u128 inc, int has_half, uint32_t half) {
    s->inc = inc;
    u128 m = MULT, a = inc;
    for (int j = 0; j < JUMPS; j++) {
        s->jump_mult[j] = m;
        s->jump_add[j] = a;
        a = a * (m + 1);
        m = m * m;
    }
    s->lane_mult = s->jump_mult[2];
    s->lane_add = s->jump_add[2];
    s->base = state;
    s->last_half = half;
    s->pending = has_half ? 1 : 0;
    s->half[0] = half;
    s->pos = 0;
    s->count = s->pending;
}

static inline u128 jump(const stream_t *s, u128 state, unsigned steps) {
    for (int j = 0; steps; j++, steps >>= 1)
        if (steps & 1) state = state * s->jump_mult[j] + s->jump_add[j];
    return state;
}

/* Words consumed from ``base`` after ``pos`` half-words of the buffer. */
static inline unsigned words_drawn(const stream_t *s) {
    int drawn = s->pos - s->pending;
    return drawn <= 0 ? 0 : (unsigned)(drawn + 1) / 2;
}

/* numpy's view of the generator now: state, has_uint32, uinteger. */
static void stream_state(const stream_t *s, u128 *state, int *has_half, uint32_t *half) {
    int drawn = s->pos - s->pending;
    *state = jump(s, s->base, words_drawn(s));
    if (drawn < 0) { /* the entry half-word is still buffered */
        *has_half = 1;
        *half = s->half[0];
    } else if (drawn & 1) { /* drew a low half: the high half waits */
        *has_half = 1;
        *half = s->half[s->pos];
    } else {
        *has_half = 0;
        *half = s->pos > 0 ? s->half[s->pos - 1] : s->last_half;
    }
}

static void refill(stream_t *s) {
    /* numpy keeps the last buffered half-word as ``uinteger`` after drawing it. */
    if (s->pos > 0) s->last_half = s->half[s->pos - 1];
    u128 start = jump(s, s->base, words_drawn(s));
    u128 l0 = start * MULT + s->inc;
    u128 l1 = l0 * MULT + s->inc;
    u128 l2 = l1 * MULT + s->inc;
    u128 l3 = l2 * MULT + s->inc;
    uint32_t *out = s->half;
    for (int k = 0; k < WORDS; k += 4) {
        uint64_t w0 = output(l0), w1 = output(l1), w2 = output(l2), w3 = output(l3);
        out[0] = (uint32_t)w0; out[1] = (uint32_t)(w0 >> 32);
        out[2] = (uint32_t)w1; out[3] = (uint32_t)(w1 >> 32);
        out[4] = (uint32_t)w2; out[5] = (uint32_t)(w2 >> 32);
        out[6] = (uint32_t)w3; out[7] = (uint32_t)(w3 >> 32);
        out += 8;
        l0 = l0 * s->lane_mult + s->lane_add;
        l1 = l1 * s->lane_mult + s->lane_add;
        l2 = l2 * s->lane_mult + s->lane_add;
        l3 = l3 * s->lane_mult + s->lane_add;
    }
    s->base = start;
    s->pending = 0;
    s->pos = 0;
    s->count = 2 * WORDS;
}

/* Draw exactly what ``shuffle`` of ``n`` items draws: for i = n-1 .. 1, masked 32-bit words
 * until one is <= i. Within a power-of-two band the mask is fixed, so the loop carries only i. */
static void skip_shuffle(stream_t *s, uint64_t n) {
    if (n < 2) return;
    uint32_t i = (uint32_t)(n - 1);
    while (i >= 1) {
        uint32_t mask = 0xFFFFFFFFu >> __builtin_clz(i);
        uint32_t floor = mask >> 1; /* below this the mask narrows */
        while (i > floor) {
            if (s->pos == s->count) refill(s);
            const uint32_t *half = s->half;
            int pos = s->pos, count = s->count;
            while (pos < count && i > floor) {
                i -= ((half[pos] & mask) <= i);
                pos++;
            }
            s->pos = pos;
        }
    }
}

/* numpy's Generator.shuffle of ``data[0:n]`` (Fisher-Yates from the end, masked draws). The
 * draws do not depend on the items, so a span's shuffle is done on its 32-bit local indices: half
 * the memory of its int64 ids, which keeps the random swaps in cache. */
static void shuffle_span(stream_t *s, uint32_t *data, uint64_t n) {
    if (n < 2) return;
    uint32_t i = (uint32_t)(n - 1);
    while (i >= 1) {
        uint32_t mask = 0xFFFFFFFFu >> __builtin_clz(i);
        uint32_t floor = mask >> 1;
        while (i > floor) {
            if (s->pos == s->count) refill(s);
            uint32_t value = s->half[s->pos++] & mask;
            if (value <= i) {
                uint32_t held = data[i];
                data[i] = data[value];
                data[value] = held;
                i--;
            }
        }
    }
}

/* ``count`` consecutive 64-bit words of the generator at ``*state`` into ``out``; ``*state``
 * ends after the last. Four interleaved lanes, as in refill. */
static void fill_words(const stream_t *s, u128 *state, uint64_t *out, int count) {
    int k = 0;
    if (count >= 4) {
        u128 l0 = *state * MULT + s->inc;
        u128 l1 = l0 * MULT + s->inc;
        u128 l2 = l1 * MULT + s->inc;
        u128 l3 = l2 * MULT + s->inc;
        for (; k + 4 <= count; k += 4) {
            out[k] = output(l0); out[k + 1] = output(l1);
            out[k + 2] = output(l2); out[k + 3] = output(l3);
            *state = l3;
            l0 = l0 * s->lane_mult + s->lane_add;
            l1 = l1 * s->lane_mult + s->lane_add;
            l2 = l2 * s->lane_mult + s->lane_add;
            l3 = l3 * s->lane_mult + s->lane_add;
        }
    }
    for (; k < count; k++) {
        *state = *state * MULT + s->inc;
        out[k] = output(*state);
    }
}

static int take_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                       const char *name) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must hold %zd-byte items, got %zd", name, itemsize,
                     view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static u128 to_u128(PyObject *value) {
    /* 128-bit ints cross as two 64-bit halves; on error PyErr is set and 0 returned. */
    PyObject *shift = PyLong_FromLong(64);
    PyObject *upper = shift ? PyNumber_Rshift(value, shift) : NULL;
    Py_XDECREF(shift);
    if (!upper) return 0;
    unsigned long long hi = PyLong_AsUnsignedLongLong(upper);
    Py_DECREF(upper);
    unsigned long long lo = PyLong_AsUnsignedLongLongMask(value);
    return ((u128)hi << 64) | lo;
}

PyDoc_STRVAR(skip_shuffles_doc,
"skip_shuffles(state, inc, has_half, half, sizes, high, low, has, halves) -> (state, has_half, half)\n"
"\n"
"Advance a PCG64 state exactly as numpy's Generator.shuffle of len(sizes) arrays of those sizes\n"
"would, in order. state and inc are the 128-bit ints of bit_generator.state; has_half and half\n"
"its has_uint32 and uinteger. sizes is a contiguous int64 buffer; before each shuffle the state\n"
"is written to high/low (uint64), has (uint8) and halves (uint32), each as long as sizes.\n"
"Raises ValueError for a size of 2**32 + 1 or more (numpy draws 64-bit words there).");

static PyObject *skip_shuffles(PyObject *self, PyObject *args) {
    PyObject *state_obj, *inc_obj, *sizes_obj, *high_obj, *low_obj, *has_obj, *halves_obj;
    int has_half;
    unsigned long half;
    if (!PyArg_ParseTuple(args, "OOpkOOOOO", &state_obj, &inc_obj, &has_half, &half, &sizes_obj,
                          &high_obj, &low_obj, &has_obj, &halves_obj))
        return NULL;
    u128 words[2] = {to_u128(state_obj), to_u128(inc_obj)};
    if (PyErr_Occurred()) return NULL;
    Py_buffer sizes, high, low, has, halves;
    if (take_buffer(sizes_obj, &sizes, 0, 8, "sizes") < 0) return NULL;
    Py_buffer *outs[4] = {&high, &low, &has, &halves};
    PyObject *out_objs[4] = {high_obj, low_obj, has_obj, halves_obj};
    Py_ssize_t out_sizes[4] = {8, 8, 1, 4};
    const char *out_names[4] = {"high", "low", "has", "halves"};
    int taken = 0;
    PyObject *result = NULL;
    for (; taken < 4; taken++)
        if (take_buffer(out_objs[taken], outs[taken], 1, out_sizes[taken], out_names[taken]) < 0)
            goto done;
    Py_ssize_t n = sizes.len / 8;
    for (int k = 0; k < 4; k++)
        if (outs[k]->len / out_sizes[k] != n) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd items, sizes %zd", out_names[k],
                         outs[k]->len / out_sizes[k], n);
            goto done;
        }
    const int64_t *size = (const int64_t *)sizes.buf;
    for (Py_ssize_t j = 0; j < n; j++)
        if (size[j] < 0 || (uint64_t)size[j] > 0x100000000ULL) {
            PyErr_Format(PyExc_ValueError, "span %zd has %lld items: outside [0, 2**32]", j,
                         (long long)size[j]);
            goto done;
        }
    stream_t *s = PyMem_Malloc(sizeof(stream_t));
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t *high_out = high.buf, *low_out = low.buf;
    uint8_t *has_out = has.buf;
    uint32_t *half_out = halves.buf;
    u128 state;
    int now_has;
    uint32_t now_half;
    Py_BEGIN_ALLOW_THREADS
    stream_init(s, words[0], words[1], has_half, (uint32_t)half);
    for (Py_ssize_t j = 0; j < n; j++) {
        stream_state(s, &state, &now_has, &now_half);
        high_out[j] = (uint64_t)(state >> 64);
        low_out[j] = (uint64_t)state;
        has_out[j] = (uint8_t)now_has;
        half_out[j] = now_half;
        skip_shuffle(s, (uint64_t)size[j]);
    }
    stream_state(s, &state, &now_has, &now_half);
    Py_END_ALLOW_THREADS
    PyMem_Free(s);
    {
        PyObject *hi = PyLong_FromUnsignedLongLong((unsigned long long)(state >> 64));
        PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)state);
        PyObject *shift = PyLong_FromLong(64);
        PyObject *top = (hi && shift) ? PyNumber_Lshift(hi, shift) : NULL;
        PyObject *full = (top && lo) ? PyNumber_Or(top, lo) : NULL;
        if (full) result = Py_BuildValue("(Nik)", full, now_has, (unsigned long)now_half);
        Py_XDECREF(hi);
        Py_XDECREF(lo);
        Py_XDECREF(shift);
        Py_XDECREF(top);
    }
done:
    PyBuffer_Release(&sizes);
    for (int k = 0; k < taken; k++) PyBuffer_Release(outs[k]);
    return result;
}

PyDoc_STRVAR(collect_band_doc,
"collect_band(inc, shuffle_high, shuffle_low, shuffle_has, shuffle_half, shift_high, shift_low,\n"
"             begins, sizes, slots, lower, upper, a, b, out_ids, out_pos)\n"
"    -> (count, below)\n"
"\n"
"The samples of a run of py1e spans whose position lies in [a, b), in span order then offset\n"
"order, regenerated from the replay's snapshots exactly as numpy would: span j's ids are\n"
"rng.shuffle(begins[j] + arange(sizes[j])) from its shuffle snapshot, its positions\n"
"(float(o) + float(slots[j])) + rng.uniform(lower[j], upper[j], sizes[j]) from its shift snapshot\n"
"(no uniforms when both bounds are 0). Writes count ids and positions to out_ids/out_pos and\n"
"returns (count, how many positions of these spans lie below a). The outputs must be able to\n"
"hold every sample of the spans.");

static PyObject *collect_band(PyObject *self, PyObject *args) {
    PyObject *inc_obj, *objs[13];
    double a, b;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOddOO", &inc_obj, &objs[0], &objs[1], &objs[2],
                          &objs[3], &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9],
                          &objs[10], &a, &b, &objs[11], &objs[12]))
        return NULL;
    u128 inc = to_u128(inc_obj);
    if (PyErr_Occurred()) return NULL;
    static const char *names[13] = {"shuffle_high", "shuffle_low", "shuffle_has", "shuffle_half",
                                    "shift_high", "shift_low", "begins", "sizes", "slots",
                                    "lower", "upper", "out_ids", "out_pos"};
    static const Py_ssize_t itemsizes[13] = {8, 8, 1, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8};
    Py_buffer views[13];
    int taken = 0;
    PyObject *result = NULL;
    stream_t *s = NULL;
    uint32_t *offsets = NULL, *scratch = NULL;
    double *kept = NULL;
    for (; taken < 13; taken++)
        if (take_buffer(objs[taken], &views[taken], taken >= 11, itemsizes[taken],
                        names[taken]) < 0)
            goto done;
    Py_ssize_t spans = views[7].len / 8;
    for (int k = 0; k < 11; k++)
        if (views[k].len / itemsizes[k] != spans) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd items, sizes %zd", names[k],
                         views[k].len / itemsizes[k], spans);
            goto done;
        }
    const int64_t *sizes = views[7].buf;
    int64_t widest = 0, total = 0;
    for (Py_ssize_t j = 0; j < spans; j++) {
        if (sizes[j] < 0 || (uint64_t)sizes[j] > 0x100000000ULL) {
            PyErr_Format(PyExc_ValueError, "span %zd has %lld items: outside [0, 2**32]", j,
                         (long long)sizes[j]);
            goto done;
        }
        if (sizes[j] > widest) widest = sizes[j];
        total += sizes[j];
    }
    if (views[11].len / 8 < total || views[12].len / 8 < total) {
        PyErr_SetString(PyExc_ValueError, "out_ids and out_pos must hold every sample of the spans");
        goto done;
    }
    s = PyMem_Malloc(sizeof(stream_t));
    offsets = PyMem_Malloc((size_t)(widest ? widest : 1) * sizeof(uint32_t));
    kept = PyMem_Malloc((size_t)(widest ? widest : 1) * sizeof(double));
    scratch = PyMem_Malloc((size_t)(widest ? widest : 1) * sizeof(uint32_t));
    if (!s || !offsets || !kept || !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *sh_high = views[0].buf, *sh_low = views[1].buf;
    const uint8_t *sh_has = views[2].buf;
    const uint32_t *sh_half = views[3].buf;
    const uint64_t *sf_high = views[4].buf, *sf_low = views[5].buf;
    const int64_t *begins = views[6].buf, *slots = views[8].buf;
    const double *lower = views[9].buf, *upper = views[10].buf;
    int64_t *out_ids = views[11].buf;
    double *out_pos = views[12].buf;
    int64_t count = 0, below = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t words[WORDS];
    stream_init(s, 0, inc, 0, 0);
    for (Py_ssize_t j = 0; j < spans; j++) {
        int64_t n = sizes[j];
        if (n == 0) continue;
        const double base = (double)slots[j], low = lower[j], high = upper[j];
        const double range = high - low;
        const int moved = !(low == 0.0 && high == 0.0);
        u128 state = ((u128)sf_high[j] << 64) | sf_low[j];
        int64_t in_band = 0;
        for (int64_t done = 0; done < n;) {
            int step = n - done < WORDS ? (int)(n - done) : WORDS;
            if (moved) fill_words(s, &state, words, step);
            for (int k = 0; k < step; k++) {
                double position = (double)(done + k) + base;
                /* numpy's next_double; the signed conversion is the fast one (53 bits fit). */
                if (moved) position += low + range * ((double)(int64_t)(words[k] >> 11) * 0x1.0p-53);
                /* Branch-free count: about half the positions of a straddling span are below. */
                below += position < a;
                if (position >= a && position < b) {
                    offsets[in_band] = (uint32_t)(done + k);
                    kept[in_band++] = position;
                }
            }
            done += step;
        }
        if (!in_band) continue;
        for (int64_t k = 0; k < n; k++) scratch[k] = (uint32_t)k;
        stream_init(s, ((u128)sh_high[j] << 64) | sh_low[j], inc, sh_has[j], sh_half[j]);
        shuffle_span(s, scratch, (uint64_t)n);
        for (int64_t k = 0; k < in_band; k++) {
            out_ids[count + k] = begins[j] + (int64_t)scratch[offsets[k]];
            out_pos[count + k] = kept[k];
        }
        count += in_band;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(LL)", (long long)count, (long long)below);
done:
    PyMem_Free(s);
    PyMem_Free(offsets);
    PyMem_Free(kept);
    PyMem_Free(scratch);
    for (int k = 0; k < taken; k++) PyBuffer_Release(&views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"skip_shuffles", skip_shuffles, METH_VARARGS, skip_shuffles_doc},
    {"collect_band", collect_band, METH_VARARGS, collect_band_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shuffle_draws",
    "numpy PCG64 advanced past Generator.shuffle calls without shuffling (see the C source).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__shuffle_draws(void) { return PyModule_Create(&module); }
