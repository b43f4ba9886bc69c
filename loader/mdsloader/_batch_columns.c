/*
 * The per-object work of sending a user's list of sample dicts from a DataLoader worker as
 * columns (see mdsloader/transfer.py): checking the list's shape, splitting it into columns,
 * checking that no object appears twice, and, in the main process, building the dicts again.
 *
 * Each is a loop over a few thousand objects that Python runs at 20-100 ns an object in several
 * passes; here it is one pass of pointer compares. Only exact built-in types are looked into and
 * no Python code runs (no __eq__, no __hash__), so the answers are the ones the pure-Python
 * fallback in transfer.py gives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

PyDoc_STRVAR(columns_of_doc,
"columns_of(batch) -> (keys, columns, kinds) or None\n"
"\n"
"For a list of at least two exact dicts that hold the same key objects (by identity) in the\n"
"same order, at least one key, and no dict twice: keys (a list), columns (a list of tuples, one\n"
"per key, each holding that key's values in list order) and kinds (per column the values' exact\n"
"type when they share one, else None). None for anything else.");

static int distinct_pointers(PyObject **items, Py_ssize_t count);

static PyObject *columns_of(PyObject *self, PyObject *batch) {
    if (!PyList_CheckExact(batch)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(batch);
    if (n < 2) Py_RETURN_NONE;
    PyObject *first = PyList_GET_ITEM(batch, 0);
    if (!PyDict_CheckExact(first)) Py_RETURN_NONE;
    Py_ssize_t width = PyDict_GET_SIZE(first);
    if (width == 0) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (!PyDict_CheckExact(item) || PyDict_GET_SIZE(item) != width) Py_RETURN_NONE;
    }
    /* No dict twice (a shared dict would come back as two). */
    PyObject **dicts = PyMem_Malloc((size_t)n * sizeof(PyObject *));
    if (!dicts) return PyErr_NoMemory();
    memcpy(dicts, ((PyListObject *)batch)->ob_item, (size_t)n * sizeof(PyObject *));
    int unique = distinct_pointers(dicts, n);
    PyMem_Free(dicts);
    if (unique < 0) return NULL;
    if (!unique) Py_RETURN_NONE;

    PyObject *keys = PyList_New(width), *columns = PyList_New(width), *kinds = PyList_New(width);
    PyTypeObject **kind = PyMem_Calloc((size_t)width, sizeof(PyTypeObject *));
    int *mixed = PyMem_Calloc((size_t)width, sizeof(int));
    PyObject *result = NULL;
    int shape_ok = 1;
    if (!keys || !columns || !kinds || !kind || !mixed) {
        PyErr_NoMemory();
        goto done;
    }
    {
        Py_ssize_t pos = 0, k = 0;
        PyObject *key, *value;
        while (PyDict_Next(first, &pos, &key, &value)) {
            Py_INCREF(key);
            PyList_SET_ITEM(keys, k, key);
            PyObject *column = PyTuple_New(n);
            if (!column) goto done;
            PyList_SET_ITEM(columns, k, column);
            kind[k] = Py_TYPE(value);
            k++;
        }
    }
    for (Py_ssize_t i = 0; i < n && shape_ok; i++) {
        PyObject *item = PyList_GET_ITEM(batch, i), *key, *value;
        Py_ssize_t pos = 0, k = 0;
        while (PyDict_Next(item, &pos, &key, &value)) {
            if (k >= width || key != PyList_GET_ITEM(keys, k)) {
                shape_ok = 0;
                break;
            }
            Py_INCREF(value);
            PyTuple_SET_ITEM(PyList_GET_ITEM(columns, k), i, value);
            if (Py_TYPE(value) != kind[k]) mixed[k] = 1;
            k++;
        }
    }
    if (!shape_ok) {
        /* Unset tuple slots are NULL, which tuple deallocation skips. */
        result = Py_NewRef(Py_None);
        goto done;
    }
    for (Py_ssize_t k = 0; k < width; k++) {
        PyObject *value = mixed[k] ? Py_None : (PyObject *)kind[k];
        PyList_SET_ITEM(kinds, k, Py_NewRef(value));
    }
    result = PyTuple_Pack(3, keys, columns, kinds);
