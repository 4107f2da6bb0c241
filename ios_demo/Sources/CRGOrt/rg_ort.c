// See include/rg_ort.h. The OrtApi is requested at the header's ORT_API_VERSION: a newer
// library serves an older API version (the C API is versioned), so one build runs with the
// system onnxruntime and with a newer one.
#include "rg_ort.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

static const OrtApi *api;
static OrtEnv *env;
static OrtAllocator *allocator;
static OrtMemoryInfo *cpu_info;
static char load_error[512];
static int load_state;  // 0 not tried, 1 ok, -1 failed
static const char *version = "";

#if defined(__APPLE__)
#define RG_ORT_DEFAULT_LIB "libonnxruntime.dylib"
#else
#define RG_ORT_DEFAULT_LIB "libonnxruntime.so"
#endif

static void set_err(char *err, size_t errlen, const char *what, const char *detail) {
  if (err && errlen) snprintf(err, errlen, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

// Consumes status; returns 0 when it was NULL (success).
static int check(OrtStatus *status, char *err, size_t errlen, const char *what) {
  if (!status) return 0;
  set_err(err, errlen, what, api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  return -1;
}

int rg_ort_load(const char *lib_path, char *err, size_t errlen) {
  if (load_state != 0) {
    if (load_state < 0) set_err(err, errlen, load_error, NULL);
    return load_state > 0 ? 0 : -1;
  }
  load_state = -1;
  const char *path = lib_path && *lib_path ? lib_path : RG_ORT_DEFAULT_LIB;
  typedef const OrtApiBase *(*GetApiBase)(void);
  GetApiBase get_base = (GetApiBase)dlsym(RTLD_DEFAULT, "OrtGetApiBase");  // linked in (iOS)
  if (!get_base || (lib_path && *lib_path)) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      snprintf(load_error, sizeof load_error, "cannot load onnxruntime library %s: %s", path, dlerror());
      set_err(err, errlen, load_error, NULL);
      return -1;
    }
    get_base = (GetApiBase)dlsym(lib, "OrtGetApiBase");
  }
  if (!get_base) {
    snprintf(load_error, sizeof load_error, "%s has no OrtGetApiBase; not an onnxruntime library", path);
    set_err(err, errlen, load_error, NULL);
    return -1;
  }
  const OrtApiBase *base = get_base();
  version = base->GetVersionString();
  api = base->GetApi(ORT_API_VERSION);
  if (!api) {
    snprintf(load_error, sizeof load_error, "onnxruntime %s at %s does not serve C API version %d (too old)", version,
             path, ORT_API_VERSION);
    set_err(err, errlen, load_error, NULL);
    return -1;
  }
  if (check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "rgmobile", &env), load_error, sizeof load_error,
            "onnxruntime CreateEnv failed") ||
      check(api->GetAllocatorWithDefaultOptions(&allocator), load_error, sizeof load_error, "no allocator") ||
      check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu_info), load_error,
            sizeof load_error, "no CPU memory info")) {
    set_err(err, errlen, load_error, NULL);
    return -1;
  }
  load_state = 1;
  return 0;
}

const char *rg_ort_version(void) { return load_state > 0 ? version : ""; }

