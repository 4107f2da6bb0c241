// A small C layer over onnxruntime's C API (OrtApi), loaded at run time with dlopen so that a
// run can pick its library (the system one, or a newer one for int4 artifacts). Swift calls
// these few functions instead of the OrtApi function-pointer table. Every function that can
// fail writes one line into `err` (capacity `errlen`) and returns NULL / nonzero.
#ifndef RG_ORT_H
#define RG_ORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { RG_F32 = 0, RG_F16 = 1, RG_I64 = 2 };

// Load the library (NULL: the default name) and create the process-wide environment. Later
// calls return the first result. 0 on success.
int rg_ort_load(const char *lib_path, char *err, size_t errlen);
// The loaded library's version string ("1.21.0"); "" before rg_ort_load succeeded.
const char *rg_ort_version(void);

// threads <= 0: onnxruntime's default; spin == 0: idle pool threads block at once instead of
// spin-waiting (session.intra_op.allow_spinning = 0; faster when another process holds a core).
void *rg_ort_session_open(const char *model_path, int threads, int spin, char *err, size_t errlen);
void rg_ort_session_close(void *session);
// Graph input / output names, in graph order. Returns the count; fills names[i] (malloc'd,
// freed by rg_ort_free_names) when names is not NULL and has room for max entries.
size_t rg_ort_session_names(void *session, int outputs, char **names, size_t max);
void rg_ort_free_names(char **names, size_t count);
// Rank of graph input / output `index` (0 when it is not a tensor); its dims into shape (up to
// max; -1 for a symbolic dim) and its element type into elem (RG_*, -1 for another type).
size_t rg_ort_session_io_shape(void *session, int outputs, size_t index, int64_t *shape, size_t max, int *elem);

// A CPU tensor owned by onnxruntime's allocator: copied from data (or zeros when data is NULL).
void *rg_ort_tensor_new(int elem, const int64_t *shape, size_t rank, const void *data, char *err, size_t errlen);
void *rg_ort_tensor_data(void *value);
// Rank of the tensor; its dims into shape (up to max) and its element type into elem.
size_t rg_ort_tensor_shape(void *value, int64_t *shape, size_t max, int *elem);
void rg_ort_value_release(void *value);

// One run. outs[i] receive new values (allocated by onnxruntime); the caller releases them.
int rg_ort_run(void *session, const char *const *in_names, void *const *ins, size_t nin,
               const char *const *out_names, void **outs, size_t nout, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