done:
    Py_XDECREF(keys);
    Py_XDECREF(columns);
    Py_XDECREF(kinds);
    PyMem_Free(kind);
    PyMem_Free(mixed);
    return result;
}

/* 1 when no pointer repeats, 0 when one does, -1 on error (open addressing, twice the size). */
static int distinct_pointers(PyObject **items, Py_ssize_t count) {
    size_t slots = 16;
    while (slots < (size_t)count * 2) slots <<= 1;
    uintptr_t *table = PyMem_Calloc(slots, sizeof(uintptr_t));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    int unique = 1;
    for (Py_ssize_t i = 0; i < count && unique; i++) {
        uintptr_t p = (uintptr_t)items[i];
        /* Objects are 16-byte aligned: drop the zero bits, then mix (Fibonacci hashing). */
        size_t h = (size_t)(((uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ULL) >> 17) & (slots - 1);
        while (table[h]) {
            if (table[h] == p) {
                unique = 0;
                break;
            }
            h = (h + 1) & (slots - 1);
        }
        table[h] = p;
    }
    PyMem_Free(table);
    return unique;
}

PyDoc_STRVAR(all_distinct_doc,
"all_distinct(*sequences) -> bool\n"
"\n"
"Whether no object appears twice (by identity) across the given lists or tuples.");

static PyObject *all_distinct(PyObject *self, PyObject *args) {
    Py_ssize_t groups = PyTuple_GET_SIZE(args), total = 0;
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *seq = PyTuple_GET_ITEM(args, g);
        if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) {
            PyErr_SetString(PyExc_TypeError, "all_distinct takes lists or tuples");
            return NULL;
        }
        total += PySequence_Fast_GET_SIZE(seq);
    }
    PyObject **items = PyMem_Malloc((size_t)(total ? total : 1) * sizeof(PyObject *));
    if (!items) return PyErr_NoMemory();
    Py_ssize_t at = 0;
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *seq = PyTuple_GET_ITEM(args, g);
        Py_ssize_t size = PySequence_Fast_GET_SIZE(seq);
        memcpy(items + at, PySequence_Fast_ITEMS(seq), (size_t)size * sizeof(PyObject *));
        at += size;
    }
    int unique = distinct_pointers(items, total);
    PyMem_Free(items);
    if (unique < 0) return NULL;
    return PyBool_FromLong(unique);
}

PyDoc_STRVAR(dicts_of_doc,
"dicts_of(keys, columns) -> list of dicts\n"
"\n"
"The inverse of columns_of: dict i maps keys[k] to columns[k][i], keys inserted in order (as\n"
"pickle's SETITEMS does). keys is a list; columns a list of equally long lists or tuples.");

static PyObject *dicts_of(PyObject *self, PyObject *args) {
    PyObject *keys, *columns;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &keys, &PyList_Type, &columns)) return NULL;
    Py_ssize_t width = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(columns) != width || width == 0) {
        PyErr_SetString(PyExc_ValueError, "dicts_of needs one column per key, and a key");
        return NULL;
    }
    Py_ssize_t n = -1;
    for (Py_ssize_t k = 0; k < width; k++) {
        PyObject *column = PyList_GET_ITEM(columns, k);
        if (!PyList_CheckExact(column) && !PyTuple_CheckExact(column)) {
            PyErr_SetString(PyExc_TypeError, "dicts_of columns must be lists or tuples");
            return NULL;
        }
        Py_ssize_t size = PySequence_Fast_GET_SIZE(column);
        if (n >= 0 && size != n) {
            PyErr_SetString(PyExc_ValueError, "dicts_of columns differ in length");
            return NULL;
        }
        n = size;
    }
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *dict = PyDict_New();
        if (!dict) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, dict);
        for (Py_ssize_t k = 0; k < width; k++) {
            PyObject *value = PySequence_Fast_ITEMS(PyList_GET_ITEM(columns, k))[i];
            if (PyDict_SetItem(dict, PyList_GET_ITEM(keys, k), value) < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"columns_of", columns_of, METH_O, columns_of_doc},
    {"all_distinct", all_distinct, METH_VARARGS, all_distinct_doc},
    {"dicts_of", dicts_of, METH_VARARGS, dicts_of_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_batch_columns",
    "Lists of sample dicts to columns and back, for mdsloader.transfer (see the C source).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__batch_columns(void) { return PyModule_Create(&module); }
