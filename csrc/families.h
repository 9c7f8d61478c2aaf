/* The kernel families compiled into litecomp._C, one C file each (csrc/<name>.c) with the
 * same name as its Python module.  Adding a family: write csrc/<name>.c with
 * `int lc_init_<name>(PyObject *m)`, then add one line here. */
#define LC_FAMILIES(X) \
    X(runtime)         \
    X(core)            \
    X(random)          \
    X(distill)         \
    X(prune)           \
    X(sparse)          \
    X(quant)           \
    X(gguf)            \
    X(codebook)        \
    X(matmul)          \
    X(calib)           \
    X(shrink)
