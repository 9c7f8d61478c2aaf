/* module.c: litecomp._C, the one extension module.  Imports NumPy's C API, fetches the
 * exception classes from litecomp.errors, and lets every family in families.h add its
 * functions. */
#define LC_MODULE_MAIN
#include "litecomp.h"
#include "families.h"

LC_FAMILIES(LC_DECLARE_FAMILY)

PyObject *lc_ArgumentError, *lc_DTypeError, *lc_ShapeError, *lc_NonFiniteError, *lc_FormatError;

static int fetch_errors(void) {
    PyObject *mod = PyImport_ImportModule("litecomp.errors");
    if (!mod) return -1;
    struct { PyObject **slot; const char *name; } want[] = {
        {&lc_ArgumentError, "ArgumentError"}, {&lc_DTypeError, "DTypeError"},
        {&lc_ShapeError, "ShapeError"},       {&lc_NonFiniteError, "NonFiniteError"},
        {&lc_FormatError, "FormatError"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        *want[i].slot = PyObject_GetAttrString(mod, want[i].name);
        if (!*want[i].slot) { Py_DECREF(mod); return -1; }
    }
    Py_DECREF(mod);
    return 0;
}

/* Two families must never export the same name: the later one would silently replace the
 * earlier (it happened once: two different `pack_bits`).  A clash fails the import. */
int lc_add_methods(PyObject *m, PyMethodDef *defs) {
    PyObject *dict = PyModule_GetDict(m);
    for (PyMethodDef *d = defs; d->ml_name; d++) {
        if (PyDict_GetItemString(dict, d->ml_name)) {
            PyErr_Format(PyExc_ImportError, "litecomp._C: two kernel families export '%s'",
                         d->ml_name);
            return -1;
        }
    }
    return PyModule_AddFunctions(m, defs);
}

int lc_add_code_table(PyObject *m, const char *attr, const char *const *names) {
    if (PyDict_GetItemString(PyModule_GetDict(m), attr)) {
        PyErr_Format(PyExc_ImportError, "litecomp._C: two kernel families export '%s'", attr);
        return -1;
    }
    PyObject *d = PyDict_New();
    if (!d) return -1;
    for (long code = 0; names[code]; code++) {
        PyObject *v = PyLong_FromLong(code);
        int rc = v ? PyDict_SetItemString(d, names[code], v) : -1;
        Py_XDECREF(v);
        if (rc < 0 || PyDict_Size(d) != code + 1) {
            if (rc == 0)
                PyErr_Format(PyExc_ImportError, "litecomp._C.%s: name '%s' listed twice", attr,
                             names[code]);
            Py_DECREF(d);
            return -1;
        }
    }
    PyObject *proxy = PyDictProxy_New(d);
    Py_DECREF(d);
    if (!proxy) return -1;
    if (PyModule_AddObject(m, attr, proxy) < 0) { Py_DECREF(proxy); return -1; }
    return 0;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "litecomp._C",
    "litecomp's C kernels.  Call them through the litecomp Python API, which checks and\n"
    "normalises arguments; these entry points only re-check cheaply.",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    if (fetch_errors() < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
#ifdef LC_FREE_THREADED
    PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
#define X(name) if (lc_init_##name(m) < 0) goto error;
    LC_FAMILIES(X)
#undef X
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