void *rg_ort_session_open(const char *model_path, int threads, int spin, char *err, size_t errlen) {
  OrtSessionOptions *opts = NULL;
  OrtSession *session = NULL;
  if (check(api->CreateSessionOptions(&opts), err, errlen, "onnxruntime session options")) return NULL;
  if (threads > 0) {
    if (check(api->SetIntraOpNumThreads(opts, threads), err, errlen, "threads") ||
        check(api->SetInterOpNumThreads(opts, 1), err, errlen, "threads")) {
      api->ReleaseSessionOptions(opts);
      return NULL;
    }
  }
  if (!spin && check(api->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", "0"), err, errlen, "spin")) {
    api->ReleaseSessionOptions(opts);
    return NULL;
  }
  int rc = check(api->CreateSession(env, model_path, opts, &session), err, errlen, "onnxruntime cannot load the model");
  api->ReleaseSessionOptions(opts);
  return rc ? NULL : session;
}

void rg_ort_session_close(void *session) {
  if (session) api->ReleaseSession((OrtSession *)session);
}

size_t rg_ort_session_names(void *session, int outputs, char **names, size_t max) {
  size_t count = 0;
  OrtStatus *st = outputs ? api->SessionGetOutputCount(session, &count) : api->SessionGetInputCount(session, &count);
  if (st) {
    api->ReleaseStatus(st);
    return 0;
  }
  for (size_t i = 0; names && i < count && i < max; i++) {
    char *name = NULL;
    st = outputs ? api->SessionGetOutputName(session, i, allocator, &name)
                 : api->SessionGetInputName(session, i, allocator, &name);
    if (st) {
      api->ReleaseStatus(st);
      names[i] = strdup("");
      continue;
    }
    names[i] = strdup(name);
    api->AllocatorFree(allocator, name);
  }
  return count;
}

void rg_ort_free_names(char **names, size_t count) {
  for (size_t i = 0; i < count; i++) free(names[i]);
}

static size_t elem_size(int elem) { return elem == RG_F16 ? 2 : elem == RG_I64 ? 8 : 4; }

static ONNXTensorElementDataType onnx_type(int elem) {
  return elem == RG_F16   ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
         : elem == RG_I64 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                          : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

void *rg_ort_tensor_new(int elem, const int64_t *shape, size_t rank, const void *data, char *err, size_t errlen) {
  OrtValue *value = NULL;
  if (check(api->CreateTensorAsOrtValue(allocator, shape, rank, onnx_type(elem), &value), err, errlen,
            "onnxruntime cannot allocate a tensor"))
    return NULL;
  size_t count = 1;
  for (size_t i = 0; i < rank; i++) count *= (size_t)shape[i];
  void *dst = rg_ort_tensor_data(value);
  if (data)
    memcpy(dst, data, count * elem_size(elem));
  else
    memset(dst, 0, count * elem_size(elem));
  return value;
}

void *rg_ort_tensor_data(void *value) {
  void *p = NULL;
  OrtStatus *st = api->GetTensorMutableData((OrtValue *)value, &p);
  if (st) {
    api->ReleaseStatus(st);
    return NULL;
  }
  return p;
}

// Rank, dims (up to max; -1 for a symbolic dim) and element type (RG_*, -1 for another) of info.
static size_t type_and_shape(const OrtTensorTypeAndShapeInfo *info, int64_t *shape, size_t max, int *elem) {
  size_t rank = 0;
  api->GetDimensionsCount(info, &rank);
  if (shape) api->GetDimensions(info, shape, rank < max ? rank : max);
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  api->GetTensorElementType(info, &t);
  if (elem)
    *elem = t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? RG_F16 : t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? RG_I64
            : t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? RG_F32 : -1;
  return rank;
}

size_t rg_ort_tensor_shape(void *value, int64_t *shape, size_t max, int *elem) {
  OrtTensorTypeAndShapeInfo *info = NULL;
  if (api->GetTensorTypeAndShape((OrtValue *)value, &info)) return 0;  // (status leaked only on failure)
  size_t rank = type_and_shape(info, shape, max, elem);
  api->ReleaseTensorTypeAndShapeInfo(info);
  return rank;
}

size_t rg_ort_session_io_shape(void *session, int outputs, size_t index, int64_t *shape, size_t max, int *elem) {
  OrtTypeInfo *type = NULL;
  const OrtTensorTypeAndShapeInfo *info = NULL;
  if (elem) *elem = -1;
  OrtStatus *st = outputs ? api->SessionGetOutputTypeInfo(session, index, &type)
                          : api->SessionGetInputTypeInfo(session, index, &type);
  if (st) {
    api->ReleaseStatus(st);
    return 0;
  }
  size_t rank = 0;
  st = api->CastTypeInfoToTensorInfo(type, &info);  // info belongs to type; NULL when not a tensor
  if (st)
    api->ReleaseStatus(st);
  else if (info)
    rank = type_and_shape(info, shape, max, elem);
  api->ReleaseTypeInfo(type);
  return rank;
}

void rg_ort_value_release(void *value) {
  if (value) api->ReleaseValue((OrtValue *)value);
}

int rg_ort_run(void *session, const char *const *in_names, void *const *ins, size_t nin,
               const char *const *out_names, void **outs, size_t nout, char *err, size_t errlen) {
  for (size_t i = 0; i < nout; i++) outs[i] = NULL;
  return check(api->Run((OrtSession *)session, NULL, in_names, (const OrtValue *const *)ins, nin, out_names, nout,
                        (OrtValue **)outs),
               err, errlen, "onnxruntime run failed");
}
