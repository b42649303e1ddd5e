/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._fastq: the per-packet dispatch loop of the packet channels,
 * compiled.  Optional: without it the channels use their Python loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef fastq_module = {
    PyModuleDef_HEAD_INIT, "nfbind._fastq",
    "The packet channels' dispatch loop, compiled.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastq(void)
{
    return PyModule_Create(&fastq_module);
}
