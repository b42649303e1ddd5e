/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._fastct: building the Flow objects of a conntrack dump,
 * compiled.  Optional: without it nfbind builds them in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef fastct_module = {
    PyModuleDef_HEAD_INIT, "nfbind._fastct",
    "Conntrack flows built in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastct(void)
{
    return PyModule_Create(&fastct_module);
}
